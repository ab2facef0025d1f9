//! Restoring snapshots to a directory, and single files to a writer.
//!
//! A restore often runs as root into a tree that local users own parts of (their restored
//! home directories), and the snapshot itself may come from a hostile repository. So nothing
//! here acts on a path that a symlink could redirect: directories are opened one component at
//! a time with `O_NOFOLLOW` from a descriptor of the target (the descriptors of the current
//! directory chain are kept, entries being sorted); files are created `O_EXCL | O_NOFOLLOW`
//! under a temporary name and get their owner, mode and times on the open descriptor; links
//! and nodes are made in a private staging directory nobody else can write to, where
//! name-based calls cannot be raced; everything reaches its final name by `rename`, which
//! never follows the last component. A file appears under its final name only once its
//! content is complete and every chunk verified, so bit rot leaves no damaged file behind.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, RenameFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use crate::error::ErrorKind;
use crate::repo::id::Id;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Entry, EntryKind, EntryPath};
use crate::repo::{RepoError, Repository};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    /// One entry could not be restored (or, for `cat`, read).
    #[error("{path}: {err}")]
    Entry { path: String, err: EntryError },
    #[error("no entry {0:?} in this snapshot")]
    NotFound(String),
    #[error("{0:?} is not a regular file")]
    NotAFile(String),
    #[error("{path:?} not found, but part of this snapshot's tree is unreadable: {err}")]
    MaybeLost { path: String, err: RepoError },
    /// The restore went through but some entries are missing; every one is listed.
    #[error("{}", incomplete_message(.0))]
    Incomplete(Box<RestoreStats>),
}

impl RestoreError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RestoreError::Repo(e) => e.kind(),
            RestoreError::Io { .. } => ErrorKind::Io,
            RestoreError::Entry { err, .. } => err.kind(),
            RestoreError::NotFound(_) | RestoreError::NotAFile(_) => ErrorKind::NotFound,
            RestoreError::MaybeLost { err, .. } => err.kind(),
            RestoreError::Incomplete(_) => ErrorKind::Partial,
        }
    }
}

/// Why one entry was not restored. Messages leave out the entry's path: the caller has it.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("{}", chunk_message(.chunk, .err))]
    Chunk { chunk: Id, err: RepoError },
    #[error("content is {got} bytes but the snapshot says {want}; not restored")]
    Size { got: u64, want: u64 },
    #[error("{op}: {err}")]
    Io {
        op: &'static str,
        err: std::io::Error,
    },
    #[error("unsafe path: {at:?} is a symlink or not a directory; not following it")]
    InTheWay { at: String },
    #[error("already exists; pass --overwrite to replace it")]
    Exists,
    #[error("a directory is in the way; not replacing it")]
    DirInTheWay,
    #[error("{what} not restored: device nodes and FIFOs are restored only when asked (--devices)")]
    Special { what: &'static str },
    #[error("unsafe path in the snapshot; not restored")]
    UnsafePath,
    #[error("{}", tree_message(.next, .err))]
    Tree {
        next: Option<String>,
        err: RepoError,
    },
    /// The sink cannot go on (a stream that was cut): the restore stops here.
    #[error("{0}")]
    Aborted(String),
}

impl EntryError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EntryError::Chunk { err, .. } | EntryError::Tree { err, .. } => err.kind(),
            EntryError::Size { .. } | EntryError::UnsafePath => ErrorKind::Corrupt,
            EntryError::Io { .. } | EntryError::Aborted(_) => ErrorKind::Io,
            EntryError::InTheWay { .. } => ErrorKind::UnsafeTarget,
            EntryError::Exists | EntryError::DirInTheWay => ErrorKind::Exists,
            EntryError::Special { .. } => ErrorKind::NotPermitted,
        }
    }

    /// Errors after which no other entry can be restored either: stop instead of listing
    /// the same cause for every remaining entry.
    fn is_fatal(&self) -> bool {
        match self {
            EntryError::Chunk { err, .. } | EntryError::Tree { err, .. } => {
                repo_error_is_fatal(err)
            }
            EntryError::Io { err, .. } => matches!(
                err.kind(),
                std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::ReadOnlyFilesystem
                    | std::io::ErrorKind::QuotaExceeded
            ),
            EntryError::Aborted(_) => true,
            _ => false,
        }
    }
}

/// Damage and loss are per blob; a missing identity, a broken index or a lost repository
/// are not.
fn repo_error_is_fatal(err: &RepoError) -> bool {
    !matches!(
        err,
        RepoError::Io { .. }
            | RepoError::Pack(_)
            | RepoError::Corrupt(_)
            | RepoError::MissingBlob(_)
    )
}

fn chunk_message(chunk: &Id, err: &RepoError) -> String {
    let msg = err.to_string();
    if msg.contains(&chunk.to_string()) {
        msg
    } else {
        format!("chunk {chunk}: {msg}")
    }
}

fn tree_message(next: &Option<String>, err: &RepoError) -> String {
    match next {
        Some(next) => format!(
            "damaged snapshot tree: the entries stored between this one and {next:?} are missing: {err}"
        ),
        None => {
            format!("damaged snapshot tree: the entries stored after this one are missing: {err}")
        }
    }
}

