//! A restore (often as root) into a tree that local users own parts of never acts outside
//! the target through a symlink they planted: not before the restore, not during it.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use backuphub::repo::Repository;
use backuphub::repo::snapshot::Snapshot;
use backuphub::restore::{RestoreOptions, SpecialFiles, restore, restore_with_hook};
use common::{archive_paths, restored, test_repo, tree_state};

struct Fixture {
    tmp: tempfile::TempDir,
    repo: Repository,
    snap: Snapshot,
    data: PathBuf,
    /// Someone else's files, which the planted symlinks point at.
    outside: PathBuf,
}

fn set_mtime(p: &Path, secs: i64) {
    let t = filetime::FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(p, t, t).unwrap();
}

/// data/{d/, d/sub/, d/f, g, keep}, backed up; outside/{sub/, f, g} owned by another user.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("d/sub")).unwrap();
    std::fs::write(data.join("d/f"), b"inside").unwrap();
    std::fs::write(data.join("g"), b"g").unwrap();
    std::fs::write(data.join("keep"), b"keep").unwrap();
    for (p, mode) in [("d", 0o750), ("d/sub", 0o755), ("d/f", 0o640), ("g", 0o600)] {
        std::fs::set_permissions(data.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    for p in ["d/sub", "d/f", "g", "keep", "d"] {
        set_mtime(&data.join(p), 1_600_000_000);
    }
    let repo = test_repo(tmp.path(), 8192, 256 << 10);
    let snap = archive_paths(&repo, "t", std::slice::from_ref(&data));

    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("sub")).unwrap();
    std::fs::write(outside.join("f"), b"victim").unwrap();
    std::fs::write(outside.join("g"), b"victim g").unwrap();
    for (p, mode) in [("", 0o711), ("sub", 0o711), ("f", 0o604), ("g", 0o604)] {
        let p = outside.join(p);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::lchown(&p, Some(4321), Some(4321)).unwrap();
        }
    }
    for p in ["sub", "f", "g", ""] {
        set_mtime(&outside.join(p), 1_000_000_000);
    }
    Fixture {
        tmp,
        repo,
        snap,
        data,
        outside,
    }
}

fn opts(overwrite: bool) -> RestoreOptions {
    RestoreOptions {
        only: None,
        overwrite,
    }
}

/// Plants `d -> outside` and `g -> outside/g` where the snapshot has a directory and a file.
fn plant(fx: &Fixture, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    std::os::unix::fs::symlink(&fx.outside, dest.join("d")).unwrap();
    std::os::unix::fs::symlink(fx.outside.join("g"), dest.join("g")).unwrap();
}

#[test]
fn planted_symlinks_are_not_followed_and_not_replaced_without_overwrite() {
    let fx = fixture();
    let target = fx.tmp.path().join("out");
    let dest = restored(&target, &fx.data);
    plant(&fx, &dest);
    let before = tree_state(&fx.outside);

    let err = restore(&fx.repo, &fx.snap, &target, &opts(false)).unwrap_err();

    assert_eq!(
        tree_state(&fx.outside),
        before,
        "changed outside the target"
    );
    assert_eq!(err.kind().as_str(), "partial", "{err}");
    let msg = err.to_string();
    let d = dest.join("d");
    let g = dest.join("g");
    for p in [&d, &g] {
        let rel = p.strip_prefix(&target).unwrap().to_str().unwrap();
        assert!(
            msg.lines()
                .any(|l| l.contains(rel) && l.contains("--overwrite")),
            "{rel} listed: {msg}"
        );
        assert!(p.symlink_metadata().unwrap().file_type().is_symlink());
    }
    // Everything else is restored.
    assert_eq!(std::fs::read(dest.join("keep")).unwrap(), b"keep");
}

#[test]
fn planted_symlinks_are_replaced_not_followed_with_overwrite() {
    let fx = fixture();
    let target = fx.tmp.path().join("out");
    let dest = restored(&target, &fx.data);
    plant(&fx, &dest);
    let before = tree_state(&fx.outside);

    restore(&fx.repo, &fx.snap, &target, &opts(true)).unwrap();

    assert_eq!(
        tree_state(&fx.outside),
        before,
        "changed outside the target"
    );
    common::assert_same_tree(&fx.data, &dest);
}

/// A local user who owns a restored directory swaps it for a symlink after its contents are
/// written and before its metadata is applied (the second pass).
fn swap_between_passes(overwrite: bool) {
    let fx = fixture();
    let target = fx.tmp.path().join("out");
    let dest = restored(&target, &fx.data);
    let before = tree_state(&fx.outside);
    let moved = fx.tmp.path().join("moved");

    let result = restore_with_hook(
        &fx.repo,
        &fx.snap,
        &target,
        &opts(overwrite),
        SpecialFiles::default(),
        &mut || {
            std::fs::rename(dest.join("d"), &moved).unwrap();
            std::os::unix::fs::symlink(&fx.outside, dest.join("d")).unwrap();
        },
    );

    assert_eq!(
        tree_state(&fx.outside),
        before,
        "changed outside the target"
    );
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind().as_str(), "partial", "{msg}");
    let rel = dest.strip_prefix(&target).unwrap().join("d");
    let rel = rel.to_str().unwrap();
    assert!(
        msg.lines()
            .any(|l| l.contains(rel) && l.contains("symlink")),
        "{msg}"
    );
    // The rest of the tree got its metadata.
    let keep = dest.join("keep").metadata().unwrap();
    assert_eq!(keep.mtime(), 1_600_000_000);
    assert_eq!(
        dest.metadata().unwrap().mtime(),
        fx.data.metadata().unwrap().mtime()
    );
}

#[test]
fn a_directory_swapped_for_a_symlink_mid_restore_is_not_followed() {
    swap_between_passes(false);
}

#[test]
fn a_directory_swapped_for_a_symlink_mid_restore_is_not_followed_with_overwrite() {
    swap_between_passes(true);
}
