//! The `backuphub` command line. Parsing and presentation only: every command calls into
//! the library, and `anyhow` is used only here, at the edge.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::archiver::{self, Progress};
use crate::check::{self, ReadData};
use crate::chunker::ChunkerParams;
use crate::config::Config;
use crate::redact::Redactor;
use crate::repo::crypto::{Recipient, read_recipients_file};
use crate::repo::lock::{LockGuard, LockKind};
use crate::repo::snapshot::SnapshotStatus;
use crate::repo::tree::EntryPath;
use crate::repo::{InitOptions, OpenOptions, Repository};
use crate::restore::{self, RestoreOptions};
use crate::source::Source;
use crate::source::local::LocalSource;
use crate::source::stream::{StreamInput, StreamSource};

/// Exit codes, documented in the README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    /// Usage errors (clap's own code).
    pub const USAGE: u8 = 2;
    /// A backup stored a partial snapshot: some entries failed.
    pub const PARTIAL: u8 = 3;
    /// `check` found damage.
    pub const DAMAGED: u8 = 4;
}

#[derive(Parser)]
#[command(
    name = "backuphub",
    version,
    about = "Deduplicating, encrypting pull-model backups for a homelab",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 backup stored a partial snapshot, 4 check found damage."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct RepoArgs {
    /// Repository directory.
    #[arg(long, env = "BACKUPHUB_REPO")]
    repo: PathBuf,
    /// Where the index cache and the writer key live.
    #[arg(long, env = "BACKUPHUB_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct IdentityArg {
    /// age identity file or SSH private key, to read encrypted data.
    #[arg(long, env = "BACKUPHUB_IDENTITY")]
    identity: Option<PathBuf>,
}

impl RepoArgs {
    fn options(&self, identity: Option<&IdentityArg>) -> OpenOptions {
        OpenOptions {
            identity: identity.and_then(|i| i.identity.clone()),
            state_dir: self
                .state_dir
                .clone()
                .unwrap_or_else(crate::repo::default_state_dir),
        }
    }

    fn open(&self, identity: Option<&IdentityArg>) -> anyhow::Result<Repository> {
        Ok(Repository::open(&self.repo, &self.options(identity))?)
    }

