//! Pack files (format 2): immutable groups of sealed blobs with a plaintext header at the
//! end.
//!
//! ```text
//! "BHPACK2\n"                                   8-byte magic
//! sealed blob 0 | sealed blob 1 | …             blobs, back to back
//! header: key_count u16 LE | key_count × (len u16 LE | age file holding a 32-byte data key)
//!         n × (kind u8, id [32], offset u64 LE, length u32 LE, key u16 LE)
//! header length u32 LE | BLAKE3(header) [32] | "BHPKEND\n"
//! ```
//! A pack is named by the BLAKE3 hash of its whole content, so `check --read-data` can
//! verify it without any key. The header is plaintext so that the index can be rebuilt
//! and prune can repack without the identity; it reveals only (keyed) ids, kinds and
//! sizes.
//!
//! A new pack has one key (none when unencrypted). Prune's repack copies sealed blobs as
//! they are, each with the wrapped key it was sealed under, so a repacked pack may carry
//! several (deduplicated by their bytes); each entry's `key` indexes the table. Data and
//! tree blobs are sealed with ChaCha20-Poly1305 under their key (see
//! [`super::crypto::DataKey`]); refs and root blobs, and every blob of an unencrypted
//! repository, are `codec ‖ data` in the clear, checked by their id.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::crypto::{CryptoError, PackKey};
use super::id::Id;

pub const MAGIC: &[u8; 8] = b"BHPACK2\n";
pub const END_MAGIC: &[u8; 8] = b"BHPKEND\n";
const ENTRY_LEN: usize = 1 + 32 + 8 + 4 + 2;
const TRAILER_LEN: usize = 4 + 32 + 8;
/// Largest sealed blob we accept: the chunker's maximum plus encryption overhead, with room.
pub const MAX_BLOB_LEN: u32 = 64 << 20;
/// Largest header we read (about 1.4 M blobs): a damaged length must not make a reader
/// allocate gigabytes.
const MAX_HEADER_LEN: u64 = 64 << 20;
/// Largest wrapped key we accept: an age file to a few recipients is a few hundred bytes.
pub const MAX_WRAPPED_KEY_LEN: usize = 16 << 10;
/// Most blobs in one pack: many tiny blobs must not make one pack's header (and the index
/// batch that records it) grow without bound.
pub const MAX_PACK_BLOBS: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BlobKind {
    Data = 0,
    Tree = 1,
    /// A tree blob's id and the data ids its entries use (format 2, plaintext).
    Refs = 2,
    /// A snapshot's refs blob ids in tree order (format 2, plaintext).
    Root = 3,
}

impl BlobKind {
    pub fn from_u8(v: u8) -> Option<BlobKind> {
        match v {
            0 => Some(BlobKind::Data),
            1 => Some(BlobKind::Tree),
            2 => Some(BlobKind::Refs),
            3 => Some(BlobKind::Root),
            _ => None,
        }
    }

    /// Whether blobs of this kind are encrypted in an encrypted repository. Refs and root
    /// blobs stay plaintext so that prune can mark without the identity.
    pub fn sealed(self) -> bool {
        matches!(self, BlobKind::Data | BlobKind::Tree)
    }
}

/// Where one blob lives inside a pack, and which of the pack's keys sealed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: Id,
    pub offset: u64,
    pub length: u32,
    /// Index into the pack's key table; 0 (and meaningless) for plaintext blobs.
    pub key: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("pack {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("pack {path} is damaged: {what}")]
    Damaged { path: PathBuf, what: String },
    #[error("pack {path}: {error}")]
    Crypto { path: PathBuf, error: CryptoError },
    #[error("pack {path}: {what}")]
    Full { path: PathBuf, what: String },
}

/// A pack's header: the wrapped keys, and the blobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackHeader {
    pub keys: Vec<Vec<u8>>,
    pub entries: Vec<PackEntry>,
}

impl PackError {
    /// A constructor of `Damaged` errors naming `path`, for a reader's checks.
    fn damaged_at(path: &Path) -> impl Fn(String) -> PackError + Copy + '_ {
        move |what| PackError::Damaged {
            path: path.to_owned(),
            what,
        }
    }

    /// A constructor of `Io` errors naming `path`.
    fn io_at(path: &Path) -> impl Fn(std::io::Error) -> PackError + Copy + '_ {
        move |error| PackError::Io {
            path: path.to_owned(),
            error,
        }
    }
}

