//! Retention and prune: space comes back, nothing live is lost, and prune is safe while
//! backups keep running.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backuphub::check::{Problem, ReadData, check};
use backuphub::prune::{forget, plan, prune};
use backuphub::repo::Repository;
use backuphub::repo::id::Id;
use backuphub::repo::lock::{LockGuard, LockKind};
use backuphub::repo::pack::{self, PackWriter};
use backuphub::restore::cat;
use backuphub::retention::RetentionPolicy;
use backuphub::source::local::LocalSource;
use common::{archive_paths, archive_source, du, noise, test_repo, tree_blobs};

fn open(dir: &Path) -> Repository {
    test_repo(dir, 32768, 512 << 10)
}

fn backup(repo: &Repository, job: &str, data: &Path) -> backuphub::repo::snapshot::Snapshot {
    let _lock = repo
        .lock(LockKind::Shared, Some(job), Duration::from_secs(60))
        .unwrap();
    archive_paths(repo, job, &[data.to_owned()])
}

fn exclusive(repo: &Repository) -> LockGuard {
    repo.lock(LockKind::Exclusive, None, Duration::from_secs(60))
        .unwrap()
}

fn keep_last(n: u32) -> RetentionPolicy {
    RetentionPolicy {
        keep_last: Some(n),
        ..Default::default()
    }
}

fn file_path(data: &Path, name: &str) -> backuphub::repo::tree::EntryPath {
    data.join(name).to_str().unwrap().into()
}

fn packs(repo: &Repository) -> Vec<Id> {
    let mut v: Vec<Id> = repo.list_packs().unwrap().into_iter().collect();
    v.sort();
    v
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
    let lock = exclusive(&repo);
    let dry = prune(&repo, &lock, true).unwrap();
    assert_eq!(
        dry.packs_deleted + dry.packs_repacked,
        0,
        "everything is still referenced"
    );

    let report = forget(&repo, "j", &keep_last(1), chrono_tz::UTC, false).unwrap();
    assert_eq!(report.removed.len(), 3);
    let dry = prune(&repo, &lock, true).unwrap();
    assert!(dry.bytes_freed > 0);
    assert_eq!(
        du(&repo.root().join("packs")),
        before,
        "a dry run removes nothing"
    );

    let report = prune(&repo, &lock, false).unwrap();
    let after = du(&repo.root().join("packs"));
    assert_eq!(report.bytes_freed, before - after);
    assert!(after < before / 2, "{after} of {before} bytes left");
    assert!(check(&repo, ReadData::All).unwrap().ok());
    let snap = repo.resolve_snapshot("latest:j").unwrap().snapshot;
    let mut out = Vec::new();
    cat(&repo, &snap, &file_path(&data, "f"), &mut out).unwrap();
    assert!(out == noise(2 << 20, 3));
}

#[test]
fn the_plan_is_what_prune_does_and_freed_bytes_are_net_of_repacking() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = open(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Packs holding files that go and files that stay get repacked. Each archiver worker
    // fills its own pack, so many small files of both kinds make sure packs are mixed.
    for i in 0..30u64 {
        std::fs::write(data.join(format!("f{i:02}-keep")), noise(8 << 10, 100 + i)).unwrap();
        std::fs::write(data.join(format!("f{i:02}-drop")), noise(40 << 10, 200 + i)).unwrap();
    }
    backup(&repo, "j", &data);
    for i in 0..30u64 {
        std::fs::write(data.join(format!("f{i:02}-drop")), noise(40 << 10, 300 + i)).unwrap();
    }
    backup(&repo, "j", &data);
    forget(&repo, "j", &keep_last(1), chrono_tz::UTC, false).unwrap();

    let lock = exclusive(&repo);
    let plan = plan(&repo).unwrap();
    assert!(!plan.repack.is_empty(), "{plan:?}");
    let planned: Vec<Id> = plan
        .delete
        .iter()
        .map(|d| d.pack)
        .chain(plan.repack.iter().map(|r| r.pack))
        .collect();
    let before_packs = packs(&repo);
    let before = du(&repo.root().join("packs"));
    let report = prune(&repo, &lock, false).unwrap();
    let after = du(&repo.root().join("packs"));
    assert_eq!(report.packs_deleted, plan.delete.len() as u64);
    assert_eq!(report.packs_repacked, plan.repack.len() as u64);
    assert_eq!(report.bytes_removed, plan.bytes_removed);
    assert!(report.bytes_written > 0);
    // Removed minus written: what the disk really got back.
    assert_eq!(report.bytes_freed, before - after);
    let left = packs(&repo);
    for p in &planned {
        assert!(
            !left.contains(p),
            "planned pack {} is still there",
            p.short()
        );
    }
    for p in before_packs.iter().filter(|p| !planned.contains(p)) {
        assert!(left.contains(p), "unplanned pack {} was removed", p.short());
    }
    assert!(check(&repo, ReadData::All).unwrap().ok());
}

