//! Sources: where entries come from. Each kind is one module behind [`Source`]; the
//! archiver and the repository know nothing about any of them.

pub mod local;
pub mod prefetch;
pub mod stream;

use std::io::Read;
use std::time::Duration;

use crate::repo::id::Id;
use crate::repo::index::Previous;
use crate::repo::tree::{Entry, EntryPath};

/// What a source offers for one entry's content.
pub enum Content {
    /// Directories, symlinks, empty things.
    None,
    /// Bytes to chunk, readable once. A read error fails this entry only; a stream ends
    /// with an error (not EOF) when its producer failed, e.g. a dump command exiting
    /// non-zero.
    Read(Box<dyn Read + Send>),
    /// Bytes to chunk that can be read again: when a read fails (or a file changes while
    /// read), the archiver drops what this attempt read and reopens, as the opener's
    /// [`RetryPolicy`] allows.
    Open(Box<dyn Opener>),
    /// Unchanged since the previous run: these chunks. When one of them turns out to be
    /// gone, `fallback` (if any) reads the content afresh instead of failing the entry.
    Reuse {
        chunks: Vec<Id>,
        fallback: Option<Box<dyn Opener>>,
    },
}

/// Reopenable content: a local file, an S3 object, a Kubernetes object.
pub trait Opener: Send {
    /// Opens the content for reading; `attempt` counts from 0. The opener may refresh
    /// `entry`'s metadata (size, times, change token, ETag) to what it is about to read:
    /// an object replaced since it was listed is stored as what was read.
    fn open(&mut self, attempt: u32, entry: &mut Entry) -> std::io::Result<Box<dyn Read + Send>>;

    /// How often and how patiently to try.
    fn retry(&self) -> RetryPolicy {
        RetryPolicy::ONCE
    }
}

/// How a failed read of one entry is retried: up to `attempts` reads in all, `backoff`
/// apart (doubling each time). Cancellation is checked while waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub backoff: Duration,
}

impl RetryPolicy {
    /// One read, no retry.
    pub const ONCE: RetryPolicy = RetryPolicy {
        attempts: 1,
        backoff: Duration::ZERO,
    };

    /// The wait before attempt `attempt` (≥ 1): `backoff`, doubled for each attempt after
    /// the second, capped at a minute.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(16);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(Duration::from_secs(60))
    }
}

/// Content readable once, as an [`Opener`] that cannot reopen: the archiver has one
/// reading loop for every kind of content.
pub struct ReadOnce(pub Option<Box<dyn Read + Send>>);

impl Opener for ReadOnce {
    fn open(&mut self, _attempt: u32, _entry: &mut Entry) -> std::io::Result<Box<dyn Read + Send>> {
        self.0
            .take()
            .ok_or_else(|| std::io::Error::other("this content cannot be read again"))
    }
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
/// Entries must come in strictly increasing byte order of their sort keys
/// ([`Entry::sort_key`]: the logical key if any, else the path). `previous` holds the
/// job's entries from its last run, in the same order, for incremental decisions; it is
/// owned, so a source may hand it to its own threads (see [`prefetch`]).
pub trait Source: Send {
    /// A description for the snapshot (sealed in encrypted repositories; no secrets).
    fn description(&self) -> String;

