//! The volume [`Source`]: per volume, a session (snapshot, PVC, reader pod), then
//! - a filesystem volume: its listing (sorted in the pod) merged with the previous
//!   snapshot; a regular file whose size and mtime match is reused without transfer,
//!   the others (and changed symlinks) come in tar batches of bounded size, one exec
//!   per batch;
//! - a block volume: the device as one stream.
//!
//! Order: entries come in byte order of their paths, `namespace/pvc/…`. A volume's
//! children (`ns/pvc/…`) sort after a sibling volume whose name extends its own with a
//! character below `/` (`ns/pvc-2`), while its root (`ns/pvc`) sorts before it: so
//! roots and children are separate units, and a volume's session stays open across
//! such a sibling.
//!
//! Memory: one listing line at a time, one batch of at most [`BATCH_ITEMS`] entries'
//! metadata, and the tar stream's bounded channel, whatever the volume's size.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, bounded};
use serde_json::Value;

use super::cluster::{self, Claim, PodState, Temporaries};
use super::exec::Exec;
use super::script::{self, Line, Listed};
use super::{SnapshotClass, VolumeJob, VolumeRef, meta};
use crate::kinds::kubernetes::client::{Kube, RequestError};
use crate::kinds::kubernetes::source::urlencode;
use crate::redact::Redactor;
use crate::repo::id::Id;
use crate::repo::index::Previous;
use crate::repo::tree::{Entry, EntryKind, EntryPath};
use crate::source::{Content, Source, SourceEntry, SourceError};

/// Listing lines per batch: the metadata held at once.
pub const BATCH_ITEMS: usize = 2000;
/// Bytes of names passed to one tar exec (they travel in the exec request's URL).
const BATCH_ARG_BYTES: usize = 48 * 1024;
/// A listing line longer than this is not one (PATH_MAX is 4096).
const MAX_LINE: usize = 16 * 1024;
/// Pieces of a file in flight between the tar reader and the archiver.
const TAR_PIECE: usize = 256 * 1024;

pub struct VolumeSource {
    job: VolumeJob,
    job_name: String,
    redactor: Redactor,
    /// The run's cancellation: waits for snapshots and pods end on it.
    cancel: Arc<AtomicBool>,
}

impl VolumeSource {
    pub fn new(
        job: &VolumeJob,
        job_name: &str,
        redactor: Redactor,
        cancel: Arc<AtomicBool>,
    ) -> VolumeSource {
        VolumeSource {
            job: job.clone(),
            job_name: job_name.to_string(),
            redactor,
            cancel,
        }
    }
}

impl Source for VolumeSource {
    fn description(&self) -> String {
        format!(
            "kubernetes volumes via {}",
            self.job.connection().describe()
        )
    }

    fn entries<'a>(
        &'a mut self,
        previous: Previous,
    ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a> {
        match Walk::start(&self.job, &self.job_name, previous, self.cancel.clone()) {
            Ok(w) => Box::new(w),
            Err(m) => Box::new(std::iter::once(Err(SourceError::Fatal(
                self.redactor.redact(&m),
            )))),
        }
    }
}

/// What globs select inside a filesystem volume.
pub struct Selection {
    include: Option<globset::GlobSet>,
    exclude: globset::GlobSet,
}

impl Selection {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Selection, String> {
        Ok(Selection {
            include: if include.is_empty() {
                None
            } else {
                Some(crate::kinds::globs(include)?)
            },
            exclude: crate::kinds::globs(exclude)?,
        })
    }

    /// Whether `rel` (a path below the volume's root) is taken: not excluded itself or
    /// by an ancestor, and included (a directory also when something below it could be).
    pub fn takes(&self, rel: &[u8], dir: bool) -> bool {
        let text = String::from_utf8_lossy(rel);
        let excluded = text
            .char_indices()
            .filter(|(_, c)| *c == '/')
            .map(|(i, _)| &text[..i])
            .chain(std::iter::once(&*text))
            .any(|p| self.exclude.is_match(p));
        if excluded {
            return false;
        }
        match &self.include {
            None => true,
            Some(inc) => inc.is_match(&*text) || (dir && inc.is_match(format!("{text}/\u{1}"))),
        }
    }
}

/// What to do with a listed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Metadata only (directories, empty files, fifos, devices).
    Plain,
    /// Unchanged since the previous run: its chunks.
    Reuse(Vec<Id>),
    /// An unchanged symlink: its target.
    Link(Vec<u8>),
    /// Content (or a symlink's target) must come from the pod.
    Fetch,
}

