//! The configured daemon: `daemon`, `run`, `config check`, and `status` of a running one.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::exit;
use crate::config::Config;

#[derive(Args)]
pub(super) struct DaemonArgs {
    #[arg(long, env = "BACKUPHUB_CONFIG")]
    config: PathBuf,
}

#[derive(Args)]
pub(super) struct RunArgs {
    #[arg(long, env = "BACKUPHUB_CONFIG")]
    config: PathBuf,
    job: String,
    /// Print the run's result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(super) struct StatusArgs {
    /// The daemon's base URL.
    #[arg(long, default_value = "http://127.0.0.1:9750")]
    url: String,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub(super) enum ConfigCommand {
    /// Validate a daemon configuration file.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

pub(super) fn daemon(a: DaemonArgs) -> anyhow::Result<u8> {
    let config = Config::load(&a.config)?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(crate::daemon::run(config));
    // A run stuck in a blocking read (a hung dump command) must not keep the
    // process alive past the stop timeout; it leaves no snapshot behind.
    rt.shutdown_timeout(Duration::from_secs(2));
    result?;
    Ok(exit::OK)
}

pub(super) fn run_job(a: RunArgs) -> anyhow::Result<u8> {
    let config = Config::load(&a.config)?;
    let name = config
        .job_name(&a.job)
        .with_context(|| format!("no job {:?} in the configuration", a.job))?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async move {
        let _metrics = crate::metrics::install();
        let ctx = crate::runner::Context::new(config);
        // SIGTERM or Ctrl-C stops the run the way the daemon stops one: cancelled, its
        // temporary objects removed, no snapshot.
        let token = ctx.cancel.clone();
        let stopper = tokio::spawn(async move {
            crate::daemon::wait_for_signal().await;
            tracing::warn!("stopping the run");
            token.cancel();
        });
        let run_id = crate::repo::random_hex()[..12].to_string();
        let result = ctx.execute(&name, &run_id, "manual").await;
        stopper.abort();
        result
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        eprintln!(
            "{}: {}{}",
            a.job,
            result.status.as_str(),
            result
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    Ok(match result.status {
        crate::state::RunStatus::Complete => exit::OK,
        crate::state::RunStatus::Partial => exit::PARTIAL,
        crate::state::RunStatus::Failed => exit::ERROR,
    })
}

pub(super) fn config(what: ConfigCommand) -> anyhow::Result<u8> {
    let ConfigCommand::Check { config } = what;
    let c = Config::load(&config)?;
    println!("{}: ok ({} jobs)", config.display(), c.jobs.len());
    Ok(exit::OK)
}

pub(super) fn status(a: StatusArgs) -> anyhow::Result<u8> {
    let url = format!("{}/api/v1/status", a.url.trim_end_matches('/'));
    let body = ureq::get(&url)
        .call()
        .with_context(|| format!("cannot reach {url}"))?
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading {url}"))?;
    if a.json {
        println!("{body}");
        return Ok(exit::OK);
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))?;
    print_status(&v)?;
    Ok(exit::OK)
}

fn print_status(v: &serde_json::Value) -> anyhow::Result<()> {
    let s = |v: &serde_json::Value| v.as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    let bytes = |v: &serde_json::Value| {
        v.as_u64()
            .map(|b| bytesize::ByteSize(b).to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut out = std::io::stdout().lock();
    let r = &v["repository"];
    writeln!(
        out,
        "backuphub {}  up {}s  ready: {}",
        s(&v["version"]),
        v["uptime_seconds"],
        v["ready"]
    )?;
    if let Some(reason) = v["ready_reason"].as_str() {
        writeln!(out, "  not ready: {reason}")?;
    }
    writeln!(
        out,
        "repository {}: {} in {} packs, {} chunks, {} snapshots; disk {} free of {}",
        s(&r["path"]),
        bytes(&r["size_bytes"]),
        r["packs"],
        r["chunks"],
        r["snapshots"],
        bytes(&r["disk_free_bytes"]),
        bytes(&r["disk_size_bytes"])
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<16} {:<8} {:<9} {:<20} {:<20} {:<9} {:>9}  ERROR",
        "JOB", "KIND", "RUNNING", "LAST RUN", "NEXT RUN", "STATUS", "STORED"
    )?;
    let time = |t: &serde_json::Value| {
        t.as_str()
            .map(|t| t.chars().take(19).collect::<String>().replace('T', " "))
            .unwrap_or_else(|| "-".into())
    };
    for j in v["jobs"].as_array().into_iter().flatten() {
        let last = &j["last_run"];
        writeln!(
            out,
            "{:<16} {:<8} {:<9} {:<20} {:<20} {:<9} {:>9}  {}",
            s(&j["name"]),
            s(&j["kind"]),
            if j["running"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            time(&last["end"]),
            time(&j["next_run"]),
            s(&last["status"]),
            bytes(&last["stats"]["stored_bytes"]),
            last["error"].as_str().unwrap_or("")
        )?;
    }
    // Restore drills, where jobs have them: a backup that "succeeds" but no longer
    // restores must show here too.
    for j in v["jobs"].as_array().into_iter().flatten() {
        let d = &j["drill"];
        if d.is_null() {
            continue;
        }
        writeln!(
            out,
            "drill of {:<12} {}  {:<6} {:.0}s{}",
            s(&j["name"]),
            time(&d["time"]),
            if d["ok"].as_bool() == Some(true) {
                "ok"
            } else {
                "FAILED"
            },
            d["duration_seconds"].as_f64().unwrap_or(0.0),
            d["error"]
                .as_str()
                .map(|e| format!("  {e}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}
