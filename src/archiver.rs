//! The archiver: source entries in, a snapshot out.
//!
//! ```text
//! source ─entries─▶ chunk (fastcdc) ─▶ hash ─▶ dedup ─new─▶ workers: compress+seal ─▶ packs
//!                                                └──▶ tree blob + refs blob ─▶ root ─▶ manifest
//! ```
//! Each worker owns its open pack and that pack's data key: no lock around packing, and
//! the key never leaves the thread that seals with it. Memory is bounded by the channel
//! (2 × workers chunks of at most the chunker's maximum), one tree blob and its data ids,
//! and the `pending` set of ids queued or in open packs (at most workers × MAX_PACK_BLOBS
//! plus the channel). What grows with the run is the root: 32 bytes per tree blob.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::error::ErrorKind;
use crate::repo::crypto::BlobCompressor;
use crate::repo::id::{Id, IdHasher};
use crate::repo::pack::{BlobKind, PackWriter};
use crate::repo::snapshot::{
    Details, Failure, SNAPSHOT_FORMAT, Snapshot, SnapshotStats, SnapshotStatus, data_ids,
    encode_refs, encode_root,
};
use crate::repo::tree::{Entry, EntryKind, OrderError, TreeCutter};
use crate::repo::{RepoError, Repository, random_hex};
use crate::source::{Content, Opener, ReadOnce, Source, SourceError};

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

/// Makes a pack durable, records it, and lets its ids leave `pending` (only now that
/// `has_blob` answers for them).
fn finish_pack(repo: &Repository, w: PackWriter, shared: &Shared) -> Result<(), RepoError> {
    let (id, entries) = w.finish(&repo.packs_dir())?;
    repo.register_written_pack(id, &entries)?;
    let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
    for e in &entries {
        pending.remove(&e.id);
    }
    Ok(())
}

struct Shared {
    /// Ids queued for the workers or in their open packs: within-run dedup, together
    /// with `Repository::has_blob` for everything already registered.
    pending: Mutex<HashSet<Id>>,
    error: Mutex<Option<ArchiveError>>,
    failed: AtomicBool,
    stored_bytes: AtomicU64,
    new_bytes: AtomicU64,
    new_chunks: AtomicU64,
}