/// The incremental decision (pure): a regular file is unchanged when size and mtime
/// (whole seconds: what busybox `stat` gives) match the previous run's entry.
pub fn decide(l: &Listed, prev: Option<&Entry>) -> Action {
    let same = |p: &Entry| p.size == l.size && p.mtime_ns == l.mtime.saturating_mul(1_000_000_000);
    match l.kind {
        Some(EntryKind::File) => match prev {
            Some(p) if p.kind == EntryKind::File && same(p) && !p.chunks.is_empty() => {
                Action::Reuse(p.chunks.clone())
            }
            _ if l.size == 0 => Action::Plain,
            _ => Action::Fetch,
        },
        // A symlink's size is its target's length.
        Some(EntryKind::Symlink) => match prev.and_then(|p| p.link_target.as_ref().map(|t| (p, t)))
        {
            Some((p, t))
                if p.kind == EntryKind::Symlink
                    && t.len() as u64 == l.size
                    && p.mtime_ns == l.mtime.saturating_mul(1_000_000_000) =>
            {
                Action::Link(t.clone())
            }
            _ => Action::Fetch,
        },
        _ => Action::Plain,
    }
}

/// The entry for a listed path of volume `root` (`ns/pvc`).
fn entry_of(root: &str, l: &Listed) -> Entry {
    let mut path = root.as_bytes().to_vec();
    if !l.rel.is_empty() {
        path.push(b'/');
        path.extend_from_slice(&l.rel);
    }
    let kind = l.kind.unwrap_or(EntryKind::File);
    let mut e = Entry::new(EntryPath::new(path), kind);
    e.mode = l.mode;
    e.uid = l.uid;
    e.gid = l.gid;
    e.mtime_ns = l.mtime.saturating_mul(1_000_000_000);
    e.size = if kind == EntryKind::File { l.size } else { 0 };
    if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
        e.rdev = Some(libc::makedev(l.rdev.0, l.rdev.1));
    }
    e
}

struct Vol {
    r: VolumeRef,
    claim: Option<Claim>,
}

/// One volume's open connection to the cluster: its temporary objects and pod.
struct Session {
    /// Deleted when the session is dropped.
    _temps: Temporaries,
    pod: String,
    listing: Option<BufReader<Exec>>,
    /// A listed entry read and decided ahead (it starts the next batch).
    pending: Option<(Listed, Action)>,
    /// Listed paths with a newline in their names (reported at the listing's end).
    skipped: u64,
    /// The run's transferred bytes when the session opened.
    tally_start: u64,
}

struct Unit {
    vol: usize,
    children: bool,
}

/// A batch under way: listed items, and the tar stream for those to fetch.
struct Batch {
    items: VecDeque<(Listed, Action)>,
    tar: Option<TarFeed>,
}

enum Item {
    Entry(SourceEntry),
    Error(SourceError),
}

/// Fields drop in order: what streams from the pods (`out`, `batch`) before the sessions
/// whose objects their pods are, and the client last.
struct Walk {
    /// Ready to hand out; the flag closes that volume's session once the item is used.
    out: VecDeque<(Item, Option<usize>)>,
    /// The volume whose children are being listed, and its batch.
    current: Option<usize>,
    batch: Option<Batch>,
    sessions: BTreeMap<usize, Session>,
    close_pending: Option<usize>,
    job: VolumeJob,
    job_name: String,
    run: String,
    vols: Vec<Vol>,
    units: VecDeque<Unit>,
    failed: BTreeSet<usize>,
    previous: Previous,
    selection: Selection,
    cancel: Arc<AtomicBool>,
    /// Bytes received from pods in this run (listings, tar batches, block devices).
    tally: Arc<AtomicU64>,
    kube: Arc<Kube>,
}

fn fatal_or(e: RequestError, what: impl FnOnce(&RequestError) -> String) -> Result<String, String> {
    if e.is_fatal() {
        Err(e.to_string())
    } else {
        Ok(what(&e))
    }
}

