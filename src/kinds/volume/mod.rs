//! The `volume` job kind: the contents of PersistentVolumeClaims (Ceph RBD block volumes,
//! CephFS subvolumes) pulled through the API server alone, from a CSI snapshot, leaving
//! nothing behind in the cluster.
//!
//! Per volume: a `VolumeSnapshot` (a consistent point in time), a PVC restored from it
//! and a short-lived reader pod mounting that PVC read-only, all in the volume's own
//! namespace (Kubernetes restores a snapshot only into its namespace and mounts only
//! PVCs of the pod's namespace). The data streams out over `exec` with the reader
//! image's POSIX tools; every stream ends with a byte count and SHA-256 that the Pi
//! checks, so a stream cut short fails that volume instead of passing as complete.
//!
//! - [`script`]: the shell run in the reader pod and the parsers of what it prints (pure).
//! - [`cluster`]: the temporary objects: manifests, creation, waiting, deletion, and the
//!   sweep of what earlier runs left behind.
//! - [`exec`]: an exec's stdout as a synchronous reader that verifies the stream's end.
//! - [`source`]: the [`Source`](crate::source::Source): file listings merged with the
//!   previous snapshot (unchanged files are not transferred), changed files in tar
//!   batches, block devices as one stream.
//! - [`restore`]: `restore-volume`, back into a PVC through a writer pod.

pub mod cluster;
pub mod exec;
pub mod restore;
pub mod script;
pub mod source;

use std::path::PathBuf;

use serde::Deserialize;

use super::globs;
use super::kubernetes::client::Connection;

/// The job's settings (`kind = "volume"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeJob {
    /// A kubeconfig file (a credential). Or `server` + `token_file` (+ `ca_file`).
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub server: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// `namespace/pvc` names.
    #[serde(default)]
    pub volumes: Vec<VolumeRef>,
    /// A label selector over PVCs in every namespace (Kubernetes selector syntax); the
    /// volumes it finds are added to `volumes`.
    #[serde(default)]
    pub selector: String,
    /// The VolumeSnapshotClass: `""` the default class of the volume's CSI driver,
    /// `"none"` the live volume (no snapshot: not point-in-time), else a class name.
    #[serde(default)]
    pub snapshot_class: SnapshotClass,
    /// The image of the reader and writer pods; it needs only POSIX/busybox tools
    /// (`sh`, `find`, `stat`, `sort`, `tar`, `tee`, `mkfifo`, `sha256sum`, `wc`, `cat`).
    #[serde(default = "default_image")]
    pub reader_image: String,
    /// Globs over paths inside a filesystem volume (`photos/**`); empty: everything.
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Seconds a snapshot may take to become ready.
    #[serde(default = "default_snapshot_timeout")]
    pub snapshot_timeout_secs: u64,
    /// Seconds a reader pod may take to start (scheduling, attaching, pulling).
    #[serde(default = "default_pod_timeout")]
    pub pod_timeout_secs: u64,
    /// Seconds one API request may take (exec streams have no deadline: they are
    /// watched by their end mark, not by a clock).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
}

fn default_image() -> String {
    "docker.io/library/busybox:1.37".into()
}
fn default_snapshot_timeout() -> u64 {
    600
}
fn default_pod_timeout() -> u64 {
    300
}
fn default_request_timeout() -> u64 {
    30
}

impl VolumeJob {
    pub fn connection(&self) -> Connection<'_> {
        Connection {
            kubeconfig: self.kubeconfig.as_deref(),
            context: self.context.as_deref(),
            server: self.server.as_deref(),
            token_file: self.token_file.as_deref(),
            ca_file: self.ca_file.as_deref(),
            request_timeout_secs: self.request_timeout_secs,
        }
    }
}

/// `namespace/name` of a PVC, checked at load time against Kubernetes' name rules.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VolumeRef {
    pub namespace: String,
    pub name: String,
}

impl VolumeRef {
    /// Where the volume lives in a snapshot: `namespace/name`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl std::fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An RFC 1123 DNS label (namespaces).
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An RFC 1123 DNS subdomain (PVC names).
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(dns_label)
}

impl std::str::FromStr for VolumeRef {
    type Err = String;
    fn from_str(s: &str) -> Result<VolumeRef, String> {
        let (ns, name) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not namespace/pvc"))?;
        if !dns_label(ns) {
            return Err(format!("{s:?}: {ns:?} is not a namespace name"));
        }
        if !dns_subdomain(name) {
            return Err(format!("{s:?}: {name:?} is not a PVC name"));
        }
        Ok(VolumeRef {
            namespace: ns.into(),
            name: name.into(),
        })
    }
}

