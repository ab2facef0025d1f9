//! Restore drills: proof, every week, that the latest complete snapshot restores.
//!
//! A drill starts a throwaway PostgreSQL on the Pi (initdb into a private directory,
//! unix socket only, no TCP port, fsync off: nothing in it needs to survive), restores
//! the job's latest complete snapshot into it with `restore-postgres`'s code, requires
//! every database to hold rows (unless allowed empty), runs the configured checks, and
//! tears everything down — on success, failure, timeout or cancellation alike. A drill
//! that a SIGKILL cut short leaves a directory named with its pid; the next drill
//! removes it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::client::{ConnParams, Tools, Version, error_text, pick, probe};
use super::restore::{DbReport, RestoreOptions, restore_snapshot, sleep_unless};
use super::{DrillConfig, PgError, PostgresJob, SslMode, meta};
use crate::redact::Redactor;
use crate::repo::Repository;
use crate::repo::snapshot::SnapshotStatus;

/// The superuser of the throwaway cluster.
const DRILL_USER: &str = "backuphub_drill";
/// Work directories are named `<prefix><job>-<pid>-<random>`.
const DIR_PREFIX: &str = "backuphub-drill-";

/// One check's outcome.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckResult {
    pub database: String,
    pub query: String,
    pub expect: String,
    pub ok: bool,
    /// What was found, or why the check failed.
    pub detail: String,
}

/// A drill's outcome: kept in the job's state, shown by the status API and `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrillResult {
    pub time: DateTime<Utc>,
    pub ok: bool,
    pub duration_seconds: f64,
    /// The snapshot restored (id), if one was found.
    pub snapshot: Option<String>,
    pub restored_bytes: u64,
    pub databases: Vec<DrillDatabase>,
    pub checks: Vec<CheckResult>,
    /// Why the drill failed (secrets redacted), or `None`.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DrillDatabase {
    pub database: String,
    pub ok: bool,
    pub tables: u64,
    pub rows: u64,
    pub error: Option<String>,
}

impl From<&DbReport> for DrillDatabase {
    fn from(r: &DbReport) -> Self {
        DrillDatabase {
            database: r.database.clone(),
            ok: r.ok,
            tables: r.tables,
            rows: r.rows,
            error: r.error.clone(),
        }
    }
}

