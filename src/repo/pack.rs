//! Pack files: immutable groups of sealed blobs with a plaintext header at the end.
//!
//! ```text
//! "BHPACK1\n"                                  8-byte magic
//! sealed blob 0 | sealed blob 1 | …            blobs, back to back
//! header: n × (kind u8, id [32], offset u64 LE, length u32 LE)
//! header length u32 LE | BLAKE3(header) [32] | "BHPKEND\n"
//! ```
//! A pack is named by the BLAKE3 hash of its whole content, so `check --read-data` can
//! verify it without any key. The header is plaintext so that the index can be rebuilt
//! without the identity; it reveals only (keyed) ids and sizes.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::id::Id;

pub const MAGIC: &[u8; 8] = b"BHPACK1\n";
pub const END_MAGIC: &[u8; 8] = b"BHPKEND\n";
const ENTRY_LEN: usize = 1 + 32 + 8 + 4;
const TRAILER_LEN: usize = 4 + 32 + 8;
/// Largest sealed blob we accept: the chunker's maximum plus encryption overhead, with room.
pub const MAX_BLOB_LEN: u32 = 64 << 20;
/// Largest header we read (about 1.5 M blobs): a damaged length must not make a reader
/// allocate gigabytes.
const MAX_HEADER_LEN: u64 = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

/// Where one blob lives inside a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: BlobKind,
    pub id: Id,
    pub offset: u64,
    pub length: u32,
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
}

/// Writes one pack under a temporary name; `finish` makes it durable and visible.
pub struct PackWriter {
    tmp_path: PathBuf,
    out: BufWriter<File>,
    hasher: blake3::Hasher,
    entries: Vec<PackEntry>,
    offset: u64,
    finished: bool,
}

