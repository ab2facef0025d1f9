//! The temporary objects of a run: snapshot, PVC from it, reader pod. Manifests and the
//! reading of their states are pure; [`Temporaries`] creates, waits for and deletes them.
//!
//! Every object carries `app.kubernetes.io/managed-by=backuphub`, the job and the run id
//! as labels. They are deleted when the volume is done (also after a failure, and on
//! cancellation: [`Temporaries`] deletes on drop), and each run first deletes what an
//! earlier run of the same job left (SIGKILL, power loss): nothing outlives its run by
//! more than one run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::VolumeRef;
use super::script::{DEVICE_PATH, MOUNT_PATH};
use crate::kinds::kubernetes::client::{Kube, RequestError};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const JOB_LABEL: &str = "backuphub.io/job";
pub const RUN_LABEL: &str = "backuphub.io/run";
/// The reader pod's container.
pub const READER: &str = "reader";
pub const WRITER: &str = "writer";
/// A pod is killed by the kubelet after this even if nobody deletes it.
const POD_DEADLINE_SECS: u64 = 24 * 3600;

const SNAPSHOTS: &str = "/apis/snapshot.storage.k8s.io/v1";

/// A run's id: random, short, a valid label value and name part.
pub fn run_id() -> String {
    let mut b = [0u8; 5];
    getrandom::fill(&mut b).expect("the OS has randomness");
    hex::encode(b)
}

/// A job name as a label value (lowercase letters, digits and `-`, at most 63).
pub fn job_label(job: &str) -> String {
    let mut s: String = job
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .take(63)
        .collect();
    while s.ends_with('-') {
        s.pop();
    }
    let t = s.trim_start_matches('-').to_string();
    if t.is_empty() { "job".into() } else { t }
}

/// What a run needs to know about a PVC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub volume: VolumeRef,
    pub block: bool,
    pub storage_class: Option<String>,
    pub access_modes: Vec<String>,
    /// `status.capacity.storage`, else the request.
    pub capacity: Option<String>,
}

impl Claim {
    pub fn from_object(volume: &VolumeRef, o: &Value) -> Claim {
        let spec = &o["spec"];
        let text = |v: &Value| v.as_str().map(str::to_string);
        Claim {
            volume: volume.clone(),
            block: spec["volumeMode"].as_str() == Some("Block"),
            storage_class: text(&spec["storageClassName"]),
            access_modes: spec["accessModes"]
                .as_array()
                .map(|a| a.iter().filter_map(&text).collect())
                .unwrap_or_default(),
            capacity: text(&o["status"]["capacity"]["storage"])
                .or_else(|| text(&spec["resources"]["requests"]["storage"])),
        }
    }

    /// A volume shared by several nodes (CephFS) is restored read-only-many, which
    /// CephFS serves as a shallow, copy-free volume; a block volume as read-write-once.
    pub fn restore_access_mode(&self) -> &'static str {
        if self
            .access_modes
            .iter()
            .any(|m| m == "ReadWriteMany" || m == "ReadOnlyMany")
        {
            "ReadOnlyMany"
        } else {
            "ReadWriteOnce"
        }
    }
}

pub fn labels(job: &str, run: &str) -> Value {
    json!({ MANAGED_BY: "backuphub", JOB_LABEL: job_label(job), RUN_LABEL: run })
}

pub fn snapshot_manifest(name: &str, labels: &Value, claim: &Claim, class: &str) -> Value {
    json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": { "name": name, "namespace": claim.volume.namespace, "labels": labels },
        "spec": {
            "volumeSnapshotClassName": class,
            "source": { "persistentVolumeClaimName": claim.volume.name },
        },
    })
}

pub fn pvc_from_snapshot(
    name: &str,
    labels: &Value,
    claim: &Claim,
    snapshot: &str,
    size: &str,
) -> Value {
    let mut spec = json!({
        "accessModes": [claim.restore_access_mode()],
        "volumeMode": if claim.block { "Block" } else { "Filesystem" },
        "resources": { "requests": { "storage": size } },
        "dataSource": { "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot },
    });
    if let Some(c) = &claim.storage_class {
        spec["storageClassName"] = json!(c);
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": name, "namespace": claim.volume.namespace, "labels": labels },
        "spec": spec,
    })
}

