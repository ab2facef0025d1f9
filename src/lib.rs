//! backuphub: a pull-model backup daemon for a homelab.
//!
//! Data flows one way:
//!
//! ```text
//! config ─▶ daemon/scheduler ─▶ source ─▶ archiver ─▶ repo (packs, index) ─▶ snapshot
//!                                                      ▲
//!           retention / prune / check ─────────────────┘      http ◀── shared state (reads)
//! ```
//!
//! - [`config`]: the daemon's TOML, parsed into types (unknown keys rejected).
//! - [`source`]: where entries come from: [`source::local`] paths, [`source::stream`]
//!   stdin and command output. One module per kind behind [`source::Source`].
//! - [`kinds`]: job kinds that talk to a service, each in one module with its config,
//!   source, restore command and drill ([`kinds::postgres`]).
//! - [`chunker`]: content-defined chunking (pure).
//! - [`archiver`]: chunk, hash, dedup, compress, seal, pack; writes the snapshot last.
//! - [`repo`]: the on-disk repository: packs, snapshots, keys, locks, and the sled index
//!   cache. Knows nothing about sources.
//! - [`restore`], [`check`]: reading a repository back, and verifying it.
//! - [`retention`], [`schedule`]: pure planning of what to keep and when to run.
//! - [`verify`]: scheduled checks that read a rotating subset of the packs.
//! - [`http`], [`web`]: the status API and metrics, and the web UI; both only read state
//!   (and trigger runs through the same function as the schedule).
//! - [`redact`]: keeping secrets out of errors and logs; [`error`]: the one table of
//!   error kinds (metric labels, status API).
//! - [`cli`], [`logging`], [`memory`]: the binary's edge (allocator settings for a Pi).

pub mod archiver;
pub mod check;
pub mod chunker;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod error;
pub mod http;
pub mod kinds;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod prune;
pub mod redact;
pub mod repo;
pub mod restore;
pub mod retention;
pub mod runner;
pub mod schedule;
pub mod source;
pub mod state;
pub mod verify;
pub mod web;
