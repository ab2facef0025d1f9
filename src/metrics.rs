//! Prometheus metrics: names, help texts and the exporter. Every metric is documented
//! here and in the README.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const JOB_LAST_SUCCESS: &str = "backuphub_job_last_success_timestamp_seconds";
pub const JOB_LAST_STATUS: &str = "backuphub_job_last_run_status";
pub const JOB_RUNS: &str = "backuphub_job_runs_total";
pub const JOB_SKIPPED: &str = "backuphub_job_skipped_runs_total";
pub const JOB_FAILURES: &str = "backuphub_job_failures_total";
pub const JOB_DURATION: &str = "backuphub_job_duration_seconds";
pub const JOB_READ_BYTES: &str = "backuphub_job_read_bytes_total";
pub const JOB_STORED_BYTES: &str = "backuphub_job_stored_bytes_total";
pub const JOB_NEXT_RUN: &str = "backuphub_job_next_run_timestamp_seconds";
pub const JOB_RUNNING: &str = "backuphub_job_running";
pub const SNAPSHOTS: &str = "backuphub_snapshots";
pub const REPO_SIZE: &str = "backuphub_repository_size_bytes";
pub const REPO_CHUNKS: &str = "backuphub_repository_chunks";
pub const REPO_PACKS: &str = "backuphub_repository_packs";
pub const REPO_READY: &str = "backuphub_repository_ready";
pub const DISK_FREE: &str = "backuphub_disk_free_bytes";
pub const DISK_SIZE: &str = "backuphub_disk_size_bytes";
pub const PRUNE_LAST_SUCCESS: &str = "backuphub_prune_last_success_timestamp_seconds";
pub const PRUNE_FREED: &str = "backuphub_prune_freed_bytes_total";
pub const BUILD_INFO: &str = "backuphub_build_info";
pub const DRILL_LAST_SUCCESS: &str = "backuphub_drill_last_success_timestamp_seconds";
pub const DRILL_LAST_STATUS: &str = "backuphub_drill_last_status";
pub const DRILL_DURATION: &str = "backuphub_drill_duration_seconds";
pub const VERIFY_LAST_SUCCESS: &str = "backuphub_verify_last_success_timestamp_seconds";
pub const VERIFY_LAST_RUN: &str = "backuphub_verify_last_run_timestamp_seconds";
pub const VERIFY_DAMAGED: &str = "backuphub_verify_damaged_chunks";
pub const VERIFY_BYTES_READ: &str = "backuphub_verify_bytes_read_total";
pub const VERIFY_DURATION: &str = "backuphub_verify_duration_seconds";
pub const VERIFY_CYCLE: &str = "backuphub_verify_cycle_ratio";

/// Installs the global recorder once per process and returns its handle.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(JOB_DURATION.into()),
                    &[
                        1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
                    ],
                )
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist in tests; then this handle simply stays empty.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(
        JOB_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the job's last complete snapshot."
    );
    describe_gauge!(
        JOB_LAST_STATUS,
        "Outcome of the job's last run: 1 complete, 2 partial, 0 failed."
    );
    describe_counter!(
        JOB_RUNS,
        "Finished runs by outcome (complete, partial, failed)."
    );
    describe_counter!(
        JOB_SKIPPED,
        "Scheduled runs skipped because the previous run was still going."
    );
    describe_counter!(JOB_FAILURES, "Failed attempts by error kind.");
    describe_histogram!(JOB_DURATION, Unit::Seconds, "Duration of finished runs.");
    describe_counter!(JOB_READ_BYTES, Unit::Bytes, "Bytes read from sources.");
    describe_counter!(
        JOB_STORED_BYTES,
        Unit::Bytes,
        "Bytes newly written to the repository (compressed, sealed)."
    );
    describe_gauge!(
        JOB_NEXT_RUN,
        Unit::Seconds,
        "Unix time of the job's next scheduled run."
    );
    describe_gauge!(JOB_RUNNING, "1 while the job runs.");
    describe_gauge!(SNAPSHOTS, "Snapshots of the job in the repository.");
    describe_gauge!(
        REPO_SIZE,
        Unit::Bytes,
        "Total size of the repository's pack files."
    );
    describe_gauge!(REPO_CHUNKS, "Blobs in the repository index.");
    describe_gauge!(REPO_PACKS, "Pack files in the repository.");
    describe_gauge!(
        REPO_READY,
        "1 when the repository is present, writable and above the free-space threshold."
    );
    describe_gauge!(
        DISK_FREE,
        Unit::Bytes,
        "Free bytes on the repository's file system (for unprivileged users)."
    );
    describe_gauge!(
        DISK_SIZE,
        Unit::Bytes,
        "Size of the repository's file system."
    );
    describe_gauge!(
        PRUNE_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the last successful prune."
    );
    describe_counter!(PRUNE_FREED, Unit::Bytes, "Bytes freed by prune.");
    describe_gauge!(
        DRILL_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the job's last successful restore drill."
    );
    describe_gauge!(
        DRILL_LAST_STATUS,
        "Outcome of the job's last restore drill: 1 ok, 0 failed."
    );
    describe_gauge!(
        DRILL_DURATION,
        Unit::Seconds,
        "Duration of the job's last restore drill."
    );
    describe_gauge!(
        VERIFY_LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the last scheduled verification that found no damage."
    );
    describe_gauge!(
        VERIFY_LAST_RUN,
        Unit::Seconds,
        "Unix time of the last scheduled verification that ran to the end."
    );
    describe_gauge!(
        VERIFY_DAMAGED,
        "Damaged or missing chunks the last verification found (a damaged pack header, snapshot or key file counts one)."
    );
    describe_counter!(
        VERIFY_BYTES_READ,
        Unit::Bytes,
        "Pack bytes read by scheduled verification."
    );
    describe_gauge!(
        VERIFY_DURATION,
        Unit::Seconds,
        "Duration of the last scheduled verification."
    );
    describe_gauge!(
        VERIFY_CYCLE,
        "Fraction of the current verification cycle's packs read (1 when a cycle completed)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label tells the running version."
    );
}
