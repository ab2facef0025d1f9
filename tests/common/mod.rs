//! Shared helpers for the integration tests: run the real binary in scratch directories.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// A command for the binary with this environment's state dir and repository.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_backuphub"));
        c.args(args)
            .env("BACKUPHUB_STATE_DIR", self.path("state"))
            .env("BACKUPHUB_REPO", self.repo())
            .env_remove("BACKUPHUB_IDENTITY")
            .env("NO_COLOR", "1");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs and insists on exit code 0.
    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {}", text(&out));
        out
    }

    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Deterministic pseudo-random bytes.
pub fn noise(n: usize, mut x: u64) -> Vec<u8> {
    x |= 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Total size of all files below `dir`.
pub fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        total += if md.is_dir() { du(&e.path()) } else { md.len() };
    }
    total
}

/// Compares two trees: names, kinds, content, permissions, mtimes and link targets.
pub fn assert_same_tree(a: &Path, b: &Path) {
    use std::os::unix::fs::MetadataExt;
    let mut names_a: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let mut names_b: Vec<_> = std::fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(
        names_a,
        names_b,
        "entries of {} vs {}",
        a.display(),
        b.display()
    );
    for n in names_a {
        let (pa, pb) = (a.join(&n), b.join(&n));
        let (ma, mb) = (
            pa.symlink_metadata().unwrap(),
            pb.symlink_metadata().unwrap(),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{}", pa.display());
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&pa).unwrap(),
                std::fs::read_link(&pb).unwrap()
            );
            continue;
        }
        assert_eq!(
            ma.mode() & 0o7777,
            mb.mode() & 0o7777,
            "mode of {}",
            pa.display()
        );
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "mtime of {}",
            pa.display()
        );
        if ma.is_dir() {
            assert_same_tree(&pa, &pb);
        } else {
            assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "content of {}",
                pa.display()
            );
        }
    }
}

/// Where a backed-up absolute path lands below a restore target.
pub fn restored(target: &Path, original: &Path) -> PathBuf {
    target.join(original.strip_prefix("/").unwrap())
}

/// A repository with small chunks (min avg/4, max 8×avg) and small packs, so that tests
/// with a few MiB of data still exercise many chunks and packs.
pub fn test_repo(dir: &Path, avg_chunk: u32, pack_size: u64) -> backuphub::repo::Repository {
    use backuphub::chunker::ChunkerParams;
    use backuphub::repo::{InitOptions, OpenOptions, Repository};
    let init = InitOptions {
        chunker: ChunkerParams {
            min_size: avg_chunk / 4,
            avg_size: avg_chunk,
            max_size: avg_chunk * 8,
        },
        pack_size,
        ..Default::default()
    };
    let opts = OpenOptions {
        identity: None,
        state_dir: dir.join("state"),
    };
    Repository::init(&dir.join("repo"), &opts, &init).unwrap()
}

/// One backup of `source`, through the library, insisting that it succeeds.
pub fn archive_source(
    repo: &backuphub::repo::Repository,
    job: &str,
    source: &mut dyn backuphub::source::Source,
) -> backuphub::repo::snapshot::Snapshot {
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let progress = backuphub::archiver::Progress::default();
    backuphub::archiver::archive(repo, job, source, &progress, &cancel, &|| Ok(()))
        .unwrap()
        .1
}

/// One backup of local paths.
pub fn archive_paths(
    repo: &backuphub::repo::Repository,
    job: &str,
    paths: &[PathBuf],
) -> backuphub::repo::snapshot::Snapshot {
    let mut src = backuphub::source::local::LocalSource::new(paths, &[]).unwrap();
    archive_source(repo, job, &mut src)
}

/// One path's state: path, mode (with the kind), uid, gid, mtime (s, ns), and content or
/// link target.
pub type PathState = (PathBuf, u32, u32, u32, i64, i64, Vec<u8>);

