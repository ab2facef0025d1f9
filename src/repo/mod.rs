//! The repository: packs, snapshots, keys and locks on the backup disk, plus the index
//! cache in the state directory. Knows nothing about where data came from.
//!
//! ```text
//! <repo>/backuphub.json        format, id, chunker, compression, recipients
//! <repo>/keys/repo.age         key material, age-encrypted to the recipients
//! <repo>/packs/xx/<id>         immutable packs, named by BLAKE3 of their bytes
//! <repo>/snapshots/<id>        manifests (format 2: job, time, stats, root blob id),
//!                              named by BLAKE3 of their bytes
//! <repo>/locks/<nonce>.json    lock holders
//! <repo>/tmp/                  writes in progress (garbage after a crash)
//! <state>/<repo-id>/index/     sled index (a cache)
//! <state>/<repo-id>/key.json   writer's copy of the key material (encrypted repos)
//! ```

pub mod crypto;
pub mod filecache;
pub mod id;
pub mod index;
pub mod lock;
pub mod pack;
pub mod snapshot;
pub mod tree;

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use data_encoding::BASE64;
use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::error::ErrorKind;
use crypto::{CryptoError, DataKey, Identities, KeyMaterial, Recipient, Sealer};
use id::{Id, IdHasher};
use index::{Index, IndexError};
use lock::{LockError, LockGuard, LockKind};
use pack::PackError;
use snapshot::{Details, SNAPSHOT_FORMAT, Snapshot, SnapshotRef};
use tree::Entry;

/// 2: a data key per pack, blobs sealed with an AEAD under it (issue 8). Format 1 (one age
/// file per blob) is refused: it had no users, so there is no migration.
pub const REPO_FORMAT: u32 = 2;
/// Unwrapped pack keys kept per open repository: a restore reads pack after pack, and one
/// unwrap costs an X25519 operation.
const PACK_KEY_CACHE: usize = 64;
const CONFIG_FILE: &str = "backuphub.json";
const KEY_FILE: &str = "keys/repo.age";
/// A second copy of the key file: one flipped bit in the only copy would make every byte
/// of an encrypted repository unreadable.
const KEY_COPY: &str = "keys/repo.2.age";
/// Records of damaged blob copies found by `check`, so that the next backup stores
/// their data afresh: `damaged/<blob id>` lists the packs holding bad copies.
const DAMAGE_DIR: &str = "damaged";
/// Size limits for files read whole, so a damaged or hostile repository cannot make a
/// reader allocate without bound.
const MAX_CONFIG_FILE: u64 = 1 << 20;
const MAX_KEY_FILE: u64 = 64 << 10;
const MAX_MANIFEST: u64 = 64 << 20;
const MAX_DAMAGE_RECORD: u64 = 64 << 10;
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
    #[error("{}", format_refusal(*.0))]
    UnsupportedFormat(u32),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
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
    #[error(
        "the key of repository {repo} changed since this machine cached it ({what}); refusing to use it. If you replaced it on purpose, run `backuphub key cache --identity FILE`"
    )]
    KeyChanged { repo: String, what: String },
    #[error("snapshot {id} is damaged and cannot be read: {reason}")]
    DamagedSnapshot { id: String, reason: String },
    #[error("{path} is larger than {limit} bytes; refusing to read it")]
    TooLarge { path: PathBuf, limit: u64 },
}

impl RepoError {
    /// A stable, low-cardinality name for metrics labels.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RepoError::NotARepository(_) => ErrorKind::NoRepository,
            RepoError::NotEmpty(_) | RepoError::Settings(_) => ErrorKind::Settings,
            RepoError::UnsupportedFormat(_) => ErrorKind::Format,
            RepoError::Io { error, .. } if is_disk_full(error) => ErrorKind::DiskSpace,
            RepoError::Io { .. } => ErrorKind::Io,
            RepoError::Pack(PackError::Io { error, .. }) if is_disk_full(error) => {
                ErrorKind::DiskSpace
            }
            RepoError::Pack(PackError::Io { .. }) => ErrorKind::Io,
            RepoError::Index(index::IndexError::Sled {
                error: sled::Error::Io(e),
                ..
            }) if is_disk_full(e) => ErrorKind::DiskSpace,
            RepoError::Index(_) => ErrorKind::Index,
            RepoError::Pack(_)
            | RepoError::Corrupt(_)
            | RepoError::MissingBlob(_)
            | RepoError::DamagedSnapshot { .. }
            | RepoError::TooLarge { .. } => ErrorKind::Corrupt,
            RepoError::Crypto(_) | RepoError::NoWriteKey { .. } | RepoError::KeyChanged { .. } => {
                ErrorKind::Crypto
            }
            RepoError::Lock(_) => ErrorKind::Locked,
            RepoError::SnapshotNotFound(_) | RepoError::AmbiguousSnapshot(_) => ErrorKind::NotFound,
        }
    }
}

/// Why a repository of `format` cannot be opened, and what to do.
fn format_refusal(format: u32) -> String {
    if format < REPO_FORMAT {
        format!(
            "repository format {format} (backuphub 0.1) is no longer supported: this version reads format {REPO_FORMAT} only, and there is no migration. Create a new repository with `backuphub init` and back up into it; restore from the old one with backuphub 0.1"
        )
    } else {
        format!(
            "repository format {format} is newer than this version supports (format {REPO_FORMAT}); upgrade backuphub"
        )
    }
}

