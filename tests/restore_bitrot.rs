//! Bit rot in the repository: a restore brings back every file it can, leaves no damaged
//! file under its final name, and lists every failure with its path.

mod common;

use std::path::{Path, PathBuf};

use backuphub::repo::Repository;
use backuphub::repo::snapshot::Snapshot;
use backuphub::repo::tree::{EntryPath, decode_blob};
use backuphub::restore::{RestoreError, RestoreOptions, RestoreStats, find_entry, restore};
use common::*;

/// Names of everything below `dir` that a restore left under a temporary name.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .contains("backuphub-restore")
        {
            out.push(p.clone());
        }
        if p.symlink_metadata().unwrap().is_dir() {
            out.extend(leftovers(&p));
        }
    }
    out
}

fn rel(target: &Path, p: &Path) -> String {
    p.strip_prefix(target).unwrap().to_str().unwrap().to_owned()
}

fn incomplete(result: Result<RestoreStats, RestoreError>) -> RestoreStats {
    match result {
        Err(RestoreError::Incomplete(stats)) => *stats,
        other => panic!("expected an incomplete restore, got {other:?}"),
    }
}

/// data/ with files before and after `victim.bin` in tree order, and in subdirectories.
fn data_tree(root: &Path) -> PathBuf {
    let data = root.join("data");
    for (i, dir) in ["a", "m/n", "z"].iter().enumerate() {
        std::fs::create_dir_all(data.join(dir)).unwrap();
        for j in 0..3 {
            let seed = (i * 10 + j) as u64 + 100;
            std::fs::write(data.join(dir).join(format!("f{j}")), noise(40_000, seed)).unwrap();
        }
    }
    std::fs::write(data.join("victim.bin"), noise(300_000, 1)).unwrap();
    data
}

fn backup(root: &Path, data: &Path) -> (Repository, Snapshot) {
    let repo = test_repo(root, 8192, 256 << 10);
    let snap = archive_paths(&repo, "t", &[data.to_owned()]);
    (repo, snap)
}

#[test]
fn a_damaged_chunk_fails_only_its_file_and_leaves_nothing_damaged_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data_tree(tmp.path());
    let (repo, snap) = backup(tmp.path(), &data);
    let victim = data.join("victim.bin");
    let entry = find_entry(&repo, &snap, &victim.to_str().unwrap().into()).unwrap();
    assert!(entry.chunks.len() > 4);
    // A chunk in the middle: the first part of the file reads fine.
    let chunk = entry.chunks[entry.chunks.len() / 2];
    damage_blob(&tmp.path().join("repo"), &chunk);

    let target = tmp.path().join("out");
    let stats = incomplete(restore(&repo, &snap, &target, &RestoreOptions::default()));

    let victim_rel = rel(Path::new("/"), &victim);
    assert_eq!(stats.failures.len(), 1, "{:?}", stats.failures);
    let f = &stats.failures[0];
    assert_eq!(f.path, victim_rel);
    assert_eq!(f.kind.as_str(), "corrupt");
    assert!(f.error.contains(&chunk.to_string()), "names the chunk: {f}");
    let dest = restored(&target, &data);
    assert!(
        dest.join("victim.bin").symlink_metadata().is_err(),
        "a damaged file under its final name"
    );
    assert_eq!(leftovers(&target), Vec::<PathBuf>::new());
    // Everything else, metadata included.
    std::fs::remove_file(&victim).unwrap();
    assert_same_tree(&data, &dest);
}

#[test]
fn the_cli_lists_the_damaged_file_exits_non_zero_and_cat_names_the_chunk() {
    let env = Env::new();
    let data = data_tree(env.dir.path());
    let (repo, snap) = backup(env.dir.path(), &data);
    let victim = data.join("victim.bin");
    let entry = find_entry(&repo, &snap, &victim.to_str().unwrap().into()).unwrap();
    let chunk = entry.chunks[1];
    damage_blob(&env.repo(), &chunk);
    drop(repo);

    let target = env.path("out");
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let msg = text(&out);
    assert_eq!(out.status.code(), Some(3), "partial restore: {msg}");
    let victim_rel = rel(Path::new("/"), &victim);
    assert!(
        msg.lines()
            .any(|l| l.contains(&victim_rel) && l.contains(&chunk.to_string())),
        "{msg}"
    );
    let dest = restored(&target, &data);
    assert!(dest.join("victim.bin").symlink_metadata().is_err());
    assert_eq!(
        std::fs::read(dest.join("z/f2")).unwrap(),
        std::fs::read(data.join("z/f2")).unwrap()
    );

    let out = env.run(&["cat", "latest", &victim_rel]);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains(&victim_rel) && msg.contains(&format!("chunk {chunk}")),
        "{msg}"
    );
}

