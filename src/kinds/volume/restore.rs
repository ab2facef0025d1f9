//! `restore-volume`: a volume of a snapshot back into a PVC, through a short-lived
//! writer pod. Files go as a tar stream into `tar -x` (owners, modes, times, symlinks,
//! fifos and devices as stored); a block volume's image is copied onto the device. The
//! writer's end mark (byte count and SHA-256 of what it received) must match what was
//! sent, or the restore fails.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::cluster::{self, PodState, Temporaries};
use super::exec::Exec;
use super::{VolumeRef, meta, script};
use crate::kinds::kubernetes::client::Kube;
use crate::repo::Repository;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Entry, EntryKind};
use crate::restore::EntryContent;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The volume in the snapshot.
    pub volume: VolumeRef,
    /// The PVC to write into.
    pub into: VolumeRef,
    /// Create `into` (storage class and size default to the backed-up volume's).
    pub create: Option<NewClaim>,
    /// Only this path below the volume's root (files mode).
    pub path: Option<String>,
    /// Write into a non-empty volume.
    pub overwrite: bool,
    pub image: String,
    pub pod_timeout: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct NewClaim {
    pub storage_class: Option<String>,
    pub size: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct RestoreReport {
    pub volume: String,
    pub into: String,
    pub block: bool,
    pub entries: u64,
    pub bytes: u64,
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0}")]
    NotFound(String),
    /// The target holds data and `--overwrite` was not given.
    #[error("{0}")]
    NotEmpty(String),
    #[error("{0}")]
    Settings(String),
    #[error("{0}")]
    Cluster(String),
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
}

impl RestoreError {
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            RestoreError::NotFound(_) => ErrorKind::NotFound,
            RestoreError::NotEmpty(_) => ErrorKind::Exists,
            RestoreError::Settings(_) => ErrorKind::Settings,
            RestoreError::Cluster(_) => ErrorKind::Source,
            RestoreError::Repo(e) => e.kind(),
        }
    }
}

/// Whether `e` belongs to what is restored: below `root`, and below `root/path` if given.
fn selected(e: &Entry, root: &[u8], path: Option<&str>) -> Option<Vec<u8>> {
    let p = e.path.as_bytes();
    let rel = p.strip_prefix(root)?.strip_prefix(b"/")?;
    if let Some(sub) = path {
        let sub = sub.trim_matches('/').as_bytes();
        let under = rel == sub || (rel.starts_with(sub) && rel.get(sub.len()) == Some(&b'/'));
        if !under {
            return None;
        }
    }
    Some(rel.to_vec())
}