impl Shared {
    fn fail(&self, e: ArchiveError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// What the workers get: a blob whose id the walker computed (trees, refs, root, small
/// chunks), or a large chunk to hash first. Hashing large chunks in the workers keeps the
/// walker to reading and cutting: on two cores, a walker that also hashed every byte was
/// the pipeline's bottleneck whenever most chunks were dedup hits.
enum Work {
    Blob(BlobKind, Id, Vec<u8>),
    /// The worker sends the id back first, then stores the chunk unless this run or the
    /// repository has it already.
    Chunk(Vec<u8>, crossbeam_channel::Sender<Id>),
}

/// Chunks at least this large are hashed by a worker; smaller ones (a small file is one
/// chunk) by the walker, where a round trip to a worker would cost more than the hash.
const HASH_IN_WORKER_MIN: usize = 64 << 10;

/// One worker: compresses with its own zstd context and seals into its own pack, under a
/// key only it holds; hands the pack to the finisher when full and at the end. A failure
/// leaves the open pack unfinished (dropping the writer removes it).
fn worker(
    repo: &Repository,
    hasher: &IdHasher,
    rx: crossbeam_channel::Receiver<Work>,
    finish: crossbeam_channel::Sender<PackWriter>,
    shared: &Shared,
    progress: &Progress,
) {
    let mut pack: Option<PackWriter> = None;
    let mut payload = Vec::new();
    let mut compressor = match BlobCompressor::new(repo.sealer().level()) {
        Ok(c) => Some(c),
        Err(e) => {
            shared.fail(RepoError::from(e).into());
            None
        }
    };
    for work in rx {
        if shared.failed.load(Ordering::Relaxed) {
            // Drain, so the sender never blocks on a dead pipeline (a dropped reply
            // tells the walker to stop).
            continue;
        }
        let Some(compressor) = compressor.as_mut() else {
            continue;
        };
        let (kind, id, data) = match work {
            Work::Blob(kind, id, data) => (kind, id, data),
            Work::Chunk(data, reply) => {
                let id = hasher.id(&data);
                let _ = reply.send(id);
                match claim(repo, shared, id) {
                    Ok(true) => (BlobKind::Data, id, data),
                    Ok(false) => continue,
                    Err(e) => {
                        shared.fail(e.into());
                        continue;
                    }
                }
            }
        };
        let result = (|| {
            compressor.compress_into(&data, &mut payload)?;
            if pack.is_none() {
                let tmp = repo.tmp_dir().join(format!("{}.pack", random_hex()));
                pack = Some(PackWriter::create(tmp, repo.sealer().new_pack_key()?)?);
            }
            let w = pack.as_mut().expect("just created");
            let stored = w.add_in_place(kind, id, &mut payload)?;
            shared.stored_bytes.fetch_add(stored, Ordering::Relaxed);
            progress.stored_bytes.fetch_add(stored, Ordering::Relaxed);
            shared
                .new_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            shared.new_chunks.fetch_add(1, Ordering::Relaxed);
            if w.is_full(repo.config().pack_size)
                && finish.send(pack.take().expect("present")).is_err()
            {
                // The finisher is gone only after a failure, which is reported already.
                shared.failed.store(true, Ordering::Relaxed);
            }
            Ok::<(), RepoError>(())
        })();
        if let Err(e) = result {
            shared.fail(e.into());
        }
    }
    if let Some(w) = pack.filter(|w| !w.is_empty())
        && !shared.failed.load(Ordering::Relaxed)
    {
        let _ = finish.send(w);
    }
}

/// Claims `id` for storing: false when the repository has it or this run queued it
/// already. An id stays in `pending` until its pack is registered, so it is always in one
/// or the other once claimed; a pack registered between the two checks only costs a
/// duplicate copy, which prune removes.
fn claim(repo: &Repository, shared: &Shared, id: Id) -> Result<bool, RepoError> {
    if repo.has_blob(&id)? {
        return Ok(false);
    }
    Ok(shared
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id))
}

/// Makes full packs durable and registers them (fsync, rename, index), apart from the
/// workers: an fsync of a 32 MiB pack waits for the disk, and a worker waiting for it
/// would leave a core idle (measured on 700 MB of large files: about a tenth of the wall
/// time). After a failure the packs are dropped unfinished, which removes them.
fn finisher(repo: &Repository, rx: crossbeam_channel::Receiver<PackWriter>, shared: &Shared) {
    for w in rx {
        if shared.failed.load(Ordering::Relaxed) {
            continue;
        }
        if let Err(e) = finish_pack(repo, w, shared) {
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
        pending: Mutex::new(HashSet::new()),
        error: Mutex::new(None),
        failed: AtomicBool::new(false),
        stored_bytes: AtomicU64::new(0),
        new_bytes: AtomicU64::new(0),
        new_chunks: AtomicU64::new(0),
    };
    let description = source.description();
    let mut file_cache = repo.index().begin_file_cache(job)?;
    let presence = repo.presence();
    let previous = repo
        .index()
        .previous(job, Box::new(move |c| presence.has(c)));

    let walked = std::thread::scope(|s| {
        let (tx, rx) = crossbeam_channel::bounded::<Work>(workers * 2);
        let (finish_tx, finish_rx) = crossbeam_channel::bounded::<PackWriter>(workers);
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let rx = rx.clone();
                let finish = finish_tx.clone();
                let shared = &shared;
                let hasher = &hasher;
                s.spawn(move || worker(repo, hasher, rx, finish, shared, progress))
            })
            .collect();
        drop(rx);
        drop(finish_tx);
        let finishing = {
            let shared = &shared;
            s.spawn(move || finisher(repo, finish_rx, shared))
        };
        let mut walk = Walk {
            repo,
            hasher: &hasher,
            seed,
            tx,
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
            .run(source, previous, &mut file_cache)
            .and_then(|()| walk.store_root());
        let Walk {
            tx,
            stats,
            failures,
            ..
        } = walk;
        if result.is_err() {
            // Cancelled or failed: the workers drop their open packs instead of making
            // unreferenced data durable (the error returned stays the walk's own).
            shared.failed.store(true, Ordering::Relaxed);
        }
        drop(tx);
        // The workers hand over their last packs as they end; the finisher ends after.
        for h in handles.into_iter().chain([finishing]) {
            if h.join().is_err() {
                // A bug, not damage: reporting it as `corrupt` would send the operator
                // looking at the disk.
                shared.fail(ArchiveError::Internal("a worker thread panicked".into()));
            }
        }
        result.map(|root| (stats, failures, root))
    });
    if let Some(e) = shared
        .error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    {
        return Err(e);
    }
    // Every worker finished its pack before it returned: all blobs are registered.
    let (mut stats, failures, root) = walked?;
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
    if let Err(e) = file_cache
        .commit()
        .map_err(crate::repo::index::IndexError::from)
        .and_then(|()| repo.index().flush())
    {
        tracing::warn!(error = %e, "snapshot written, but the index cache was not updated");
    }
    Ok((id, snapshot))
}

struct Walk<'a, 'r> {
    repo: &'r Repository,
    hasher: &'a IdHasher,
    seed: u64,
    tx: crossbeam_channel::Sender<Work>,
    /// Chunks stored or reused in this run, for the refs list only (not dedup).
    shared: &'a Shared,
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

