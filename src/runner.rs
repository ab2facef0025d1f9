//! Running a configured job once: the one code path of `backuphub run` and the daemon.
//!
//! A run takes a concurrency permit, checks the disk, takes the job's lock, archives,
//! applies the job's retention, and records the outcome in the shared state and metrics.
//! Transient failures are retried with exponential backoff; the final outcome counts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::archiver::{ArchiveError, Progress, archive};
use crate::config::{Config, JobName};
use crate::error::ErrorKind;
use crate::metrics as m;
use crate::redact::Redactor;
use crate::repo::crypto::{Recipient, read_recipients_file};
use crate::repo::index::IndexMode;
use crate::repo::lock::LockKind;
use crate::repo::snapshot::SnapshotStatus;
use crate::repo::{InitOptions, OpenOptions, RepoError, Repository, RootStatus};
use crate::retention::RetentionPolicy;
use crate::source::SourceError;
use crate::state::{Inner, JobState, RepoState, RunResult, RunStatus, SharedState};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("repository not available: {0}")]
    Unavailable(String),
    #[error(
        "only {free} free on the repository's disk, below the threshold of {threshold}; not starting"
    )]
    DiskSpace {
        free: bytesize::ByteSize,
        threshold: bytesize::ByteSize,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("the run's worker failed: {0}")]
    Internal(String),
}

impl RunError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            RunError::Unavailable(_) => ErrorKind::NoRepository,
            RunError::DiskSpace { .. } => ErrorKind::DiskSpace,
            RunError::Archive(e) => e.kind(),
            RunError::Repo(e) => e.kind(),
            RunError::Source(_) => ErrorKind::Source,
            RunError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Whether another attempt might succeed.
    fn retryable(&self) -> bool {
        !matches!(
            self,
            RunError::Archive(ArchiveError::Cancelled) | RunError::Internal(_)
        ) && !matches!(
            self,
            RunError::Archive(ArchiveError::Repo(RepoError::NoWriteKey { .. }))
        )
    }
}

/// How long a backup waits for a prune (which holds the exclusive lock) before failing.
pub const BACKUP_LOCK_WAIT: Duration = Duration::from_secs(3 * 3600);

/// One run of a job: the one path to a snapshot, for the daemon's scheduled and
/// triggered runs, `backuphub run` and `backuphub backup` alike.
pub struct JobRun<'a> {
    pub repo: &'a Repository,
    pub job: &'a str,
    /// Applied after the snapshot is written; `None` keeps everything.
    pub retention: Option<(&'a RetentionPolicy, chrono_tz::Tz)>,
    pub redactor: &'a Redactor,
    pub progress: &'a Progress,
    pub cancel: &'a AtomicBool,
    /// How long to wait for a running prune.
    pub lock_wait: Duration,
}

impl JobRun<'_> {
    /// Takes the job's lock, archives `source` (every message it produces redacted),
    /// then applies the retention policy. The snapshot is written only while the lock is
    /// still this run's own.
    pub fn run(
        &self,
        source: &mut dyn crate::source::Source,
    ) -> Result<(crate::repo::id::Id, crate::repo::snapshot::Snapshot), RunError> {
        let lock = self
            .repo
            .lock(LockKind::Shared, Some(self.job), self.lock_wait)?;
        let mut source = crate::source::Redacting {
            inner: source,
            redactor: self.redactor,
        };
        let (id, snap) = archive(
            self.repo,
            self.job,
            &mut source,
            self.progress,
            self.cancel,
            &|| lock.ensure_held().map_err(RepoError::from),
        )?;
        if let Some((policy, tz)) = self.retention
            && let Err(e) = apply_retention(self.repo, self.job, policy, tz)
        {
            // The snapshot is safe; an unapplied policy only keeps more, and the prune
            // schedule applies it again.
            tracing::warn!(error = %self.redactor.redact(&e.to_string()), "retention not applied")
        }
        Ok((id, snap))
    }
}

/// Everything a run needs; shared by the scheduler, the HTTP surface and `run`.
pub struct Context {
    pub config: Config,
    pub state: SharedState,
    pub redactor: Redactor,
    pub cancel: CancellationToken,
    pub tasks: tokio_util::task::TaskTracker,
    permits: Semaphore,
    repo: Mutex<Option<Arc<Repository>>>,
    /// The handle holding the identity (encrypted repositories with `identity_file`).
    reader: Mutex<Option<Arc<Repository>>>,
}

/// Every file a config names that holds a secret: their contents are masked wherever
/// text from outside is shown (logs, status, manifests, `run --json`).
pub fn secret_files(config: &Config) -> Vec<std::path::PathBuf> {
    let r = &config.repository;
    let jobs = config.jobs.values().flat_map(|j| match &j.kind {
        crate::config::JobKind::Postgres(p) => p.password_file.iter().collect::<Vec<_>>(),
        crate::config::JobKind::Kubernetes(k) => {
            k.kubeconfig.iter().chain(k.token_file.iter()).collect()
        }
        crate::config::JobKind::Volume(k) => {
            k.kubeconfig.iter().chain(k.token_file.iter()).collect()
        }
        crate::config::JobKind::S3(j) => vec![&j.access_key_file, &j.secret_key_file],
        _ => Vec::new(),
    });
    r.identity_file
        .iter()
        .chain(config.http.token_file.iter())
        .chain(jobs)
        .cloned()
        .collect()
}

/// Applies `policy` to `job`'s snapshots (their data goes at the next prune).
fn apply_retention(
    repo: &Repository,
    job: &str,
    policy: &RetentionPolicy,
    tz: chrono_tz::Tz,
) -> Result<(), RepoError> {
    let r = crate::prune::forget(repo, job, policy, tz, false)?;
    if !r.removed.is_empty() {
        tracing::info!(job, removed = ?r.removed, "retention applied");
    }
    Ok(())
}