/// ENOSPC and EDQUOT: the disk (or the user's quota) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Reads a whole file, refusing more than `limit` bytes.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, RepoError> {
    use std::io::Read;
    let f = File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(io_err(path))?;
    if out.len() as u64 > limit {
        return Err(RepoError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(out)
}

/// Removes a file; one already gone is no error. Whether it was there is returned.
pub(crate) fn remove_file_if_present(path: &Path) -> Result<bool, RepoError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(path)(e)),
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |error| RepoError::Io {
        path: path.to_owned(),
        error,
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
    /// BLAKE3 of `keys/repo.age` (and of its copy), so damage to the key file is found
    /// without the identity, and the intact copy is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<Id>,
}

/// The writer's cached key, pinned: the key material together with what it was cached
/// from. A repository whose key file or recipients differ later is refused, so whoever
/// can write to the backup disk cannot swap in a key or recipients of their own.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CachedKey {
    repository: Id,
    key_hash: Id,
    recipients: Vec<String>,
    material: KeyMaterial,
}

/// An unwrapped pack key: (pack, key slot) → key.
type CachedPackKey = ((Id, u16), Arc<DataKey>);

/// The `format` field alone, to refuse a manifest of another format by name.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// One refs blob of a snapshot: its id, the tree blob it describes, that tree blob's
/// data ids (sorted, unique).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefsBlob {
    pub id: Id,
    pub tree: Id,
    pub data: Vec<Id>,
}

/// Readable snapshots (oldest first) and damaged manifests with the reason.
pub type SnapshotListing = (Vec<SnapshotRef>, Vec<(Id, RepoError)>);

