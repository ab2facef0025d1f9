//! Drives backuphub under the LD_PRELOAD shim in `shim.c`, which cuts the N-th mutating
//! file-system call below chosen directories: by SIGKILL, or by a simulated power loss
//! that drops everything not yet fsynced. Counting calls instead of waiting makes every
//! cut land where it was aimed, however busy the machine is.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// Compiles the shim once per test binary (with `$CC` or `cc`), into a directory that lives
/// as long as the process.
pub fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let out = dir.join("powerloss.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/powerloss/shim.c");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let res = Command::new(&cc)
            .args(["-O1", "-shared", "-fPIC", "-o"])
            .arg(&out)
            .arg(&src)
            .args(["-ldl", "-lpthread"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
        assert!(
            res.status.success(),
            "compiling {}: {}",
            src.display(),
            String::from_utf8_lossy(&res.stderr)
        );
        out
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// SIGKILL at the cut: the page cache survives.
    Kill,
    /// Power loss, undoing directory changes that were not fsynced.
    PowerDirsFsynced,
    /// Power loss, keeping every directory change but not unsynced file contents.
    PowerDirsKept,
}

impl Mode {
    /// Alternates the two power-loss models, so each sees every part of a run.
    pub fn power(i: usize) -> Mode {
        if i.is_multiple_of(2) {
            Mode::PowerDirsFsynced
        } else {
            Mode::PowerDirsKept
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fired {
    /// At the N-th call, while the command ran.
    Mid,
    /// Power lost right after the command finished (it made fewer than N calls).
    Exit,
    /// No cut: the command ran to its end.
    None,
}

/// What the shim saw in one run.
#[derive(Debug)]
pub struct Report {
    pub calls: u64,
    pub fired: Fired,
    pub status: i32,
    pub untracked: u64,
}

/// One run of `cmd` with the shim following `roots`, cut at call `cut` (0: never during
/// the run; with a power mode, power is then lost right after the command exits).
pub fn run_cut(
    cmd: Command,
    scratch: &Path,
    roots: &[&Path],
    cut: u64,
    mode: Mode,
) -> (Output, Report) {
    run_cut_with(cmd, scratch, roots, cut, mode, &[])
}

/// `run_cut`, where the entries `volatile` exist but their names are not durable yet (what
/// a run killed between a mkdir and the fsync of its parent leaves in the page cache).
pub fn run_cut_with(
    mut cmd: Command,
    scratch: &Path,
    roots: &[&Path],
    cut: u64,
    mode: Mode,
    volatile: &[PathBuf],
) -> (Output, Report) {
    let shadow = scratch.join("powerloss-shadow");
    let report = scratch.join("powerloss-report");
    let _ = std::fs::remove_dir_all(&shadow);
    let _ = std::fs::remove_file(&report);
    std::fs::create_dir_all(&shadow).unwrap();
    let roots: Vec<String> = roots
        .iter()
        .map(|r| {
            let r = r.canonicalize().unwrap();
            let s = r.to_str().unwrap().to_owned();
            assert!(!s.contains(':'), "root {s} cannot be listed");
            s
        })
        .collect();
    cmd.env("LD_PRELOAD", shim())
        .env("POWERLOSS_ROOTS", roots.join(":"))
        .env("POWERLOSS_SHADOW", &shadow)
        .env("POWERLOSS_REPORT", &report)
        .env("POWERLOSS_CUT", cut.to_string())
        .env(
            "POWERLOSS_MODE",
            if mode == Mode::Kill { "kill" } else { "power" },
        )
        .env(
            "POWERLOSS_METADATA",
            if mode == Mode::PowerDirsKept {
                "all"
            } else {
                "fsynced"
            },
        )
        .env(
            "POWERLOSS_VOLATILE",
            volatile
                .iter()
                .map(|p| p.canonicalize().unwrap().to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join(":"),
        )
        .env(
            "POWERLOSS_AT_EXIT",
            if mode == Mode::Kill { "0" } else { "1" },
        )
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    let line = std::fs::read_to_string(&report).unwrap_or_else(|e| {
        panic!(
            "the shim wrote no report ({e}); exit {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_dir_all(&shadow);
    (out, parse_report(&line))
}

fn parse_report(line: &str) -> Report {
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {k} in shim report {line:?}"))
    };
    Report {
        calls: field("calls").parse().unwrap(),
        fired: match field("fired") {
            "mid" => Fired::Mid,
            "exit" => Fired::Exit,
            "none" => Fired::None,
            other => panic!("shim report fired={other}"),
        },
        status: field("status").parse().unwrap(),
        untracked: field("untracked").parse().unwrap(),
    }
}

/// `count` cut points spread over `1..=calls`: one from each of `count` equal strata, at a
/// position drawn from `seed`, so that every part of a run is hit and reruns hit the same.
pub fn cut_points(calls: u64, count: usize, seed: u64) -> Vec<u64> {
    assert!(calls > 0, "the probe run made no mutating call");
    let mut x = seed | 1;
    (0..count as u64)
        .map(|k| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let lo = k * calls / count as u64;
            let hi = ((k + 1) * calls / count as u64).max(lo + 1);
            1 + lo + x % (hi - lo)
        })
        .collect()
}

/// Copies a directory tree (files and directories only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Makes `dir` an exact copy of `from`, keeping `dir` itself (a mount point).
pub fn reset_tree(dir: &Path, from: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    copy_tree(from, dir);
}