fn incomplete_message(stats: &RestoreStats) -> String {
    let mut msg = format!(
        "restore incomplete: {} failed, {} entries restored",
        stats.failures.len(),
        stats.entries
    );
    if stats.skipped > 0 {
        msg.push_str(&format!(
            ", {} entries below directories that failed were skipped",
            stats.skipped
        ));
    }
    for f in &stats.failures {
        msg.push_str(&format!("\n  {f}"));
    }
    msg
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |err| RestoreError::Io {
        path: path.to_owned(),
        err,
    }
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> EntryError {
    move |e| EntryError::Io { op, err: e.into() }
}

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Only this path and what lies below it.
    pub only: Option<EntryPath>,
    pub overwrite: bool,
}

/// What a restore creates only when asked: these give whoever controls the snapshot power
/// over the machine (a setuid-root shell, a node for the raw disk).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialFiles {
    /// Device nodes and FIFOs.
    pub devices: bool,
    /// Setuid and setgid bits of regular files.
    pub setid: bool,
}

/// An entry that was not restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub path: String,
    /// A stable, low-cardinality label ([`EntryError::kind`]).
    pub kind: ErrorKind,
    pub error: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.error)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Entries restored.
    pub entries: u64,
    pub bytes: u64,
    /// Entries not attempted because a directory above them failed (listed in `failures`).
    pub skipped: u64,
    /// Files restored without their setuid/setgid bits (no [`SpecialFiles::setid`]).
    pub setid_cleared: Vec<String>,
    pub failures: Vec<Failure>,
}

/// A file entry's content as a sink receives it: chunk by chunk, each read, decrypted
/// and verified against its id before any of its bytes are handed on.
pub struct EntryContent<'r> {
    repo: &'r Repository,
    chunks: &'r [Id],
    /// The current chunk's bytes not yet handed out by `read`.
    buf: Vec<u8>,
    pos: usize,
}

impl<'r> EntryContent<'r> {
    pub fn new(repo: &'r Repository, entry: &'r Entry) -> EntryContent<'r> {
        EntryContent {
            repo,
            chunks: &entry.chunks,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn next_chunk(&mut self) -> Option<Result<Vec<u8>, EntryError>> {
        let (c, rest) = self.chunks.split_first()?;
        self.chunks = rest;
        Some(
            self.repo
                .read_blob(c)
                .map_err(|err| EntryError::Chunk { chunk: *c, err }),
        )
    }

    /// Copies what is left to `out`, keeping the cause of a failure (a damaged chunk, a
    /// full disk) for the caller to classify.
    pub fn copy_to(&mut self, out: &mut dyn Write) -> Result<u64, EntryError> {
        let mut n = 0u64;
        let pending = std::mem::take(&mut self.buf);
        if self.pos < pending.len() {
            out.write_all(&pending[self.pos..])
                .map_err(|err| EntryError::Io { op: "write", err })?;
            n += (pending.len() - self.pos) as u64;
        }
        self.pos = 0;
        while let Some(data) = self.next_chunk() {
            let data = data?;
            out.write_all(&data)
                .map_err(|err| EntryError::Io { op: "write", err })?;
            n += data.len() as u64;
        }
        Ok(n)
    }
}

/// For sinks that want a reader (an upload body); a damaged chunk is an `InvalidData`
/// error carrying the message.
impl std::io::Read for EntryContent<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.next_chunk() {
                None => return Ok(0),
                Some(Ok(data)) => {
                    self.buf = data;
                    self.pos = 0;
                }
                Some(Err(e)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e.to_string(),
                    ));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Where a restore writes entries. The restore reads the snapshot, selects, verifies and
/// reports; a sink only writes. Today: a directory ([`DirSink`]) and a writer such as
/// stdout ([`WriterSink`], for `cat`). A bucket, `pg_restore` or YAML for `kubectl apply`
/// is one more impl: each gets the whole [`Entry`] (its logical key, metadata in `meta`)
/// and the content as a verified stream.
pub trait Sink {
    /// Writes one selected entry; entries come in snapshot (sort key) order. Returns the
    /// content bytes written. A failure fails this entry; [`EntryError::is_fatal`] ones end
    /// the restore.
    fn entry(&mut self, entry: &Entry, content: &mut EntryContent<'_>) -> Result<u64, EntryError>;

    /// After the last entry: what must come last (a directory's own metadata). Entries
    /// that fail now are added to `stats.failures`.
    fn finish(&mut self, stats: &mut RestoreStats) -> Result<(), RestoreError>;
}

/// Writes files' contents, one after another, to a writer (`cat` to stdout). Other kinds
/// of entries have no content and write nothing.
pub struct WriterSink<W: Write> {
    out: W,
}

impl<W: Write> WriterSink<W> {
    pub fn new(out: W) -> WriterSink<W> {
        WriterSink { out }
    }
}

impl<W: Write> Sink for WriterSink<W> {
    fn entry(&mut self, entry: &Entry, content: &mut EntryContent<'_>) -> Result<u64, EntryError> {
        if entry.kind != EntryKind::File {
            return Ok(0);
        }
        content.copy_to(&mut self.out)
    }

