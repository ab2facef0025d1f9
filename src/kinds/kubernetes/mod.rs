//! The `kubernetes` job kind: every API object the credentials may list — built-in
//! resources, CRDs and their custom resources — pulled through the API server, one YAML
//! file per object, and `restore-kubernetes` to turn a snapshot into files that
//! `kubectl apply -f DIR --recursive` applies to an empty cluster in a safe order.
//!
//! - [`client`]: the `kube` client with bounded requests (no built-in retries: an
//!   aggregated API answering 503 must cost seconds, not minutes).
//! - [`discovery`]: every group's preferred version, group by group, so one failing group
//!   (metrics.k8s.io answering 503) fails only itself.
//! - [`source`]: the [`Source`](crate::source::Source): paginated lists, 410 restarts,
//!   entries in key order with a bounded reorder window.
//! - [`restore`]: cleaning server-owned fields and ordering files (pure), writing them.

pub mod client;
pub mod discovery;
pub mod restore;
pub mod source;

use std::path::PathBuf;

use serde::Deserialize;

use super::globs;

/// The job's settings (`kind = "kubernetes"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesJob {
    /// A kubeconfig file (a credential). Or `server` + `token_file` (+ `ca_file`).
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's context; default: its current context.
    pub context: Option<String>,
    /// The API server's URL, with `token_file`, instead of a kubeconfig.
    pub server: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The cluster's CA certificate (PEM); without it, the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Globs over namespace names.
    #[serde(default = "everything")]
    pub include_namespaces: Vec<String>,
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// Globs over `resource.group` names (`deployments.apps`, `configmaps` for the core
    /// group, `certificates.cert-manager.io`).
    #[serde(default = "everything")]
    pub include_resources: Vec<String>,
    /// Added to [`DEFAULT_EXCLUDED`].
    #[serde(default)]
    pub exclude_resources: Vec<String>,
    /// Only objects with these labels (Kubernetes selector syntax).
    #[serde(default)]
    pub label_selector: String,
    /// Also cluster-scoped objects (namespaces, CRDs, cluster roles, PVs, …).
    #[serde(default = "yes")]
    pub cluster_scoped: bool,
    /// Seconds one request may take.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// Objects per list page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

impl KubernetesJob {
    pub fn connection(&self) -> client::Connection<'_> {
        client::Connection {
            kubeconfig: self.kubeconfig.as_deref(),
            context: self.context.as_deref(),
            server: self.server.as_deref(),
            token_file: self.token_file.as_deref(),
            ca_file: self.ca_file.as_deref(),
            request_timeout_secs: self.request_timeout_secs,
        }
    }
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}
fn yes() -> bool {
    true
}
fn default_request_timeout() -> u64 {
    30
}
fn default_page_size() -> u32 {
    500
}

/// Resources never backed up unless named: Secrets (they live in GitOps with SOPS, and
/// may be included only explicitly, into an encrypted repository) and what the cluster
/// regenerates or what describes the cluster's current state rather than its
/// configuration.
pub const DEFAULT_EXCLUDED: &[&str] = &[
    "secrets",
    "events",
    "events.events.k8s.io",
    "leases.coordination.k8s.io",
    "endpointslices.discovery.k8s.io",
    "nodes",
    "componentstatuses",
    "csinodes.storage.k8s.io",
    "volumeattachments.storage.k8s.io",
    "*.metrics.k8s.io",
    "*.custom.metrics.k8s.io",
    "*.external.metrics.k8s.io",
];

/// Which resources and namespaces a job takes. Built once per run from the settings.
pub struct Filter {
    include_ns: globset::GlobSet,
    exclude_ns: globset::GlobSet,
    include_res: globset::GlobSet,
    exclude_res: globset::GlobSet,
    /// Resources named literally in `include_resources` (they beat the default
    /// exclusions).
    named: Vec<String>,
}

impl Filter {
    pub fn new(job: &KubernetesJob) -> Result<Filter, String> {
        let mut exclude: Vec<String> = DEFAULT_EXCLUDED
            .iter()
            .map(|s| s.to_string())
            .filter(|d| !job.include_resources.contains(d))
            .collect();
        exclude.extend(job.exclude_resources.iter().cloned());
        Ok(Filter {
            include_ns: globs(&job.include_namespaces)?,
            exclude_ns: globs(&job.exclude_namespaces)?,
            include_res: globs(&job.include_resources)?,
            exclude_res: globs(&exclude)?,
            named: job
                .include_resources
                .iter()
                .filter(|r| !r.contains(['*', '?', '[', '{']))
                .cloned()
                .collect(),
        })
    }

    /// `name` is `resource` for the core group, else `resource.group`.
    pub fn resource(&self, name: &str) -> bool {
        if self.named.iter().any(|n| n == name) {
            return !self.exclude_res.is_match(name) || DEFAULT_EXCLUDED.contains(&name);
        }
        self.include_res.is_match(name) && !self.exclude_res.is_match(name)
    }

    pub fn namespace(&self, ns: &str) -> bool {
        self.include_ns.is_match(ns) && !self.exclude_ns.is_match(ns)
    }
}

/// Whether the job asks for Secrets (only by naming them).
pub fn includes_secrets(job: &KubernetesJob) -> bool {
    job.include_resources.iter().any(|r| r == "secrets")
}

/// `resource` or `resource.group`.
pub fn qualified(resource: &str, group: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

/// Where an object is stored: `cluster/<resource.group>/<name>.yaml` or
/// `namespaced/<resource.group>/<namespace>/<name>.yaml`.
pub fn object_key(qualified: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("namespaced/{qualified}/{ns}/{name}.yaml"),
        None => format!("cluster/{qualified}/{name}.yaml"),
    }
}

