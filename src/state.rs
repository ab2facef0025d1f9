//! The one shared state: written by the scheduler and runners, read by HTTP.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::repo::snapshot::SnapshotStats;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Complete,
    Partial,
    Failed,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Complete => "complete",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
        }
    }

    /// The value of `backuphub_job_last_run_status`: 1 complete, 2 partial, 0 failed.
    pub fn metric_value(&self) -> f64 {
        match self {
            RunStatus::Complete => 1.0,
            RunStatus::Partial => 2.0,
            RunStatus::Failed => 0.0,
        }
    }
}

/// The outcome of one run of a job (after retries).
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub run_id: String,
    pub trigger: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub status: RunStatus,
    pub attempts: u32,
    pub snapshot: Option<String>,
    pub stats: Option<SnapshotStats>,
    /// Secrets redacted.
    pub error: Option<String>,
    pub error_kind: Option<crate::error::ErrorKind>,
}

/// A restore drill's result (postgres jobs with a `[drill]`).
pub use crate::kinds::postgres::drill::DrillResult;

#[derive(Clone, Debug, Serialize)]
pub struct JobState {
    pub name: String,
    pub kind: String,
    pub schedule: String,
    pub timezone: String,
    pub next_run: Option<DateTime<Utc>>,
    pub running: bool,
    pub running_since: Option<DateTime<Utc>>,
    pub skipped_runs: u64,
    pub last_run: Option<RunResult>,
    pub last_success: Option<DateTime<Utc>>,
    pub snapshots: u64,
    /// The last restore drill, if the job has drills (kept across restarts).
    pub drill: Option<DrillResult>,
    pub drill_running: bool,
    /// The last runs since the daemon started, newest first (for the web UI; the
    /// repository's snapshots are the lasting record).
    #[serde(skip)]
    pub recent_runs: std::collections::VecDeque<RunResult>,
}

/// How many runs per job [`JobState::recent_runs`] keeps.
pub const RECENT_RUNS: usize = 20;

#[derive(Clone, Debug, Default, Serialize)]
pub struct RepoState {
    pub path: String,
    pub available: bool,
    pub error: Option<String>,
    pub size_bytes: u64,
    pub chunks: u64,
    pub packs: u64,
    pub snapshots: u64,
    /// Logical bytes of all snapshots over bytes stored.
    pub dedup_ratio: Option<f64>,
    pub disk_free_bytes: u64,
    pub disk_size_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneState {
    pub last_run: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// Scheduled verification (`[verify]`): its settings, whether it runs, the last result.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyState {
    pub schedule: String,
    pub read_data_subset: String,
    pub next_run: Option<DateTime<Utc>>,
    pub running: bool,
    /// The last result (kept across restarts).
    pub last: Option<crate::verify::VerifyResult>,
    /// What the last run that ran to the end found: still true when the last run could
    /// not run at all.
    pub last_damaged_chunks: u64,
    pub last_damaged_files: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub started: DateTime<Utc>,
    pub uptime_seconds: i64,
    pub ready: bool,
    pub ready_reason: Option<String>,
    pub repository: RepoState,
    pub prune: PruneState,
    /// `null` when no `[verify]` is configured.
    pub verify: Option<VerifyState>,
    pub jobs: Vec<JobState>,
}

#[derive(Debug)]
pub struct Inner {
    pub started: DateTime<Utc>,
    pub repository: RepoState,
    pub prune: PruneState,
    pub verify: Option<VerifyState>,
    pub jobs: BTreeMap<String, JobState>,
    pub min_free_bytes: u64,
}

/// Cheap to clone; every clone is the same state.
#[derive(Clone, Debug)]
pub struct SharedState(Arc<RwLock<Inner>>);

impl SharedState {
    pub fn new(inner: Inner) -> SharedState {
        SharedState(Arc::new(RwLock::new(inner)))
    }

    pub fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        f(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn write<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.0.write().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn update_job(&self, job: &str, f: impl FnOnce(&mut JobState)) {
        self.write(|s| {
            if let Some(j) = s.jobs.get_mut(job) {
                f(j)
            }
        })
    }

    /// Why the daemon is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        self.read(|s| {
            if !s.repository.available {
                return Some(
                    s.repository
                        .error
                        .clone()
                        .unwrap_or_else(|| "repository not available".into()),
                );
            }
            if s.repository.disk_free_bytes < s.min_free_bytes {
                return Some(format!(
                    "only {} free on the repository's disk, below the threshold of {}",
                    bytesize::ByteSize(s.repository.disk_free_bytes),
                    bytesize::ByteSize(s.min_free_bytes)
                ));
            }
            None
        })
    }

    pub fn status(&self, now: DateTime<Utc>) -> Status {
        let reason = self.not_ready();
        self.read(|s| Status {
            version: env!("CARGO_PKG_VERSION"),
            started: s.started,
            uptime_seconds: (now - s.started).num_seconds(),
            ready: reason.is_none(),
            ready_reason: reason,
            repository: s.repository.clone(),
            prune: s.prune.clone(),
            verify: s.verify.clone(),
            jobs: s.jobs.values().cloned().collect(),
        })
    }
}

/// Writes `value` as JSON to `path` atomically (write, fsync, rename): a state file that
/// outlives restarts (drill and verification results) is the old one or the new one,
/// never half of either.
pub fn save_json(path: &std::path::Path, value: &impl Serialize) -> std::io::Result<()> {
    let dir = path.parent().expect("a state file has a directory");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, value)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
