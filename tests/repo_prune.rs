//! Retention and prune: space comes back, nothing live is lost, and prune is safe while
//! backups keep running.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backuphub::check::{ReadData, check};
use backuphub::prune::{forget, prune};
use backuphub::repo::Repository;
use backuphub::repo::lock::LockKind;
use backuphub::restore::cat;
use backuphub::retention::RetentionPolicy;
use backuphub::source::local::LocalSource;
use common::{archive_paths, archive_source, du, noise, test_repo};

fn open(dir: &Path) -> Repository {
    test_repo(dir, 32768, 512 << 10)
}

fn backup(repo: &Repository, job: &str, data: &Path) -> backuphub::repo::snapshot::Snapshot {
    let _lock = repo
        .lock(LockKind::Shared, Some(job), Duration::from_secs(60))
        .unwrap();
    archive_paths(repo, job, &[data.to_owned()])
}

fn file_path(data: &Path, name: &str) -> backuphub::repo::tree::EntryPath {
    data.join(name).to_str().unwrap().into()
}

#[test]
fn forgetting_and_pruning_frees_space_and_keeps_what_is_live() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = open(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for day in 0..4u64 {
        std::fs::write(data.join("f"), noise(2 << 20, day)).unwrap();
        backup(&repo, "j", &data);
    }
    let before = du(&repo.root().join("packs"));
    let dry = prune(&repo, true).unwrap();
    assert_eq!(
        dry.packs_deleted + dry.packs_repacked,
        0,
        "everything is still referenced"
    );

    let report = forget(
        &repo,
        "j",
        &RetentionPolicy {
            keep_last: Some(1),
            ..Default::default()
        },
        chrono_tz::UTC,
        false,
    )
    .unwrap();
    assert_eq!(report.removed.len(), 3);
    let dry = prune(&repo, true).unwrap();
    assert!(dry.bytes_freed > 0);
    assert_eq!(
        du(&repo.root().join("packs")),
        before,
        "a dry run removes nothing"
    );

    let report = prune(&repo, false).unwrap();
    assert!(report.bytes_freed > 0);
    let after = du(&repo.root().join("packs"));
    assert!(after < before / 2, "{after} of {before} bytes left");
    assert!(check(&repo, ReadData::All).unwrap().ok());
    let snap = repo.resolve_snapshot("latest:j").unwrap().snapshot;
    let mut out = Vec::new();
    cat(&repo, &snap, &file_path(&data, "f"), &mut out).unwrap();
    assert!(out == noise(2 << 20, 3));
}

#[test]
fn prune_racing_concurrent_backups_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = open(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("stable"), noise(1 << 20, 1)).unwrap();
    let stop = AtomicBool::new(false);
    let rounds = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        // Two jobs back up again and again, each with new data every round.
        for job in ["a", "b"] {
            let (repo, data, stop, rounds) = (&repo, &data, &stop, &rounds);
            s.spawn(move || {
                let mut i = 0u64;
                let dir = data.join(job);
                std::fs::create_dir_all(&dir).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::fs::write(
                        dir.join("changing"),
                        noise(300_000, i + if job == "a" { 0 } else { 1 << 32 }),
                    )
                    .unwrap();
                    let _lock = repo
                        .lock(LockKind::Shared, Some(job), Duration::from_secs(60))
                        .unwrap();
                    let mut src =
                        LocalSource::new(&[dir.clone(), data.join("stable")], &[]).unwrap();
                    archive_source(repo, job, &mut src);
                    // Retention right after the run, under the job's lock, as the runner does.
                    let policy = RetentionPolicy {
                        keep_last: Some(2),
                        ..Default::default()
                    };
                    forget(repo, job, &policy, chrono_tz::UTC, false).unwrap();
                    rounds.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        // Meanwhile: prune, over and over.
        let mut freed = 0;
        for _ in 0..8 {
            std::thread::sleep(Duration::from_millis(150));
            let _x = repo
                .lock(LockKind::Exclusive, None, Duration::from_secs(60))
                .unwrap();
            freed += prune(&repo, false).unwrap().bytes_freed;
        }
        stop.store(true, Ordering::Relaxed);
        assert!(
            freed > 0,
            "prune collected nothing: it never ran between backups"
        );
    });
    assert!(rounds.load(Ordering::Relaxed) >= 4, "backups did run");
    let report = check(&repo, ReadData::All).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    // Every remaining snapshot restores in full.
    for s in repo.snapshots().unwrap() {
        for e in repo.entries(&s.snapshot) {
            let e = e.unwrap();
            for c in &e.chunks {
                repo.read_blob(c).unwrap();
            }
        }
    }
}