    fn finish(&mut self, _stats: &mut RestoreStats) -> Result<(), RestoreError> {
        self.out.flush().map_err(|err| RestoreError::Io {
            path: "(output)".into(),
            err,
        })
    }
}

fn entry_error(path: &EntryPath, err: EntryError) -> RestoreError {
    match err {
        EntryError::Chunk { err, .. } | EntryError::Tree { err, .. }
            if repo_error_is_fatal(&err) =>
        {
            RestoreError::Repo(err)
        }
        err => RestoreError::Entry {
            path: path.display(),
            err,
        },
    }
}

/// Writes a file entry's content to `out`.
pub fn write_content(
    repo: &Repository,
    entry: &Entry,
    out: &mut dyn Write,
) -> Result<u64, RestoreError> {
    EntryContent::new(repo, entry)
        .copy_to(out)
        .map_err(|e| entry_error(&entry.restore_path(), e))
}

/// Whether the entries a selection `prefix` (as restore paths) can match all sort before
/// `[prefix, "0"]` by sort key, so a sorted scan may stop there. True unless `prefix` has
/// a `%`: escaping is the identity on `%`-free safe components, so a restore path under
/// such a prefix comes from a key under it; a `%` in it may stand for anything.
fn can_stop_at(prefix: &EntryPath) -> bool {
    !prefix.as_bytes().contains(&b'%')
}

/// Finds one entry by exact path, streaming the tree.
pub fn find_entry(
    repo: &Repository,
    snap: &Snapshot,
    path: &EntryPath,
) -> Result<Entry, RestoreError> {
    // A damaged tree blob may or may not have held it: keep looking in the others.
    let mut damaged = None;
    for e in repo.entries(snap) {
        let e = match e {
            Ok(e) => e,
            Err(err) if repo_error_is_fatal(&err) => return Err(err.into()),
            Err(err) => {
                damaged.get_or_insert(err);
                continue;
            }
        };
        // By where it restores to, or by its logical key as given.
        if e.restore_path() == *path || e.key.as_deref() == Some(path.as_bytes()) {
            return Ok(e);
        }
        if can_stop_at(path) && e.sort_key() >= [path.as_bytes(), b"0"].concat().as_slice() {
            break; // sorted: it is not there
        }
    }
    Err(match damaged {
        Some(err) => RestoreError::MaybeLost {
            path: path.display(),
            err,
        },
        None => RestoreError::NotFound(path.display()),
    })
}

/// `cat`: one file's content to `out`.
pub fn cat(
    repo: &Repository,
    snap: &Snapshot,
    path: &EntryPath,
    out: &mut dyn Write,
) -> Result<u64, RestoreError> {
    cat_to(repo, snap, path, &mut WriterSink::new(out))
}

/// One file entry, found by restore path or logical key, through `sink`.
pub fn cat_to(
    repo: &Repository,
    snap: &Snapshot,
    path: &EntryPath,
    sink: &mut dyn Sink,
) -> Result<u64, RestoreError> {
    let e = find_entry(repo, snap, path)?;
    if e.kind != EntryKind::File {
        return Err(RestoreError::NotAFile(path.display()));
    }
    let n = sink
        .entry(&e, &mut EntryContent::new(repo, &e))
        .map_err(|err| entry_error(&e.restore_path(), err))?;
    sink.finish(&mut RestoreStats::default())?;
    Ok(n)
}

/// Restores a snapshot (or part of it) below `target`, metadata included, without device
/// nodes, FIFOs and setuid/setgid bits. See [`restore_with`].
pub fn restore(
    repo: &Repository,
    snap: &Snapshot,
    target: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreStats, RestoreError> {
    restore_with(repo, snap, target, opts, SpecialFiles::default())
}

/// Restores a snapshot (or part of it) below `target`, metadata included. Every entry that
/// can be restored is; when some cannot (damaged chunks or tree blobs, things in the way),
/// the result is [`RestoreError::Incomplete`] listing each of them, never `Ok`. Directory
/// metadata is applied last, deepest first, after their contents are written.
pub fn restore_with(
    repo: &Repository,
    snap: &Snapshot,
    target: &Path,
    opts: &RestoreOptions,
    special: SpecialFiles,
) -> Result<RestoreStats, RestoreError> {
    restore_with_hook(repo, snap, target, opts, special, &mut || {})
}

/// [`restore_with`], running `between_passes` after the entries are written and before
/// directory metadata is applied: the window in which a local user who owns a restored
/// directory could swap it for a symlink. Tests use it to be that user.
#[doc(hidden)]
pub fn restore_with_hook(
    repo: &Repository,
    snap: &Snapshot,
    target: &Path,
    opts: &RestoreOptions,
    special: SpecialFiles,
    between_passes: &mut dyn FnMut(),
) -> Result<RestoreStats, RestoreError> {
    let mut sink = DirSink::new(target, opts.overwrite, special)?;
    restore_to(repo, snap, &mut sink, opts, between_passes)
}

/// Restores a snapshot (or the part `opts.only` selects) through `sink`: entries in
/// snapshot order, each one's failure listed, damaged tree blobs reported with the range
/// of entries they held, entries below a directory that failed skipped; then
/// `between_passes`, then [`Sink::finish`]. Incomplete unless every entry made it.
pub fn restore_to(
    repo: &Repository,
    snap: &Snapshot,
    sink: &mut dyn Sink,
    opts: &RestoreOptions,
    between_passes: &mut dyn FnMut(),
) -> Result<RestoreStats, RestoreError> {
    let mut r = Driver {
        only: opts.only.as_ref(),
        stats: RestoreStats::default(),
        failed_dirs: Vec::new(),
    };
    // Everything below `only` sorts before `only` followed by '0', the byte after '/'.
    let selection_end = opts
        .only
        .as_ref()
        .filter(|o| can_stop_at(o))
        .map(|o| [o.as_bytes(), b"0"].concat());
    let mut matched = false;
    // Sort keys, for the range a damaged tree blob held.
    let mut last: Option<EntryPath> = None;
    // A damaged tree blob, reported once the next readable entry shows what was lost.
    let mut lost: Option<(Option<EntryPath>, RepoError)> = None;
    for item in repo.entries(snap) {
        let e = match item {
            Ok(e) => e,
            Err(err) if repo_error_is_fatal(&err) => return Err(RestoreError::Repo(err)),
            Err(err) => {
                if let Some((after, err)) = lost.replace((last.clone(), err)) {
                    r.tree_failure(after.as_ref(), None, err);
                }
                continue;
            }
        };
        let sort_key = EntryPath::new(e.sort_key().to_vec());
        if let Some((after, err)) = lost.take() {
            r.tree_failure(after.as_ref(), Some(&sort_key), err);
        }
        if selection_end
            .as_deref()
            .is_some_and(|end| e.sort_key() >= end)
        {
            break; // sorted: nothing further is selected
        }
        last = Some(sort_key);
        let path = e.restore_path();
        if !r.selected(&path) {
            continue;
        }
        matched = true;
        r.entry(repo, sink, &e, &path)?;
    }
    if let Some((after, err)) = lost {
        r.tree_failure(after.as_ref(), None, err);
    }
    if let Some(only) = &opts.only
        && !matched
        && r.stats.failures.is_empty()
    {
        return Err(RestoreError::NotFound(only.display()));
    }
    between_passes();
    sink.finish(&mut r.stats)?;
    if r.stats.failures.is_empty() {
        Ok(r.stats)
    } else {
        Err(RestoreError::Incomplete(Box::new(r.stats)))
    }
}

/// The sink-independent part of a restore: selection, failures, skipping.
struct Driver<'a> {
    only: Option<&'a EntryPath>,
    stats: RestoreStats,
    /// Directories that failed: nothing below them is attempted.
    failed_dirs: Vec<EntryPath>,
}

fn record_failure(stats: &mut RestoreStats, path: String, err: &EntryError) {
    tracing::warn!(path = %path, error = %err, "not restored");
    stats.failures.push(Failure {
        path,
        kind: err.kind(),
        error: err.to_string(),
    });
}

impl Driver<'_> {
    fn selected(&self, path: &EntryPath) -> bool {
        self.only.is_none_or(|p| path.starts_with(p))
    }