    fn entries<'a>(
        &'a mut self,
        previous: Previous,
    ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a>;
}

/// Builds the source for a configured job. Adding a kind adds one arm here.
pub fn from_config(
    job: &str,
    kind: &crate::config::JobKind,
    redactor: crate::redact::Redactor,
    encrypted: bool,
    cancel: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
        JobKind::Postgres(p) => Box::new(crate::kinds::postgres::source::PostgresSource::new(
            p, redactor,
        )),
        JobKind::S3(j) => Box::new(crate::kinds::s3::source::S3Source::new(j, redactor)),
        JobKind::Kubernetes(k) => Box::new(
            crate::kinds::kubernetes::source::KubernetesSource::new(k, redactor, encrypted),
        ),
        JobKind::Volume(v) => Box::new(crate::kinds::volume::source::VolumeSource::new(
            v, job, redactor, cancel,
        )),
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
        previous: Previous,
    ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a> {
        let redactor = self.redactor;
        let opener = |o: Box<dyn Opener>| -> Box<dyn Opener> {
            Box::new(RedactingOpener {
                inner: o,
                redactor: redactor.clone(),
            })
        };
        Box::new(self.inner.entries(previous).map(move |item| match item {
            Ok(mut se) => {
                se.content = match std::mem::replace(&mut se.content, Content::None) {
                    Content::Read(r) => Content::Read(Box::new(RedactingReader {
                        inner: r,
                        redactor: redactor.clone(),
                    })),
                    Content::Open(o) => Content::Open(opener(o)),
                    Content::Reuse { chunks, fallback } => Content::Reuse {
                        chunks,
                        fallback: fallback.map(opener),
                    },
                    Content::None => Content::None,
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

struct RedactingOpener {
    inner: Box<dyn Opener>,
    redactor: crate::redact::Redactor,
}

impl Opener for RedactingOpener {
    fn open(&mut self, attempt: u32, entry: &mut Entry) -> std::io::Result<Box<dyn Read + Send>> {
        match self.inner.open(attempt, entry) {
            Ok(r) => Ok(Box::new(RedactingReader {
                inner: r,
                redactor: self.redactor.clone(),
            })),
            Err(e) => Err(std::io::Error::new(
                e.kind(),
                self.redactor.redact(&e.to_string()),
            )),
        }
    }

    fn retry(&self) -> RetryPolicy {
        self.inner.retry()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            attempts: 5,
            backoff: Duration::from_millis(100),
        };
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(200));
        assert_eq!(p.delay(3), Duration::from_millis(400));
        assert_eq!(p.delay(40), Duration::from_secs(60));
        assert_eq!(RetryPolicy::ONCE.delay(1), Duration::ZERO);
    }

    #[test]
    fn read_once_opens_once() {
        let mut e = Entry::new(EntryPath::from("x"), crate::repo::tree::EntryKind::File);
        let mut o = ReadOnce(Some(Box::new(std::io::Cursor::new(b"abc".to_vec()))));
        let mut s = String::new();
        o.open(0, &mut e).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");
        assert!(o.open(1, &mut e).is_err());
    }

    #[test]
    fn redacting_opener_masks_open_and_read_errors() {
        struct Failing;
        impl Opener for Failing {
            fn open(
                &mut self,
                attempt: u32,
                _: &mut Entry,
            ) -> std::io::Result<Box<dyn Read + Send>> {
                if attempt == 0 {
                    return Err(std::io::Error::other("GET failed: token=hunter2"));
                }
                struct R;
                impl Read for R {
                    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                        Err(std::io::Error::other("reset; auth hunter2"))
                    }
                }
                Ok(Box::new(R))
            }
            fn retry(&self) -> RetryPolicy {
                RetryPolicy {
                    attempts: 3,
                    backoff: Duration::ZERO,
                }
            }
        }
        let redactor = crate::redact::Redactor::new(vec!["hunter2".into()]);
        let mut o = RedactingOpener {
            inner: Box::new(Failing),
            redactor,
        };
        let mut e = Entry::new(EntryPath::from("x"), crate::repo::tree::EntryKind::File);
        assert_eq!(o.retry().attempts, 3);
        let err = o.open(0, &mut e).err().unwrap().to_string();
        assert!(
            err.contains("GET failed") && !err.contains("hunter2"),
            "{err}"
        );
        let err = o
            .open(1, &mut e)
            .unwrap()
            .read(&mut [0; 4])
            .unwrap_err()
            .to_string();
        assert!(err.contains("reset") && !err.contains("hunter2"), "{err}");
    }
}
