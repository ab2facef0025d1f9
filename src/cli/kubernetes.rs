//! The kubernetes kind's command: `restore-kubernetes`.

use std::path::PathBuf;

use clap::Args;

use super::{IdentityArg, RepoArgs, exit};
use crate::kinds::kubernetes::restore::{RestoreOptions, restore};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  backuphub restore-kubernetes latest:cluster --target /tmp/cluster\n  kubectl apply -f /tmp/cluster --recursive\n\n  backuphub restore-kubernetes latest:cluster --target /tmp/shop --namespace shop\n  backuphub restore-kubernetes 3f2a9c1e --target /tmp/certs --resource certificates.cert-manager.io"
)]
pub(super) struct RestoreKubernetesArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    identity: IdentityArg,
    /// The snapshot: an id prefix, `latest` or `latest:JOB`.
    snapshot: String,
    /// A new (or empty) directory for the YAML files.
    #[arg(long)]
    target: PathBuf,
    /// Only this namespace (repeatable); cluster-scoped objects are kept unless
    /// `--resource` leaves them out.
    #[arg(long = "namespace")]
    namespaces: Vec<String>,
    /// Only this resource, as `resource.group` or `resource` for the core group (repeatable).
    #[arg(long = "resource")]
    resources: Vec<String>,
    /// Also objects a restored controller recreates (pods of ReplicaSets, ReplicaSets of
    /// Deployments, Endpoints of Services).
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

pub(super) fn restore_kubernetes(a: RestoreKubernetesArgs) -> anyhow::Result<u8> {
    let (r, _lock) = a.repo.open_for_reading(&a.identity)?;
    let s = r.resolve_snapshot(&a.snapshot)?;
    let report = restore(
        &r,
        &s.id.to_hex(),
        &s.snapshot,
        &a.target,
        &RestoreOptions {
            namespaces: a.namespaces,
            resources: a.resources,
            all: a.all,
        },
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} objects written to {} ({} left out: a restored controller recreates them)",
            report.written,
            a.target.display(),
            report.left_out
        );
        for d in &report.files {
            println!("  {d}");
        }
        for (path, err) in &report.failures {
            println!("FAILED {path}: {err}");
        }
        println!(
            "apply with: kubectl apply -f {} --recursive",
            a.target.display()
        );
    }
    Ok(if report.failures.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}
