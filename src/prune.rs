//! Retention and garbage collection.
//!
//! `forget` applies a job's retention plan by removing manifests. `prune` then marks every
//! blob a remaining snapshot names (root → refs blobs → tree and data ids, all readable
//! without the identity) in a disk-backed set, and sweeps the rest, in two steps:
//! [`plan`] reads the pack headers and decides, [`execute`] carries the plan out (and
//! `prune --dry-run` shows it). Packs with nothing live are deleted first, so a nearly full
//! disk gains room before anything is written; packs mostly dead are then repacked
//! (sealed bytes are copied as they are, so no identity is needed). Prune holds the
//! exclusive lock and checks before every deletion that it still does; a new pack is
//! durable before the old one goes, so a crash at any point leaves at worst duplicates,
//! which the next prune removes. That next prune's repack may write a pack identical to
//! one it replaces (names are content hashes): a pack this prune wrote is never deleted.

use std::fs::File;

use chrono_tz::Tz;
use serde::Serialize;

use crate::repo::id::Id;
use crate::repo::lock::{LockError, LockGuard, LockKind};
use crate::repo::pack::{self, PackEntry, PackError, PackWriter};
use crate::repo::{RepoError, Repository, random_hex, remove_file_if_present};
use crate::retention::{Candidate, RetentionPolicy, plan as retention_plan};

pub mod mark;
use mark::{LiveSet, LiveSetBuilder};

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
    for d in retention_plan(&candidates, policy, tz) {
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

/// A pack deleted whole: nothing in it is kept.
#[derive(Clone, Debug, Serialize)]
pub struct DeletePack {
    pub pack: Id,
    pub size: u64,
    pub blobs: u64,
}

/// A pack mostly garbage: the blobs it keeps are copied into new packs, then it goes.
#[derive(Clone, Debug, Serialize)]
pub struct RepackPack {
    pub pack: Id,
    pub size: u64,
    pub blobs: u64,
    pub keep_bytes: u64,
    #[serde(rename = "keep_blobs", serialize_with = "count")]
    pub keep: Vec<PackEntry>,
}

fn count<S: serde::Serializer>(v: &[PackEntry], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(v.len() as u64)
}

/// A pack whose header cannot be read: never deleted (`check` names it, a human decides).
#[derive(Clone, Debug, Serialize)]
pub struct UnreadablePack {
    pub pack: Id,
    pub error: String,
}

/// What a prune will do, decided from what it read on disk (never from the index cache).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PrunePlan {
    /// Deleted first, to free space before anything is written.
    pub delete: Vec<DeletePack>,
    pub repack: Vec<RepackPack>,
    pub unreadable: Vec<UnreadablePack>,
    /// Leftovers of interrupted writes, by name under `tmp/`.
    pub tmp: Vec<String>,
    pub blobs_removed: u64,
    /// Bytes of the packs that go, and (about) the bytes repacking writes.
    pub bytes_removed: u64,
    pub bytes_written: u64,
    /// Kept packs holding copies the index must point at again once the copies it knew
    /// of are deleted (duplicates, or copies in unreadable packs).
    #[serde(skip)]
    pub reindex: Vec<Id>,
}

impl PrunePlan {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.repack.is_empty() && self.tmp.is_empty()
    }

    /// What executing the plan is expected to free.
    pub fn bytes_freed(&self) -> u64 {
        self.bytes_removed.saturating_sub(self.bytes_written)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub packs_deleted: u64,
    pub packs_repacked: u64,
    /// Packs to repack that were left as they are: no space to write their copy, or a
    /// blob in them could not be read.
    pub packs_not_repacked: u64,
    pub blobs_removed: u64,
    pub tmp_removed: u64,
    pub bytes_removed: u64,
    pub bytes_written: u64,
    /// Bytes really freed: removed minus written by repacking.
    pub bytes_freed: u64,
    pub dry_run: bool,
}

/// Plans and, unless `dry_run`, executes. `lock` must be the exclusive lock.
pub fn prune(repo: &Repository, lock: &LockGuard, dry_run: bool) -> Result<PruneReport, RepoError> {
    // The index must describe the packs as they are now, under the lock, and must not
    // change while the sweep relies on it.
    repo.with_maintenance(|| {
        let plan = plan_locked(repo)?;
        if dry_run {
            return Ok(PruneReport {
                packs_deleted: plan.delete.len() as u64,
                packs_repacked: plan.repack.len() as u64,
                blobs_removed: plan.blobs_removed,
                tmp_removed: plan.tmp.len() as u64,
                bytes_removed: plan.bytes_removed,
                bytes_written: plan.bytes_written,
                bytes_freed: plan.bytes_freed(),
                dry_run: true,
                ..Default::default()
            });
        }
        execute_locked(repo, lock, &plan)
    })
}

