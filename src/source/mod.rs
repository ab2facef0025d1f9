//! Sources: where entries come from. Each kind is one module behind [`Source`]; the
//! archiver and the repository know nothing about any of them.

pub mod local;
pub mod stream;

use std::io::Read;

use crate::repo::id::Id;
use crate::repo::index::Previous;
use crate::repo::tree::{Entry, EntryPath};

/// What a source offers for one entry's content.
pub enum Content {
    /// Directories, symlinks, empty things.
    None,
    /// Bytes to chunk. A read error fails this entry only; a stream ends with an error
    /// (not EOF) when its producer failed, e.g. a dump command exiting non-zero.
    Read(Box<dyn Read + Send>),
    /// Unchanged since the previous run: these chunks, which the index still holds.
    Reuse(Vec<Id>),
}

/// One entry as a source yields it: metadata plus content.
pub struct SourceEntry {
    pub entry: Entry,
    pub content: Content,
}

/// An error while producing entries.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// One entry could not be read; the rest of the run goes on (snapshot is partial).
    #[error("{path}: {message}")]
    Entry { path: EntryPath, message: String },
    /// The source as a whole failed (cannot connect, command not found): no snapshot.
    #[error("{0}")]
    Fatal(String),
}

impl SourceError {
    pub fn entry(path: &EntryPath, e: impl std::fmt::Display) -> SourceError {
        SourceError::Entry {
            path: path.clone(),
            message: e.to_string(),
        }
    }
}

/// A source of entries for one run.
///
/// Entries must come in strictly increasing byte order of their paths. `previous` holds
/// the job's entries from its last run, in the same order, for incremental decisions.
pub trait Source: Send {
    /// A description for the snapshot (sealed in encrypted repositories; no secrets).
    fn description(&self) -> String;

    fn entries<'a>(
        &'a mut self,
        previous: Previous<'a>,
    ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a>;
}

/// Builds the source for a configured job. Adding a kind adds one arm here.
pub fn from_config(
    kind: &crate::config::JobKind,
    redactor: crate::redact::Redactor,
) -> Result<Box<dyn Source>, SourceError> {
    use crate::config::JobKind;
    Ok(match kind {
        JobKind::Path(p) => Box::new(local::LocalSource::new(&p.paths, &p.exclude)?),
        JobKind::Command(c) => Box::new(stream::StreamSource::new(
            &c.name,
            stream::StreamInput::Command {
                argv: c.command.clone(),
                env: c
                    .environment
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            },
            redactor,
        )?),
    })
}