impl Walk {
    fn start(
        job: &VolumeJob,
        job_name: &str,
        previous: Previous,
        cancel: Arc<AtomicBool>,
    ) -> Result<Walk, String> {
        let kube = Arc::new(Kube::connect(&job.connection()).map_err(|e| e.to_string())?);
        let run = cluster::run_id();
        let selection = Selection::new(&job.include, &job.exclude)?;
        // Leftovers first: a volume cannot be snapshotted twice at once on some drivers,
        // and a forgotten reader pod holds an RBD image.
        match cluster::sweep(&kube, job_name, &run) {
            // Worth a warning: an earlier run died without cleaning up.
            Ok(n) if n > 0 => tracing::warn!(
                job = job_name,
                deleted = n,
                "deleted leftovers of an earlier run that did not finish"
            ),
            Ok(_) => {}
            Err(e) if e.is_fatal() => return Err(e.to_string()),
            Err(e) => tracing::warn!(job = job_name, error = %e, "could not sweep leftovers"),
        }
        let mut refs: BTreeSet<VolumeRef> = job.volumes.iter().cloned().collect();
        if !job.selector.trim().is_empty() {
            refs.extend(select(&kube, &job.selector)?);
        }
        let mut walk = Walk {
            kube,
            job: job.clone(),
            job_name: job_name.to_string(),
            run,
            vols: Vec::new(),
            units: VecDeque::new(),
            sessions: BTreeMap::new(),
            failed: BTreeSet::new(),
            previous,
            selection,
            out: VecDeque::new(),
            close_pending: None,
            current: None,
            batch: None,
            cancel,
            tally: Arc::new(AtomicU64::new(0)),
        };
        let mut keyed: Vec<(Vec<u8>, Unit)> = Vec::new();
        for r in refs {
            let i = walk.vols.len();
            let claim = match walk
                .kube
                .get::<Value>(&cluster::pvc_path(&r.namespace, &r.name))
            {
                Ok(o) => Some(Claim::from_object(&r, &o)),
                Err(e) => {
                    let m = fatal_or(e, |e| format!("the PVC cannot be read: {e}"))?;
                    walk.failed.insert(i);
                    walk.out.push_back((
                        Item::Error(SourceError::Entry {
                            path: EntryPath::from(r.path().as_str()),
                            message: m,
                        }),
                        None,
                    ));
                    None
                }
            };
            keyed.push((
                r.path().into_bytes(),
                Unit {
                    vol: i,
                    children: false,
                },
            ));
            if claim.as_ref().is_some_and(|c| !c.block) {
                keyed.push((
                    format!("{}/", r.path()).into_bytes(),
                    Unit {
                        vol: i,
                        children: true,
                    },
                ));
            }
            walk.vols.push(Vol { r, claim });
        }
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        walk.units = keyed.into_iter().map(|(_, u)| u).collect();
        Ok(walk)
    }

    fn root_path(&self, v: usize) -> String {
        self.vols[v].r.path()
    }

    /// Fails volume `v`: one entry error naming it; its session (and objects) go.
    fn fail(&mut self, v: usize, message: String) {
        tracing::warn!(volume = %self.vols[v].r, error = %message, "volume failed");
        self.failed.insert(v);
        self.out.push_back((
            Item::Error(SourceError::Entry {
                path: EntryPath::from(self.root_path(v).as_str()),
                message,
            }),
            None,
        ));
        if self.current == Some(v) {
            self.current = None;
            self.batch = None;
        }
        self.sessions.remove(&v);
    }

    /// A volume is done: its objects go, and what it cost is logged.
    fn close(&mut self, v: usize) {
        if let Some(s) = self.sessions.remove(&v) {
            let bytes = self.tally.load(Ordering::Relaxed) - s.tally_start;
            tracing::info!(volume = %self.vols[v].r, transferred = bytes, "volume read");
        }
    }

    /// Snapshot, PVC and pod for volume `v`, waited for until the pod runs.
    fn open(&self, claim: &Claim) -> Result<Session, String> {
        let kube = &self.kube;
        let mut temps = Temporaries::new(kube.clone());
        let ns = claim.volume.namespace.as_str();
        let labels = cluster::labels(&self.job_name, &self.run);
        let base = format!(
            "backuphub-{}-{}",
            self.run,
            self.vols
                .iter()
                .position(|v| v.r == claim.volume)
                .unwrap_or(0)
        );
        let request = |what: &str, e: RequestError| -> String {
            if e.status == Some(403) {
                format!(
                    "{what}: forbidden: {} (see deploy/kubernetes/rbac.yaml)",
                    e.message
                )
            } else {
                format!("{what}: {e}")
            }
        };
        let mounted = match &self.job.snapshot_class {
            SnapshotClass::Live => claim.volume.name.clone(),
            class => {
                let class = match class {
                    SnapshotClass::Named(c) => c.clone(),
                    _ => self.default_class(claim)?,
                };
                let snap = cluster::snapshot_manifest(&base, &labels, claim, &class);
                temps
                    .create(
                        &format!(
                            "/apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots"
                        ),
                        &snap,
                    )
                    .map_err(|e| request("creating the VolumeSnapshot", e))?;
                let timeout = Duration::from_secs(self.job.snapshot_timeout_secs);
                let path = cluster::snapshot_path(ns, &base);
                let size = cluster::wait_for(timeout, &self.cancel, |last| {
                    let s: Value = kube
                        .get(&path)
                        .map_err(|e| request("reading the VolumeSnapshot", e))?;
                    match cluster::snapshot_ready(&s) {
                        Ok(Some(size)) => Ok(Some(size)),
                        Ok(None) => {
                            *last = "not ready".into();
                            Ok(None)
                        }
                        Err(m) => {
                            *last = m;
                            Ok(None)
                        }
                    }
                })
                .map_err(|last| {
                    format!(
                        "the VolumeSnapshot (class {class}) was not ready within {} s: {last}",
                        timeout.as_secs()
                    )
                })?;
                let size = if size.is_empty() || size == "0" {
                    claim.capacity.clone().unwrap_or_else(|| "1Gi".into())
                } else {
                    size
                };
                let pvc = cluster::pvc_from_snapshot(&base, &labels, claim, &base, &size);
                temps
                    .create(
                        &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"),
                        &pvc,
                    )
                    .map_err(|e| request("creating the PVC from the snapshot", e))?;
                base.clone()
            }
        };
        let pod = cluster::pod_manifest(
            &base,
            ns,
            &labels,
            &mounted,
            claim.block,
            &self.job.reader_image,
            false,
        );
        temps
            .create(&format!("/api/v1/namespaces/{ns}/pods"), &pod)
            .map_err(|e| request("creating the reader pod", e))?;
        let timeout = Duration::from_secs(self.job.pod_timeout_secs);
        let path = cluster::pod_path(ns, &base);
        cluster::wait_for(timeout, &self.cancel, |last| {
            let p: Value = kube
                .get(&path)
                .map_err(|e| request("reading the reader pod", e))?;
            match cluster::pod_state(&p) {
                PodState::Running => Ok(Some(())),
                PodState::Waiting(why) => {
                    *last = why;
                    Ok(None)
                }
                PodState::Failed(why) => Err(format!("the reader pod cannot run: {why}")),
            }
        })
        .map_err(|last| {
            if last.starts_with("the reader pod") || last.contains(": forbidden") {
                last
            } else {
                format!(
                    "the reader pod did not start within {} s: {last}",
                    timeout.as_secs()
                )
            }
        })?;
        Ok(Session {
            _temps: temps,
            pod: base,
            listing: None,
            pending: None,
            skipped: 0,
            tally_start: self.tally.load(Ordering::Relaxed),
        })
    }