    /// Opens under a shared lock, so that no prune removes data while it is being read.
    fn open_for_reading(&self, identity: &IdentityArg) -> anyhow::Result<(Repository, LockGuard)> {
        let r = self.open(Some(identity))?;
        let lock = r.lock(LockKind::Shared, None, Duration::from_secs(10))?;
        Ok((r, lock))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository in an empty or missing directory.
    Init {
        #[command(flatten)]
        repo: RepoArgs,
        /// Encrypt to this age (age1…) or SSH public key; repeatable.
        #[arg(long = "recipient")]
        recipients: Vec<String>,
        /// Read recipients from a file, one per line.
        #[arg(long)]
        recipients_file: Option<PathBuf>,
        /// zstd level for new data (1-19).
        #[arg(long, default_value_t = 3)]
        compression_level: i32,
        /// Average chunk size (min is half, max eight times); fixed for the repository's life.
        #[arg(long, default_value = "1MiB")]
        chunk_size: bytesize::ByteSize,
        /// Target size of pack files.
        #[arg(long, default_value = "32MiB")]
        pack_size: bytesize::ByteSize,
    },
    /// Back up paths, stdin or a command's output as a new snapshot of JOB.
    Backup {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        job: String,
        /// Read the data from stdin, stored as --name.
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
        paths: Vec<PathBuf>,
    },
    /// List snapshots.
    Snapshots {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List a snapshot's entries (SNAPSHOT: id prefix, `latest` or `latest:JOB`).
    Ls {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        identity: IdentityArg,
        snapshot: String,
        path: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot, or part of it, below a directory.
    Restore {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        identity: IdentityArg,
        snapshot: String,
        #[arg(long)]
        target: PathBuf,
        /// Only this path and what is below it.
        #[arg(long)]
        path: Option<String>,
        /// Replace existing files.
        #[arg(long)]
        overwrite: bool,
    },
    /// Write one file of a snapshot to stdout.
    Cat {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        identity: IdentityArg,
        snapshot: String,
        path: String,
    },
    /// Verify the repository; non-zero when anything is wrong.
    Check {
        #[command(flatten)]
        repo: RepoArgs,
        #[command(flatten)]
        identity: IdentityArg,
        /// Read and verify every blob.
        #[arg(long, conflicts_with = "read_data_subset")]
        read_data: bool,
        /// Read and verify this percentage of packs.
        #[arg(long, value_parser = parse_percent)]
        read_data_subset: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Repair the repository's caches.
    Repair {
        #[command(subcommand)]
        what: RepairCommand,
    },
    /// Key management.
    Key {
        #[command(subcommand)]
        what: KeyCommand,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Run the daemon: every job on its schedule, status and metrics over HTTP.
    Daemon {
        #[arg(long, env = "BACKUPHUB_CONFIG")]
        config: PathBuf,
    },
    /// Run one configured job once, in the foreground, exactly as the daemon would.
    Run {
        #[arg(long, env = "BACKUPHUB_CONFIG")]
        config: PathBuf,
        job: String,
        /// Print the run's result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a job's snapshots that its retention policy does not keep (data goes at
    /// the next prune).
    Forget {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        job: String,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Time zone for calendar periods.
        #[arg(long, default_value = "UTC")]
        timezone: chrono_tz::Tz,
        /// Report what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete data no snapshot references and repack mostly-empty packs.
    Prune {
        #[command(flatten)]
        repo: RepoArgs,
        /// Report what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show a running daemon's status.
    Status {
        /// The daemon's base URL.
        #[arg(long, default_value = "http://127.0.0.1:9750")]
        url: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct PolicyArgs {
    #[arg(long)]
    keep_last: Option<u32>,
    #[arg(long)]
    keep_hourly: Option<u32>,
    #[arg(long)]
    keep_daily: Option<u32>,
    #[arg(long)]
    keep_weekly: Option<u32>,
    #[arg(long)]
    keep_monthly: Option<u32>,
    #[arg(long)]
    keep_yearly: Option<u32>,
    /// Keep everything this much younger than the newest snapshot (36h, 7d, 2w, 1y).
    #[arg(long)]
    keep_within: Option<String>,
}

#[derive(Subcommand)]
enum RepairCommand {
    /// Rebuild the index from the packs alone.
    Index {
        #[command(flatten)]
        repo: RepoArgs,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Cache the repository's write key on this machine (needs the identity once).
    Cache {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        identity: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a daemon configuration file.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if (0.0..=100.0).contains(&v) && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{s} is not in (0, 100]"))
    }
}

/// Shows a progress bar on a terminal; silent otherwise.
fn progress_bar(
    progress: Arc<Progress>,
    done: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
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

pub fn run(cli: Cli) -> anyhow::Result<u8> {
    if matches!(cli.command, Command::Daemon { .. }) {
        crate::logging::init_daemon();
    } else {
        crate::logging::init_cli();
    }
    match cli.command {
        Command::Init {
            repo,
            recipients,
            recipients_file,
            compression_level,
            chunk_size,
            pack_size,
        } => {
            let mut keys: Vec<Recipient> = recipients
                .iter()
                .map(|r| r.parse())
                .collect::<Result<_, _>>()?;
            if let Some(f) = recipients_file {
                keys.extend(read_recipients_file(&f)?);
            }
            let avg = u32::try_from(chunk_size.as_u64()).context("--chunk-size is too large")?;
            let chunker = ChunkerParams {
                min_size: avg / 2,
                avg_size: avg,
                max_size: avg.saturating_mul(8),
            };
            let init = InitOptions {
                recipients: keys,
                compression_level,
                chunker,
                pack_size: pack_size.as_u64().max(1 << 16),
            };
            let r = Repository::init(&repo.repo, &repo.options(None), &init)?;
            println!(
                "created {} repository {} at {}",
                if r.encrypted() {
                    "encrypted"
                } else {
                    "unencrypted"
                },
                r.config().id.short(),
                repo.repo.display()
            );
            Ok(exit::OK)
        }
        Command::Backup {
            repo,
            job,
            stdin,
            command,
            name,
            exclude,
            json,
            paths,
        } => {
            crate::config::JobName::parse(&job).map_err(anyhow::Error::msg)?;
            let r = repo.open(None)?;
            let mut source: Box<dyn Source> = if stdin {
                Box::new(StreamSource::new(
                    name.as_deref().unwrap_or_default(),
                    StreamInput::Stdin,
                    Redactor::default(),
                )?)
            } else if let Some(cmd) = command {
                let argv = shlex::split(&cmd)
                    .filter(|a| !a.is_empty())
                    .with_context(|| format!("cannot split command {cmd:?}"))?;
                Box::new(StreamSource::new(
                    name.as_deref().unwrap_or_default(),
                    StreamInput::Command {
                        argv,
                        env: Vec::new(),
                    },
                    Redactor::default(),
                )?)
            } else {
                if paths.is_empty() {
                    bail!("nothing to back up: give paths, --stdin or --command");
                }
                Box::new(LocalSource::new(&paths, &exclude)?)
            };
            let _lock = r.lock(LockKind::Shared, Some(&job), Duration::from_secs(10))?;
            let progress = Arc::new(Progress::default());
            let done = Arc::new(AtomicBool::new(false));
            let bar = progress_bar(progress.clone(), done.clone());
            let cancel = AtomicBool::new(false);
            let result = archiver::archive(&r, &job, source.as_mut(), &progress, &cancel);
            done.store(true, Ordering::Relaxed);
            if let Some(b) = bar {
                let _ = b.join();
            }
            let (id, snap) = result?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"id": id, "snapshot": snap}))?
                );
            } else {
                let s = &snap.stats;
                eprintln!(
                    "snapshot {} of {}: {:?}, {} entries, {} read, {} new ({} stored), {} failed",
                    id.short(),
                    job,
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
        Command::Snapshots { repo, job, json } => {
            let r = repo.open(None)?;
            let snaps: Vec<_> = r
                .snapshots()?
                .into_iter()
                .filter(|s| job.as_ref().is_none_or(|j| &s.snapshot.job == j))
                .collect();
            if json {
                let v: Vec<_> = snaps
                    .iter()
                    .map(|s| serde_json::json!({"id": s.id, "snapshot": s.snapshot}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<8}  {:<20}  {:<16}  {:<8}  {:>8}  {:>10}  {:>10}",
                    "ID", "TIME (UTC)", "JOB", "STATUS", "ENTRIES", "SIZE", "NEW"
                )?;
                for s in &snaps {
                    let n = &s.snapshot;
                    writeln!(
                        out,
                        "{:<8}  {:<20}  {:<16}  {:<8}  {:>8}  {:>10}  {:>10}",
                        s.id.short(),
                        n.time.format("%Y-%m-%d %H:%M:%S"),
                        n.job,
                        format!("{:?}", n.status).to_lowercase(),
                        n.stats.entries,
                        bytesize::ByteSize(n.stats.total_bytes).to_string(),
                        bytesize::ByteSize(n.stats.stored_bytes).to_string()
                    )?;
                }
            }
            Ok(exit::OK)
        }
        Command::Ls {
            repo,
            identity,
            snapshot,
            path,
            json,
        } => {
            let (r, _lock) = repo.open_for_reading(&identity)?;
            let s = r.resolve_snapshot(&snapshot)?;
            let prefix = path.as_deref().map(EntryPath::from);
            let mut out = std::io::stdout().lock();
            let mut first = true;
            if json {
                write!(out, "[")?;
            }
            for e in r.entries(&s.snapshot) {
                let e = e?;
                if prefix.as_ref().is_some_and(|p| !e.path.starts_with(p)) {
                    continue;
                }
                if json {
                    let sep = if first { "" } else { "," };
                    write!(out, "{sep}\n{}", serde_json::to_string(&ls_json(&e))?)?;
                } else {
                    writeln!(out, "{}", ls_line(&e))?;
                }
                first = false;
            }
            if json {
                writeln!(out, "\n]")?;
            }
            Ok(exit::OK)
        }
        Command::Restore {
            repo,
            identity,
            snapshot,
            target,
            path,
            overwrite,
        } => {
            let (r, _lock) = repo.open_for_reading(&identity)?;
            let s = r.resolve_snapshot(&snapshot)?;
            let opts = RestoreOptions {
                only: path.as_deref().map(EntryPath::from),
                overwrite,
            };
            let stats = restore::restore(&r, &s.snapshot, &target, &opts)?;
            eprintln!(
                "restored {} entries, {} to {}",
                stats.entries,
                bytesize::ByteSize(stats.bytes),
                target.display()
            );
            Ok(exit::OK)
        }
        Command::Cat {
            repo,
            identity,
            snapshot,
            path,
        } => {
            let (r, _lock) = repo.open_for_reading(&identity)?;
            let s = r.resolve_snapshot(&snapshot)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            restore::cat(&r, &s.snapshot, &EntryPath::from(path.as_str()), &mut out)?;
            out.flush()?;
            Ok(exit::OK)
        }
        Command::Check {
            repo,
            identity,
            read_data,
            read_data_subset,
            json,
        } => {
            let (r, _lock) = repo.open_for_reading(&identity)?;
            let mode = match (read_data, read_data_subset) {
                (true, _) => ReadData::All,
                (false, Some(p)) => ReadData::Subset(p),
                _ => ReadData::None,
            };
            let report = check::check(&r, mode)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for n in &report.notes {
                    eprintln!("note: {n}");
                }
                for p in &report.problems {
                    println!("error: {p}");
                }
                eprintln!(
                    "checked {} snapshots, {} packs ({} read, {} blobs verified): {}",
                    report.snapshots,
                    report.packs,
                    report.packs_read,
                    report.blobs_read,
                    if report.ok() {
                        "no problems".to_string()
                    } else {
                        format!("{} problem(s)", report.problems.len())
                    }
                );
            }
            Ok(if report.ok() { exit::OK } else { exit::DAMAGED })
        }
        Command::Repair {
            what: RepairCommand::Index { repo },
        } => {
            let r = repo.open(None)?;
            r.rebuild_index()?;
            eprintln!(
                "index rebuilt: {} chunks in {} packs",
                r.index().chunk_count(),
                r.index().pack_count()
            );
            Ok(exit::OK)
        }
        Command::Key {
            what: KeyCommand::Cache { repo, identity },
        } => {
            let r = repo.open(Some(&IdentityArg {
                identity: Some(identity),
            }))?;
            r.write_keys()?;
            eprintln!("write key of repository {} cached", r.config().id.short());
            Ok(exit::OK)
        }
        Command::Daemon { config } => {
            let config = Config::load(&config)?;
            let rt = tokio::runtime::Runtime::new()?;
            let result = rt.block_on(crate::daemon::run(config));
            // A run stuck in a blocking read (a hung dump command) must not keep the
            // process alive past the stop timeout; it leaves no snapshot behind.
            rt.shutdown_timeout(Duration::from_secs(2));
            result?;
            Ok(exit::OK)
        }
        Command::Run { config, job, json } => {
            let config = Config::load(&config)?;
            let name = config
                .jobs
                .keys()
                .find(|n| n.as_str() == job)
                .cloned()
                .with_context(|| format!("no job {job:?} in the configuration"))?;
            let rt = tokio::runtime::Runtime::new()?;
            let result = rt.block_on(async move {
                let _metrics = crate::metrics::install();
                let ctx = crate::runner::Context::new(config);
                let run_id = crate::repo::random_hex()[..12].to_string();
                ctx.execute(&name, &run_id, "manual").await
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                eprintln!(
                    "{}: {}{}",
                    job,
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
        Command::Forget {
            repo,
            job,
            policy,
            timezone,
            dry_run,
            json,
        } => {
            let keep_within = match &policy.keep_within {
                Some(text) => {
                    Some(crate::retention::parse_duration(text).map_err(anyhow::Error::msg)?)
                }
                None => None,
            };
            let policy = crate::retention::RetentionPolicy {
                keep_last: policy.keep_last,
                keep_hourly: policy.keep_hourly,
                keep_daily: policy.keep_daily,
                keep_weekly: policy.keep_weekly,
                keep_monthly: policy.keep_monthly,
                keep_yearly: policy.keep_yearly,
                keep_within,
            };
            if policy.is_empty() {
                bail!(
                    "give at least one --keep-… option; forget without a policy would keep everything"
                );
            }
            let r = repo.open(None)?;
            let _lock = r.lock(LockKind::Shared, Some(&job), Duration::from_secs(60))?;
            let report = crate::prune::forget(&r, &job, &policy, timezone, dry_run)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eprintln!(
                    "{}{}: keeping {}, removing {} snapshot(s){}",
                    if dry_run { "dry run: " } else { "" },
                    job,
                    report.kept.len(),
                    report.removed.len(),
                    if report.removed.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", report.removed.join(" "))
                    }
                );
            }
            Ok(exit::OK)
        }
        Command::Prune {
            repo,
            dry_run,
            json,
        } => {
            let r = repo.open(None)?;
            let _lock = r.lock(LockKind::Exclusive, None, Duration::from_secs(60))?;
            let report = crate::prune::prune(&r, dry_run)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                eprintln!(
                    "{}{} packs deleted, {} repacked, {} blobs removed, {} freed",
                    if dry_run { "dry run: " } else { "" },
                    report.packs_deleted,
                    report.packs_repacked,
                    report.blobs_removed,
                    bytesize::ByteSize(report.bytes_freed)
                );
            }
            Ok(exit::OK)
        }
        Command::Status { url, json } => {
            let url = format!("{}/api/v1/status", url.trim_end_matches('/'));
            let body = ureq::get(&url)
                .call()
                .with_context(|| format!("cannot reach {url}"))?
                .body_mut()
                .read_to_string()
                .with_context(|| format!("reading {url}"))?;
            if json {
                println!("{body}");
                return Ok(exit::OK);
            }
            let v: serde_json::Value = serde_json::from_str(&body)
                .with_context(|| format!("{url} did not answer JSON"))?;
            print_status(&v)?;
            Ok(exit::OK)
        }
        Command::Config {
            what: ConfigCommand::Check { config },
        } => {
            let c = Config::load(&config)?;
            println!("{}: ok ({} jobs)", config.display(), c.jobs.len());
            Ok(exit::OK)
        }
    }
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
    for j in v["jobs"].as_array().into_iter().flatten() {
        let last = &j["last_run"];
        let time = |t: &serde_json::Value| {
            t.as_str()
                .map(|t| t.chars().take(19).collect::<String>().replace('T', " "))
                .unwrap_or_else(|| "-".into())
        };
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
    Ok(())
}

fn mode_string(e: &crate::repo::tree::Entry) -> String {
    use crate::repo::tree::EntryKind::*;
    let t = match e.kind {
        File => '-',
        Dir => 'd',
        Symlink => 'l',
        Fifo => 'p',
        CharDevice => 'c',
        BlockDevice => 'b',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (e.mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn mtime(e: &crate::repo::tree::Entry) -> String {
    chrono::DateTime::from_timestamp(e.mtime_ns.div_euclid(1_000_000_000), 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn ls_line(e: &crate::repo::tree::Entry) -> String {
    let mut line = format!(
        "{} {:>6} {:>6} {:>12} {} {}",
        mode_string(e),
        e.uid,
        e.gid,
        e.size,
        mtime(e),
        e.path
    );
    if let Some(t) = &e.link_target {
        line.push_str(&format!(" -> {}", String::from_utf8_lossy(t)));
    }
    line
}

fn ls_json(e: &crate::repo::tree::Entry) -> serde_json::Value {
    serde_json::json!({
        "path": e.path.display(),
        "kind": e.kind,
        "mode": e.mode,
        "uid": e.uid,
        "gid": e.gid,
        "size": e.size,
        "mtime": mtime(e),
        "link_target": e.link_target.as_ref().map(|t| String::from_utf8_lossy(t).into_owned()),
        "meta": e.meta,
    })
}

pub fn exit_code_for_usage() -> u8 {
    exit::USAGE
}
