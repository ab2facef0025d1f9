//! The snapshot summary cache: listings trust it only for manifests that still exist and
//! were verified when cached; existence always comes from `snapshots/`.

mod common;

use std::path::Path;

use backuphub::check::{Problem, ReadData, check};
use backuphub::repo::id::Id;
use backuphub::repo::{OpenOptions, RepoError, Repository};
use common::{archive_paths, test_repo};

fn data(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("f"), content).unwrap();
    d
}

fn ids(repo: &Repository) -> Vec<Id> {
    repo.snapshots()
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}

/// Another machine's view of the same repository: its own state directory and cache.
fn other_writer(dir: &Path) -> Repository {
    let opts = OpenOptions {
        identity: None,
        state_dir: dir.join("state2"),
    };
    Repository::open(&dir.join("repo"), &opts).unwrap()
}

#[test]
fn listings_follow_the_directory_not_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = test_repo(tmp.path(), 16 << 10, 1 << 20);
    let a = data(tmp.path(), "a", "one");
    archive_paths(&repo, "j", std::slice::from_ref(&a));
    let first = ids(&repo);
    assert_eq!(first.len(), 1);
    assert_eq!(repo.index().cached_manifest_ids().unwrap(), first);

    // A manifest written elsewhere appears, and is cached once read and verified.
    let other = other_writer(tmp.path());
    std::fs::write(a.join("f"), "two").unwrap();
    archive_paths(&other, "j", std::slice::from_ref(&a));
    drop(other);
    let both = ids(&repo);
    assert_eq!(both.len(), 2);
    assert_eq!(repo.index().cached_manifest_ids().unwrap().len(), 2);

    // One deleted behind the cache's back is never listed, and leaves the cache.
    let gone = both[1];
    std::fs::remove_file(repo.snapshots_dir().join(gone.to_hex())).unwrap();
    assert_eq!(ids(&repo), first);
    assert_eq!(repo.index().cached_manifest_ids().unwrap(), first);
    assert!(matches!(
        repo.resolve_snapshot(&gone.to_hex()),
        Err(RepoError::SnapshotNotFound(_))
    ));
}

#[test]
fn damaged_manifests_are_reported_and_never_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = test_repo(tmp.path(), 16 << 10, 1 << 20);
    let a = data(tmp.path(), "a", "one");
    archive_paths(&repo, "j", std::slice::from_ref(&a));
    // A manifest this process never saw, damaged before it could be cached.
    let other = other_writer(tmp.path());
    std::fs::write(a.join("f"), "two").unwrap();
    archive_paths(&other, "j", std::slice::from_ref(&a));
    drop(other);
    let uncached = std::fs::read_dir(repo.snapshots_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let id: Id = p.file_name().unwrap().to_str().unwrap().parse().unwrap();
            repo.index().cached_manifest(&id).unwrap().is_none()
        })
        .unwrap();
    std::fs::write(&uncached, b"{ rot").unwrap();
    for _ in 0..2 {
        let (ok, bad) = repo.snapshots_and_damaged().unwrap();
        assert_eq!((ok.len(), bad.len()), (1, 1), "reported every time");
        assert_eq!(repo.index().cached_manifest_ids().unwrap().len(), 1);
    }
    // It could be the newest: `latest` refuses to guess.
    assert!(matches!(
        repo.resolve_snapshot("latest"),
        Err(RepoError::DamagedSnapshot { .. })
    ));
}

#[test]
fn a_cached_manifest_that_rots_is_still_read_from_its_verified_copy_and_check_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = test_repo(tmp.path(), 16 << 10, 1 << 20);
    let a = data(tmp.path(), "a", "one");
    archive_paths(&repo, "j", std::slice::from_ref(&a));
    let id = ids(&repo)[0];
    std::fs::write(repo.snapshots_dir().join(id.to_hex()), b"{ rot").unwrap();
    // Listings and restores use the copy verified when it was written…
    let s = repo.resolve_snapshot("latest").unwrap();
    assert_eq!(s.id, id);
    assert!(repo.entries(&s.snapshot).all(|e| e.is_ok()));
    // …and check reads the file itself.
    let report = check(&repo, ReadData::None).unwrap();
    assert!(
        report.problems.iter().any(
            |p| matches!(p, Problem::DamagedSnapshot { snapshot, .. } if *snapshot == id.short())
        ),
        "{:?}",
        report.problems
    );
}

#[test]
fn latest_resolves_per_job_through_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = test_repo(tmp.path(), 16 << 10, 1 << 20);
    let a = data(tmp.path(), "a", "one");
    let b = data(tmp.path(), "b", "bee");
    archive_paths(&repo, "x", std::slice::from_ref(&a));
    std::thread::sleep(std::time::Duration::from_millis(5));
    archive_paths(&repo, "y", std::slice::from_ref(&b));
    std::thread::sleep(std::time::Duration::from_millis(5));
    std::fs::write(a.join("f"), "two").unwrap();
    archive_paths(&repo, "x", std::slice::from_ref(&a));
    let all = repo.snapshots().unwrap();
    let (x1, y1, x2) = (all[0].id, all[1].id, all[2].id);
    assert_eq!(all[1].snapshot.job, "y");
    assert_eq!(repo.resolve_snapshot("latest").unwrap().id, x2);
    assert_eq!(repo.resolve_snapshot("latest:y").unwrap().id, y1);
    assert_eq!(repo.resolve_snapshot("latest:x").unwrap().id, x2);
    assert!(matches!(
        repo.resolve_snapshot("latest:z"),
        Err(RepoError::SnapshotNotFound(_))
    ));
    // The newest vanishes (forgotten by another machine): `latest` never names it.
    std::fs::remove_file(repo.snapshots_dir().join(x2.to_hex())).unwrap();
    assert_eq!(repo.resolve_snapshot("latest").unwrap().id, y1);
    assert_eq!(repo.resolve_snapshot("latest:x").unwrap().id, x1);
}