#[test]
fn a_readable_copy_is_kept_when_the_indexed_copy_has_become_unreadable() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = open(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), noise(200 << 10, 7)).unwrap();
    let snap = backup(&repo, "j", &data);
    // The pack holding the tree blob (each archiver worker writes its own pack).
    let original = repo
        .index()
        .get(&tree_blobs(&repo, &snap)[0])
        .unwrap()
        .unwrap()
        .pack;

    // A second copy of every blob (as a crashed repack or two writers leave), which the
    // index then points at…
    let packs_dir = repo.packs_dir();
    let path = pack::pack_path(&packs_dir, &original);
    let f = std::fs::File::open(&path).unwrap();
    let mut w = PackWriter::create(repo.tmp_dir().join("copy.pack"), None).unwrap();
    // In another order, so that the copy is another file with another name.
    let header = pack::read_full_header(&path).unwrap();
    for e in header.entries.into_iter().rev() {
        let sealed = pack::read_blob(&f, &path, e.offset, e.length).unwrap();
        let key = header.keys.get(usize::from(e.key)).map(|k| &k[..]);
        w.add_sealed(e.kind, e.id, &sealed, key).unwrap();
    }
    let (copy, entries) = w.finish(&packs_dir).unwrap();
    assert_ne!(copy, original);
    repo.index().add_pack(copy, &entries).unwrap();
    assert_eq!(
        repo.index()
            .get(&tree_blobs(&repo, &snap)[0])
            .unwrap()
            .unwrap()
            .pack,
        copy
    );
    // … and whose header has since rotted.
    let copy_path = pack::pack_path(&packs_dir, &copy);
    let mut bytes = std::fs::read(&copy_path).unwrap();
    let n = bytes.len();
    bytes[n - 50] ^= 0xff;
    std::fs::write(&copy_path, &bytes).unwrap();

    let lock = exclusive(&repo);
    let report = prune(&repo, &lock, false).unwrap();
    assert_eq!(report.packs_deleted, 0, "{report:?}");
    assert!(path.exists(), "the readable copy was deleted");
    assert!(copy_path.exists(), "an unreadable pack is never deleted");
    drop(lock);
    let report = check(&repo, ReadData::All).unwrap();
    assert!(
        report
            .problems
            .iter()
            .all(|p| matches!(p, Problem::DamagedPack { .. })),
        "{:?}",
        report.problems
    );
    let mut out = Vec::new();
    cat(&repo, &snap, &file_path(&data, "f"), &mut out).unwrap();
    assert!(out == noise(200 << 10, 7));
}

#[test]
fn a_lost_pack_holding_a_snapshots_root_fails_prune_instead_of_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = open(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), noise(300 << 10, 1)).unwrap();
    let snap = backup(&repo, "j", &data);
    // The pack holding the root goes (a lost file); the next sync forgets it.
    let holder = repo.index().get(&snap.root).unwrap().unwrap().pack;
    std::fs::remove_file(pack::pack_path(&repo.packs_dir(), &holder)).unwrap();
    repo.sync_index().unwrap();
    let before = packs(&repo);
    let lock = exclusive(&repo);
    // Prune marks through the read path that, on a miss, syncs the index: inside prune's
    // own maintenance section that must not wait for itself.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = tx.send(prune(&repo, &lock, false).map(|_| ()));
        });
        let Ok(result) = rx.recv_timeout(Duration::from_secs(60)) else {
            // The hung thread cannot be joined: fail the whole test binary instead.
            eprintln!("prune hung on a missing root");
            std::process::exit(101);
        };
        let err = result.expect_err("a snapshot's root is missing: prune must not go on");
        assert!(err.to_string().contains("missing"), "{err}");
    });
    assert_eq!(packs(&repo), before, "nothing was deleted");
}