/// A pod that mounts `claim_name` (read-only for a reader) and sleeps; the work is done
/// by exec. Root, because only root reads every file of a volume, but with every
/// capability dropped except those the job needs, no service account token, no
/// privilege escalation, a read-only root file system and bounded resources.
pub fn pod_manifest(
    name: &str,
    namespace: &str,
    labels: &Value,
    claim_name: &str,
    block: bool,
    image: &str,
    writer: bool,
) -> Value {
    let caps: &[&str] = if writer {
        &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]
    } else {
        &["DAC_READ_SEARCH"]
    };
    let mut container = json!({
        "name": if writer { WRITER } else { READER },
        "image": image,
        "command": ["sleep", POD_DEADLINE_SECS.to_string()],
        "securityContext": {
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "runAsUser": 0,
            "capabilities": { "drop": ["ALL"], "add": caps },
        },
        "resources": {
            "requests": { "cpu": "50m", "memory": "32Mi" },
            // busybox `sort` holds the listing in memory: ~200 B per file.
            "limits": { "cpu": "1", "memory": "1Gi" },
        },
        "volumeMounts": [{ "name": "tmp", "mountPath": "/tmp" }],
    });
    if block {
        container["volumeDevices"] = json!([{ "name": "volume", "devicePath": DEVICE_PATH }]);
    } else {
        container["volumeMounts"]
            .as_array_mut()
            .expect("an array")
            .push(json!({ "name": "volume", "mountPath": MOUNT_PATH, "readOnly": !writer }));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "activeDeadlineSeconds": POD_DEADLINE_SECS,
            "terminationGracePeriodSeconds": 1,
            "securityContext": { "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [container],
            "volumes": [
                { "name": "volume", "persistentVolumeClaim": { "claimName": claim_name, "readOnly": !writer } },
                { "name": "tmp", "emptyDir": { "sizeLimit": "16Mi" } },
            ],
        },
    })
}

/// Where a pod is on its way to running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    Running,
    /// Still pending: why, as the cluster says it.
    Waiting(String),
    /// Will never run.
    Failed(String),
}

pub fn pod_state(pod: &Value) -> PodState {
    let st = &pod["status"];
    let phase = st["phase"].as_str().unwrap_or("Pending");
    let waiting = st["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| {
            let w = &c["state"]["waiting"];
            w["reason"].as_str().map(|r| {
                let m = w["message"].as_str().unwrap_or("");
                (r.to_string(), m.to_string())
            })
        });
    match phase {
        "Running"
            if st["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|c| c["state"]["running"].is_object()) =>
        {
            return PodState::Running;
        }
        "Failed" | "Succeeded" => {
            let why = st["message"]
                .as_str()
                .or(st["reason"].as_str())
                .unwrap_or("it ended");
            return PodState::Failed(format!("the pod {}: {why}", phase.to_lowercase()));
        }
        _ => {}
    }
    if let Some((reason, message)) = waiting {
        let text = format!("{reason}: {message}");
        // These do not get better by waiting.
        return if matches!(
            reason.as_str(),
            "InvalidImageName" | "ErrImageNeverPull" | "CreateContainerConfigError"
        ) {
            PodState::Failed(text)
        } else {
            PodState::Waiting(text)
        };
    }
    let unscheduled = st["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "PodScheduled" && c["status"] == "False");
    if let Some(c) = unscheduled {
        return PodState::Waiting(format!(
            "{}: {}",
            c["reason"].as_str().unwrap_or("Unschedulable"),
            c["message"].as_str().unwrap_or("")
        ));
    }
    PodState::Waiting(phase.to_string())
}

/// A snapshot's readiness: `Ok(Some(restoreSize))` when ready, `Ok(None)` while not,
/// `Err` with the snapshot controller's message when it reports an error (which may
/// still clear up: it is only final at the deadline).
pub fn snapshot_ready(s: &Value) -> Result<Option<String>, String> {
    let st = &s["status"];
    if st["readyToUse"].as_bool() == Some(true) {
        return Ok(Some(
            st["restoreSize"]
                .as_str()
                .map(str::to_string)
                .or_else(|| st["restoreSize"].as_u64().map(|n| n.to_string()))
                .unwrap_or_default(),
        ));
    }
    match st["error"]["message"].as_str() {
        Some(m) => Err(m.to_string()),
        None => Ok(None),
    }
}

/// The default VolumeSnapshotClass of a CSI driver among a list's items.
pub fn default_class(classes: &Value, driver: &str) -> Option<String> {
    let items = classes["items"].as_array()?;
    let of_driver: Vec<&Value> = items.iter().filter(|c| c["driver"] == driver).collect();
    let default = of_driver.iter().find(|c| {
        c["metadata"]["annotations"]["snapshot.storage.kubernetes.io/is-default-class"] == "true"
    });
    // One class for the driver is its default in practice, annotated or not.
    default
        .or(if of_driver.len() == 1 {
            of_driver.first()
        } else {
            None
        })
        .and_then(|c| c["metadata"]["name"].as_str())
        .map(str::to_string)
}

pub fn pvc_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}")
}
pub fn pod_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/pods/{name}")
}
pub fn snapshot_path(ns: &str, name: &str) -> String {
    format!("{SNAPSHOTS}/namespaces/{ns}/volumesnapshots/{name}")
}