/// Metadata keys of a kubernetes entry.
pub mod meta {
    pub const API_VERSION: &str = "apiVersion";
    pub const KIND: &str = "kind";
    pub const NAMESPACE: &str = "namespace";
    pub const NAME: &str = "name";
    pub const RESOURCE_VERSION: &str = "resourceVersion";
    /// `resource.group` (`resource` for the core group).
    pub const RESOURCE: &str = "resource";
    pub const UID: &str = "uid";
    /// The uid of the object's controller (the ownerReference with `controller: true`).
    pub const CONTROLLER: &str = "controller";
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The API server cannot be reached or refuses the credentials: the run fails.
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Settings(String),
    /// One request failed (a group, a resource).
    #[error("{0}")]
    Request(String),
    #[error("{0}")]
    Repo(#[from] crate::repo::RepoError),
    #[error("{context}: {err}")]
    Io {
        context: String,
        err: std::io::Error,
    },
}

impl KubeError {
    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            KubeError::Unreachable(_) | KubeError::Request(_) => ErrorKind::Source,
            KubeError::Settings(_) => ErrorKind::Settings,
            KubeError::Repo(e) => e.kind(),
            KubeError::Io { .. } => ErrorKind::Io,
        }
    }
}

/// Validation at config load; `encrypted` says whether the repository will encrypt
/// (recipients configured). Returns the key and the message.
pub fn validate(job: &KubernetesJob, encrypted: bool) -> Result<(), (&'static str, String)> {
    job.connection().validate()?;
    for (key, list) in [
        ("include_namespaces", &job.include_namespaces),
        ("exclude_namespaces", &job.exclude_namespaces),
        ("include_resources", &job.include_resources),
        ("exclude_resources", &job.exclude_resources),
    ] {
        globs(list).map_err(|e| (key, e))?;
    }
    if job.include_resources.is_empty() {
        return Err((
            "include_resources",
            "is empty: nothing would be backed up".into(),
        ));
    }
    if includes_secrets(job) && !encrypted {
        return Err((
            "include_resources",
            "names \"secrets\", but the repository is not encrypted: Secrets go only into an encrypted repository (set repository.recipients)".into(),
        ));
    }
    if !(1..=10_000).contains(&job.page_size) {
        return Err(("page_size", "must be between 1 and 10000".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(include: &[&str], exclude: &[&str]) -> KubernetesJob {
        KubernetesJob {
            kubeconfig: Some("/k".into()),
            context: None,
            server: None,
            token_file: None,
            ca_file: None,
            include_namespaces: everything(),
            exclude_namespaces: vec!["kube-*".into()],
            include_resources: include.iter().map(|s| s.to_string()).collect(),
            exclude_resources: exclude.iter().map(|s| s.to_string()).collect(),
            label_selector: String::new(),
            cluster_scoped: true,
            request_timeout_secs: 30,
            page_size: 500,
        }
    }

    #[test]
    fn secrets_and_regenerated_objects_are_out_unless_named() {
        let f = Filter::new(&job(&["*"], &["pods"])).unwrap();
        for out in [
            "secrets",
            "events",
            "events.events.k8s.io",
            "leases.coordination.k8s.io",
            "pods",
            "nodes.metrics.k8s.io",
        ] {
            assert!(!f.resource(out), "{out}");
        }
        for inside in [
            "configmaps",
            "deployments.apps",
            "certificates.cert-manager.io",
            "customresourcedefinitions.apiextensions.k8s.io",
        ] {
            assert!(f.resource(inside), "{inside}");
        }
        let f = Filter::new(&job(&["*", "secrets"], &[])).unwrap();
        assert!(f.resource("secrets"));
        let f = Filter::new(&job(&["*.cert-manager.io"], &[])).unwrap();
        assert!(f.resource("certificates.cert-manager.io"));
        assert!(!f.resource("configmaps"));
        assert!(!f.namespace("kube-system"));
        assert!(f.namespace("default"));
    }

    #[test]
    fn secrets_need_an_encrypted_repository() {
        let j = job(&["*", "secrets"], &[]);
        assert!(validate(&j, false).unwrap_err().1.contains("not encrypted"));
        assert!(validate(&j, true).is_ok());
        // "*" alone never takes Secrets, so it needs no encryption.
        assert!(validate(&job(&["*"], &[]), false).is_ok());
    }

    #[test]
    fn credentials_are_one_way_or_the_other() {
        let mut j = job(&["*"], &[]);
        j.server = Some("https://10.0.0.1:6443".into());
        assert!(validate(&j, false).unwrap_err().1.contains("not both"));
        j.kubeconfig = None;
        assert_eq!(validate(&j, false).unwrap_err().0, "token_file");
        j.token_file = Some("/t".into());
        assert!(validate(&j, false).is_ok());
        j.server = Some("10.0.0.1:6443".into());
        assert!(validate(&j, false).is_err());
    }

    #[test]
    fn keys_by_scope_resource_namespace_name() {
        assert_eq!(
            object_key("configmaps", Some("ns"), "a"),
            "namespaced/configmaps/ns/a.yaml"
        );
        assert_eq!(
            object_key(
                &qualified("customresourcedefinitions", "apiextensions.k8s.io"),
                None,
                "x.y.io"
            ),
            "cluster/customresourcedefinitions.apiextensions.k8s.io/x.y.io.yaml"
        );
    }
}