    /// Lists a damaged tree blob, unless what it held lies wholly outside the selection.
    /// The lost entries sort strictly between `after` and `next` (sort keys); the
    /// selection is `only` and what sorts below `only/`, i.e. the byte range from `only`
    /// up to `only0` (when `only` has a `%`, any key may restore into it).
    fn tree_failure(
        &mut self,
        after: Option<&EntryPath>,
        next: Option<&EntryPath>,
        err: RepoError,
    ) {
        if let Some(only) = self.only.filter(|o| can_stop_at(o)) {
            let end = [only.as_bytes(), b"0"].concat();
            let before_selection = next.is_some_and(|n| n <= only);
            let after_selection = after.is_some_and(|a| a.as_bytes() >= end.as_slice());
            if before_selection || after_selection {
                return;
            }
        }
        let err = EntryError::Tree {
            next: next.map(|n| n.display()),
            err,
        };
        let path = after.map_or_else(|| "(start of the snapshot)".to_owned(), |a| a.display());
        record_failure(&mut self.stats, path, &err);
    }

    /// Restores one entry (to `path`, its restore path); a failure is listed, and only a
    /// fatal one ends the restore.
    fn entry(
        &mut self,
        repo: &Repository,
        sink: &mut dyn Sink,
        e: &Entry,
        path: &EntryPath,
    ) -> Result<(), RestoreError> {
        // Sorted order puts a directory's subtree in one run, though not right after it
        // ("a", "a.txt", "a/b"): forget failed directories once past their run. (Keyed
        // entries need not come in restore path order; one below a forgotten failed
        // directory is attempted, and fails or lands safely like any other.)
        self.failed_dirs
            .retain(|d| path.as_bytes() < [d.as_bytes(), b"0"].concat().as_slice());
        if self
            .failed_dirs
            .iter()
            .any(|d| path.starts_with(d) && path != d)
        {
            self.stats.skipped += 1;
            return Ok(());
        }
        match sink.entry(e, &mut EntryContent::new(repo, e)) {
            Ok(bytes) => {
                self.stats.entries += 1;
                self.stats.bytes += bytes;
                Ok(())
            }
            Err(err) if err.is_fatal() => Err(entry_error(path, err)),
            Err(err) => {
                if e.kind == EntryKind::Dir {
                    self.failed_dirs.push(path.clone());
                }
                record_failure(&mut self.stats, path.display(), &err);
                Ok(())
            }
        }
    }
}

/// What the second pass needs of a directory.
struct DirMeta {
    path: EntryPath,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
}

/// Restores into a directory: today's restore, with every safety property described at
/// the top of this module. Entries go to their restore path ([`Entry::restore_path`]).
pub struct DirSink {
    overwrite: bool,
    special: SpecialFiles,
    is_root: bool,
    dirs: DirChain,
    /// Directories created or merged, in tree order, for the second pass.
    restored_dirs: Vec<DirMeta>,
    setid_cleared: Vec<String>,
}

impl DirSink {
    /// Opens (creating it if needed) the target directory. The target itself is the
    /// caller's choice and may be reached through symlinks; nothing below it is.
    pub fn new(
        target: &Path,
        overwrite: bool,
        special: SpecialFiles,
    ) -> Result<DirSink, RestoreError> {
        std::fs::create_dir_all(target).map_err(io(target))?;
        let root = rustix::fs::openat(
            rustix::fs::CWD,
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(target)(e.into()))?;
        Ok(DirSink {
            overwrite,
            special,
            is_root: rustix::process::geteuid().is_root(),
            dirs: DirChain {
                root,
                open: Vec::new(),
            },
            restored_dirs: Vec::new(),
            setid_cleared: Vec::new(),
        })
    }
}

impl Sink for DirSink {
    fn entry(&mut self, e: &Entry, content: &mut EntryContent<'_>) -> Result<u64, EntryError> {
        self.restore_entry(e, content)
    }

