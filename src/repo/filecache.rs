//! Per-job file caches: the previous run's entries, for incremental decisions.
//!
//! One flat file per job, `<files dir>/<hex(job)>`: a zstd stream of records
//! `key_len u32 LE ‖ sort key ‖ entry_len u32 LE ‖ CBOR entry`, in increasing sort-key
//! order. A run writes its entries to a temporary file as it goes and renames it over the
//! job's cache once its snapshot is written, so an interrupted run leaves the previous
//! cache in place.
//!
//! Why a file rather than sled trees: a run rewrites the whole cache, which is exactly
//! what a sequential file does in one pass and constant memory, while a sled tree per run
//! (inserted entry by entry, dropped at the next run) measured 3.3 KB of state disk per
//! entry and kept growing with the file count. Reading is a merge-join: one record in
//! memory at a time.
//!
//! It is a cache: a missing, torn or garbled file only costs reading entries afresh,
//! never a wrong result (an entry is offered only when its chunks are still usable).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::id::Id;
use super::tree::Entry;

/// Largest record we accept when reading (a sort key or one encoded entry): a damaged
/// length must not make the reader allocate gigabytes.
const MAX_RECORD: usize = 256 << 20;
/// zstd level of the cache: it is written once per run and read once per run.
const LEVEL: i32 = 1;

#[derive(Debug, thiserror::Error)]
#[error("file cache {path}: {error}")]
pub struct FileCacheError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

fn cache_path(dir: &Path, job: &str) -> PathBuf {
    dir.join(hex::encode(job.as_bytes()))
}