/// A repository id this state directory served before (it holds `<id>/key.json` or an
/// index), if any: proof that a repository existed, whatever the mount point shows now.
fn served_repository(state: &std::path::Path) -> Option<String> {
    std::fs::read_dir(state).ok()?.flatten().find_map(|d| {
        let name = d.file_name().to_string_lossy().into_owned();
        let served = name.parse::<crate::repo::id::Id>().is_ok()
            && (d.path().join("key.json").exists() || d.path().join("index").exists());
        served.then(|| name[..8].to_string())
    })
}

/// Free and total bytes of the file system holding `path` (or its nearest existing parent).
pub fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let mut p = path;
    loop {
        if let Ok(s) = rustix::fs::statvfs(p) {
            return Some((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize));
        }
        p = p.parent()?;
    }
}

impl Context {
    pub fn new(config: Config) -> Arc<Context> {
        let redactor = Redactor::from_files(&secret_files(&config));
        let jobs = config
            .jobs
            .iter()
            .map(|(name, j)| {
                (
                    name.to_string(),
                    JobState {
                        name: name.to_string(),
                        kind: j.kind.name().to_string(),
                        schedule: j.schedule.to_string(),
                        timezone: j.timezone.to_string(),
                        next_run: j.schedule.next_after(Utc::now(), j.timezone),
                        running: false,
                        running_since: None,
                        skipped_runs: 0,
                        last_run: None,
                        last_success: None,
                        snapshots: 0,
                        drill: crate::kinds::postgres::drill::load_result(
                            &config.state_dir(),
                            name.as_str(),
                        ),
                        drill_running: false,
                        recent_runs: Default::default(),
                    },
                )
            })
            .collect();
        let saved_verify = crate::verify::load(&config.state_dir());
        let state = SharedState::new(Inner {
            started: Utc::now(),
            repository: RepoState {
                path: config.repository.path.display().to_string(),
                ..Default::default()
            },
            prune: Default::default(),
            verify: config.verify.as_ref().map(|v| crate::state::VerifyState {
                schedule: v.schedule.to_string(),
                read_data_subset: v.read_data_subset.to_string(),
                next_run: v.schedule.next_after(Utc::now(), chrono_tz::UTC),
                running: false,
                last: saved_verify.last.clone(),
                last_damaged_chunks: saved_verify.damaged_chunks,
                last_damaged_files: saved_verify.damaged_files.clone(),
            }),
            jobs,
            min_free_bytes: config.daemon.min_free_space.as_u64(),
        });
        Arc::new(Context {
            permits: Semaphore::new(config.daemon.concurrency),
            config,
            state,
            redactor,
            cancel: CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            repo: Mutex::new(None),
            reader: Mutex::new(None),
        })
    }

    /// The repository, opened once (sled allows one opener per process). Created only
    /// when the config says so: an unmounted disk must never get a fresh repository.
    ///
    /// The daemon never loads the identity: a writer that cannot read what it wrote is
    /// the point of encrypting to public keys (see the README on `identity_file`).
    pub fn repository(&self) -> Result<Arc<Repository>, RunError> {
        let mut slot = self.repo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = slot.as_ref() {
            match r.root_status() {
                // A temporary index (taken while an old handle still held the real one)
                // is given up as soon as nobody uses the handle, so the daemon does not
                // live on a throwaway index for the rest of its life.
                RootStatus::Same | RootStatus::Unknown
                    if r.index().mode == IndexMode::Temporary && Arc::strong_count(r) == 1 =>
                {
                    tracing::info!("reopening the repository to get its persistent index back");
                    *slot = None;
                }
                RootStatus::Same | RootStatus::Unknown => return Ok(r.clone()),
                RootStatus::Changed => {
                    // The disk went away, or another one (another repository) took its place.
                    tracing::warn!(path = %r.root().display(), "repository changed or vanished; reopening");
                    *slot = None;
                }
            }
        }
        let rc = &self.config.repository;
        let opts = OpenOptions {
            identity: None,
            state_dir: self.config.state_dir(),
        };
        let repo = match Repository::open(&rc.path, &opts) {
            Ok(r) => r,
            Err(RepoError::NotARepository(_)) if rc.create => {
                if let Some(served) = served_repository(&opts.state_dir) {
                    return Err(RunError::Unavailable(format!(
                        "{} is not a backuphub repository, and this machine already served repository {served} (state directory {}): refusing to create a new one there (is the backup disk unplugged?); if a new repository is meant, create it with `backuphub init`",
                        rc.path.display(),
                        opts.state_dir.display()
                    )));
                }
                let mut recipients: Vec<Recipient> = rc
                    .recipients
                    .iter()
                    .map(|r| r.parse())
                    .collect::<Result<_, _>>()
                    .map_err(|e: crate::repo::crypto::CryptoError| {
                        RunError::Unavailable(e.to_string())
                    })?;
                if let Some(f) = &rc.recipients_file {
                    recipients.extend(
                        read_recipients_file(f)
                            .map_err(|e| RunError::Unavailable(e.to_string()))?,
                    );
                }
                tracing::info!(path = %rc.path.display(), "creating repository (repository.create is on)");
                Repository::init(
                    &rc.path,
                    &opts,
                    &InitOptions {
                        recipients,
                        ..Default::default()
                    },
                )
                .map_err(|e| RunError::Unavailable(e.to_string()))?
            }
            Err(e) => return Err(RunError::Unavailable(e.to_string())),
        };
        let repo = Arc::new(repo);
        *slot = Some(repo.clone());
        Ok(repo)
    }