/// Decides what a prune would do. The caller holds the exclusive lock, so that the plan
/// stays true until it is executed.
pub fn plan(repo: &Repository) -> Result<PrunePlan, RepoError> {
    repo.with_maintenance(|| plan_locked(repo))
}

/// Carries out `plan`, made under the same `lock`.
pub fn execute(
    repo: &Repository,
    lock: &LockGuard,
    plan: &PrunePlan,
) -> Result<PruneReport, RepoError> {
    repo.with_maintenance(|| execute_locked(repo, lock, plan))
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |error| RepoError::Io {
        path: path.to_owned(),
        error,
    }
}

fn plan_locked(repo: &Repository) -> Result<PrunePlan, RepoError> {
    let mut plan = PrunePlan::default();
    let (mut live, mark_dir) = mark(repo)?;

    let packs_dir = repo.packs_dir();
    // Packs holding copies `check` found damaged come last, so that an intact copy
    // elsewhere (a later backup stored the data afresh) is the one claimed; a damaged
    // copy is kept only when it is the only one there is.
    let damaged = repo.damaged_copies();
    let is_damaged = |blob: &Id, pack: &Id| damaged.get(blob).is_some_and(|ps| ps.contains(pack));
    let holds_damage: std::collections::HashSet<Id> = damaged.values().flatten().copied().collect();
    let mut packs: Vec<Id> = repo.list_packs()?.into_iter().collect();
    packs.sort_by_key(|p| (holds_damage.contains(p), *p));
    for p in packs {
        let path = pack::pack_path(&packs_dir, &p);
        let entries = match pack::read_header(&path) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(pack = %p.short(), error = %e, "leaving unreadable pack alone");
                plan.unreadable.push(UnreadablePack {
                    pack: p,
                    error: e.to_string(),
                });
                continue;
            }
        };
        let size = std::fs::metadata(&path).map_err(io(&path))?.len();
        let mut keep = Vec::new();
        let (mut live_bytes, mut dead_bytes) = (0u64, 0u64);
        // A damaged copy with an intact one elsewhere goes even from a mostly live pack:
        // repacking copies only the live blobs, so the damage leaves with it.
        let mut drop_damage = false;
        for e in &entries {
            match live.claim(&e.id).map_err(io(&mark_dir))? {
                true => {
                    keep.push(*e);
                    live_bytes += e.length as u64;
                }
                false => {
                    dead_bytes += e.length as u64;
                    drop_damage |= is_damaged(&e.id, &p);
                }
            }
        }
        let dead_blobs = (entries.len() - keep.len()) as u64;
        if keep.is_empty() {
            plan.blobs_removed += dead_blobs;
            plan.bytes_removed += size;
            plan.delete.push(DeletePack {
                pack: p,
                size,
                blobs: entries.len() as u64,
            });
        } else if drop_damage
            || (dead_bytes as f64) / ((live_bytes + dead_bytes) as f64) >= REPACK_THRESHOLD
        {
            plan.blobs_removed += dead_blobs;
            plan.bytes_removed += size;
            plan.bytes_written += live_bytes;
            plan.repack.push(RepackPack {
                pack: p,
                size,
                blobs: entries.len() as u64,
                keep_bytes: live_bytes,
                keep,
            });
        } else {
            let mut elsewhere = false;
            for e in &keep {
                elsewhere |= repo.index().get(&e.id)?.is_none_or(|l| l.pack != p);
                if elsewhere {
                    break;
                }
            }
            if elsewhere {
                plan.reindex.push(p);
            }
        }
    }

    // Leftovers of interrupted writes.
    let tmp_dir = repo.tmp_dir();
    for f in std::fs::read_dir(&tmp_dir).map_err(io(&tmp_dir))? {
        let f = f.map_err(io(&tmp_dir))?;
        plan.tmp.push(f.file_name().to_string_lossy().into_owned());
    }
    plan.tmp.sort();
    Ok(plan)
}

