//! Scheduled verification: `check` on a schedule, reading a rotating subset of the packs
//! each time so that the whole repository is read over a cycle.
//!
//! The choice of packs is a pure function of the sorted pack list, their sizes, a cursor
//! (the last pack read) and a budget ([`choose`]); the daemon keeps the cursor in its
//! state directory, so a restart continues the cycle instead of starting it over.
//! Packs are ordered by id (a content hash), so packs written during a cycle land at
//! random places in it: those before the cursor are read in the next cycle.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::check::{CheckPlan, Problem};
use crate::repo::id::Id;
use crate::repo::{RepoError, Repository, pack};
use crate::schedule::Schedule;

/// `[verify]` in the daemon's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    pub schedule: Schedule,
    /// How much pack data one run reads: `"10%"` of the repository, or a byte budget
    /// such as `"20GiB"`.
    pub read_data_subset: ReadDataSubset,
}

/// How much of the repository's pack data one verification reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadDataSubset {
    /// A percentage of the repository's pack bytes, in (0, 100].
    Percent(f64),
    /// At most this many bytes per run (always at least one pack).
    Bytes(ByteSize),
}

impl ReadDataSubset {
    /// The byte budget of one run over a repository of `total` pack bytes.
    pub fn budget(&self, total: u64) -> u64 {
        match *self {
            ReadDataSubset::Percent(p) => ((total as f64) * p / 100.0).ceil() as u64,
            ReadDataSubset::Bytes(b) => b.as_u64(),
        }
    }
}

impl std::str::FromStr for ReadDataSubset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a percentage such as \"10%\""))?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(format!(
                    "{s:?}: a percentage must be above 0 and at most 100"
                ));
            }
            return Ok(ReadDataSubset::Percent(p));
        }
        let b: ByteSize = s.parse().map_err(|_| {
            format!("{s:?} is neither a percentage (\"10%\") nor a size (\"20GiB\")")
        })?;
        if b.as_u64() == 0 {
            return Err(format!("{s:?}: a byte budget must be above zero"));
        }
        Ok(ReadDataSubset::Bytes(b))
    }
}

impl std::fmt::Display for ReadDataSubset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadDataSubset::Percent(p) => write!(f, "{p}%"),
            ReadDataSubset::Bytes(b) => write!(f, "{}", b.display().iec()),
        }
    }
}

impl<'de> Deserialize<'de> for ReadDataSubset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for ReadDataSubset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What one run reads, and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct SubsetPlan {
    /// Packs whose data this run reads, in order.
    pub read: Vec<Id>,
    /// Bytes of those packs.
    pub bytes: u64,
    /// The last pack read; `None` when this run reads the last pack of the cycle, so the
    /// next run starts a new cycle at the first.
    pub cursor: Option<Id>,
    /// Whether this run finishes a cycle (every pack present at its start was read).
    pub completes_cycle: bool,
    /// Fraction of the cycle read once this run is done.
    pub cycle_ratio: f64,
}

/// Chooses the packs one run reads: in id order from just after `cursor`, until
/// `budget` bytes are reached, but at least one pack and at most every pack once.
/// `packs` must be sorted by id.
pub fn choose(packs: &[(Id, u64)], cursor: Option<Id>, budget: u64) -> SubsetPlan {
    debug_assert!(packs.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    let n = packs.len();
    if n == 0 {
        return SubsetPlan {
            read: Vec::new(),
            bytes: 0,
            cursor: None,
            completes_cycle: true,
            cycle_ratio: 1.0,
        };
    }
    // The first pack after the cursor; a cursor past the end starts a new cycle.
    let start = cursor.map_or(0, |c| packs.partition_point(|(id, _)| *id <= c));
    let start = if start >= n { 0 } else { start };
    let mut read = Vec::new();
    let mut bytes = 0u64;
    let mut last = start;
    for (i, (id, size)) in packs.iter().enumerate().skip(start) {
        read.push(*id);
        bytes += size;
        last = i;
        if bytes >= budget {
            break;
        }
    }
    let completes_cycle = last == n - 1;
    SubsetPlan {
        read,
        bytes,
        cursor: (!completes_cycle).then(|| packs[last].0),
        completes_cycle,
        cycle_ratio: if completes_cycle {
            1.0
        } else {
            (last + 1) as f64 / n as f64
        },
    }
}

/// The outcome of one verification run, as the status API and the web UI show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyResult {
    pub time: DateTime<Utc>,
    /// True when the check ran and found nothing wrong.
    pub ok: bool,
    pub duration_seconds: f64,
    pub read_data_subset: String,
    pub packs: u64,
    pub packs_read: u64,
    pub bytes_read: u64,
    pub snapshots: u64,
    /// Damaged or missing chunks; a damaged pack header, snapshot or key file counts one.
    pub damaged_chunks: u64,
    /// Whether blob contents were opened and checked (needs the identity of an
    /// encrypted repository); otherwise only pack hashes and structure were verified.
    pub contents_verified: bool,
    pub cycle_ratio: f64,
    pub cycle_completed: bool,
    /// The problems found (at most [`MAX_LISTED`]).
    pub problems: Vec<String>,
    /// `snapshot (job time): path` of files using damaged data (at most [`MAX_LISTED`]).
    pub damaged_files: Vec<String>,
    pub notes: Vec<String>,
    /// Why the check could not run at all.
    pub error: Option<String>,
}