    fn default_class(&self, claim: &Claim) -> Result<String, String> {
        let sc = claim.storage_class.as_deref().ok_or_else(|| {
            "the PVC has no storage class, so no snapshot class can be chosen; set snapshot_class".to_string()
        })?;
        let class: Value = self
            .kube
            .get(&format!("/apis/storage.k8s.io/v1/storageclasses/{sc}"))
            .map_err(|e| format!("reading storage class {sc}: {e}"))?;
        let driver = class["provisioner"].as_str().unwrap_or_default();
        let classes: Value = self
            .kube
            .get("/apis/snapshot.storage.k8s.io/v1/volumesnapshotclasses")
            .map_err(|e| format!("listing VolumeSnapshotClasses: {e}"))?;
        cluster::default_class(&classes, driver).ok_or_else(|| {
            format!("no default VolumeSnapshotClass for driver {driver:?} (storage class {sc}); set snapshot_class, or \"none\" to read the live volume")
        })
    }

    fn exec(&self, v: usize, pod: &str, script: &str, args: &[String]) -> Result<Exec, String> {
        Exec::start(
            self.kube.clone(),
            &self.vols[v].r.namespace,
            pod,
            cluster::READER,
            script,
            args,
        )
        .map(|x| x.tally_into(self.tally.clone()))
        .map_err(|e| format!("exec in the reader pod refused: {e}"))
    }

    fn root_meta(&self, v: usize, e: &mut Entry) {
        let claim = self.vols[v]
            .claim
            .as_ref()
            .expect("opened volumes have a claim");
        let m = &mut e.meta;
        m.insert(meta::VOLUME.into(), self.vols[v].r.to_string());
        m.insert(
            meta::VOLUME_MODE.into(),
            if claim.block { "Block" } else { "Filesystem" }.into(),
        );
        if let Some(c) = &claim.storage_class {
            m.insert(meta::STORAGE_CLASS.into(), c.clone());
        }
        if let Some(c) = &claim.capacity {
            m.insert(meta::CAPACITY.into(), c.clone());
        }
        let (class, pit) = match &self.job.snapshot_class {
            SnapshotClass::Live => ("none (live volume, not point-in-time)".to_string(), "false"),
            SnapshotClass::Named(c) => (c.clone(), "true"),
            SnapshotClass::DriverDefault => ("the driver's default".to_string(), "true"),
        };
        m.insert(meta::SNAPSHOT_CLASS.into(), class);
        m.insert(meta::POINT_IN_TIME.into(), pit.into());
    }

