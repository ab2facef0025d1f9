//! The s3 kind's command: `restore-s3`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{IdentityArg, RepoArgs, exit};
use crate::kinds::s3::client::{S3, read_secret};
use crate::kinds::s3::restore::{RestoreOptions, restore};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  backuphub restore-s3 latest:rgw --endpoint http://127.0.0.1:9000 --bucket photos \\\n      --source-bucket photos --access-key-file ~/minio-ak --secret-key-file ~/minio-sk\n  backuphub restore-s3 3f2a9c1e --endpoint http://10.0.0.30:7480 --bucket docs --prefix 2026/ --overwrite\n\nOr as files: backuphub restore latest:rgw --target /tmp/rgw"
)]
pub(super) struct RestoreS3Args {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    identity: IdentityArg,
    /// The snapshot: an id prefix, `latest` or `latest:JOB`.
    snapshot: String,
    /// The S3 server to upload to, e.g. http://127.0.0.1:9000 (the Pi's MinIO).
    #[arg(long)]
    endpoint: String,
    /// The bucket to upload into (created if missing).
    #[arg(long)]
    bucket: String,
    /// The snapshot's bucket to restore (needed when it holds several).
    #[arg(long)]
    source_bucket: Option<String>,
    /// Only keys starting with this.
    #[arg(long)]
    prefix: Option<String>,
    #[arg(long, env = "BACKUPHUB_S3_ACCESS_KEY_FILE")]
    access_key_file: PathBuf,
    #[arg(long, env = "BACKUPHUB_S3_SECRET_KEY_FILE")]
    secret_key_file: PathBuf,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Virtual-hosted addressing instead of path style.
    #[arg(long)]
    virtual_hosted: bool,
    /// Replace objects that exist with other content.
    #[arg(long)]
    overwrite: bool,
    #[arg(long)]
    json: bool,
}

pub(super) fn restore_s3(a: RestoreS3Args) -> anyhow::Result<u8> {
    let (r, _lock) = a.repo.open_for_reading(&a.identity)?;
    let s = r.resolve_snapshot(&a.snapshot)?;
    let s3 = S3::connect(
        &a.endpoint,
        &a.region,
        !a.virtual_hosted,
        &read_secret(&a.access_key_file)?,
        &read_secret(&a.secret_key_file)?,
        Duration::from_secs(60),
        4,
    )?;
    let report = restore(
        &r,
        &s.snapshot,
        &s3,
        &RestoreOptions {
            bucket: a.bucket.clone(),
            source_bucket: a.source_bucket,
            prefix: a.prefix,
            overwrite: a.overwrite,
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} objects uploaded ({}), {} already there",
            a.bucket,
            report.uploaded,
            bytesize::ByteSize(report.uploaded_bytes),
            report.skipped
        );
        for (k, e) in &report.failures {
            println!("FAILED {k:?}: {e}");
        }
    }
    Ok(if report.failures.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}
