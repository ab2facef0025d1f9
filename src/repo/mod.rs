//! The repository: packs, snapshots, keys and locks on the backup disk, plus the index
//! cache in the state directory. Knows nothing about where data came from.
//!
//! ```text
//! <repo>/backuphub.json        format, id, chunker, compression, recipients
//! <repo>/keys/repo.age         key material, age-encrypted to the recipients
//! <repo>/packs/xx/<id>         immutable packs, named by BLAKE3 of their bytes
//! <repo>/snapshots/<id>        manifests, named by BLAKE3 of their bytes
//! <repo>/refs/<id>             per-snapshot lists of referenced blob ids (plaintext)
//! <repo>/locks/<nonce>.json    lock holders
//! <repo>/tmp/                  writes in progress (garbage after a crash)
//! <state>/<repo-id>/index/     sled index (a cache)
//! <state>/<repo-id>/key.json   writer's copy of the key material (encrypted repos)
//! ```

pub mod crypto;
pub mod id;
pub mod index;
pub mod lock;
pub mod pack;
pub mod snapshot;
pub mod tree;

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use data_encoding::BASE64;
use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crypto::{CryptoError, Identities, KeyMaterial, Recipient, Sealer};
use id::{Id, IdHasher};
use index::{Index, IndexError};
use lock::{LockError, LockGuard, LockKind};
use pack::{BlobKind, PackError};
use snapshot::{Details, Snapshot, SnapshotRef};
use tree::Entry;

pub const REPO_FORMAT: u32 = 1;
const CONFIG_FILE: &str = "backuphub.json";
const KEY_FILE: &str = "keys/repo.age";
/// Upper bound for any blob's plaintext: the largest chunk, or a tree blob with one huge
/// entry. Protects against decompression bombs in damaged packs.
const MAX_PLAIN_BLOB: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(
        "{0} is not a backuphub repository (no {CONFIG_FILE}); is the disk mounted? create one with `backuphub init`"
    )]
    NotARepository(PathBuf),
    #[error("{0} is not empty; refusing to create a repository there")]
    NotEmpty(PathBuf),
    #[error("repository format {0} is not supported by this version (supports {REPO_FORMAT})")]
    UnsupportedFormat(u32),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("repository damaged: {0}")]
    Corrupt(String),
    #[error("chunk {0} is missing from the repository")]
    MissingBlob(Id),
    #[error(
        "this machine cannot write to encrypted repository {repo}: its key is not cached in {state}; run `backuphub key cache --identity FILE` once"
    )]
    NoWriteKey { repo: String, state: PathBuf },
    #[error("no snapshot matches {0:?}")]
    SnapshotNotFound(String),
    #[error("{0:?} matches several snapshots; give more of the id")]
    AmbiguousSnapshot(String),
    #[error("invalid repository settings: {0}")]
    Settings(String),
}