    /// A volume's root: opens its session; a block volume is its one entry.
    fn root(&mut self, v: usize) {
        let Some(claim) = self.vols[v].claim.clone() else {
            return;
        };
        let mut session = match self.open(&claim) {
            Ok(s) => s,
            Err(m) => return self.fail(v, m),
        };
        let root = self.root_path(v);
        if claim.block {
            let exec = match self.exec(v, &session.pod, &script::block(), &[]) {
                Ok(x) => x,
                Err(m) => {
                    drop(session);
                    return self.fail(v, m);
                }
            };
            let mut e = Entry::new(EntryPath::from(root.as_str()), EntryKind::File);
            self.root_meta(v, &mut e);
            e.mode = 0o600;
            self.sessions.insert(v, session);
            self.out.push_back((
                Item::Entry(SourceEntry {
                    entry: e,
                    content: Content::Read(Box::new(exec)),
                }),
                Some(v),
            ));
            return;
        }
        let mut listing = match self.exec(v, &session.pod, &script::listing(), &[]) {
            Ok(x) => BufReader::with_capacity(64 * 1024, x),
            Err(m) => return self.fail(v, m),
        };
        // Paths with a newline sort first (their mark has no name): counted, then the root.
        let first = loop {
            match read_line(&mut listing) {
                Ok(Some(Line::Skipped)) => session.skipped += 1,
                other => break other,
            }
        };
        match first {
            Ok(Some(Line::Entry(l))) if l.rel.is_empty() && l.kind == Some(EntryKind::Dir) => {
                let mut e = entry_of(&root, &l);
                self.root_meta(v, &mut e);
                session.listing = Some(listing);
                self.sessions.insert(v, session);
                self.out.push_back((
                    Item::Entry(SourceEntry {
                        entry: e,
                        content: Content::None,
                    }),
                    None,
                ));
            }
            Ok(_) => self.fail(
                v,
                "the listing does not start with the volume's root".into(),
            ),
            Err(m) => self.fail(v, m),
        }
    }

    /// Reads the next batch of volume `v`'s listing; `Ok(false)` at its end.
    fn next_batch(&mut self, v: usize) -> Result<bool, String> {
        let root = self.root_path(v);
        let Some(session) = self.sessions.get_mut(&v) else {
            return Ok(false);
        };
        let pod = session.pod.clone();
        let mut items = VecDeque::new();
        let mut names = Vec::new();
        let mut arg_bytes = 0;
        let mut ended = false;
        while items.len() < BATCH_ITEMS && arg_bytes < BATCH_ARG_BYTES {
            let (l, action) = match session.pending.take() {
                Some(decided) => decided,
                None => {
                    let line = read_line(
                        session
                            .listing
                            .as_mut()
                            .expect("a filesystem session lists"),
                    )?;
                    let l = match line {
                        None => {
                            ended = true;
                            break;
                        }
                        Some(Line::Skipped) => {
                            session.skipped += 1;
                            continue;
                        }
                        Some(Line::Entry(l)) => l,
                    };
                    if l.rel.is_empty() || !EntryPath::new(l.rel.clone()).is_safe() {
                        return Err(format!(
                            "the listing names an unsafe path {:?}",
                            String::from_utf8_lossy(&l.rel)
                        ));
                    }
                    let Some(kind) = l.kind else {
                        continue; // sockets: nothing to keep
                    };
                    if !self.selection.takes(&l.rel, kind == EntryKind::Dir) {
                        continue;
                    }
                    let path = entry_of(&root, &l).path;
                    let prev = self.previous.find(path.as_bytes());
                    let action = decide(&l, prev.as_ref());
                    (l, action)
                }
            };
            let fetch = action == Action::Fetch;
            // A file with several names goes in a tar of its own: within one archive,
            // tar sends its second name as a link without the data.
            let alone = fetch && l.kind == Some(EntryKind::File) && l.nlink > 1;
            if alone && !names.is_empty() {
                session.pending = Some((l, action));
                break;
            }
            if fetch {
                // A name that is not UTF-8 cannot travel in the exec's URL intact.
                let Ok(rel) = std::str::from_utf8(&l.rel) else {
                    self.out.push_back((
                        Item::Error(SourceError::Entry {
                            path: entry_of(&root, &l).path,
                            message: "the name is not UTF-8 and cannot be passed to the reader pod"
                                .into(),
                        }),
                        None,
                    ));
                    continue;
                };
                let name = format!("./{rel}");
                arg_bytes += name.len() * 3;
                names.push(name);
            }
            items.push_back((l, action));
            if alone {
                break;
            }
        }
        if ended && session.skipped > 0 {
            let skipped = session.skipped;
            self.out.push_back((
                Item::Error(SourceError::Entry {
                    path: EntryPath::from(root.as_str()),
                    message: format!(
                        "{skipped} path(s) with a newline in the name were not backed up (the reader's tools pass names by line)"
                    ),
                }),
                None,
            ));
        }
        if items.is_empty() {
            return Ok(!ended);
        }
        let tar = if names.is_empty() {
            None
        } else {
            Some(TarFeed::start(
                self.exec(v, &pod, &script::tar_batch(), &names)?.lenient(),
            ))
        };
        self.batch = Some(Batch { items, tar });
        Ok(true)
    }

