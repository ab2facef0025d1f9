//! Snapshot manifests: the last thing a backup writes, atomically.
//!
//! The public part (job, time, status, statistics, root blob id) is plain JSON so that
//! the daemon can plan retention and report status without the identity. What could
//! reveal names — the source description and the failure list — is sealed in `details`.
//!
//! Format 2: a manifest names one root blob; the root lists refs blobs in tree order; a
//! refs blob names one tree blob and the data chunks that tree blob's entries use. Refs
//! and root blobs are plaintext (they reveal only keyed ids) and named by plain BLAKE3,
//! so prune and check walk a snapshot's blobs without the identity, one tree blob's ids
//! at a time. An unchanged tree blob gives the same refs blob, which dedup stores once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::id::Id;

pub const SNAPSHOT_FORMAT: u32 = 2;

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
    /// The root blob: the snapshot's refs blobs in tree order.
    pub root: Id,
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

/// Why a refs or root blob cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefsError {
    #[error("{what} blob of {len} bytes is not a whole number of 32-byte ids")]
    Length { what: &'static str, len: usize },
    #[error("refs blob names no tree blob")]
    NoTree,
    #[error("refs blob's data ids are not sorted and unique")]
    Unsorted,
}

/// A refs blob: `tree id ‖ data ids` (sorted, unique, as given by the caller).
pub fn encode_refs(tree: &Id, data: &[Id]) -> Vec<u8> {
    debug_assert!(data.windows(2).all(|w| w[0] < w[1]));
    let mut out = Vec::with_capacity(32 * (1 + data.len()));
    out.extend_from_slice(&tree.0);
    for id in data {
        out.extend_from_slice(&id.0);
    }
    out
}

/// Decodes a refs blob into its tree id and data ids. The order is checked: a writer
/// emits sorted unique ids, and check compares them with the tree's as sets.
pub fn decode_refs(blob: &[u8]) -> Result<(Id, Vec<Id>), RefsError> {
    let mut ids = decode_ids("refs", blob)?.into_iter();
    let tree = ids.next().ok_or(RefsError::NoTree)?;
    let data: Vec<Id> = ids.collect();
    if data.windows(2).any(|w| w[0] >= w[1]) {
        return Err(RefsError::Unsorted);
    }
    Ok((tree, data))
}

/// A root blob: the refs blob ids in tree order.
pub fn encode_root(refs: &[Id]) -> Vec<u8> {
    refs.iter().flat_map(|id| id.0).collect()
}

pub fn decode_root(blob: &[u8]) -> Result<Vec<Id>, RefsError> {
    decode_ids("root", blob)
}

fn decode_ids(what: &'static str, blob: &[u8]) -> Result<Vec<Id>, RefsError> {
    if !blob.len().is_multiple_of(32) {
        return Err(RefsError::Length {
            what,
            len: blob.len(),
        });
    }
    Ok(blob
        .chunks_exact(32)
        .map(|c| Id::from_slice(c).expect("32 bytes"))
        .collect())
}

/// The sorted unique data ids used by a tree blob's entries: what its refs blob lists.
pub fn data_ids<'a>(chunks: impl IntoIterator<Item = &'a Id>) -> Vec<Id> {
    let mut ids: Vec<Id> = chunks.into_iter().copied().collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_root_round_trip() {
        let tree = Id::of(b"tree");
        let data = data_ids(&[Id::of(b"b"), Id::of(b"a"), Id::of(b"b")]);
        assert_eq!(data.len(), 2);
        let blob = encode_refs(&tree, &data);
        assert_eq!(blob.len(), 96);
        assert_eq!(decode_refs(&blob).unwrap(), (tree, data.clone()));
        assert_eq!(
            decode_refs(&encode_refs(&tree, &[])).unwrap(),
            (tree, vec![])
        );
        let root = encode_root(&[tree, data[0]]);
        assert_eq!(decode_root(&root).unwrap(), vec![tree, data[0]]);
        assert_eq!(decode_root(&[]).unwrap(), vec![]);
    }

    #[test]
    fn malformed_refs_and_root_are_refused() {
        assert_eq!(decode_refs(&[]), Err(RefsError::NoTree));
        assert!(matches!(
            decode_refs(&[0; 33]),
            Err(RefsError::Length { len: 33, .. })
        ));
        assert!(matches!(
            decode_root(&[0; 31]),
            Err(RefsError::Length { what: "root", .. })
        ));
        let (a, b) = (Id::of(b"a"), Id::of(b"b"));
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        let mut blob = Id::of(b"t").0.to_vec();
        blob.extend_from_slice(&hi.0);
        blob.extend_from_slice(&lo.0);
        assert_eq!(decode_refs(&blob), Err(RefsError::Unsorted));
        let mut dup = Id::of(b"t").0.to_vec();
        dup.extend_from_slice(&lo.0);
        dup.extend_from_slice(&lo.0);
        assert_eq!(decode_refs(&dup), Err(RefsError::Unsorted));
    }
}