    fn finish(&mut self, stats: &mut RestoreStats) -> Result<(), RestoreError> {
        stats.setid_cleared.append(&mut self.setid_cleared);
        self.finish_dirs(stats)
    }
}

impl DirSink {
    fn restore_entry(
        &mut self,
        e: &Entry,
        content: &mut EntryContent<'_>,
    ) -> Result<u64, EntryError> {
        let path = e.restore_path();
        if !path.is_safe() {
            return Err(EntryError::UnsafePath);
        }
        let comps: Vec<&[u8]> = path.as_bytes().split(|b| *b == b'/').collect();
        let (name, parents) = comps.split_last().expect("a safe path has a component");
        let what = match e.kind {
            EntryKind::Fifo => "FIFO",
            EntryKind::CharDevice => "character device",
            EntryKind::BlockDevice => "block device",
            _ => "",
        };
        if !what.is_empty() && !self.special.devices {
            return Err(EntryError::Special { what });
        }
        let (overwrite, is_root) = (self.overwrite, self.is_root);
        let parent = self.dirs.parent(parents, true)?;
        match e.kind {
            EntryKind::Dir => {
                let fd = make_dir(parent, name, overwrite, &path)?;
                self.dirs.enter(name, fd);
                self.restored_dirs.push(DirMeta {
                    path: path.clone(),
                    mode: e.mode,
                    uid: e.uid,
                    gid: e.gid,
                    mtime_ns: e.mtime_ns,
                });
                Ok(0)
            }
            EntryKind::File => {
                let mut mode = e.mode & 0o7777;
                let cleared = mode & 0o6000 != 0 && !self.special.setid;
                if cleared {
                    mode &= !0o6000;
                }
                let n = write_file(content, parent, name, e, mode, overwrite, is_root)?;
                if cleared {
                    tracing::warn!(path = %path, "setuid/setgid bits not restored (pass --setid)");
                    self.setid_cleared.push(path.display());
                }
                Ok(n)
            }
            _ => {
                make_special(parent, name, e, overwrite, is_root)?;
                Ok(0)
            }
        }
    }

    /// The second pass: directory owners, modes and times, deepest first (reverse tree order
    /// puts every directory after its subtree), so that neither writing into a directory
    /// nor a read-only parent gets in the way. Each is reopened through the no-follow walk.
    fn finish_dirs(&mut self, stats: &mut RestoreStats) -> Result<(), RestoreError> {
        // Walk afresh from the target: a descriptor kept from the first pass would still
        // reach a directory that has since been moved.
        self.dirs.open.clear();
        let mut dirs = std::mem::take(&mut self.restored_dirs);
        // Keyed entries come in key order, which need not be their paths' order.
        if !dirs.is_sorted_by(|a, b| a.path <= b.path) {
            dirs.sort_by(|a, b| a.path.cmp(&b.path));
        }
        for d in dirs.iter().rev() {
            if let Err(err) = self.finish_dir(d) {
                if err.is_fatal() {
                    return Err(entry_error(&d.path, err));
                }
                record_failure(stats, d.path.display(), &err);
            }
        }
        Ok(())
    }

