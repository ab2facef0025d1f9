//! Prune's live set on disk: sorted runs merged into one sorted file of ids, a sparse
//! in-memory fence index over it, and one claimed bit per live id.
//!
//! Measured on synthetic ids, mark then a sweep of 2 entries per id (`examples/mark_rss.rs`,
//! debug build): a sorted `Vec<Id>` peaks at 33 MiB at 1 M ids (so ~320 MiB at 10 M); a
//! temporary sled tree (cache capped at 32 MiB) at 267 MiB and 71 s at 1 M; these runs at
//! 10 MiB and 8 s at 1 M, and still 10 MiB at 10 M (RUN_IDS × 32 bytes of buffer while
//! marking; then 1/`BLOCK_IDS` of the ids as fences and 1 bit per id). The files are
//! unnamed (`O_TMPFILE`): they vanish when closed, and after a crash, with nothing to
//! collect.

use std::collections::{BinaryHeap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::repo::id::Id;

/// Ids buffered before a run is sorted and written: 8 MiB.
const RUN_IDS: usize = 256 << 10;
/// Ids per block of the merged file; one fence (its first id) per block in RAM.
const BLOCK_IDS: usize = 128;

/// Collects live ids (mark), then becomes a [`LiveSet`] (sweep).
pub struct LiveSetBuilder {
    dir: PathBuf,
    run_ids: usize,
    buf: Vec<Id>,
    runs: Vec<File>,
    /// Refs and root blobs whose contents are all marked: not read again. One per
    /// distinct tree blob, a small fraction of the ids.
    walked: HashSet<Id>,
}

impl LiveSetBuilder {
    /// Runs go to unnamed files in `dir`.
    pub fn new(dir: &Path) -> LiveSetBuilder {
        LiveSetBuilder::with_run_size(dir, RUN_IDS)
    }

    fn with_run_size(dir: &Path, run_ids: usize) -> LiveSetBuilder {
        LiveSetBuilder {
            dir: dir.to_owned(),
            run_ids,
            buf: Vec::new(),
            runs: Vec::new(),
            walked: HashSet::new(),
        }
    }

    pub fn insert(&mut self, id: Id) -> std::io::Result<()> {
        self.buf.push(id);
        if self.buf.len() >= self.run_ids {
            self.spill()?;
        }
        Ok(())
    }

    /// Records that everything `id` (a refs or root blob) names is marked.
    pub fn set_walked(&mut self, id: Id) {
        self.walked.insert(id);
    }

    pub fn walked(&self, id: &Id) -> bool {
        self.walked.contains(id)
    }

    fn spill(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.buf.sort_unstable();
        self.buf.dedup();
        let mut w = BufWriter::with_capacity(64 << 10, tempfile::tempfile_in(&self.dir)?);
        for id in &self.buf {
            w.write_all(&id.0)?;
        }
        let mut f = w.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(0))?;
        self.runs.push(f);
        self.buf.clear();
        Ok(())
    }

    /// Merges the runs into one sorted, deduplicated file.
    pub fn finish(mut self) -> std::io::Result<LiveSet> {
        self.spill()?;
        self.buf = Vec::new();
        self.walked = HashSet::new();
        let mut readers: Vec<BufReader<File>> = self
            .runs
            .drain(..)
            .map(|f| BufReader::with_capacity(64 << 10, f))
            .collect();
        let next = |r: &mut BufReader<File>| -> std::io::Result<Option<Id>> {
            let mut b = [0u8; 32];
            match r.read_exact(&mut b) {
                Ok(()) => Ok(Some(Id(b))),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(e),
            }
        };
        let mut heap = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(id) = next(r)? {
                heap.push(std::cmp::Reverse((id, i)));
            }
        }
        let mut out = BufWriter::with_capacity(64 << 10, tempfile::tempfile_in(&self.dir)?);
        let mut fences = Vec::new();
        let mut len = 0u64;
        let mut last: Option<Id> = None;
        while let Some(std::cmp::Reverse((id, i))) = heap.pop() {
            if last != Some(id) {
                if len.is_multiple_of(BLOCK_IDS as u64) {
                    fences.push(id);
                }
                out.write_all(&id.0)?;
                len += 1;
                last = Some(id);
            }
            if let Some(n) = next(&mut readers[i])? {
                heap.push(std::cmp::Reverse((n, i)));
            }
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        Ok(LiveSet {
            file,
            len,
            fences,
            claimed: vec![0u64; (len as usize).div_ceil(64)],
            block: Vec::with_capacity(BLOCK_IDS * 32),
            block_no: None,
        })
    }
}