/// Marks every blob a snapshot names: its root, refs blobs, tree blobs and data chunks.
/// Returns the live set and the directory its unnamed files are in.
///
/// The set is kept on disk as sorted runs merged into one file (see [`mark`]), not in
/// RAM: at 10 M chunks a sorted vector alone would take 320 MiB. Snapshots share most
/// refs blobs (an unchanged tree blob gives the same refs blob); one whose contents are
/// marked is not read again, and a marked root means the whole snapshot is. Of several
/// copies of a blob the sweep keeps the first met in a readable pack (the claimed bit);
/// which copy the index points at does not matter: that pack may have become unreadable
/// since.
fn mark(repo: &Repository) -> Result<(LiveSet, std::path::PathBuf), RepoError> {
    // The writer's own disk, not the (maybe full) backup disk.
    let dir = if repo.state_dir().is_dir() {
        repo.state_dir().to_owned()
    } else {
        std::env::temp_dir()
    };
    let mut live = LiveSetBuilder::new(&dir);
    for s in repo.snapshots_strict()? {
        let root = s.snapshot.root;
        if live.walked(&root) {
            continue;
        }
        for r in repo.read_root(&root)? {
            if live.walked(&r) {
                continue;
            }
            let (tree, data) = repo.read_refs(&r)?;
            for id in std::iter::once(tree).chain(data).chain([r]) {
                live.insert(id).map_err(io(&dir))?;
            }
            live.set_walked(r);
        }
        live.insert(root).map_err(io(&dir))?;
        live.set_walked(root);
    }
    let live = live.finish().map_err(io(&dir))?;
    Ok((live, dir))
}

fn is_no_space(e: &PackError) -> bool {
    matches!(e, PackError::Io { error, .. } if crate::repo::is_disk_full(error))
}

struct Executor<'a> {
    repo: &'a Repository,
    lock: &'a LockGuard,
    report: PruneReport,
    /// Packs this prune wrote. A pack's name is its content's hash, so a repack can
    /// write, byte for byte, a pack it is replacing (after a crash left a repack's
    /// output beside its sources, the next prune's repack of those may come out the
    /// same): such a pack is the new copy and must never be deleted.
    written: std::collections::HashSet<Id>,
}

impl Executor<'_> {
    /// Deletes one pack, after making sure our lock still keeps everyone else out.
    fn delete_pack(&mut self, pack: &Id, size: u64) -> Result<(), RepoError> {
        self.lock.ensure_held()?;
        let path = pack::pack_path(&self.repo.packs_dir(), pack);
        std::fs::remove_file(&path).map_err(io(&path))?;
        self.repo.unregister_pack(pack)?;
        self.report.bytes_removed += size;
        Ok(())
    }

    /// Makes a finished new pack known and deletes the old packs it replaces.
    fn finish(&mut self, w: PackWriter, replaced: &mut Vec<(Id, u64)>) -> Result<(), RepoError> {
        let packs_dir = self.repo.packs_dir();
        let (id, entries) = w.finish(&packs_dir)?;
        let path = pack::pack_path(&packs_dir, &id);
        self.report.bytes_written += std::fs::metadata(&path).map_err(io(&path))?.len();
        self.repo.register_written_pack(id, &entries)?;
        self.written.insert(id);
        for (old, size) in replaced.drain(..) {
            if self.written.contains(&old) {
                continue; // rewritten as it was: it is the new copy
            }
            self.delete_pack(&old, size)?;
            self.report.packs_repacked += 1;
        }
        Ok(())
    }

    fn repack(&mut self, plan: &PrunePlan) -> Result<(), RepoError> {
        let packs_dir = self.repo.packs_dir();
        let mut writer: Option<PackWriter> = None;
        // Old packs whose kept blobs are all in `writer`: they go once it is durable.
        let mut replaced: Vec<(Id, u64)> = Vec::new();
        let mut out_of_space = false;
        for r in &plan.repack {
            if out_of_space {
                self.report.packs_not_repacked += 1;
                continue;
            }
            let path = pack::pack_path(&packs_dir, &r.pack);
            let f = File::open(&path).map_err(io(&path))?;
            // Each kept blob goes with the wrapped key it was sealed under: no identity
            // is needed, and nothing is sealed again.
            let keys = match pack::read_full_header(&path) {
                Ok(h) => h.keys,
                Err(err) => {
                    tracing::warn!(pack = %r.pack.short(), error = %err, "cannot repack; leaving the pack alone");
                    self.report.packs_not_repacked += 1;
                    continue;
                }
            };
            let mut copied = true;
            for e in &r.keep {
                let sealed = match pack::read_blob(&f, &path, e.offset, e.length) {
                    Ok(s) => s,
                    Err(err) => {
                        // Keep the pack: what was copied is a harmless duplicate, and one
                        // bad pack must not stop every future prune.
                        tracing::warn!(pack = %r.pack.short(), error = %err, "cannot repack; leaving the pack alone");
                        copied = false;
                        break;
                    }
                };
                let wrapped = keys.get(usize::from(e.key)).filter(|_| e.kind.sealed());
                let result = (|| {
                    if writer.is_none() {
                        let tmp = self.repo.tmp_dir().join(format!("{}.pack", random_hex()));
                        writer = Some(PackWriter::create(tmp, None)?);
                    }
                    writer.as_mut().expect("just created").add_sealed(
                        e.kind,
                        e.id,
                        &sealed,
                        wrapped.map(|k| &k[..]),
                    )
                })();
                match result {
                    Ok(()) => {}
                    Err(err) if is_no_space(&err) => {
                        out_of_space = true;
                        break;
                    }
                    Err(err) => return Err(err.into()),
                }
                if writer
                    .as_ref()
                    .is_some_and(|w| w.is_full(self.repo.config().pack_size))
                {
                    let w = writer.take().expect("present");
                    match self.finish(w, &mut replaced) {
                        Err(RepoError::Pack(err)) if is_no_space(&err) => {
                            out_of_space = true;
                            break;
                        }
                        other => other?,
                    }
                }
            }
            if out_of_space {
                // The unfinished copy goes (dropping the writer removes it); the packs it
                // was to replace stay, whole and readable.
                drop(writer.take());
                self.report.packs_not_repacked += replaced.len() as u64 + 1;
                replaced.clear();
                tracing::warn!(
                    "no space left to repack; packs left as they are until space is freed"
                );
            } else if copied {
                replaced.push((r.pack, r.size));
            } else {
                self.report.packs_not_repacked += 1;
            }
        }
        if let Some(w) = writer.filter(|w| !w.is_empty()) {
            match self.finish(w, &mut replaced) {
                Err(RepoError::Pack(err)) if is_no_space(&err) => {
                    tracing::warn!(
                        "no space left to repack; packs left as they are until space is freed"
                    );
                    self.report.packs_not_repacked += replaced.len() as u64;
                }
                other => other?,
            }
        }
        Ok(())
    }
}

