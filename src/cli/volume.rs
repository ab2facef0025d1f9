//! The volume kind's command: `restore-volume`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{IdentityArg, RepoArgs, exit};
use crate::kinds::kubernetes::client::{Connection, Kube};
use crate::kinds::volume::VolumeRef;
use crate::kinds::volume::restore::{NewClaim, RestoreOptions, restore};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  backuphub restore-volume latest:volumes --volume immich/library --into immich/library-restored \\\n      --create --kubeconfig ~/.kube/config\n  backuphub restore-volume 3f2a9c1e --volume immich/library --into immich/library --path photos/2026 --overwrite\n  backuphub restore-volume latest:volumes --volume database/data-postgresql-0 --into database/data-postgresql-0 --overwrite\n\nOr onto the Pi's disk: backuphub restore latest:volumes --path immich/library --target /mnt/restore"
)]
pub(super) struct RestoreVolumeArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    identity: IdentityArg,
    /// The snapshot: an id prefix, `latest` or `latest:JOB`.
    snapshot: String,
    /// The volume in the snapshot, `namespace/pvc`.
    #[arg(long)]
    volume: VolumeRef,
    /// The PVC to write into, `namespace/pvc`.
    #[arg(long)]
    into: VolumeRef,
    /// Create the target PVC (storage class and size default to the backed-up volume's).
    #[arg(long)]
    create: bool,
    /// The storage class of a created PVC.
    #[arg(long, requires = "create")]
    storage_class: Option<String>,
    /// The size of a created PVC, e.g. 20Gi.
    #[arg(long, requires = "create")]
    size: Option<String>,
    /// Only this path below the volume's root.
    #[arg(long)]
    path: Option<String>,
    /// Write into a PVC that is not empty.
    #[arg(long)]
    overwrite: bool,
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[arg(long)]
    context: Option<String>,
    /// The API server's URL, with --token-file, instead of a kubeconfig.
    #[arg(long, conflicts_with = "kubeconfig")]
    server: Option<String>,
    #[arg(long, requires = "server")]
    token_file: Option<PathBuf>,
    #[arg(long, requires = "server")]
    ca_file: Option<PathBuf>,
    /// The writer pod's image (POSIX/busybox tools).
    #[arg(long, default_value = "docker.io/library/busybox:1.37")]
    image: String,
    /// Seconds the writer pod may take to start.
    #[arg(long, default_value_t = 300)]
    pod_timeout_secs: u64,
    #[arg(long)]
    json: bool,
}

pub(super) fn restore_volume(a: RestoreVolumeArgs) -> anyhow::Result<u8> {
    let conn = Connection {
        kubeconfig: a.kubeconfig.as_deref(),
        context: a.context.as_deref(),
        server: a.server.as_deref(),
        token_file: a.token_file.as_deref(),
        ca_file: a.ca_file.as_deref(),
        request_timeout_secs: 60,
    };
    conn.validate()
        .map_err(|(k, m)| anyhow::anyhow!("--{}: {m}", k.replace('_', "-")))?;
    let (r, _lock) = a.repo.open_for_reading(&a.identity)?;
    let s = r.resolve_snapshot(&a.snapshot)?;
    let kube = Arc::new(Kube::connect(&conn)?);
    let report = restore(
        &r,
        &s.snapshot,
        kube,
        &RestoreOptions {
            volume: a.volume,
            into: a.into,
            create: a.create.then_some(NewClaim {
                storage_class: a.storage_class,
                size: a.size,
            }),
            path: a.path,
            overwrite: a.overwrite,
            image: a.image,
            pod_timeout: Duration::from_secs(a.pod_timeout_secs),
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} → {}{}: {} {} ({})",
            report.volume,
            report.into,
            if report.created { " (created)" } else { "" },
            report.entries,
            if report.block {
                "block image"
            } else {
                "entries"
            },
            bytesize::ByteSize(report.bytes),
        );
    }
    Ok(exit::OK)
}
