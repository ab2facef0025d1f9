//! Power-loss testing: `init`, `backup` and `prune` lose power at many points, and what a
//! disk would then hold must still be a sound repository.
//!
//! A SIGKILL leaves the page cache intact, so it never tests an fsync. Here an LD_PRELOAD
//! shim (`tests/powerloss/shim.c`, compiled with `cc` at run time) follows every call that
//! changes files below the repository (and, in some runs, the state directory): it keeps
//! each file's content as of its last fsync and each directory's entries as of its last
//! fsync. At the N-th mutating call it rewrites those directories to that durable state and
//! exits with 137, as if the power had failed. Two models of a power cut alternate, both
//! legal on POSIX: directory changes not followed by a directory fsync are undone (new
//! names vanish, renames and unlinks revert), or all directory changes survive while file
//! contents still fall back to their last fsync (zero-length files after a rename). A
//! cut after the last call loses power right after the command exited, so everything a
//! finished command reported must have been durable.
//!
//! Why a shim rather than FUSE or a loop device: it needs no privileges or kernel module
//! (CI containers have neither), is exact about which call is cut (so the test depends on
//! no timing), and costs one stat per write. Its limits, all on the lenient side: one
//! write() is never torn, and a file's data is its last fsync or nothing (no reordering
//! within a file).
//!
//! Cut points: a probe run counts the mutating calls of the operation, then N is drawn
//! from each of 40-odd equal strata of that range with a fixed seed. Every run starts from
//! the same copy of the repository, so the counts repeat; if thread scheduling makes a run
//! shorter than its N, the cut happens at exit instead, which is also a valid cut.
//!
//! After each cut: `check --read-data` passes, the next backup (or prune) succeeds,
//! check passes again (a stale index must not have caused a false dedup hit), and a
//! restore of the newest snapshot equals its source.
//!
//! Not in the Nix build sandbox (its name does not start with repo_/cli_): it runs a few
//! hundred processes.

mod common;
mod powerloss;

use common::*;
use powerloss::*;

use std::path::{Path, PathBuf};
use std::process::Output;

const SEED: u64 = 0x0b5e_55ed_0000_0007;
const CUTS: usize = 40;

/// A few hundred small files and a few MiB in one file.
fn make_source(env: &Env) -> PathBuf {
    let data = env.path("data");
    std::fs::create_dir_all(data.join("many")).unwrap();
    std::fs::write(data.join("big"), noise(3 << 20, 1)).unwrap();
    for i in 0..300u64 {
        std::fs::write(data.join(format!("many/f{i:03}")), noise(2000, 1000 + i)).unwrap();
    }
    data
}

/// New data for the next backup to write: a new 1 MiB file and some changed small ones.
fn change_source(data: &Path, round: u64) {
    std::fs::write(data.join("new"), noise(1 << 20, 500 + round)).unwrap();
    for i in 0..20u64 {
        std::fs::write(
            data.join(format!("many/f{:03}", (i * 7 + round) % 300)),
            noise(2500, 9000 + round * 100 + i),
        )
        .unwrap();
    }
}

/// The repository and the state directory as directories that exist before any command
/// (the mount point of the backup disk, systemd's StateDirectory).
fn prepare_dirs(env: &Env) {
    std::fs::create_dir_all(env.repo()).unwrap();
    std::fs::create_dir_all(env.path("state")).unwrap();
}

fn with_identity<'a>(args: &[&'a str], identity: Option<&'a str>) -> Vec<&'a str> {
    let mut v = args.to_vec();
    if let Some(id) = identity {
        v.extend(["--identity", id]);
    }
    v
}

fn snapshot_count(env: &Env) -> usize {
    let v: serde_json::Value =
        serde_json::from_slice(&env.ok(&["snapshots", "--json"]).stdout).unwrap();
    v.as_array().unwrap().len()
}

fn restore_equals(env: &Env, data: &Path, identity: Option<&str>, what: &str) {
    let target = env.path("restored");
    let _ = std::fs::remove_dir_all(&target);
    let out = env.run(&with_identity(
        &["restore", "latest:j", "--target", target.to_str().unwrap()],
        identity,
    ));
    assert!(out.status.success(), "{what}: restore: {}", text(&out));
    assert_same_tree(data, &restored(&target, data));
    std::fs::remove_dir_all(&target).unwrap();
}

