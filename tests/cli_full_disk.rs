//! A full or read-only backup disk: reading works (the moment a restore is needed most),
//! and `forget` + `prune` free space on a full one. Needs a small file system of its own:
//! a size-limited tmpfs, mounted where that is permitted (root); skipped elsewhere.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A size-limited tmpfs, unmounted on drop (also when a test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }

    fn remount_read_only(&self) {
        let ok = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Disk {
    env: Env,
    repo: PathBuf,
    _fs: Tmpfs,
}

impl Disk {
    fn new() -> Option<Disk> {
        let env = Env::new();
        let Some(fs) = Tmpfs::mount(&env.path("disk"), "8m") else {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        };
        Some(Disk {
            repo: env.path("disk/repo"),
            env,
            _fs: fs,
        })
    }

    fn run(&self, args: &[&str]) -> Output {
        self.env
            .cmd(args)
            .env("BACKUPHUB_REPO", &self.repo)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {}", text(&out));
        out
    }

    /// A backup on one CPU: one archiver worker, so blobs land in packs in the order they
    /// were cut and the pack layout the scenario needs (one pack mixing kept and dropped
    /// blobs) does not depend on how two workers happened to share the chunks.
    fn backup_on_one_cpu(&self, data: &Path) {
        let cmd = self
            .env
            .cmd(&["backup", "--job", "j", data.to_str().unwrap()]);
        let mut one = Command::new("taskset");
        one.args(["-c", "0"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => one.env(k, v),
                None => one.env_remove(k),
            };
        }
        let out = one
            .env("BACKUPHUB_REPO", &self.repo)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "backup failed: {}", text(&out));
    }

    /// Fills the file system to the last byte.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.env.path("disk/filler")).unwrap();
        let block = vec![0xa5u8; 4096];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..1]).is_ok() {}
        let _ = f.sync_all();
    }

    fn lock_dir_is_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.repo.join("locks"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left in locks/: {left:?}");
    }

    /// Every reading command, and a restore that matches `data`.
    fn read_everything(&self, data: &Path, restore_to: &str) {
        self.ok(&["snapshots"]);
        self.ok(&["ls", "latest"]);
        let rel = data.join("b");
        let rel = rel.to_str().unwrap().trim_start_matches('/');
        assert_eq!(
            self.ok(&["cat", "latest", rel]).stdout,
            std::fs::read(data.join("b")).unwrap()
        );
        self.ok(&["check", "--read-data"]);
        let target = self.env.path(restore_to);
        self.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
        assert_same_tree(data, &restored(&target, data));
        self.lock_dir_is_empty();
    }
}

#[test]
fn a_full_disk_can_be_read_and_freed_and_a_read_only_one_read() {
    let Some(disk) = Disk::new() else { return };
    let data = disk.env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    disk.ok(&["init", "--chunk-size", "64KiB", "--pack-size", "256KiB"]);
    // Three days: the first two are forgotten later. Their data lies in packs that are
    // wholly garbage (deleted) and in one that mixes it with live data (repacked).
    std::fs::write(data.join("c"), noise(300 << 10, 1)).unwrap();
    disk.backup_on_one_cpu(&data);
    std::fs::remove_file(data.join("c")).unwrap();
    std::fs::write(data.join("a"), noise(400 << 10, 2)).unwrap();
    std::fs::write(data.join("b"), noise(60 << 10, 3)).unwrap();
    disk.backup_on_one_cpu(&data);
    std::fs::write(data.join("a"), noise(400 << 10, 4)).unwrap();
    disk.backup_on_one_cpu(&data);

    disk.fill();
    disk.read_everything(&data, "out1");
    // Reading without a lock file on a full disk is said, not hidden.
    let out = disk.ok(&["ls", "latest"]);
    assert!(text(&out).contains("without a lock file"), "{}", text(&out));
    // Prune cannot take its lock yet, and says what to do.
    let out = disk.run(&["prune"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("forget"), "{}", text(&out));
    disk.lock_dir_is_empty();

    // forget only removes manifests: it works on the full disk and makes a little room.
    disk.ok(&["forget", "--job", "j", "--keep-last", "1"]);
    let plan: serde_json::Value =
        serde_json::from_slice(&disk.ok(&["prune", "--dry-run", "--json"]).stdout).unwrap();
    assert!(
        !plan["delete"].as_array().unwrap().is_empty()
            && !plan["repack"].as_array().unwrap().is_empty(),
        "the scenario needs packs to delete and to repack: {plan}"
    );
    // Repacking needs room that only deleting whole packs first can make.
    let report: serde_json::Value =
        serde_json::from_slice(&disk.ok(&["prune", "--json"]).stdout).unwrap();
    assert_eq!(
        report["packs_deleted"],
        plan["delete"].as_array().unwrap().len()
    );
    assert_eq!(
        report["packs_repacked"],
        plan["repack"].as_array().unwrap().len()
    );
    assert_eq!(report["packs_not_repacked"], 0);
    assert!(report["bytes_freed"].as_u64().unwrap() > 0);
    disk.read_everything(&data, "out2");

    disk._fs.remount_read_only();
    disk.read_everything(&data, "out3");
    let out = disk.run(&["prune"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("Read-only"), "{}", text(&out));
}