/// Runs a drill of `job_name`'s latest complete snapshot. Never panics on bad input;
/// every failure is in the result.
pub fn run(
    repo: &Repository,
    job_name: &str,
    job: &PostgresJob,
    drill: &DrillConfig,
    redactor: &Redactor,
    cancel: &AtomicBool,
) -> DrillResult {
    let started = Instant::now();
    let time = Utc::now();
    let mut result = DrillResult {
        time,
        ok: false,
        duration_seconds: 0.0,
        snapshot: None,
        restored_bytes: 0,
        databases: Vec::new(),
        checks: Vec::new(),
        error: None,
    };
    let outcome = drill_inner(repo, job_name, job, drill, redactor, cancel, &mut result);
    result.duration_seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => {
            let failed_check = result.checks.iter().find(|c| !c.ok);
            let failed_db = result.databases.iter().find(|d| !d.ok);
            result.error = match (failed_db, failed_check) {
                (Some(d), _) => Some(format!(
                    "database {:?}: {}",
                    d.database,
                    d.error.as_deref().unwrap_or("failed")
                )),
                (None, Some(c)) => Some(format!(
                    "check on {:?} ({}) failed: {}",
                    c.database, c.query, c.detail
                )),
                (None, None) => None,
            };
            result.ok = result.error.is_none();
        }
        Err(e) => result.error = Some(redactor.redact(&e.to_string())),
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn drill_inner(
    repo: &Repository,
    job_name: &str,
    job: &PostgresJob,
    drill: &DrillConfig,
    redactor: &Redactor,
    outer_cancel: &AtomicBool,
    result: &mut DrillResult,
) -> Result<(), PgError> {
    let snap = repo
        .snapshots()?
        .into_iter()
        .filter(|s| s.snapshot.job == job_name && s.snapshot.status == SnapshotStatus::Complete)
        .max_by_key(|s| s.snapshot.time)
        .ok_or_else(|| {
            PgError::Failed(format!("job {job_name} has no complete snapshot to drill"))
        })?;
    result.snapshot = Some(snap.id.to_hex());
    // The version the dumps came from: the throwaway server must be at least as new.
    let (_, dbs) = super::restore::dump_entries(repo, &snap.snapshot, &[])?;
    let dumped = dbs
        .iter()
        .filter_map(|e| e.meta.get(meta::SERVER_VERSION))
        .filter_map(|v| v.split('.').next()?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    let tools = server_tools(drill, job, dumped)?;
    tracing::info!(snapshot = %snap.id.short(), server = %tools.describe(), "restore drill starting");

    // Timeout and cancellation both end the drill; the watchdog also stops the server so
    // a restore blocked on it ends at once.
    let cancel = AtomicBool::new(false);
    let mut server = Server::start(drill, job_name, &tools, &cancel)?;
    let deadline = Instant::now() + Duration::from_secs(drill.timeout_secs);
    let pid = server.pid();
    let done = AtomicBool::new(false);
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if outer_cancel.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    cancel.store(true, Ordering::Relaxed);
                    if let Some(pid) = pid {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = restore_and_check(
            repo,
            job,
            drill,
            &tools,
            &mut server,
            redactor,
            &cancel,
            result,
        );
        done.store(true, Ordering::Relaxed);
        r
    });
    let timed_out = cancel.load(Ordering::Relaxed) && !outer_cancel.load(Ordering::Relaxed);
    drop(server);
    match r {
        Err(_) if timed_out => Err(PgError::Failed(format!(
            "the drill did not finish within timeout_secs = {}",
            drill.timeout_secs
        ))),
        Err(_) if outer_cancel.load(Ordering::Relaxed) => Err(PgError::Cancelled),
        other => other,
    }
}

/// The first value of the query's first row, as text.
#[allow(clippy::too_many_arguments)]
fn restore_and_check(
    repo: &Repository,
    job: &PostgresJob,
    drill: &DrillConfig,
    tools: &Tools,
    server: &mut Server,
    redactor: &Redactor,
    cancel: &AtomicBool,
    result: &mut DrillResult,
) -> Result<(), PgError> {
    server.wait_ready(cancel)?;
    let params = server.params();
    let mut bin_dirs: Vec<PathBuf> = tools.dir.iter().cloned().collect();
    bin_dirs.extend(job.bin_dirs.iter().cloned());
    let snap = repo.resolve_snapshot(result.snapshot.as_deref().unwrap_or_default())?;
    let report = restore_snapshot(
        repo,
        &snap.snapshot,
        &params,
        &RestoreOptions {
            databases: Vec::new(),
            globals: true,
            clean: false,
            no_owner: false,
            bin_dirs,
        },
        redactor,
        cancel,
    )?;
    if let Some(Err(e)) = &report.globals {
        return Err(PgError::Failed(format!("globals.sql did not restore: {e}")));
    }
    result.restored_bytes = report.databases.iter().map(|d| d.restored_bytes).sum();
    result.databases = report.databases.iter().map(DrillDatabase::from).collect();
    for d in &mut result.databases {
        if d.ok && d.rows == 0 && !drill.allow_empty_databases.contains(&d.database) {
            d.ok = false;
            d.error = Some(format!(
                "restored with no rows in {} tables: an empty dump proves nothing (list it in allow_empty_databases if it is meant to be empty)",
                d.tables
            ));
        }
    }
    for c in &drill.checks {
        let outcome = run_check(&params, &c.database, &c.query).and_then(|v| {
            c.expect
                .check(v.as_deref())
                .map(|()| format!("got {:?}", v.unwrap_or_default()))
        });
        result.checks.push(CheckResult {
            database: c.database.clone(),
            query: c.query.clone(),
            expect: c.expect.to_string(),
            ok: outcome.is_ok(),
            detail: redactor.redact(&outcome.unwrap_or_else(|e| e)),
        });
    }
    Ok(())
}

fn run_check(params: &ConnParams, database: &str, query: &str) -> Result<Option<String>, String> {
    let mut c = params.connect(database).map_err(|e| e.to_string())?;
    let messages = c.simple_query(query).map_err(|e| error_text(&e))?;
    for m in messages {
        if let postgres::SimpleQueryMessage::Row(row) = m {
            return Ok(row.get(0).map(str::to_string));
        }
    }
    Ok(None)
}

/// The server programs: `server_bin_dir`, or the first directory among `bin_dirs`,
/// `PATH` and `/usr/lib/postgresql/*/bin` whose `postgres` is at least `major`.
fn server_tools(drill: &DrillConfig, job: &PostgresJob, major: u32) -> Result<Tools, PgError> {
    let need = Version {
        major,
        text: format!("{major}"),
    };
    let mut candidates: Vec<Tools> = Vec::new();
    if let Some(d) = &drill.server_bin_dir {
        candidates.extend(probe(Some(d), "postgres"));
        if candidates.is_empty() {
            return Err(PgError::Tools(format!(
                "drill.server_bin_dir {}: no runnable postgres there",
                d.display()
            )));
        }
    } else {
        let mut dirs: Vec<PathBuf> = job.bin_dirs.clone();
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path));
        }
        if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
            let mut v: Vec<PathBuf> = rd.flatten().map(|d| d.path().join("bin")).collect();
            v.sort();
            v.reverse();
            dirs.extend(v);
        }
        for d in dirs {
            // `/usr/local/bin/postgres` may be a link into the real directory, which also
            // has psql and pg_restore of the same version.
            let real = std::fs::canonicalize(d.join("postgres"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or(d);
            if real.join("initdb").is_file()
                && !candidates.iter().any(|t| t.dir.as_ref() == Some(&real))
                && let Some(t) = probe(Some(&real), "postgres")
            {
                candidates.push(t);
            }
        }
    }
    pick(&need, &candidates, "postgres (server)").map_err(|e| {
        PgError::Tools(format!(
            "{e}; set drill.server_bin_dir to a PostgreSQL server's bin directory"
        ))
    })
}