    /// The next entry of the current batch, or `Ok(None)` when the batch is done.
    fn next_of_batch(&mut self, v: usize) -> Result<Option<Item>, String> {
        let root = self.root_path(v);
        let Some(batch) = self.batch.as_mut() else {
            return Ok(None);
        };
        let Some((l, action)) = batch.items.pop_front() else {
            if let Some(tar) = batch.tar.take() {
                tar.finish()?;
            }
            self.batch = None;
            return Ok(None);
        };
        let mut e = entry_of(&root, &l);
        let content = match action {
            Action::Plain => Content::None,
            Action::Reuse(chunks) => Content::Reuse {
                chunks,
                fallback: None,
            },
            Action::Link(t) => {
                e.link_target = Some(t);
                Content::None
            }
            Action::Fetch => {
                let tar = batch.tar.as_mut().expect("a batch with fetches has a tar");
                match tar.member(&l.rel)? {
                    None => {
                        return Ok(Some(Item::Error(SourceError::Entry {
                            path: e.path,
                            message: "vanished before it could be read".into(),
                        })));
                    }
                    Some(m) => {
                        if let Some(t) = m.link {
                            e.link_target = Some(t);
                        }
                        e.size = if e.kind == EntryKind::File { m.size } else { 0 };
                        if m.mtime != 0 {
                            e.mtime_ns = m.mtime.saturating_mul(1_000_000_000);
                        }
                        if e.kind == EntryKind::File && !m.is_file {
                            // No data follows a link or a directory: nothing to read.
                            return Ok(Some(Item::Error(SourceError::Entry {
                                path: e.path,
                                message: "is no longer a regular file (changed while read)".into(),
                            })));
                        }
                        if e.kind == EntryKind::File {
                            Content::Read(Box::new(Member {
                                rx: tar.rx.clone(),
                                done: false,
                                rest: None,
                            }))
                        } else {
                            Content::None
                        }
                    }
                }
            }
        };
        Ok(Some(Item::Entry(SourceEntry { entry: e, content })))
    }
}

/// PVCs matching a label selector, in every namespace.
fn select(kube: &Kube, selector: &str) -> Result<Vec<VolumeRef>, String> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut path = format!(
            "/api/v1/persistentvolumeclaims?limit=500&labelSelector={}",
            urlencode(selector)
        );
        if let Some(t) = &token {
            path.push_str(&format!("&continue={}", urlencode(t)));
        }
        let page: Value = kube
            .get(&path)
            .map_err(|e| format!("listing PVCs by selector {selector:?}: {e}"))?;
        for o in page["items"].as_array().into_iter().flatten() {
            let m = &o["metadata"];
            if let (Some(ns), Some(n)) = (m["namespace"].as_str(), m["name"].as_str()) {
                out.push(VolumeRef {
                    namespace: ns.into(),
                    name: n.into(),
                });
            }
        }
        token = page["metadata"]["continue"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            return Ok(out);
        }
    }
}

/// One listing line, or `None` at the (verified) end.
fn read_line(r: &mut BufReader<Exec>) -> Result<Option<Line>, String> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("listing: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    if line.pop() != Some(b'\n') {
        return Err("listing: a line is cut or too long".into());
    }
    script::parse_line(&line).map(Some)
}

impl Iterator for Walk {
    type Item = Result<SourceEntry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(v) = self.close_pending.take() {
            self.close(v);
        }
        loop {
            if let Some((item, close)) = self.out.pop_front() {
                self.close_pending = close;
                return Some(match item {
                    Item::Entry(e) => Ok(e),
                    Item::Error(e) => Err(e),
                });
            }
            if let Some(v) = self.current {
                if self.batch.is_some() {
                    match self.next_of_batch(v) {
                        Ok(Some(item)) => self.out.push_back((item, None)),
                        Ok(None) => {}
                        Err(m) => self.fail(v, m),
                    }
                    continue;
                }
                match self.next_batch(v) {
                    Ok(true) => {}
                    Ok(false) => {
                        // The listing ended and was verified: the volume is done.
                        self.current = None;
                        self.close(v);
                    }
                    Err(m) => self.fail(v, m),
                }
                continue;
            }
            let unit = self.units.pop_front()?;
            if self.failed.contains(&unit.vol) {
                continue;
            }
            if unit.children {
                self.current = Some(unit.vol);
            } else {
                self.root(unit.vol);
            }
        }
    }
}

/// A tar member's header, as the batch needs it.
struct Head {
    name: Vec<u8>,
    size: u64,
    mtime: i64,
    link: Option<Vec<u8>>,
    /// A regular file: its data follows, then the end of the member.
    is_file: bool,
}