/// Writes one pack under a temporary name; `finish` makes it durable and visible.
pub struct PackWriter {
    tmp_path: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    /// The key new blobs are sealed under; `None` when unencrypted or only copying.
    key: Option<PackKey>,
    /// Wrapped keys in table order, and where each one is (to deduplicate by bytes).
    keys: Vec<Vec<u8>>,
    key_slots: HashMap<Vec<u8>, u16>,
    entries: Vec<PackEntry>,
    offset: u64,
    /// Reused for sealing, so sealing a blob allocates nothing once warm.
    buf: Vec<u8>,
    finished: bool,
}

impl PackWriter {
    /// Starts a pack. With a key, data and tree blobs are sealed under it; without one
    /// (an unencrypted repository, or a repack that only copies) they are stored as given.
    pub fn create(tmp_path: PathBuf, key: Option<PackKey>) -> Result<PackWriter, PackError> {
        let file = File::create_new(&tmp_path).map_err(|error| PackError::Io {
            path: tmp_path.clone(),
            error,
        })?;
        let mut w = PackWriter {
            tmp_path,
            // Small: blobs of a chunk's size bypass it (BufWriter writes large buffers
            // straight through), so only small blobs and the header are copied into it.
            out: BufWriter::with_capacity(64 << 10, file),
            hasher: blake3::Hasher::new(),
            key: None,
            keys: Vec::new(),
            key_slots: HashMap::new(),
            entries: Vec::new(),
            offset: 0,
            buf: Vec::new(),
            finished: false,
        };
        if let Some(k) = key {
            w.key_slot(k.wrapped())?;
            w.key = Some(k);
        }
        w.write(MAGIC)?;
        Ok(w)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), PackError> {
        self.out.write_all(bytes).map_err(|error| PackError::Io {
            path: self.tmp_path.clone(),
            error,
        })?;
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// The table slot of a wrapped key, added when new.
    fn key_slot(&mut self, wrapped: &[u8]) -> Result<u16, PackError> {
        if let Some(slot) = self.key_slots.get(wrapped) {
            return Ok(*slot);
        }
        if wrapped.len() > MAX_WRAPPED_KEY_LEN || wrapped.is_empty() {
            return Err(PackError::Damaged {
                path: self.tmp_path.clone(),
                what: format!("a wrapped key of {} bytes", wrapped.len()),
            });
        }
        let slot = u16::try_from(self.keys.len())
            .ok()
            .filter(|s| *s < u16::MAX)
            .ok_or_else(|| PackError::Full {
                path: self.tmp_path.clone(),
                what: "too many keys in one pack".into(),
            })?;
        self.keys.push(wrapped.to_vec());
        self.key_slots.insert(wrapped.to_vec(), slot);
        Ok(slot)
    }

    fn push_entry(
        &mut self,
        kind: BlobKind,
        id: Id,
        length: usize,
        key: u16,
    ) -> Result<(), PackError> {
        let length = u32::try_from(length)
            .ok()
            .filter(|l| *l <= MAX_BLOB_LEN)
            .ok_or_else(|| PackError::Damaged {
                path: self.tmp_path.clone(),
                what: format!("blob of {length} bytes is too large"),
            })?;
        self.entries.push(PackEntry {
            kind,
            id,
            offset: self.offset,
            length,
            key,
        });
        Ok(())
    }

    /// Adds a blob given as its `codec ‖ data` payload, sealing it under the pack's key
    /// when it has one and the kind is sealed. Returns the bytes it takes in the pack.
    pub fn add(&mut self, kind: BlobKind, id: Id, payload: &[u8]) -> Result<u64, PackError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(payload);
        let result = self.add_in_place(kind, id, &mut buf);
        self.buf = buf;
        result
    }

    /// [`add`](Self::add) for a payload the caller no longer needs: it is sealed where it
    /// lies (no copy of every byte the archiver stores); `payload` then holds the sealed
    /// blob.
    pub fn add_in_place(
        &mut self,
        kind: BlobKind,
        id: Id,
        payload: &mut Vec<u8>,
    ) -> Result<u64, PackError> {
        if let Some(k) = self.key.as_ref().filter(|_| kind.sealed()) {
            k.key()
                .seal_in_place(kind as u8, &id.0, payload)
                .map_err(|error| PackError::Crypto {
                    path: self.tmp_path.clone(),
                    error,
                })?;
        }
        self.push_entry(kind, id, payload.len(), 0)?;
        self.write(payload)?;
        Ok(payload.len() as u64)
    }