/// A running throwaway server; stopped and its directory removed on drop.
struct Server {
    dir: PathBuf,
    socket_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

/// The uid and gid of `user`, from the password database.
fn lookup_user(user: &str) -> Result<(u32, u32), PgError> {
    let name = std::ffi::CString::new(user)
        .map_err(|_| PgError::Tools(format!("drill.run_as {user:?} is not a user name")))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r writes only into them.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if rc != 0 || out.is_null() {
        return Err(PgError::Tools(format!(
            "the drill was started as root, and initdb refuses to run as root; its server runs as drill.run_as = {user:?}, but there is no such user: set drill.run_as to an existing unprivileged user, or run the drill as the service user"
        )));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}

/// Removes work directories of drills whose process is gone (killed, power lost).
fn sweep(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for d in rd.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        // <job>-<pid>-<random>: the pid is the second field from the end.
        let pid = rest.rsplit('-').nth(1).and_then(|p| p.parse::<i32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            tracing::info!(dir = %d.path().display(), "removing what an interrupted drill left");
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}

impl Server {
    fn start(
        drill: &DrillConfig,
        job: &str,
        tools: &Tools,
        cancel: &AtomicBool,
    ) -> Result<Server, PgError> {
        let base = drill.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base)
            .map_err(PgError::io(format!("drill.work_dir {}", base.display())))?;
        sweep(&base);
        let dir = base.join(format!(
            "{DIR_PREFIX}{job}-{}-{}",
            std::process::id(),
            &crate::repo::random_hex()[..8]
        ));
        // A Unix socket path has at most 107 bytes; the server would fail to start with a
        // less helpful message.
        let socket_len = dir.join("socket/.s.PGSQL.5432").as_os_str().len();
        if socket_len > 107 {
            return Err(PgError::Tools(format!(
                "the throwaway server's socket path in {} would be {socket_len} bytes, more than the 107 a Unix socket allows: set a shorter drill.work_dir (or a shorter job name)",
                base.display()
            )));
        }
        std::fs::create_dir(&dir).map_err(PgError::io(format!("creating {}", dir.display())))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(PgError::io(format!("{}", dir.display())))?;
        }
        let socket_dir = dir.join("socket");
        let data = dir.join("data");
        let log = dir.join("server.log");
        let mut server = Server {
            dir: dir.clone(),
            socket_dir: socket_dir.clone(),
            child: None,
            log: log.clone(),
        };
        std::fs::create_dir(&socket_dir)
            .map_err(PgError::io(format!("creating {}", socket_dir.display())))?;
        let run_as = if rustix::process::geteuid().is_root() {
            let (uid, gid) = lookup_user(&drill.run_as)?;
            unreachable_for(&dir, uid).map_or(Ok(()), |d| {
                Err(PgError::Tools(format!(
                    "the drill was started as root, so its server runs as {:?} (initdb refuses root), who cannot reach {}: set drill.work_dir to a directory that user can enter (the system's temporary directory is one), or run the drill as the service user",
                    drill.run_as,
                    d.display()
                )))
            })?;
            for p in [&dir, &socket_dir] {
                rustix::fs::chown(
                    p,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )
                .map_err(|e| PgError::io(format!("chown {}", p.display()))(e.into()))?;
            }
            Some((uid, gid))
        } else {
            None
        };
        let as_user = |mut c: Command| -> Command {
            use std::os::unix::process::CommandExt;
            if let Some((uid, gid)) = run_as {
                c.uid(uid).gid(gid);
            }
            c.env("LC_ALL", "C").env_remove("PGDATA").current_dir(&dir);
            c
        };
        let mut initdb = as_user(Command::new(tools.program("initdb")));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                DRILL_USER,
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .stdin(Stdio::null());
        let out = initdb.output().map_err(|e| {
            PgError::Tools(format!(
                "cannot start {}: {e}",
                tools.program("initdb").display()
            ))
        })?;
        if !out.status.success() {
            return Err(PgError::Failed(format!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(PgError::Cancelled);
        }
        let log_file =
            std::fs::File::create(&log).map_err(PgError::io(log.display().to_string()))?;
        if let Some((uid, gid)) = run_as {
            let _ = rustix::fs::chown(
                &log,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            );
        }
        let mut postgres = as_user(Command::new(tools.program("postgres")));
        postgres
            .arg("-D")
            .arg(&data)
            .arg("-k")
            .arg(&socket_dir)
            // No TCP at all; nothing here has to survive a crash.
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "unix_socket_permissions=0700",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=20",
                "-c",
                "shared_buffers=32MB",
                "-c",
                "max_wal_size=1GB",
            ])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(PgError::io("log"))?)
            .stderr(log_file);
        // If backuphub dies, the server must not live on.
        // SAFETY: only the async-signal-safe prctl(2) runs between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            postgres.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        server.child = Some(postgres.spawn().map_err(|e| {
            PgError::Tools(format!(
                "cannot start {}: {e}",
                tools.program("postgres").display()
            ))
        })?);
        Ok(server)
    }

    fn pid(&self) -> Option<rustix::process::Pid> {
        rustix::process::Pid::from_raw(self.child.as_ref()?.id() as i32)
    }

    fn params(&self) -> ConnParams {
        ConnParams {
            host: self.socket_dir.display().to_string(),
            port: 5432,
            user: DRILL_USER.into(),
            password: None,
            sslmode: SslMode::Disable,
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(1000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].trim().to_string()
    }

    fn wait_ready(&mut self, cancel: &AtomicBool) -> Result<(), PgError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let params = self.params();
        loop {
            if params.connect("postgres").is_ok() {
                return Ok(());
            }
            // A server that exited will never answer.
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(PgError::Failed(format!(
                    "the throwaway server exited ({status}): {}",
                    self.log_tail()
                )));
            }
            if Instant::now() > deadline {
                return Err(PgError::Failed(format!(
                    "the throwaway server did not accept connections within 2 minutes: {}",
                    self.log_tail()
                )));
            }
            sleep_unless(cancel, Duration::from_millis(100))?;
        }
    }
}