    /// The cheap check the daemon runs often: free space and whether the repository is
    /// (still) there. It touches no pack and writes nothing, so an idle external disk can
    /// spin down; the full [`Context::refresh`] runs after each run and every few minutes.
    pub fn probe(&self) {
        let path = &self.config.repository.path;
        let (free, size) = disk_space(path).unwrap_or((0, 0));
        let opened = self.repository();
        let was_available = self.state.read(|s| s.repository.available);
        if opened.is_ok() && !was_available {
            // It appeared (a disk mounted after start): take the full picture now.
            return self.refresh();
        }
        self.state.write(|s| {
            s.repository.disk_free_bytes = free;
            s.repository.disk_size_bytes = size;
            if let Err(e) = &opened {
                s.repository.available = false;
                s.repository.error = Some(e.to_string());
            }
        });
        metrics::gauge!(m::DISK_FREE).set(free as f64);
        metrics::gauge!(m::DISK_SIZE).set(size as f64);
        metrics::gauge!(m::REPO_READY).set(if self.state.not_ready().is_none() {
            1.0
        } else {
            0.0
        });
    }

    /// Refreshes repository and disk figures, readiness and gauges. Blocking.
    pub fn refresh(&self) {
        let path = &self.config.repository.path;
        let (free, size) = disk_space(path).unwrap_or((0, 0));
        let opened = self.repository();
        let mut repo_state = RepoState {
            path: path.display().to_string(),
            disk_free_bytes: free,
            disk_size_bytes: size,
            ..Default::default()
        };
        let mut per_job: Vec<(String, u64, Option<chrono::DateTime<Utc>>)> = Vec::new();
        match opened {
            Ok(repo) => {
                // Writable: a failed probe means a read-only or failing disk.
                let probe = repo.tmp_dir().join(format!("probe-{}", std::process::id()));
                match std::fs::write(&probe, b"").and_then(|_| std::fs::remove_file(&probe)) {
                    Ok(()) => repo_state.available = true,
                    Err(e) => repo_state.error = Some(format!("repository is not writable: {e}")),
                }
                let _ = repo.sync_index();
                repo_state.size_bytes = repo.packs_size().unwrap_or(0);
                repo_state.chunks = repo.index().chunk_count() as u64;
                repo_state.packs = repo.index().pack_count() as u64;
                if let Ok(snaps) = repo.snapshots() {
                    repo_state.snapshots = snaps.len() as u64;
                    let logical: u64 = snaps.iter().map(|s| s.snapshot.stats.total_bytes).sum();
                    if repo_state.size_bytes > 0 {
                        repo_state.dedup_ratio =
                            Some(logical as f64 / repo_state.size_bytes as f64);
                    }
                    for name in self.config.jobs.keys() {
                        let mine: Vec<_> = snaps
                            .iter()
                            .filter(|s| s.snapshot.job == name.as_str())
                            .collect();
                        let last_ok = mine
                            .iter()
                            .rev()
                            .find(|s| s.snapshot.status == SnapshotStatus::Complete)
                            .map(|s| s.snapshot.time);
                        per_job.push((name.to_string(), mine.len() as u64, last_ok));
                    }
                }
            }
            Err(e) => repo_state.error = Some(e.to_string()),
        }
        metrics::gauge!(m::DISK_FREE).set(free as f64);
        metrics::gauge!(m::DISK_SIZE).set(size as f64);
        metrics::gauge!(m::REPO_SIZE).set(repo_state.size_bytes as f64);
        metrics::gauge!(m::REPO_CHUNKS).set(repo_state.chunks as f64);
        metrics::gauge!(m::REPO_PACKS).set(repo_state.packs as f64);
        let now = Utc::now();
        self.state.write(|s| {
            s.repository = repo_state;
            for (name, count, last_ok) in per_job {
                if let Some(j) = s.jobs.get_mut(&name) {
                    j.snapshots = count;
                    if last_ok > j.last_success {
                        j.last_success = last_ok;
                    }
                    metrics::gauge!(m::SNAPSHOTS, "job" => name.clone()).set(count as f64);
                    if let Some(t) = j.last_success {
                        metrics::gauge!(m::JOB_LAST_SUCCESS, "job" => name.clone())
                            .set(t.timestamp() as f64);
                    }
                }
            }
            for (name, cfg) in &self.config.jobs {
                if let Some(j) = s.jobs.get_mut(name.as_str()) {
                    j.next_run = cfg.schedule.next_after(now, cfg.timezone);
                    if let Some(t) = j.next_run {
                        metrics::gauge!(m::JOB_NEXT_RUN, "job" => name.to_string())
                            .set(t.timestamp() as f64);
                    }
                }
            }
        });
        metrics::gauge!(m::REPO_READY).set(if self.state.not_ready().is_none() {
            1.0
        } else {
            0.0
        });
    }

    /// Starts a run in the background unless one is going. Returns the run's id.
    pub fn trigger(self: &Arc<Self>, job: &str, reason: &str) -> Result<String, TriggerError> {
        let name = self
            .config
            .jobs
            .keys()
            .find(|n| n.as_str() == job)
            .cloned()
            .ok_or(TriggerError::UnknownJob)?;
        let started = self.state.write(|s| {
            let j = s.jobs.get_mut(job).expect("state has every configured job");
            if j.running {
                j.skipped_runs += 1;
                false
            } else {
                j.running = true;
                j.running_since = Some(Utc::now());
                true
            }
        });
        if !started {
            metrics::counter!(m::JOB_SKIPPED, "job" => job.to_string()).increment(1);
            tracing::warn!(job, reason, "previous run still going; skipping this one");
            return Err(TriggerError::AlreadyRunning);
        }
        let run_id = crate::repo::random_hex()[..12].to_string();
        let ctx = self.clone();
        let (id, reason) = (run_id.clone(), reason.to_string());
        self.tasks.spawn(async move {
            ctx.execute(&name, &id, &reason).await;
        });
        Ok(run_id)
    }

    /// Runs a job to its final outcome (retries included). The caller has marked the
    /// job running; this clears the mark.
    pub async fn execute(
        self: &Arc<Self>,
        name: &JobName,
        run_id: &str,
        trigger: &str,
    ) -> RunResult {
        let span = tracing::info_span!("run", job = %name, run = %run_id);
        let result = self
            .execute_inner(name, run_id, trigger)
            .instrument(span)
            .await;
        // Figures first, so that whoever sees the run finished also sees its snapshot.
        let ctx = self.clone();
        let _ = tokio::task::spawn_blocking(move || ctx.refresh()).await;
        self.record(name, &result);
        result
    }