fn execute_locked(
    repo: &Repository,
    lock: &LockGuard,
    plan: &PrunePlan,
) -> Result<PruneReport, RepoError> {
    if lock.kind() != LockKind::Exclusive || !lock.has_file() {
        return Err(LockError::Conflict("prune needs the exclusive lock".into()).into());
    }
    let mut x = Executor {
        repo,
        lock,
        report: PruneReport::default(),
        written: std::collections::HashSet::new(),
    };
    // Whole garbage packs first: on a nearly full disk this makes the room repacking
    // needs.
    for d in &plan.delete {
        x.delete_pack(&d.pack, d.size)?;
        x.report.packs_deleted += 1;
        x.report.blobs_removed += d.blobs;
    }
    x.repack(plan)?;
    for r in &plan.repack {
        if !pack::pack_path(&repo.packs_dir(), &r.pack).exists() {
            x.report.blobs_removed += r.blobs - r.keep.len() as u64;
        }
    }
    // Deleting a pack the index pointed at forgets the blob, though a kept pack has it.
    for p in &plan.reindex {
        match pack::read_header(&pack::pack_path(&repo.packs_dir(), p)) {
            Ok(entries) => repo.register_pack(*p, &entries)?,
            // The index is a cache: a miss later forces a resync.
            Err(e) => tracing::warn!(pack = %p.short(), error = %e, "cannot re-index pack"),
        }
    }
    let tmp_dir = repo.tmp_dir();
    for t in &plan.tmp {
        lock.ensure_held()?;
        x.report.tmp_removed += remove_file_if_present(&tmp_dir.join(t))? as u64;
    }
    // Damage records whose bad copies are all gone now.
    let on_disk = repo.list_packs()?;
    for (blob, packs) in repo.damaged_copies() {
        if !packs.iter().any(|p| on_disk.contains(p)) {
            repo.clear_damage(&blob)?;
        }
    }
    repo.index().flush()?;
    let mut report = x.report;
    report.bytes_freed = report.bytes_removed.saturating_sub(report.bytes_written);
    Ok(report)
}