    /// Whether this run queued `id` already or the repository has it. `pending` is
    /// asked first: a worker registers a pack before its ids leave `pending`, so an id
    /// is always in one or the other once queued.
    fn known(&self, id: &Id) -> Result<bool, RepoError> {
        if self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
        {
            return Ok(true);
        }
        self.repo.has_blob(id)
    }

    /// Queues a blob unless the repository or this run already has it.
    fn store(&mut self, kind: BlobKind, id: Id, data: Vec<u8>) -> Result<(), ArchiveError> {
        // A send fails only when every worker is gone, i.e. after a failure.
        if claim(self.repo, self.shared, id)? && self.tx.send(Work::Blob(kind, id, data)).is_err() {
            return Err(ArchiveError::Cancelled);
        }
        Ok(())
    }

    fn run(
        &mut self,
        source: &mut dyn Source,
        previous: crate::repo::index::Previous,
        file_cache: &mut crate::repo::index::FileCacheWriter,
    ) -> Result<(), ArchiveError> {
        let mut cutter = TreeCutter::new();
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
            // What must be read: fresh content, or reused chunks that turned out gone.
            let to_read: Option<Box<dyn Opener>> = match std::mem::replace(
                &mut se.content,
                Content::None,
            ) {
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
                Content::None => None,
                Content::Reuse { chunks, fallback } => {
                    let mut gone = None;
                    for c in &chunks {
                        if !self.known(c)? {
                            gone = Some(*c);
                            break;
                        }
                    }
                    match (gone, fallback) {
                        (None, _) => {
                            se.entry.chunks = chunks;
                            None
                        }
                        // Gone since the source looked (a prune, recorded damage): read
                        // the content afresh when the source can.
                        (Some(c), Some(opener)) => {
                            tracing::info!(path = %se.entry.path, chunk = %c.short(), "a chunk of the previous run is gone; reading afresh");
                            Some(opener)
                        }
                        (Some(c), None) => {
                            self.failures.push(Failure {
                                path: se.entry.path.display(),
                                error: format!("chunk {} of the previous run is gone", c.short()),
                            });
                            continue 'entries;
                        }
                    }
                }
                Content::Read(reader) => Some(Box::new(ReadOnce(Some(reader)))),
                Content::Open(opener) => Some(opener),
            };
            if let Some(mut opener) = to_read
                && let Err(error) = self.read_content(&mut se.entry, &mut *opener)?
            {
                self.failures.push(Failure {
                    path: se.entry.path.display(),
                    error,
                });
                continue 'entries;
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
            file_cache
                .insert(&se.entry)
                .map_err(|e| RepoError::from(crate::repo::index::IndexError::from(e)))?;
        }
        if let Some(blob) = cutter.finish() {
            self.store_tree(blob)?;
        }
        Ok(())
    }

