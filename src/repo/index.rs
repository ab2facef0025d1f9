//! The sled index: a cache on the writer's own disk, never the source of truth.
//!
//! It maps chunk ids to pack locations and keeps each job's previous entries for
//! incremental runs. It is rebuilt from pack headers whenever it is missing, corrupt, of
//! another format, or out of step with the packs on disk; `repair index` forces that.
//! It lives in the state directory rather than on the backup disk because the file cache
//! holds plaintext names, which an encrypted repository must never reveal.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::filecache::FileCacheError;
pub use super::filecache::{FileCacheWriter, Previous};
mod sets;

use super::id::Id;
use super::pack::{BlobKind, PackEntry};

const FORMAT_KEY: &[u8] = b"format";
// 3: locations carry the pack key slot (repository format 2).
const FORMAT: &[u8] = b"backuphub-index-4";
/// First byte of a pack record: its blob locations are being written, or all written.
const PACK_PENDING: u8 = 0;
const PACK_COMPLETE: u8 = 1;
/// sled's default page cache is 1 GiB; a Pi has far less memory to spare.
const CACHE_BYTES: u64 = 8 << 20;
/// Bytes of keys and values per sled batch. sled's memory depends on the batch size far
/// more than on its cache setting: inserting 1 M random ids (77 bytes each) measured a
/// peak RSS of 5.2 GiB in batches of 5,000 entries, 635 MiB for 200 k ids, but 68 MiB for
/// the 1 M in batches of 50 to 100 (and single inserts were both slower and larger).
/// About 100 entries per batch, then.
const BATCH_BYTES: usize = 8 << 10;
/// Temporary indexes live in `<state>/tmp-index/<pid>-<nonce>`, private to the user.
const TEMP_DIR: &str = "tmp-index";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index {path}: {error}")]
    Sled { path: PathBuf, error: sled::Error },
    #[error("index entry for {0} is malformed")]
    Malformed(String),
    #[error(transparent)]
    FileCache(#[from] FileCacheError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: Id,
    pub offset: u64,
    pub length: u32,
    pub kind: BlobKind,
    /// Slot of the pack's key table the blob was sealed under.
    pub key: u16,
}

const LOCATION_LEN: usize = 47;

impl Location {
    pub fn of(pack: Id, e: &PackEntry) -> Location {
        Location {
            pack,
            offset: e.offset,
            length: e.length,
            kind: e.kind,
            key: e.key,
        }
    }

    fn encode(&self) -> [u8; LOCATION_LEN] {
        let mut out = [0u8; LOCATION_LEN];
        out[..32].copy_from_slice(&self.pack.0);
        out[32..40].copy_from_slice(&self.offset.to_le_bytes());
        out[40..44].copy_from_slice(&self.length.to_le_bytes());
        out[44] = self.kind as u8;
        out[45..47].copy_from_slice(&self.key.to_le_bytes());
        out
    }

    fn decode(raw: &[u8]) -> Option<Location> {
        if raw.len() != LOCATION_LEN {
            return None;
        }
        Some(Location {
            pack: Id::from_slice(&raw[..32])?,
            offset: u64::from_le_bytes(raw[32..40].try_into().ok()?),
            length: u32::from_le_bytes(raw[40..44].try_into().ok()?),
            kind: BlobKind::from_u8(raw[44])?,
            key: u16::from_le_bytes(raw[45..47].try_into().ok()?),
        })
    }
}

/// How the index was opened: persistent, or a throwaway one because another process (the
/// daemon, usually) holds the persistent index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexMode {
    Persistent,
    Temporary,
}