/// What must hold after any cut: the repository checks, takes the next backup, still checks
/// (a stale index must not have produced a false dedup hit), and the newest snapshot
/// restores to its source. The first check and the backup run without the identity: with
/// it, opening the repository would re-cache a lost `key.json` and hide the loss.
fn verify_after_cut(env: &Env, data: &Path, identity: Option<&str>, restore: bool, what: &str) {
    let out = env.run(&["check", "--read-data"]);
    assert!(
        out.status.success(),
        "{what}: check --read-data after the cut: {}",
        text(&out)
    );
    let out = env.run(&["backup", "--job", "j", data.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{what}: the next backup: {}",
        text(&out)
    );
    let out = env.run(&with_identity(&["check", "--read-data"], identity));
    assert!(
        out.status.success(),
        "{what}: check --read-data after the next backup: {}",
        text(&out)
    );
    if restore {
        restore_equals(env, data, identity, what);
    }
}

fn describe(n: u64, mode: Mode, rep: &Report, out: &Output) -> String {
    format!(
        "cut {n} ({mode:?}, {rep:?}, exit {:?}): {}",
        out.status.code(),
        text(out)
    )
}

/// Asserts what the shim reports for one cut run, and returns whether it cut mid-run.
fn assert_cut(n: u64, mode: Mode, rep: &Report, out: &Output) -> bool {
    let what = describe(n, mode, rep, out);
    assert_eq!(rep.untracked, 0, "the shim missed changes: {what}");
    match rep.fired {
        Fired::Mid => {
            assert_eq!(rep.calls, n, "{what}");
            assert_eq!(out.status.code(), Some(137), "{what}");
            true
        }
        Fired::Exit => {
            assert!(rep.calls < n, "{what}");
            assert!(out.status.success(), "{what}");
            false
        }
        Fired::None => panic!("no cut happened: {what}"),
    }
}

/// Most cuts must land mid-run; only scheduling can shorten a run below its N.
fn assert_mostly_mid(mid: usize, total: usize, op: &str) {
    eprintln!("{op}: {mid} of {total} cuts inside the run");
    assert!(
        mid * 4 >= total * 3,
        "{op}: only {mid} of {total} cuts landed inside the run"
    );
}

/// Backs up under power cuts, every run from the same starting repository.
fn backup_cuts(encrypted: bool) {
    let env = Env::new();
    prepare_dirs(&env);
    let data = make_source(&env);
    let (recipient, identity) = keypair(&env);
    let identity = identity.to_str().unwrap().to_owned();
    let identity = encrypted.then_some(identity.as_str());
    let mut init = vec!["init", "--chunk-size", "64KiB", "--pack-size", "256KiB"];
    if encrypted {
        init.extend(["--recipient", &recipient]);
    }
    env.ok(&init);
    env.ok(&["backup", "--job", "j", data.to_str().unwrap()]);
    change_source(&data, 1);
    let (repo, state) = (env.repo(), env.path("state"));
    let (base_repo, base_state) = (env.path("base-repo"), env.path("base-state"));
    copy_tree(&repo, &base_repo);
    copy_tree(&state, &base_state);
    // The encrypted runs also cut the state directory: the sled index and key.json.
    let roots: Vec<&Path> = if encrypted {
        vec![&repo, &state]
    } else {
        vec![&repo]
    };
    let backup = || env.cmd(&["backup", "--job", "j", data.to_str().unwrap()]);

    // Probe: count the calls; power lost right after a successful backup keeps it.
    let (out, probe) = run_cut(backup(), env.dir.path(), &roots, 0, Mode::PowerDirsFsynced);
    assert!(out.status.success(), "probe: {}", text(&out));
    assert_eq!(probe.fired, Fired::Exit, "{probe:?}");
    assert_eq!(probe.untracked, 0, "{probe:?}");
    assert!(probe.calls >= 40, "too few calls to cut: {probe:?}");
    eprintln!(
        "backup (encrypted: {encrypted}): {} mutating calls",
        probe.calls
    );
    assert_eq!(snapshot_count(&env), 2, "a finished backup was lost");
    verify_after_cut(&env, &data, identity, true, "after the probe");

    let mut mid = 0;
    for (i, n) in cut_points(probe.calls, CUTS, SEED).into_iter().enumerate() {
        reset_tree(&repo, &base_repo);
        reset_tree(&state, &base_state);
        let mode = Mode::power(i);
        let (out, rep) = run_cut(backup(), env.dir.path(), &roots, n, mode);
        let what = describe(n, mode, &rep, &out);
        if assert_cut(n, mode, &rep, &out) {
            mid += 1;
        } else {
            assert_eq!(
                snapshot_count(&env),
                2,
                "a finished backup was lost: {what}"
            );
        }
        if encrypted {
            let key = state.join(
                base_state
                    .read_dir()
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .file_name(),
            );
            assert!(key.join("key.json").exists(), "key.json lost: {what}");
        }
        verify_after_cut(
            &env,
            &data,
            identity,
            i % 4 == 3 || rep.fired == Fired::Exit,
            &what,
        );
    }
    assert_mostly_mid(mid, CUTS, "backup");
}

#[test]
fn power_loss_during_backup() {
    backup_cuts(false);
}

#[test]
fn power_loss_during_encrypted_backup_with_state_dir() {
    backup_cuts(true);
}

#[test]
fn power_loss_during_prune() {
    let env = Env::new();
    prepare_dirs(&env);
    let data = make_source(&env);
    env.ok(&["init", "--chunk-size", "64KiB", "--pack-size", "256KiB"]);
    // Garbage of both kinds: wholly dead packs (deleted) and partly dead ones (repacked).
    for round in 0..3 {
        change_source(&data, round);
        let mut mixed = noise(1 << 20, 1);
        mixed.extend(noise(1 << 20, 100 + round));
        std::fs::write(data.join("mixed"), mixed).unwrap();
        env.ok(&["backup", "--job", "j", data.to_str().unwrap()]);
    }
    env.ok(&["forget", "--job", "j", "--keep-last", "1"]);
    let (repo, state) = (env.repo(), env.path("state"));
    let (base_repo, base_state) = (env.path("base-repo"), env.path("base-state"));
    copy_tree(&repo, &base_repo);
    copy_tree(&state, &base_state);
    let roots: Vec<&Path> = vec![&repo, &state];

    let (out, probe) = run_cut(
        env.cmd(&["prune"]),
        env.dir.path(),
        &roots,
        0,
        Mode::PowerDirsFsynced,
    );
    assert!(out.status.success(), "probe: {}", text(&out));
    assert_eq!(probe.fired, Fired::Exit, "{probe:?}");
    assert_eq!(probe.untracked, 0, "{probe:?}");
    assert!(probe.calls >= 20, "too few calls to cut: {probe:?}");
    eprintln!("prune: {} mutating calls", probe.calls);
    // A finished prune's deletions may come back after a power loss, but nothing live may
    // be missing, and the space it freed must not be needed for anything.
    verify_after_cut(&env, &data, None, true, "after the probe");

    let mut mid = 0;
    for (i, n) in cut_points(probe.calls, CUTS, SEED ^ 0x9e37)
        .into_iter()
        .enumerate()
    {
        reset_tree(&repo, &base_repo);
        reset_tree(&state, &base_state);
        let mode = Mode::power(i);
        let (out, rep) = run_cut(env.cmd(&["prune"]), env.dir.path(), &roots, n, mode);
        let what = describe(n, mode, &rep, &out);
        if assert_cut(n, mode, &rep, &out) {
            mid += 1;
        }
        let out = env.run(&["check", "--read-data"]);
        assert!(
            out.status.success(),
            "check after the cut: {what}: {}",
            text(&out)
        );
        // The interrupted prune can simply be repeated.
        let out = env.run(&["prune"]);
        assert!(
            out.status.success(),
            "the next prune: {what}: {}",
            text(&out)
        );
        verify_after_cut(&env, &data, None, i % 4 == 3, &what);
    }
    assert_mostly_mid(mid, CUTS, "prune");
}

/// `init` is short: every one of its calls is cut, in both power-loss models. Afterwards
/// either the repository exists and works, or (no `backuphub.json` survived) running `init`
/// again creates one.
fn init_cuts(encrypted: bool) {
    let probe_env = Env::new();
    prepare_dirs(&probe_env);
    let (recipient, _) = keypair(&probe_env);
    let init_args = |recipient: &str| {
        let mut v: Vec<String> = ["init", "--chunk-size", "64KiB", "--pack-size", "256KiB"]
            .map(String::from)
            .to_vec();
        if encrypted {
            v.extend(["--recipient".to_owned(), recipient.to_owned()]);
        }
        v
    };
    let roots_of = |env: &Env| -> Vec<PathBuf> {
        if encrypted {
            vec![env.repo(), env.path("state")]
        } else {
            vec![env.repo()]
        }
    };
    let run = |env: &Env, recipient: &str, n: u64, mode: Mode| {
        let args = init_args(recipient);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let roots = roots_of(env);
        let roots: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
        run_cut(env.cmd(&args), env.dir.path(), &roots, n, mode)
    };
    let (out, probe) = run(&probe_env, &recipient, 0, Mode::PowerDirsFsynced);
    assert!(out.status.success(), "probe: {}", text(&out));
    assert_eq!(probe.fired, Fired::Exit, "{probe:?}");
    assert!(probe.calls >= 5, "too few calls to cut: {probe:?}");

    let mut no_repository = 0;
    for n in 1..=probe.calls + 1 {
        for mode in [Mode::PowerDirsFsynced, Mode::PowerDirsKept] {
            let env = Env::new();
            prepare_dirs(&env);
            let (recipient, identity) = keypair(&env);
            let identity = encrypted.then(|| identity.to_str().unwrap().to_owned());
            let identity = identity.as_deref();
            let data = env.path("data");
            std::fs::create_dir_all(&data).unwrap();
            std::fs::write(data.join("file"), noise(100_000, n)).unwrap();
            let (out, rep) = run(&env, &recipient, n, mode);
            let what = describe(n, mode, &rep, &out);
            assert_eq!(rep.untracked, 0, "the shim missed changes: {what}");
            assert_ne!(rep.fired, Fired::None, "{what}");
            if rep.fired == Fired::Exit {
                assert!(out.status.success(), "{what}");
            }
            if !env.repo().join("backuphub.json").exists() {
                assert_eq!(rep.fired, Fired::Mid, "a finished init was lost: {what}");
                no_repository += 1;
                // Running init again is all it takes (it starts an interrupted init over).
                let args = init_args(&recipient);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let again = env.run(&args);
                assert!(
                    again.status.success(),
                    "re-running init after a cut init: {what}: {}",
                    text(&again)
                );
            }
            verify_after_cut(&env, &data, identity, true, &what);
        }
    }
    eprintln!(
        "init ({}): {no_repository} cuts left no repository; re-running init recovered each",
        if encrypted { "encrypted" } else { "plain" },
    );
}

#[test]
fn power_loss_during_init() {
    init_cuts(false);
}

#[test]
fn power_loss_during_encrypted_init_with_state_dir() {
    init_cuts(true);
}

/// A run killed between creating a pack prefix directory (`packs/xx`) and fsyncing
/// `packs/` leaves that directory in the page cache only. The next backup finds it and
/// must still make its own packs' names durable before its manifest refers to them.
#[test]
fn power_loss_after_a_killed_run_left_unsynced_pack_directories() {
    let env = Env::new();
    prepare_dirs(&env);
    let data = make_source(&env);
    env.ok(&["init", "--chunk-size", "64KiB", "--pack-size", "256KiB"]);
    let volatile: Vec<PathBuf> = (0..=255u8)
        .map(|b| env.repo().join("packs").join(format!("{b:02x}")))
        .collect();
    for d in &volatile {
        std::fs::create_dir(d).unwrap();
    }
    let repo = env.repo();
    let (out, rep) = run_cut_with(
        env.cmd(&["backup", "--job", "j", data.to_str().unwrap()]),
        env.dir.path(),
        &[&repo],
        0,
        Mode::PowerDirsFsynced,
        &volatile,
    );
    assert!(out.status.success(), "{rep:?}: {}", text(&out));
    assert_eq!(rep.fired, Fired::Exit, "{rep:?}");
    assert_eq!(rep.untracked, 0, "{rep:?}");
    assert_eq!(snapshot_count(&env), 1, "a finished backup was lost");
    verify_after_cut(&env, &data, None, true, "power lost after the backup");
}