enum Msg {
    Head(Head),
    Data(Result<Vec<u8>, String>),
    EndOfMember,
    Done(Result<(), String>),
}

/// A tar stream read on its own thread (the `tar` crate's entries borrow the archive,
/// while the archiver wants one owned reader per file), handed over piece by piece
/// through a bounded channel.
struct TarFeed {
    rx: Receiver<Msg>,
    /// A header read ahead (the member after one that vanished).
    peeked: Option<Head>,
    finished: Option<Result<(), String>>,
}

fn strip_dot(name: &[u8]) -> &[u8] {
    let n = name.strip_prefix(b"./").unwrap_or(name);
    n.strip_suffix(b"/").unwrap_or(n)
}

impl TarFeed {
    fn start(exec: Exec) -> TarFeed {
        let (tx, rx) = bounded::<Msg>(4);
        std::thread::Builder::new()
            .name("backuphub-tar".into())
            .spawn(move || {
                let mut archive = tar::Archive::new(exec);
                let result = (|| -> Result<(), String> {
                    let entries = archive.entries().map_err(|e| e.to_string())?;
                    for member in entries {
                        let mut m = member.map_err(|e| format!("tar stream: {e}"))?;
                        let head = Head {
                            name: m.path_bytes().into_owned(),
                            size: m.size(),
                            mtime: m.header().mtime().unwrap_or(0) as i64,
                            link: m.link_name_bytes().map(|l| l.into_owned()),
                            is_file: m.header().entry_type().is_file(),
                        };
                        let is_file = head.is_file;
                        if tx.send(Msg::Head(head)).is_err() {
                            return Ok(());
                        }
                        if is_file {
                            loop {
                                let mut buf = vec![0u8; TAR_PIECE];
                                match m.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(n) => {
                                        buf.truncate(n);
                                        if tx.send(Msg::Data(Ok(buf))).is_err() {
                                            return Ok(());
                                        }
                                    }
                                    Err(e) => {
                                        let msg = format!("tar stream: {e}");
                                        let _ = tx.send(Msg::Data(Err(msg.clone())));
                                        return Err(msg);
                                    }
                                }
                            }
                            if tx.send(Msg::EndOfMember).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    // Read to the end: that is where the end mark is checked.
                    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })();
                let _ = tx.send(Msg::Done(result));
            })
            .expect("a thread starts");
        TarFeed {
            rx,
            peeked: None,
            finished: None,
        }
    }

    /// The next header, skipping what a reader left of the member before.
    fn next_head(&mut self) -> Result<Option<Head>, String> {
        if let Some(h) = self.peeked.take() {
            return Ok(Some(h));
        }
        if let Some(f) = &self.finished {
            return f.clone().map(|_| None);
        }
        loop {
            match self.rx.recv() {
                Ok(Msg::Head(h)) => return Ok(Some(h)),
                Ok(Msg::Data(_) | Msg::EndOfMember) => {}
                Ok(Msg::Done(r)) => {
                    self.finished = Some(r.clone());
                    return r.map(|_| None);
                }
                Err(_) => return Err("the tar reader stopped".into()),
            }
        }
    }

    /// The member named `rel` (the batch asked for it), or `None` when the pod had no
    /// such file any more (tar skips what vanished and names the rest in order).
    fn member(&mut self, rel: &[u8]) -> Result<Option<Head>, String> {
        let Some(h) = self.next_head()? else {
            return Err(format!(
                "the tar stream ended before {:?}",
                String::from_utf8_lossy(rel)
            ));
        };
        let name = strip_dot(&h.name).to_vec();
        match name.as_slice().cmp(rel) {
            std::cmp::Ordering::Equal => Ok(Some(h)),
            std::cmp::Ordering::Greater => {
                self.peeked = Some(h);
                Ok(None)
            }
            std::cmp::Ordering::Less => Err(format!(
                "the tar stream sent {:?} where {:?} was expected",
                String::from_utf8_lossy(&name),
                String::from_utf8_lossy(rel)
            )),
        }
    }

    /// After the batch's last member: the stream's verdict.
    fn finish(mut self) -> Result<(), String> {
        match self.next_head()? {
            None => Ok(()),
            Some(h) => Err(format!(
                "the tar stream sent {:?}, which was not asked for",
                String::from_utf8_lossy(&h.name)
            )),
        }
    }
}

/// One file of a tar batch, read by the archiver.
struct Member {
    rx: Receiver<Msg>,
    done: bool,
    /// The part of a piece that did not fit the caller's buffer, and where it starts.
    rest: Option<(Vec<u8>, usize)>,
}

impl Read for Member {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some((piece, at)) = self.rest.take() {
            let n = (piece.len() - at).min(buf.len());
            buf[..n].copy_from_slice(&piece[at..at + n]);
            if at + n < piece.len() {
                self.rest = Some((piece, at + n));
            }
            return Ok(n);
        }
        if self.done {
            return Ok(0);
        }
        match self.rx.recv() {
            Ok(Msg::Data(Ok(piece))) => Ok(self.stash(piece, buf)),
            Ok(Msg::Data(Err(m))) => Err(std::io::Error::other(m)),
            Ok(Msg::EndOfMember) => {
                self.done = true;
                Ok(0)
            }
            Ok(Msg::Head(_)) | Ok(Msg::Done(_)) | Err(_) => {
                Err(std::io::Error::other("the tar stream ended inside a file"))
            }
        }
    }
}