/// Objects created by this run, deleted (newest first) by [`Temporaries::clear`] or on
/// drop.
pub struct Temporaries {
    kube: Arc<Kube>,
    /// API paths of the objects, in creation order.
    created: Vec<String>,
}

impl Temporaries {
    pub fn new(kube: Arc<Kube>) -> Self {
        Temporaries {
            kube,
            created: Vec::new(),
        }
    }

    /// Creates an object; it is deleted with the others.
    pub fn create(&mut self, collection: &str, object: &Value) -> Result<Value, RequestError> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let path = format!("{collection}/{name}");
        match self.kube.create(collection, object) {
            Ok(made) => {
                self.created.push(path);
                Ok(made)
            }
            Err(e) => {
                // No answer or a 5xx: the object may exist all the same, so it is
                // deleted with the others (a 404 then is fine).
                if e.status.is_none_or(|c| c >= 500) {
                    self.created.push(path);
                }
                Err(e)
            }
        }
    }

    /// Deletes everything created, newest first; failures are logged (the next run's
    /// sweep finds what is left).
    pub fn clear(&mut self) {
        while let Some(path) = self.created.pop() {
            let path = if path.contains("/pods/") {
                format!("{path}?gracePeriodSeconds=0")
            } else {
                path
            };
            if let Err(e) = self.kube.delete(&path) {
                tracing::warn!(object = %path, error = %e, "could not delete a temporary object; the next run removes it");
            }
        }
    }
}

