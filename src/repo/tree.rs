//! The entry model and snapshot trees.
//!
//! A tree is the flat list of a snapshot's entries in strictly increasing byte order of
//! their paths, CBOR-encoded back to back and cut into blobs at entry boundaries chosen by
//! content (so unchanged runs of entries dedupe between snapshots). Byte order of full
//! paths is also S3's listing order, which lets incremental sources merge-join against the
//! previous snapshot while streaming.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::id::Id;

/// A relative, `/`-separated path of raw bytes (Unix file names need not be UTF-8).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntryPath(#[serde(with = "serde_bytes")] Vec<u8>);

impl EntryPath {
    pub fn new(bytes: Vec<u8>) -> EntryPath {
        EntryPath(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn join(&self, name: &[u8]) -> EntryPath {
        if self.0.is_empty() {
            return EntryPath(name.to_vec());
        }
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        v.push(b'/');
        v.extend_from_slice(name);
        EntryPath(v)
    }

    /// True when `self` is `prefix` or lies below it.
    pub fn starts_with(&self, prefix: &EntryPath) -> bool {
        prefix.0.is_empty()
            || self.0 == prefix.0
            || (self.0.starts_with(&prefix.0) && self.0.get(prefix.0.len()) == Some(&b'/'))
    }

    /// A path is safe to restore when it has no empty, `.` or `..` components.
    pub fn is_safe(&self) -> bool {
        !self.0.is_empty()
            && self
                .0
                .split(|b| *b == b'/')
                .all(|c| !c.is_empty() && c != b"." && c != b".." && !c.contains(&0))
    }

    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    pub fn to_os_path(&self) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&self.0))
    }
}

impl From<&str> for EntryPath {
    fn from(s: &str) -> EntryPath {
        EntryPath(s.trim_matches('/').as_bytes().to_vec())
    }
}

impl fmt::Display for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
}

/// One entry of a snapshot. Sources that are not file systems (a stream, a database dump,
/// an S3 object, a Kubernetes object) fill in what applies and carry the rest in `meta`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: EntryPath,
    pub kind: EntryKind,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    #[serde(default)]
    pub mtime_ns: i64,
    #[serde(default)]
    pub size: u64,
    /// Change detection for incremental runs: (device, inode, ctime in ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<(u64, u64, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub link_target: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
    /// Content, as chunk ids in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<Id>,
    /// Per-entry metadata of non-file sources (ETag, content type, apiVersion, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

mod opt_bytes {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&serde_bytes::Bytes::new(b)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<serde_bytes::ByteBuf>::deserialize(d)?.map(|b| b.into_vec()))
    }
}

impl Entry {
    /// A bare entry of the given kind; sources fill in the rest.
    pub fn new(path: EntryPath, kind: EntryKind) -> Entry {
        Entry {
            path,
            kind,
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            size: 0,
            change: None,
            link_target: None,
            rdev: None,
            chunks: Vec::new(),
            meta: BTreeMap::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.chunks.len() * 34);
        ciborium::into_writer(self, &mut out).expect("entries serialize to memory");
        out
    }
}

/// Cuts a stream of encoded entries into tree blobs. Pure: the caller stores the blobs.
pub struct TreeCutter {
    buf: Vec<u8>,
    last: Option<EntryPath>,
}

/// Blob boundaries fall after an entry whose encoding hashes to 0 mod `CUT_MODULUS`, once
/// the blob has `MIN_TREE_BLOB` bytes; `MAX_TREE_BLOB` forces a cut.
const CUT_MODULUS: u32 = 128;
const MIN_TREE_BLOB: usize = 64 << 10;
const MAX_TREE_BLOB: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[error("entries out of order: {next:?} after {prev:?} (a source bug)")]
pub struct OrderError {
    pub prev: EntryPath,
    pub next: EntryPath,
}

impl Default for TreeCutter {
    fn default() -> Self {
        Self::new()
    }
}

impl TreeCutter {
    pub fn new() -> TreeCutter {
        TreeCutter {
            buf: Vec::new(),
            last: None,
        }
    }

