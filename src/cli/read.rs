//! Reading commands: `snapshots`, `ls`, `restore`, `cat`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::{IdentityArg, RepoArgs, exit};
use crate::repo::tree::{Entry, EntryPath};
use crate::restore::{self as restore_mod, RestoreOptions};

#[derive(Args)]
pub(super) struct SnapshotsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[arg(long)]
    job: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(super) struct LsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    identity: IdentityArg,
    snapshot: String,
    path: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(super) struct RestoreArgs {
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
    /// Also restore device nodes and FIFOs (skipped and listed otherwise).
    #[arg(long)]
    devices: bool,
    /// Keep setuid/setgid bits (cleared otherwise): a snapshot could carry a setuid-root
    /// program.
    #[arg(long)]
    setid: bool,
}

#[derive(Args)]
pub(super) struct CatArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    identity: IdentityArg,
    snapshot: String,
    path: String,
}

pub(super) fn snapshots(a: SnapshotsArgs) -> anyhow::Result<u8> {
    let r = a.repo.open(None)?;
    let snaps: Vec<_> = r
        .snapshots()?
        .into_iter()
        .filter(|s| a.job.as_ref().is_none_or(|j| &s.snapshot.job == j))
        .collect();
    if a.json {
        let v: Vec<_> = snaps
            .iter()
            .map(|s| serde_json::json!({"id": s.id, "snapshot": s.snapshot}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(exit::OK);
    }
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
    Ok(exit::OK)
}

pub(super) fn ls(a: LsArgs) -> anyhow::Result<u8> {
    let (r, _lock) = a.repo.open_for_reading(&a.identity)?;
    let s = r.resolve_snapshot(&a.snapshot)?;
    let prefix = a.path.as_deref().map(EntryPath::from);
    let mut out = std::io::stdout().lock();
    let mut first = true;
    if a.json {
        write!(out, "[")?;
    }
    for e in r.entries(&s.snapshot) {
        let e = e?;
        if prefix.as_ref().is_some_and(|p| !e.path.starts_with(p)) {
            continue;
        }
        if a.json {
            let sep = if first { "" } else { "," };
            write!(out, "{sep}\n{}", serde_json::to_string(&ls_json(&e))?)?;
        } else {
            writeln!(out, "{}", ls_line(&e))?;
        }
        first = false;
    }
    if a.json {
        writeln!(out, "\n]")?;
    }
    Ok(exit::OK)
}

pub(super) fn restore(a: RestoreArgs) -> anyhow::Result<u8> {
    let (r, _lock) = a.repo.open_for_reading(&a.identity)?;
    let s = r.resolve_snapshot(&a.snapshot)?;
    let opts = RestoreOptions {
        only: a.path.as_deref().map(EntryPath::from),
        overwrite: a.overwrite,
    };
    let special = restore_mod::SpecialFiles {
        devices: a.devices,
        setid: a.setid,
    };
    let stats = match restore_mod::restore_with(&r, &s.snapshot, &a.target, &opts, special) {
        Ok(stats) => stats,
        // Everything restorable was restored; what was not is listed, and the exit code
        // says the restore is incomplete.
        Err(restore_mod::RestoreError::Incomplete(stats)) => {
            eprintln!(
                "restored {} entries, {} to {}; {} NOT restored:",
                stats.entries,
                bytesize::ByteSize(stats.bytes),
                a.target.display(),
                stats.failures.len()
            );
            for f in &stats.failures {
                eprintln!("  {f}");
            }
            return Ok(exit::PARTIAL);
        }
        Err(e) => return Err(e.into()),
    };
    eprintln!(
        "restored {} entries, {} to {}",
        stats.entries,
        bytesize::ByteSize(stats.bytes),
        a.target.display()
    );
    if !stats.setid_cleared.is_empty() {
        eprintln!(
            "{} setuid/setgid bits were not restored (pass --setid to keep them)",
            stats.setid_cleared.len()
        );
    }
    Ok(exit::OK)
}

pub(super) fn cat(a: CatArgs) -> anyhow::Result<u8> {
    let (r, _lock) = a.repo.open_for_reading(&a.identity)?;
    let s = r.resolve_snapshot(&a.snapshot)?;
    // The stdout sink flushes when it finishes.
    let mut sink = restore_mod::WriterSink::new(std::io::BufWriter::with_capacity(
        1 << 20,
        std::io::stdout().lock(),
    ));
    restore_mod::cat_to(
        &r,
        &s.snapshot,
        &EntryPath::from(a.path.as_str()),
        &mut sink,
    )?;
    Ok(exit::OK)
}

fn mode_string(e: &Entry) -> String {
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

fn mtime(e: &Entry) -> String {
    chrono::DateTime::from_timestamp(e.mtime_ns.div_euclid(1_000_000_000), 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn ls_line(e: &Entry) -> String {
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

fn ls_json(e: &Entry) -> serde_json::Value {
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