    /// Chunks and stores an entry's content, reopening it after a failed read as the
    /// opener's policy allows. Each attempt starts the entry's chunk list afresh; chunks a
    /// failed attempt stored stay stored (a later attempt or run finds them as dedup
    /// hits). Returns `Ok(Err(message))` when the entry fails: its last error.
    fn read_content(
        &mut self,
        entry: &mut Entry,
        opener: &mut dyn Opener,
    ) -> Result<Result<(), String>, ArchiveError> {
        let params = self.repo.config().chunker;
        let policy = opener.retry();
        let attempts = policy.attempts.max(1);
        let mut attempt = 0;
        loop {
            if attempt > 0 {
                self.wait(policy.delay(attempt))?;
            }
            let last = attempt + 1 >= attempts;
            entry.chunks.clear();
            let reader = match opener.open(attempt, entry) {
                Ok(r) => r,
                Err(e) if last => return Ok(Err(e.to_string())),
                Err(e) => {
                    tracing::warn!(path = %entry.path, error = %e, attempt, "open failed; trying again");
                    attempt += 1;
                    continue;
                }
            };
            let reader = Interruptible {
                inner: reader,
                cancel: self.cancel,
                failed: &self.shared.failed,
            };
            let mut size = 0u64;
            let mut error = None;
            // Large chunks hashed by workers: (index in `entry.chunks`, the id to come).
            let mut inflight = std::collections::VecDeque::new();
            for chunk in params.chunks(reader, self.seed) {
                self.check()?;
                let data = match chunk {
                    Ok(d) => d,
                    Err(e) => {
                        // A cancelled read shows up here as an error: it is not the entry's.
                        self.check()?;
                        error = Some(e);
                        break;
                    }
                };
                size += data.len() as u64;
                self.stats.read_bytes += data.len() as u64;
                self.progress
                    .read_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if data.len() >= HASH_IN_WORKER_MIN {
                    let (reply, id) = crossbeam_channel::bounded(1);
                    inflight.push_back((entry.chunks.len(), id));
                    entry.chunks.push(Id([0; 32]));
                    if self.tx.send(Work::Chunk(data, reply)).is_err() {
                        return Err(ArchiveError::Cancelled);
                    }
                    // A few ids outstanding at most: the channel bounds the data anyway.
                    if inflight.len() > MAX_INFLIGHT_IDS {
                        resolve(&mut inflight, &mut entry.chunks, 1)?;
                    }
                } else {
                    let id = self.hasher.id(&data);
                    entry.chunks.push(id);
                    self.store(BlobKind::Data, id, data)?;
                }
            }
            resolve(&mut inflight, &mut entry.chunks, usize::MAX)?;
            if let Some(e) = error {
                if last {
                    tracing::warn!(path = %entry.path, error = %e, "read failed");
                    entry.chunks.clear();
                    return Ok(Err(e.to_string()));
                }
                tracing::warn!(path = %entry.path, error = %e, attempt, "read failed; trying again");
                attempt += 1;
                continue;
            }
            if entry.kind == EntryKind::File && size != entry.size {
                if entry.change.is_some() {
                    if !last {
                        tracing::info!(path = %entry.path, "file changed while being read; reading it again");
                        attempt += 1;
                        continue;
                    }
                    // Changed while being read: what was read is stored (it may be all
                    // there is), but the copy may be torn, so the run says so, and the
                    // next run never trusts it as unchanged.
                    tracing::warn!(path = %entry.path, "file changed while being read");
                    self.failures.push(Failure {
                        path: entry.path.display(),
                        error: format!(
                            "changed while being read ({} bytes expected, {size} read); the stored copy may be inconsistent",
                            entry.size
                        ),
                    });
                    entry.change = None;
                }
                entry.size = size;
            }
            return Ok(Ok(()));
        }
    }

