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

/// Wraps a source so that every message it produces (entry errors, fatal errors, read
/// errors of contents) passes the redactor before the archiver stores or logs it.
pub struct Redacting<'s> {
    pub inner: &'s mut dyn Source,
    pub redactor: &'s crate::redact::Redactor,
}

impl Source for Redacting<'_> {
    fn description(&self) -> String {
        self.redactor.redact(&self.inner.description())
    }

    fn entries<'a>(
        &'a mut self,
        previous: Previous<'a>,
    ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a> {
        let redactor = self.redactor;
        Box::new(self.inner.entries(previous).map(move |item| match item {
            Ok(mut se) => {
                se.content = match std::mem::replace(&mut se.content, Content::None) {
                    Content::Read(r) => Content::Read(Box::new(RedactingReader {
                        inner: r,
                        redactor: redactor.clone(),
                    })),
                    other => other,
                };
                Ok(se)
            }
            Err(SourceError::Entry { path, message }) => Err(SourceError::Entry {
                path,
                message: redactor.redact(&message),
            }),
            Err(SourceError::Fatal(m)) => Err(SourceError::Fatal(redactor.redact(&m))),
        }))
    }
}

struct RedactingReader {
    inner: Box<dyn Read + Send>,
    redactor: crate::redact::Redactor,
}

impl Read for RedactingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| std::io::Error::new(e.kind(), self.redactor.redact(&e.to_string())))
    }
}