impl VerifyResult {
    /// The result of a run that could not check at all, and why.
    pub fn failed(time: DateTime<Utc>, subset: ReadDataSubset, error: String) -> VerifyResult {
        VerifyResult {
            time,
            ok: false,
            duration_seconds: (Utc::now() - time).num_milliseconds() as f64 / 1000.0,
            read_data_subset: subset.to_string(),
            packs: 0,
            packs_read: 0,
            bytes_read: 0,
            snapshots: 0,
            damaged_chunks: 0,
            contents_verified: false,
            cycle_ratio: 0.0,
            cycle_completed: false,
            problems: Vec::new(),
            damaged_files: Vec::new(),
            notes: Vec::new(),
            error: Some(error),
        }
    }
}

/// How many problems and files a result lists; the counts are always complete.
pub const MAX_LISTED: usize = 200;

/// What the daemon keeps in its state directory between runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    pub last: Option<VerifyResult>,
    /// The last pack read in the current cycle.
    pub cursor: Option<Id>,
    /// When a run last found no damage, and when one last ran to the end, with what it
    /// found: kept apart from `last`, so that a run that could not run at all (or a
    /// restart) hides neither an old success nor known damage from the metrics.
    #[serde(default)]
    pub last_success: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_completed: Option<DateTime<Utc>>,
    #[serde(default)]
    pub damaged_chunks: u64,
    /// The files the last completed run named as damaged.
    #[serde(default)]
    pub damaged_files: Vec<String>,
}

impl Saved {
    /// The state after `r`, a run that started from this state and ends at `cursor`.
    pub fn after(&self, r: &VerifyResult, cursor: Option<Id>) -> Saved {
        let completed = r.error.is_none();
        Saved {
            last: Some(r.clone()),
            cursor,
            last_success: if r.ok {
                Some(r.time)
            } else {
                self.last_success
            },
            last_completed: if completed {
                Some(r.time)
            } else {
                self.last_completed
            },
            damaged_chunks: if completed {
                r.damaged_chunks
            } else {
                self.damaged_chunks
            },
            damaged_files: if completed {
                r.damaged_files.clone()
            } else {
                self.damaged_files.clone()
            },
        }
    }
}

fn saved_path(state_dir: &Path) -> PathBuf {
    state_dir.join("verify.json")
}