impl RepoError {
    /// A stable, low-cardinality name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            RepoError::NotARepository(_) => "no_repository",
            RepoError::NotEmpty(_) | RepoError::Settings(_) => "settings",
            RepoError::UnsupportedFormat(_) => "format",
            RepoError::Io { .. } => "io",
            RepoError::Pack(_) | RepoError::Corrupt(_) | RepoError::MissingBlob(_) => "corrupt",
            RepoError::Crypto(_) | RepoError::NoWriteKey { .. } => "crypto",
            RepoError::Index(_) => "index",
            RepoError::Lock(_) => "locked",
            RepoError::SnapshotNotFound(_) | RepoError::AmbiguousSnapshot(_) => "not_found",
        }
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Makes a rename or create in `dir` durable.
pub(crate) fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dest` atomically: temporary file, fsync, rename, fsync directory.
pub(crate) fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let tmp = tmp_dir.join(format!("{}.tmp", random_hex()));
    let result = (|| {
        let mut f = File::create_new(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        fsync_dir(dest.parent().expect("destination has a parent"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(dest))
}

pub(crate) fn random_hex() -> String {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).expect("the OS random source is available");
    hex::encode(b)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    pub format: u32,
    pub id: Id,
    pub created: DateTime<Utc>,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub pack_size: u64,
    /// Public keys new data is encrypted to; empty means unencrypted.
    #[serde(default)]
    pub recipients: Vec<String>,
}

/// Settings for `init`.
#[derive(Clone)]
pub struct InitOptions {
    pub recipients: Vec<Recipient>,
    pub chunker: ChunkerParams,
    pub compression_level: i32,
    pub pack_size: u64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            recipients: Vec::new(),
            chunker: ChunkerParams::default(),
            compression_level: 3,
            pack_size: 32 << 20,
        }
    }
}

/// How to open a repository.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    pub identity: Option<PathBuf>,
    /// Where the index cache and the writer key live.
    pub state_dir: PathBuf,
}

pub struct Repository {
    root: PathBuf,
    config: RepoConfig,
    sealer: Sealer,
    /// `None` for an encrypted repository opened without key material: it can list
    /// snapshots and check structure, but not read or write data.
    keys: Option<(IdHasher, u64)>,
    index: Index,
    state: PathBuf,
    open_pack: Mutex<Option<(Id, File)>>,
    /// Serializes index syncs with prune's sweep inside one process: a sync between a
    /// repack and the removal of the old pack would change which copy prune keeps.
    maintenance: Mutex<()>,
}

impl Repository {
    pub fn init(
        root: &Path,
        opts: &OpenOptions,
        init: &InitOptions,
    ) -> Result<Repository, RepoError> {
        init.chunker.validate().map_err(RepoError::Settings)?;
        if !(1..=19).contains(&init.compression_level) {
            return Err(RepoError::Settings(format!(
                "zstd level {} is outside 1..=19",
                init.compression_level
            )));
        }
        if root.exists() {
            let mut rd = std::fs::read_dir(root).map_err(io_err(root))?;
            if rd.next().is_some() {
                return Err(RepoError::NotEmpty(root.to_owned()));
            }
        }
        for d in ["", "keys", "packs", "snapshots", "refs", "locks", "tmp"] {
            std::fs::create_dir_all(root.join(d)).map_err(io_err(root))?;
        }
        let mut raw_id = [0u8; 32];
        getrandom::fill(&mut raw_id).expect("the OS random source is available");
        let config = RepoConfig {
            format: REPO_FORMAT,
            id: Id(raw_id),
            created: Utc::now(),
            chunker: init.chunker,
            compression_level: init.compression_level,
            pack_size: init.pack_size,
            recipients: init
                .recipients
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
        };
        if !init.recipients.is_empty() {
            let keys = KeyMaterial::generate();
            let sealed = keys.seal(&init.recipients)?;
            write_atomic(&root.join("tmp"), &root.join(KEY_FILE), &sealed)?;
            cache_key(&opts.state_dir.join(config.id.to_hex()), &keys)?;
        }
        // The config is written last: a directory without it is not a repository, so an
        // interrupted init can simply be repeated after emptying the directory.
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        write_atomic(&root.join("tmp"), &root.join(CONFIG_FILE), &json)?;
        Repository::open(root, opts)
    }

    pub fn open(root: &Path, opts: &OpenOptions) -> Result<Repository, RepoError> {
        let cfg_path = root.join(CONFIG_FILE);
        let bytes = match std::fs::read(&cfg_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RepoError::NotARepository(root.to_owned()));
            }
            Err(e) => return Err(io_err(&cfg_path)(e)),
        };
        let config: RepoConfig = serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::Corrupt(format!("{}: {e}", cfg_path.display())))?;
        if config.format != REPO_FORMAT {
            return Err(RepoError::UnsupportedFormat(config.format));
        }
        config
            .chunker
            .validate()
            .map_err(|e| RepoError::Corrupt(format!("{}: {e}", cfg_path.display())))?;
        let recipients = config
            .recipients
            .iter()
            .map(|r| r.parse())
            .collect::<Result<Vec<Recipient>, _>>()?;
        let state = opts.state_dir.join(config.id.to_hex());
        // A reader may have nowhere to keep state (a service user whose home is
        // /var/empty): it then works from a temporary index instead of failing.
        let state_ok = match std::fs::create_dir_all(&state) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(state = %state.display(), error = %e, "no usable state directory; using a temporary index");
                false
            }
        };
        let identities = match &opts.identity {
            Some(p) => Some(Identities::from_file(p)?),
            None => None,
        };
        let keys = if recipients.is_empty() {
            Some((IdHasher::Plain, 0))
        } else {
            let material = match &identities {
                Some(ids) => {
                    let key_path = root.join(KEY_FILE);
                    let sealed = std::fs::read(&key_path).map_err(io_err(&key_path))?;
                    let k = KeyMaterial::open(ids, &sealed)?;
                    // Best effort: a read-only restore machine need not be able to cache.
                    let _ = cache_key(&state, &k);
                    Some(k)
                }
                None => load_cached_key(&state),
            };
            material.map(|k| (IdHasher::Keyed(k.id_key), k.chunker_seed))
        };
        for d in ["packs", "snapshots", "refs", "locks", "tmp"] {
            std::fs::create_dir_all(root.join(d)).map_err(io_err(root))?;
        }
        let index = if state_ok {
            Index::open(&state.join("index"))?
        } else {
            Index::temporary()?
        };
        let repo = Repository {
            root: root.to_owned(),
            sealer: Sealer::new(config.compression_level, recipients, identities),
            config,
            keys,
            index,
            state,
            open_pack: Mutex::new(None),
            maintenance: Mutex::new(()),
        };
        repo.sync_index()?;
        Ok(repo)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    pub fn encrypted(&self) -> bool {
        self.sealer.encrypted()
    }

    pub fn packs_dir(&self) -> PathBuf {
        self.root.join("packs")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Caches the key material in the state directory (`key cache`), returning the file
    /// written, or `None` for an unencrypted repository. Unlike the best-effort caching
    /// when opening with an identity, a failure is reported.
    pub fn cache_write_key(&self) -> Result<Option<PathBuf>, RepoError> {
        match self.write_keys()? {
            (IdHasher::Plain, _) => Ok(None),
            (IdHasher::Keyed(id_key), chunker_seed) => {
                let keys = KeyMaterial {
                    id_key,
                    chunker_seed,
                };
                cache_key(&self.state, &keys)?;
                Ok(Some(self.state.join("key.json")))
            }
        }
    }

    /// The id hasher and chunker seed, needed to write.
    pub fn write_keys(&self) -> Result<(IdHasher, u64), RepoError> {
        self.keys.clone().ok_or_else(|| RepoError::NoWriteKey {
            repo: self.config.id.short(),
            state: self.state.clone(),
        })
    }

    pub fn lock(
        &self,
        kind: LockKind,
        job: Option<&str>,
        wait: Duration,
    ) -> Result<LockGuard, RepoError> {
        Ok(lock::acquire(&self.root.join("locks"), kind, job, wait)?)
    }

    /// A shared lock for reading or `forget`, which works without a lock file on a
    /// read-only or full disk (see [`lock::acquire_reader`]).
    pub fn lock_for_reading(
        &self,
        job: Option<&str>,
        wait: Duration,
    ) -> Result<LockGuard, RepoError> {
        Ok(lock::acquire_reader(&self.root.join("locks"), job, wait)?)
    }

    /// Lists pack files on disk.
    pub fn list_packs(&self) -> Result<HashSet<Id>, RepoError> {
        let dir = self.packs_dir();
        let mut out = HashSet::new();
        for sub in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let sub = sub.map_err(io_err(&dir))?.path();
            if !sub.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(&sub).map_err(io_err(&sub))? {
                let f = f.map_err(io_err(&sub))?;
                if let Some(id) = f.file_name().to_str().and_then(|n| n.parse::<Id>().ok()) {
                    out.insert(id);
                }
            }
        }
        Ok(out)
    }

    /// Brings the index in step with the packs on disk: new packs are read, vanished
    /// ones forgotten. A pack whose header is damaged is left out (and `check` names it).
    pub fn sync_index(&self) -> Result<(), RepoError> {
        let _serial = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_index_locked()
    }

    fn sync_index_locked(&self) -> Result<(), RepoError> {
        let on_disk = self.list_packs()?;
        let indexed = self.index.indexed_packs()?;
        for gone in indexed.difference(&on_disk) {
            self.index.remove_pack(gone)?;
        }
        let mut added = 0usize;
        for new in on_disk.difference(&indexed) {
            match pack::read_header(&pack::pack_path(&self.packs_dir(), new)) {
                Ok(entries) => {
                    self.index.add_pack(*new, &entries)?;
                    added += 1;
                }
                Err(e) => {
                    tracing::warn!(pack = %new.short(), error = %e, "skipping unreadable pack")
                }
            }
        }
        if added > 0 {
            tracing::debug!(added, "index synced with packs");
        }
        Ok(())
    }

    /// Rebuilds the index from the packs alone (`repair index`).
    pub fn rebuild_index(&self) -> Result<(), RepoError> {
        let _serial = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        self.index.clear()?;
        self.sync_index_locked()?;
        self.index.flush()?;
        Ok(())
    }

    /// Reads, decrypts, decompresses and verifies one blob.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>, RepoError> {
        let loc = match self.index.get(id)? {
            Some(l) => l,
            None => {
                // The index is a cache: another process may have written this pack, or a
                // removed duplicate may have hidden it. Resync once before giving up.
                self.rebuild_index()?;
                self.index.get(id)?.ok_or(RepoError::MissingBlob(*id))?
            }
        };
        let path = pack::pack_path(&self.packs_dir(), &loc.pack);
        let sealed = {
            let mut cached = self.open_pack.lock().expect("pack cache lock");
            if cached.as_ref().is_none_or(|(p, _)| *p != loc.pack) {
                let f = File::open(&path).map_err(io_err(&path))?;
                *cached = Some((loc.pack, f));
            }
            let (_, f) = cached.as_ref().expect("just filled");
            pack::read_blob(f, &path, loc.offset, loc.length)?
        };
        let plain = self
            .sealer
            .open(&sealed, MAX_PLAIN_BLOB)
            .map_err(|e| match e {
                CryptoError::IdentityRequired | CryptoError::WrongIdentity => RepoError::Crypto(e),
                other => RepoError::Corrupt(format!("chunk {id}: {other}")),
            })?;
        let (hasher, _) = self.write_keys()?;
        if hasher.id(&plain) != *id {
            return Err(RepoError::Corrupt(format!(
                "chunk {id}: content does not match its id"
            )));
        }
        Ok(plain)
    }

    pub fn seal_details(&self, details: &Details) -> Result<String, RepoError> {
        let json = serde_json::to_vec(details).expect("details serialize");
        Ok(BASE64.encode(&self.sealer.seal(&json)?))
    }

    pub fn open_details(&self, snap: &Snapshot) -> Result<Details, RepoError> {
        let sealed = BASE64
            .decode(snap.details.as_bytes())
            .map_err(|e| RepoError::Corrupt(format!("snapshot details: {e}")))?;
        let json = self.sealer.open(&sealed, MAX_PLAIN_BLOB)?;
        serde_json::from_slice(&json)
            .map_err(|e| RepoError::Corrupt(format!("snapshot details: {e}")))
    }

    pub fn refs_dir(&self) -> PathBuf {
        self.root.join("refs")
    }

    /// Writes a snapshot's reference list (sorted ids, 32 bytes each), named by its hash.
    pub fn save_refs(&self, ids: &mut [Id]) -> Result<Id, RepoError> {
        ids.sort_unstable();
        let mut bytes = Vec::with_capacity(ids.len() * 32);
        for id in ids.iter() {
            bytes.extend_from_slice(&id.0);
        }
        let id = Id::of(&bytes);
        let dest = self.refs_dir().join(id.to_hex());
        if !dest.exists() {
            write_atomic(&self.tmp_dir(), &dest, &bytes)?;
        }
        Ok(id)
    }

    /// Reads a reference list, verifying it against its name.
    pub fn load_refs(&self, id: &Id) -> Result<Vec<Id>, RepoError> {
        let path = self.refs_dir().join(id.to_hex());
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        if Id::of(&bytes) != *id || bytes.len() % 32 != 0 {
            return Err(RepoError::Corrupt(format!(
                "reference list {} does not match its name",
                id.short()
            )));
        }
        Ok(bytes
            .chunks_exact(32)
            .map(|c| Id::from_slice(c).expect("32 bytes"))
            .collect())
    }

    /// Writes a manifest atomically; the snapshot exists once this returns.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id, RepoError> {
        let bytes = serde_json::to_vec_pretty(snap).expect("snapshot serializes");
        let id = Id::of(&bytes);
        write_atomic(
            &self.tmp_dir(),
            &self.snapshots_dir().join(id.to_hex()),
            &bytes,
        )?;
        Ok(id)
    }

    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot, RepoError> {
        let path = self.snapshots_dir().join(id.to_hex());
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        if Id::of(&bytes) != *id {
            return Err(RepoError::Corrupt(format!(
                "snapshot {} does not match its name",
                id.short()
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::Corrupt(format!("snapshot {}: {e}", id.short())))
    }

    pub fn snapshot_ids(&self) -> Result<Vec<Id>, RepoError> {
        let dir = self.snapshots_dir();
        let mut out = Vec::new();
        for f in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let f = f.map_err(io_err(&dir))?;
            if let Some(id) = f.file_name().to_str().and_then(|n| n.parse::<Id>().ok()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// All readable snapshots, oldest first. A damaged manifest is skipped with a
    /// warning (`check` reports it), so one rotten file does not block every restore.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRef>, RepoError> {
        let mut out = Vec::new();
        for id in self.snapshot_ids()? {
            match self.load_snapshot(&id) {
                Ok(snapshot) => out.push(SnapshotRef { id, snapshot }),
                Err(e) => {
                    tracing::warn!(snapshot = %id.short(), error = %e, "skipping unreadable snapshot")
                }
            }
        }
        out.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// All snapshots, failing on any damaged one: for prune, which must never take an
    /// unreadable manifest's data for garbage.
    pub fn snapshots_strict(&self) -> Result<Vec<SnapshotRef>, RepoError> {
        let mut out = self
            .snapshot_ids()?
            .into_iter()
            .map(|id| {
                Ok(SnapshotRef {
                    id,
                    snapshot: self.load_snapshot(&id)?,
                })
            })
            .collect::<Result<Vec<_>, RepoError>>()?;
        out.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Removes a snapshot manifest (its data goes at the next prune).
    pub fn forget_snapshot(&self, id: &Id) -> Result<(), RepoError> {
        let path = self.snapshots_dir().join(id.to_hex());
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        fsync_dir(&self.snapshots_dir()).map_err(io_err(&path))
    }

    /// Resolves `latest`, `latest:JOB` or a unique id prefix.
    pub fn resolve_snapshot(&self, spec: &str) -> Result<SnapshotRef, RepoError> {
        let all = self.snapshots()?;
        let found: Vec<SnapshotRef> = if spec == "latest" {
            all.last().cloned().into_iter().collect()
        } else if let Some(job) = spec.strip_prefix("latest:") {
            all.iter()
                .rev()
                .find(|s| s.snapshot.job == job)
                .cloned()
                .into_iter()
                .collect()
        } else if spec.len() >= 4 && spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            let spec_l = spec.to_ascii_lowercase();
            all.into_iter()
                .filter(|s| s.id.to_hex().starts_with(&spec_l))
                .collect()
        } else {
            Vec::new()
        };
        match found.len() {
            0 => Err(RepoError::SnapshotNotFound(spec.to_owned())),
            1 => Ok(found.into_iter().next().expect("one")),
            _ => Err(RepoError::AmbiguousSnapshot(spec.to_owned())),
        }
    }

    /// Streams a snapshot's entries in path order, one tree blob in memory at a time.
    pub fn entries<'a>(
        &'a self,
        snap: &'a Snapshot,
    ) -> impl Iterator<Item = Result<Entry, RepoError>> + 'a {
        snap.tree.iter().flat_map(move |blob_id| {
            let decoded: Vec<Result<Entry, RepoError>> = match self.read_blob(blob_id) {
                Ok(blob) => match tree::decode_blob(&blob) {
                    Ok(entries) => entries.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(RepoError::Corrupt(format!(
                        "tree blob {}: {e}",
                        blob_id.short()
                    )))],
                },
                Err(e) => vec![Err(e)],
            };
            decoded
        })
    }

    /// Total bytes of pack files (for status).
    pub fn packs_size(&self) -> Result<u64, RepoError> {
        let mut total = 0;
        for id in self.list_packs()? {
            let p = pack::pack_path(&self.packs_dir(), &id);
            total += std::fs::metadata(&p).map_err(io_err(&p))?.len();
        }
        Ok(total)
    }

    pub fn blob_kind(&self, id: &Id) -> Result<Option<BlobKind>, RepoError> {
        Ok(self.index.get(id)?.map(|l| l.kind))
    }

    /// Runs `f` with index syncs held off, after bringing the index in step with the
    /// packs. For prune, which must decide on an index no one else changes.
    pub fn with_maintenance<T>(
        &self,
        f: impl FnOnce() -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        let _serial = self.maintenance.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_index_locked()?;
        f()
    }

    /// Whether the repository on disk is still the one opened (a rotated backup disk at
    /// the same mount point is another repository).
    pub fn is_still_at_root(&self) -> bool {
        std::fs::read(self.root.join(CONFIG_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<RepoConfig>(&b).ok())
            .is_some_and(|c| c.id == self.config.id)
    }

    /// Removes leftovers of interrupted writes. Only safe when nobody writes: callers
    /// hold the exclusive lock.
    pub fn clean_tmp(&self) -> Result<usize, RepoError> {
        let dir = self.tmp_dir();
        let mut n = 0;
        for f in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let f = f.map_err(io_err(&dir))?;
            if std::fs::remove_file(f.path()).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

fn cache_key(state: &Path, keys: &KeyMaterial) -> Result<(), RepoError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state).map_err(io_err(state))?;
    let path = state.join("key.json");
    let tmp = state.join(format!("key.json.{}.tmp", random_hex()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(keys).expect("keys serialize"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(&path))
}

fn load_cached_key(state: &Path) -> Option<KeyMaterial> {
    serde_json::from_slice(&std::fs::read(state.join("key.json")).ok()?).ok()
}

/// The default state directory: `$BACKUPHUB_STATE_DIR`, systemd's `$STATE_DIRECTORY`,
/// `$XDG_STATE_HOME/backuphub` or `~/.local/state/backuphub`.
pub fn default_state_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("BACKUPHUB_STATE_DIR") {
        return d;
    }
    if let Some(d) = env("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        let s = d.to_string_lossy().into_owned();
        return PathBuf::from(s.split(':').next().unwrap_or(&s));
    }
    if let Some(d) = env("XDG_STATE_HOME") {
        return d.join("backuphub");
    }
    env("HOME")
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join(".local/state/backuphub")
}
