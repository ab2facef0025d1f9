//! Repository locks: files under `locks/`.
//!
//! Backups take a shared lock naming their job (two runs of one job conflict, different
//! jobs do not); prune takes the exclusive lock. A lock is stale, and is broken by whoever
//! finds it, when its process is gone (same host and boot, pid dead or reused) or when it
//! has not been refreshed for `STALE_AFTER`. Holders refresh every `REFRESH_EVERY`, so a
//! stale lock never blocks a schedule for long, whatever killed its owner.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LockInfo {
    pub kind: LockKind,
    pub job: Option<String>,
    pub host: String,
    pub boot_id: String,
    /// The pid namespace (`/proc/self/ns/pid`): pids only compare within one.
    #[serde(default)]
    pub pid_ns: String,
    pub pid: u32,
    /// The process's start time in clock ticks since boot, to detect pid reuse.
    pub pid_start: u64,
    pub created: DateTime<Utc>,
    pub refreshed: DateTime<Utc>,
    /// An exclusive request still waiting for shared holders to finish.
    #[serde(default)]
    pub waiting: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("repository is locked: {0}")]
    Conflict(String),
    #[error("our lock {0} was removed by another process (taken for stale); stopping")]
    Lost(PathBuf),
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl LockInfo {
    fn conflicts_with(&self, other: &LockInfo) -> bool {
        match (self.kind, other.kind) {
            (LockKind::Exclusive, _) | (_, LockKind::Exclusive) => true,
            (LockKind::Shared, LockKind::Shared) => self.job.is_some() && self.job == other.job,
        }
    }

    fn describe(&self) -> String {
        let what = match (&self.kind, &self.job) {
            (LockKind::Exclusive, _) => "prune".to_string(),
            (LockKind::Shared, Some(job)) => format!("a run of job {job:?}"),
            (LockKind::Shared, None) => "a reader".to_string(),
        };
        format!(
            "{what} (pid {} on {}, since {})",
            self.pid,
            self.host,
            self.created.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }

    /// Whether the lock's owner is certainly gone, as seen from `me` at `now`.
    pub fn is_stale(&self, me: &LockInfo, now: DateTime<Utc>) -> bool {
        // Where the owner can be looked up, its liveness decides: a suspended machine or
        // a jumping clock must not break the lock of a backup that is still running.
        let same_pid_space = self.host == me.host
            && !me.boot_id.is_empty()
            && self.boot_id == me.boot_id
            && !me.pid_ns.is_empty()
            && self.pid_ns == me.pid_ns;
        let too_old = now
            .signed_duration_since(self.refreshed)
            .to_std()
            .is_ok_and(|a| a > STALE_AFTER);
        if !same_pid_space {
            return too_old;
        }
        match process_start(self.pid) {
            Some(start) => start != self.pid_start,
            // Under ProtectProc=invisible (the NixOS unit) another user's process has no
            // /proc entry; kill(pid, 0) still tells whether it exists. An existing process
            // whose start time cannot be read falls back to the age rule.
            None if process_exists(self.pid) => too_old,
            None => true,
        }
    }
}

/// The start time of a live process, `None` when there is no such process.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process exists, visible in /proc or not (EPERM means it does).
fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

fn pid_ns() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

fn me(kind: LockKind, job: Option<&str>) -> LockInfo {
    let pid = std::process::id();
    let now = Utc::now();
    LockInfo {
        kind,
        job: job.map(str::to_owned),
        host: hostname(),
        boot_id: boot_id(),
        pid_ns: pid_ns(),
        pid,
        pid_start: process_start(pid).unwrap_or(0),
        created: now,
        refreshed: now,
        waiting: kind == LockKind::Exclusive,
    }
}

/// A held lock; dropping it releases the lock.
pub struct LockGuard {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl LockGuard {
    /// Fails when the lock file is gone (another process took it for stale and broke it):
    /// whatever the lock protected is no longer protected.
    pub fn ensure_held(&self) -> Result<(), LockError> {
        if self.path.exists() {
            Ok(())
        } else {
            Err(LockError::Lost(self.path.clone()))
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.refresher.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn write_lock(dir: &Path, path: &Path, info: &LockInfo) -> Result<(), LockError> {
    let io = |source| LockError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(
        &tmp,
        serde_json::to_vec(info).expect("lock info serializes"),
    )
    .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Takes a lock, waiting up to `wait` for conflicting holders to finish.
pub fn acquire(
    locks_dir: &Path,
    kind: LockKind,
    job: Option<&str>,
    wait: Duration,
) -> Result<LockGuard, LockError> {
    let mut info = me(kind, job);
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).expect("the OS random source is available");
    let path = locks_dir.join(format!("{}.json", hex::encode(nonce)));
    let deadline = std::time::Instant::now() + wait;
    let mut backoff = Duration::from_millis(50);
    loop {
        write_lock(locks_dir, &path, &info)?;
        match find_conflict(locks_dir, &path, &info)? {
            None => break,
            Some(other) => {
                // An exclusive request that only meets shared holders stays in place while
                // it waits: new backups see it and yield, so a stream of back-to-back
                // backups cannot starve prune. Everything else steps back and retries.
                let queue = kind == LockKind::Exclusive && other.kind == LockKind::Shared;
                if !queue || std::time::Instant::now() >= deadline {
                    let _ = std::fs::remove_file(&path);
                }
                if std::time::Instant::now() >= deadline {
                    return Err(LockError::Conflict(format!("held by {}", other.describe())));
                }
                // Jitter keeps two contenders that both backed off from colliding again.
                let mut j = [0u8; 1];
                let _ = getrandom::fill(&mut j);
                std::thread::sleep(backoff + Duration::from_millis(j[0] as u64));
                backoff = (backoff * 2).min(Duration::from_secs(if queue { 1 } else { 2 }));
                info.refreshed = Utc::now();
            }
        }
    }
    if info.waiting {
        info.waiting = false;
        write_lock(locks_dir, &path, &info)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let refresher = {
        let (stop, own, dir) = (stop.clone(), path.clone(), locks_dir.to_owned());
        std::thread::Builder::new()
            .name("lock-refresh".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(REFRESH_EVERY);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if !own.exists() {
                        // Someone broke our lock. Re-creating it would hide that; the
                        // holder's work is no longer protected, so say so loudly.
                        tracing::error!(lock = %own.display(), "our repository lock was removed by another process");
                        break;
                    }
                    info.refreshed = Utc::now();
                    if let Err(e) = write_lock(&dir, &own, &info) {
                        tracing::warn!(error = %e, "cannot refresh repository lock");
                    }
                }
            })
            .map_err(|source| LockError::Io {
                path: path.clone(),
                source,
            })?
    };
    Ok(LockGuard {
        path,
        stop,
        refresher: Some(refresher),
    })
}

fn find_conflict(dir: &Path, own: &Path, me: &LockInfo) -> Result<Option<LockInfo>, LockError> {
    let io = |source| LockError::Io {
        path: dir.to_owned(),
        source,
    };
    let now = Utc::now();
    // An exclusive conflict is reported before any shared one: it decides who yields.
    let mut conflict = None;
    for item in std::fs::read_dir(dir).map_err(io)? {
        let path = item.map_err(io)?.path();
        if path == own || path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue; // released while we looked
        };
        let Ok(other) = serde_json::from_slice::<LockInfo>(&bytes) else {
            // A half-written lock cannot exist (writes are renamed into place), so this
            // is damage; it must not block backups forever.
            tracing::warn!(lock = %path.display(), "removing unreadable lock file");
            let _ = std::fs::remove_file(&path);
            continue;
        };
        if other.is_stale(me, now) {
            tracing::warn!(lock = %path.display(), holder = %other.describe(), "breaking stale lock");
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if me.conflicts_with(&other) {
            if other.kind == LockKind::Exclusive {
                return Ok(Some(other));
            }
            conflict.get_or_insert(other);
        }
    }
    Ok(conflict)
}

/// Whether a prune holds the exclusive lock right now. A backup about to write its
/// manifest checks this: if it is so, the backup's own lock was broken (wrongly taken for
/// stale) and its data may be gone, so it must not claim success.
pub fn exclusive_held(dir: &Path) -> bool {
    let me = me(LockKind::Shared, None);
    let now = Utc::now();
    list(dir)
        .iter()
        .any(|l| l.kind == LockKind::Exclusive && !l.waiting && !l.is_stale(&me, now))
}

/// Lists current lock holders (for status output).
pub fn list(dir: &Path) -> Vec<LockInfo> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_locks_of_different_jobs_coexist_same_job_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let a = acquire(dir.path(), LockKind::Shared, Some("a"), Duration::ZERO).unwrap();
        let _b = acquire(dir.path(), LockKind::Shared, Some("b"), Duration::ZERO).unwrap();
        let err = acquire(dir.path(), LockKind::Shared, Some("a"), Duration::ZERO)
            .err()
            .unwrap();
        assert!(err.to_string().contains("job \"a\""), "{err}");
        assert!(acquire(dir.path(), LockKind::Exclusive, None, Duration::ZERO).is_err());
        drop(a);
        assert!(acquire(dir.path(), LockKind::Shared, Some("a"), Duration::ZERO).is_ok());
    }

    #[test]
    fn dead_owner_and_old_locks_are_broken() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = me(LockKind::Exclusive, None);
        dead.pid = u32::MAX - 1; // no such process
        write_lock(dir.path(), &dir.path().join("dead.json"), &dead).unwrap();
        let mut old = me(LockKind::Exclusive, None);
        old.host = "elsewhere".into();
        old.refreshed = Utc::now() - chrono::Duration::hours(2);
        write_lock(dir.path(), &dir.path().join("old.json"), &old).unwrap();
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();
        let _g = acquire(dir.path(), LockKind::Shared, Some("x"), Duration::ZERO).unwrap();
        assert_eq!(list(dir.path()).len(), 1);
    }

    #[test]
    fn a_live_foreign_lock_is_respected() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = me(LockKind::Exclusive, None);
        other.host = "elsewhere".into();
        write_lock(dir.path(), &dir.path().join("o.json"), &other).unwrap();
        assert!(
            acquire(
                dir.path(),
                LockKind::Shared,
                Some("x"),
                Duration::from_millis(100)
            )
            .is_err()
        );
    }

    #[test]
    fn a_waiting_prune_is_not_starved_by_back_to_back_backups() {
        let dir = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for job in ["a", "b"] {
                let (dir, stop) = (dir.path(), &stop);
                s.spawn(move || {
                    // Overlapping holders: there is never a moment without one, unless
                    // they yield to the waiting exclusive request.
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(_g) =
                            acquire(dir, LockKind::Shared, Some(job), Duration::from_secs(30))
                        {
                            std::thread::sleep(Duration::from_millis(30));
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(100));
            let got = acquire(
                dir.path(),
                LockKind::Exclusive,
                None,
                Duration::from_secs(20),
            );
            stop.store(true, Ordering::Relaxed);
            assert!(got.is_ok(), "{:?}", got.err());
        });
    }

    #[test]
    fn a_held_exclusive_lock_is_seen_a_waiting_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut waiting = me(LockKind::Exclusive, None);
        assert!(waiting.waiting);
        write_lock(dir.path(), &dir.path().join("w.json"), &waiting).unwrap();
        assert!(!exclusive_held(dir.path()));
        waiting.waiting = false;
        write_lock(dir.path(), &dir.path().join("w.json"), &waiting).unwrap();
        assert!(exclusive_held(dir.path()));
        std::fs::remove_file(dir.path().join("w.json")).unwrap();
        let g = acquire(dir.path(), LockKind::Exclusive, None, Duration::ZERO).unwrap();
        assert!(exclusive_held(dir.path()));
        drop(g);
        assert!(!exclusive_held(dir.path()));
    }

    #[test]
    fn own_process_start_is_known() {
        assert!(process_start(std::process::id()).is_some());
        assert!(process_start(u32::MAX - 1).is_none());
        assert!(process_exists(std::process::id()));
        assert!(process_exists(1), "init exists, whoever owns it");
        assert!(!process_exists(u32::MAX - 1));
    }
}