    async fn execute_inner(
        self: &Arc<Self>,
        name: &JobName,
        run_id: &str,
        trigger: &str,
    ) -> RunResult {
        let job = name.to_string();
        metrics::gauge!(m::JOB_RUNNING, "job" => job.clone()).set(1.0);
        let start = Utc::now();
        let _permit = tokio::select! {
            p = self.permits.acquire() => p.ok(),
            _ = self.cancel.cancelled() => None,
        };
        let mut attempts = 0;
        let mut backoff = Duration::from_secs(self.config.daemon.retry_backoff_secs);
        let outcome = loop {
            attempts += 1;
            if self.cancel.is_cancelled() {
                break Err(RunError::Archive(ArchiveError::Cancelled));
            }
            tracing::info!(attempt = attempts, trigger, "run starting");
            match self.attempt(name).await {
                Ok(ok) => break Ok(ok),
                Err(e) => {
                    let msg = self.redactor.redact(&e.to_string());
                    metrics::counter!(m::JOB_FAILURES, "job" => job.clone(), "kind" => e.kind().as_str())
                        .increment(1);
                    if e.retryable()
                        && attempts < self.config.daemon.attempts
                        && !self.cancel.is_cancelled()
                    {
                        tracing::warn!(attempt = attempts, error = %msg, retry_in = ?backoff, "attempt failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.cancel.cancelled() => {}
                        }
                        backoff = backoff.saturating_mul(2);
                        continue;
                    }
                    break Err(e);
                }
            }
        };
        let end = Utc::now();
        match outcome {
            Ok((id, snap)) => {
                let status = if snap.status == SnapshotStatus::Complete {
                    RunStatus::Complete
                } else {
                    RunStatus::Partial
                };
                tracing::info!(snapshot = %id.short(), ?status, entries = snap.stats.entries, read = snap.stats.read_bytes, stored = snap.stats.stored_bytes, "run finished");
                RunResult {
                    run_id: run_id.to_string(),
                    trigger: trigger.to_string(),
                    start,
                    end,
                    status,
                    attempts,
                    snapshot: Some(id.to_hex()),
                    error: (status == RunStatus::Partial)
                        .then(|| format!("{} entries failed", snap.stats.failures)),
                    error_kind: (status == RunStatus::Partial).then_some(ErrorKind::Partial),
                    stats: Some(snap.stats),
                }
            }
            Err(e) => {
                let msg = self.redactor.redact(&e.to_string());
                tracing::error!(error = %msg, kind = e.kind().as_str(), "run failed");
                RunResult {
                    run_id: run_id.to_string(),
                    trigger: trigger.to_string(),
                    start,
                    end,
                    status: RunStatus::Failed,
                    attempts,
                    snapshot: None,
                    stats: None,
                    error: Some(msg),
                    error_kind: Some(e.kind()),
                }
            }
        }
    }

    async fn attempt(
        self: &Arc<Self>,
        name: &JobName,
    ) -> Result<(crate::repo::id::Id, crate::repo::snapshot::Snapshot), RunError> {
        let ctx = self.clone();
        let name = name.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let token = self.cancel.clone();
        // The archiver is synchronous; cancellation reaches it through a flag.
        let watcher = tokio::spawn(async move {
            token.cancelled().await;
            flag.store(true, Ordering::Relaxed);
        });
        let result = tokio::task::spawn_blocking(move || {
            let repo = ctx.repository()?;
            let free = disk_space(repo.root()).map(|(f, _)| f).unwrap_or(u64::MAX);
            let threshold = ctx.config.daemon.min_free_space;
            if free < threshold.as_u64() {
                return Err(RunError::DiskSpace {
                    free: bytesize::ByteSize(free),
                    threshold,
                });
            }
            let job = &ctx.config.jobs[&name];
            let encrypted = !repo.config().recipients.is_empty();
            let mut source = crate::source::from_config(
                name.as_str(),
                &job.kind,
                ctx.redactor.clone(),
                encrypted,
                cancel.clone(),
            )?;
            let policy = job.retention_policy();
            JobRun {
                repo: &repo,
                job: name.as_str(),
                retention: Some((&policy, job.timezone)),
                redactor: &ctx.redactor,
                progress: &Progress::default(),
                cancel: &cancel,
                lock_wait: BACKUP_LOCK_WAIT,
            }
            .run(source.as_mut())
        })
        .await
        .unwrap_or_else(|e| Err(RunError::Internal(e.to_string())));
        watcher.abort();
        result
    }

    fn record(&self, name: &JobName, r: &RunResult) {
        let job = name.to_string();
        metrics::gauge!(m::JOB_RUNNING, "job" => job.clone()).set(0.0);
        metrics::counter!(m::JOB_RUNS, "job" => job.clone(), "status" => r.status.as_str())
            .increment(1);
        metrics::gauge!(m::JOB_LAST_STATUS, "job" => job.clone()).set(r.status.metric_value());
        metrics::histogram!(m::JOB_DURATION, "job" => job.clone())
            .record((r.end - r.start).num_milliseconds() as f64 / 1000.0);
        if let Some(s) = &r.stats {
            metrics::counter!(m::JOB_READ_BYTES, "job" => job.clone()).increment(s.read_bytes);
            metrics::counter!(m::JOB_STORED_BYTES, "job" => job.clone()).increment(s.stored_bytes);
        }
        if r.status == RunStatus::Complete {
            metrics::gauge!(m::JOB_LAST_SUCCESS, "job" => job.clone())
                .set(r.end.timestamp() as f64);
        }
        self.state.update_job(&job, |j| {
            j.running = false;
            j.running_since = None;
            if r.status == RunStatus::Complete {
                j.last_success = Some(r.end);
            }
            j.last_run = Some(r.clone());
            j.recent_runs.push_front(r.clone());
            j.recent_runs.truncate(crate::state::RECENT_RUNS);
        });
    }