/// Everything about a tree that a restore must not touch when it lies outside the target,
/// per path, the root included.
pub fn tree_state(root: &Path) -> Vec<PathState> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let md = p.symlink_metadata().unwrap();
        let content = if md.file_type().is_symlink() {
            std::fs::read_link(&p)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec()
        } else if md.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            todo.extend(names);
            Vec::new()
        } else {
            std::fs::read(&p).unwrap()
        };
        out.push((
            p,
            md.mode(),
            md.uid(),
            md.gid(),
            md.mtime(),
            md.mtime_nsec(),
            content,
        ));
    }
    out
}

/// Flips bytes in the middle of one stored blob, wherever its pack is: bit rot.
pub fn damage_blob(repo_dir: &Path, id: &backuphub::repo::id::Id) {
    use std::os::unix::fs::FileExt;
    let mut todo = vec![repo_dir.join("packs")];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
                continue;
            }
            let header = backuphub::repo::pack::read_header(&p).unwrap();
            if let Some(b) = header.iter().find(|b| b.id == *id) {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .unwrap();
                let n = b.length.clamp(1, 8);
                let mut buf = vec![0u8; n as usize];
                let at = b.offset + u64::from((b.length - n) / 2);
                f.read_exact_at(&mut buf, at).unwrap();
                for x in &mut buf {
                    *x ^= 0x5a;
                }
                f.write_all_at(&buf, at).unwrap();
                return;
            }
        }
    }
    panic!("blob {id} is in no pack");
}

/// A fresh age key pair: the public key, and the identity written to `identity.txt`.
pub fn keypair(env: &Env) -> (String, PathBuf) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let key = env.path("identity.txt");
    std::fs::write(&key, format!("{}\n", id.to_string().expose_secret())).unwrap();
    (id.to_public().to_string(), key)
}

/// Every file below `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p)
        }
    }
    out
}

/// Flips 8 bytes near the start of the oldest pack: its first blob, which may be a data
/// chunk or a tree blob (packs written in the same instant tie on mtime). For damage to a
/// particular file, use [`damage_first_chunk_of`].
pub fn damage_oldest_pack(env: &Env) {
    let mut packs = walk(&env.repo().join("packs"));
    packs.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    let mut bytes = std::fs::read(&packs[0]).unwrap();
    for b in &mut bytes[100..108] {
        *b ^= 0x5a;
    }
    std::fs::write(&packs[0], &bytes).unwrap();
}

/// Flips bytes in the first data chunk of the file whose path ends with `suffix` in the
/// newest snapshot (read through a second handle with its own index, so this works beside
/// a running daemon).
pub fn damage_first_chunk_of(env: &Env, suffix: &str) {
    let opts = backuphub::repo::OpenOptions {
        identity: None,
        state_dir: env.path("test-state"),
    };
    let repo = backuphub::repo::Repository::open(&env.repo(), &opts).unwrap();
    let snap = repo.resolve_snapshot("latest").unwrap();
    let entry = repo
        .entries(&snap.snapshot)
        .map(Result::unwrap)
        .find(|e| e.path.display().ends_with(suffix))
        .unwrap_or_else(|| panic!("no file ending in {suffix}"));
    damage_blob(&env.repo(), &entry.chunks[0]);
}

/// A snapshot's tree blob ids in order (format 2: root → refs blobs → tree ids).
pub fn tree_blobs(
    repo: &backuphub::repo::Repository,
    snap: &backuphub::repo::snapshot::Snapshot,
) -> Vec<backuphub::repo::id::Id> {
    repo.snapshot_blobs(snap, |_| false)
        .unwrap()
        .map(|r| r.unwrap().tree)
        .collect()
}
pub mod daemon;
pub mod kube;
/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads the port a server process prints as its first line on its piped stdout.
pub fn printed_port(child: &mut std::process::Child) -> u16 {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("expected a port, got {line:?}"))
}

pub mod pg;
pub mod s3;