/// Removes temporary files of runs that never committed. Called by the index's owner on
/// open, when no run of this process is going (the persistent index is held by one
/// process at a time).
pub fn collect_temporaries(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().ends_with(".tmp")
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Records one run's entries as the job's next file cache. Owned.
pub struct FileCacheWriter {
    tmp: PathBuf,
    dest: PathBuf,
    out: Option<zstd::Encoder<'static, BufWriter<File>>>,
    committed: bool,
}

impl FileCacheWriter {
    pub fn create(dir: &Path, job: &str) -> Result<FileCacheWriter, FileCacheError> {
        let err = |error| FileCacheError {
            path: dir.to_owned(),
            error,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        let dest = cache_path(dir, job);
        let tmp = dir.join(format!(
            "{}.{}.tmp",
            hex::encode(job.as_bytes()),
            super::random_hex()
        ));
        let file = File::create_new(&tmp).map_err(err)?;
        let out =
            zstd::Encoder::new(BufWriter::with_capacity(256 << 10, file), LEVEL).map_err(err)?;
        Ok(FileCacheWriter {
            tmp,
            dest,
            out: Some(out),
            committed: false,
        })
    }

    fn err(&self, error: std::io::Error) -> FileCacheError {
        FileCacheError {
            path: self.tmp.clone(),
            error,
        }
    }

    /// Appends an entry; entries must come in increasing sort-key order (the archiver's
    /// tree cutter has checked that already).
    pub fn insert(&mut self, entry: &Entry) -> Result<(), FileCacheError> {
        let key = entry.sort_key();
        let encoded = entry.encode();
        let out = self.out.as_mut().expect("not finished before commit");
        let result = (|| {
            out.write_all(&(key.len() as u32).to_le_bytes())?;
            out.write_all(key)?;
            out.write_all(&(encoded.len() as u32).to_le_bytes())?;
            out.write_all(&encoded)
        })();
        result.map_err(|e| self.err(e))
    }

    /// Makes this run's entries the job's previous entries.
    pub fn commit(mut self) -> Result<(), FileCacheError> {
        let out = self.out.take().expect("committed once");
        let finished = out.finish().and_then(|mut w| w.flush());
        finished.map_err(|e| self.err(e))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| self.err(e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for FileCacheWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Merge-join access to a job's previous entries: `find` must be called with increasing
/// sort keys, and never holds more than one record. Owned and `Send`: a source may move
/// it to its own thread.
pub struct Previous {
    reader: Option<zstd::Decoder<'static, BufReader<File>>>,
    /// The record read ahead: its sort key and encoded entry.
    peeked: Option<(Vec<u8>, Vec<u8>)>,
    usable: Box<dyn Fn(&Id) -> bool + Send>,
}

impl Previous {
    /// No previous entries: everything is read afresh.
    pub fn empty() -> Previous {
        Previous {
            reader: None,
            peeked: None,
            usable: Box::new(|_| false),
        }
    }

    /// The cache of `job` in `dir`, or none. An entry is offered only when `usable`
    /// vouches for every one of its chunks (the repository's check that a copy really
    /// exists and is not known damaged; the cache alone cannot say).
    pub fn open(dir: &Path, job: &str, usable: Box<dyn Fn(&Id) -> bool + Send>) -> Previous {
        let path = cache_path(dir, job);
        let reader = File::open(&path)
            .and_then(zstd::Decoder::new)
            .map_err(|e| {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "file cache unreadable; reading everything afresh");
                }
            })
            .ok();
        Previous {
            reader,
            peeked: None,
            usable,
        }
    }

    fn read_field(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_RECORD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("record of {len} bytes"),
            ));
        }
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf)?;
        Ok(Some(buf))
    }

    /// The next record, or `None` at the end or on damage (which ends the cursor: the
    /// rest is read afresh).
    fn next_record(&mut self) -> Option<(Vec<u8>, Vec<u8>)> {
        if let Some(p) = self.peeked.take() {
            return Some(p);
        }
        let r = self.reader.as_mut()?;
        let record = (|| {
            let Some(key) = Self::read_field(r)? else {
                return Ok(None);
            };
            let entry = Self::read_field(r)?.ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "torn record")
            })?;
            Ok::<_, std::io::Error>(Some((key, entry)))
        })();
        match record {
            Ok(Some(rec)) => Some(rec),
            Ok(None) => {
                self.reader = None;
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "file cache damaged; the rest is read afresh");
                self.reader = None;
                None
            }
        }
    }

    /// The previous entry with this sort key ([`Entry::sort_key`]: the logical key, or the
    /// path), if there was one and all its chunks still exist.
    pub fn find(&mut self, sort_key: &[u8]) -> Option<Entry> {
        loop {
            let (key, encoded) = self.next_record()?;
            match key.as_slice().cmp(sort_key) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Greater => {
                    self.peeked = Some((key, encoded));
                    return None;
                }
                std::cmp::Ordering::Equal => {
                    let entry: Entry = ciborium::from_reader(&encoded[..]).ok()?;
                    let all_present = entry.chunks.iter().all(|c| (self.usable)(c));
                    return all_present.then_some(entry);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::tree::{EntryKind, EntryPath};

    fn entry(p: &str, chunk: u8) -> Entry {
        let mut e = Entry::new(EntryPath::from(p), EntryKind::File);
        e.chunks = vec![Id([chunk; 32])];
        e
    }

    #[test]
    fn committed_entries_are_found_in_order_and_uncommitted_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FileCacheWriter::create(dir.path(), "job").unwrap();
        for (i, p) in ["a", "b/c", "d"].iter().enumerate() {
            w.insert(&entry(p, i as u8)).unwrap();
        }
        // Not committed yet: nothing visible.
        assert!(
            Previous::open(dir.path(), "job", Box::new(|_| true))
                .find(b"a")
                .is_none()
        );
        w.commit().unwrap();
        let mut prev = Previous::open(dir.path(), "job", Box::new(|_| true));
        assert_eq!(prev.find(b"a").unwrap().path, EntryPath::from("a"));
        assert!(prev.find(b"b").is_none(), "b is not an entry");
        assert!(prev.find(b"d").is_some(), "b/c skipped on the way");
        assert!(prev.find(b"e").is_none());

        // An abandoned writer leaves the committed cache alone and no temporary file.
        drop(FileCacheWriter::create(dir.path(), "job").unwrap());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(
            Previous::open(dir.path(), "job", Box::new(|_| true))
                .find(b"b/c")
                .is_some()
        );
        // Jobs do not see each other's caches.
        assert!(
            Previous::open(dir.path(), "other", Box::new(|_| true))
                .find(b"a")
                .is_none()
        );
    }

    #[test]
    fn entries_with_unusable_chunks_are_not_offered() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FileCacheWriter::create(dir.path(), "job").unwrap();
        w.insert(&entry("a", 1)).unwrap();
        w.insert(&entry("b", 2)).unwrap();
        w.commit().unwrap();
        let mut prev = Previous::open(dir.path(), "job", Box::new(|c| c.0[0] == 2));
        assert!(prev.find(b"a").is_none());
        assert!(prev.find(b"b").is_some());
    }

    #[test]
    fn a_torn_or_garbled_cache_only_costs_rereading() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = FileCacheWriter::create(dir.path(), "job").unwrap();
        for i in 0..2000u32 {
            w.insert(&entry(&format!("f{i:05}"), 1)).unwrap();
        }
        w.commit().unwrap();
        let path = cache_path(dir.path(), "job");
        let bytes = std::fs::read(&path).unwrap();
        for cut in [0, 3, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let mut prev = Previous::open(dir.path(), "job", Box::new(|_| true));
            // Whatever survives is found; nothing panics, the end is simply the end.
            let _ = prev.find(b"f00000");
            assert!(prev.find(b"f01999").is_none(), "cut at {cut}");
        }
        let mut garbled = bytes.clone();
        for b in garbled.iter_mut().skip(20) {
            *b ^= 0x5a;
        }
        std::fs::write(&path, &garbled).unwrap();
        let mut prev = Previous::open(dir.path(), "job", Box::new(|_| true));
        assert!(prev.find(b"f01999").is_none());
    }

    #[test]
    fn leftover_temporaries_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let w = FileCacheWriter::create(dir.path(), "job").unwrap();
        std::mem::forget(w); // what a SIGKILL leaves
        assert_eq!(collect_temporaries(dir.path()), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