    fn finish_dir(&mut self, d: &DirMeta) -> Result<(), EntryError> {
        let comps: Vec<&[u8]> = d.path.as_bytes().split(|b| *b == b'/').collect();
        let (name, parents) = comps.split_last().expect("restored paths are safe");
        let is_root = self.is_root;
        let parent = self.dirs.parent(parents, false)?;
        let fd = open_dir(parent, name).map_err(in_the_way(&d.path, "open directory"))?;
        if is_root {
            rustix::fs::fchown(&fd, Some(uid(d.uid)), Some(gid(d.gid)))
                .map_err(sys("set owner"))?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(d.mode & 0o7777)).map_err(sys("set mode"))?;
        rustix::fs::futimens(&fd, &times(d.mtime_ns)).map_err(sys("set times"))?;
        Ok(())
    }
}

/// The open directories from the target down to the last entry's parent. Entries come in
/// sorted order, so consecutive entries share most of the chain.
struct DirChain {
    root: OwnedFd,
    open: Vec<(Vec<u8>, OwnedFd)>,
}

impl DirChain {
    /// The directory holding an entry whose parent components are `comps`, each opened
    /// without following symlinks; missing ones are created when `create` (a selected
    /// subpath, or a parent lost with a damaged tree blob).
    fn parent(&mut self, comps: &[&[u8]], create: bool) -> Result<BorrowedFd<'_>, EntryError> {
        let keep = self
            .open
            .iter()
            .zip(comps)
            .take_while(|((open, _), c)| open.as_slice() == **c)
            .count();
        self.open.truncate(keep);
        for (i, c) in comps.iter().enumerate().skip(keep) {
            let here = self
                .open
                .last()
                .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());
            let at = || EntryPath::new(comps[..=i].join(&b'/'));
            let fd = match open_dir(here, c) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(here, *c, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(sys("create directory")(e)),
                    }
                    open_dir(here, c).map_err(in_the_way(&at(), "open directory"))?
                }
                Err(e) => return Err(in_the_way(&at(), "open directory")(e)),
            };
            self.open.push((c.to_vec(), fd));
        }
        Ok(self
            .open
            .last()
            .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd()))
    }

    /// Makes `name`, just opened below the current chain's end, the chain's end.
    fn enter(&mut self, name: &[u8], fd: OwnedFd) {
        self.open.push((name.to_vec(), fd));
    }
}

fn open_dir(at: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// `O_NOFOLLOW | O_DIRECTORY` fails with ELOOP on a symlink and ENOTDIR on anything else.
fn in_the_way<'p>(path: &'p EntryPath, op: &'static str) -> impl FnOnce(Errno) -> EntryError + 'p {
    move |e| match e {
        Errno::LOOP | Errno::NOTDIR => EntryError::InTheWay { at: path.display() },
        e => sys(op)(e),
    }
}

fn uid(raw: u32) -> Uid {
    Uid::from_raw(raw)
}

fn gid(raw: u32) -> Gid {
    Gid::from_raw(raw)
}

fn times(mtime_ns: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// A directory entry: created (mode 0700 until the second pass, so that its contents stay
/// private and writable meanwhile) or, when a directory is already there, merged into.
fn make_dir(
    parent: BorrowedFd<'_>,
    name: &[u8],
    overwrite: bool,
    path: &EntryPath,
) -> Result<OwnedFd, EntryError> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => {}
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
        Ok(_) if overwrite => {
            rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(sys("remove"))?;
        }
        Ok(_) => return Err(EntryError::Exists),
        Err(e) => return Err(sys("inspect")(e)),
    }
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(sys("create directory")(e)),
    }
    let fd = open_dir(parent, name).map_err(in_the_way(path, "open directory"))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(sys("set mode"))?;
    Ok(fd)
}

/// Refuses early (before any content is read) what the final rename would refuse.
fn check_room(parent: BorrowedFd<'_>, name: &[u8], overwrite: bool) -> Result<(), EntryError> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Ok(_) if !overwrite => Err(EntryError::Exists),
        Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
            Err(EntryError::DirInTheWay)
        }
        Ok(_) => Ok(()),
        Err(e) => Err(sys("inspect")(e)),
    }
}

/// Names for files being written. Unique within this process; an old one left by a crashed
/// restore is stepped over.
fn temp_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        ".backuphub-restore.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `make` with fresh temporary names until one is free.
fn with_temp_name<T>(
    mut make: impl FnMut(&str) -> rustix::io::Result<T>,
    op: &'static str,
) -> Result<(String, T), EntryError> {
    let mut tries = 0;
    loop {
        let name = temp_name();
        match make(&name) {
            Ok(t) => return Ok((name, t)),
            Err(Errno::EXIST) if tries < 100 => tries += 1,
            Err(e) => return Err(sys(op)(e)),
        }
    }
}

/// Moves a finished entry to its final name. `rename` replaces an existing non-directory
/// (a planted symlink included) without following it; without `overwrite` nothing existing
/// is replaced.
fn place(
    from_dir: BorrowedFd<'_>,
    from: &str,
    parent: BorrowedFd<'_>,
    name: &[u8],
    overwrite: bool,
) -> Result<(), EntryError> {
    let result = if overwrite {
        rustix::fs::renameat(from_dir, from, parent, name)
    } else {
        match rustix::fs::renameat_with(from_dir, from, parent, name, RenameFlags::NOREPLACE) {
            // File systems without RENAME_NOREPLACE: check, then rename.
            Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
                check_room(parent, name, false)?;
                rustix::fs::renameat(from_dir, from, parent, name)
            }
            other => other,
        }
    };
    match result {
        Ok(()) => Ok(()),
        Err(Errno::EXIST) => Err(EntryError::Exists),
        Err(Errno::ISDIR | Errno::NOTEMPTY) => Err(EntryError::DirInTheWay),
        Err(e) => Err(sys("move into place")(e)),
    }
}