#[test]
fn prune_deletes_nothing_once_its_lock_was_broken() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = open(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for day in 0..3u64 {
        std::fs::write(data.join("f"), noise(300 << 10, day)).unwrap();
        backup(&repo, "j", &data);
    }
    forget(&repo, "j", &keep_last(1), chrono_tz::UTC, false).unwrap();
    let lock = exclusive(&repo);
    let plan = plan(&repo).unwrap();
    assert!(!plan.delete.is_empty());
    let before = packs(&repo);
    // Someone took the lock for stale and broke it.
    for f in std::fs::read_dir(repo.root().join("locks")).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let err = prune(&repo, &lock, false).unwrap_err();
    assert!(err.to_string().contains("no longer ours"), "{err}");
    assert_eq!(packs(&repo), before);
    let err = backuphub::prune::execute(&repo, &lock, &plan).unwrap_err();
    assert!(err.to_string().contains("no longer ours"), "{err}");
    assert_eq!(packs(&repo), before);
}

#[test]
fn prune_racing_concurrent_backups_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = open(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("stable"), noise(1 << 20, 1)).unwrap();
    let stop = AtomicBool::new(false);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut rounds = 0;
    let mut blobs_removed = 0;
    std::thread::scope(|s| {
        // Two jobs back up again and again, each with new data every round.
        for job in ["a", "b"] {
            let (repo, data, stop, done) = (&repo, &data, &stop, done_tx.clone());
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
                    forget(repo, job, &keep_last(2), chrono_tz::UTC, false).unwrap();
                    let _ = done.send(());
                    i += 1;
                }
            });
        }
        drop(done_tx);
        // Meanwhile: prune, over and over, each time after more backups finished. Five
        // rounds make one job run three times, so a snapshot was forgotten before the
        // first prune: there is garbage, whatever the interleaving.
        for n in [5, 2, 2, 2, 2, 2, 2, 2] {
            for _ in 0..n {
                done_rx.recv().expect("the backups are running");
                rounds += 1;
            }
            let x = exclusive(&repo);
            blobs_removed += prune(&repo, &x, false).unwrap().blobs_removed;
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(blobs_removed > 0, "prune collected nothing");
    assert!(rounds >= 19, "backups did run");
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

/// One step of a random history.
#[derive(Clone, Debug)]
enum Step {
    /// A backup of `job` whose changing files are made of the given pool blocks.
    Backup {
        job: u8,
        files: Vec<Vec<u8>>,
    },
    /// Forget the remaining snapshot at this index (modulo their number).
    Forget(usize),
    Prune,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0u8..2, proptest::collection::vec(proptest::collection::vec(0u8..6, 1..4), 1..4))
            .prop_map(|(job, files)| Step::Backup { job, files }),
        2 => (0usize..8).prop_map(Step::Forget),
        1 => Just(Step::Prune),
    ]
}

