//! The archiver: source entries in, a snapshot out.
//!
//! ```text
//! source ─entries─▶ chunk (fastcdc) ─▶ hash ─▶ dedup ─new─▶ workers: compress+seal ─▶ packs
//!                                                └──▶ tree blob + refs blob ─▶ root ─▶ manifest
//! ```
//! Memory is bounded by the channel (2 × workers chunks of at most the chunker's maximum)
//! plus one tree blob and its data ids; what grows with the run is the root (32 bytes per
//! tree blob) and, until helper A's `pending` set, the set of chunk ids seen.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use chrono::Utc;

use crate::error::ErrorKind;
use crate::repo::id::{Id, IdHasher};
use crate::repo::pack::{BlobKind, PackWriter};
use crate::repo::snapshot::{
    Details, Failure, SNAPSHOT_FORMAT, Snapshot, SnapshotStats, SnapshotStatus, data_ids,
    encode_refs, encode_root,
};
use crate::repo::tree::{EntryKind, OrderError, TreeCutter};
use crate::repo::{RepoError, Repository, random_hex};
use crate::source::{Content, Source, SourceError};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("source failed: {0}")]
    Source(String),
    #[error(transparent)]
    Order(#[from] OrderError),
    #[error("nothing could be stored: {}", summarize(.0))]
    NothingStored(Vec<Failure>),
    #[error("cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
}

fn summarize(failures: &[Failure]) -> String {
    let mut s: Vec<String> = failures
        .iter()
        .take(3)
        .map(|f| format!("{}: {}", f.path, f.error))
        .collect();
    if failures.len() > 3 {
        s.push(format!("and {} more", failures.len() - 3));
    }
    s.join("; ")
}

impl From<crate::repo::index::IndexError> for ArchiveError {
    fn from(e: crate::repo::index::IndexError) -> Self {
        ArchiveError::Repo(e.into())
    }
}

impl ArchiveError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ArchiveError::Repo(e) => e.kind(),
            ArchiveError::Source(_) | ArchiveError::NothingStored(_) => ErrorKind::Source,
            ArchiveError::Order(_) | ArchiveError::Internal(_) => ErrorKind::Internal,
            ArchiveError::Cancelled => ErrorKind::Cancelled,
        }
    }
}

/// Live counters of a run, read by progress bars and the status API.
#[derive(Default, Debug)]
pub struct Progress {
    pub read_bytes: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub entries: AtomicU64,
}

/// Where finished packs' blobs are appended; shared by the workers.
struct Packer<'r> {
    repo: &'r Repository,
    current: Option<PackWriter>,
}

impl<'r> Packer<'r> {
    /// Adds a blob; hands back a full pack for the caller to finish outside the lock.
    fn add(
        &mut self,
        kind: BlobKind,
        id: Id,
        sealed: &[u8],
    ) -> Result<Option<PackWriter>, RepoError> {
        if self.current.is_none() {
            let tmp = self.repo.tmp_dir().join(format!("{}.pack", random_hex()));
            self.current = Some(PackWriter::create(tmp)?);
        }
        let w = self.current.as_mut().expect("just created");
        w.add(kind, id, sealed)?;
        if w.size() >= self.repo.config().pack_size {
            return Ok(self.current.take());
        }
        Ok(None)
    }
}

fn finish_pack(repo: &Repository, w: PackWriter) -> Result<(), RepoError> {
    let (id, entries) = w.finish(&repo.packs_dir())?;
    repo.register_pack(id, &entries)?;
    Ok(())
}

struct Shared<'r> {
    packer: Mutex<Packer<'r>>,
    error: Mutex<Option<ArchiveError>>,
    failed: AtomicBool,
    stored_bytes: AtomicU64,
    new_bytes: AtomicU64,
    new_chunks: AtomicU64,
}

impl Shared<'_> {
    fn fail(&self, e: ArchiveError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::Relaxed);
    }
}