    /// Copies a blob sealed elsewhere as it is, with the wrapped key it was sealed under
    /// (`None` for a plaintext blob): prune's repack, which has no identity.
    pub fn add_sealed(
        &mut self,
        kind: BlobKind,
        id: Id,
        sealed: &[u8],
        wrapped_key: Option<&[u8]>,
    ) -> Result<(), PackError> {
        let key = match wrapped_key {
            Some(w) => self.key_slot(w)?,
            None => 0,
        };
        self.push_entry(kind, id, sealed.len(), key)?;
        self.write(sealed)
    }

    pub fn size(&self) -> u64 {
        self.offset
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the pack has reached `max_bytes` or [`MAX_PACK_BLOBS`] and should be
    /// finished.
    pub fn is_full(&self, max_bytes: u64) -> bool {
        self.offset >= max_bytes || self.entries.len() >= MAX_PACK_BLOBS
    }

    /// Writes the header, fsyncs and renames the pack to `packs_dir/xx/<id>`. Only after
    /// this returns may anything refer to the blobs in it.
    pub fn finish(mut self, packs_dir: &Path) -> Result<(Id, Vec<PackEntry>), PackError> {
        // No blob is sealed from here on: the data key goes now (zeroized on drop).
        self.key = None;
        let header = encode_header(&self.keys, &self.entries);
        let header_len = u32::try_from(header.len())
            .ok()
            .filter(|l| u64::from(*l) <= MAX_HEADER_LEN)
            .ok_or_else(|| PackError::Full {
                path: self.tmp_path.clone(),
                what: format!("header of {} bytes is too large", header.len()),
            })?;
        self.write(&header)?;
        self.write(&header_len.to_le_bytes())?;
        let digest = *blake3::hash(&header).as_bytes();
        self.write(&digest)?;
        self.write(END_MAGIC)?;
        let tmp = self.tmp_path.clone();
        let io = |error| PackError::Io {
            path: tmp.clone(),
            error,
        };
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)?;
        let id = Id(*self.hasher.finalize().as_bytes());
        let final_path = pack_path(packs_dir, &id);
        let dir = final_path.parent().expect("pack path has a parent");
        // The prefix directory's own entry must be durable too, also when it exists
        // already: a run killed between its mkdir and this fsync leaves it in the page
        // cache only, where the next power cut takes it, with every pack in it.
        std::fs::create_dir_all(dir).map_err(io)?;
        super::fsync_dir(packs_dir).map_err(io)?;
        std::fs::rename(&tmp, &final_path).map_err(io)?;
        self.finished = true;
        super::fsync_dir(dir).map_err(io)?;
        Ok((id, std::mem::take(&mut self.entries)))
    }
}

impl Drop for PackWriter {
    fn drop(&mut self) {
        // An unfinished pack is garbage; finished ones were renamed away already.
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp_path);
        }
    }
}

pub fn pack_path(packs_dir: &Path, id: &Id) -> PathBuf {
    let hex = id.to_hex();
    packs_dir.join(&hex[..2]).join(hex)
}

fn encode_header(keys: &[Vec<u8>], entries: &[PackEntry]) -> Vec<u8> {
    let key_bytes: usize = keys.iter().map(|k| 2 + k.len()).sum();
    let mut out = Vec::with_capacity(2 + key_bytes + entries.len() * ENTRY_LEN);
    // Both fit u16: the writer caps the table and each key's length.
    out.extend_from_slice(&(keys.len() as u16).to_le_bytes());
    for k in keys {
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k);
    }
    for e in entries {
        out.push(e.kind as u8);
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
        out.extend_from_slice(&e.key.to_le_bytes());
    }
    out
}

/// Where a pack's header lies, from its trailer: (header start, header length, digest).
fn locate_header(f: &mut File, path: &Path) -> Result<(u64, u64, [u8; 32]), PackError> {
    let damaged = PackError::damaged_at(path);
    let io = PackError::io_at(path);
    let len = f.metadata().map_err(io)?.len();
    if len < (MAGIC.len() + TRAILER_LEN) as u64 {
        return Err(damaged(format!("only {len} bytes long")));
    }
    let mut magic = [0u8; 8];
    f.read_exact_at(&mut magic, 0).map_err(io)?;
    if &magic != MAGIC {
        return Err(damaged(if magic.starts_with(b"BHPACK") {
            format!(
                "pack format {:?}, not this version's {:?}",
                String::from_utf8_lossy(&magic[6..7]),
                "2"
            )
        } else {
            "start marker missing".into()
        }));
    }
    let mut trailer = [0u8; TRAILER_LEN];
    f.read_exact_at(&mut trailer, len - TRAILER_LEN as u64)
        .map_err(io)?;
    if &trailer[36..] != END_MAGIC {
        return Err(damaged("end marker missing".into()));
    }
    let header_len = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes")) as u64;
    let blobs_end = len - TRAILER_LEN as u64;
    if header_len < 2 || header_len > blobs_end - MAGIC.len() as u64 || header_len > MAX_HEADER_LEN
    {
        return Err(damaged(format!("header length {header_len} is impossible")));
    }
    let digest = trailer[4..36].try_into().expect("32 bytes");
    Ok((blobs_end - header_len, header_len, digest))
}