impl PackWriter {
    pub fn create(tmp_path: PathBuf) -> Result<PackWriter, PackError> {
        let file = File::create_new(&tmp_path).map_err(|error| PackError::Io {
            path: tmp_path.clone(),
            error,
        })?;
        let mut w = PackWriter {
            tmp_path,
            out: BufWriter::with_capacity(1 << 20, file),
            hasher: blake3::Hasher::new(),
            entries: Vec::new(),
            offset: 0,
            finished: false,
        };
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

    pub fn add(&mut self, kind: BlobKind, id: Id, sealed: &[u8]) -> Result<(), PackError> {
        let length = u32::try_from(sealed.len())
            .ok()
            .filter(|l| *l <= MAX_BLOB_LEN)
            .ok_or_else(|| PackError::Damaged {
                path: self.tmp_path.clone(),
                what: format!("blob of {} bytes is too large", sealed.len()),
            })?;
        let offset = self.offset;
        self.write(sealed)?;
        self.entries.push(PackEntry {
            kind,
            id,
            offset,
            length,
        });
        Ok(())
    }

    pub fn size(&self) -> u64 {
        self.offset
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the header, fsyncs and renames the pack to `packs_dir/xx/<id>`. Only after
    /// this returns may anything refer to the blobs in it.
    pub fn finish(mut self, packs_dir: &Path) -> Result<(Id, Vec<PackEntry>), PackError> {
        let header = encode_header(&self.entries);
        let header_len = u32::try_from(header.len()).expect("header fits u32");
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

fn encode_header(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        out.push(e.kind as u8);
        out.extend_from_slice(&e.id.0);
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
    }
    out
}

/// Reads and validates a pack's header without touching its blobs.
pub fn read_header(path: &Path) -> Result<Vec<PackEntry>, PackError> {
    let damaged = |what: String| PackError::Damaged {
        path: path.to_owned(),
        what,
    };
    let io = |error| PackError::Io {
        path: path.to_owned(),
        error,
    };
    let mut f = File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    if len < (MAGIC.len() + TRAILER_LEN) as u64 {
        return Err(damaged(format!("only {len} bytes long")));
    }
    let mut trailer = [0u8; TRAILER_LEN];
    f.seek(SeekFrom::Start(len - TRAILER_LEN as u64))
        .map_err(io)?;
    f.read_exact(&mut trailer).map_err(io)?;
    if &trailer[36..] != END_MAGIC {
        return Err(damaged("end marker missing".into()));
    }
    let header_len = u32::from_le_bytes(trailer[..4].try_into().expect("4 bytes")) as u64;
    let blobs_end = len - TRAILER_LEN as u64;
    if !header_len.is_multiple_of(ENTRY_LEN as u64)
        || header_len > blobs_end - MAGIC.len() as u64
        || header_len > MAX_HEADER_LEN
    {
        return Err(damaged(format!("header length {header_len} is impossible")));
    }
    let header_start = blobs_end - header_len;
    let mut header = vec![0u8; header_len as usize];
    f.seek(SeekFrom::Start(header_start)).map_err(io)?;
    f.read_exact(&mut header).map_err(io)?;
    if blake3::hash(&header).as_bytes() != &trailer[4..36] {
        return Err(damaged("header checksum mismatch".into()));
    }
    let mut entries = Vec::with_capacity(header.len() / ENTRY_LEN);
    for raw in header.chunks_exact(ENTRY_LEN) {
        let kind = BlobKind::from_u8(raw[0]).ok_or_else(|| damaged("unknown blob kind".into()))?;
        let id = Id::from_slice(&raw[1..33]).expect("32 bytes");
        let offset = u64::from_le_bytes(raw[33..41].try_into().expect("8 bytes"));
        let length = u32::from_le_bytes(raw[41..45].try_into().expect("4 bytes"));
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
        entries.push(PackEntry {
            kind,
            id,
            offset,
            length,
        });
    }
    Ok(entries)
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
    use super::*;

    #[test]
    fn write_then_read_header_and_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let packs = dir.path().join("packs");
        let mut w = PackWriter::create(dir.path().join("p.tmp")).unwrap();
        w.add(BlobKind::Data, Id::of(b"a"), b"first").unwrap();
        w.add(BlobKind::Tree, Id::of(b"b"), b"second blob").unwrap();
        let (id, entries) = w.finish(&packs).unwrap();
        let path = pack_path(&packs, &id);
        assert!(!dir.path().join("p.tmp").exists());
        assert_eq!(read_header(&path).unwrap(), entries);
        assert!(verify_file_hash(&path, &id).unwrap());
        let f = File::open(&path).unwrap();
        let e = entries[1];
        assert_eq!(
            read_blob(&f, &path, e.offset, e.length).unwrap(),
            b"second blob"
        );
    }

    #[test]
    fn damaged_headers_are_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let packs = dir.path().join("packs");
        let mut w = PackWriter::create(dir.path().join("p.tmp")).unwrap();
        w.add(BlobKind::Data, Id::of(b"a"), b"first").unwrap();
        let (id, _) = w.finish(&packs).unwrap();
        let path = pack_path(&packs, &id);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - TRAILER_LEN - 3] ^= 0xff; // inside the header
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read_header(&path), Err(PackError::Damaged { .. })));
        assert!(!verify_file_hash(&path, &id).unwrap());
        std::fs::write(&path, b"short").unwrap();
        assert!(read_header(&path).is_err());
        for cut in [10, n / 2, n - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            assert!(read_header(&path).is_err(), "truncated at {cut}");
        }
    }

    #[test]
    fn impossible_lengths_in_a_header_are_refused_before_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        // A well-formed pack whose one entry claims a 4 GiB blob.
        let mut entry = Vec::new();
        entry.push(0u8);
        entry.extend_from_slice(&[1u8; 32]);
        entry.extend_from_slice(&8u64.to_le_bytes());
        entry.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&entry);
        bytes.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        bytes.extend_from_slice(blake3::hash(&entry).as_bytes());
        bytes.extend_from_slice(END_MAGIC);
        std::fs::write(&path, &bytes).unwrap();
        match read_header(&path) {
            Err(PackError::Damaged { what, .. }) => assert!(what.contains("length"), "{what}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_abandoned_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("p.tmp");
        let mut w = PackWriter::create(tmp.clone()).unwrap();
        w.add(BlobKind::Data, Id::of(b"a"), b"x").unwrap();
        drop(w);
        assert!(!tmp.exists());
    }
}