    /// Sleeps `d` before a retry, in short steps so cancellation is not held up.
    fn wait(&self, d: Duration) -> Result<(), ArchiveError> {
        let until = Instant::now() + d;
        loop {
            self.check()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
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

/// Ids a reading entry may have outstanding with the workers.
const MAX_INFLIGHT_IDS: usize = 16;

/// Fills in up to `n` of the ids workers are computing, oldest first. A worker that
/// dropped the reply (the pipeline failed) ends the run; the caller collects the error.
fn resolve(
    inflight: &mut std::collections::VecDeque<(usize, crossbeam_channel::Receiver<Id>)>,
    chunks: &mut [Id],
    n: usize,
) -> Result<(), ArchiveError> {
    for _ in 0..n {
        let Some((at, rx)) = inflight.pop_front() else {
            break;
        };
        chunks[at] = rx.recv().map_err(|_| ArchiveError::Cancelled)?;
    }
    Ok(())
}

/// A content reader that stops at the next `read` once the run is cancelled or has
/// failed, so a multi-gigabyte stream (or a stalled network read's next wake-up) does not
/// hold up cancellation until the next chunk boundary.
struct Interruptible<'a> {
    inner: Box<dyn std::io::Read + Send>,
    cancel: &'a AtomicBool,
    failed: &'a AtomicBool,
}

impl std::io::Read for Interruptible<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) || self.failed.load(Ordering::Relaxed) {
            // Not `Interrupted`: readers retry that kind.
            return Err(std::io::Error::other("cancelled"));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::tree::{Entry, EntryPath};
    use crate::source::{Opener, RetryPolicy, SourceEntry};
    use std::io::Read;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU32;

    fn repo(dir: &std::path::Path) -> Repository {
        let opts = crate::repo::OpenOptions {
            identity: None,
            state_dir: dir.join("state"),
        };
        Repository::init(&dir.join("repo"), &opts, &Default::default()).unwrap()
    }

    /// Yields the given entries once.
    struct Given(Vec<SourceEntry>);

    impl Source for Given {
        fn description(&self) -> String {
            "test".into()
        }
        fn entries<'a>(
            &'a mut self,
            _previous: crate::repo::index::Previous,
        ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a> {
            Box::new(self.0.drain(..).map(Ok))
        }
    }

    fn file(name: &str, content: Content) -> SourceEntry {
        SourceEntry {
            entry: Entry::new(EntryPath::from(name), EntryKind::File),
            content,
        }
    }

    fn run(
        repo: &Repository,
        source: &mut dyn Source,
        cancel: &AtomicBool,
    ) -> Result<(Id, Snapshot), ArchiveError> {
        archive(
            repo,
            "job",
            source,
            &Progress::default(),
            cancel,
            &|| Ok(()),
        )
    }

    fn content_of(repo: &Repository, snap: &Snapshot, name: &str) -> Vec<u8> {
        let e = repo
            .entries(snap)
            .map(|e| e.unwrap())
            .find(|e| e.path.as_bytes() == name.as_bytes())
            .unwrap();
        let mut out = Vec::new();
        crate::restore::write_content(repo, &e, &mut out).unwrap();
        out
    }

    /// Endless, slow bytes: one byte per read, a millisecond each.
    struct Slow;
    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            std::thread::sleep(Duration::from_millis(1));
            buf[..1].fill(7);
            Ok(1)
        }
    }