/// Parses the key table at the start of a header of `header_len` bytes, reading at most
/// `limit` keys: the table's key count, the keys read, and the bytes consumed.
fn parse_keys(
    r: &mut impl Read,
    header_len: u64,
    limit: u16,
    path: &Path,
) -> Result<(u16, Vec<Vec<u8>>, u64), PackError> {
    let damaged = PackError::damaged_at(path);
    let io = PackError::io_at(path);
    let mut two = [0u8; 2];
    r.read_exact(&mut two).map_err(io)?;
    let count = u16::from_le_bytes(two);
    let mut used = 2u64;
    let mut keys = Vec::with_capacity(usize::from(count.min(limit)).min(16));
    for i in 0..count.min(limit) {
        if used + 2 > header_len {
            return Err(damaged(format!(
                "key table runs past the header at key {i}"
            )));
        }
        r.read_exact(&mut two).map_err(io)?;
        let len = u16::from_le_bytes(two) as usize;
        used += 2;
        // Checked before allocating: a damaged length must not allocate beyond the bound.
        if len == 0 || len > MAX_WRAPPED_KEY_LEN || used + len as u64 > header_len {
            return Err(damaged(format!("key {i} has an impossible length {len}")));
        }
        let mut k = vec![0u8; len];
        r.read_exact(&mut k).map_err(io)?;
        used += len as u64;
        keys.push(k);
    }
    Ok((count, keys, used))
}

/// Reads and validates a pack's header without touching its blobs.
pub fn read_header(path: &Path) -> Result<Vec<PackEntry>, PackError> {
    read_full_header(path).map(|h| h.entries)
}

/// Reads and validates a pack's header, with its key table.
pub fn read_full_header(path: &Path) -> Result<PackHeader, PackError> {
    let damaged = PackError::damaged_at(path);
    let io = PackError::io_at(path);
    let mut f = File::open(path).map_err(io)?;
    let (header_start, header_len, digest) = locate_header(&mut f, path)?;
    let mut header = vec![0u8; header_len as usize];
    f.read_exact_at(&mut header, header_start).map_err(io)?;
    if blake3::hash(&header).as_bytes() != &digest {
        return Err(damaged("header checksum mismatch".into()));
    }
    let (_, keys, used) = parse_keys(&mut &header[..], header_len, u16::MAX, path)?;
    let table = &header[used as usize..];
    if !table.len().is_multiple_of(ENTRY_LEN) {
        return Err(damaged(format!("header length {header_len} is impossible")));
    }
    let mut entries = Vec::with_capacity(table.len() / ENTRY_LEN);
    for raw in table.chunks_exact(ENTRY_LEN) {
        let kind = BlobKind::from_u8(raw[0]).ok_or_else(|| damaged("unknown blob kind".into()))?;
        let id = Id::from_slice(&raw[1..33]).expect("32 bytes");
        let offset = u64::from_le_bytes(raw[33..41].try_into().expect("8 bytes"));
        let length = u32::from_le_bytes(raw[41..45].try_into().expect("4 bytes"));
        let key = u16::from_le_bytes(raw[45..47].try_into().expect("2 bytes"));
        if length > MAX_BLOB_LEN {
            return Err(damaged(format!(
                "blob {} has an impossible length {length}",
                id.short()
            )));
        }
        if offset < MAGIC.len() as u64
            || offset
                .checked_add(length as u64)
                .is_none_or(|end| end > header_start)
        {
            return Err(damaged(format!(
                "blob {} lies outside the pack",
                id.short()
            )));
        }
        if usize::from(key) >= keys.len().max(1) {
            return Err(damaged(format!(
                "blob {} names key {key} of {}",
                id.short(),
                keys.len()
            )));
        }
        entries.push(PackEntry {
            kind,
            id,
            offset,
            length,
            key,
        });
    }
    Ok(PackHeader { keys, entries })
}

