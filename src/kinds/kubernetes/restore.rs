//! `restore-kubernetes`: a snapshot's objects as apply-ready YAML files.
//!
//! Two passes over the snapshot's entries: the first reads only metadata (which objects
//! are restored, their uids, which CRDs there are), the second cleans each object
//! ([`clean`]) and writes it to `DIR/<NNN>-<resource>/<namespace>/<name>.yaml`, numbered
//! by [`rank`] so that `kubectl apply -f DIR --recursive` (which walks files in name
//! order) creates what others depend on first. Both are pure and tested directly.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::{KubeError, meta};
use crate::repo::Repository;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Entry, EntryKind};
use crate::restore::EntryContent;

/// Built-in resources in the order they must exist in: what namespaced objects live in
/// or refer to, then configuration, then workloads.
const ORDER: &[&str] = &[
    "customresourcedefinitions.apiextensions.k8s.io",
    "namespaces",
    "storageclasses.storage.k8s.io",
    "volumesnapshotclasses.snapshot.storage.k8s.io",
    "priorityclasses.scheduling.k8s.io",
    "persistentvolumes",
    "persistentvolumeclaims",
    "serviceaccounts",
    "clusterroles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "secrets",
    "configmaps",
    "limitranges",
    "resourcequotas",
    "networkpolicies.networking.k8s.io",
    "services",
    "endpoints",
    "ingressclasses.networking.k8s.io",
    "ingresses.networking.k8s.io",
    "poddisruptionbudgets.policy",
    "deployments.apps",
    "statefulsets.apps",
    "daemonsets.apps",
    "replicasets.apps",
    "cronjobs.batch",
    "jobs.batch",
    "pods",
    "horizontalpodautoscalers.autoscaling",
];

/// Groups of Kubernetes itself: their resources are built in, never custom.
fn built_in_group(group: &str) -> bool {
    group.is_empty()
        || group.ends_with(".k8s.io")
        || matches!(
            group,
            "apps" | "batch" | "policy" | "autoscaling" | "extensions" | "certificates.k8s.io"
        )
}

/// The position of a resource's files: [`ORDER`] first, then other built-in resources,
/// then custom resources (after their CRDs, which come first of all), each
/// alphabetically. `custom` says whether the snapshot holds a CRD for it.
pub fn rank(resource: &str, custom: bool) -> (u8, usize, String) {
    if let Some(i) = ORDER.iter().position(|r| *r == resource) {
        return (0, i, String::new());
    }
    let group = resource.split_once('.').map_or("", |(_, g)| g);
    let tier = if custom || !built_in_group(group) {
        2
    } else {
        1
    };
    (tier, 0, resource.to_string())
}

