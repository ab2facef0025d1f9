//! The entry model and snapshot trees.
//!
//! A tree is the flat list of a snapshot's entries in strictly increasing byte order of
//! their sort keys (the logical key when an entry has one, else its path), CBOR-encoded back to back and cut into blobs at entry boundaries chosen by
//! content (so unchanged runs of entries dedupe between snapshots). Byte order of full
//! keys is also S3's listing order, which lets incremental sources merge-join against the
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
    /// The entry's logical key, byte for byte (an S3 key such as `a//b/../c/`, a Kubernetes
    /// object name), when it is not already the path. A key may name no safe file path at
    /// all, so a plain restore writes it to [`escape_key`] of it, never to the key itself.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_bytes")]
    pub key: Option<Vec<u8>>,
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
            key: None,
        }
    }

    /// An entry named by a logical key: its path is the key's escape, and the key is kept
    /// only when that differs from it (a safe key without `%` is its own path).
    pub fn with_key(key: &[u8], kind: EntryKind) -> Entry {
        let path = escape_key(key);
        let mut e = Entry::new(path, kind);
        if e.path.as_bytes() != key {
            e.key = Some(key.to_vec());
        }
        e
    }

    /// What orders entries in a tree and in the file cache: the logical key when there is
    /// one, else the path. Sources yield entries in strictly increasing sort key order.
    pub fn sort_key(&self) -> &[u8] {
        self.key.as_deref().unwrap_or(self.path.as_bytes())
    }

    /// Where a plain restore writes this entry. A key is always escaped afresh rather than
    /// trusting the stored path to be its escape (the snapshot may come from a hostile
    /// repository; the path is still checked with [`EntryPath::is_safe`] as before).
    pub fn restore_path(&self) -> EntryPath {
        match &self.key {
            Some(k) => escape_key(k),
            None => self.path.clone(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.chunks.len() * 34);
        ciborium::into_writer(self, &mut out).expect("entries serialize to memory");
        out
    }
}

/// The path a plain restore writes a logical key to. Reversible ([`unescape_key`]) and
/// always a safe path ([`EntryPath::is_safe`]): the key is split on `/`, and in each
/// component `%` becomes `%25` and NUL `%00`; then a component that is empty becomes `%`,
/// one that is `.` becomes `%2E`, and `..` becomes `%2E%2E`. So `a//b/../c/` is stored
/// at `a/%/b/%2E%2E/c/%`, and `/etc` at `%/etc`. A key whose components are all non-empty,
/// not `.` or `..`, and free of `%` and NUL is its own path.
pub fn escape_key(key: &[u8]) -> EntryPath {
    let mut out = Vec::with_capacity(key.len() + 8);
    for (i, comp) in key.split(|b| *b == b'/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        match comp {
            b"" => out.push(b'%'),
            b"." => out.extend_from_slice(b"%2E"),
            b".." => out.extend_from_slice(b"%2E%2E"),
            _ => {
                for &b in comp {
                    match b {
                        b'%' => out.extend_from_slice(b"%25"),
                        0 => out.extend_from_slice(b"%00"),
                        b => out.push(b),
                    }
                }
            }
        }
    }
    EntryPath(out)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not an escaped key")]
pub struct UnescapeError(pub String);

/// The logical key whose escape is `path`; the inverse of [`escape_key`]. A path that
/// `escape_key` never writes (`%41`, a bare `.`) is refused, so each path has one key.
pub fn unescape_key(path: &[u8]) -> Result<Vec<u8>, UnescapeError> {
    let bad = || UnescapeError(String::from_utf8_lossy(path).into_owned());
    let mut out = Vec::with_capacity(path.len());
    for (i, comp) in path.split(|b| *b == b'/').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        if comp == b"%" {
            continue; // an empty component
        }
        let mut rest = comp;
        while let Some((&b, tail)) = rest.split_first() {
            if b != b'%' {
                out.push(b);
                rest = tail;
                continue;
            }
            let v = match tail.get(..2) {
                Some(b"25") => b'%',
                Some(b"00") => 0,
                Some(b"2E") => b'.',
                _ => return Err(bad()),
            };
            out.push(v);
            rest = &tail[2..];
        }
    }
    // Whatever escape_key would not have written (`%2Ex`, `.`, an empty component) is
    // not the escape of the key it decodes to.
    if escape_key(&out).as_bytes() != path {
        return Err(bad());
    }
    Ok(out)
}

/// Cuts a stream of encoded entries into tree blobs. Pure: the caller stores the blobs.
pub struct TreeCutter {
    buf: Vec<u8>,
    /// The last entry's sort key ([`Entry::sort_key`]).
    last: Option<Vec<u8>>,
}