pub struct Index {
    db: sled::Db,
    chunks: sled::Tree,
    packs: sled::Tree,
    /// pack → [pending|complete], apart from the id lists in `packs`: every sync reads
    /// all of these, and reading the id lists with them cost the daemon 2.4 s and ~100 MiB
    /// per refresh on a repository of a million blobs.
    pack_state: sled::Tree,
    path: PathBuf,
    /// The per-job file caches ([`super::filecache`]): beside a persistent index, inside
    /// a temporary one's directory.
    files_dir: PathBuf,
    pub mode: IndexMode,
    /// Removes a temporary index's directory when the index is dropped (after `db`).
    _temp_dir: Option<tempfile::TempDir>,
}

/// The blob ids of a pack record (after its pending/complete byte).
fn record_ids(record: &[u8]) -> std::slice::ChunksExact<'_, u8> {
    record.get(1..).unwrap_or_default().chunks_exact(32)
}

/// Removes temporary indexes left by killed processes: sled holds an exclusive `flock`
/// on its `db` file while open, so one we can lock has no owner any more.
fn collect_stale_temporaries(parent: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for d in rd.flatten() {
        let db = d.path().join("index").join("db");
        let owned = match std::fs::File::open(&db) {
            Ok(f) => {
                rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err()
            }
            Err(_) => false,
        };
        if !owned {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}

fn is_lock_conflict(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock")
        }
        _ => false,
    }
}

impl Index {
    /// Opens the index at `dir`. A corrupt or foreign index is discarded and recreated
    /// empty (the caller then syncs it from the packs); an index held by another process
    /// gives way to a temporary one.
    pub fn open(dir: &Path) -> Result<Index, IndexError> {
        let sled_err = |error| IndexError::Sled {
            path: dir.to_owned(),
            error,
        };
        let config = || sled::Config::new().path(dir).cache_capacity(CACHE_BYTES);
        let db = match config().open() {
            Ok(db) => db,
            Err(e) if is_lock_conflict(&e) => {
                tracing::info!(index = %dir.display(), "index is in use by another process (the daemon?); using a temporary index");
                return Index::temporary(dir.parent());
            }
            Err(e) => {
                tracing::warn!(index = %dir.display(), error = %e, "index is unreadable; rebuilding it");
                let _ = std::fs::remove_dir_all(dir);
                config().open().map_err(sled_err)?
            }
        };
        match db.get(FORMAT_KEY) {
            Ok(Some(v)) if v == FORMAT => {}
            Ok(None) if db.tree_names().len() <= 1 && db.is_empty() => {
                db.insert(FORMAT_KEY, FORMAT).map_err(sled_err)?;
            }
            _ => {
                tracing::warn!(index = %dir.display(), "index has another format; rebuilding it");
                drop(db);
                let _ = std::fs::remove_dir_all(dir);
                let db = config().open().map_err(sled_err)?;
                db.insert(FORMAT_KEY, FORMAT).map_err(sled_err)?;
                return Index::from_db(db, dir, IndexMode::Persistent);
            }
        }
        let index = Index::from_db(db, dir, IndexMode::Persistent)?;
        let dropped = super::filecache::collect_temporaries(&index.files_dir);
        if dropped > 0 {
            tracing::info!(dropped, "collected file caches of interrupted runs");
        }
        if let Some(state) = dir.parent() {
            collect_stale_temporaries(&state.join(TEMP_DIR));
        }
        Ok(index)
    }