    #[test]
    fn a_long_read_is_cancelled_within_one_read() {
        let t = tempfile::tempdir().unwrap();
        let repo = repo(t.path());
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c.store(true, Ordering::SeqCst);
            Instant::now()
        });
        // The first chunk needs far more than 300 single-byte reads (min chunk size), so
        // only a check inside the reads can stop this in time.
        let mut src = Given(vec![file("endless", Content::Read(Box::new(Slow)))]);
        let result = run(&repo, &mut src, &cancel);
        let stopped = Instant::now();
        let cancelled_at = canceller.join().unwrap();
        assert!(matches!(result, Err(ArchiveError::Cancelled)), "{result:?}");
        assert!(
            // Without the check inside reads the first chunk boundary is a minute away;
            // the slack is for a loaded machine.
            stopped.duration_since(cancelled_at) < Duration::from_secs(2),
            "took {:?} after the cancel",
            stopped.duration_since(cancelled_at)
        );
    }

    /// Content that fails mid-read on its first `fail` opens, then reads whole.
    struct Flaky {
        data: Vec<u8>,
        fail: u32,
        opens: Arc<AtomicU32>,
        policy: RetryPolicy,
    }

    struct FailAfter(std::io::Cursor<Vec<u8>>, usize);
    impl Read for FailAfter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.position() as usize >= self.1 {
                return Err(std::io::Error::other("connection reset"));
            }
            let room = (self.1 - self.0.position() as usize).min(buf.len());
            self.0.read(&mut buf[..room])
        }
    }

    impl Opener for Flaky {
        fn open(
            &mut self,
            attempt: u32,
            entry: &mut Entry,
        ) -> std::io::Result<Box<dyn Read + Send>> {
            self.opens.fetch_add(1, Ordering::SeqCst);
            entry.size = self.data.len() as u64;
            let cut = if attempt < self.fail {
                self.data.len() / 2
            } else {
                usize::MAX
            };
            Ok(Box::new(FailAfter(
                std::io::Cursor::new(self.data.clone()),
                cut,
            )))
        }
        fn retry(&self) -> RetryPolicy {
            self.policy
        }
    }

    fn noise(n: usize) -> Vec<u8> {
        crate::chunker::tests::pseudo_random(n, 0x2545_F491_4F6C_DD1D)
    }

    #[test]
    fn a_failed_read_is_retried_from_the_start() {
        let t = tempfile::tempdir().unwrap();
        let repo = repo(t.path());
        let data = noise(3 << 20);
        let opens = Arc::new(AtomicU32::new(0));
        let policy = RetryPolicy {
            attempts: 3,
            backoff: Duration::from_millis(20),
        };
        let flaky = Flaky {
            data: data.clone(),
            fail: 2,
            opens: opens.clone(),
            policy,
        };
        let mut src = Given(vec![file("obj", Content::Open(Box::new(flaky)))]);
        let started = Instant::now();
        let (_, snap) = run(&repo, &mut src, &AtomicBool::new(false)).unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 3);
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "backoff 20 + 40 ms"
        );
        assert_eq!(snap.status, SnapshotStatus::Complete);
        // Only the last attempt's chunks make the entry.
        assert_eq!(content_of(&repo, &snap, "obj"), data);
    }

    #[test]
    fn the_last_failure_fails_the_entry_only() {
        let t = tempfile::tempdir().unwrap();
        let repo = repo(t.path());
        let opens = Arc::new(AtomicU32::new(0));
        let flaky = Flaky {
            data: noise(1 << 20),
            fail: u32::MAX,
            opens: opens.clone(),
            policy: RetryPolicy {
                attempts: 2,
                backoff: Duration::ZERO,
            },
        };
        let mut src = Given(vec![
            file("bad", Content::Open(Box::new(flaky))),
            file(
                "good",
                Content::Read(Box::new(std::io::Cursor::new(b"ok".to_vec()))),
            ),
        ]);
        let (_, snap) = run(&repo, &mut src, &AtomicBool::new(false)).unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 2);
        assert_eq!(snap.status, SnapshotStatus::Partial);
        let names: Vec<_> = repo
            .entries(&snap)
            .map(|e| e.unwrap().path.display())
            .collect();
        assert_eq!(names, ["good"]);
        let details = repo.open_details(&snap).unwrap();
        assert_eq!(details.failures.len(), 1);
        assert!(details.failures[0].error.contains("connection reset"));
    }

    /// A file that says `said` bytes when opened but reads `read` bytes, per attempt.
    struct Changing(Vec<(u64, usize)>, Arc<AtomicU32>);

    impl Opener for Changing {
        fn open(
            &mut self,
            attempt: u32,
            entry: &mut Entry,
        ) -> std::io::Result<Box<dyn Read + Send>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            let (said, read) = self.0[attempt as usize];
            entry.size = said;
            entry.change = Some((1, 2, attempt as i64));
            Ok(Box::new(std::io::Cursor::new(noise(read))))
        }
        fn retry(&self) -> RetryPolicy {
            RetryPolicy {
                attempts: 2,
                backoff: Duration::ZERO,
            }
        }
    }

    #[test]
    fn a_file_changed_while_read_is_read_once_more() {
        let t = tempfile::tempdir().unwrap();
        let repo = repo(t.path());
        let opens = Arc::new(AtomicU32::new(0));
        // Settled by the second read: a complete snapshot with the second read's bytes.
        let settled = Changing(vec![(1000, 400), (500, 500)], opens.clone());
        // Still changing: stored as read the second time, and the snapshot says so.
        let busy = Changing(vec![(1000, 400), (900, 300)], opens.clone());
        let mut src = Given(vec![
            file("busy", Content::Open(Box::new(busy))),
            file("settled", Content::Open(Box::new(settled))),
        ]);
        let (_, snap) = run(&repo, &mut src, &AtomicBool::new(false)).unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 4);
        assert_eq!(content_of(&repo, &snap, "settled"), noise(500));
        assert_eq!(content_of(&repo, &snap, "busy"), noise(300));
        let entries: Vec<Entry> = repo.entries(&snap).map(|e| e.unwrap()).collect();
        assert_eq!(entries[0].size, 300);
        assert_eq!(entries[0].change, None, "never trusted as unchanged");
        assert_eq!(entries[1].change, Some((1, 2, 1)));
        let failures = repo.open_details(&snap).unwrap().failures;
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].path, "busy");
        assert!(failures[0].error.contains("changed while being read"));
    }

    #[test]
    fn a_backoff_wait_is_cancelled() {
        let t = tempfile::tempdir().unwrap();
        let repo = repo(t.path());
        let flaky = Flaky {
            data: noise(1 << 20),
            fail: u32::MAX,
            opens: Default::default(),
            policy: RetryPolicy {
                attempts: 5,
                backoff: Duration::from_secs(30),
            },
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            c.store(true, Ordering::SeqCst);
        });
        let started = Instant::now();
        let mut src = Given(vec![file("obj", Content::Open(Box::new(flaky)))]);
        let result = run(&repo, &mut src, &cancel);
        assert!(matches!(result, Err(ArchiveError::Cancelled)), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn reuse_of_gone_chunks_falls_back_to_the_opener() {
        let t = tempfile::tempdir().unwrap();
        let repo = repo(t.path());
        let data = noise(100_000);
        let opens = Arc::new(AtomicU32::new(0));
        let gone = vec![Id::of(b"never stored")];
        let flaky = Flaky {
            data: data.clone(),
            fail: 0,
            opens: opens.clone(),
            policy: RetryPolicy::ONCE,
        };
        let mut src = Given(vec![
            file(
                "a",
                Content::Reuse {
                    chunks: gone.clone(),
                    fallback: Some(Box::new(flaky)),
                },
            ),
            file(
                "b",
                Content::Reuse {
                    chunks: gone,
                    fallback: None,
                },
            ),
        ]);
        let (_, snap) = run(&repo, &mut src, &AtomicBool::new(false)).unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 1);
        assert_eq!(content_of(&repo, &snap, "a"), data);
        assert_eq!(snap.status, SnapshotStatus::Partial, "b has no fallback");
    }
}