/// Reads one wrapped key from a pack's key table, without reading the blob entries. The
/// header's checksum is not verified here (that needs the whole header): a damaged key
/// fails to unwrap, or opens no blob.
pub fn read_wrapped_key(file: &File, path: &Path, slot: u16) -> Result<Vec<u8>, PackError> {
    let damaged = PackError::damaged_at(path);
    let io = PackError::io_at(path);
    let mut f = file.try_clone().map_err(io)?;
    let (header_start, header_len, _) = locate_header(&mut f, path)?;
    f.seek(SeekFrom::Start(header_start)).map_err(io)?;
    // Only the table's keys up to `slot` are read: a few hundred bytes each.
    let mut r = BufReader::with_capacity(4096, f.take(header_len));
    let (count, mut keys, _) = parse_keys(&mut r, header_len, slot.saturating_add(1), path)?;
    match keys.pop() {
        Some(k) if keys.len() == usize::from(slot) => Ok(k),
        _ => Err(damaged(format!("no key {slot} in a table of {count}"))),
    }
}

/// Reads one sealed blob by position.
pub fn read_blob(file: &File, path: &Path, offset: u64, length: u32) -> Result<Vec<u8>, PackError> {
    let mut buf = vec![0u8; length as usize];
    file.read_exact_at(&mut buf, offset)
        .map_err(|error| PackError::Io {
            path: path.to_owned(),
            error,
        })?;
    Ok(buf)
}