    /// Applies the prune schedule's work: mark and sweep under the exclusive lock.
    pub async fn prune(self: &Arc<Self>) -> Result<crate::prune::PruneReport, RunError> {
        let ctx = self.clone();
        let now = Utc::now();
        let result = tokio::task::spawn_blocking(move || {
            let repo = ctx.repository()?;
            let lock = repo.lock(LockKind::Exclusive, None, Duration::from_secs(3600))?;
            // Retention runs here too, whether or not backups succeed: a disk that
            // filled up (so every backup fails) frees space without a human.
            for (name, job) in &ctx.config.jobs {
                apply_retention(&repo, name.as_str(), &job.retention_policy(), job.timezone)?;
            }
            Ok::<_, RunError>(crate::prune::prune(&repo, &lock, false)?)
        })
        .await
        .unwrap_or_else(|e| Err(RunError::Internal(e.to_string())));
        self.state.write(|s| {
            s.prune.last_run = Some(now);
            match &result {
                Ok(_) => {
                    s.prune.last_success = Some(Utc::now());
                    s.prune.error = None;
                }
                Err(e) => s.prune.error = Some(self.redactor.redact(&e.to_string())),
            }
        });
        match &result {
            Ok(r) => {
                metrics::gauge!(m::PRUNE_LAST_SUCCESS).set(Utc::now().timestamp() as f64);
                metrics::counter!(m::PRUNE_FREED).increment(r.bytes_freed);
                tracing::info!(
                    freed = r.bytes_freed,
                    deleted = r.packs_deleted,
                    repacked = r.packs_repacked,
                    "prune finished"
                );
            }
            Err(e) => {
                tracing::error!(error = %self.redactor.redact(&e.to_string()), "prune failed")
            }
        }
        result
    }
}

impl Context {
    /// Publishes a drill result: job state, metrics, and the state directory (so it
    /// survives a restart).
    pub fn record_drill(&self, job: &str, r: &crate::state::DrillResult) {
        metrics::gauge!(m::DRILL_LAST_STATUS, "job" => job.to_string()).set(if r.ok {
            1.0
        } else {
            0.0
        });
        metrics::gauge!(m::DRILL_DURATION, "job" => job.to_string()).set(r.duration_seconds);
        if r.ok {
            metrics::gauge!(m::DRILL_LAST_SUCCESS, "job" => job.to_string())
                .set(r.time.timestamp() as f64);
        }
        self.state.update_job(job, |j| {
            j.drill = Some(r.clone());
            j.drill_running = false;
        });
        if let Err(e) = crate::kinds::postgres::drill::save_result(&self.config.state_dir(), job, r)
        {
            tracing::warn!(error = %e, "drill result not saved to the state directory");
        }
    }

    /// Exports the saved drill results as metrics (at start).
    pub fn export_drills(&self) {
        let saved: Vec<(String, crate::state::DrillResult)> = self.state.read(|s| {
            s.jobs
                .values()
                .filter_map(|j| j.drill.clone().map(|d| (j.name.clone(), d)))
                .collect()
        });
        for (job, r) in saved {
            metrics::gauge!(m::DRILL_LAST_STATUS, "job" => job.clone()).set(if r.ok {
                1.0
            } else {
                0.0
            });
            metrics::gauge!(m::DRILL_DURATION, "job" => job.clone()).set(r.duration_seconds);
            // Without this, a restart would hide a recent good drill until the next one.
            if r.ok {
                metrics::gauge!(m::DRILL_LAST_SUCCESS, "job" => job.clone())
                    .set(r.time.timestamp() as f64);
            }
        }
    }

