//! Crash safety: a backup killed with SIGKILL at any point leaves a repository that
//! `check` accepts, and the next backup succeeds without manual steps.

mod common;
mod powerloss;
use common::*;
use powerloss::{Fired, Mode, cut_points, run_cut};

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Runs `cmd()` under the shim, SIGKILLed at its `n`-th mutating call below `repo`. A run
/// that ends before its `n`-th call (thread scheduling can make one a little shorter than
/// the probe) is repeated with `n` inside what it did, so every round really is killed.
/// Returns the call it was killed at.
fn kill_at(cmd: impl Fn() -> Command, scratch: &Path, repo: &Path, mut n: u64) -> u64 {
    loop {
        let (out, rep) = run_cut(cmd(), scratch, &[repo], n, Mode::Kill);
        assert_eq!(rep.untracked, 0, "the shim missed changes: {rep:?}");
        match rep.fired {
            Fired::Mid => {
                assert_eq!(out.status.signal(), Some(9), "{rep:?}: {}", text(&out));
                assert_eq!(rep.calls, n);
                return n;
            }
            Fired::None => {
                assert!(out.status.success(), "{rep:?}: {}", text(&out));
                assert!(rep.calls < n, "{rep:?}");
                n = rep.calls.max(1);
            }
            Fired::Exit => unreachable!("kill mode never cuts at exit"),
        }
    }
}

/// How many mutating calls an uninterrupted `cmd()` makes below `repo`.
fn probe_calls(cmd: Command, scratch: &Path, repo: &Path) -> u64 {
    let (out, rep) = run_cut(cmd, scratch, &[repo], 0, Mode::Kill);
    assert!(out.status.success(), "probe: {}", text(&out));
    assert_eq!(rep.fired, Fired::None);
    assert_eq!(rep.untracked, 0, "the shim missed changes: {rep:?}");
    rep.calls
}

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
    env.ok(&["backup", "--job", "victim", data.to_str().unwrap()]);
    let change = |step: u64| {
        // Change some data each round so every run has new chunks to write.
        std::fs::write(
            data.join(format!("big{}", step % 6)),
            noise(4 << 20, 100 + step),
        )
        .unwrap();
    };
    let backup = || env.cmd(&["backup", "--job", "victim", data.to_str().unwrap()]);
    // How many calls a run makes, to spread the kills over all of it: the lock, the index,
    // packs, refs and the manifest.
    change(99);
    let calls = probe_calls(backup(), env.dir.path(), &env.repo());
    assert!(calls >= 20, "too few calls to spread kills over: {calls}");

    let mut killed_at = Vec::new();
    for (step, n) in cut_points(calls, 14, 0x5eed).into_iter().enumerate() {
        change(step as u64);
        // SIGKILL: no destructors, no cleanup; each run meets the leftovers of the last.
        killed_at.push(kill_at(backup, env.dir.path(), &env.repo(), n));
        let out = env.run(&["check"]);
        assert!(
            out.status.success(),
            "check after a kill at call {n} of {calls}: {}",
            text(&out)
        );
    }
    // Every round was killed inside its run, at points spread over all of it.
    assert_eq!(killed_at.len(), 14);
    assert!(
        killed_at.iter().any(|&n| n * 2 <= calls),
        "{killed_at:?} of {calls}"
    );
    assert!(
        killed_at.iter().any(|&n| n * 4 >= calls * 3),
        "{killed_at:?} of {calls}"
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
    // A producer that never finishes on its own within the test: once backuphub has
    // taken 3 MB from it, it names itself and its sleep in `ready`, and if it ever got past
    // the sleep it would leave `outlived` behind.
    let ready = env.path("ready");
    let outlived = env.path("outlived");
    let script = format!(
        "head -c 3000000 /dev/zero; sleep 31.7 & echo \"$$ $!\" > {r}.tmp; mv {r}.tmp {r}; wait; : > {o}",
        r = ready.display(),
        o = outlived.display()
    );
    let mut child = env
        .cmd(&[
            "backup",
            "--job",
            "s",
            "--name",
            "x",
            "--command",
            &format!("sh -c '{script}'"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Explicit synchronization: the producer is known to be mid-stream once `ready` exists.
    while !ready.exists() {
        assert!(child.try_wait().unwrap().is_none(), "backuphub ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids = std::fs::read_to_string(&ready).unwrap();
    let (producer, sleeper) = pids.trim().split_once(' ').unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The producer dies with backuphub instead of living on as an orphan: wait for it to
    // end, however long that takes, then see whether it ended by itself.
    let alive = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    };
    while alive(producer) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill").arg(sleeper).status();
    assert!(!outlived.exists(), "the command outlived backuphub");
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
    let calls = probe_calls(env.cmd(&["prune"]), env.dir.path(), &env.repo());
    assert!(calls >= 10, "too few calls to spread kills over: {calls}");

    let mut killed_at = Vec::new();
    for (step, n) in cut_points(calls, 10, 0x9e37).into_iter().enumerate() {
        garbage(2 + step as u64);
        killed_at.push(kill_at(
            || env.cmd(&["prune"]),
            env.dir.path(),
            &env.repo(),
            n,
        ));
        let out = env.run(&["check", "--read-data"]);
        assert!(
            out.status.success(),
            "check after prune killed at call {n} of {calls}: {}",
            text(&out)
        );
    }
    assert_eq!(killed_at.len(), 10);
    env.ok(&["prune"]);
    env.ok(&["check", "--read-data"]);
    let target = env.path("out");
    env.ok(&["restore", "latest:j", "--target", target.to_str().unwrap()]);
    assert_same_tree(&data, &restored(&target, &data));
}
