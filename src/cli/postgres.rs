//! The postgres kind's commands: `restore-postgres` and `drill`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;
use clap::Args;

use super::{IdentityArg, RepoArgs, exit};
use crate::config::Config;
use crate::kinds::postgres::client::ConnParams;
use crate::kinds::postgres::restore::{RestoreOptions, restore_snapshot};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  backuphub restore-postgres latest:pg --into postgresql://postgres@10.0.0.21:5432/ --globals --password-file ~/pgpass\n  backuphub restore-postgres 3f2a9c1e --into postgresql://postgres@localhost/ --database shop --clean\n\nOr by hand: backuphub cat latest:pg shop.pgdump | pg_restore -d shop"
)]
pub(super) struct RestorePostgresArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    identity: IdentityArg,
    /// The snapshot: an id prefix, `latest` or `latest:JOB`.
    snapshot: String,
    /// The server to restore into: postgresql://USER@HOST:PORT/ (or a socket directory as
    /// host=/run/postgresql).
    #[arg(long)]
    into: String,
    /// Only this database (repeatable); default: every database in the snapshot.
    #[arg(long = "database")]
    databases: Vec<String>,
    /// Restore roles and tablespaces (globals.sql) first.
    #[arg(long)]
    globals: bool,
    /// Drop and recreate databases that exist (without it, a non-empty one is refused).
    #[arg(long)]
    clean: bool,
    /// Custom-format dumps: skip ownership and privileges (for a server without the roles).
    #[arg(long)]
    no_owner: bool,
    /// A file holding the password (better than one in the URL, which `ps` shows).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// A directory of PostgreSQL client programs (repeatable); default: PATH.
    #[arg(long = "bin-dir")]
    bin_dirs: Vec<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub(super) fn restore_postgres(a: RestorePostgresArgs) -> anyhow::Result<u8> {
    let target = ConnParams::from_url(&a.into, a.password_file.as_deref())?;
    let redactor = crate::redact::Redactor::new(target.secret().into_iter().collect());
    let (r, _lock) = a.repo.open_for_reading(&a.identity)?;
    let s = r.resolve_snapshot(&a.snapshot)?;
    let opts = RestoreOptions {
        databases: a.databases,
        globals: a.globals,
        clean: a.clean,
        no_owner: a.no_owner,
        bin_dirs: a.bin_dirs,
    };
    let report = restore_snapshot(
        &r,
        &s.snapshot,
        &target,
        &opts,
        &redactor,
        &AtomicBool::new(false),
    )
    .map_err(|e| anyhow::anyhow!(redactor.redact(&e.to_string())))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if let Some(g) = &report.globals {
            match g {
                Ok(existing) => println!(
                    "globals.sql: restored ({existing} roles or tablespaces existed already)"
                ),
                Err(e) => println!("globals.sql: FAILED: {e}"),
            }
        }
        println!(
            "{:<24}  {:<8}  {:>7}  {:>12}  {:>10}  RESULT",
            "DATABASE", "FORMAT", "TABLES", "ROWS", "DURATION"
        );
        for d in &report.databases {
            println!(
                "{:<24}  {:<8}  {:>7}  {:>12}  {:>9.1}s  {}",
                d.database,
                d.format,
                d.tables,
                d.rows,
                d.duration_ms as f64 / 1000.0,
                match &d.error {
                    None => "ok".to_string(),
                    Some(e) => format!("FAILED: {e}"),
                }
            );
        }
    }
    Ok(if report.ok() { exit::OK } else { exit::ERROR })
}

#[derive(Args)]
#[command(after_help = "Example:\n  backuphub drill --config /etc/backuphub/config.toml pg")]
pub(super) struct DrillArgs {
    #[arg(long, env = "BACKUPHUB_CONFIG")]
    config: PathBuf,
    /// A postgres job with a [jobs.JOB.drill] section.
    job: String,
    #[arg(long)]
    json: bool,
}

pub(super) fn drill(a: DrillArgs) -> anyhow::Result<u8> {
    let config = Config::load(&a.config)?;
    let name = config
        .job_name(&a.job)
        .with_context(|| format!("no job {:?} in the configuration", a.job))?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async move {
        let _metrics = crate::metrics::install();
        let ctx = crate::runner::Context::new(config);
        ctx.drill(&name).await
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "drill of {}: {} in {:.1}s (snapshot {}, {} restored)",
            a.job,
            if result.ok { "ok" } else { "FAILED" },
            result.duration_seconds,
            result
                .snapshot
                .as_deref()
                .map_or("none", |s| &s[..8.min(s.len())]),
            bytesize::ByteSize(result.restored_bytes)
        );
        for d in &result.databases {
            println!(
                "  database {:<20} {:>5} tables {:>10} rows  {}",
                d.database,
                d.tables,
                d.rows,
                d.error.as_deref().unwrap_or("ok")
            );
        }
        for c in &result.checks {
            println!(
                "  check {:<12} {} {}: {}",
                c.database,
                c.query,
                c.expect,
                if c.ok {
                    c.detail.clone()
                } else {
                    format!("FAILED: {}", c.detail)
                }
            );
        }
        if let Some(e) = &result.error {
            println!("  error: {e}");
        }
    }
    Ok(if result.ok { exit::OK } else { exit::ERROR })
}