/// The saved state; an unreadable file is ignored (the next run starts a new cycle).
pub fn load(state_dir: &Path) -> Saved {
    std::fs::read(saved_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn save(state_dir: &Path, saved: &Saved) -> std::io::Result<()> {
    crate::state::save_json(&saved_path(state_dir), saved)
}

/// Runs one verification: the structure of everything, the data of the chosen subset.
/// Returns the result and the cursor for the next run. Errors mean the check could not
/// run (no repository, a lock held for too long); damage is in the result.
///
/// Damage found by an earlier run stays in the result until it is healed (a backup stored
/// an intact copy, or prune dropped the data): a run that reads other packs must not
/// report a clean repository, or the alert would clear while the damage is still there.
/// `previous` are the damaged files of the last completed run, carried over while that
/// damage lasts.
pub fn run(
    repo: &Repository,
    subset: ReadDataSubset,
    cursor: Option<Id>,
    now: DateTime<Utc>,
    previous: Option<&[String]>,
) -> Result<(VerifyResult, Option<Id>), RepoError> {
    let started = std::time::Instant::now();
    let mut ids: Vec<Id> = repo.list_packs()?.into_iter().collect();
    ids.sort();
    let dir = repo.packs_dir();
    // A pack that vanished between listing and stat is gone for the check too.
    let sized: Vec<(Id, u64)> = ids
        .iter()
        .map(|id| {
            let len = std::fs::metadata(pack::pack_path(&dir, id)).map_or(0, |m| m.len());
            (*id, len)
        })
        .collect();
    let total: u64 = sized.iter().map(|(_, s)| s).sum();
    let chosen = choose(&sized, cursor, subset.budget(total));
    let plan = CheckPlan {
        packs: ids,
        read: chosen.read.iter().copied().collect(),
    };
    let mut report = crate::check::execute(repo, &plan)?;
    let damage = account(repo, &mut report, previous.unwrap_or_default())?;
    let result = VerifyResult {
        time: now,
        ok: damage.count == 0,
        duration_seconds: started.elapsed().as_secs_f64(),
        read_data_subset: subset.to_string(),
        packs: report.packs,
        packs_read: report.packs_read,
        bytes_read: chosen.bytes,
        snapshots: report.snapshots,
        damaged_chunks: damage.count,
        contents_verified: repo.sealer().can_open(),
        cycle_ratio: chosen.cycle_ratio,
        cycle_completed: chosen.completes_cycle,
        problems: report
            .problems
            .iter()
            .take(MAX_LISTED)
            .map(|p| p.to_string())
            .collect(),
        damaged_files: damage.files,
        notes: report.notes,
        error: None,
    };
    Ok((result, chosen.cursor))
}

/// What a run's check means for the operator: damage that lasts, and the files it hits.
struct Damage {
    /// Damaged or missing chunks without an intact copy, plus other problems (a damaged
    /// snapshot, key file, or a damaged pack whose chunks are not listed).
    count: u64,
    files: Vec<String>,
}

/// Turns a check report into lasting damage. A chunk counts as damaged while no pack on
/// disk holds another copy of it (judged from the pack headers, not the index); a copy
/// found bad now or recorded bad by an earlier run both count, so a run that reads other
/// packs does not clear the alert, and a failed damage record does not hide what this run
/// found. A bad copy whose data was stored again since is healed: a note, not a problem.
fn account(
    repo: &Repository,
    report: &mut crate::check::CheckReport,
    previous_files: &[String],
) -> Result<Damage, RepoError> {
    // Candidate chunks and the packs known to hold bad copies of them.
    let mut bad: std::collections::BTreeMap<Id, (BTreeSet<Id>, BTreeSet<String>)> =
        Default::default();
    for (id, packs) in repo.damaged_copies() {
        bad.entry(id).or_default().0.extend(packs);
    }
    for p in &report.problems {
        if let Problem::DamagedChunk { chunk, pack, .. } = p
            && let Ok(id) = chunk.parse::<Id>()
        {
            bad.entry(id).or_default().1.insert(pack.clone());
        }
    }
    // One pass over the headers, only when there is something to look for.
    let mut intact = BTreeSet::new();
    if !bad.is_empty() {
        let dir = repo.packs_dir();
        for p in repo.list_packs()? {
            let Ok(entries) = pack::read_header(&pack::pack_path(&dir, &p)) else {
                continue;
            };
            for e in entries {
                if let Some((full, short)) = bad.get(&e.id)
                    && !full.contains(&p)
                    && !short.contains(&p.short())
                {
                    intact.insert(e.id);
                }
            }
        }
    }
    let lasting: BTreeSet<String> = bad
        .keys()
        .filter(|id| !intact.contains(*id))
        .map(|id| id.to_hex())
        .collect();

    let (mut healed_packs, mut damaged_packs) = (BTreeSet::new(), BTreeSet::new());
    for p in &report.problems {
        if let Problem::DamagedChunk { chunk, pack, .. } = p {
            if lasting.contains(chunk) {
                damaged_packs.insert(pack.clone());
            } else {
                healed_packs.insert(pack.clone());
            }
        }
    }
    let mut files = Vec::new();
    let mut add_file = |f: &String| {
        if files.len() < MAX_LISTED && !files.contains(f) {
            files.push(f.clone());
        }
    };
    let (mut found, mut others, mut healed) = (BTreeSet::new(), 0u64, 0usize);
    let mut problems = Vec::new();
    for p in std::mem::take(&mut report.problems) {
        match &p {
            Problem::DamagedChunk { chunk, .. } if !lasting.contains(chunk) => {
                healed += 1;
                continue;
            }
            Problem::DamagedPack { pack, .. } if !damaged_packs.contains(pack) => {
                if healed_packs.contains(pack) {
                    continue;
                }
                others += 1;
            }
            // Counted with its chunks.
            Problem::DamagedPack { .. } => {}
            Problem::DamagedChunk { chunk, used_by, .. }
            | Problem::MissingChunk { chunk, used_by } => {
                found.insert(chunk.clone());
                used_by.iter().for_each(&mut add_file);
            }
            Problem::DamagedSnapshot { .. } | Problem::DamagedKeyFile { .. } => others += 1,
        }
        problems.push(p);
    }
    report.problems = problems;
    if healed > 0 {
        report.notes.push(format!(
            "{healed} damaged chunk copies read now have an intact copy stored since; prune drops the bad ones"
        ));
    }
    let earlier = lasting.iter().filter(|c| !found.contains(*c)).count();
    if earlier > 0 {
        report.notes.push(format!(
            "{earlier} chunk(s) found damaged by an earlier verification have no intact copy yet: the next backup that has their data stores it afresh, and prune then drops the bad copy"
        ));
        previous_files.iter().for_each(&mut add_file);
    }
    Ok(Damage {
        count: (found.len() + earlier) as u64 + others,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packs(n: u8, size: u64) -> Vec<(Id, u64)> {
        let mut v: Vec<(Id, u64)> = (0..n).map(|i| (Id::of(&[i]), size)).collect();
        v.sort();
        v
    }

    #[test]
    fn subsets_parse_as_percentages_or_sizes() {
        assert_eq!("10%".parse(), Ok(ReadDataSubset::Percent(10.0)));
        assert_eq!(" 2.5 % ".parse(), Ok(ReadDataSubset::Percent(2.5)));
        assert_eq!(
            "20GiB".parse(),
            Ok(ReadDataSubset::Bytes(ByteSize::gib(20)))
        );
        for bad in ["0%", "101%", "-1%", "x%", "lots", "0", ""] {
            assert!(bad.parse::<ReadDataSubset>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(ReadDataSubset::Percent(10.0).to_string(), "10%");
        assert_eq!(
            ReadDataSubset::Bytes(ByteSize::gib(20)).to_string(),
            "20.0 GiB"
        );
        assert_eq!(ReadDataSubset::Percent(10.0).budget(1000), 100);
        assert_eq!(ReadDataSubset::Percent(0.1).budget(10), 1);
    }

    #[test]
    fn runs_rotate_through_every_pack_once_per_cycle() {
        let all = packs(10, 100);
        let mut cursor = None;
        let mut seen = Vec::new();
        // 25 % of 1000 bytes: three packs, three packs, three packs, then the last one.
        for (run, want) in [(0, 3), (1, 3), (2, 3), (3, 1)] {
            let p = choose(&all, cursor, 250);
            assert_eq!(p.read.len(), want, "run {run}");
            assert_eq!(p.completes_cycle, run == 3);
            seen.extend(p.read.iter().copied());
            cursor = p.cursor;
        }
        let ids: Vec<Id> = all.iter().map(|(i, _)| *i).collect();
        assert_eq!(seen, ids, "every pack exactly once, in order");
        assert_eq!(cursor, None);
        // The next cycle starts over at the first pack.
        assert_eq!(choose(&all, cursor, 250).read[0], ids[0]);
    }

    #[test]
    fn at_least_one_pack_and_at_most_all() {
        let all = packs(4, 1000);
        let p = choose(&all, None, 1);
        assert_eq!(p.read.len(), 1);
        assert!((p.cycle_ratio - 0.25).abs() < 1e-9);
        let p = choose(&all, None, u64::MAX);
        assert_eq!(p.read.len(), 4);
        assert!(p.completes_cycle);
        let p = choose(&all, Some(all[1].0), u64::MAX);
        assert_eq!(
            p.read,
            vec![all[2].0, all[3].0],
            "a run never wraps into the next cycle"
        );
        assert!(choose(&[], None, 10).read.is_empty());
    }

    #[test]
    fn a_vanished_cursor_continues_after_its_place() {
        let all = packs(6, 10);
        // The cursor's pack was deleted by prune: the run continues with the next id.
        let gone = all[2].0;
        let rest: Vec<(Id, u64)> = all.iter().copied().filter(|(i, _)| *i != gone).collect();
        let p = choose(&rest, Some(gone), 10);
        assert_eq!(p.read, vec![all[3].0]);
        // A cursor beyond every pack starts a new cycle.
        let last = all[5].0;
        let p = choose(&all[..5], Some(last), 10);
        assert_eq!(p.read, vec![all[0].0]);
    }
}