/// Reads every entry of every remaining snapshot back and compares the files written
/// for it: nothing a remaining snapshot uses may be gone.
fn assert_all_readable(
    repo: &Repository,
    expected: &std::collections::BTreeMap<Id, Vec<(backuphub::repo::tree::EntryPath, Vec<u8>)>>,
) {
    for (id, files) in expected {
        let snap = repo.load_snapshot(id).unwrap();
        let mut found = 0;
        for e in repo.entries(&snap) {
            let e = e.unwrap_or_else(|err| panic!("snapshot {}: {err}", id.short()));
            let mut content = Vec::new();
            for c in &e.chunks {
                content.extend(
                    repo.read_blob(c)
                        .unwrap_or_else(|err| panic!("snapshot {} {}: {err}", id.short(), e.path)),
                );
            }
            if let Some((_, want)) = files.iter().find(|(p, _)| *p == e.path) {
                assert_eq!(&content, want, "{}", e.path);
                found += 1;
            }
        }
        assert_eq!(found, files.len(), "snapshot {}", id.short());
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 16, .. Default::default() })]

    /// Over random histories (backups sharing chunks, forgets, prunes in between),
    /// prune never deletes a blob a remaining snapshot uses.
    #[test]
    fn prune_never_deletes_what_a_remaining_snapshot_uses(
        steps in proptest::collection::vec(step(), 1..8)
    ) {
        let tmp = tempfile::tempdir().unwrap();
        // Small chunks and packs: blobs share packs, so prune deletes and repacks.
        let repo = test_repo(tmp.path(), 1024, 16 << 10);
        let pool: Vec<Vec<u8>> = (0..6).map(|i| noise(3000, i + 1)).collect();
        // Files every snapshot has: their tree blobs and refs blobs are shared.
        let stable = tmp.path().join("stable");
        std::fs::create_dir_all(&stable).unwrap();
        for i in 0..300 {
            std::fs::write(stable.join(format!("{i:04}-{}", "s".repeat(120))), i.to_string()).unwrap();
        }
        let mut expected = std::collections::BTreeMap::new();
        let mut backups = 0;
        for s in steps.iter().chain([&Step::Backup { job: 0, files: vec![vec![0]] }, &Step::Prune]) {
            match s {
                Step::Backup { job, files } => {
                    let dir = tmp.path().join(format!("job{job}"));
                    let _ = std::fs::remove_dir_all(&dir);
                    std::fs::create_dir_all(&dir).unwrap();
                    let mut written = Vec::new();
                    for (n, blocks) in files.iter().enumerate() {
                        let content: Vec<u8> = blocks.iter().flat_map(|b| pool[*b as usize].clone()).collect();
                        let path = dir.join(format!("f{n}-{backups}"));
                        std::fs::write(&path, &content).unwrap();
                        written.push((path.to_str().unwrap().into(), content));
                    }
                    let job = format!("j{job}");
                    let _lock = repo.lock(LockKind::Shared, Some(&job), Duration::from_secs(60)).unwrap();
                    let mut src = LocalSource::new(&[stable.clone(), dir], &[]).unwrap();
                    let (id, _) = backuphub::archiver::archive(
                        &repo, &job, &mut src, &Default::default(),
                        &AtomicBool::new(false), &|| Ok(()),
                    ).unwrap();
                    expected.insert(id, written);
                    backups += 1;
                }
                Step::Forget(i) => {
                    if !expected.is_empty() {
                        let id = *expected.keys().nth(i % expected.len()).unwrap();
                        repo.forget_snapshot(&id).unwrap();
                        expected.remove(&id);
                    }
                }
                Step::Prune => {
                    let x = exclusive(&repo);
                    prune(&repo, &x, false).unwrap();
                    assert_all_readable(&repo, &expected);
                }
            }
        }
        let report = check(&repo, ReadData::All).unwrap();
        proptest::prop_assert!(report.ok(), "{:?}", report.problems);
        // A second prune finds nothing more: the first removed all garbage it could.
        let again = prune(&repo, &exclusive(&repo), true).unwrap();
        proptest::prop_assert_eq!(again.blobs_removed, 0);
    }
}

/// A repack can produce, byte for byte, a pack it is replacing (names are content
/// hashes): after a power cut left a repack's output beside its sources, the next prune
/// did exactly that and then deleted the pack it had just written, with the only copies
/// of live blobs (seen as an intermittent `power_loss_during_prune` failure). Here the
/// plan repacks a wholly live pack, which rewrites it as it is.
#[test]
fn a_repack_that_rewrites_a_pack_as_it_was_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = open(tmp.path());
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), noise(200 << 10, 7)).unwrap();
    backup(&repo, "j", &data);
    let lock = exclusive(&repo);
    let mut plan = plan(&repo).unwrap();
    assert!(plan.is_empty(), "nothing to prune yet");
    let target = packs(&repo)[0];
    let path = pack::pack_path(&repo.packs_dir(), &target);
    let keep = pack::read_header(&path).unwrap();
    plan.repack.push(backuphub::prune::RepackPack {
        pack: target,
        size: std::fs::metadata(&path).unwrap().len(),
        blobs: keep.len() as u64,
        keep_bytes: keep.iter().map(|e| e.length as u64).sum(),
        keep,
    });
    let before = packs(&repo);
    backuphub::prune::execute(&repo, &lock, &plan).unwrap();
    assert_eq!(
        packs(&repo),
        before,
        "the rewritten pack is the same pack, and stays"
    );
    assert!(check(&repo, ReadData::All).unwrap().ok());
}