/// Removes what the server owns, so the object applies to another cluster. `restored`
/// holds the uids of the objects being restored: an ownerReference to one of them would
/// point at a uid that will not exist (the owner gets a new one), and the garbage
/// collector would delete the object, so it is dropped.
pub fn clean(obj: &mut Value, restored: &HashSet<String>) {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
            "managedFields",
        ] {
            m.remove(k);
        }
        if let Some(refs) = m.get_mut("ownerReferences").and_then(Value::as_array_mut) {
            refs.retain(|r| !r["uid"].as_str().is_some_and(|u| restored.contains(u)));
            if refs.is_empty() {
                m.remove("ownerReferences");
            }
        }
        if kind == "PersistentVolumeClaim"
            && let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut)
        {
            for k in [
                "pv.kubernetes.io/bind-completed",
                "pv.kubernetes.io/bound-by-controller",
                "volume.beta.kubernetes.io/storage-provisioner",
                "volume.kubernetes.io/storage-provisioner",
                "volume.kubernetes.io/selected-node",
            ] {
                a.remove(k);
            }
            if a.is_empty() {
                m.remove("annotations");
            }
        }
    }
    let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
    match (kind.as_str(), spec) {
        // A headless Service keeps `None`: it is what makes it headless.
        ("Service", Some(spec))
            if spec.get("clusterIP").and_then(Value::as_str) != Some("None") =>
        {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        ("Pod", Some(spec)) => {
            spec.remove("nodeName");
        }
        ("PersistentVolume", Some(spec)) => {
            // The claim it was bound to gets a new uid: keep the name, so it binds again.
            if let Some(c) = spec.get_mut("claimRef").and_then(Value::as_object_mut) {
                c.remove("uid");
                c.remove("resourceVersion");
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Only these namespaces (cluster-scoped objects are kept unless `resources` says
    /// otherwise); empty: all.
    pub namespaces: Vec<String>,
    /// Only these resources (`resource.group` or `resource`); empty: all.
    pub resources: Vec<String>,
    /// Also objects a controller recreates (pods of a ReplicaSet, …).
    pub all: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct RestoreReport {
    pub written: u64,
    /// Left out because a restored controller recreates them.
    pub left_out: u64,
    pub files: Vec<String>,
    pub failures: Vec<(String, String)>,
}

fn selected(e: &Entry, o: &RestoreOptions) -> bool {
    let res = e.meta.get(meta::RESOURCE).map(String::as_str).unwrap_or("");
    let ns = e.meta.get(meta::NAMESPACE);
    (o.resources.is_empty() || o.resources.iter().any(|r| r == res))
        && (o.namespaces.is_empty() || ns.is_none_or(|n| o.namespaces.contains(n)))
}

/// One path component from a name: no `/`, not `.` or `..`, not empty.
fn component(s: &str) -> String {
    let s = s
        .replace('%', "%25")
        .replace('/', "%2F")
        .replace('\0', "%00");
    match s.as_str() {
        "" => "%".into(),
        "." => "%2E".into(),
        ".." => "%2E%2E".into(),
        _ => s,
    }
}

/// Writes the snapshot's objects below `target` (which must be empty or missing).
pub fn restore(
    repo: &Repository,
    snapshot_id: &str,
    snap: &Snapshot,
    target: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreReport, KubeError> {
    let io = |context: String| move |err| KubeError::Io { context, err };
    if target.exists()
        && std::fs::read_dir(target)
            .map_err(io(target.display().to_string()))?
            .next()
            .is_some()
    {
        return Err(KubeError::Settings(format!(
            "{} is not empty: restore into a new directory",
            target.display()
        )));
    }
    // Pass 1: metadata only.
    let mut restored: HashSet<String> = HashSet::new();
    let mut crds: HashSet<String> = HashSet::new();
    let mut services: HashSet<(String, String)> = HashSet::new();
    let mut controlled: HashMap<String, String> = HashMap::new();
    for e in repo.entries(snap) {
        let e = e?;
        if e.kind != EntryKind::File || !selected(&e, opts) {
            continue;
        }
        if let Some(u) = e.meta.get(meta::UID) {
            restored.insert(u.clone());
            if let Some(c) = e.meta.get(meta::CONTROLLER) {
                controlled.insert(u.clone(), c.clone());
            }
        }
        match e.meta.get(meta::RESOURCE).map(String::as_str) {
            Some("customresourcedefinitions.apiextensions.k8s.io") => {
                if let Some(n) = e.meta.get(meta::NAME) {
                    crds.insert(n.clone());
                }
            }
            Some("services") => {
                if let (Some(ns), Some(n)) = (e.meta.get(meta::NAMESPACE), e.meta.get(meta::NAME)) {
                    services.insert((ns.clone(), n.clone()));
                }
            }
            _ => {}
        }
    }
    // Ranks in use, numbered densely.
    let mut report = RestoreReport::default();
    let mut dirs: HashMap<String, PathBuf> = HashMap::new();
    let mut ranked: Vec<((u8, usize, String), String)> = Vec::new();
    // Pass 2: clean and write.
    for e in repo.entries(snap) {
        let e = e?;
        if e.kind != EntryKind::File || !selected(&e, opts) {
            continue;
        }
        let res = e.meta.get(meta::RESOURCE).cloned().unwrap_or_default();
        let ns = e.meta.get(meta::NAMESPACE).cloned();
        let name = e.meta.get(meta::NAME).cloned().unwrap_or_default();
        if !opts.all {
            let owner_restored = e
                .meta
                .get(meta::UID)
                .and_then(|u| controlled.get(u))
                .is_some_and(|c| restored.contains(c));
            let endpoints_of_service = res == "endpoints"
                && ns
                    .as_ref()
                    .is_some_and(|n| services.contains(&(n.clone(), name.clone())));
            if owner_restored || endpoints_of_service {
                report.left_out += 1;
                continue;
            }
        }
        let display = e.restore_path().display();
        let mut bytes = Vec::new();
        if let Err(err) = EntryContent::new(repo, &e).copy_to(&mut bytes) {
            report.failures.push((display, err.to_string()));
            continue;
        }
        let mut obj: Value = match serde_yaml_ng::from_slice(&bytes) {
            Ok(v) => v,
            Err(err) => {
                report.failures.push((display, format!("not YAML: {err}")));
                continue;
            }
        };
        clean(&mut obj, &restored);
        let r = rank(&res, crds.contains(&res));
        if !ranked.iter().any(|(k, _)| *k == r) {
            ranked.push((r.clone(), res.clone()));
        }
        let dir = dirs
            .entry(res.clone())
            .or_insert_with(|| target.join(format!("tmp-{}", component(&res))))
            .clone();
        let dir = match &ns {
            Some(n) => dir.join(component(n)),
            None => dir,
        };
        std::fs::create_dir_all(&dir).map_err(io(dir.display().to_string()))?;
        let file = dir.join(format!("{}.yaml", component(&name)));
        let yaml = serde_yaml_ng::to_string(&obj).unwrap_or_default();
        std::fs::File::create_new(&file)
            .and_then(|mut f| f.write_all(yaml.as_bytes()))
            .map_err(io(file.display().to_string()))?;
        report.written += 1;
    }
    // Number the directories by rank now that all are known.
    ranked.sort();
    let mut order = Vec::new();
    for (i, (_, res)) in ranked.iter().enumerate() {
        let from = &dirs[res];
        let to = target.join(format!("{:03}-{}", i + 1, component(res)));
        std::fs::rename(from, &to).map_err(io(to.display().to_string()))?;
        order.push(format!("{:03}-{}", i + 1, component(res)));
    }
    let readme = format!(
        "Kubernetes objects restored by backuphub from snapshot {} (job {}, {}).\n\n\
         Server-owned fields are removed (status, uid, resourceVersion, creationTimestamp,\n\
         managedFields, Services' clusterIP, Pods' nodeName, PVC bind annotations).\n\
         Objects a restored controller recreates (pods of ReplicaSets, ReplicaSets of\n\
         Deployments, Endpoints of Services) are left out: {} of them.\n\n\
         Apply in this order (the directories are numbered so):\n\n{}\n\n\
         kubectl apply -f {} --recursive\n\n\
         CRDs come first; if a custom resource is refused because its CRD is not yet\n\
         established, run the same command again.\n",
        snapshot_id,
        snap.job,
        snap.time.format("%Y-%m-%d %H:%M:%S UTC"),
        report.left_out,
        order
            .iter()
            .map(|d| format!("  {d}"))
            .collect::<Vec<_>>()
            .join("\n"),
        target.display()
    );
    std::fs::write(target.join("README.txt"), readme).map_err(io("README.txt".into()))?;
    report.files = order;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crds_and_namespaces_first_custom_resources_last() {
        let mut rs = vec![
            ("certificates.cert-manager.io", true),
            ("deployments.apps", false),
            ("widgets.example.com", false),
            ("configmaps", false),
            ("namespaces", false),
            ("customresourcedefinitions.apiextensions.k8s.io", false),
            ("csidrivers.storage.k8s.io", false),
            ("pods", false),
            ("persistentvolumeclaims", false),
        ];
        rs.sort_by_key(|(r, c)| rank(r, *c));
        let names: Vec<&str> = rs.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            names,
            vec![
                "customresourcedefinitions.apiextensions.k8s.io",
                "namespaces",
                "persistentvolumeclaims",
                "configmaps",
                "deployments.apps",
                "pods",
                "csidrivers.storage.k8s.io",
                "certificates.cert-manager.io",
                "widgets.example.com",
            ]
        );
    }

    #[test]
    fn server_owned_fields_go() {
        let restored: HashSet<String> = ["owner-uid".to_string()].into();
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "a", "uid": "u1", "resourceVersion": "5",
                         "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 2,
                         "managedFields": [{}], "selfLink": "/x",
                         "ownerReferences": [{"uid": "owner-uid", "kind": "X"}, {"uid": "elsewhere", "kind": "Y"}]},
            "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": [{"port": 80}]},
            "status": {"loadBalancer": {}}
        });
        clean(&mut svc, &restored);
        assert_eq!(
            svc,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "a",
                             "ownerReferences": [{"uid": "elsewhere", "kind": "Y"}]},
                "spec": {"ports": [{"port": 80}]}
            })
        );
        let mut headless =
            json!({"kind": "Service", "metadata": {}, "spec": {"clusterIP": "None"}});
        clean(&mut headless, &restored);
        assert_eq!(headless["spec"]["clusterIP"], "None");
        let mut pod = json!({"kind": "Pod", "metadata": {"ownerReferences": [{"uid": "owner-uid"}]}, "spec": {"nodeName": "n1", "containers": []}});
        clean(&mut pod, &restored);
        assert_eq!(
            pod,
            json!({"kind": "Pod", "metadata": {}, "spec": {"containers": []}})
        );
        let mut pvc = json!({"kind": "PersistentVolumeClaim", "metadata": {"annotations": {"pv.kubernetes.io/bind-completed": "yes", "keep": "me"}}, "spec": {"volumeName": "pv1"}});
        clean(&mut pvc, &restored);
        assert_eq!(pvc["metadata"]["annotations"], json!({"keep": "me"}));
        let mut pv = json!({"kind": "PersistentVolume", "metadata": {}, "spec": {"claimRef": {"name": "c", "uid": "u", "resourceVersion": "1"}}});
        clean(&mut pv, &restored);
        assert_eq!(pv["spec"]["claimRef"], json!({"name": "c"}));
    }

    #[test]
    fn names_never_leave_their_directory() {
        assert_eq!(component(".."), "%2E%2E");
        assert_eq!(component("a/b"), "a%2Fb");
        assert_eq!(component("system:kube"), "system:kube");
    }
}