/// The sorted live ids, each with a claimed bit.
pub struct LiveSet {
    file: File,
    len: u64,
    fences: Vec<Id>,
    claimed: Vec<u64>,
    block: Vec<u8>,
    block_no: Option<usize>,
}

impl LiveSet {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The position of `id` in the sorted file, if it is live.
    fn position(&mut self, id: &Id) -> std::io::Result<Option<u64>> {
        // The last block whose first id is ≤ id.
        let b = match self.fences.partition_point(|f| f <= id) {
            0 => return Ok(None),
            n => n - 1,
        };
        if self.block_no != Some(b) {
            let start = (b * BLOCK_IDS) as u64;
            let n = (self.len - start).min(BLOCK_IDS as u64) as usize;
            self.block.resize(n * 32, 0);
            self.file.read_exact_at(&mut self.block, start * 32)?;
            self.block_no = Some(b);
        }
        let ids = self.block.chunks_exact(32);
        let mut lo = 0usize;
        let mut hi = ids.len();
        while lo < hi {
            let mid = (lo + hi) / 2;
            let at = &self.block[mid * 32..mid * 32 + 32];
            match at.cmp(&id.0[..]) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some((b * BLOCK_IDS + mid) as u64)),
            }
        }
        Ok(None)
    }

    pub fn contains(&mut self, id: &Id) -> std::io::Result<bool> {
        Ok(self.position(id)?.is_some())
    }

    /// True for the first copy of a live blob met (keep it); false for a later copy of
    /// it, or a blob not live.
    pub fn claim(&mut self, id: &Id) -> std::io::Result<bool> {
        let Some(p) = self.position(id)? else {
            return Ok(false);
        };
        let (word, bit) = ((p / 64) as usize, 1u64 << (p % 64));
        let first = self.claimed[word] & bit == 0;
        self.claimed[word] |= bit;
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> Id {
        Id::of(&i.to_le_bytes())
    }

    #[test]
    fn runs_merge_into_a_set_that_claims_each_live_id_once() {
        let dir = tempfile::tempdir().unwrap();
        // Tiny runs: many of them, with duplicates within and across runs.
        let mut b = LiveSetBuilder::with_run_size(dir.path(), 7);
        for i in (0..1000).chain(500..700).chain(0..10) {
            b.insert(id(i)).unwrap();
        }
        b.set_walked(id(5));
        assert!(b.walked(&id(5)) && !b.walked(&id(6)));
        let mut set = b.finish().unwrap();
        assert_eq!(set.len(), 1000);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "unnamed files only"
        );
        for i in 0..1000 {
            assert!(set.contains(&id(i)).unwrap(), "{i}");
            assert!(set.claim(&id(i)).unwrap(), "{i} first copy");
        }
        for i in 0..1000 {
            assert!(!set.claim(&id(i)).unwrap(), "{i} a duplicate");
        }
        for i in 1000..1200 {
            assert!(!set.contains(&id(i)).unwrap());
            assert!(!set.claim(&id(i)).unwrap(), "{i} is not live");
        }
        // Below the first id and above the last.
        assert!(!set.contains(&Id([0; 32])).unwrap());
        assert!(!set.contains(&Id([0xff; 32])).unwrap());
    }

    #[test]
    fn an_empty_set_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut set = LiveSetBuilder::new(dir.path()).finish().unwrap();
        assert!(set.is_empty());
        assert!(!set.claim(&id(1)).unwrap());
    }
}
