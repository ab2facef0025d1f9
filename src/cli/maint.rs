//! Creating and maintaining a repository: `init`, `check`, `forget`, `prune`, `repair`,
//! `key`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::{IdentityArg, RepoArgs, exit};
use crate::check::{self as check_mod, ReadData};
use crate::chunker::ChunkerParams;
use crate::repo::crypto::{Recipient, read_recipients_file};
use crate::repo::index::IndexMode;
use crate::repo::lock::{LockError, LockKind};
use crate::repo::{InitOptions, RepoError, Repository};

#[derive(Args)]
pub(super) struct InitArgs {
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
    #[arg(long, default_value = "512KiB")]
    chunk_size: bytesize::ByteSize,
    /// Target size of pack files.
    #[arg(long, default_value = "32MiB")]
    pack_size: bytesize::ByteSize,
}

#[derive(Args)]
pub(super) struct CheckArgs {
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
}

#[derive(Args)]
pub(super) struct ForgetArgs {
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
}

#[derive(Args)]
pub(super) struct PruneArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Report what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(super) struct PolicyArgs {
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
pub(super) enum RepairCommand {
    /// Rebuild the index from the packs alone.
    Index {
        #[command(flatten)]
        repo: RepoArgs,
    },
}

#[derive(Subcommand)]
pub(super) enum KeyCommand {
    /// Cache the repository's write key on this machine (needs the identity once).
    Cache {
        #[command(flatten)]
        repo: RepoArgs,
        #[arg(long)]
        identity: PathBuf,
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

pub(super) fn init(a: InitArgs) -> anyhow::Result<u8> {
    let mut keys: Vec<Recipient> = a
        .recipients
        .iter()
        .map(|r| r.parse())
        .collect::<Result<_, _>>()?;
    if let Some(f) = &a.recipients_file {
        keys.extend(read_recipients_file(f)?);
    }
    let avg = u32::try_from(a.chunk_size.as_u64()).context("--chunk-size is too large")?;
    let chunker = ChunkerParams {
        min_size: avg / 2,
        avg_size: avg,
        max_size: avg.saturating_mul(8),
    };
    let init = InitOptions {
        recipients: keys,
        compression_level: a.compression_level,
        chunker,
        pack_size: a.pack_size.as_u64().max(1 << 16),
    };
    let r = Repository::init(&a.repo.repo, &a.repo.options(None), &init)?;
    println!(
        "created {} repository {} at {}",
        if r.encrypted() {
            "encrypted"
        } else {
            "unencrypted"
        },
        r.config().id.short(),
        a.repo.repo.display()
    );
    Ok(exit::OK)
}

pub(super) fn check(a: CheckArgs) -> anyhow::Result<u8> {
    let (r, _lock) = a.repo.open_for_reading(&a.identity)?;
    let mode = match (a.read_data, a.read_data_subset) {
        (true, _) => ReadData::All,
        (false, Some(p)) => ReadData::Subset(p),
        _ => ReadData::None,
    };
    let report = check_mod::check(&r, mode)?;
    if a.json {
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

pub(super) fn repair(what: RepairCommand) -> anyhow::Result<u8> {
    let RepairCommand::Index { repo } = what;
    let r = repo.open(None)?;
    if r.index().mode == IndexMode::Temporary {
        // What would be rebuilt is a throwaway copy that vanishes with this process.
        bail!(
            "nothing repaired: the index in {} could not be opened (another process, such as the daemon, holds it, or the state directory is unusable); run `repair index` where it is not in use",
            repo.options(None)
                .state_dir
                .join(r.config().id.to_hex())
                .join("index")
                .display()
        );
    }
    r.rebuild_index()?;
    eprintln!(
        "index rebuilt: {} chunks in {} packs",
        r.index().chunk_count(),
        r.index().pack_count()
    );
    Ok(exit::OK)
}

pub(super) fn key(what: KeyCommand) -> anyhow::Result<u8> {
    let KeyCommand::Cache { repo, identity } = what;
    let opts = repo.options(Some(&IdentityArg {
        identity: Some(identity),
    }));
    // Not through `Repository::open`: that refuses a key that differs from the pinned one,
    // and accepting such a key is what this command is for.
    match crate::repo::recache_key(&repo.repo, &opts)
        .context("the write key could not be cached")?
    {
        Some(path) => eprintln!("write key cached in {} (pinned)", path.display()),
        None => eprintln!("the repository is not encrypted: there is no key to cache"),
    }
    Ok(exit::OK)
}

pub(super) fn forget(a: ForgetArgs) -> anyhow::Result<u8> {
    let policy = a.policy.to_policy()?;
    if policy.is_empty() {
        bail!("give at least one --keep-… option; forget without a policy would keep everything");
    }
    let r = a.repo.open(None)?;
    // Only manifests go: this works on a full disk too, and frees the room prune needs.
    let _lock = r.lock_for_reading(Some(&a.job), Duration::from_secs(60))?;
    let report = crate::prune::forget(&r, &a.job, &policy, a.timezone, a.dry_run)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "{}{}: keeping {}, removing {} snapshot(s){}",
            if a.dry_run { "dry run: " } else { "" },
            a.job,
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

impl PolicyArgs {
    pub(super) fn to_policy(&self) -> anyhow::Result<crate::retention::RetentionPolicy> {
        let keep_within = match &self.keep_within {
            Some(text) => Some(crate::retention::parse_duration(text).map_err(anyhow::Error::msg)?),
            None => None,
        };
        Ok(crate::retention::RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within,
        })
    }
}

pub(super) fn prune(a: PruneArgs) -> anyhow::Result<u8> {
    let r = a.repo.open(None)?;
    let lock = r
        .lock(LockKind::Exclusive, None, Duration::from_secs(60))
        .map_err(full_disk_hint)?;
    if a.dry_run {
        let plan = crate::prune::plan(&r)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            print_plan(&plan);
        }
        return Ok(exit::OK);
    }
    let report = crate::prune::prune(&r, &lock, false)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        eprintln!(
            "{} packs deleted, {} repacked, {} blobs removed, {} freed",
            report.packs_deleted,
            report.packs_repacked,
            report.blobs_removed,
            bytesize::ByteSize(report.bytes_freed)
        );
        if report.packs_not_repacked > 0 {
            eprintln!(
                "{} pack(s) left to repack later (no space to write their copy, or unreadable blobs)",
                report.packs_not_repacked
            );
        }
    }
    Ok(exit::OK)
}

fn print_plan(plan: &crate::prune::PrunePlan) {
    let size = |b: u64| bytesize::ByteSize(b).to_string();
    for d in &plan.delete {
        println!(
            "delete pack {} ({}, {} blobs)",
            d.pack.to_hex(),
            size(d.size),
            d.blobs
        );
    }
    for r in &plan.repack {
        println!(
            "repack pack {} ({}): keep {} of {} blobs ({})",
            r.pack.to_hex(),
            size(r.size),
            r.keep.len(),
            r.blobs,
            size(r.keep_bytes)
        );
    }
    for u in &plan.unreadable {
        println!("leave unreadable pack {}: {}", u.pack.to_hex(), u.error);
    }
    for t in &plan.tmp {
        println!("remove tmp/{t}");
    }
    eprintln!(
        "dry run: {} packs to delete, {} to repack, {} blobs, {} temporary files to remove; {} to remove, {} to write, about {} to free",
        plan.delete.len(),
        plan.repack.len(),
        plan.blobs_removed,
        plan.tmp.len(),
        size(plan.bytes_removed),
        size(plan.bytes_written),
        size(plan.bytes_freed())
    );
}

/// Prune cannot work without its lock file; on a full disk, says how to make room.
fn full_disk_hint(e: RepoError) -> anyhow::Error {
    let full = matches!(
        &e,
        RepoError::Lock(LockError::Io { error, .. })
            if error.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
    );
    let e = anyhow::Error::from(e);
    if full {
        e.context("the backup disk is full, so prune cannot write its lock file; `forget` works on a full disk and frees the little room prune needs")
    } else {
        e
    }
}