/// Hashes the whole pack file and compares it with its name.
pub fn verify_file_hash(path: &Path, expected: &Id) -> Result<bool, PackError> {
    let mut f = File::open(path).map_err(|error| PackError::Io {
        path: path.to_owned(),
        error,
    })?;
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut f, &mut hasher).map_err(|error| PackError::Io {
        path: path.to_owned(),
        error,
    })?;
    Ok(hasher.finalize().as_bytes() == &expected.0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::repo::crypto::{
        BlobCompressor, DataKey, Identities, Recipient, TAG_LEN, decode_payload,
    };

    fn keypair() -> (Recipient, Identities) {
        let id = age::x25519::Identity::generate();
        let r: Recipient = id.to_public().to_string().parse().unwrap();
        (r, Identities::from_vec(vec![Box::new(id)]))
    }

    fn payload(raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        BlobCompressor::new(3)
            .unwrap()
            .compress_into(raw, &mut out)
            .unwrap();
        out
    }

    /// Writes a pack of `blobs`, encrypted when `recipient` is given.
    fn write_pack(
        dir: &Path,
        recipient: Option<&Recipient>,
        blobs: &[(BlobKind, Vec<u8>)],
    ) -> (PathBuf, Vec<PackEntry>) {
        let key = recipient.map(|r| PackKey::generate(std::slice::from_ref(r)).unwrap());
        let tmp = dir.join(format!("{}.tmp", crate::repo::random_hex()));
        let mut w = PackWriter::create(tmp, key).unwrap();
        for (kind, raw) in blobs {
            w.add(*kind, Id::of(raw), &payload(raw)).unwrap();
        }
        let packs = dir.join("packs");
        let (id, entries) = w.finish(&packs).unwrap();
        (pack_path(&packs, &id), entries)
    }

    /// Reads one blob back the way the repository does: key, AEAD, codec.
    fn open_blob(path: &Path, e: &PackEntry, ids: Option<&Identities>) -> Result<Vec<u8>, String> {
        let f = File::open(path).unwrap();
        let mut sealed = read_blob(&f, path, e.offset, e.length).map_err(|e| e.to_string())?;
        if let Some(ids) = ids.filter(|_| e.kind.sealed()) {
            let wrapped = read_wrapped_key(&f, path, e.key).map_err(|e| e.to_string())?;
            let key = DataKey::unwrap(ids, &wrapped).map_err(|e| e.to_string())?;
            key.open_in_place(e.kind as u8, &e.id.0, &mut sealed)
                .map_err(|e| e.to_string())?;
        }
        decode_payload(&sealed, 1 << 20).map_err(|e| e.to_string())
    }

    /// Rewrites a pack's header with `edit` applied and a matching checksum: what someone
    /// with write access to the disk can do.
    fn rewrite_header(path: &Path, edit: impl FnOnce(&mut PackHeader)) {
        let mut h = read_full_header(path).unwrap();
        edit(&mut h);
        let bytes = std::fs::read(path).unwrap();
        let mut f = File::open(path).unwrap();
        let (start, _, _) = locate_header(&mut f, path).unwrap();
        let header = encode_header(&h.keys, &h.entries);
        let mut out = bytes[..start as usize].to_vec();
        out.extend_from_slice(&header);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(blake3::hash(&header).as_bytes());
        out.extend_from_slice(END_MAGIC);
        std::fs::write(path, out).unwrap();
    }

    fn kind_strategy() -> impl Strategy<Value = BlobKind> {
        prop_oneof![
            Just(BlobKind::Data),
            Just(BlobKind::Tree),
            Just(BlobKind::Refs),
            Just(BlobKind::Root)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn packs_round_trip(
            blobs in prop::collection::vec(
                (kind_strategy(), prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..2000),
                    // Compressible: repeated text.
                    (1usize..200).prop_map(|n| b"backuphub ".repeat(n)),
                ]),
                1..20,
            ),
            encrypted in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (r, ids) = keypair();
            let (path, entries) = write_pack(dir.path(), encrypted.then_some(&r), &blobs);
            let header = read_full_header(&path).unwrap();
            prop_assert_eq!(&header.entries, &entries);
            prop_assert_eq!(header.keys.len(), usize::from(encrypted));
            for ((kind, raw), e) in blobs.iter().zip(&entries) {
                prop_assert_eq!(e.kind, *kind);
                let back = open_blob(&path, e, encrypted.then_some(&ids)).unwrap();
                prop_assert_eq!(&back, raw);
                if encrypted && kind.sealed() && raw.len() >= 16 {
                    // Sealed: the plaintext payload does not appear as it is.
                    let f = File::open(&path).unwrap();
                    let sealed = read_blob(&f, &path, e.offset, e.length).unwrap();
                    prop_assert_ne!(&sealed[..payload(raw).len()], &payload(raw)[..]);
                }
            }
        }
    }

    #[test]
    fn write_then_read_header_and_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let packs = dir.path().join("packs");
        let mut w = PackWriter::create(dir.path().join("p.tmp"), None).unwrap();
        w.add(BlobKind::Data, Id::of(b"a"), b"first").unwrap();
        w.add(BlobKind::Tree, Id::of(b"b"), b"second blob").unwrap();
        let (id, entries) = w.finish(&packs).unwrap();
        let path = pack_path(&packs, &id);
        assert!(!dir.path().join("p.tmp").exists());
        assert_eq!(read_header(&path).unwrap(), entries);
        assert!(read_full_header(&path).unwrap().keys.is_empty());
        assert!(verify_file_hash(&path, &id).unwrap());
        let f = File::open(&path).unwrap();
        let e = entries[1];
        assert_eq!(
            read_blob(&f, &path, e.offset, e.length).unwrap(),
            b"second blob"
        );
    }

    #[test]
    fn flipping_any_byte_of_a_sealed_blob_fails_that_blob_only() {
        let dir = tempfile::tempdir().unwrap();
        let (r, ids) = keypair();
        let blobs: Vec<(BlobKind, Vec<u8>)> = (0..3u8)
            .map(|i| (BlobKind::Data, vec![i; 40 + usize::from(i)]))
            .collect();
        let (path, entries) = write_pack(dir.path(), Some(&r), &blobs);
        let original = std::fs::read(&path).unwrap();
        let target = entries[1];
        for at in target.offset..target.offset + u64::from(target.length) {
            let mut bytes = original.clone();
            bytes[at as usize] ^= 0x01;
            std::fs::write(&path, &bytes).unwrap();
            let err = open_blob(&path, &target, Some(&ids)).unwrap_err();
            assert!(err.contains("authentication failed"), "byte {at}: {err}");
            for (i, e) in [(0, entries[0]), (2, entries[2])] {
                assert_eq!(open_blob(&path, &e, Some(&ids)).unwrap(), blobs[i].1);
            }
        }
    }

    #[test]
    fn a_blob_moved_to_another_pack_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (r, ids) = keypair();
        let moved = (BlobKind::Data, b"moved blob content".to_vec());
        let (a_path, a_entries) = write_pack(dir.path(), Some(&r), std::slice::from_ref(&moved));
        let (b_path, _) = write_pack(dir.path(), Some(&r), &[(BlobKind::Data, b"b".to_vec())]);
        let f = File::open(&a_path).unwrap();
        let e = a_entries[0];
        let sealed = read_blob(&f, &a_path, e.offset, e.length).unwrap();
        // A pack built from pack B's key and A's sealed bytes under the same id: what
        // moving the blob's bytes and header entry into B amounts to.
        let b_key = read_full_header(&b_path).unwrap().keys.remove(0);
        let mut w = PackWriter::create(dir.path().join("c.tmp"), None).unwrap();
        w.add_sealed(e.kind, e.id, &sealed, Some(&b_key)).unwrap();
        let (c_id, c_entries) = w.finish(&dir.path().join("packs")).unwrap();
        let c_path = pack_path(&dir.path().join("packs"), &c_id);
        let err = open_blob(&c_path, &c_entries[0], Some(&ids)).unwrap_err();
        assert!(err.contains("authentication failed"), "{err}");
        // Moved with its own wrapped key (as repacking does), it still opens.
        let a_key = read_full_header(&a_path).unwrap().keys.remove(0);
        let mut w = PackWriter::create(dir.path().join("d.tmp"), None).unwrap();
        w.add_sealed(e.kind, e.id, &sealed, Some(&b_key)).unwrap();
        w.add_sealed(e.kind, e.id, &sealed, Some(&a_key)).unwrap();
        w.add_sealed(e.kind, e.id, &sealed, Some(&a_key)).unwrap();
        let (d_id, d_entries) = w.finish(&dir.path().join("packs")).unwrap();
        let d_path = pack_path(&dir.path().join("packs"), &d_id);
        assert_eq!(
            read_full_header(&d_path).unwrap().keys.len(),
            2,
            "deduplicated"
        );
        assert_eq!(d_entries[2].key, 1);
        assert_eq!(
            open_blob(&d_path, &d_entries[2], Some(&ids)).unwrap(),
            moved.1
        );
    }

    #[test]
    fn a_changed_kind_or_id_in_the_header_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (r, ids) = keypair();
        let blobs = [
            (BlobKind::Data, b"data blob".to_vec()),
            (BlobKind::Tree, b"tree blob".to_vec()),
        ];
        let (path, _) = write_pack(dir.path(), Some(&r), &blobs);
        rewrite_header(&path, |h| {
            h.entries[0].kind = BlobKind::Tree;
            h.entries[1].id.0[31] ^= 1;
        });
        let entries = read_header(&path).unwrap();
        for e in &entries {
            let err = open_blob(&path, e, Some(&ids)).unwrap_err();
            assert!(err.contains("authentication failed"), "{err}");
        }
    }

    #[test]
    fn per_blob_overhead_is_the_tag() {
        let dir = tempfile::tempdir().unwrap();
        let (r, _) = keypair();
        let blobs: Vec<(BlobKind, Vec<u8>)> = (0..1000u32)
            .map(|i| {
                (
                    BlobKind::Data,
                    format!("kind: ConfigMap\nname: cm-{i}\n").into_bytes(),
                )
            })
            .collect();
        let payloads: u64 = blobs.iter().map(|(_, b)| payload(b).len() as u64).sum();
        let raw: u64 = blobs.iter().map(|(_, b)| b.len() as u64).sum();
        let (path, entries) = write_pack(dir.path(), Some(&r), &blobs);
        let sealed: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
        // Sealed bytes: codec byte + tag per blob, nothing more.
        assert_eq!(sealed - payloads, 1000 * TAG_LEN as u64);
        assert!(payloads <= raw + 1000, "codec byte: {payloads} vs {raw}");
        let file = std::fs::metadata(&path).unwrap().len();
        // The whole file: tag, codec byte and header entry per blob, plus one wrapped key.
        let per_blob = (file - raw) as f64 / 1000.0;
        assert!(
            per_blob < (TAG_LEN + 1 + ENTRY_LEN + 1) as f64,
            "{per_blob}"
        );
        eprintln!(
            "per-blob overhead: sealed {} B, whole pack {per_blob:.1} B",
            TAG_LEN + 1
        );
    }

    #[test]
    fn wrapped_keys_are_read_by_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path().join("p.tmp"), None).unwrap();
        w.add_sealed(BlobKind::Data, Id::of(b"a"), b"x", Some(b"key zero"))
            .unwrap();
        w.add_sealed(BlobKind::Data, Id::of(b"b"), b"y", Some(b"key one"))
            .unwrap();
        w.add_sealed(BlobKind::Refs, Id::of(b"c"), b"z", None)
            .unwrap();
        let (id, entries) = w.finish(&dir.path().join("packs")).unwrap();
        let path = pack_path(&dir.path().join("packs"), &id);
        assert_eq!(entries.iter().map(|e| e.key).collect::<Vec<_>>(), [0, 1, 0]);
        let f = File::open(&path).unwrap();
        assert_eq!(read_wrapped_key(&f, &path, 1).unwrap(), b"key one");
        assert_eq!(read_wrapped_key(&f, &path, 0).unwrap(), b"key zero");
        assert!(matches!(
            read_wrapped_key(&f, &path, 2),
            Err(PackError::Damaged { .. })
        ));
    }

    #[test]
    fn a_full_pack_says_so_by_count_as_well_as_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PackWriter::create(dir.path().join("p.tmp"), None).unwrap();
        for i in 0..MAX_PACK_BLOBS as u32 {
            assert!(!w.is_full(u64::MAX), "{i}");
            w.add(BlobKind::Data, Id::of(&i.to_le_bytes()), b"\0x")
                .unwrap();
        }
        assert!(w.is_full(u64::MAX));
        assert!(w.len() == MAX_PACK_BLOBS && w.size() < 1 << 20);
    }

    #[test]
    fn damaged_headers_are_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let packs = dir.path().join("packs");
        let (r, _) = keypair();
        let key = PackKey::generate(&[r]).unwrap();
        let mut w = PackWriter::create(dir.path().join("p.tmp"), Some(key)).unwrap();
        w.add(BlobKind::Data, Id::of(b"a"), b"\0first").unwrap();
        let (id, _) = w.finish(&packs).unwrap();
        let path = pack_path(&packs, &id);
        let bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        // Inside the entries, and inside the key table.
        for at in [n - TRAILER_LEN - 3, n - TRAILER_LEN - ENTRY_LEN - 20] {
            let mut b = bytes.clone();
            b[at] ^= 0xff;
            std::fs::write(&path, &b).unwrap();
            assert!(matches!(read_header(&path), Err(PackError::Damaged { .. })));
            assert!(!verify_file_hash(&path, &id).unwrap());
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(read_header(&path).is_err());
        for cut in [10, n / 2, n - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(read_header(&path).is_err(), "truncated at {cut}");
            let f = File::open(&path).unwrap();
            assert!(
                read_wrapped_key(&f, &path, 0).is_err(),
                "truncated at {cut}"
            );
        }
        // A format-1 pack is named as such.
        let mut b = bytes.clone();
        b[..8].copy_from_slice(b"BHPACK1\n");
        std::fs::write(&path, &b).unwrap();
        match read_header(&path) {
            Err(PackError::Damaged { what, .. }) => assert!(what.contains("format"), "{what}"),
            other => panic!("{other:?}"),
        }
    }

    /// A pack whose header is `header`, with a valid checksum, after 8 bytes of blob.
    fn forged(path: &Path, header: &[u8]) {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[0u8; 8]);
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
        bytes.extend_from_slice(blake3::hash(header).as_bytes());
        bytes.extend_from_slice(END_MAGIC);
        std::fs::write(path, &bytes).unwrap();
    }

    fn entry(length: u32, key: u16) -> Vec<u8> {
        let mut e = vec![0u8];
        e.extend_from_slice(&[1u8; 32]);
        e.extend_from_slice(&8u64.to_le_bytes());
        e.extend_from_slice(&length.to_le_bytes());
        e.extend_from_slice(&key.to_le_bytes());
        e
    }

    #[test]
    fn impossible_lengths_in_a_header_are_refused_before_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let damaged = |header: &[u8], word: &str| {
            forged(&path, header);
            match read_header(&path) {
                Err(PackError::Damaged { what, .. }) => assert!(what.contains(word), "{what}"),
                other => panic!("{other:?}"),
            }
        };
        // One entry claiming a 4 GiB blob.
        damaged(&[&[0, 0][..], &entry(u32::MAX, 0)].concat(), "length");
        // A key claiming 60 KiB, or more bytes than the header has.
        damaged(&[&[1, 0, 0x60, 0xea][..], &[7; 10]].concat(), "key 0");
        damaged(&[&[1, 0, 200, 0][..], &[7; 10]].concat(), "key 0");
        // 65535 keys announced, none there.
        damaged(&[0xff, 0xff], "key table");
        // An entry naming a key the table does not have.
        damaged(&[&[1, 0, 2, 0, 9, 9][..], &entry(8, 1)].concat(), "key 1");
        // And the well-formed version of the same reads.
        forged(&path, &[&[1, 0, 2, 0, 9, 9][..], &entry(8, 0)].concat());
        let h = read_full_header(&path).unwrap();
        assert_eq!((h.keys, h.entries.len()), (vec![vec![9, 9]], 1));
    }

    #[test]
    fn an_abandoned_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("p.tmp");
        let mut w = PackWriter::create(tmp.clone(), None).unwrap();
        w.add(BlobKind::Data, Id::of(b"a"), b"x").unwrap();
        drop(w);
        assert!(!tmp.exists());
    }
}
