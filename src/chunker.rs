//! Content-defined chunking (FastCDC 2020). Pure: bytes in, chunks out.

use std::io::Read;

use fastcdc::v2020::{Normalization, StreamCDC};
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
    /// 512 KiB / 1 MiB / 8 MiB: large enough that a Pi's index stays small (one entry
    /// per MiB stored), small enough that an edit costs about a MiB.
    fn default() -> Self {
        ChunkerParams {
            min_size: 512 << 10,
            avg_size: 1 << 20,
            max_size: 8 << 20,
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

    /// Splits a stream into chunks. Memory: one buffer of `max_size` plus the chunk.
    pub fn chunks<R: Read>(
        &self,
        reader: R,
        seed: u64,
    ) -> impl Iterator<Item = std::io::Result<Vec<u8>>> {
        StreamCDC::with_level_and_seed(
            reader,
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
            Normalization::Level1,
            seed,
        )
        .map(|r| r.map(|c| c.data).map_err(std::io::Error::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
        }
    }

    fn pseudo_random(n: usize, mut x: u64) -> Vec<u8> {
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