impl<'de> Deserialize<'de> for VolumeRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Which snapshot a volume is read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SnapshotClass {
    /// The default VolumeSnapshotClass of the volume's CSI driver.
    #[default]
    DriverDefault,
    /// No snapshot: the live volume, mounted read-only a second time.
    Live,
    Named(String),
}

impl<'de> Deserialize<'de> for SnapshotClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "" => SnapshotClass::DriverDefault,
            "none" => SnapshotClass::Live,
            _ if dns_subdomain(&s) => SnapshotClass::Named(s),
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "{s:?} is not a VolumeSnapshotClass name (or \"\" for the driver's default, \"none\" for the live volume)"
                )));
            }
        })
    }
}

/// Metadata keys of a volume's root entry.
pub mod meta {
    /// `Filesystem` or `Block`.
    pub const VOLUME_MODE: &str = "volumeMode";
    /// `namespace/pvc`.
    pub const VOLUME: &str = "volume";
    pub const STORAGE_CLASS: &str = "storageClass";
    /// The VolumeSnapshotClass read from, or `none (live volume, not point-in-time)`.
    pub const SNAPSHOT_CLASS: &str = "snapshotClass";
    /// `true` when read from a snapshot.
    pub const POINT_IN_TIME: &str = "pointInTime";
    pub const CAPACITY: &str = "capacity";
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The API server cannot be reached or refuses the credentials: the run fails.
    #[error("{0}")]
    Unreachable(String),
    /// One volume failed (its snapshot, pod, exec or stream); the others go on.
    #[error("{0}")]
    Volume(String),
    #[error("{0}")]
    Settings(String),
}

impl VolumeError {
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            VolumeError::Unreachable(_) | VolumeError::Volume(_) => ErrorKind::Source,
            VolumeError::Settings(_) => ErrorKind::Settings,
        }
    }
}

/// Validation at config load. Returns the key and the message.
pub fn validate(job: &VolumeJob) -> Result<(), (&'static str, String)> {
    job.connection().validate()?;
    if job.volumes.is_empty() && job.selector.trim().is_empty() {
        return Err((
            "volumes",
            "is empty and there is no `selector`: nothing would be backed up".into(),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for v in &job.volumes {
        if !seen.insert(v) {
            return Err(("volumes", format!("{v} is named twice")));
        }
    }
    globs(&job.include).map_err(|e| ("include", e))?;
    globs(&job.exclude).map_err(|e| ("exclude", e))?;
    if job.reader_image.trim().is_empty() || job.reader_image.contains(char::is_whitespace) {
        return Err(("reader_image", "must be an image reference".into()));
    }
    if !(1..=86_400).contains(&job.snapshot_timeout_secs) {
        return Err((
            "snapshot_timeout_secs",
            "must be between 1 and 86400".into(),
        ));
    }
    if !(1..=86_400).contains(&job.pod_timeout_secs) {
        return Err(("pod_timeout_secs", "must be between 1 and 86400".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_refs_follow_kubernetes_names() {
        let v: VolumeRef = "immich/library".parse().unwrap();
        assert_eq!(v.path(), "immich/library");
        assert!("database/data-postgresql-0".parse::<VolumeRef>().is_ok());
        assert!("a/b.c".parse::<VolumeRef>().is_ok());
        for bad in [
            "library",
            "Immich/library",
            "a/B",
            "a/b/c",
            "/b",
            "a/",
            "-a/b",
            "a/b_c",
        ] {
            assert!(bad.parse::<VolumeRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_class_words() {
        let p = |s: &str| -> Result<SnapshotClass, String> {
            #[derive(Deserialize)]
            struct T {
                c: SnapshotClass,
            }
            toml::from_str::<T>(&format!("c = {s:?}"))
                .map(|t| t.c)
                .map_err(|e| e.to_string())
        };
        assert_eq!(p("").unwrap(), SnapshotClass::DriverDefault);
        assert_eq!(p("none").unwrap(), SnapshotClass::Live);
        assert_eq!(
            p("csi-rbdplugin-snapclass").unwrap(),
            SnapshotClass::Named("csi-rbdplugin-snapclass".into())
        );
        assert!(
            p("Bad Class")
                .unwrap_err()
                .contains("not a VolumeSnapshotClass")
        );
    }
}
