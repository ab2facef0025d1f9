//! `backup`: one snapshot of paths, stdin or a command's output.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use super::{RepoArgs, exit};
use crate::archiver::Progress;
use crate::redact::Redactor;
use crate::repo::snapshot::SnapshotStatus;
use crate::runner::JobRun;
use crate::source::Source;
use crate::source::local::LocalSource;
use crate::source::stream::{StreamInput, StreamSource};

#[derive(Args)]
pub(super) struct BackupArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[arg(long)]
    job: String,
    /// Read the data from stdin, stored as --name. backuphub cannot see whether the
    /// program writing into the pipe failed: `(echo half; exit 1) | backuphub backup
    /// --stdin` stores a complete-looking snapshot. For dumps use --command, which fails
    /// the run when the command exits non-zero.
    #[arg(long, requires = "name", conflicts_with_all = ["command", "paths"])]
    stdin: bool,
    /// Run this command (split like a shell, but no shell) and store its stdout as --name.
    #[arg(long, requires = "name", conflicts_with = "paths")]
    command: Option<String>,
    /// File name for --stdin or --command.
    #[arg(long)]
    name: Option<String>,
    /// Glob of paths to leave out; repeatable.
    #[arg(long)]
    exclude: Vec<String>,
    #[arg(long)]
    json: bool,
    /// Retention applied after the snapshot is written, as the daemon does after each run
    /// (none given: every snapshot is kept).
    #[command(flatten)]
    policy: super::maint::PolicyArgs,
    /// Time zone for the retention policy's calendar periods.
    #[arg(long, default_value = "UTC")]
    timezone: chrono_tz::Tz,
    paths: Vec<PathBuf>,
}

impl BackupArgs {
    fn source(&self) -> anyhow::Result<Box<dyn Source>> {
        let name = self.name.as_deref().unwrap_or_default();
        Ok(if self.stdin {
            Box::new(StreamSource::new(
                name,
                StreamInput::Stdin,
                Redactor::default(),
            )?)
        } else if let Some(cmd) = &self.command {
            let argv = shlex::split(cmd)
                .filter(|a| !a.is_empty())
                .with_context(|| format!("cannot split command {cmd:?}"))?;
            Box::new(StreamSource::new(
                name,
                StreamInput::Command {
                    argv,
                    env: Vec::new(),
                },
                Redactor::default(),
            )?)
        } else {
            if self.paths.is_empty() {
                bail!("nothing to back up: give paths, --stdin or --command");
            }
            Box::new(LocalSource::new(&self.paths, &self.exclude)?)
        })
    }
}

pub(super) fn backup(a: BackupArgs) -> anyhow::Result<u8> {
    crate::config::JobName::parse(&a.job).map_err(anyhow::Error::msg)?;
    let policy = a.policy.to_policy()?;
    let r = a.repo.open(None)?;
    let mut source = a.source()?;
    let progress = Arc::new(Progress::default());
    let done = Arc::new(AtomicBool::new(false));
    let bar = progress_bar(progress.clone(), done.clone());
    let cancel = AtomicBool::new(false);
    // The same path to a snapshot as the daemon's runs.
    let result = JobRun {
        repo: &r,
        job: &a.job,
        retention: (!policy.is_empty()).then_some((&policy, a.timezone)),
        redactor: &Redactor::default(),
        progress: &progress,
        cancel: &cancel,
        lock_wait: Duration::from_secs(10),
    }
    .run(source.as_mut());
    done.store(true, Ordering::Relaxed);
    if let Some(b) = bar {
        let _ = b.join();
    }
    let (id, snap) = result?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"id": id, "snapshot": snap}))?
        );
    } else {
        let s = &snap.stats;
        eprintln!(
            "snapshot {} of {}: {:?}, {} entries, {} read, {} new ({} stored), {} failed",
            id.short(),
            a.job,
            snap.status,
            s.entries,
            bytesize::ByteSize(s.read_bytes),
            bytesize::ByteSize(s.new_bytes),
            bytesize::ByteSize(s.stored_bytes),
            s.failures
        );
        if snap.status == SnapshotStatus::Partial
            && let Ok(d) = r.open_details(&snap)
        {
            for f in d.failures {
                eprintln!("  failed: {}: {}", f.path, f.error);
            }
        }
    }
    Ok(if snap.status == SnapshotStatus::Complete {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

/// Shows a progress bar on a terminal; silent otherwise.
fn progress_bar(
    progress: Arc<Progress>,
    done: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(std::thread::spawn(move || {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .expect("valid template"),
        );
        while !done.load(Ordering::Relaxed) {
            let read = progress.read_bytes.load(Ordering::Relaxed);
            let stored = progress.stored_bytes.load(Ordering::Relaxed);
            let entries = progress.entries.load(Ordering::Relaxed);
            bar.set_message(format!(
                "{entries} entries, {} read, {} stored",
                bytesize::ByteSize(read),
                bytesize::ByteSize(stored)
            ));
            bar.tick();
            std::thread::sleep(Duration::from_millis(200));
        }
        bar.finish_and_clear();
    }))
}