/// A regular file: written and verified under a temporary name, metadata set on the open
/// descriptor, then renamed into place. On any failure the temporary file is removed.
fn write_file(
    content: &mut EntryContent<'_>,
    parent: BorrowedFd<'_>,
    name: &[u8],
    e: &Entry,
    mode: u32,
    overwrite: bool,
    is_root: bool,
) -> Result<u64, EntryError> {
    check_room(parent, name, overwrite)?;
    let (tmp, fd) = with_temp_name(
        |n| {
            rustix::fs::openat(
                parent,
                n,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
        },
        "create",
    )?;
    let mut f = File::from(fd);
    let result = (|| {
        let n = content.copy_to(&mut f)?;
        if n != e.size {
            return Err(EntryError::Size {
                got: n,
                want: e.size,
            });
        }
        f.sync_all()
            .map_err(|err| EntryError::Io { op: "sync", err })?;
        // chown clears setuid/setgid bits, so it comes before chmod.
        if is_root {
            rustix::fs::fchown(&f, Some(uid(e.uid)), Some(gid(e.gid))).map_err(sys("set owner"))?;
        }
        rustix::fs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(sys("set mode"))?;
        rustix::fs::futimens(&f, &times(e.mtime_ns)).map_err(sys("set times"))?;
        place(parent, &tmp, parent, name, overwrite)?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(parent, tmp.as_str(), AtFlags::empty());
    }
    result
}

/// A symlink, FIFO or device node. These have no descriptor to set metadata on, and
/// name-based calls in a directory someone else can write to could be raced (a swapped-in
/// hard link would take the chown). So they are made in a fresh staging directory that only
/// we can write to, finished there, and renamed into place.
fn make_special(
    parent: BorrowedFd<'_>,
    name: &[u8],
    e: &Entry,
    overwrite: bool,
    is_root: bool,
) -> Result<(), EntryError> {
    check_room(parent, name, overwrite)?;
    let (stage_name, ()) = with_temp_name(
        |n| rustix::fs::mkdirat(parent, n, Mode::from_raw_mode(0o700)),
        "create staging directory",
    )?;
    let result = (|| {
        let stage =
            open_dir(parent, stage_name.as_bytes()).map_err(sys("open staging directory"))?;
        let st = rustix::fs::fstat(&stage).map_err(sys("inspect staging directory"))?;
        if st.st_uid != rustix::process::geteuid().as_raw() {
            // Someone swapped in a directory of their own between mkdir and open.
            return Err(EntryError::Io {
                op: "open staging directory",
                err: std::io::Error::other("it was replaced by another user's directory"),
            });
        }
        let result = finish_special(&stage, e, is_root)
            .and_then(|()| place(stage.as_fd(), "e", parent, name, overwrite));
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&stage, "e", AtFlags::empty());
        }
        result
    })();
    let _ = rustix::fs::unlinkat(parent, stage_name.as_str(), AtFlags::REMOVEDIR);
    result
}