impl Member {
    fn stash(&mut self, piece: Vec<u8>, buf: &mut [u8]) -> usize {
        let n = piece.len().min(buf.len());
        buf[..n].copy_from_slice(&piece[..n]);
        if n < piece.len() {
            self.rest = Some((piece, n));
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(rel: &str, kind: EntryKind, size: u64, mtime: i64) -> Listed {
        Listed {
            rel: rel.as_bytes().to_vec(),
            kind: Some(kind),
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            size,
            mtime,
            rdev: (0, 0),
            nlink: 1,
        }
    }

    #[test]
    fn unchanged_files_and_links_are_not_fetched() {
        let l = listed("a.jpg", EntryKind::File, 10, 100);
        let mut prev = entry_of("ns/pvc", &l);
        prev.chunks = vec![Id([7; 32])];
        assert_eq!(decide(&l, Some(&prev)), Action::Reuse(vec![Id([7; 32])]));
        assert_eq!(decide(&l, None), Action::Fetch);
        let touched = listed("a.jpg", EntryKind::File, 10, 101);
        assert_eq!(decide(&touched, Some(&prev)), Action::Fetch);
        let grown = listed("a.jpg", EntryKind::File, 11, 100);
        assert_eq!(decide(&grown, Some(&prev)), Action::Fetch);
        assert_eq!(
            decide(&listed("e", EntryKind::File, 0, 1), None),
            Action::Plain
        );
        let link = listed("l", EntryKind::Symlink, 5, 100);
        let mut prev_link = entry_of("ns/pvc", &link);
        prev_link.link_target = Some(b"a.jpg".to_vec());
        assert_eq!(
            decide(&link, Some(&prev_link)),
            Action::Link(b"a.jpg".to_vec())
        );
        assert_eq!(decide(&link, None), Action::Fetch);
        assert_eq!(
            decide(&listed("d", EntryKind::Dir, 4096, 1), None),
            Action::Plain
        );
    }

    #[test]
    fn entries_sit_under_namespace_and_pvc() {
        let mut l = listed("photos/a b.jpg", EntryKind::File, 3, 2);
        l.mode = 0o600;
        let e = entry_of("immich/library", &l);
        assert_eq!(e.path.as_bytes(), b"immich/library/photos/a b.jpg");
        assert_eq!(
            (e.mode, e.uid, e.size, e.mtime_ns),
            (0o600, 1000, 3, 2_000_000_000)
        );
        let root = entry_of("immich/library", &listed("", EntryKind::Dir, 4096, 1));
        assert_eq!(root.path.as_bytes(), b"immich/library");
        assert_eq!(root.size, 0);
    }

    #[test]
    fn selection_by_include_and_exclude() {
        let s = Selection::new(
            &["photos/**".into(), "documents/**".into()],
            &["photos/cache".into()],
        )
        .unwrap();
        assert!(s.takes(b"photos", true));
        assert!(s.takes(b"photos/2026/a.jpg", false));
        assert!(!s.takes(b"photos/cache", true));
        assert!(!s.takes(b"photos/cache/x.jpg", false));
        assert!(!s.takes(b"music/a.mp3", false));
        assert!(!s.takes(b"music", true));
        let all = Selection::new(&[], &[]).unwrap();
        assert!(all.takes(b"anything/at/all", false));
    }

    #[test]
    fn roots_and_children_of_prefix_siblings_stay_in_byte_order() {
        // The order `start` gives the units, for volumes `a/pvc` and `a/pvc-2`.
        let mut keys = vec![
            b"a/pvc".to_vec(),
            b"a/pvc/".to_vec(),
            b"a/pvc-2".to_vec(),
            b"a/pvc-2/".to_vec(),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                b"a/pvc".to_vec(),
                b"a/pvc-2".to_vec(),
                b"a/pvc-2/".to_vec(),
                b"a/pvc/".to_vec()
            ]
        );
        // Every child path of a volume sorts after its unit key and before the next.
        assert!(b"a/pvc-2/zzz".as_slice() < b"a/pvc/".as_slice());
    }
}
