//! Job kinds that talk to a service: each lives in one module with its config type, its
//! [`Source`](crate::source::Source), its restore command and any drill. The archiver and
//! the repository know nothing about them.
//!
//! - [`kubernetes`]: every API object (CRDs and custom resources too, Secrets only when
//!   named), `restore-kubernetes` to apply-ready YAML in a safe order.
//! - [`s3`]: buckets pulled incrementally (unchanged objects cost no request),
//!   `restore-s3` into any S3 server.
//! - [`postgres`]: per-database dumps (custom, plain or row-ordered), `restore-postgres`,
//!   weekly restore drills into a throwaway server.

pub mod kubernetes;
pub mod postgres;
pub mod s3;
