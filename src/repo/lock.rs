//! Repository locks: files under `locks/`.
//!
//! Backups take a shared lock naming their job (two runs of one job conflict, different
//! jobs do not); prune takes the exclusive lock. A lock is stale, and is broken by whoever
//! finds it, when its process is gone (same host: another boot, or same boot and pid dead
//! or reused) or when it has not been refreshed for `STALE_AFTER`. Holders refresh every
//! `REFRESH_EVERY`, so a stale lock never blocks a schedule for long, whatever killed its
//! owner. A holder that finds its lock broken or cannot refresh it learns so from
//! [`LockGuard::ensure_held`] before it does anything that relies on the lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const REFRESH_EVERY: Duration = Duration::from_secs(5 * 60);
pub const STALE_AFTER: Duration = Duration::from_secs(30 * 60);
/// How far ahead of our clock a lock's `refreshed` time may lie before the writer's
/// clock is taken to be wrong (see [`LockInfo::is_stale`]).
const FUTURE_TOLERANCE: Duration = Duration::from_secs(2 * 30 * 60);

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
    /// An application-specific hash of `/etc/machine-id` (never the id itself, which is
    /// meant to stay private): tells two machines with one host name apart.
    #[serde(default)]
    pub machine: String,
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
    #[error("lock file {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Our lock was broken by another process (taken for stale) or could not be kept
    /// fresh: what it protected is no longer protected.
    #[error("repository lock {path} is no longer ours: {why}")]
    Lost { path: PathBuf, why: String },
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

    /// Whether `self` was written by the holder `me` describes (the same process, the
    /// same acquisition).
    fn same_holder(&self, me: &LockInfo) -> bool {
        self.kind == me.kind
            && self.job == me.job
            && self.host == me.host
            && self.boot_id == me.boot_id
            && self.pid == me.pid
            && self.pid_start == me.pid_start
            && self.created == me.created
    }

    /// Whether the lock's owner is certainly gone, as seen from `me` at `now`. `written`
    /// is the lock file's modification time, as stamped by the file system that holds the
    /// repository.
    pub fn is_stale(
        &self,
        me: &LockInfo,
        now: DateTime<Utc>,
        written: Option<DateTime<Utc>>,
    ) -> bool {
        // Host names repeat (every Pi starts as "raspberrypi"); where both sides know
        // their machine, it must match too.
        let same_host = self.host == me.host
            && (self.machine.is_empty() || me.machine.is_empty() || self.machine == me.machine);
        let boots_known = !me.boot_id.is_empty() && !self.boot_id.is_empty();
        if same_host && boots_known && self.boot_id != me.boot_id {
            // The machine has rebooted since (a power cut): no process of an earlier boot
            // is alive, so the catch-up run need not wait out the age rule.
            return true;
        }
        // Where the owner can be looked up, its liveness decides: a suspended machine or
        // a jumping clock must not break the lock of a backup that is still running.
        let same_pid_space = same_host
            && boots_known
            && self.boot_id == me.boot_id
            && !me.pid_ns.is_empty()
            && self.pid_ns == me.pid_ns;
        let too_old = self.too_old(now, written);
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

    /// The age rule, for holders whose liveness cannot be looked up.
    ///
    /// Its times come from the holder's clock. Hosts whose clocks differ by more than
    /// `STALE_AFTER` already break each other's live locks under this rule, so it needs
    /// clocks that roughly agree. A `refreshed` time far beyond that in our future says
    /// the writer's clock was wrong, and left as it is such a lock would block every
    /// backup until our clock caught up (years, for a machine whose clock jumped to
    /// 2038). Its age is then taken from the file's modification time, which the file
    /// system holding the repository stamps on every refresh (each one writes a new
    /// file): for a local disk that is our own clock. When that time is far ahead too,
    /// nothing can date the lock, and its writer's clock is outside what the protocol
    /// can work with: the lock counts as stale.
    fn too_old(&self, now: DateTime<Utc>, written: Option<DateTime<Utc>>) -> bool {
        let age = |t: DateTime<Utc>| {
            now.signed_duration_since(t)
                .to_std()
                .is_ok_and(|a| a > STALE_AFTER)
        };
        let far_ahead = |t: DateTime<Utc>| {
            t.signed_duration_since(now)
                .to_std()
                .is_ok_and(|d| d > FUTURE_TOLERANCE)
        };
        if !far_ahead(self.refreshed) {
            return age(self.refreshed);
        }
        match written {
            Some(w) if !far_ahead(w) => age(w),
            _ => true,
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

fn machine() -> String {
    // machine-id(5): "should be considered confidential"; applications that need a
    // stable identifier are to use a hash of it under their own key.
    match std::fs::read_to_string("/etc/machine-id") {
        Ok(id) if !id.trim().is_empty() => {
            let key = blake3::derive_key("backuphub lock machine 1", id.trim().as_bytes());
            hex::encode(&key[..16])
        }
        _ => String::new(),
    }
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
        machine: machine(),
        boot_id: boot_id(),
        pid_ns: pid_ns(),
        pid,
        pid_start: process_start(pid).unwrap_or(0),
        created: now,
        refreshed: now,
        waiting: kind == LockKind::Exclusive,
    }
}

/// A lock file of ours and what we last wrote into it.
struct Held {
    dir: PathBuf,
    path: PathBuf,
    info: Mutex<LockInfo>,
    /// Why the lock can no longer be trusted, once a refresh found out. Never cleared: a
    /// lock that was lost for a moment protected nothing during that moment.
    lost: Mutex<Option<String>>,
}

impl Held {
    /// Whether the file still holds what we wrote.
    fn check_ours(&self, info: &LockInfo) -> Result<(), String> {
        match std::fs::read(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err("another process removed it (taken for stale?)".into())
            }
            Err(e) => Err(format!("cannot read it back: {e}")),
            Ok(bytes) => match serde_json::from_slice::<LockInfo>(&bytes) {
                Ok(other) if other.same_holder(info) => Ok(()),
                Ok(other) => Err(format!("it now names {}", other.describe())),
                Err(e) => Err(format!("its content is damaged: {e}")),
            },
        }
    }

    fn refresh(&self) -> Result<(), LockError> {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        self.lost()?;
        // Never re-create a lock someone broke: that would hide that our work went
        // unprotected for a while.
        let result = self.check_ours(&info).and_then(|()| {
            info.refreshed = Utc::now();
            write_lock(&self.dir, &self.path, &info).map_err(|e| format!("cannot refresh: {e}"))
        });
        result.map_err(|why| {
            *self.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
            LockError::Lost {
                path: self.path.clone(),
                why,
            }
        })
    }

    fn lost(&self) -> Result<(), LockError> {
        match &*self.lost.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(why) => Err(LockError::Lost {
                path: self.path.clone(),
                why: why.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// A held lock; dropping it releases the lock.
pub struct LockGuard {
    kind: LockKind,
    locks_dir: PathBuf,
    /// `None` for a reader on a disk where no lock file can be written (read-only or
    /// full): it holds nothing, and can only check that no prune has started.
    held: Option<Arc<Held>>,
    stop: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl LockGuard {
    pub fn kind(&self) -> LockKind {
        self.kind
    }

    /// Whether a lock file protects this holder (false for a reader of an unwritable
    /// disk).
    pub fn has_file(&self) -> bool {
        self.held.is_some()
    }

    /// Fails when the lock no longer protects us: the refresher could not refresh it,
    /// or the file is gone or no longer ours (someone took it for stale and broke it).
    /// Cheap (a read of one small file): call it before each step that relies on the
    /// lock, such as writing a manifest or deleting data.
    pub fn ensure_held(&self) -> Result<(), LockError> {
        let Some(held) = &self.held else {
            return if exclusive_held(&self.locks_dir) {
                Err(LockError::Lost {
                    path: self.locks_dir.clone(),
                    why: "a prune took the repository while we read it without a lock file".into(),
                })
            } else {
                Ok(())
            };
        };
        held.lost()?;
        let info = held.info.lock().unwrap_or_else(|p| p.into_inner());
        held.check_ours(&info).map_err(|why| LockError::Lost {
            path: held.path.clone(),
            why,
        })
    }

    /// Refreshes the lock now, as the background refresher does every `REFRESH_EVERY`.
    /// A failure is remembered: `ensure_held` fails from then on.
    pub fn refresh(&self) -> Result<(), LockError> {
        match &self.held {
            Some(held) => held.refresh(),
            None => self.ensure_held(),
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
        if let Some(held) = &self.held {
            let _ = std::fs::remove_file(&held.path);
        }
    }
}

fn write_lock(dir: &Path, path: &Path, info: &LockInfo) -> Result<(), LockError> {
    let io = |error| LockError::Io {
        path: path.to_owned(),
        error,
    };
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    let result = std::fs::write(
        &tmp,
        serde_json::to_vec(info).expect("lock info serializes"),
    )
    .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        // A full disk creates the file and then fails to write it: leave no empty lock
        // files behind, one per attempt.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Whether writing failed because the disk cannot take a lock file at all (read-only,
/// full, or not ours to write), as opposed to a fault.
fn is_unwritable(e: &LockError) -> Option<&'static str> {
    let LockError::Io { error, .. } = e else {
        return None;
    };
    if super::is_disk_full(error) {
        return Some("full");
    }
    match rustix::io::Errno::from_io_error(error)? {
        rustix::io::Errno::ROFS => Some("read-only"),
        rustix::io::Errno::ACCESS | rustix::io::Errno::PERM => Some("not writable by us"),
        _ => None,
    }
}

fn jittered(backoff: Duration) -> Duration {
    // Jitter keeps two contenders that both backed off from colliding again.
    let mut j = [0u8; 1];
    let _ = getrandom::fill(&mut j);
    backoff + Duration::from_millis(j[0] as u64)
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
                std::thread::sleep(jittered(backoff));
                backoff = (backoff * 2).min(Duration::from_secs(if queue { 1 } else { 2 }));
                info.refreshed = Utc::now();
            }
        }
    }
    if info.waiting {
        info.waiting = false;
        if let Err(e) = write_lock(locks_dir, &path, &info) {
            // A waiting request left behind would hold off every backup while this
            // process lives (a daemon: for good).
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    }
    let held = Arc::new(Held {
        dir: locks_dir.to_owned(),
        path: path.clone(),
        info: Mutex::new(info),
        lost: Mutex::new(None),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let refresher = {
        let (stop, held) = (stop.clone(), held.clone());
        std::thread::Builder::new()
            .name("lock-refresh".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(REFRESH_EVERY);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    // The failure is kept for `ensure_held`, which turns it into the
                    // run's error; the log says when it happened.
                    if let Err(e) = held.refresh() {
                        tracing::error!(error = %e, "repository lock lost");
                        break;
                    }
                }
            })
            .map_err(|error| {
                let _ = std::fs::remove_file(&path);
                LockError::Io {
                    path: path.clone(),
                    error,
                }
            })?
    };
    Ok(LockGuard {
        kind,
        locks_dir: locks_dir.to_owned(),
        held: Some(held),
        stop,
        refresher: Some(refresher),
    })
}

/// Takes a shared lock for reading (or for `forget`, which only removes manifests). On a
/// disk that cannot take a lock file — read-only, or full: just when a restore is needed
/// most — it proceeds without one once no prune holds or awaits the repository. A
/// read-only disk cannot be pruned meanwhile; on a full one a prune could start later,
/// which a warning says.
pub fn acquire_reader(
    locks_dir: &Path,
    job: Option<&str>,
    wait: Duration,
) -> Result<LockGuard, LockError> {
    let e = match acquire(locks_dir, LockKind::Shared, job, wait) {
        Ok(g) => return Ok(g),
        Err(e) => e,
    };
    let Some(why) = is_unwritable(&e) else {
        return Err(e);
    };
    let info = me(LockKind::Shared, job);
    let deadline = std::time::Instant::now() + wait;
    let mut backoff = Duration::from_millis(50);
    // Nothing of ours is in the directory: no file name can match `own`.
    let own = locks_dir.join(".none");
    while let Some(other) = find_conflict(locks_dir, &own, &info)? {
        if std::time::Instant::now() >= deadline {
            return Err(LockError::Conflict(format!("held by {}", other.describe())));
        }
        std::thread::sleep(jittered(backoff));
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    if why == "read-only" {
        tracing::info!(locks = %locks_dir.display(), "repository is read-only: reading without a lock file");
    } else {
        tracing::warn!(locks = %locks_dir.display(), error = %e, "repository is {why}: working without a lock file, so a prune started meanwhile is not held off; free space (forget, then prune) soon");
    }
    Ok(LockGuard {
        kind: LockKind::Shared,
        locks_dir: locks_dir.to_owned(),
        held: None,
        stop: Arc::new(AtomicBool::new(true)),
        refresher: None,
    })
}

fn modified(md: &std::fs::Metadata) -> Option<DateTime<Utc>> {
    md.modified().ok().map(DateTime::<Utc>::from)
}

fn find_conflict(dir: &Path, own: &Path, me: &LockInfo) -> Result<Option<LockInfo>, LockError> {
    let io = |error| LockError::Io {
        path: dir.to_owned(),
        error,
    };
    let now = Utc::now();
    // An exclusive conflict is reported before any shared one: it decides who yields.
    let mut conflict = None;
    for item in std::fs::read_dir(dir).map_err(io)? {
        let path = item.map_err(io)?.path();
        if path == own {
            continue;
        }
        if path.extension().is_none_or(|e| e != "json") {
            remove_abandoned_tmp(&path, now);
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
        let written = std::fs::metadata(&path).ok().as_ref().and_then(modified);
        if other.is_stale(me, now, written) {
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

/// Removes a `.….tmp` file that earlier versions left behind on every failed write.
/// One being written right now is seconds old; these are kept.
fn remove_abandoned_tmp(path: &Path, now: DateTime<Utc>) {
    let is_tmp = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"));
    let old = std::fs::symlink_metadata(path)
        .ok()
        .as_ref()
        .and_then(modified)
        .and_then(|t| now.signed_duration_since(t).to_std().ok())
        .is_some_and(|age| age > STALE_AFTER);
    if is_tmp && old {
        let _ = std::fs::remove_file(path);
    }
}

/// Whether a prune holds the exclusive lock right now: what a reader without a lock file
/// (on a read-only or full disk) checks in [`LockGuard::ensure_held`].
fn exclusive_held(dir: &Path) -> bool {
    let me = me(LockKind::Shared, None);
    let now = Utc::now();
    entries(dir).iter().any(|(l, written)| {
        l.kind == LockKind::Exclusive && !l.waiting && !l.is_stale(&me, now, *written)
    })
}

fn entries(dir: &Path) -> Vec<(LockInfo, Option<DateTime<Utc>>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let info = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some((info, e.metadata().ok().as_ref().and_then(modified)))
        })
        .collect()
}

/// Lists current lock holders (for status output).
pub fn list(dir: &Path) -> Vec<LockInfo> {
    entries(dir).into_iter().map(|(l, _)| l).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_lock_file(dir: &Path) -> PathBuf {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files.pop().unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

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
    fn a_lock_of_an_earlier_boot_of_this_machine_is_dead_at_once() {
        let now = Utc::now();
        let me = me(LockKind::Shared, Some("j"));
        assert!(!me.boot_id.is_empty(), "this test needs a boot id");
        // Our own pid: alive right now, which must not matter for another boot.
        let mut before_power_cut = me.clone();
        before_power_cut.kind = LockKind::Exclusive;
        before_power_cut.boot_id = "an-earlier-boot".into();
        before_power_cut.refreshed = now - chrono::Duration::minutes(1);
        assert!(before_power_cut.is_stale(&me, now, Some(now)));
        // Another machine that happens to share the host name is not us rebooted.
        let mut namesake = before_power_cut.clone();
        namesake.machine = "another-machine".into();
        if !me.machine.is_empty() {
            assert!(!namesake.is_stale(&me, now, Some(now)));
        }
        // The same boot: liveness decides, as before.
        let mut alive = before_power_cut.clone();
        alive.boot_id = me.boot_id.clone();
        assert!(!alive.is_stale(&me, now, Some(now)));
    }

    #[test]
    fn a_lock_from_a_clock_far_ahead_is_dated_by_its_file() {
        let now = Utc::now();
        let me = me(LockKind::Shared, Some("j"));
        let mut other = me.clone();
        other.host = "elsewhere".into();
        other.kind = LockKind::Exclusive;
        let minutes = chrono::Duration::minutes;
        // A little ahead: ordinary clock drift, the lock counts as fresh.
        other.refreshed = now + minutes(20);
        assert!(!other.is_stale(&me, now, Some(now)));
        // Years ahead: the file's time decides.
        other.refreshed = now + chrono::Duration::days(3650);
        assert!(
            !other.is_stale(&me, now, Some(now - minutes(1))),
            "just written"
        );
        assert!(
            other.is_stale(&me, now, Some(now - minutes(31))),
            "not refreshed"
        );
        // Nothing can date it: stale rather than blocking every backup for years.
        assert!(other.is_stale(&me, now, Some(now + chrono::Duration::days(3650))));
        assert!(other.is_stale(&me, now, None));
        // The ordinary age rule is unchanged.
        other.refreshed = now - minutes(31);
        assert!(other.is_stale(&me, now, Some(now)));
        other.refreshed = now - minutes(29);
        assert!(!other.is_stale(&me, now, Some(now - minutes(29))));
    }

    #[test]
    fn a_broken_lock_is_noticed_and_not_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let g = acquire(dir.path(), LockKind::Exclusive, None, Duration::ZERO).unwrap();
        g.ensure_held().unwrap();
        g.refresh().unwrap();
        let path = own_lock_file(dir.path());
        std::fs::remove_file(&path).unwrap();
        let err = g.ensure_held().unwrap_err();
        assert!(matches!(err, LockError::Lost { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(g.refresh().is_err());
        assert!(
            !path.exists(),
            "a refresh must not hide that the lock was broken"
        );

        // Broken and taken by someone else under the same name: not ours either.
        let g = acquire(dir.path(), LockKind::Shared, Some("j"), Duration::ZERO).unwrap();
        let path = own_lock_file(dir.path());
        let mut other = me(LockKind::Shared, Some("j"));
        other.pid = 1;
        write_lock(dir.path(), &path, &other).unwrap();
        let err = g.ensure_held().unwrap_err();
        assert!(err.to_string().contains("pid 1"), "{err}");
    }

    #[test]
    fn a_failed_refresh_is_an_error_for_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let g = acquire(dir.path(), LockKind::Shared, Some("j"), Duration::ZERO).unwrap();
        let path = own_lock_file(dir.path());
        // The refresh's temporary file cannot be created: the write fails.
        let tmp = dir.path().join(format!(
            ".{}.tmp",
            path.file_name().unwrap().to_string_lossy()
        ));
        std::fs::create_dir(&tmp).unwrap();
        let err = g.refresh().unwrap_err();
        assert!(err.to_string().contains("cannot refresh"), "{err}");
        std::fs::remove_dir(&tmp).unwrap();
        // The file is still there and still ours, but it went unrefreshed: that stays an
        // error for whoever relies on the lock.
        assert!(path.exists());
        assert!(g.ensure_held().is_err());
    }

    #[test]
    fn failed_lock_writes_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        // The destination is a non-empty directory: the rename fails.
        std::fs::create_dir_all(dir.path().join("x.json/inside")).unwrap();
        let info = me(LockKind::Shared, None);
        assert!(write_lock(dir.path(), &dir.path().join("x.json"), &info).is_err());
        assert_eq!(names(dir.path()), ["x.json"]);

        // Left by earlier versions: an old one goes, a fresh one may be in use.
        std::fs::remove_dir_all(dir.path().join("x.json")).unwrap();
        for n in [".old.json.tmp", ".new.json.tmp"] {
            std::fs::write(dir.path().join(n), b"").unwrap();
        }
        let hours_ago = filetime::FileTime::from_unix_time(Utc::now().timestamp() - 7200, 0);
        filetime::set_file_mtime(dir.path().join(".old.json.tmp"), hours_ago).unwrap();
        let g = acquire(dir.path(), LockKind::Shared, None, Duration::ZERO).unwrap();
        let own = own_lock_file(dir.path());
        assert_eq!(
            names(dir.path()),
            [
                ".new.json.tmp".to_string(),
                own.file_name().unwrap().to_string_lossy().into_owned()
            ]
        );
        drop(g);
    }

    #[test]
    fn a_waiting_prune_is_not_starved_by_back_to_back_backups() {
        let dir = tempfile::tempdir().unwrap();
        let backup = acquire(dir.path(), LockKind::Shared, Some("a"), Duration::ZERO).unwrap();
        std::thread::scope(|s| {
            let prune = s.spawn(|| {
                acquire(
                    dir.path(),
                    LockKind::Exclusive,
                    None,
                    Duration::from_secs(600),
                )
            });
            // Until the prune's request is on disk (it is written before any waiting).
            while !list(dir.path())
                .iter()
                .any(|l| l.kind == LockKind::Exclusive && l.waiting)
            {
                std::thread::yield_now();
            }
            // While it waits, new backups yield to it instead of overtaking it forever.
            let err = acquire(dir.path(), LockKind::Shared, Some("b"), Duration::ZERO)
                .err()
                .expect("a backup overtook the waiting prune");
            assert!(err.to_string().contains("prune"), "{err}");
            drop(backup);
            let got = prune.join().unwrap();
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