fn finish_special(stage: &OwnedFd, e: &Entry, is_root: bool) -> Result<(), EntryError> {
    // Setuid/setgid bits confer nothing on links and nodes; the sticky bit stays.
    let mode = Mode::from_raw_mode(e.mode & 0o1777);
    match e.kind {
        EntryKind::Symlink => {
            let link = e.link_target.clone().unwrap_or_default();
            rustix::fs::symlinkat(link, stage, "e").map_err(sys("create symlink"))?;
        }
        EntryKind::Fifo => {
            rustix::fs::mknodat(stage, "e", FileType::Fifo, mode, 0).map_err(sys("create FIFO"))?;
        }
        EntryKind::CharDevice | EntryKind::BlockDevice => {
            let ft = if e.kind == EntryKind::CharDevice {
                FileType::CharacterDevice
            } else {
                FileType::BlockDevice
            };
            rustix::fs::mknodat(stage, "e", ft, mode, e.rdev.unwrap_or(0))
                .map_err(sys("create device node"))?;
        }
        EntryKind::File | EntryKind::Dir => unreachable!("handled by the caller"),
    }
    if is_root {
        rustix::fs::chownat(
            stage,
            "e",
            Some(uid(e.uid)),
            Some(gid(e.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(sys("set owner"))?;
    }
    // Never chmod a symlink (on Linux that would change its target).
    if e.kind != EntryKind::Symlink {
        rustix::fs::chmodat(stage, "e", mode, AtFlags::empty()).map_err(sys("set mode"))?;
    }
    rustix::fs::utimensat(stage, "e", &times(e.mtime_ns), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(sys("set times"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{path}: {err}` messages carry their cause in the text only, so that `{:#}` (which
    /// appends each `source()`) prints it once.
    #[test]
    fn causes_are_printed_once() {
        let cause = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let errors = [
            RestoreError::Io {
                path: "/t/x".into(),
                err: cause(),
            },
            RestoreError::Entry {
                path: "x".into(),
                err: EntryError::Io {
                    op: "create",
                    err: cause(),
                },
            },
        ];
        for e in errors {
            let shown = format!("{:#}", anyhow::Error::from(e));
            assert_eq!(shown.matches("ermission denied").count(), 1, "{shown}");
        }
    }

    /// A snapshot of files named by logical keys that are no safe paths.
    fn keyed_snapshot(dir: &Path, keys: &[&[u8]]) -> (Repository, Snapshot) {
        struct Keyed(Vec<Vec<u8>>);
        impl crate::source::Source for Keyed {
            fn description(&self) -> String {
                "keyed".into()
            }
            fn entries<'a>(
                &'a mut self,
                _: crate::repo::index::Previous,
            ) -> Box<
                dyn Iterator<Item = Result<crate::source::SourceEntry, crate::source::SourceError>>
                    + 'a,
            > {
                Box::new(self.0.drain(..).map(|k| {
                    let mut entry = Entry::with_key(&k, EntryKind::File);
                    entry.size = k.len() as u64;
                    entry.meta.insert("etag".into(), "\"x\"".into());
                    Ok(crate::source::SourceEntry {
                        entry,
                        content: crate::source::Content::Read(Box::new(std::io::Cursor::new(k))),
                    })
                }))
            }
        }
        let opts = crate::repo::OpenOptions {
            identity: None,
            state_dir: dir.join("state"),
        };
        let repo = Repository::init(&dir.join("repo"), &opts, &Default::default()).unwrap();
        let mut src = Keyed(keys.iter().map(|k| k.to_vec()).collect());
        let (_, snap) = crate::archiver::archive(
            &repo,
            "job",
            &mut src,
            &Default::default(),
            &Default::default(),
            &|| Ok(()),
        )
        .unwrap();
        (repo, snap)
    }

    #[test]
    fn keyed_entries_restore_to_their_escaped_paths_inside_the_target() {
        let t = tempfile::tempdir().unwrap();
        // In key order, which is not the order of their escaped paths.
        let keys: [&[u8]; 5] = [b"/abs", b"a/-", b"a/./c", b"a//b", b"x/../../escape"];
        let (repo, snap) = keyed_snapshot(t.path(), &keys);
        let target = t.path().join("out");
        let stats = restore(&repo, &snap, &target, &RestoreOptions::default()).unwrap();
        assert_eq!(stats.entries, 5);
        for (key, path) in [
            (&b"/abs"[..], "%/abs"),
            (b"a/-", "a/-"),
            (b"a/./c", "a/%2E/c"),
            (b"a//b", "a/%/b"),
            (b"x/../../escape", "x/%2E%2E/%2E%2E/escape"),
        ] {
            assert_eq!(std::fs::read(target.join(path)).unwrap(), key, "{path}");
        }
        assert!(!t.path().join("escape").exists());
        // A selection by restore path, with and without a `%` in it.
        for (only, want) in [("a", 3), ("a/%", 1), ("x/%2E%2E", 1)] {
            let out = t.path().join(format!("sel-{}", only.replace('/', "_")));
            let opts = RestoreOptions {
                only: Some(EntryPath::from(only)),
                overwrite: false,
            };
            let stats = restore(&repo, &snap, &out, &opts).unwrap();
            assert_eq!(stats.entries, want, "{only}");
        }
        // `cat` finds an entry by its key or by where it restores to.
        for name in ["a//b", "a/%/b"] {
            let mut out = Vec::new();
            cat(
                &repo,
                &snap,
                &EntryPath::new(name.as_bytes().to_vec()),
                &mut out,
            )
            .unwrap();
            assert_eq!(out, b"a//b");
        }
        assert!(matches!(
            cat(&repo, &snap, &EntryPath::from("a/b"), &mut Vec::new()),
            Err(RestoreError::NotFound(_))
        ));
    }

    /// A sink that records what it is given: what a bucket or kubectl sink would see.
    #[derive(Default)]
    struct Recording(Vec<(Option<Vec<u8>>, String, Vec<u8>)>, bool);

    impl Sink for Recording {
        fn entry(&mut self, e: &Entry, content: &mut EntryContent<'_>) -> Result<u64, EntryError> {
            let mut body = Vec::new();
            std::io::Read::read_to_end(content, &mut body).unwrap();
            self.0.push((e.key.clone(), e.meta["etag"].clone(), body));
            Ok(e.size)
        }
        fn finish(&mut self, _: &mut RestoreStats) -> Result<(), RestoreError> {
            self.1 = true;
            Ok(())
        }
    }

    #[test]
    fn a_sink_gets_keys_metadata_and_verified_content() {
        let t = tempfile::tempdir().unwrap();
        let (repo, snap) = keyed_snapshot(t.path(), &[b"k/", b"plain"]);
        let mut sink = Recording::default();
        let stats = restore_to(
            &repo,
            &snap,
            &mut sink,
            &RestoreOptions::default(),
            &mut || {},
        )
        .unwrap();
        assert_eq!(stats.entries, 2);
        assert!(sink.1, "finished");
        assert_eq!(
            sink.0,
            vec![
                (Some(b"k/".to_vec()), "\"x\"".to_string(), b"k/".to_vec()),
                (None, "\"x\"".to_string(), b"plain".to_vec()),
            ]
        );
    }

    #[test]
    fn only_losses_of_the_repository_itself_are_fatal() {
        let damaged = RepoError::Corrupt("chunk x: content does not match its id".into());
        assert!(!repo_error_is_fatal(&damaged));
        assert!(!repo_error_is_fatal(&RepoError::MissingBlob(Id([7; 32]))));
        assert!(repo_error_is_fatal(&RepoError::NotARepository("/r".into())));
        let full = EntryError::Io {
            op: "write",
            err: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        assert!(full.is_fatal());
        assert!(!EntryError::Exists.is_fatal());
    }
}