/// The first directory on the way to `dir` that user `uid` (no groups) cannot enter.
fn unreachable_for(dir: &Path, uid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().skip(1).find_map(|a| {
        let m = std::fs::metadata(a).ok()?;
        let enterable = m.mode() & 0o001 != 0 || (m.uid() == uid && m.mode() & 0o100 != 0);
        (!enterable).then(|| a.to_path_buf())
    })
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: nothing in this cluster is worth a checkpoint.
            if let Some(pid) = self.pid() {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the drill's directory; the next drill will");
        }
    }
}

/// Where drill results are kept across restarts: `<state>/drills/<job>.json`.
pub fn result_path(state_dir: &Path, job: &str) -> PathBuf {
    state_dir.join("drills").join(format!("{job}.json"))
}

/// Saves a result atomically (write, fsync, rename).
pub fn save_result(state_dir: &Path, job: &str, r: &DrillResult) -> std::io::Result<()> {
    crate::state::save_json(&result_path(state_dir, job), r)
}

/// The last saved result, if any (an unreadable one is ignored: the next drill replaces
/// it).
pub fn load_result(state_dir: &Path, job: &str) -> Option<DrillResult> {
    let text = std::fs::read(result_path(state_dir, job)).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_only_dead_drills() {
        let base = tempfile::tempdir().unwrap();
        let dead = base
            .path()
            .join(format!("{DIR_PREFIX}pg-999999999-abcd1234"));
        let live = base
            .path()
            .join(format!("{DIR_PREFIX}pg-{}-abcd1234", std::process::id()));
        let other = base.path().join("something-else");
        for d in [&dead, &live, &other] {
            std::fs::create_dir(d).unwrap();
        }
        sweep(base.path());
        assert!(!dead.exists());
        assert!(live.exists());
        assert!(other.exists());
    }

    #[test]
    fn results_round_trip_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_result(dir.path(), "pg").is_none());
        let r = DrillResult {
            time: Utc::now(),
            ok: true,
            duration_seconds: 1.5,
            snapshot: Some("ab".into()),
            restored_bytes: 10,
            databases: vec![],
            checks: vec![],
            error: None,
        };
        save_result(dir.path(), "pg", &r).unwrap();
        assert_eq!(load_result(dir.path(), "pg").unwrap(), r);
    }
}