impl Drop for Temporaries {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Polls `check` (backing off to every 2 s) up to `timeout`; `check` returns
/// `Ok(Some(v))` when done, `Ok(None)` to go on and `Err(reason)` when it failed for
/// good. On timeout, `last` says what the state was. `cancel` (the daemon stopping)
/// ends the wait at once.
pub fn wait_for<T>(
    timeout: Duration,
    cancel: &AtomicBool,
    mut check: impl FnMut(&mut String) -> Result<Option<T>, String>,
) -> Result<T, String> {
    let start = Instant::now();
    let mut last = String::new();
    let mut pause = Duration::from_millis(100);
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err("cancelled".into());
        }
        if let Some(v) = check(&mut last)? {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(last);
        }
        // In short steps, so that cancellation is seen within 100 ms.
        let until = Instant::now() + pause.min(timeout.saturating_sub(start.elapsed()));
        while Instant::now() < until && !cancel.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100).min(until - Instant::now()));
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Deletes what earlier runs of this job left behind (objects with its job label and
/// another run's id), cluster-wide. Returns how many were deleted; failures are logged.
pub fn sweep(kube: &Kube, job: &str, run: &str) -> Result<usize, RequestError> {
    let selector = crate::kinds::kubernetes::source::urlencode(&format!(
        "{MANAGED_BY}=backuphub,{JOB_LABEL}={}",
        job_label(job)
    ));
    let mut deleted = 0;
    // Pods first: a PVC is only removed once no pod uses it.
    for (list, one) in [
        (
            "/api/v1/pods".to_string(),
            pod_path as fn(&str, &str) -> String,
        ),
        ("/api/v1/persistentvolumeclaims".to_string(), pvc_path),
        (format!("{SNAPSHOTS}/volumesnapshots"), snapshot_path),
    ] {
        let items: Value = match kube.get(&format!("{list}?labelSelector={selector}")) {
            Ok(v) => v,
            // No snapshot API in the cluster: nothing of ours can be there.
            Err(e) if e.status == Some(404) => continue,
            Err(e) => return Err(e),
        };
        for o in items["items"].as_array().into_iter().flatten() {
            let m = &o["metadata"];
            if m["labels"][RUN_LABEL] == run {
                continue;
            }
            let (Some(ns), Some(name)) = (m["namespace"].as_str(), m["name"].as_str()) else {
                continue;
            };
            let path = one(ns, name);
            match kube.delete(&path) {
                Ok(_) => {
                    tracing::info!(object = %path, "deleted a leftover of an earlier run");
                    deleted += 1;
                }
                Err(e) => {
                    tracing::warn!(object = %path, error = %e, "could not delete a leftover of an earlier run")
                }
            }
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(modes: &[&str], block: bool) -> Claim {
        Claim {
            volume: "immich/library".parse().unwrap(),
            block,
            storage_class: Some("ceph-filesystem".into()),
            access_modes: modes.iter().map(|s| s.to_string()).collect(),
            capacity: Some("10Gi".into()),
        }
    }

    #[test]
    fn job_names_become_label_values() {
        assert_eq!(job_label("volumes"), "volumes");
        assert_eq!(job_label("My_Volumes"), "my-volumes");
        assert_eq!(job_label("__"), "job");
        assert_eq!(job_label(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn manifests_are_read_only_and_labelled() {
        let l = labels("vols", "ab12");
        let c = claim(&["ReadWriteMany"], false);
        let p = pvc_from_snapshot("bh", &l, &c, "snap", "10Gi");
        assert_eq!(p["spec"]["accessModes"][0], "ReadOnlyMany");
        assert_eq!(p["spec"]["dataSource"]["name"], "snap");
        assert_eq!(p["metadata"]["labels"][RUN_LABEL], "ab12");
        let b = pvc_from_snapshot("bh", &l, &claim(&["ReadWriteOnce"], true), "s", "1Gi");
        assert_eq!(b["spec"]["accessModes"][0], "ReadWriteOnce");
        assert_eq!(b["spec"]["volumeMode"], "Block");
        let pod = pod_manifest("bh", "immich", &l, "bh", false, "busybox", false);
        let spec = &pod["spec"];
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(
            spec["volumes"][0]["persistentVolumeClaim"]["readOnly"],
            true
        );
        let ctr = &spec["containers"][0];
        assert_eq!(ctr["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert_eq!(
            ctr["securityContext"]["capabilities"]["add"],
            json!(["DAC_READ_SEARCH"])
        );
        assert!(ctr["resources"]["limits"]["memory"].is_string());
        assert_eq!(ctr["volumeMounts"][1]["mountPath"], MOUNT_PATH);
        assert_eq!(ctr["volumeMounts"][1]["readOnly"], true);
        let blockpod = pod_manifest("bh", "db", &l, "bh", true, "busybox", false);
        assert_eq!(
            blockpod["spec"]["containers"][0]["volumeDevices"][0]["devicePath"],
            DEVICE_PATH
        );
    }

    #[test]
    fn pod_states_as_the_cluster_reports_them() {
        let running = json!({"status": {"phase": "Running", "containerStatuses": [{"state": {"running": {"startedAt": "x"}}}]}});
        assert_eq!(pod_state(&running), PodState::Running);
        let pull = json!({"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}});
        assert_eq!(
            pod_state(&pull),
            PodState::Waiting("ErrImagePull: not found".into())
        );
        let bad = json!({"status": {"phase": "Pending", "containerStatuses": [{"state": {"waiting": {"reason": "InvalidImageName", "message": "x"}}}]}});
        assert!(matches!(pod_state(&bad), PodState::Failed(_)));
        let unsched = json!({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes are available"}]}});
        assert_eq!(
            pod_state(&unsched),
            PodState::Waiting("Unschedulable: 0/3 nodes are available".into())
        );
        let dead = json!({"status": {"phase": "Failed", "reason": "DeadlineExceeded"}});
        assert!(matches!(pod_state(&dead), PodState::Failed(m) if m.contains("DeadlineExceeded")));
    }

    #[test]
    fn snapshot_readiness_and_default_classes() {
        assert_eq!(
            snapshot_ready(&json!({"status": {"readyToUse": false}})),
            Ok(None)
        );
        assert_eq!(
            snapshot_ready(&json!({"status": {"readyToUse": true, "restoreSize": "10Gi"}})),
            Ok(Some("10Gi".into()))
        );
        assert!(snapshot_ready(&json!({"status": {"error": {"message": "no class"}}})).is_err());
        let classes = json!({"items": [
            {"metadata": {"name": "a"}, "driver": "rbd"},
            {"metadata": {"name": "b", "annotations": {"snapshot.storage.kubernetes.io/is-default-class": "true"}}, "driver": "rbd"},
            {"metadata": {"name": "c"}, "driver": "cephfs"},
        ]});
        assert_eq!(default_class(&classes, "rbd").as_deref(), Some("b"));
        assert_eq!(default_class(&classes, "cephfs").as_deref(), Some("c"));
        assert_eq!(default_class(&classes, "nfs"), None);
    }

    #[test]
    fn waiting_ends_with_the_last_state() {
        let mut n = 0;
        let no = AtomicBool::new(false);
        let r: Result<(), String> = wait_for(Duration::from_millis(300), &no, |last| {
            n += 1;
            *last = format!("pending {n}");
            Ok(None)
        });
        assert!(r.unwrap_err().starts_with("pending"));
        assert_eq!(
            wait_for(Duration::from_secs(5), &no, |_| Ok(Some(7))).unwrap(),
            7
        );
        let yes = AtomicBool::new(true);
        let r: Result<(), String> = wait_for(Duration::from_secs(60), &yes, |_| Ok(None));
        assert_eq!(r.unwrap_err(), "cancelled");
    }
}
