//! Retention and garbage collection.
//!
//! `forget` applies a job's retention plan by removing manifests. `prune` then marks every
//! blob named by a remaining snapshot's reference list and sweeps the rest: packs with
//! nothing live are deleted, packs mostly dead are repacked (sealed bytes are copied as they
//! are, so no identity is needed). Prune holds the exclusive lock, so no backup writes
//! while it decides what is garbage; a new pack is durable before the old one goes, so a
//! crash at any point leaves at worst duplicates, which the next prune removes.

use std::fs::File;

use chrono_tz::Tz;
use serde::Serialize;

use crate::repo::id::Id;
use crate::repo::pack::{self, PackWriter};
use crate::repo::{RepoError, Repository, random_hex};
use crate::retention::{Candidate, RetentionPolicy, plan};

/// Repack a pack when at least this share of its bytes is garbage.
const REPACK_THRESHOLD: f64 = 0.5;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ForgetReport {
    pub kept: Vec<String>,
    pub removed: Vec<String>,
}

/// Applies `policy` to `job`'s snapshots. With `dry_run`, only reports.
pub fn forget(
    repo: &Repository,
    job: &str,
    policy: &RetentionPolicy,
    tz: Tz,
    dry_run: bool,
) -> Result<ForgetReport, RepoError> {
    let candidates: Vec<Candidate<Id>> = repo
        .snapshots()?
        .into_iter()
        .filter(|s| s.snapshot.job == job)
        .map(|s| Candidate {
            key: s.id,
            time: s.snapshot.time,
            complete: s.snapshot.status == crate::repo::snapshot::SnapshotStatus::Complete,
        })
        .collect();
    let mut report = ForgetReport::default();
    for d in plan(&candidates, policy, tz) {
        if d.keep {
            report.kept.push(d.key.short());
        } else {
            if !dry_run {
                repo.forget_snapshot(&d.key)?;
            }
            report.removed.push(d.key.short());
        }
    }
    Ok(report)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    pub bytes_freed: u64,
    pub blobs_removed: u64,
    pub refs_removed: u64,
    pub tmp_removed: u64,
    pub dry_run: bool,
}

/// Marks and sweeps. The caller holds the exclusive lock.
pub fn prune(repo: &Repository, dry_run: bool) -> Result<PruneReport, RepoError> {
    // The index must describe the packs as they are now, under the lock, and must not
    // change while the sweep relies on it.
    repo.with_maintenance(|| prune_locked(repo, dry_run))
}

fn prune_locked(repo: &Repository, dry_run: bool) -> Result<PruneReport, RepoError> {
    let mut report = PruneReport {
        dry_run,
        ..Default::default()
    };
    // Mark: a sorted vector of ids, 32 bytes per live blob and no more, so a Pi can
    // hold the mark set of a full 1 TB disk (about a million chunks) in 32 MiB.
    let mut live_refs = std::collections::HashSet::new();
    let mut live: Vec<Id> = Vec::new();
    for s in repo.snapshots_strict()? {
        live_refs.insert(s.snapshot.refs);
        live.extend(repo.load_refs(&s.snapshot.refs)?);
        live.extend(&s.snapshot.tree);
        live.sort_unstable();
        live.dedup();
    }
    let is_live = |id: &Id| live.binary_search(id).is_ok();

    // Sweep.
    let packs_dir = repo.packs_dir();
    let mut new_pack: Option<PackWriter> = None;
    let mut retired: Vec<(Id, u64)> = Vec::new();
    let mut packs: Vec<Id> = repo.list_packs()?.into_iter().collect();
    packs.sort();
    for p in packs {
        let path = pack::pack_path(&packs_dir, &p);
        let entries = match pack::read_header(&path) {
            Ok(e) => e,
            Err(e) => {
                // Never delete what cannot be read: check reports it, a human decides.
                tracing::warn!(pack = %p.short(), error = %e, "leaving unreadable pack alone");
                continue;
            }
        };
        let size = std::fs::metadata(&path)
            .map_err(|source| RepoError::Io {
                path: path.clone(),
                error: source,
            })?
            .len();
        let (mut live_bytes, mut dead_bytes) = (0u64, 0u64);
        // Of duplicate copies, the one the index points at is kept; the others are dead.
        let kept = |e: &pack::PackEntry| -> Result<bool, RepoError> {
            Ok(is_live(&e.id) && repo.index().get(&e.id)?.is_none_or(|l| l.pack == p))
        };
        for e in &entries {
            if kept(e)? {
                live_bytes += e.length as u64;
            } else {
                dead_bytes += e.length as u64;
            }
        }
        let total = (live_bytes + dead_bytes).max(1);
        if live_bytes == 0 {
            report.packs_deleted += 1;
            report.blobs_removed += entries.len() as u64;
            retired.push((p, size));
            continue;
        }
        if (dead_bytes as f64) / (total as f64) < REPACK_THRESHOLD {
            continue;
        }
        report.packs_repacked += 1;
        let f = File::open(&path).map_err(|source| RepoError::Io {
            path: path.clone(),
            error: source,
        })?;
        let mut unreadable = false;
        for e in &entries {
            if !kept(e)? {
                report.blobs_removed += 1;
                continue;
            }
            if dry_run {
                continue;
            }
            let sealed = match pack::read_blob(&f, &path, e.offset, e.length) {
                Ok(s) => s,
                Err(err) => {
                    // Keep the pack: what could be copied is a harmless duplicate, and one
                    // bad pack must not stop every future prune.
                    tracing::warn!(pack = %p.short(), error = %err, "cannot repack; leaving the pack alone");
                    unreadable = true;
                    break;
                }
            };
            if new_pack.is_none() {
                new_pack = Some(PackWriter::create(
                    repo.tmp_dir().join(format!("{}.pack", random_hex())),
                )?);
            }
            let w = new_pack.as_mut().expect("just created");
            w.add(e.kind, e.id, &sealed)?;
            if w.size() >= repo.config().pack_size {
                let (id, entries) = new_pack.take().expect("present").finish(&packs_dir)?;
                repo.index().add_pack(id, &entries)?;
            }
        }
        if !unreadable {
            retired.push((p, size));
        }
    }
    if let Some(w) = new_pack.filter(|w| !w.is_empty()) {
        let (id, entries) = w.finish(&packs_dir)?;
        repo.index().add_pack(id, &entries)?;
    }
    // Only now, with every live blob durable elsewhere, do old packs go.
    for (p, size) in retired {
        report.bytes_freed += size;
        if !dry_run {
            let path = pack::pack_path(&packs_dir, &p);
            std::fs::remove_file(&path).map_err(|source| RepoError::Io { path, error: source })?;
            repo.index().remove_pack(&p)?;
        }
    }
    // Reference lists no snapshot names, and leftovers of interrupted writes.
    if let Ok(rd) = std::fs::read_dir(repo.refs_dir()) {
        for f in rd.flatten() {
            let id = f.file_name().to_str().and_then(|n| n.parse::<Id>().ok());
            if id.is_some_and(|id| !live_refs.contains(&id)) {
                report.refs_removed += 1;
                if !dry_run {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }
    if !dry_run {
        report.tmp_removed = repo.clean_tmp()? as u64;
        repo.index().flush()?;
    }
    Ok(report)
}
