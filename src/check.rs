//! Verifying a repository: structure always, data on request.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::repo::id::Id;
use crate::repo::index::Location;
use crate::repo::pack;
use crate::repo::snapshot::data_ids;
use crate::repo::{RepoError, Repository};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReadData {
    None,
    All,
    /// A percentage of packs, chosen at random each run so repeated checks cover all.
    Subset(f64),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// A key file of an encrypted repository does not match the hash in its config (found
    /// without the identity); readers fall back to the other copy while one is intact.
    DamagedKeyFile {
        what: String,
    },
    DamagedPack {
        pack: String,
        what: String,
    },
    DamagedSnapshot {
        snapshot: String,
        what: String,
    },
    DamagedChunk {
        chunk: String,
        pack: String,
        what: String,
        used_by: Vec<String>,
    },
    MissingChunk {
        chunk: String,
        used_by: Vec<String>,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users = |u: &Vec<String>| {
            if u.is_empty() {
                String::from(" (used by no snapshot)")
            } else {
                format!("; used by {}", u.join(", "))
            }
        };
        match self {
            Problem::DamagedKeyFile { what } => write!(f, "key file: {what}"),
            Problem::DamagedPack { pack, what } => write!(f, "pack {pack}: {what}"),
            Problem::DamagedSnapshot { snapshot, what } => write!(f, "snapshot {snapshot}: {what}"),
            Problem::DamagedChunk {
                chunk,
                pack,
                what,
                used_by,
            } => {
                write!(
                    f,
                    "chunk {chunk} in pack {pack} is damaged: {what}{}",
                    users(used_by)
                )
            }
            Problem::MissingChunk { chunk, used_by } => {
                write!(f, "chunk {chunk} is missing{}", users(used_by))
            }
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    pub packs: u64,
    pub snapshots: u64,
    pub packs_read: u64,
    pub blobs_read: u64,
    pub problems: Vec<Problem>,
    pub notes: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What a check will look at: every pack's header, and the data of the packs in `read`.
#[derive(Clone, Debug, Default)]
pub struct CheckPlan {
    pub packs: Vec<Id>,
    pub read: BTreeSet<Id>,
}

/// Chooses what to verify. `Subset` draws its packs at random each time, so that
/// repeated checks cover them all.
pub fn plan(repo: &Repository, read_data: ReadData) -> Result<CheckPlan, RepoError> {
    let mut packs: Vec<Id> = repo.list_packs()?.into_iter().collect();
    packs.sort();
    let read = packs
        .iter()
        .filter(|_| match read_data {
            ReadData::None => false,
            ReadData::All => true,
            ReadData::Subset(pct) => {
                let mut r = [0u8; 4];
                getrandom::fill(&mut r).expect("the OS random source is available");
                (u32::from_le_bytes(r) as f64 / u32::MAX as f64) * 100.0 < pct
            }
        })
        .copied()
        .collect();
    Ok(CheckPlan { packs, read })
}

/// Checks the repository. Errors are reserved for being unable to check at all; damage
/// is reported in the returned report.
/// Records damaged copies in the repository, so the next backup that has their data
/// stores it afresh and prune then drops the bad copies. A read-only disk cannot take the
/// record; the report names the damage all the same.
fn record_damage(repo: &Repository, pack: &Id, blobs: &[Id]) {
    if let Err(err) = repo.record_damage(pack, blobs) {
        tracing::warn!(error = %err, "cannot record the damaged copies");
    }
}

pub fn check(repo: &Repository, read_data: ReadData) -> Result<CheckReport, RepoError> {
    execute(repo, &plan(repo, read_data)?)
}

/// Carries out a check plan.
pub fn execute(repo: &Repository, plan: &CheckPlan) -> Result<CheckReport, RepoError> {
    let mut report = CheckReport::default();
    for what in repo.verify_key_files() {
        report.problems.push(Problem::DamagedKeyFile { what });
    }
    let packs_dir = repo.packs_dir();
    let can_open = repo.sealer().can_open();
    if !can_open {
        report.notes.push("encrypted repository and no --identity: file contents are not cross-checked and blobs are verified by pack hash only".into());
    }
    // Chunks known bad, with the pack they were found in and why.
    let mut bad: BTreeMap<Id, (String, String)> = BTreeMap::new();
    // Every blob a readable pack header lists, sorted: what "present" means below. The
    // index is a cache and may still name packs that are gone; it must never make a
    // check pass.
    let mut on_disk: Vec<Id> = Vec::new();
    // Blobs with at least one copy that read back intact.
    let mut good: BTreeSet<Id> = BTreeSet::new();
    let recorded = repo.damaged_copies();

    report.packs = plan.packs.len() as u64;
    for p in &plan.packs {
        let path = pack::pack_path(&packs_dir, p);
        let entries = match pack::read_header(&path) {
            Ok(e) => e,
            Err(e) => {
                report.problems.push(Problem::DamagedPack {
                    pack: p.short(),
                    what: e.to_string(),
                });
                // Whatever the index knew of it can no longer be trusted.
                repo.unregister_pack(p)?;
                continue;
            }
        };
        on_disk.extend(entries.iter().map(|e| e.id));
        if !plan.read.contains(p) {
            continue;
        }
        report.packs_read += 1;
        if !pack::verify_file_hash(&path, p)? {
            report.problems.push(Problem::DamagedPack {
                pack: p.short(),
                what: "content does not match its name (bit rot or tampering)".into(),
            });
            if !can_open {
                let ids: Vec<Id> = entries.iter().map(|e| e.id).collect();
                record_damage(repo, p, &ids);
                for id in ids {
                    bad.insert(id, (p.short(), "in a damaged pack".into()));
                }
                continue;
            }
        }
        if !can_open {
            continue;
        }
        let mut damaged_here = Vec::new();
        for e in &entries {
            report.blobs_read += 1;
            // The repository's own read path: the pack key, the AEAD and the id check.
            let result = repo
                .read_blob_at(&e.id, &Location::of(*p, e))
                .map(|_| ())
                .map_err(|e| e.to_string());
            match result {
                Err(what) => {
                    damaged_here.push(e.id);
                    if !good.contains(&e.id) {
                        bad.insert(e.id, (p.short(), what));
                    }
                }
                Ok(()) => {
                    // An intact copy makes the blob sound, whatever other copies hold.
                    good.insert(e.id);
                    bad.remove(&e.id);
                    // This very copy was recorded bad, and reads intact now: the failure
                    // was passing (a USB hiccup), and a lasting record would keep the
                    // blob damaged for ever.
                    if recorded.get(&e.id).is_some_and(|packs| packs.contains(p))
                        && let Err(err) = repo.forget_damage(&e.id, p)
                    {
                        tracing::warn!(error = %err, "a stale damage record stays");
                    }
                }
            }
        }
        if !damaged_here.is_empty() {
            record_damage(repo, p, &damaged_here);
        }
    }

    // Snapshots: every manifest sound (read from its file, never from the summary
    // cache), every root, refs, tree and data id it names present. Refs and root blobs
    // are plaintext, so this needs no identity; with it, each refs blob must list
    // exactly the chunks its tree blob's entries use.
    let ids = repo.snapshot_ids()?;
    report.snapshots = ids.len() as u64;
    let mut snaps = Vec::new();
    for id in ids {
        match repo.load_snapshot(&id) {
            Ok(s) => snaps.push((id, s)),
            Err(e) => report.problems.push(Problem::DamagedSnapshot {
                snapshot: id.short(),
                what: e.to_string(),
            }),
        }
    }
    on_disk.sort_unstable();
    on_disk.dedup();
    let present = |c: &Id| on_disk.binary_search(c).is_ok();
    // One flag per blob on disk: a refs blob shared by many snapshots is checked once,
    // without a second set of ids.
    let mut visited = vec![false; on_disk.len()];
    let mut missing: BTreeSet<Id> = BTreeSet::new();
    for (id, s) in &snaps {
        let damaged = |what: String| Problem::DamagedSnapshot {
            snapshot: id.short(),
            what,
        };
        if !present(&s.root) {
            missing.insert(s.root);
            continue;
        }
        if bad.contains_key(&s.root) {
            continue; // named below as a damaged chunk
        }
        let refs = match repo.read_root(&s.root) {
            Ok(r) => r,
            // Roots and refs are plaintext in every repository: one that needs a key is
            // not what the manifest says it is.
            Err(e) => {
                report.problems.push(damaged(e.to_string()));
                continue;
            }
        };
        for r in refs {
            let Ok(i) = on_disk.binary_search(&r) else {
                missing.insert(r);
                continue;
            };
            if std::mem::replace(&mut visited[i], true) || bad.contains_key(&r) {
                continue;
            }
            let (tree, data) = match repo.read_refs(&r) {
                Ok(x) => x,
                Err(e) => {
                    report.problems.push(damaged(e.to_string()));
                    continue;
                }
            };
            for c in std::iter::once(&tree).chain(&data) {
                if !present(c) {
                    missing.insert(*c);
                }
            }
            if !can_open || missing.contains(&tree) || bad.contains_key(&tree) {
                continue;
            }
            match repo.read_tree(&tree) {
                Ok(entries) => {
                    let used = data_ids(entries.iter().flat_map(|e| &e.chunks));
                    if used != data {
                        report.problems.push(damaged(format!(
                            "refs blob {} does not list exactly the chunks of tree blob {} (prune could delete data it uses)",
                            r.short(),
                            tree.short()
                        )));
                        missing.extend(used.iter().filter(|c| !present(c)));
                    }
                }
                Err(e) => report
                    .problems
                    .push(damaged(format!("tree unreadable: {e}"))),
            }
        }
    }

    // Name who is affected: walk the snapshots once more, only when something is wrong.
    if !bad.is_empty() || !missing.is_empty() {
        let wrong = |c: &Id| bad.contains_key(c) || missing.contains(c);
        let mut users: BTreeMap<Id, Vec<String>> = BTreeMap::new();
        let mut add = |c: Id, u: String| {
            let v = users.entry(c).or_default();
            if !v.contains(&u) {
                v.push(u);
            }
        };
        for (id, s) in &snaps {
            let label = format!(
                "{} ({} {})",
                id.short(),
                s.job,
                s.time.format("%Y-%m-%d %H:%M")
            );
            let list = format!("{label}: its file list");
            if wrong(&s.root) {
                add(s.root, list);
                continue;
            }
            let Ok(refs) = repo.read_root(&s.root) else {
                continue;
            };
            for r in refs {
                if wrong(&r) {
                    add(r, list.clone());
                    continue;
                }
                let Ok((tree, data)) = repo.read_refs(&r) else {
                    continue;
                };
                if wrong(&tree) {
                    add(tree, list.clone());
                    continue;
                }
                if !data.iter().any(wrong) {
                    continue;
                }
                // With the identity, the paths; without it, the snapshot at least.
                match can_open.then(|| repo.read_tree(&tree)) {
                    Some(Ok(entries)) => {
                        for e in entries {
                            for c in e.chunks.iter().filter(|c| wrong(c)) {
                                add(*c, format!("{label}: {}", e.path));
                            }
                        }
                    }
                    _ => {
                        for c in data.iter().filter(|c| wrong(c)) {
                            add(*c, label.clone());
                        }
                    }
                }
            }
        }
        for (c, (p, what)) in &bad {
            report.problems.push(Problem::DamagedChunk {
                chunk: c.to_hex(),
                pack: p.clone(),
                what: what.clone(),
                used_by: users.get(c).cloned().unwrap_or_default(),
            });
        }
        for c in &missing {
            report.problems.push(Problem::MissingChunk {
                chunk: c.to_hex(),
                used_by: users.get(c).cloned().unwrap_or_default(),
            });
        }
    }

    let tmp = std::fs::read_dir(repo.tmp_dir())
        .map(|r| r.count())
        .unwrap_or(0);
    if tmp > 0 {
        report.notes.push(format!(
            "{tmp} leftover temporary file(s) from interrupted writes; prune removes them"
        ));
    }
    Ok(report)
}