type Work = (BlobKind, Id, Vec<u8>);

fn worker(
    repo: &Repository,
    rx: crossbeam_channel::Receiver<Work>,
    shared: &Shared<'_>,
    progress: &Progress,
) {
    let sealer = repo.sealer().clone();
    for (kind, id, data) in rx {
        if shared.failed.load(Ordering::Relaxed) {
            continue; // drain, so the sender never blocks on a dead pipeline
        }
        let result = (|| {
            let sealed = sealer.seal(&data)?;
            let full = shared
                .packer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add(kind, id, &sealed)?;
            shared
                .stored_bytes
                .fetch_add(sealed.len() as u64, Ordering::Relaxed);
            progress
                .stored_bytes
                .fetch_add(sealed.len() as u64, Ordering::Relaxed);
            shared
                .new_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            shared.new_chunks.fetch_add(1, Ordering::Relaxed);
            if let Some(w) = full {
                finish_pack(repo, w)?;
            }
            Ok::<(), RepoError>(())
        })();
        if let Err(e) = result {
            shared.fail(e.into());
        }
    }
}

/// Runs one backup of `source` into `repo` as `job`. The caller holds the job's lock.
///
/// Returns the written snapshot, complete or partial. Returns an error, and writes no
/// snapshot, when the source failed as a whole, nothing could be stored, the repository
/// failed, the run was cancelled, or `before_commit` (the caller's check that its lock
/// is still its own) fails right before the manifest is written.
pub fn archive(
    repo: &Repository,
    job: &str,
    source: &mut dyn Source,
    progress: &Progress,
    cancel: &AtomicBool,
    before_commit: &dyn Fn() -> Result<(), RepoError>,
) -> Result<(Id, Snapshot), ArchiveError> {
    let started = Instant::now();
    let time = Utc::now();
    let (hasher, seed) = repo.write_keys()?;
    // The caller holds the job's lock now; a prune may have run while it waited, so the
    // index must not be trusted from before.
    repo.sync_index()?;
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4);
    let shared = Shared {
        packer: Mutex::new(Packer {
            repo,
            current: None,
        }),
        error: Mutex::new(None),
        failed: AtomicBool::new(false),
        stored_bytes: AtomicU64::new(0),
        new_bytes: AtomicU64::new(0),
        new_chunks: AtomicU64::new(0),
    };
    let description = source.description();
    let file_cache = repo.index().begin_file_cache(job)?;
    let previous = repo
        .index()
        .previous(job, Box::new(|c| repo.has_blob(c).unwrap_or(false)))?;

    let walked = std::thread::scope(|s| {
        let (tx, rx) = crossbeam_channel::bounded::<Work>(workers * 2);
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                let shared = &shared;
                s.spawn(move || worker(repo, rx, shared, progress))
            })
            .collect();
        drop(rx);
        let mut walk = Walk {
            repo,
            hasher: &hasher,
            seed,
            tx,
            seen: HashSet::new(),
            shared: &shared,
            progress,
            cancel,
            stats: SnapshotStats::default(),
            failures: Vec::new(),
            blob_chunks: Vec::new(),
            refs: Vec::new(),
        };
        // The root goes through the same pipeline, so it is in a pack before the
        // manifest names it.
        let result = walk
            .run(source, previous, &file_cache)
            .and_then(|()| walk.store_root());
        let Walk {
            tx,
            stats,
            failures,
            ..
        } = walk;
        drop(tx);
        for h in handles {
            if h.join().is_err() {
                // A bug, not damage: reporting it as `corrupt` would send the operator
                // looking at the disk.
                shared.fail(ArchiveError::Internal("a worker thread panicked".into()));
            }
        }
        result.map(|root| (stats, failures, root))
    });
    let last = shared
        .packer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .current
        .take();
    if let Some(e) = shared
        .error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(e);
    }
    let (mut stats, failures, root) = walked?;
    if let Some(w) = last.filter(|w| !w.is_empty()) {
        finish_pack(repo, w)?;
    }
    if stats.entries == 0 && !failures.is_empty() {
        return Err(ArchiveError::NothingStored(failures));
    }
    stats.failures = failures.len() as u64;
    stats.new_chunks = shared.new_chunks.load(Ordering::Relaxed);
    stats.new_bytes = shared.new_bytes.load(Ordering::Relaxed);
    stats.stored_bytes = shared.stored_bytes.load(Ordering::Relaxed);
    stats.duration_ms = started.elapsed().as_millis() as u64;
    let snapshot = Snapshot {
        format: SNAPSHOT_FORMAT,
        job: job.to_owned(),
        time,
        host: crate::repo::lock::hostname(),
        status: if failures.is_empty() {
            SnapshotStatus::Complete
        } else {
            SnapshotStatus::Partial
        },
        stats,
        root,
        details: repo.seal_details(&Details {
            source: description,
            failures,
        })?,
        mac: None,
    };
    // The caller's lock must still be its own: if it was broken (taken for stale), a
    // prune may have removed data this snapshot would reference.
    before_commit()?;
    let id = repo.save_snapshot(&snapshot)?;
    // After the manifest the run has succeeded; the index is only a cache, so failing to
    // update it costs the next run a re-read, never this run its result.
    if let Err(e) = file_cache.commit().and_then(|()| repo.index().flush()) {
        tracing::warn!(error = %e, "snapshot written, but the index cache was not updated");
    }
    Ok((id, snapshot))
}

