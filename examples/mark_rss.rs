//! Measures prune's mark set on synthetic ids: `cargo run --example mark_rss -- runs 1000000`
//! (sorted runs on disk) or `… vec 1000000` (the sorted vector it replaced). Marks `n`
//! live ids in refs-blob-sized groups, then sweeps `2n` pack entries (each live id
//! once plus `n` dead ones), and prints the time and the peak RSS (VmHWM).

use std::time::Instant;

use backuphub::prune::mark::LiveSetBuilder;
use backuphub::repo::id::Id;

fn id(i: u64, salt: u8) -> Id {
    let mut b = [0u8; 9];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b[8] = salt;
    Id::of(&b)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("sled", |s| s.as_str());
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let group = 400; // about one refs blob of a tree blob of small files
    let start = Instant::now();
    let kept = match mode {
        "vec" => {
            let mut live: Vec<Id> = Vec::new();
            for g in (0..n).step_by(group) {
                live.extend((g..(g + group as u64).min(n)).map(|i| id(i, 0)));
            }
            live.sort_unstable();
            live.dedup();
            let mut claimed = vec![false; live.len()];
            let mut kept = 0u64;
            for i in 0..n {
                for e in [id(i, 0), id(i, 1)] {
                    if let Ok(k) = live.binary_search(&e)
                        && !claimed[k]
                    {
                        claimed[k] = true;
                        kept += 1;
                    }
                }
            }
            kept
        }
        _ => {
            let dir = tempfile::tempdir().unwrap();
            let mut live = LiveSetBuilder::new(dir.path());
            for g in (0..n).step_by(group) {
                for i in g..(g + group as u64).min(n) {
                    live.insert(id(i, 0)).unwrap();
                }
            }
            let mut live = live.finish().unwrap();
            eprintln!("mark {:.1} s", start.elapsed().as_secs_f64());
            let mut kept = 0u64;
            for i in 0..n {
                for e in [id(i, 0), id(i, 1)] {
                    if live.claim(&e).unwrap() {
                        kept += 1;
                    }
                }
            }
            kept
        }
    };
    assert_eq!(kept, n);
    println!(
        "{mode} n={n}: {:.1} s, peak RSS {} MiB",
        start.elapsed().as_secs_f64(),
        peak_rss_kib() / 1024
    );
}