/// Counts and hashes what is written through it.
struct Counted<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub fn restore(
    repo: &Repository,
    snap: &Snapshot,
    kube: Arc<Kube>,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let root_path = opts.volume.path();
    let mut root = None;
    let mut held = std::collections::BTreeSet::new();
    for e in repo.entries(snap) {
        let e = e?;
        if let Some(v) = e.meta.get(meta::VOLUME) {
            held.insert(v.clone());
        }
        if e.path.as_bytes() == root_path.as_bytes() {
            root = Some(e);
        }
    }
    let root = root.ok_or_else(|| {
        RestoreError::NotFound(format!(
            "the snapshot holds no volume {root_path} (it holds {held:?})"
        ))
    })?;
    let block = root.meta.get(meta::VOLUME_MODE).map(String::as_str) == Some("Block");
    if block && opts.path.is_some() {
        return Err(RestoreError::Settings(
            "--path applies to filesystem volumes; this one is a block volume".into(),
        ));
    }
    // An image over an existing block device replaces all of it, and whether it holds
    // data cannot be told from outside: only with --overwrite.
    if block && opts.create.is_none() && !opts.overwrite {
        return Err(RestoreError::NotEmpty(format!(
            "writing the block image into PVC {} replaces everything on it: give --overwrite (or --create for a new PVC)",
            opts.into
        )));
    }
    let ns = opts.into.namespace.as_str();
    let mut report = RestoreReport {
        volume: root_path.clone(),
        into: opts.into.to_string(),
        block,
        ..Default::default()
    };
    let cluster_err =
        |what: &str, e: &dyn std::fmt::Display| RestoreError::Cluster(format!("{what}: {e}"));
    // The target claim: made here, or there already with the right mode.
    match &opts.create {
        Some(new) => {
            let size = new
                .size
                .clone()
                .or_else(|| root.meta.get(meta::CAPACITY).cloned())
                .ok_or_else(|| {
                    RestoreError::Settings(
                        "the snapshot does not record the volume's size: give --size".into(),
                    )
                })?;
            let mut spec = json!({
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": if block { "Block" } else { "Filesystem" },
                "resources": { "requests": { "storage": size } },
            });
            if let Some(c) = new
                .storage_class
                .clone()
                .or_else(|| root.meta.get(meta::STORAGE_CLASS).cloned())
            {
                spec["storageClassName"] = json!(c);
            }
            let pvc = json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                // Not labelled as ours: it is the user's volume from now on.
                "metadata": { "name": opts.into.name, "namespace": ns },
                "spec": spec,
            });
            kube.create(
                &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"),
                &pvc,
            )
            .map_err(|e| cluster_err(&format!("creating PVC {}", opts.into), &e))?;
            report.created = true;
        }
        None => {
            let pvc: Value = kube
                .get(&cluster::pvc_path(ns, &opts.into.name))
                .map_err(|e| {
                    if e.status == Some(404) {
                        RestoreError::NotFound(format!(
                            "PVC {} does not exist: create it, or give --create",
                            opts.into
                        ))
                    } else {
                        cluster_err(&format!("reading PVC {}", opts.into), &e)
                    }
                })?;
            let target_block = pvc["spec"]["volumeMode"].as_str() == Some("Block");
            if target_block != block {
                return Err(RestoreError::Settings(format!(
                    "PVC {} is a {} volume, the backup a {} volume",
                    opts.into,
                    if target_block { "block" } else { "filesystem" },
                    if block { "block" } else { "filesystem" },
                )));
            }
        }
    }
    let run = cluster::run_id();
    // No job label: a volume job's sweep must never take a restore's pod.
    let labels = json!({ cluster::MANAGED_BY: "backuphub", "backuphub.io/restore": run });
    let pod_name = format!("backuphub-restore-{run}");
    let mut temps = Temporaries::new(kube.clone());
    let pod = cluster::pod_manifest(
        &pod_name,
        ns,
        &labels,
        &opts.into.name,
        block,
        &opts.image,
        true,
    );
    temps
        .create(&format!("/api/v1/namespaces/{ns}/pods"), &pod)
        .map_err(|e| cluster_err("creating the writer pod", &e))?;
    let path = cluster::pod_path(ns, &pod_name);
    cluster::wait_for(opts.pod_timeout, &AtomicBool::new(false), |last| {
        let p: Value = kube
            .get(&path)
            .map_err(|e| format!("reading the writer pod: {e}"))?;
        match cluster::pod_state(&p) {
            PodState::Running => Ok(Some(())),
            PodState::Waiting(w) => {
                *last = w;
                Ok(None)
            }
            PodState::Failed(w) => Err(format!("the writer pod cannot run: {w}")),
        }
    })
    .map_err(|m| RestoreError::Cluster(format!("the writer pod did not start: {m}")))?;

    let times_file = format!("./.backuphub-dir-times-{run}");
    let args: Vec<String> = vec![
        if opts.overwrite { "overwrite" } else { "keep" }.into(),
        times_file.clone(),
    ];
    let mut exec = Exec::start(
        kube.clone(),
        ns,
        &pod_name,
        cluster::WRITER,
        &script::writer(block),
        &args,
    )
    .map_err(|e| cluster_err("exec in the writer pod refused", &e))?;
    let stdin = exec
        .take_stdin()
        .ok_or_else(|| RestoreError::Cluster("the exec has no stdin".into()))?;
    let mut out = Counted {
        inner: stdin,
        hasher: Sha256::new(),
        bytes: 0,
    };
    let sent = if block {
        let mut content = EntryContent::new(repo, &root);
        std::io::copy(&mut content, &mut out).map(|n| {
            report.entries = 1;
            report.bytes = n;
        })
    } else {
        write_tar(
            repo,
            snap,
            &root_path,
            opts,
            &times_file,
            &mut out,
            &mut report,
        )
    };
    let Counted {
        mut inner,
        hasher,
        bytes,
    } = out;
    // The end of stdin: the writer's tar ends, and with it the script.
    let closed = inner.flush().and_then(|_| inner.shutdown());
    let sent = sent.and(closed);
    let verdict = exec.finish(Some((bytes, hex::encode(hasher.finalize()))));
    let refused = !opts.overwrite
        && exec
            .stderr_lines()
            .iter()
            .any(|l| l == script::NOT_EMPTY_LINE);
    match (sent, verdict) {
        _ if refused => Err(RestoreError::NotEmpty(format!(
            "PVC {} is not empty: give --overwrite to write into it",
            opts.into
        ))),
        (_, Err(m)) => Err(RestoreError::Cluster(m)),
        (Err(e), Ok(_)) => Err(RestoreError::Cluster(format!("sending the data: {e}"))),
        (Ok(()), Ok(_)) => Ok(report),
    }
}