/// Many entries with long names, so that the tree spans several blobs.
fn wide_tree(root: &Path) -> (PathBuf, Repository, Snapshot) {
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let pad = "x".repeat(150);
    for i in 0..3000 {
        std::fs::write(data.join(format!("{i:05}-{pad}")), i.to_string()).unwrap();
    }
    let (repo, snap) = backup(root, &data);
    let n = tree_blobs(&repo, &snap).len();
    assert!(n >= 3, "{n} tree blobs");
    (data, repo, snap)
}

#[test]
fn a_damaged_tree_blob_is_listed_and_the_entries_of_the_others_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, repo, snap) = wide_tree(tmp.path());
    let tree = tree_blobs(&repo, &snap);
    let lost: Vec<EntryPath> = decode_blob(&repo.read_blob(&tree[1]).unwrap())
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    let next = decode_blob(&repo.read_blob(&tree[2]).unwrap()).unwrap()[0]
        .path
        .clone();
    damage_blob(&tmp.path().join("repo"), &tree[1]);

    let target = tmp.path().join("out");
    let stats = incomplete(restore(&repo, &snap, &target, &RestoreOptions::default()));

    assert_eq!(stats.failures.len(), 1, "{:?}", stats.failures);
    let f = &stats.failures[0];
    assert!(
        f.error.contains("tree") && f.error.contains(&next.display()),
        "{f}"
    );
    let dest = restored(&target, &data);
    let mut restored_files = 0;
    for e in std::fs::read_dir(&data).unwrap() {
        let p = e.unwrap().path();
        let in_snapshot: EntryPath = p.to_str().unwrap().into();
        let back = dest.join(p.file_name().unwrap());
        if lost.contains(&in_snapshot) {
            assert!(back.symlink_metadata().is_err(), "{}", back.display());
        } else {
            assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&p).unwrap());
            restored_files += 1;
        }
    }
    assert_eq!(restored_files, 3000 - lost.len());
    assert!(!lost.is_empty() && restored_files > 0);
}

#[test]
fn a_damaged_tree_blob_outside_the_selected_path_does_not_matter() {
    let tmp = tempfile::tempdir().unwrap();
    let (_data, repo, snap) = wide_tree(tmp.path());
    let tree = tree_blobs(&repo, &snap);
    let first_of = |i: usize| {
        decode_blob(&repo.read_blob(&tree[i]).unwrap()).unwrap()[0]
            .path
            .clone()
    };
    let (in_damaged, after_damaged) = (first_of(1), first_of(2));
    damage_blob(&tmp.path().join("repo"), &tree[1]);

    let only = |p: &EntryPath| RestoreOptions {
        only: Some(p.clone()),
        overwrite: false,
    };
    let target = tmp.path().join("out");
    let stats = restore(&repo, &snap, &target, &only(&after_damaged)).unwrap();
    assert_eq!(stats.entries, 1);
    assert!(target.join(after_damaged.to_os_path()).is_file());

    let stats = incomplete(restore(&repo, &snap, &target, &only(&in_damaged)));
    assert_eq!(stats.entries, 0);
    assert_eq!(stats.failures.len(), 1, "{:?}", stats.failures);

    // `cat` looks past the damaged blob, and says when the file may have been in it.
    let mut out = Vec::new();
    backuphub::restore::cat(&repo, &snap, &after_damaged, &mut out).unwrap();
    assert!(!out.is_empty());
    let err = backuphub::restore::cat(&repo, &snap, &in_damaged, &mut Vec::new()).unwrap_err();
    assert_eq!(err.kind().as_str(), "corrupt", "{err}");
    assert!(err.to_string().contains("unreadable"), "{err}");
}
