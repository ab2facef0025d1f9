//! Content-defined chunking (FastCDC 2020). Pure: bytes in, chunks out.

use std::io::Read;

use fastcdc::v2020::{Normalization, cut_gear, get_gear_with_seed, select_masks};
use serde::{Deserialize, Serialize};

/// Chunk size bounds, recorded in the repository config: changing them would silently
/// defeat deduplication against every existing snapshot, so they are fixed at `init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// 256 KiB / 512 KiB / 4 MiB, chosen from `bench/chunker.sh` (a 384 MiB binary with 40
    /// small insertions, encrypted; bench/chunker-results.md): day-2 growth 29.8 MiB at a
    /// 512 KiB average against 63.0 MiB at 1 MiB and restic's 80 MiB, at the same speed and
    /// with a lower peak RSS (43 vs 70 MiB: the largest chunk bounds the buffers). A 256 KiB
    /// average halves the growth again but doubles the index (a 1 TB disk would hold
    /// about 4 M chunk entries instead of 2 M), which a Pi pays for on every run.
    fn default() -> Self {
        ChunkerParams {
            min_size: 256 << 10,
            avg_size: 512 << 10,
            max_size: 4 << 20,
        }
    }
}

impl ChunkerParams {
    /// Checks the bounds against what fastcdc supports.
    pub fn validate(&self) -> Result<(), String> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max)
            && min <= avg
            && avg <= max
            && [min, avg, max].iter().all(|v| v % 2 == 0);
        if ok {
            Ok(())
        } else {
            Err(format!(
                "chunk sizes {min}/{avg}/{max} are outside fastcdc's bounds or not ordered min ≤ avg ≤ max"
            ))
        }
    }

    /// Splits a stream into chunks. Memory: one buffer of at most twice `max_size`,
    /// grown as the stream proves long enough to need it.
    pub fn chunks<R: Read>(&self, reader: R, seed: u64) -> Chunks<R> {
        let (mask_s, mask_l) = select_masks(self.avg_size as usize, Normalization::Level1);
        let (gear, gear_ls) = get_gear_with_seed(seed);
        Chunks {
            reader,
            // Most files are small: a zeroed 16 MiB buffer per file cost glibc an mmap
            // and a memset each (three quarters of the time of a run over small files).
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
            params: *self,
            masks: (mask_s, mask_l),
            gear,
            gear_ls,
        }
    }
}

/// The chunks of one stream. Cuts exactly where fastcdc's `StreamCDC` does, but moves
/// the unconsumed tail of its buffer once per buffer-full rather than once per chunk (with
/// 1 MiB chunks and an 8 MiB window that is an eighth of the copying).
pub struct Chunks<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    params: ChunkerParams,
    masks: (u64, u64),
    gear: std::borrow::Cow<'static, [u64]>,
    gear_ls: std::borrow::Cow<'static, [u64]>,
}

/// The buffer's first size; it doubles up to twice the chunker's maximum.
const FIRST_BUFFER: usize = 64 << 10;

impl<R: Read> Chunks<R> {
    fn fill(&mut self) -> std::io::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        let cap = 2 * self.params.max_size as usize;
        loop {
            if self.end == self.buf.len() {
                if self.buf.len() >= cap {
                    break;
                }
                let grown = (self.buf.len() * 2).clamp(FIRST_BUFFER.min(cap), cap);
                self.buf.resize(grown, 0);
            }
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Chunks<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let max = self.params.max_size as usize;
        if !self.eof
            && self.end - self.start < max
            && let Err(e) = self.fill()
        {
            // A failed stream yields its error once, then ends.
            self.eof = true;
            self.start = self.end;
            return Some(Err(e));
        }
        if self.start == self.end {
            return None;
        }
        let window = &self.buf[self.start..self.end.min(self.start + max)];
        let (mask_s, mask_l) = self.masks;
        let (_, count) = cut_gear(
            window,
            self.params.min_size as usize,
            self.params.avg_size as usize,
            max,
            mask_s,
            mask_l,
            mask_s << 1,
            mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        let count = count.clamp(1, window.len());
        let chunk = window[..count].to_vec();
        self.start += count;
        Some(Ok(chunk))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
        }
    }

    pub(crate) fn pseudo_random(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_small_stream_needs_a_small_buffer() {
        let data = pseudo_random(3000, 5);
        let params = ChunkerParams::default();
        let mut it = params.chunks(&data[..], 0);
        assert_eq!(it.next().unwrap().unwrap(), data);
        assert!(it.next().is_none());
        assert!(it.buf.len() <= FIRST_BUFFER, "{}", it.buf.len());
        // A long stream grows it to the full window, and cuts exactly as before.
        let long = pseudo_random(5 << 20, 6);
        let grown: Vec<Vec<u8>> = small().chunks(&long[..], 0).map(Result::unwrap).collect();
        assert_eq!(grown.concat(), long);
    }

    #[test]
    fn default_params_are_valid_and_bad_ones_rejected() {
        ChunkerParams::default().validate().unwrap();
        small().validate().unwrap();
        let bad = ChunkerParams {
            min_size: 10,
            avg_size: 5,
            max_size: 1,
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn chunks_concatenate_to_the_input_and_respect_bounds() {
        let data = pseudo_random(1 << 20, 42);
        let chunks: Vec<Vec<u8>> = small().chunks(&data[..], 0).map(Result::unwrap).collect();
        assert_eq!(chunks.concat(), data);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= 4096 && c.len() <= 65536);
        }
        assert_eq!(small().chunks(&b""[..], 0).count(), 0);
    }

    #[test]
    fn an_insertion_changes_only_nearby_chunks() {
        let data = pseudo_random(2 << 20, 7);
        let mut edited = data.clone();
        edited.splice(1_000_000..1_000_000, b"INSERTED".iter().copied());
        let set = |d: &[u8]| {
            small()
                .chunks(d, 0)
                .map(|c| blake3::hash(&c.unwrap()))
                .collect::<std::collections::HashSet<_>>()
        };
        let (a, b) = (set(&data), set(&edited));
        assert!(
            b.difference(&a).count() <= 3,
            "{} new chunks",
            b.difference(&a).count()
        );
    }

    #[test]
    fn cuts_match_fastcdc_stream_cdc() {
        let data = pseudo_random(3 << 20, 11);
        for seed in [0, 99] {
            let ours: Vec<Vec<u8>> = small()
                .chunks(&data[..], seed)
                .map(Result::unwrap)
                .collect();
            let theirs: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::with_level_and_seed(
                &data[..],
                4096,
                16384,
                65536,
                Normalization::Level1,
                seed,
            )
            .map(|c| c.unwrap().data)
            .collect();
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn read_errors_surface_once() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
        }
        let results: Vec<_> = small().chunks(Failing(200_000), 0).collect();
        assert!(results.last().unwrap().is_err());
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    }

    #[test]
    fn the_seed_moves_boundaries() {
        let data = pseudo_random(1 << 20, 9);
        let lens = |seed| {
            small()
                .chunks(&data[..], seed)
                .map(|c| c.unwrap().len())
                .collect::<Vec<_>>()
        };
        assert_ne!(lens(0), lens(12345));
    }
}
