//! Device nodes, FIFOs and setuid/setgid bits come back only when asked for: restoring a
//! snapshot must not hand whoever wrote it a setuid shell or a node for the raw disk.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use backuphub::restore::{
    RestoreError, RestoreOptions, RestoreStats, SpecialFiles, restore, restore_with,
};
use common::{archive_paths, restored, test_repo};
use rustix::fs::{CWD, FileType, Mode, makedev, mknodat};

fn mode(p: &Path) -> u32 {
    p.symlink_metadata().unwrap().mode() & 0o7777
}

#[test]
fn devices_fifos_and_setid_bits_are_restored_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for (name, m) in [("suid", 0o4755), ("sgid", 0o2750), ("plain", 0o644)] {
        std::fs::write(data.join(name), name).unwrap();
        std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(m)).unwrap();
    }
    mknodat(
        CWD,
        data.join("fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    // Creating a device node needs root (and CAP_MKNOD); without it that part is skipped.
    let rdev = makedev(1, 3);
    let device = mknodat(
        CWD,
        data.join("null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o620),
        rdev,
    )
    .is_ok();
    if !device {
        eprintln!("cannot create device nodes here: checking FIFOs and setid bits only");
    }
    let repo = test_repo(tmp.path(), 8192, 256 << 10);
    let snap = archive_paths(&repo, "t", std::slice::from_ref(&data));

    // Not asked for.
    let target = tmp.path().join("plain-restore");
    let stats: RestoreStats = match restore(&repo, &snap, &target, &RestoreOptions::default()) {
        Err(RestoreError::Incomplete(stats)) => *stats,
        other => panic!("devices and FIFOs are listed as failures: {other:?}"),
    };
    let dest = restored(&target, &data);
    let failed: Vec<&str> = stats.failures.iter().map(|f| f.path.as_str()).collect();
    let rel = |name: &str| {
        data.join(name)
            .strip_prefix("/")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    let mut expected = vec![rel("fifo")];
    if device {
        expected.push(rel("null"));
    }
    assert_eq!(failed, expected);
    for f in &stats.failures {
        assert!(f.error.contains("--devices"), "{f}");
        assert_eq!(f.kind.as_str(), "not_permitted");
    }
    assert!(dest.join("fifo").symlink_metadata().is_err());
    assert!(dest.join("null").symlink_metadata().is_err());
    assert_eq!(mode(&dest.join("suid")), 0o755);
    assert_eq!(mode(&dest.join("sgid")), 0o750);
    assert_eq!(mode(&dest.join("plain")), 0o644);
    assert_eq!(stats.setid_cleared, vec![rel("sgid"), rel("suid")]);
    assert_eq!(std::fs::read(dest.join("suid")).unwrap(), b"suid");

    // Asked for.
    let target = tmp.path().join("full-restore");
    let all = SpecialFiles {
        devices: true,
        setid: true,
    };
    let stats = restore_with(&repo, &snap, &target, &RestoreOptions::default(), all).unwrap();
    assert!(stats.setid_cleared.is_empty());
    let dest = restored(&target, &data);
    assert_eq!(mode(&dest.join("suid")), 0o4755);
    assert_eq!(mode(&dest.join("sgid")), 0o2750);
    let fifo = dest.join("fifo").symlink_metadata().unwrap();
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, mode(&data.join("fifo")));
    if device {
        let null = dest.join("null").symlink_metadata().unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rdev);
        assert_eq!(null.mode() & 0o7777, mode(&data.join("null")));
    }
}