    /// Adds an entry; returns a finished blob when this entry closes one.
    pub fn push(&mut self, entry: &Entry) -> Result<Option<Vec<u8>>, OrderError> {
        if let Some(prev) = &self.last
            && prev >= &entry.path
        {
            return Err(OrderError {
                prev: prev.clone(),
                next: entry.path.clone(),
            });
        }
        self.last = Some(entry.path.clone());
        let encoded = entry.encode();
        let h = blake3::hash(&encoded);
        let cut_here =
            u32::from_le_bytes(h.as_bytes()[..4].try_into().expect("4 bytes")) % CUT_MODULUS == 0;
        self.buf.extend_from_slice(&encoded);
        if (cut_here && self.buf.len() >= MIN_TREE_BLOB) || self.buf.len() >= MAX_TREE_BLOB {
            return Ok(Some(std::mem::take(&mut self.buf)));
        }
        Ok(None)
    }

    pub fn finish(self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then_some(self.buf)
    }
}

/// Decodes the entries of one tree blob.
pub fn decode_blob(blob: &[u8]) -> Result<Vec<Entry>, String> {
    let mut r = blob;
    let mut out = Vec::new();
    while !r.is_empty() {
        let e: Entry = ciborium::from_reader(&mut r).map_err(|e| e.to_string())?;
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(p: &str) -> Entry {
        Entry::new(EntryPath::new(p.as_bytes().to_vec()), EntryKind::File)
    }

    #[test]
    fn paths() {
        let p = EntryPath::from("a/b");
        assert!(p.starts_with(&EntryPath::from("a")));
        assert!(!EntryPath::from("ab").starts_with(&EntryPath::from("a")));
        assert!(p.starts_with(&EntryPath::from("")));
        assert!(p.is_safe());
        assert!(!EntryPath::new(b"a/../b".to_vec()).is_safe());
        assert!(!EntryPath::new(b"/a".to_vec()).is_safe());
        assert!(!EntryPath::new(b"a//b".to_vec()).is_safe());
        assert_eq!(EntryPath::from("").join(b"x"), EntryPath::from("x"));
    }

    #[test]
    fn cutter_rejects_disorder() {
        let mut c = TreeCutter::new();
        c.push(&entry("b")).unwrap();
        assert!(c.push(&entry("a")).is_err());
        assert!(c.push(&entry("b")).is_err());
    }

    proptest! {
        #[test]
        fn cut_blobs_decode_to_the_same_entries(names in proptest::collection::btree_set("[a-z/]{1,30}", 0..3000)) {
            let mut c = TreeCutter::new();
            let mut blobs = Vec::new();
            let entries: Vec<Entry> = names.iter().map(|n| {
                let mut e = entry(n);
                e.meta.insert("etag".into(), n.clone());
                e
            }).collect();
            for e in &entries {
                if let Some(b) = c.push(e).unwrap() { blobs.push(b); }
            }
            blobs.extend(c.finish());
            let back: Vec<Entry> = blobs.iter().flat_map(|b| decode_blob(b).unwrap()).collect();
            prop_assert_eq!(back, entries);
        }
    }

    #[test]
    fn an_insertion_changes_few_tree_blobs() {
        let names: Vec<String> = (0..40_000).map(|i| format!("dir/file{i:06}")).collect();
        let cut = |names: &[String]| {
            let mut c = TreeCutter::new();
            let mut blobs = Vec::new();
            for n in names {
                blobs.extend(c.push(&entry(n)).unwrap());
            }
            blobs.extend(c.finish());
            blobs
                .into_iter()
                .map(|b| Id::of(&b))
                .collect::<std::collections::HashSet<_>>()
        };
        let before = cut(&names);
        let mut changed = names.clone();
        changed.insert(20_001, "dir/file020000a".into());
        let after = cut(&changed);
        assert!(before.len() > 10, "{} blobs", before.len());
        assert!(after.difference(&before).count() <= 2);
    }
}
