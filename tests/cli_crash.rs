//! Crash safety: a backup killed with SIGKILL at any point leaves a repository that
//! `check` accepts, and the next backup succeeds without manual steps.

mod common;
use common::*;

use std::time::{Duration, Instant};

#[test]
fn sigkill_at_many_points() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(data.join("many")).unwrap();
    for i in 0..6 {
        std::fs::write(data.join(format!("big{i}")), noise(4 << 20, i)).unwrap();
    }
    for i in 0..300 {
        std::fs::write(data.join(format!("many/f{i:03}")), noise(3000, 1000 + i)).unwrap();
    }
    env.ok(&["init", "--chunk-size", "64KiB", "--pack-size", "512KiB"]);

    // How long an uninterrupted run takes, to spread the kills over it.
    let t = Instant::now();
    env.ok(&["backup", "--job", "probe", data.to_str().unwrap()]);
    let full = t.elapsed();

    let mut killed_mid_run = 0;
    for step in 0..14u32 {
        // Change some data each round so every run has new chunks to write.
        std::fs::write(
            data.join(format!("big{}", step % 6)),
            noise(4 << 20, 100 + step as u64),
        )
        .unwrap();
        let delay = full.mul_f64(step as f64 / 13.0);
        let mut child = env
            .cmd(&["backup", "--job", "victim", data.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // SIGKILL: no destructors, no cleanup.
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            killed_mid_run += 1;
        }
        let out = env.run(&["check"]);
        assert!(
            out.status.success(),
            "check after kill at {delay:?}: {}",
            text(&out)
        );
    }
    assert!(
        killed_mid_run >= 5,
        "only {killed_mid_run} runs were actually interrupted"
    );

    // The next run needs no manual step: stale lock broken, leftovers ignored.
    let out = env.run(&["backup", "--job", "victim", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = env.run(&["check", "--read-data"]);
    assert!(out.status.success(), "{}", text(&out));
    let target = env.path("out");
    env.ok(&[
        "restore",
        "latest:victim",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_same_tree(&data, &restored(&target, &data));
}

#[test]
fn a_killed_stream_backup_leaves_no_snapshot() {
    let env = Env::new();
    env.ok(&["init"]);
    // A producer that never finishes: the backup is killed mid-stream.
    let mut child = env
        .cmd(&[
            "backup",
            "--job",
            "s",
            "--name",
            "x",
            "--command",
            "sh -c 'head -c 3000000 /dev/zero; exec sleep 31.7'",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    // The producer dies with backuphub instead of living on as an orphan.
    let orphan = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0031.7\0"))
    };
    let start = Instant::now();
    while orphan() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the command outlived backuphub"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&env.ok(&["snapshots", "--json"]).stdout).unwrap();
    assert!(v.as_array().unwrap().is_empty(), "{v}");
    env.ok(&["check"]);
    let out = env.run_with_stdin(
        &["backup", "--job", "s", "--stdin", "--name", "x"],
        b"after",
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn sigkill_during_prune() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("stable"), noise(2 << 20, 7)).unwrap();
    env.ok(&["init", "--chunk-size", "64KiB", "--pack-size", "256KiB"]);
    let garbage = |round: u64| {
        // Half of "mixed" changes each round, so old packs become partly dead (repack)
        // and wholly dead (delete).
        let mut mixed = noise(1 << 20, 1);
        mixed.extend(noise(1 << 20, 100 + round));
        std::fs::write(data.join("mixed"), mixed).unwrap();
        std::fs::write(data.join("churn"), noise(3 << 20, 200 + round)).unwrap();
        env.ok(&["backup", "--job", "j", data.to_str().unwrap()]);
        env.ok(&["forget", "--job", "j", "--keep-last", "1"]);
    };
    garbage(0);
    garbage(1);
    let t = Instant::now();
    env.ok(&["prune"]);
    let full = t.elapsed().max(Duration::from_millis(20));

    let mut interrupted = 0;
    for step in 0..10u32 {
        garbage(2 + step as u64);
        let mut child = env
            .cmd(&["prune"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(step as f64 / 9.0));
        let _ = child.kill();
        if !child.wait().unwrap().success() {
            interrupted += 1;
        }
        let out = env.run(&["check", "--read-data"]);
        assert!(
            out.status.success(),
            "check after prune killed at step {step}: {}",
            text(&out)
        );
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} prunes were actually interrupted"
    );
    env.ok(&["prune"]);
    env.ok(&["check", "--read-data"]);
    let target = env.path("out");
    env.ok(&["restore", "latest:j", "--target", target.to_str().unwrap()]);
    assert_same_tree(&data, &restored(&target, &data));
}