struct Walk<'a, 'r> {
    repo: &'r Repository,
    hasher: &'a IdHasher,
    seed: u64,
    tx: crossbeam_channel::Sender<Work>,
    /// Chunks stored or reused in this run.
    seen: HashSet<Id>,
    shared: &'a Shared<'r>,
    progress: &'a Progress,
    cancel: &'a AtomicBool,
    stats: SnapshotStats,
    failures: Vec<Failure>,
    /// Data ids used by the entries of the tree blob being filled (one blob's worth).
    blob_chunks: Vec<Id>,
    /// Refs blob ids in tree order: the root.
    refs: Vec<Id>,
}

impl Walk<'_, '_> {
    fn check(&self) -> Result<(), ArchiveError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(ArchiveError::Cancelled);
        }
        if self.shared.failed.load(Ordering::Relaxed) {
            // The real error is collected by the caller.
            return Err(ArchiveError::Cancelled);
        }
        Ok(())
    }

    /// Queues a blob unless the repository or this run already has it.
    fn store(&mut self, kind: BlobKind, id: Id, data: Vec<u8>) -> Result<(), ArchiveError> {
        if self.seen.insert(id) && !self.repo.has_blob(&id)? {
            // A send fails only when every worker is gone, i.e. after a failure.
            if self.tx.send((kind, id, data)).is_err() {
                return Err(ArchiveError::Cancelled);
            }
        }
        Ok(())
    }

    fn run(
        &mut self,
        source: &mut dyn Source,
        previous: crate::repo::index::Previous<'_>,
        file_cache: &crate::repo::index::FileCacheWriter<'_>,
    ) -> Result<(), ArchiveError> {
        let params = self.repo.config().chunker;
        let mut cutter = TreeCutter::new();
        // SAFETY of lifetimes: `previous` borrows the index, which outlives this call.
        let entries = source.entries(previous);
        'entries: for item in entries {
            self.check()?;
            let mut se = match item {
                Ok(se) => se,
                Err(SourceError::Fatal(m)) => return Err(ArchiveError::Source(m)),
                Err(SourceError::Entry { path, message }) => {
                    tracing::warn!(path = %path, error = %message, "entry failed");
                    self.failures.push(Failure {
                        path: path.display(),
                        error: message,
                    });
                    continue;
                }
            };
            match std::mem::replace(&mut se.content, crate::source::Content::None) {
                // A non-empty file without content would restore as an empty one.
                Content::None if se.entry.kind == EntryKind::File && se.entry.size > 0 => {
                    self.failures.push(Failure {
                        path: se.entry.path.display(),
                        error: format!(
                            "internal error: the source gave no content for {} bytes",
                            se.entry.size
                        ),
                    });
                    continue 'entries;
                }
                Content::None => {}
                Content::Reuse(chunks) => {
                    for c in &chunks {
                        if !self.seen.contains(c) && !self.repo.has_blob(c)? {
                            self.failures.push(Failure {
                                path: se.entry.path.display(),
                                error: format!("chunk {} of the previous run is gone", c.short()),
                            });
                            continue 'entries;
                        }
                        self.seen.insert(*c);
                    }
                    se.entry.chunks = chunks;
                }
                Content::Read(reader) => {
                    let mut size = 0u64;
                    for chunk in params.chunks(reader, self.seed) {
                        self.check()?;
                        let data = match chunk {
                            Ok(d) => d,
                            Err(e) => {
                                tracing::warn!(path = %se.entry.path, error = %e, "read failed");
                                self.failures.push(Failure {
                                    path: se.entry.path.display(),
                                    error: e.to_string(),
                                });
                                continue 'entries;
                            }
                        };
                        let id = self.hasher.id(&data);
                        size += data.len() as u64;
                        self.stats.read_bytes += data.len() as u64;
                        self.progress
                            .read_bytes
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        se.entry.chunks.push(id);
                        self.store(BlobKind::Data, id, data)?;
                    }
                    if se.entry.kind == EntryKind::File && size != se.entry.size {
                        if se.entry.change.is_some() {
                            // Changed while being read: what was read is stored (it may
                            // be all there is), but the copy may be torn, so the run says
                            // so, and the next run never trusts it as unchanged.
                            tracing::warn!(path = %se.entry.path, "file changed while being read");
                            self.failures.push(Failure {
                                path: se.entry.path.display(),
                                error: format!(
                                    "changed while being read ({} bytes expected, {size} read); the stored copy may be inconsistent",
                                    se.entry.size
                                ),
                            });
                            se.entry.change = None;
                        }
                        se.entry.size = size;
                    }
                }
            }
            self.stats.entries += 1;
            match se.entry.kind {
                EntryKind::File => {
                    self.stats.files += 1;
                    self.stats.total_bytes += se.entry.size;
                }
                EntryKind::Dir => self.stats.dirs += 1,
                _ => {}
            }
            self.progress.entries.fetch_add(1, Ordering::Relaxed);
            self.blob_chunks.extend_from_slice(&se.entry.chunks);
            if let Some(blob) = cutter.push(&se.entry)? {
                self.store_tree(blob)?;
            }
            file_cache.insert(&se.entry).map_err(RepoError::from)?;
        }
        if let Some(blob) = cutter.finish() {
            self.store_tree(blob)?;
        }
        Ok(())
    }

    /// Stores a tree blob and its refs blob (the tree id and the data ids its entries
    /// use); an unchanged tree blob gives the same refs blob, which dedup stores once.
    fn store_tree(&mut self, blob: Vec<u8>) -> Result<(), ArchiveError> {
        let id = self.hasher.id(&blob);
        self.store(BlobKind::Tree, id, blob)?;
        let refs = encode_refs(&id, &data_ids(&std::mem::take(&mut self.blob_chunks)));
        let refs_id = Id::of(&refs);
        self.refs.push(refs_id);
        self.store(BlobKind::Refs, refs_id, refs)
    }

    /// Stores the root blob: the refs blob ids in tree order. Returns its id.
    fn store_root(&mut self) -> Result<Id, ArchiveError> {
        let root = encode_root(&self.refs);
        let id = Id::of(&root);
        self.store(BlobKind::Root, id, root)?;
        Ok(id)
    }
}