/// Whether the repository on disk is still the one a [`Repository`] was opened on.
#[derive(Debug, PartialEq, Eq)]
pub enum RootStatus {
    Same,
    /// Gone, or another repository took its place.
    Changed,
    /// Could not be read just now (a transient error): keep what is open.
    Unknown,
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
    /// Authenticates manifests; `None` when unencrypted (there is no secret to key a MAC
    /// with) or when the key material is not at hand.
    mac_key: Option<[u8; 32]>,
    index: Index,
    /// Packs seen on disk at the last sync, plus those written since: a dedup hit counts
    /// only when its pack is in here, so the cache alone never vouches for data.
    packs_on_disk: std::sync::Arc<Mutex<HashSet<Id>>>,
    /// Damaged copies recorded by `check`: blob id → packs holding a bad copy.
    damage: std::sync::Arc<Mutex<std::collections::HashMap<Id, Vec<Id>>>>,
    state: PathBuf,
    open_pack: Mutex<Option<(Id, Arc<File>)>>,
    /// Unwrapped pack keys, most recently used last: (pack, key slot) → key.
    pack_keys: Mutex<VecDeque<CachedPackKey>>,
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
            if !is_interrupted_init(root).map_err(io_err(root))? {
                return Err(RepoError::NotEmpty(root.to_owned()));
            }
            // What an interrupted init left holds no data: start it over.
            for d in ["keys", "tmp"] {
                match std::fs::remove_dir_all(root.join(d)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&root.join(d))(e)),
                }
            }
        }
        for d in SKELETON {
            std::fs::create_dir_all(root.join(d)).map_err(io_err(root))?;
        }
        let mut raw_id = [0u8; 32];
        getrandom::fill(&mut raw_id).expect("the OS random source is available");
        let mut config = RepoConfig {
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
            key_hash: None,
        };
        if !init.recipients.is_empty() {
            let keys = KeyMaterial::generate();
            let sealed = keys.seal(&init.recipients)?;
            config.key_hash = Some(Id::of(&sealed));
            for f in [KEY_FILE, KEY_COPY] {
                write_atomic(&root.join("tmp"), &root.join(f), &sealed)?;
            }
            cache_key(&opts.state_dir.join(config.id.to_hex()), &config, &keys)?;
        }
        // The config is written last: a directory without it is not a repository, and
        // `init` can simply be repeated after an interrupted one.
        let json = serde_json::to_vec_pretty(&config).expect("config serializes");
        write_atomic(&root.join("tmp"), &root.join(CONFIG_FILE), &json)?;
        Repository::open(root, opts)
    }

    pub fn open(root: &Path, opts: &OpenOptions) -> Result<Repository, RepoError> {
        let cfg_path = root.join(CONFIG_FILE);
        let config = read_config(root)?;
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
        if !recipients.is_empty() && config.key_hash.is_none() {
            return Err(RepoError::Corrupt(format!(
                "{}: an encrypted repository must record its key file's hash",
                cfg_path.display()
            )));
        }
        let (keys, mac_key) = if recipients.is_empty() {
            (Some((IdHasher::Plain, 0)), None)
        } else {
            let cached = load_cached_key(&state, &config)?;
            let material = match &identities {
                Some(ids) => {
                    let k = read_key_file(root, &config, ids)?;
                    match cached {
                        Some(c) if !c.same_as(&k) => {
                            return Err(RepoError::KeyChanged {
                                repo: config.id.short(),
                                what: format!("{KEY_FILE} holds another key"),
                            });
                        }
                        Some(_) => {}
                        // Best effort: a read-only restore machine need not be able to
                        // cache. `key cache` reports failures.
                        None => {
                            if let Err(e) = cache_key(&state, &config, &k) {
                                tracing::debug!(error = %e, "key not cached");
                            }
                        }
                    }
                    Some(k)
                }
                None => cached,
            };
            match material {
                Some(k) => (
                    Some((IdHasher::Keyed(k.id_key), k.chunker_seed)),
                    Some(k.mac_key()),
                ),
                None => (None, None),
            }
        };
        for d in &SKELETON[1..] {
            // A read-only disk (a restore from a write-protected copy) has them already.
            if let Err(e) = std::fs::create_dir_all(root.join(d))
                && !root.join(d).is_dir()
            {
                return Err(io_err(&root.join(d))(e));
            }
        }
        let index = match state_ok.then(|| Index::open(&state.join("index"))) {
            Some(Ok(index)) => index,
            Some(Err(e)) => {
                // The index is only a cache: a state disk that cannot hold it (full,
                // read-only) must not stop a reader or a restore.
                tracing::warn!(error = %e, "index cache unusable; using a temporary index");
                Index::temporary(None)?
            }
            None => Index::temporary(None)?,
        };
        let repo = Repository {
            root: root.to_owned(),
            sealer: Sealer::new(config.compression_level, recipients, identities),
            config,
            keys,
            mac_key,
            index,
            packs_on_disk: Default::default(),
            damage: Default::default(),
            state,
            open_pack: Mutex::new(None),
            pack_keys: Mutex::new(VecDeque::new()),
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

    /// This repository's directory in the state directory (the writer's own disk).
    pub fn state_dir(&self) -> &Path {
        &self.state
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
        *self.packs_on_disk.lock().unwrap_or_else(|p| p.into_inner()) = on_disk.clone();
        *self.damage.lock().unwrap_or_else(|p| p.into_inner()) = self.load_damage()?;
        let indexed = self.index.indexed_packs()?;
        for gone in indexed.keys().filter(|p| !on_disk.contains(p)) {
            self.index.remove_pack(gone)?;
        }
        let mut added = 0usize;
        // New packs, and packs whose indexing a crash interrupted.
        for new in on_disk.iter().filter(|p| indexed.get(p) != Some(&true)) {
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
        self.index.clear_caches()?;
        self.sync_index_locked()?;
        self.index.flush()?;
        Ok(())
    }

    /// Records a pack already on disk (reindexing it).
    pub fn register_pack(&self, id: Id, entries: &[pack::PackEntry]) -> Result<(), RepoError> {
        self.packs_on_disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        self.index.add_pack(id, entries)?;
        Ok(())
    }

    /// Records a pack this process just wrote and made durable.
    ///
    /// Pack names are content hashes: a pack written afresh under the name of one with a
    /// recorded bad copy (the same blobs stored again, unencrypted) replaced the bad file
    /// with a good one. Its records go, or the blob would count as damaged (and be stored
    /// again by every backup) for ever. Best effort: the pack is durable either way.
    pub fn register_written_pack(
        &self,
        id: Id,
        entries: &[pack::PackEntry],
    ) -> Result<(), RepoError> {
        self.register_pack(id, entries)?;
        // A cached descriptor of a file this one replaced reads the old (bad) bytes.
        let mut cached = self.open_pack.lock().unwrap_or_else(|p| p.into_inner());
        if cached.as_ref().is_some_and(|(p, _)| *p == id) {
            *cached = None;
        }
        drop(cached);
        for e in entries {
            if let Err(err) = self.forget_damage(&e.id, &id) {
                tracing::warn!(error = %err, "a stale damage record stays");
            }
        }
        Ok(())
    }

    /// Forgets a pack this process deleted.
    pub fn unregister_pack(&self, id: &Id) -> Result<(), RepoError> {
        self.packs_on_disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.index.remove_pack(id)?;
        Ok(())
    }

    /// [`has_blob`](Self::has_blob) as an owned handle, for what must not borrow the
    /// repository (the previous run's entries handed to a source).
    pub fn presence(&self) -> index::BlobPresence {
        index::BlobPresence {
            locations: self.index.chunk_locations(),
            packs_on_disk: self.packs_on_disk.clone(),
            damage: self.damage.clone(),
        }
    }

    /// Whether the repository holds a usable copy of `id`, for dedup and reuse
    /// decisions: the index must know it, its pack must have been on disk at the last
    /// sync (taken under the run's lock), and the copy must not be known damaged.
    pub fn has_blob(&self, id: &Id) -> Result<bool, RepoError> {
        let Some(loc) = self.index.get(id)? else {
            return Ok(false);
        };
        if !self
            .packs_on_disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&loc.pack)
        {
            return Ok(false);
        }
        let damage = self.damage.lock().unwrap_or_else(|p| p.into_inner());
        Ok(!damage
            .get(id)
            .is_some_and(|packs| packs.contains(&loc.pack)))
    }

    /// Reads, decrypts, decompresses and verifies one blob.
    ///
    /// The index says where to look first. When that copy is missing or damaged, other
    /// packs that list the blob are tried (a prune may have kept another duplicate, a
    /// backup may have stored a fresh copy), and the index is pointed at the one that
    /// reads. Nothing else in the index is touched.
    pub fn read_blob(&self, id: &Id) -> Result<Vec<u8>, RepoError> {
        let first = match self.index.get(id)? {
            Some(l) => Some(l),
            None => {
                // Another process may have written the pack since the last sync. Not when
                // this process holds the maintenance lock: prune marks through here right
                // after its own sync, and locking again would deadlock it (with its
                // exclusive lock held, every backup would queue behind it for good).
                let guard = match self.maintenance.try_lock() {
                    Ok(g) => Some(g),
                    Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) => None,
                };
                if let Some(_serial) = guard {
                    self.sync_index_locked()?;
                }
                self.index.get(id)?
            }
        };
        let mut first_error = None;
        if let Some(loc) = first {
            match self.read_blob_at(id, &loc) {
                Ok(plain) => return Ok(plain),
                // No other copy opens without the identity or the keys either.
                Err(e @ RepoError::Crypto(_)) | Err(e @ RepoError::NoWriteKey { .. }) => {
                    return Err(e);
                }
                Err(e) => first_error = Some(e),
            }
        }
        let except = first.map(|l| l.pack);
        for pack_id in self.index.packs_listing(id, except.as_ref())? {
            let path = pack::pack_path(&self.packs_dir(), &pack_id);
            let Ok(entries) = pack::read_header(&path) else {
                continue;
            };
            for e in entries.iter().filter(|e| e.id == *id) {
                let loc = index::Location::of(pack_id, e);
                if let Ok(plain) = self.read_blob_at(id, &loc) {
                    tracing::info!(blob = %id.short(), pack = %pack_id.short(), "read another copy of a blob");
                    self.index.set_location(id, loc)?;
                    return Ok(plain);
                }
            }
        }
        Err(first_error.unwrap_or(RepoError::MissingBlob(*id)))
    }

    /// Reads, opens and verifies the copy of `id` at `loc`. Data and tree blobs of an
    /// encrypted repository are opened with their pack's key (AEAD: a changed byte, kind
    /// or id, or a blob moved from another pack fails); every blob is then checked
    /// against its id.
    pub fn read_blob_at(&self, id: &Id, loc: &index::Location) -> Result<Vec<u8>, RepoError> {
        if loc.length > pack::MAX_BLOB_LEN {
            return Err(RepoError::Corrupt(format!(
                "chunk {id}: recorded length {} is impossible",
                loc.length
            )));
        }
        let path = pack::pack_path(&self.packs_dir(), &loc.pack);
        let file = {
            let mut cached = self.open_pack.lock().unwrap_or_else(|p| p.into_inner());
            match cached.as_ref() {
                Some((p, f)) if *p == loc.pack => f.clone(),
                _ => {
                    let f = Arc::new(File::open(&path).map_err(|error| match error.kind() {
                        std::io::ErrorKind::NotFound => RepoError::MissingBlob(*id),
                        _ => io_err(&path)(error),
                    })?);
                    *cached = Some((loc.pack, f.clone()));
                    f
                }
            }
        };
        let mut sealed = pack::read_blob(&file, &path, loc.offset, loc.length)?;
        let damaged = |what: String| {
            RepoError::Corrupt(format!(
                "blob {} in pack {}: {what}",
                id.short(),
                loc.pack.short()
            ))
        };
        if self.encrypted() && loc.kind.sealed() {
            let key = self.pack_key(&loc.pack, loc.key, &file, &path)?;
            key.open_in_place(loc.kind as u8, &id.0, &mut sealed)
                .map_err(|e| damaged(e.to_string()))?;
        }
        let plain =
            crypto::decode_payload(&sealed, MAX_PLAIN_BLOB).map_err(|e| damaged(e.to_string()))?;
        let matches = if loc.kind.sealed() {
            let (hasher, _) = self.write_keys()?;
            hasher.id(&plain) == *id
        } else {
            // Refs and root blobs are named by their plain hash, readable without keys.
            Id::of(&plain) == *id
        };
        if !matches {
            return Err(damaged("content does not match its id".into()));
        }
        Ok(plain)
    }

    /// The data key of slot `slot` of `pack`, from the cache or unwrapped with the
    /// identity.
    fn pack_key(
        &self,
        pack: &Id,
        slot: u16,
        file: &File,
        path: &Path,
    ) -> Result<Arc<DataKey>, RepoError> {
        {
            let mut cache = self.pack_keys.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = cache.iter().position(|(k, _)| *k == (*pack, slot)) {
                let hit = cache.remove(i).expect("position is in range");
                let key = hit.1.clone();
                cache.push_back(hit);
                return Ok(key);
            }
        }
        if !self.sealer.can_open() {
            return Err(CryptoError::IdentityRequired.into());
        }
        let wrapped = pack::read_wrapped_key(file, path, slot)?;
        // The identity opened the repository's key file, so a pack key it cannot open is
        // damaged (or foreign): other copies of the blob may still read.
        let key = Arc::new(self.sealer.unwrap_pack_key(&wrapped).map_err(|e| match e {
            CryptoError::IdentityRequired => RepoError::Crypto(e),
            other => RepoError::Corrupt(format!(
                "pack {}: key {slot} cannot be unwrapped: {other}",
                pack.short()
            )),
        })?);
        let mut cache = self.pack_keys.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= PACK_KEY_CACHE {
            cache.pop_front();
        }
        cache.push_back(((*pack, slot), key.clone()));
        Ok(key)
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

    /// The MAC of a manifest: keyed BLAKE3 of its JSON without the `mac` field (the
    /// caller has taken it out).
    fn manifest_mac(key: &[u8; 32], unsigned: &Snapshot) -> String {
        debug_assert!(unsigned.mac.is_none());
        let bytes = serde_json::to_vec(unsigned).expect("snapshot serializes");
        blake3::keyed_hash(key, &bytes).to_hex().to_string()
    }

    /// Writes a manifest atomically; the snapshot exists once this returns. In an
    /// encrypted repository it carries a MAC, so a reader with the key detects a forged
    /// or altered manifest.
    pub fn save_snapshot(&self, snap: &Snapshot) -> Result<Id, RepoError> {
        let mut snap = snap.clone();
        snap.mac = None;
        if self.encrypted() {
            let key = self.mac_key.ok_or_else(|| RepoError::NoWriteKey {
                repo: self.config.id.short(),
                state: self.state.clone(),
            })?;
            snap.mac = Some(Self::manifest_mac(&key, &snap));
        }
        let bytes = serde_json::to_vec_pretty(&snap).expect("snapshot serializes");
        let id = Id::of(&bytes);
        write_atomic(
            &self.tmp_dir(),
            &self.snapshots_dir().join(id.to_hex()),
            &bytes,
        )?;
        // Written by us: as verified as a manifest gets.
        self.cache_snapshot(&id, &snap, true);
        Ok(id)
    }

    pub fn load_snapshot(&self, id: &Id) -> Result<Snapshot, RepoError> {
        let path = self.snapshots_dir().join(id.to_hex());
        let bytes = read_limited(&path, MAX_MANIFEST)?;
        let damaged = |reason: String| RepoError::DamagedSnapshot {
            id: id.short(),
            reason: format!(
                "{reason} (`backuphub check` reports it; `forget` it or use another snapshot by id)"
            ),
        };
        if Id::of(&bytes) != *id {
            return Err(damaged("its content does not match its name".into()));
        }
        let format = serde_json::from_slice::<FormatOnly>(&bytes).map(|f| f.format);
        if let Ok(f) = format
            && f != SNAPSHOT_FORMAT
        {
            return Err(damaged(format!(
                "manifest format {f} is not supported (this version reads {SNAPSHOT_FORMAT})"
            )));
        }
        let mut snap: Snapshot =
            serde_json::from_slice(&bytes).map_err(|e| damaged(format!("unreadable: {e}")))?;
        if self.encrypted()
            && let Some(key) = &self.mac_key
        {
            let given = snap.mac.take().unwrap_or_default();
            let expected = Self::manifest_mac(key, &snap);
            if !crypto::constant_time_eq(expected.as_bytes(), given.as_bytes()) {
                return Err(damaged("its MAC does not verify: forged or altered".into()));
            }
            snap.mac = Some(given);
        }
        Ok(snap)
    }

    /// A manifest from the summary cache, if it is there and was verified as fully as
    /// this opener can verify (an entry cached by a reader without the MAC key is read
    /// again by one that has it). The caller knows the file still exists.
    fn cached_snapshot(&self, id: &Id) -> Option<Snapshot> {
        let (mac_verified, json) = match self.index.cached_manifest(id) {
            Ok(found) => found?,
            Err(e) => {
                tracing::debug!(error = %e, "snapshot cache unreadable");
                return None;
            }
        };
        if !mac_verified && self.mac_key.is_some() {
            return None;
        }
        serde_json::from_slice(&json).ok()
    }

    /// Caches a verified manifest; the cache is best effort.
    fn cache_snapshot(&self, id: &Id, snap: &Snapshot, mac_verified: bool) {
        let json = serde_json::to_vec(snap).expect("snapshot serializes");
        if let Err(e) = self.index.cache_manifest(id, mac_verified, &json) {
            tracing::debug!(error = %e, "snapshot not cached");
        }
    }

    /// Every snapshot, readable or not: the readable ones oldest first, and the ids of
    /// damaged manifests with why. Listings show both; nothing is skipped in silence.
    ///
    /// Which snapshots exist is read from `snapshots/` every time; what they say comes
    /// from the summary cache when it holds them (a manifest is immutable and named by
    /// its hash, and was verified when cached), else from the file, verified, then
    /// cached. Failures are never cached, and entries whose file is gone are dropped.
    pub fn snapshots_and_damaged(&self) -> Result<SnapshotListing, RepoError> {
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        let ids = self.snapshot_ids()?;
        for &id in &ids {
            if let Some(snapshot) = self.cached_snapshot(&id) {
                ok.push(SnapshotRef { id, snapshot });
                continue;
            }
            match self.load_snapshot(&id) {
                Ok(snapshot) => {
                    self.cache_snapshot(&id, &snapshot, self.mac_key.is_some());
                    ok.push(SnapshotRef { id, snapshot })
                }
                Err(e) => {
                    let _ = self.index.uncache_manifest(&id);
                    bad.push((id, e))
                }
            }
        }
        let on_disk: HashSet<Id> = ids.into_iter().collect();
        match self.index.cached_manifest_ids() {
            Ok(cached) => {
                for gone in cached.iter().filter(|c| !on_disk.contains(c)) {
                    let _ = self.index.uncache_manifest(gone);
                }
            }
            Err(e) => tracing::debug!(error = %e, "snapshot cache unreadable"),
        }
        ok.sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        Ok((ok, bad))
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
        let (ok, bad) = self.snapshots_and_damaged()?;
        for (id, e) in bad {
            tracing::warn!(snapshot = %id.short(), error = %e, "unreadable snapshot left out of a listing");
        }
        Ok(ok)
    }

    /// All snapshots, failing on any damaged one: for prune, which must never take an
    /// unreadable manifest's data for garbage.
    pub fn snapshots_strict(&self) -> Result<Vec<SnapshotRef>, RepoError> {
        let (ok, bad) = self.snapshots_and_damaged()?;
        match bad.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(ok),
        }
    }

    /// Removes a snapshot manifest (its data goes at the next prune).
    pub fn forget_snapshot(&self, id: &Id) -> Result<(), RepoError> {
        let path = self.snapshots_dir().join(id.to_hex());
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        // Listings would drop it anyway (existence comes from the directory).
        let _ = self.index.uncache_manifest(id);
        fsync_dir(&self.snapshots_dir()).map_err(io_err(&path))
    }

    /// Resolves `latest`, `latest:JOB` or a unique id prefix. A damaged manifest that
    /// could be the one meant is an error, never silently passed over: a damaged newest
    /// manifest must not make `latest` restore an older snapshot.
    pub fn resolve_snapshot(&self, spec: &str) -> Result<SnapshotRef, RepoError> {
        let (all, damaged) = self.snapshots_and_damaged()?;
        let is_prefix = spec.len() >= 4 && spec.bytes().all(|b| b.is_ascii_hexdigit());
        let spec_l = spec.to_ascii_lowercase();
        // Neither the time nor the job of a damaged manifest can be known.
        let in_doubt = damaged.into_iter().find(|(id, _)| {
            spec == "latest"
                || spec.starts_with("latest:")
                || (is_prefix && id.to_hex().starts_with(&spec_l))
        });
        if let Some((id, e)) = in_doubt {
            let reason = match e {
                RepoError::DamagedSnapshot { reason, .. } => reason,
                other => other.to_string(),
            };
            return Err(RepoError::DamagedSnapshot {
                id: id.short(),
                reason: if is_prefix {
                    reason
                } else {
                    format!(
                        "{reason}; it could be the newest, so `{spec}` cannot be decided: name a snapshot by id"
                    )
                },
            });
        }
        let found: Vec<SnapshotRef> = if spec == "latest" {
            all.last().cloned().into_iter().collect()
        } else if let Some(job) = spec.strip_prefix("latest:") {
            all.iter()
                .rev()
                .find(|s| s.snapshot.job == job)
                .cloned()
                .into_iter()
                .collect()
        } else if is_prefix {
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

    /// Reads a snapshot's root blob: its refs blob ids in tree order.
    pub fn read_root(&self, root: &Id) -> Result<Vec<Id>, RepoError> {
        snapshot::decode_root(&self.read_blob(root)?)
            .map_err(|e| RepoError::Corrupt(format!("root blob {}: {e}", root.short())))
    }

    /// Reads a refs blob: the tree blob it describes and that tree blob's data ids.
    pub fn read_refs(&self, refs: &Id) -> Result<(Id, Vec<Id>), RepoError> {
        snapshot::decode_refs(&self.read_blob(refs)?)
            .map_err(|e| RepoError::Corrupt(format!("refs blob {}: {e}", refs.short())))
    }

    /// Reads and decodes one tree blob.
    pub fn read_tree(&self, tree: &Id) -> Result<Vec<Entry>, RepoError> {
        tree::decode_blob(&self.read_blob(tree)?)
            .map_err(|e| RepoError::Corrupt(format!("tree blob {}: {e}", tree.short())))
    }

    /// Streams the blobs a snapshot names, one refs blob at a time, without the identity
    /// (refs and root blobs are plaintext): for check and prune. Refs blobs for which
    /// `skip` says true are not read (prune's mark has them already). An unreadable
    /// root is the error returned; an unreadable refs blob is an error item.
    pub fn snapshot_blobs<'a, F: FnMut(&Id) -> bool + 'a>(
        &'a self,
        snap: &Snapshot,
        mut skip: F,
    ) -> Result<impl Iterator<Item = Result<RefsBlob, RepoError>> + use<'a, F>, RepoError> {
        let refs = self.read_root(&snap.root)?;
        Ok(refs.into_iter().filter(move |r| !skip(r)).map(move |id| {
            let (tree, data) = self.read_refs(&id)?;
            Ok(RefsBlob { id, tree, data })
        }))
    }

    /// Streams a snapshot's entries in path order: root → refs blob → tree blob →
    /// entries, one tree blob in memory at a time. A part that cannot be read is one
    /// error item, and the stream goes on with the next tree blob.
    pub fn entries<'a>(
        &'a self,
        snap: &Snapshot,
    ) -> impl Iterator<Item = Result<Entry, RepoError>> + use<'a> {
        let (refs, root_error) = match self.read_root(&snap.root) {
            Ok(refs) => (refs, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        root_error
            .map(Err)
            .into_iter()
            .chain(refs.into_iter().flat_map(move |r| {
                let decoded: Vec<Result<Entry, RepoError>> = match self
                    .read_refs(&r)
                    .and_then(|(tree, _)| self.read_tree(&tree))
                {
                    Ok(entries) => entries.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
                decoded
            }))
    }

    /// Total bytes of pack files (for status), from the packs seen at the last sync.
    /// Sizes are cached in the index (a pack's name is its hash: its size never
    /// changes), so only packs new since the last call are stat'ed.
    pub fn packs_size(&self) -> Result<u64, RepoError> {
        let packs = self
            .packs_on_disk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut total = 0;
        for id in &packs {
            total += match self.index.pack_size(id)? {
                Some(size) => size,
                None => {
                    let p = pack::pack_path(&self.packs_dir(), id);
                    let size = std::fs::metadata(&p).map_err(io_err(&p))?.len();
                    self.index.set_pack_size(id, size)?;
                    size
                }
            };
        }
        self.index.retain_pack_sizes(&|id| packs.contains(id))?;
        Ok(total)
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
    /// the same mount point is another repository). A transient read error says nothing
    /// either way: reopening then would only cost the open index.
    pub fn root_status(&self) -> RootStatus {
        match read_config(&self.root) {
            Ok(c) if c.id == self.config.id => RootStatus::Same,
            Ok(_)
            | Err(
                RepoError::NotARepository(_)
                | RepoError::Corrupt(_)
                | RepoError::UnsupportedFormat(_),
            ) => RootStatus::Changed,
            Err(_) => RootStatus::Unknown,
        }
    }

    /// Checks both key files against the hash in the config, without the identity.
    /// Returns a description of each damaged or missing copy.
    pub fn verify_key_files(&self) -> Vec<String> {
        let Some(expected) = self.config.key_hash else {
            return Vec::new();
        };
        key_copies(&self.root, expected)
            .into_iter()
            .filter_map(|(_, copy)| copy.err())
            .collect()
    }

    /// Records that the copies of `blobs` in `pack` are damaged, so the next backup that
    /// has their data stores it afresh (and prune drops the bad copies once good ones
    /// exist). Best effort on a read-only disk: the caller reports the damage anyway.
    ///
    /// One directory fsync for the lot, none per record: a pack whose hash fails holds
    /// thousands of blobs, and a record lost to a power cut is found again by the next
    /// `check`.
    pub fn record_damage(&self, pack: &Id, blobs: &[Id]) -> Result<(), RepoError> {
        let dir = self.root.join(DAMAGE_DIR);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut damage = self.damage.lock().unwrap_or_else(|p| p.into_inner());
        for blob in blobs {
            let packs = damage.entry(*blob).or_default();
            if !packs.contains(pack) {
                packs.push(*pack);
            }
            self.write_damage_record(blob, packs)?;
        }
        fsync_dir(&dir).map_err(io_err(&dir))
    }

    /// `damaged/<blob>`: the packs holding a bad copy, one per line (write and rename).
    fn write_damage_record(&self, blob: &Id, packs: &[Id]) -> Result<(), RepoError> {
        let text: String = packs.iter().map(|p| format!("{}\n", p.to_hex())).collect();
        let dest = self.root.join(DAMAGE_DIR).join(blob.to_hex());
        let tmp = self.tmp_dir().join(format!("{}.tmp", random_hex()));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &dest))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io_err(&dest)(e)
            })
    }

    /// Damaged copies recorded by `check`: blob → packs holding a bad copy of it.
    pub fn damaged_copies(&self) -> std::collections::HashMap<Id, Vec<Id>> {
        self.damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets the bad copy of `blob` in `pack` (that pack was written afresh, or the
    /// copy read back intact: the earlier failure was passing, an I/O hiccup).
    pub fn forget_damage(&self, blob: &Id, pack: &Id) -> Result<(), RepoError> {
        // The file is written under the lock, like `record_damage`, so neither can undo
        // the other's record on disk.
        let mut damage = self.damage.lock().unwrap_or_else(|p| p.into_inner());
        let Some(packs) = damage.get_mut(blob) else {
            return Ok(());
        };
        if !packs.contains(pack) {
            return Ok(());
        }
        packs.retain(|p| p != pack);
        let dir = self.root.join(DAMAGE_DIR);
        if packs.is_empty() {
            damage.remove(blob);
            remove_file_if_present(&dir.join(blob.to_hex()))?;
        } else {
            self.write_damage_record(blob, packs)?;
        }
        fsync_dir(&dir).map_err(io_err(&dir))
    }

    /// Forgets damage records whose packs are all gone (prune removed the bad copies).
    pub fn clear_damage(&self, blob: &Id) -> Result<(), RepoError> {
        self.damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(blob);
        remove_file_if_present(&self.root.join(DAMAGE_DIR).join(blob.to_hex()))?;
        Ok(())
    }

    fn load_damage(&self) -> Result<std::collections::HashMap<Id, Vec<Id>>, RepoError> {
        let dir = self.root.join(DAMAGE_DIR);
        let mut out = std::collections::HashMap::new();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        for f in rd {
            let f = f.map_err(io_err(&dir))?;
            let Some(blob) = f.file_name().to_str().and_then(|n| n.parse::<Id>().ok()) else {
                continue;
            };
            let text = read_limited(&f.path(), MAX_DAMAGE_RECORD)?;
            let packs = String::from_utf8_lossy(&text)
                .lines()
                .filter_map(|l| l.trim().parse::<Id>().ok())
                .collect();
            out.insert(blob, packs);
        }
        Ok(out)
    }
}

/// The directories of a repository; `init` makes them before it writes the config.
const SKELETON: [&str; 7] = ["", "keys", "packs", "snapshots", "locks", "tmp", DAMAGE_DIR];

/// Whether `root` is empty, or holds only what an interrupted `init` leaves: the skeleton
/// directories, key files and temporary files, no config and no data. Anything else
/// (someone's files, a repository) makes `init` refuse.
fn is_interrupted_init(root: &Path) -> std::io::Result<bool> {
    for e in std::fs::read_dir(root)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            return Ok(false);
        };
        if !SKELETON.contains(&name) || !e.file_type()?.is_dir() {
            return Ok(false);
        }
        if matches!(name, "keys" | "tmp") {
            continue;
        }
        if std::fs::read_dir(e.path())?.next().is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Reads `backuphub.json`: no file is "not a repository" (an unmounted disk, say).
fn read_config(root: &Path) -> Result<RepoConfig, RepoError> {
    let path = root.join(CONFIG_FILE);
    let bytes = match read_limited(&path, MAX_CONFIG_FILE) {
        Ok(b) => b,
        Err(RepoError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(RepoError::NotARepository(root.to_owned()));
        }
        Err(e) => return Err(e),
    };
    // The format first, from a reading that ignores every other field: a repository of
    // another format gets the refusal that says what to do, not a parse error.
    #[derive(Deserialize)]
    struct Probe {
        format: u32,
    }
    if let Ok(Probe { format }) = serde_json::from_slice::<Probe>(&bytes)
        && format != REPO_FORMAT
    {
        return Err(RepoError::UnsupportedFormat(format));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| RepoError::Corrupt(format!("{}: {e}", path.display())))
}

/// Both key files, each read and checked against the hash in the config: its bytes, or
/// what is wrong with it (naming the file).
fn key_copies(root: &Path, expected: Id) -> [(PathBuf, Result<Vec<u8>, String>); 2] {
    [KEY_FILE, KEY_COPY].map(|f| {
        let path = root.join(f);
        let copy = match read_limited(&path, MAX_KEY_FILE) {
            Ok(b) if Id::of(&b) == expected => Ok(b),
            Ok(_) => Err(format!(
                "{} is damaged (its hash does not match {CONFIG_FILE})",
                path.display()
            )),
            Err(e) => Err(e.to_string()),
        };
        (path, copy)
    })
}

/// Reads the key material with the identity: the primary key file, or its copy when the
/// primary is missing or damaged. Errors name the files.
fn read_key_file(
    root: &Path,
    config: &RepoConfig,
    ids: &Identities,
) -> Result<KeyMaterial, RepoError> {
    let expected = config
        .key_hash
        .ok_or_else(|| RepoError::Corrupt(format!("{CONFIG_FILE} records no key file hash")))?;
    let mut problems = Vec::new();
    for (path, copy) in key_copies(root, expected) {
        let sealed = match copy {
            Ok(b) => b,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        match KeyMaterial::open(ids, &sealed) {
            Ok(k) => {
                if !problems.is_empty() {
                    tracing::warn!(problems = %problems.join("; "), "using the key file's second copy");
                }
                return Ok(k);
            }
            Err(e @ (CryptoError::WrongIdentity | CryptoError::IdentityRequired)) => {
                return Err(e.into());
            }
            Err(e) => problems.push(format!("{}: {e}", path.display())),
        }
    }
    Err(RepoError::Corrupt(format!(
        "no usable key file: {}",
        problems.join("; ")
    )))
}

/// `key cache`: reads the key with the identity and (re)pins it in this machine's state
/// directory, replacing an earlier pin: the one deliberate way to accept a changed key.
/// Returns the file written, or `None` for an unencrypted repository. Unlike the
/// best-effort caching when opening with an identity, a failure is reported.
pub fn recache_key(root: &Path, opts: &OpenOptions) -> Result<Option<PathBuf>, RepoError> {
    let config = read_config(root)?;
    if config.recipients.is_empty() {
        return Ok(None);
    }
    let identity = opts
        .identity
        .as_ref()
        .ok_or(CryptoError::IdentityRequired)?;
    let ids = Identities::from_file(identity)?;
    let k = read_key_file(root, &config, &ids)?;
    let state = opts.state_dir.join(config.id.to_hex());
    cache_key(&state, &config, &k)?;
    Ok(Some(state.join("key.json")))
}

fn cache_key(state: &Path, config: &RepoConfig, keys: &KeyMaterial) -> Result<(), RepoError> {
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
        let cached = CachedKey {
            repository: config.id,
            key_hash: config.key_hash.unwrap_or(Id([0; 32])),
            recipients: config.recipients.clone(),
            material: keys.clone(),
        };
        f.write_all(&serde_json::to_vec(&cached).expect("keys serialize"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        // Init writes the repository's config once this returns: a power cut after that
        // must not take the key with it, nor the directory just made for it.
        fsync_dir(state)?;
        state.parent().map_or(Ok(()), fsync_dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err(&path))
}

/// The pinned key, if this machine cached one; an error when the repository no longer
/// matches the pin.
fn load_cached_key(state: &Path, config: &RepoConfig) -> Result<Option<KeyMaterial>, RepoError> {
    let path = state.join("key.json");
    let bytes = match read_limited(&path, MAX_KEY_FILE) {
        Ok(b) => b,
        Err(_) => return Ok(None),
    };
    let cached: CachedKey = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cached key is unreadable; ignoring it");
            return Ok(None);
        }
    };
    let changed = |what: &str| RepoError::KeyChanged {
        repo: config.id.short(),
        what: what.to_owned(),
    };
    if cached.repository != config.id {
        return Err(changed("the cache belongs to another repository"));
    }
    if Some(cached.key_hash) != config.key_hash {
        return Err(changed("keys/repo.age was replaced"));
    }
    if cached.recipients != config.recipients {
        return Err(changed("the recipients in backuphub.json were changed"));
    }
    Ok(Some(cached.material))
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