    /// An empty index that vanishes with the process; the caller syncs it from the packs.
    ///
    /// It lives in a private (0700) directory: under `state` when given (where the next
    /// start collects it if this process is killed), else in a fresh private temporary
    /// directory. Never in `/dev/shm`, which is world-readable and outlives a SIGKILL;
    /// the file cache holds plaintext names.
    pub fn temporary(state: Option<&Path>) -> Result<Index, IndexError> {
        let tmp_err = |path: &Path, e: std::io::Error| IndexError::Sled {
            path: path.to_owned(),
            error: sled::Error::Io(e),
        };
        let prefix = match state {
            Some(_) => format!("{}-", std::process::id()),
            None => "backuphub-index-".to_owned(),
        };
        let mut builder = tempfile::Builder::new();
        builder
            .prefix(&prefix)
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let dir = match state {
            Some(state) => {
                let parent = state.join(TEMP_DIR);
                collect_stale_temporaries(&parent);
                std::fs::create_dir_all(&parent).map_err(|e| tmp_err(&parent, e))?;
                builder
                    .tempdir_in(&parent)
                    .map_err(|e| tmp_err(&parent, e))?
            }
            None => builder
                .tempdir()
                .map_err(|e| tmp_err(&std::env::temp_dir(), e))?,
        };
        // sled and the file caches side by side inside the private directory.
        let sled_dir = dir.path().join("index");
        let db = sled::Config::new()
            .path(&sled_dir)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|error| IndexError::Sled {
                path: sled_dir.clone(),
                error,
            })?;
        let mut index = Index::from_db(db, &sled_dir, IndexMode::Temporary)?;
        index._temp_dir = Some(dir);
        Ok(index)
    }

    fn from_db(db: sled::Db, dir: &Path, mode: IndexMode) -> Result<Index, IndexError> {
        let t = |name: &str| {
            db.open_tree(name).map_err(|error| IndexError::Sled {
                path: dir.to_owned(),
                error,
            })
        };
        Ok(Index {
            chunks: t("chunks")?,
            packs: t("packs")?,
            pack_state: t("pack_state")?,
            db,
            path: dir.to_owned(),
            // `<state>/<repo>/index` → `<state>/<repo>/files`; a temporary index's
            // `<tmp>/index` → `<tmp>/files`.
            files_dir: dir.with_file_name("files"),
            mode,
            _temp_dir: None,
        })
    }

    fn err(&self, error: sled::Error) -> IndexError {
        IndexError::Sled {
            path: self.path.clone(),
            error,
        }
    }

    pub fn get(&self, id: &Id) -> Result<Option<Location>, IndexError> {
        match self.chunks.get(id.0).map_err(|e| self.err(e))? {
            None => Ok(None),
            Some(raw) => Location::decode(&raw)
                .map(Some)
                .ok_or_else(|| IndexError::Malformed(id.to_hex())),
        }
    }

    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// Records a pack and its blobs.
    ///
    /// A pending pack record goes first, then the blob locations in batches, then the
    /// record is marked complete. sled recovers a prefix of its log, so after a crash a
    /// blob location always has a pack record (the next sync removes it if the pack is
    /// gone: no false hit that would make a backup reference lost data), and a pending
    /// record makes the next sync read the pack's header again (no lasting miss).
    pub fn add_pack(&self, pack: Id, entries: &[PackEntry]) -> Result<(), IndexError> {
        let mut record = Vec::with_capacity(1 + entries.len() * 32);
        record.push(PACK_PENDING);
        for e in entries {
            record.extend_from_slice(&e.id.0);
        }
        self.pack_state
            .insert(pack.0, &[PACK_PENDING])
            .map_err(|e| self.err(e))?;
        self.packs
            .insert(pack.0, record.as_slice())
            .map_err(|e| self.err(e))?;
        let mut batch = sled::Batch::default();
        let mut batch_bytes = 0;
        for e in entries {
            batch.insert(&e.id.0[..], &Location::of(pack, e).encode()[..]);
            batch_bytes += 32 + LOCATION_LEN;
            if batch_bytes >= BATCH_BYTES {
                self.chunks
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(|e| self.err(e))?;
                batch_bytes = 0;
            }
        }
        if batch_bytes > 0 {
            self.chunks.apply_batch(batch).map_err(|e| self.err(e))?;
        }
        record[0] = PACK_COMPLETE;
        self.packs.insert(pack.0, record).map_err(|e| self.err(e))?;
        self.pack_state
            .insert(pack.0, &[PACK_COMPLETE])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Packs whose record lists `id`, other than `except`: where to look for another
    /// copy when the indexed one is gone or damaged. Scans the pack records (local,
    /// no repository I/O); used only on the rare miss.
    pub fn packs_listing(&self, id: &Id, except: Option<&Id>) -> Result<Vec<Id>, IndexError> {
        let mut out = Vec::new();
        for kv in self.packs.iter() {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            let Some(pack) = Id::from_slice(&k) else {
                continue;
            };
            if Some(&pack) != except && record_ids(&v).any(|c| c == id.0) {
                out.push(pack);
            }
        }
        Ok(out)
    }

    /// Points `id` at one of its copies (after the indexed copy failed).
    pub fn set_location(&self, id: &Id, loc: Location) -> Result<(), IndexError> {
        self.chunks
            .insert(id.0, &loc.encode()[..])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn remove_pack(&self, pack: &Id) -> Result<(), IndexError> {
        if let Some(record) = self.packs.get(pack.0).map_err(|e| self.err(e))? {
            for raw in record_ids(&record) {
                if let Some(loc) = self.chunks.get(raw).map_err(|e| self.err(e))?
                    && Location::decode(&loc).is_some_and(|l| l.pack == *pack)
                {
                    self.chunks.remove(raw).map_err(|e| self.err(e))?;
                }
            }
        }
        self.packs.remove(pack.0).map_err(|e| self.err(e))?;
        // Last: until it goes, a sync still sees the pack and finishes its removal.
        self.pack_state.remove(pack.0).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Every recorded pack, with whether all its blob locations were written.
    pub fn indexed_packs(&self) -> Result<HashMap<Id, bool>, IndexError> {
        self.pack_state
            .iter()
            .map(|kv| {
                let (k, v) = kv.map_err(|e| self.err(e))?;
                let id =
                    Id::from_slice(&k).ok_or_else(|| IndexError::Malformed("pack key".into()))?;
                Ok((id, v.first() == Some(&PACK_COMPLETE)))
            })
            .collect()
    }

    pub fn clear(&self) -> Result<(), IndexError> {
        self.chunks.clear().map_err(|e| self.err(e))?;
        self.packs.clear().map_err(|e| self.err(e))?;
        self.pack_state.clear().map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn flush(&self) -> Result<(), IndexError> {
        self.db.flush().map_err(|e| self.err(e))?;
        Ok(())
    }

    // ---- the per-job file cache for incremental runs ----

    /// The previous run's entries of `job`, in sort key order, as an owned cursor (no
    /// borrow of the index: a source may move it to its own thread). An entry is offered
    /// only when `usable` vouches for every one of its chunks (the repository's
    /// [`BlobPresence`]: a copy really exists and is not known damaged; the index alone
    /// cannot say).
    pub fn previous(&self, job: &str, usable: Box<dyn Fn(&Id) -> bool + Send>) -> Previous {
        Previous::open(&self.files_dir, job, usable)
    }

    /// The chunk locations, for [`BlobPresence`]: a handle on the same sled tree.
    pub fn chunk_locations(&self) -> ChunkLocations {
        ChunkLocations(self.chunks.clone())
    }

    /// Starts recording a run's entries; they replace the job's cache only on `commit`.
    pub fn begin_file_cache(&self, job: &str) -> Result<FileCacheWriter, IndexError> {
        Ok(FileCacheWriter::create(&self.files_dir, job)?)
    }
}

/// An owned handle on the index's chunk locations (sled trees are reference-counted).
#[derive(Clone)]
pub struct ChunkLocations(sled::Tree);

impl ChunkLocations {
    /// The indexed pack of `id`; a read error or a malformed record counts as unknown,
    /// which only costs storing or reading the chunk afresh.
    pub fn pack_of(&self, id: &Id) -> Option<Id> {
        let raw = self.0.get(id.0).ok()??;
        Location::decode(&raw).map(|l| l.pack)
    }
}

/// Whether the repository holds a usable copy of a blob, as an owned, cloneable handle
/// (the repository's [`has_blob`](super::Repository::has_blob) check without a borrow of
/// the repository): the index must know the blob, its pack must be among the packs on
/// disk, and that copy must not be recorded as damaged. The pack and damage sets are
/// shared with the repository, so packs registered later count too.
#[derive(Clone)]
pub struct BlobPresence {
    pub locations: ChunkLocations,
    pub packs_on_disk: std::sync::Arc<std::sync::Mutex<HashSet<Id>>>,
    pub damage: std::sync::Arc<std::sync::Mutex<HashMap<Id, Vec<Id>>>>,
}

impl BlobPresence {
    pub fn has(&self, id: &Id) -> bool {
        let Some(pack) = self.locations.pack_of(id) else {
            return false;
        };
        if !self
            .packs_on_disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&pack)
        {
            return false;
        }
        !self
            .damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|packs| packs.contains(&pack))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::tree::{Entry, EntryKind, EntryPath};

    #[test]
    fn locations_and_pack_removal() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i")).unwrap();
        let (p1, p2) = (Id::of(b"p1"), Id::of(b"p2"));
        let e = |n: &[u8], off| PackEntry {
            kind: BlobKind::Data,
            id: Id::of(n),
            offset: off,
            length: 5,
            key: 0,
        };
        idx.add_pack(p1, &[e(b"a", 8), e(b"b", 13)]).unwrap();
        idx.add_pack(p2, &[e(b"c", 8)]).unwrap();
        assert_eq!(idx.get(&Id::of(b"b")).unwrap().unwrap().offset, 13);
        assert_eq!(idx.indexed_packs().unwrap().len(), 2);
        assert!(idx.indexed_packs().unwrap().values().all(|c| *c));
        idx.remove_pack(&p1).unwrap();
        assert!(idx.get(&Id::of(b"a")).unwrap().is_none());
        assert!(idx.get(&Id::of(b"c")).unwrap().is_some());
    }

    #[test]
    fn a_large_pack_is_indexed_whole_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i")).unwrap();
        // Several batches and a partial last one.
        let n = 3 * BATCH_BYTES / (32 + LOCATION_LEN) + 7;
        let entries: Vec<PackEntry> = (0..n as u64)
            .map(|i| PackEntry {
                kind: BlobKind::Data,
                id: Id::of(&i.to_le_bytes()),
                offset: 8 + i,
                length: 1,
                key: (i % 3) as u16,
            })
            .collect();
        let p = Id::of(b"p");
        idx.add_pack(p, &entries).unwrap();
        assert_eq!(idx.chunk_count(), n);
        for e in [entries[0], entries[n / 2], entries[n - 1]] {
            assert_eq!(idx.get(&e.id).unwrap(), Some(Location::of(p, &e)));
        }
    }

    #[test]
    fn an_interrupted_add_leaves_a_pending_pack_and_no_orphan_location() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i")).unwrap();
        let p = Id::of(b"p");
        let e = PackEntry {
            kind: BlobKind::Data,
            id: Id::of(b"a"),
            offset: 8,
            length: 5,
            key: 0,
        };
        idx.add_pack(p, &[e]).unwrap();
        assert_eq!(idx.indexed_packs().unwrap().get(&p), Some(&true));
        // What a crash after the first write of add_pack leaves: a pending record.
        idx.pack_state.insert(p.0, &[PACK_PENDING]).unwrap();
        assert_eq!(idx.indexed_packs().unwrap().get(&p), Some(&false));
        // Every location belongs to a recorded pack, so removing the pack removes it.
        idx.remove_pack(&p).unwrap();
        assert!(idx.get(&e.id).unwrap().is_none());
        assert!(idx.indexed_packs().unwrap().is_empty());
    }

    #[test]
    fn uncommitted_file_caches_are_collected_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i");
        {
            let idx = Index::open(&path).unwrap();
            let mut w = idx.begin_file_cache("job").unwrap();
            w.insert(&Entry::new(EntryPath::from("a"), EntryKind::File))
                .unwrap();
            w.commit().unwrap();
            // What a run killed before its commit leaves (a SIGKILL runs no destructor).
            std::mem::forget(idx.begin_file_cache("job").unwrap());
            assert_eq!(std::fs::read_dir(&idx.files_dir).unwrap().count(), 2);
        }
        let idx = Index::open(&path).unwrap();
        assert_eq!(idx.mode, IndexMode::Persistent);
        assert_eq!(
            std::fs::read_dir(&idx.files_dir).unwrap().count(),
            1,
            "the uncommitted cache is gone"
        );
        assert!(idx.previous("job", Box::new(|_| true)).find(b"a").is_some());
    }

    #[test]
    fn temporary_indexes_are_private_and_collected() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let t = Index::temporary(Some(&state)).unwrap();
        let tdir = t.path.parent().unwrap().to_owned();
        assert!(tdir.starts_with(state.join(TEMP_DIR)));
        let mode = std::fs::metadata(&tdir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "not readable by others: {mode:o}");
        // Another live one is left alone; a dead one (no process holds its sled lock) goes.
        let dead = state.join(TEMP_DIR).join("999999-dead");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::create_dir_all(dead.join("index")).unwrap();
        std::fs::write(dead.join("index/db"), b"").unwrap();
        let t2 = Index::temporary(Some(&state)).unwrap();
        assert!(!dead.exists());
        assert!(tdir.exists());
        drop(t);
        drop(t2);
        assert!(!tdir.exists(), "removed with its index");
    }

    #[test]
    fn garbage_index_dirs_are_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("db"), b"this is not a sled database at all").unwrap();
        std::fs::write(path.join("conf"), b"garbage").unwrap();
        let idx = Index::open(&path).unwrap();
        assert_eq!(idx.chunk_count(), 0);
    }

    #[test]
    fn previous_is_owned_and_finds_by_sort_key() {
        fn owned<T: Send + 'static>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i")).unwrap();
        let mut w = idx.begin_file_cache("job").unwrap();
        let mut keyed = Entry::with_key(b"a//b", EntryKind::File);
        keyed.chunks = vec![Id::of(b"gone"), Id::of(b"here")];
        w.insert(&Entry::new(EntryPath::from("a/-"), EntryKind::File))
            .unwrap();
        w.insert(&keyed).unwrap();
        owned(&w);
        w.commit().unwrap();
        let here = Id::of(b"here");
        let mut prev = idx.previous("job", Box::new(|_| true));
        owned(&prev);
        // Moved to another thread, as a source producing entries there would.
        let found = std::thread::spawn(move || {
            let a = prev.find(b"a/-").is_some();
            let k = prev.find(b"a//b");
            (a, k)
        })
        .join()
        .unwrap();
        assert!(found.0);
        assert_eq!(found.1.unwrap().path.as_bytes(), b"a/%/b");
        // An entry with a chunk the presence check denies is not offered.
        let mut prev = idx.previous("job", Box::new(move |c| *c == here));
        assert!(prev.find(b"a//b").is_none());
        drop(idx);
    }

    #[test]
    fn blob_presence_needs_the_pack_on_disk_and_an_undamaged_copy() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(&dir.path().join("i")).unwrap();
        let (p, a) = (Id::of(b"p"), Id::of(b"a"));
        idx.add_pack(
            p,
            &[PackEntry {
                kind: BlobKind::Data,
                id: a,
                offset: 8,
                length: 5,
                key: 0,
            }],
        )
        .unwrap();
        let presence = BlobPresence {
            locations: idx.chunk_locations(),
            packs_on_disk: Default::default(),
            damage: Default::default(),
        };
        assert!(!presence.has(&a), "pack not on disk");
        presence.packs_on_disk.lock().unwrap().insert(p);
        assert!(presence.clone().has(&a));
        assert!(!presence.has(&Id::of(b"unknown")));
        presence.damage.lock().unwrap().insert(a, vec![p]);
        assert!(!presence.has(&a), "known damaged");
    }
}