/// Blob boundaries fall after an entry whose encoding hashes to 0 mod `CUT_MODULUS`, once
/// the blob has `MIN_TREE_BLOB` bytes; `MAX_TREE_BLOB` forces a cut.
///
/// Small blobs (about 20 entries) because every changed tree blob brings a new refs blob
/// listing all of its data ids: with 1 % of 100,000 files changed at random per snapshot,
/// blobs of ~700 entries all changed every time (3.2 MB of refs and 4.6 MB of trees per
/// snapshot, `bench/scale.sh`), while at ~20 entries four in five blobs stay the same.
/// The cost is one index entry per ~2 KiB of tree.
const CUT_MODULUS: u32 = 16;
const MIN_TREE_BLOB: usize = 512;
const MAX_TREE_BLOB: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
#[error("entries out of order: {next:?} after {prev:?} (a source bug)")]
pub struct OrderError {
    /// Sort keys ([`Entry::sort_key`]), shown lossily.
    pub prev: String,
    pub next: String,
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
            && prev.as_slice() >= entry.sort_key()
        {
            return Err(OrderError {
                prev: String::from_utf8_lossy(prev).into_owned(),
                next: String::from_utf8_lossy(entry.sort_key()).into_owned(),
            });
        }
        self.last = Some(entry.sort_key().to_vec());
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
    fn keys_escape_to_safe_paths() {
        let cases: [(&[u8], &[u8]); 8] = [
            (b"a//b/../c/", b"a/%/b/%2E%2E/c/%"),
            (b"/etc/passwd", b"%/etc/passwd"),
            (b"", b"%"),
            (b".", b"%2E"),
            (b"100%/x", b"100%25/x"),
            (b"a\x00b", b"a%00b"),
            (b"..a/.b", b"..a/.b"),
            (b"ns/pod.yaml", b"ns/pod.yaml"),
        ];
        for (key, path) in cases {
            assert_eq!(escape_key(key).as_bytes(), path, "{key:?}");
            assert_eq!(unescape_key(path).unwrap(), key);
        }
        for bad in [&b"%41"[..], b"%2Ex", b"a//b", b".", b"%2", b"%2e"] {
            assert!(unescape_key(bad).is_err(), "{bad:?}");
        }
        let e = Entry::with_key(b"a//b", EntryKind::File);
        assert_eq!(e.path.as_bytes(), b"a/%/b");
        assert_eq!(e.sort_key(), b"a//b");
        assert_eq!(e.restore_path(), e.path);
        assert_eq!(Entry::with_key(b"a/b", EntryKind::File).key, None);
    }

    #[test]
    fn keys_survive_encoding_and_are_left_out_when_absent() {
        let plain = entry("x");
        let mut keyed = Entry::with_key(b"x/../y", EntryKind::File);
        keyed.key = Some(vec![0xff, 0, b'/']);
        assert!(keyed.encode().len() > plain.encode().len());
        let back = decode_blob(&[plain.encode(), keyed.encode()].concat()).unwrap();
        assert_eq!(back, vec![plain, keyed]);
    }

    proptest! {
        #[test]
        fn any_key_round_trips_through_a_safe_path(key in proptest::collection::vec(
            prop_oneof![Just(b'/'), Just(b'.'), Just(b'%'), Just(0u8), Just(b'2'), Just(b'E'), any::<u8>()],
            0..40,
        )) {
            let path = escape_key(&key);
            prop_assert!(path.is_safe(), "{:?}", path);
            prop_assert!(!path.as_bytes().starts_with(b"/"));
            prop_assert!(!path.as_bytes().contains(&0));
            prop_assert!(path.as_bytes().split(|b| *b == b'/').all(|c| !c.is_empty() && c != b"." && c != b".."));
            prop_assert_eq!(unescape_key(path.as_bytes()).unwrap(), key);
        }

        #[test]
        fn safe_keys_without_percent_are_their_own_path(key in "[a-zA-Z0-9._ -]{1,12}(/[a-zA-Z0-9._ -]{1,12}){0,4}") {
            let safe = EntryPath::new(key.as_bytes().to_vec()).is_safe();
            prop_assume!(safe);
            let path = escape_key(key.as_bytes());
            prop_assert_eq!(path.as_bytes(), key.as_bytes());
        }
    }

    #[test]
    fn cutter_rejects_disorder() {
        let mut c = TreeCutter::new();
        c.push(&entry("b")).unwrap();
        assert!(c.push(&entry("a")).is_err());
        assert!(c.push(&entry("b")).is_err());
        // Keyed entries are ordered by their key, not their path: `b/./x` is stored at
        // `b/%2E/x`, which sorts before `b/-` as a path but after it as a key.
        c.push(&entry("b/-")).unwrap();
        c.push(&Entry::with_key(b"b/./x", EntryKind::File)).unwrap();
        assert!(c.push(&entry("b/.")).is_err());
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
