//! Snapshot manifests: the last thing a backup writes, atomically.
//!
//! The public part (job, time, status, statistics, tree ids) is plain JSON so that the
//! daemon can plan retention and report status without the identity. What could reveal
//! names — the source description and the failure list — is sealed in `details`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::Id;

pub const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStatus {
    /// Every entry the source offered was stored.
    Complete,
    /// Some entries failed; they are listed in the details.
    Partial,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    /// Sum of the sizes of all file entries.
    pub total_bytes: u64,
    /// Bytes actually read from the source (unchanged files are not read).
    pub read_bytes: u64,
    pub new_chunks: u64,
    /// Uncompressed size of the new chunks.
    pub new_bytes: u64,
    /// Size of the new chunks as stored (compressed, sealed).
    pub stored_bytes: u64,
    pub failures: u64,
    pub duration_ms: u64,
}

/// One entry that could not be stored, and why (secrets redacted by the source).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub path: String,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Details {
    pub source: String,
    pub failures: Vec<Failure>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: u32,
    pub job: String,
    pub time: DateTime<Utc>,
    pub host: String,
    pub status: SnapshotStatus,
    pub stats: SnapshotStats,
    /// Tree blobs, in order.
    pub tree: Vec<Id>,
    /// The plaintext list of every blob this snapshot references (`refs/<id>`), so that
    /// prune can mark without the identity. Reveals only keyed ids.
    pub refs: Id,
    /// Sealed (compressed, maybe encrypted) JSON of [`Details`], base64.
    pub details: String,
    /// Encrypted repositories: keyed BLAKE3 (under a key derived from the repository
    /// key) of this manifest without this field, so forged manifests are detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// A snapshot together with its id (the BLAKE3 hash of its file).
#[derive(Clone, Debug)]
pub struct SnapshotRef {
    pub id: Id,
    pub snapshot: Snapshot,
}