    /// Runs the restore drill of `name` (a postgres job with `[drill]`), records and
    /// returns its result. One drill per job at a time.
    pub async fn drill(
        self: &Arc<Self>,
        name: &JobName,
    ) -> Result<crate::state::DrillResult, RunError> {
        let job = name.to_string();
        let crate::config::JobKind::Postgres(pg) = &self.config.jobs[name].kind else {
            return Err(RunError::Source(SourceError::Fatal(format!(
                "job {job} is not a postgres job: it has no drill"
            ))));
        };
        if pg.drill.is_none() {
            return Err(RunError::Source(SourceError::Fatal(format!(
                "job {job} has no [jobs.{job}.drill] section"
            ))));
        }
        let started = self.state.write(|s| {
            let j = s
                .jobs
                .get_mut(&job)
                .expect("state has every configured job");
            !std::mem::replace(&mut j.drill_running, true)
        });
        if !started {
            return Err(RunError::Source(SourceError::Fatal(format!(
                "a drill of {job} is already running"
            ))));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let token = self.cancel.clone();
        let watcher = tokio::spawn(async move {
            token.cancelled().await;
            flag.store(true, Ordering::Relaxed);
        });
        let ctx = self.clone();
        let name2 = name.clone();
        let result = tokio::task::spawn_blocking(move || {
            let crate::config::JobKind::Postgres(pg) = &ctx.config.jobs[&name2].kind else {
                unreachable!("checked above")
            };
            let drill = pg.drill.as_ref().expect("checked above");
            let (repo, _lock) = ctx.read_locked(Duration::from_secs(3600), true)?;
            Ok::<_, RunError>(crate::kinds::postgres::drill::run(
                &repo,
                name2.as_str(),
                pg,
                drill,
                &ctx.redactor,
                &cancel,
            ))
        })
        .await
        .unwrap_or_else(|e| Err(RunError::Internal(e.to_string())));
        watcher.abort();
        let result = result.unwrap_or_else(|e| crate::state::DrillResult {
            time: Utc::now(),
            ok: false,
            duration_seconds: 0.0,
            snapshot: None,
            restored_bytes: 0,
            databases: Vec::new(),
            checks: Vec::new(),
            error: Some(self.redactor.redact(&e.to_string())),
        });
        if result.ok {
            tracing::info!(
                job,
                duration = result.duration_seconds,
                "restore drill passed"
            );
        } else {
            tracing::error!(
                job,
                error = result.error.as_deref().unwrap_or_default(),
                "restore drill FAILED"
            );
        }
        self.record_drill(&job, &result);
        Ok(result)
    }

    /// A repository handle that can read contents: the daemon's own when the repository
    /// is not encrypted; with an encrypted one, a second handle opened with
    /// `repository.identity_file` (the daemon's own never holds the identity).
    pub fn repository_for_reading(&self) -> Result<Arc<Repository>, RunError> {
        let repo = self.repository()?;
        if repo.config().recipients.is_empty() {
            return Ok(repo);
        }
        let identity = self.config.repository.identity_file.clone().ok_or_else(|| {
            RunError::Unavailable(
                "the repository is encrypted and this machine holds no identity: a restore drill must read the snapshot, so set repository.identity_file (or drill on a machine that has it)".into(),
            )
        })?;
        // Kept: opening it builds a (temporary) index from every pack header, which must
        // not happen for each page, download or drill. Callers bring it up to date with
        // `sync_index` under their lock.
        let mut slot = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = slot.as_ref() {
            match r.root_status() {
                RootStatus::Same | RootStatus::Unknown => return Ok(r.clone()),
                RootStatus::Changed => *slot = None,
            }
        }
        let opts = OpenOptions {
            identity: Some(identity),
            state_dir: self.config.state_dir(),
        };
        let r = Arc::new(
            Repository::open(&self.config.repository.path, &opts)
                .map_err(|e| RunError::Unavailable(e.to_string()))?,
        );
        *slot = Some(r.clone());
        Ok(r)
    }

    /// A handle that reads contents where it can, with the shared lock (so prune cannot
    /// delete packs under it), its index in step with the packs on disk.
    pub fn read_locked(
        &self,
        wait: Duration,
        contents: bool,
    ) -> Result<(Arc<Repository>, crate::repo::lock::LockGuard), RunError> {
        let own = self.repository()?;
        let repo = if contents || self.config.repository.identity_file.is_some() {
            self.repository_for_reading()?
        } else {
            own.clone()
        };
        let lock = repo.lock_for_reading(None, wait)?;
        if !Arc::ptr_eq(&repo, &own) {
            repo.sync_index()?;
        }
        Ok((repo, lock))
    }

    /// Every counter series the daemon can have, at zero: a counter that first appears at 1
    /// hides that first increase from `increase()`, and an alert or dashboard query over a
    /// series that does not exist yet sees nothing at all.
    pub fn export_counters(&self) {
        for name in self.config.jobs.keys() {
            let job = name.to_string();
            metrics::counter!(m::JOB_SKIPPED, "job" => job.clone()).increment(0);
            metrics::counter!(m::JOB_READ_BYTES, "job" => job.clone()).increment(0);
            metrics::counter!(m::JOB_STORED_BYTES, "job" => job.clone()).increment(0);
            for status in [RunStatus::Complete, RunStatus::Partial, RunStatus::Failed] {
                metrics::counter!(m::JOB_RUNS, "job" => job.clone(), "status" => status.as_str())
                    .increment(0);
            }
            for kind in crate::error::ErrorKind::ALL {
                metrics::counter!(m::JOB_FAILURES, "job" => job.clone(), "kind" => kind.as_str())
                    .increment(0);
            }
        }
        metrics::counter!(m::PRUNE_FREED).increment(0);
    }

    /// Publishes the verification figures as metrics (also at start, from the saved
    /// state, so a restart does not make a recent success or known damage disappear).
    pub fn export_verify(&self, saved: &crate::verify::Saved) {
        if let Some(t) = saved.last_completed {
            metrics::gauge!(m::VERIFY_LAST_RUN).set(t.timestamp() as f64);
            metrics::gauge!(m::VERIFY_DAMAGED).set(saved.damaged_chunks as f64);
        }
        if let Some(t) = saved.last_success {
            metrics::gauge!(m::VERIFY_LAST_SUCCESS).set(t.timestamp() as f64);
        }
        if let Some(r) = saved.last.as_ref().filter(|r| r.error.is_none()) {
            metrics::gauge!(m::VERIFY_DURATION).set(r.duration_seconds);
            metrics::gauge!(m::VERIFY_CYCLE).set(r.cycle_ratio);
        }
        // Present from the start, so a verification that never completes is visible.
        metrics::counter!(m::VERIFY_BYTES_READ).increment(0);
    }

    /// Marks a verification running; false when one already is (or none is configured).
    fn mark_verify_running(&self) -> bool {
        self.state.write(|s| {
            s.verify
                .as_mut()
                .is_some_and(|v| !std::mem::replace(&mut v.running, true))
        })
    }

    /// Runs one scheduled verification (`[verify]`) and records its result: status,
    /// metrics and the state directory (with the cursor of the rotating subset).
    pub async fn verify(self: &Arc<Self>) -> Result<crate::verify::VerifyResult, RunError> {
        if self.config.verify.is_none() {
            return Err(RunError::Source(SourceError::Fatal(
                "no [verify] section is configured".into(),
            )));
        }
        if !self.mark_verify_running() {
            return Err(RunError::Source(SourceError::Fatal(
                "a verification is already running".into(),
            )));
        }
        Ok(self.verify_marked().await)
    }

    /// [`Context::verify`] once marked running; clears the mark whatever happens.
    async fn verify_marked(self: &Arc<Self>) -> crate::verify::VerifyResult {
        let cfg = self.config.verify.clone().expect("checked by the caller");
        let ctx = self.clone();
        let now = Utc::now();
        // Everything that touches the disk (the check, the state file and its fsync) on a
        // blocking thread: an SD card's fsync must not stall the runtime.
        let done = tokio::task::spawn_blocking(move || {
            let state_dir = ctx.config.state_dir();
            let previous = crate::verify::load(&state_dir);
            // With the identity, blob contents too; without it, pack hashes and structure
            // through the daemon's own handle (the result says so).
            let outcome =
                ctx.read_locked(Duration::from_secs(3600), false)
                    .and_then(|(repo, _lock)| {
                        Ok(crate::verify::run(
                            &repo,
                            cfg.read_data_subset,
                            previous.cursor,
                            now,
                            Some(&previous.damaged_files),
                        )?)
                    });
            let (result, cursor) = outcome.unwrap_or_else(|e| {
                let error = ctx.redactor.redact(&e.to_string());
                let r = crate::verify::VerifyResult::failed(now, cfg.read_data_subset, error);
                (r, previous.cursor)
            });
            let saved = previous.after(&result, cursor);
            if let Err(e) = crate::verify::save(&state_dir, &saved) {
                tracing::warn!(error = %e, "verification result not saved to the state directory");
            }
            (result, saved)
        })
        .await;
        let (result, saved) = match done {
            Ok(x) => x,
            // A bug; the state keeps the previous figures.
            Err(e) => {
                let r = crate::verify::VerifyResult::failed(
                    now,
                    cfg.read_data_subset,
                    format!("internal error: {e}"),
                );
                (r, crate::verify::Saved::default())
            }
        };
        metrics::counter!(m::VERIFY_BYTES_READ).increment(result.bytes_read);
        if saved.last.is_some() {
            self.export_verify(&saved);
        }
        match (&result.error, result.ok) {
            (Some(e), _) => tracing::error!(error = %e, "verification could not run"),
            (None, true) => tracing::info!(
                packs_read = result.packs_read,
                bytes_read = result.bytes_read,
                cycle = result.cycle_ratio,
                contents = result.contents_verified,
                "verification found no damage"
            ),
            (None, false) => tracing::error!(
                damaged = result.damaged_chunks,
                files = ?result.damaged_files,
                "verification FOUND DAMAGE"
            ),
        }
        self.state.write(|s| {
            if let Some(v) = s.verify.as_mut() {
                v.running = false;
                v.last = Some(result.clone());
                v.last_damaged_chunks = saved.damaged_chunks;
                v.last_damaged_files = saved.damaged_files.clone();
                v.next_run = cfg.schedule.next_after(Utc::now(), chrono_tz::UTC);
            }
        });
        result
    }

    /// Starts a verification in the background (the schedule, or the HTTP API).
    pub fn trigger_verify(self: &Arc<Self>) -> Result<(), TriggerError> {
        if self.config.verify.is_none() {
            return Err(TriggerError::NotConfigured);
        }
        // Test and set in one step: two triggers at once start one verification.
        if !self.mark_verify_running() {
            return Err(TriggerError::AlreadyRunning);
        }
        let ctx = self.clone();
        self.tasks.spawn(async move {
            ctx.verify_marked().await;
        });
        Ok(())
    }

    /// Starts a drill in the background (the daemon's schedule).
    pub fn trigger_drill(self: &Arc<Self>, job: &str) {
        let Some(name) = self.config.jobs.keys().find(|n| n.as_str() == job).cloned() else {
            return;
        };
        let ctx = self.clone();
        self.tasks.spawn(async move {
            if let Err(e) = ctx.drill(&name).await {
                tracing::warn!(job = %name, error = %e, "drill not started");
            }
        });
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    #[error("no such job")]
    UnknownJob,
    #[error("the job is already running")]
    AlreadyRunning,
    #[error("not configured")]
    NotConfigured,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(dir: &std::path::Path, extra: &str) -> Config {
        let text = format!(
            "[repository]\npath = \"{}/repo\"\ncreate = true\nstate_dir = \"{}/state\"\n[daemon]\nmin_free_space = \"1 KiB\"\nattempts = 3\nretry_backoff_secs = 30\n{extra}",
            dir.display(),
            dir.display()
        );
        Config::parse(&text, std::path::Path::new("/test.toml")).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_with_backoff_and_the_last_outcome_counts() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context::new(config(
            dir.path(),
            "[jobs.bad]\nkind = \"command\"\nschedule = \"@daily\"\ncommand = [\"sh\", \"-c\", \"echo boom >&2; exit 1\"]\nname = \"x\"\n",
        ));
        let name = JobName::parse("bad").unwrap();
        let before = tokio::time::Instant::now();
        let r = ctx.execute(&name, "r1", "test").await;
        assert_eq!(r.status, RunStatus::Failed);
        assert_eq!(r.attempts, 3);
        assert_eq!(r.error_kind, Some(ErrorKind::Source));
        assert!(
            r.error.as_deref().unwrap().contains("boom"),
            "{:?}",
            r.error
        );
        // 30 s then 60 s of (paused, auto-advanced) backoff between the three attempts.
        assert!(tokio::time::Instant::now() - before >= Duration::from_secs(90));
        let state = ctx.state.read(|s| s.jobs["bad"].clone());
        assert!(!state.running);
        assert_eq!(state.last_run.unwrap().status, RunStatus::Failed);
    }

    // A current-thread runtime: the spawned run cannot start before the test awaits, so
    // the second trigger deterministically meets the first one running.
    #[tokio::test(flavor = "current_thread")]
    async fn one_run_per_job_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context::new(config(
            dir.path(),
            "[jobs.slow]\nkind = \"command\"\nschedule = \"@daily\"\ncommand = [\"true\"]\nname = \"x\"\n",
        ));
        ctx.trigger("slow", "test").unwrap();
        assert_eq!(
            ctx.trigger("slow", "test"),
            Err(TriggerError::AlreadyRunning)
        );
        assert_eq!(ctx.trigger("nope", "test"), Err(TriggerError::UnknownJob));
        assert_eq!(ctx.state.read(|s| s.jobs["slow"].skipped_runs), 1);
        ctx.tasks.close();
        ctx.tasks.wait().await;
        let last = ctx.state.read(|s| s.jobs["slow"].last_run.clone()).unwrap();
        assert_eq!(last.status, RunStatus::Complete);
        ctx.trigger("slow", "test").unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_repository_is_never_created_where_this_machine_served_one() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context::new(config(
            dir.path(),
            "[jobs.j]\nkind = \"command\"\nschedule = \"@daily\"\ncommand = [\"echo\", \"hi\"]\nname = \"x\"\n",
        ));
        let name = JobName::parse("j").unwrap();
        assert_eq!(
            ctx.execute(&name, "r1", "test").await.status,
            RunStatus::Complete
        );
        // The disk is unplugged: the mount point is an empty directory again.
        let repo = dir.path().join("repo");
        std::fs::rename(&repo, dir.path().join("unplugged")).unwrap();
        std::fs::create_dir_all(&repo).unwrap();
        let r = ctx.execute(&name, "r2", "test").await;
        assert_eq!(r.status, RunStatus::Failed);
        assert_eq!(r.error_kind, Some(ErrorKind::NoRepository));
        assert!(r.error.unwrap().contains("already served"));
        assert_eq!(
            std::fs::read_dir(&repo).unwrap().count(),
            0,
            "nothing created"
        );
        // Plugged back in: runs work again.
        std::fs::remove_dir(&repo).unwrap();
        std::fs::rename(dir.path().join("unplugged"), &repo).unwrap();
        assert_eq!(
            ctx.execute(&name, "r3", "test").await.status,
            RunStatus::Complete
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retention_runs_on_the_prune_schedule_without_a_successful_backup() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = Context::new(config(
            dir.path(),
            "[jobs.j]\nkind = \"command\"\nschedule = \"@daily\"\ncommand = [\"false\"]\nname = \"x\"\nretention = { keep_last = 1 }\n",
        ));
        let repo = ctx.repository().unwrap();
        // Three snapshots written by hand (say, before a disk filled up and every
        // backup started failing).
        for i in 0..3u8 {
            let mut src = crate::source::stream::StreamSource::new(
                "x",
                crate::source::stream::StreamInput::Command {
                    argv: vec!["echo".into(), i.to_string()],
                    env: Vec::new(),
                },
                Redactor::default(),
            )
            .unwrap();
            archive(
                &repo,
                "j",
                &mut src,
                &Progress::default(),
                &AtomicBool::new(false),
                &|| Ok(()),
            )
            .unwrap();
        }
        drop(repo);
        assert_eq!(
            ctx.execute(&JobName::parse("j").unwrap(), "r", "test")
                .await
                .status,
            RunStatus::Failed
        );
        assert_eq!(ctx.repository().unwrap().snapshot_ids().unwrap().len(), 3);
        ctx.prune().await.unwrap();
        assert_eq!(ctx.repository().unwrap().snapshot_ids().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_daemon_never_loads_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        // A file that is no identity at all: loading it would fail every run.
        let bogus = dir.path().join("identity");
        std::fs::write(&bogus, "not an identity").unwrap();
        let ctx = Context::new(config(
            dir.path(),
            "[jobs.j]\nkind = \"command\"\nschedule = \"@daily\"\ncommand = [\"echo\", \"hi\"]\nname = \"x\"\n",
        ));
        let mut config = ctx.config.clone();
        config.repository.identity_file = Some(bogus);
        let ctx = Context::new(config);
        let r = ctx
            .execute(&JobName::parse("j").unwrap(), "r", "test")
            .await;
        assert_eq!(r.status, RunStatus::Complete, "{:?}", r.error);
    }

    #[tokio::test]
    async fn a_missing_repository_is_not_created_without_permission() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[repository]\npath = \"{}/unmounted/repo\"\nstate_dir = \"{}/state\"\n[daemon]\nattempts = 1\n[jobs.j]\nkind = \"command\"\nschedule = \"@daily\"\ncommand = [\"true\"]\nname = \"x\"\n",
            dir.path().display(),
            dir.path().display()
        );
        let ctx = Context::new(Config::parse(&text, std::path::Path::new("/t.toml")).unwrap());
        let r = ctx
            .execute(&JobName::parse("j").unwrap(), "r", "test")
            .await;
        assert_eq!(r.status, RunStatus::Failed);
        assert_eq!(r.error_kind, Some(ErrorKind::NoRepository));
        assert!(!dir.path().join("unmounted").exists());
        assert!(
            ctx.state
                .not_ready()
                .unwrap()
                .contains("not a backuphub repository")
        );
    }

    #[tokio::test]
    async fn drill_results_survive_a_restart_and_show_in_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let job = "[jobs.pg]\nkind = \"postgres\"\nschedule = \"@daily\"\nhost = \"/run/postgresql\"\nuser = \"backup\"\n[jobs.pg.drill]\nschedule = \"@weekly\"\n";
        let ctx = Context::new(config(dir.path(), job));
        assert!(ctx.state.read(|s| s.jobs["pg"].drill.is_none()));
        let r = crate::state::DrillResult {
            time: Utc::now(),
            ok: false,
            duration_seconds: 2.0,
            snapshot: None,
            restored_bytes: 0,
            databases: Vec::new(),
            checks: Vec::new(),
            error: Some("check on \"shop\" failed".into()),
        };
        ctx.record_drill("pg", &r);
        assert_eq!(
            ctx.state.read(|s| s.jobs["pg"].drill.clone()),
            Some(r.clone())
        );
        let status = serde_json::to_value(ctx.state.read(|s| s.jobs["pg"].clone())).unwrap();
        assert_eq!(status["drill"]["ok"], false);
        assert_eq!(status["drill"]["error"], "check on \"shop\" failed");
        // A new daemon on the same state directory starts with it.
        let again = Context::new(config(dir.path(), job));
        assert_eq!(again.state.read(|s| s.jobs["pg"].drill.clone()), Some(r));
        // A drill with nothing to restore fails, and says why, in the same place.
        let r = again.drill(&JobName::parse("pg").unwrap()).await.unwrap();
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("no complete snapshot"));
        assert!(!again.state.read(|s| s.jobs["pg"].drill_running));
    }
}