/// The selected entries as a tar stream (GNU long names where needed).
fn write_tar(
    repo: &Repository,
    snap: &Snapshot,
    root_path: &str,
    opts: &RestoreOptions,
    times_file: &str,
    out: &mut dyn Write,
    report: &mut RestoreReport,
) -> std::io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    for e in repo.entries(snap) {
        let e = e.map_err(std::io::Error::other)?;
        let rel = if e.path.as_bytes() == root_path.as_bytes() && opts.path.is_none() {
            Vec::new()
        } else {
            match selected(&e, root_path.as_bytes(), opts.path.as_deref()) {
                Some(r) => r,
                None => continue,
            }
        };
        let mut name = b"./".to_vec();
        name.extend_from_slice(&rel);
        let name = std::ffi::OsStr::from_bytes(&name);
        let mut h = header(&e);
        match e.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, name, std::io::empty())?;
            }
            EntryKind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.size);
                let content = EntryContent::new(repo, &e);
                b.append_data(&mut h, name, content)?;
                report.bytes += e.size;
            }
            EntryKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                let target = e.link_target.clone().unwrap_or_default();
                b.append_link(&mut h, name, std::ffi::OsStr::from_bytes(&target))?;
            }
            EntryKind::Fifo | EntryKind::CharDevice | EntryKind::BlockDevice => {
                h.set_entry_type(match e.kind {
                    EntryKind::Fifo => tar::EntryType::Fifo,
                    EntryKind::CharDevice => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                });
                if let Some(r) = e.rdev {
                    h.set_device_major(libc::major(r))?;
                    h.set_device_minor(libc::minor(r))?;
                }
                b.append_data(&mut h, name, std::io::empty())?;
            }
        }
        report.entries += 1;
    }
    // Directory times go last, in a file the writer applies after unpacking (see
    // `script::writer`): a pass to size it, one to write it, so memory stays flat.
    let dir_lines = |f: &mut dyn FnMut(&[u8]) -> std::io::Result<()>| -> std::io::Result<()> {
        for e in repo.entries(snap) {
            let e = e.map_err(std::io::Error::other)?;
            if e.kind != EntryKind::Dir {
                continue;
            }
            let rel = if e.path.as_bytes() == root_path.as_bytes() {
                if opts.path.is_some() {
                    continue;
                }
                Vec::new()
            } else {
                match selected(&e, root_path.as_bytes(), opts.path.as_deref()) {
                    Some(r) => r,
                    None => continue,
                }
            };
            let mut line = format!("{} ./", e.mtime_ns.max(0) / 1_000_000_000).into_bytes();
            line.extend_from_slice(&rel);
            line.push(b'\n');
            f(&line)?;
        }
        Ok(())
    };
    let mut size = 0u64;
    dir_lines(&mut |l| {
        size += l.len() as u64;
        Ok(())
    })?;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(size);
    let (r, mut w) = std::io::pipe()?;
    // The lines are produced by a second pass while the builder reads them.
    std::thread::scope(|scope| -> std::io::Result<()> {
        let producer = scope.spawn(move || dir_lines(&mut |l| w.write_all(l)));
        b.append_data(&mut h, times_file, r)?;
        producer
            .join()
            .map_err(|_| std::io::Error::other("the directory pass panicked"))?
    })?;
    b.finish()
}

fn header(e: &Entry) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode);
    h.set_uid(e.uid as u64);
    h.set_gid(e.gid as u64);
    h.set_mtime(e.mtime_ns.max(0) as u64 / 1_000_000_000);
    h.set_size(0);
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::tree::EntryPath;

    #[test]
    fn selection_below_root_and_path() {
        let e = |p: &str| Entry::new(EntryPath::from(p), EntryKind::File);
        assert_eq!(
            selected(&e("ns/pvc/a/b"), b"ns/pvc", None),
            Some(b"a/b".to_vec())
        );
        assert_eq!(selected(&e("ns/pvc-2/a"), b"ns/pvc", None), None);
        assert_eq!(selected(&e("ns/pvc"), b"ns/pvc", None), None);
        assert_eq!(
            selected(&e("ns/pvc/a/b"), b"ns/pvc", Some("a")),
            Some(b"a/b".to_vec())
        );
        assert_eq!(selected(&e("ns/pvc/ab"), b"ns/pvc", Some("a")), None);
        assert_eq!(
            selected(&e("ns/pvc/a"), b"ns/pvc", Some("/a/")),
            Some(b"a".to_vec())
        );
    }
}
