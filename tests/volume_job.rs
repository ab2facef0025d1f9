//! The volume job kind against the fake API server (tests/fake_kube/server.py, a
//! separate process): VolumeSnapshots that become ready, PVCs from them, reader pods,
//! and exec over the real WebSocket protocol, where the fake plays the container by
//! running the requested command with Debian's busybox against fixture directories
//! (a volume) or files (a block device).

mod common;

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::kube::{FakeKube, TOKEN};
use common::{Env, text};

/// Whole seconds: busybox `stat` gives no more, so that is what a volume keeps.
const T0: i64 = 1_790_000_000;

struct Cluster {
    kube: FakeKube,
    /// `--volumes` directory: volumes.json, data/<ns>/<pvc>.
    root: PathBuf,
}

impl Cluster {
    fn data(&self, ns: &str, pvc: &str) -> PathBuf {
        self.root.join("data").join(ns).join(pvc)
    }

    /// Our temporary objects still in the cluster (pods, PVCs, snapshots).
    fn leftovers(&self) -> Vec<String> {
        let sel = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dbackuphub";
        let mut out = Vec::new();
        for list in [
            "/api/v1/pods",
            "/api/v1/persistentvolumeclaims",
            "/apis/snapshot.storage.k8s.io/v1/volumesnapshots",
        ] {
            let (code, v) = self.kube.get_json(&format!("{list}?{sel}"));
            if code == 403 {
                continue; // the test forbids that resource
            }
            assert_eq!(code, 200, "{v}");
            for o in v["items"].as_array().unwrap() {
                out.push(format!(
                    "{list} {}/{}",
                    o["metadata"]["namespace"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                ));
            }
        }
        out
    }

    /// Exec requests in the request log.
    fn execs(&self) -> Vec<String> {
        self.kube
            .requests()
            .into_iter()
            .filter(|r| r.contains("/exec?"))
            .collect()
    }
}

fn set_mtime(p: &Path, t: i64) {
    filetime::set_symlink_file_times(
        p,
        filetime::FileTime::from_unix_time(t, 0),
        filetime::FileTime::from_unix_time(t, 0),
    )
    .unwrap();
}

/// A small file tree with what a volume holds: nested directories, odd names, a long
/// name, a symlink, an empty file, a private file, a few MiB of noise.
fn fill_library(dir: &Path) {
    let p = |s: &str| dir.join(s);
    std::fs::create_dir_all(p("photos/2026")).unwrap();
    std::fs::create_dir_all(p("documents")).unwrap();
    std::fs::create_dir_all(p("cache")).unwrap();
    std::fs::write(p("photos/2026/a b.jpg"), common::noise(3 << 20, 1)).unwrap();
    std::fs::write(p("photos/2026/b.jpg"), common::noise(200_000, 2)).unwrap();
    std::fs::write(p(&format!("photos/{}.jpg", "l".repeat(150))), b"long").unwrap();
    std::fs::write(p("documents/notes.txt"), b"notes\n").unwrap();
    std::fs::write(p("documents/empty"), b"").unwrap();
    std::fs::write(p("documents/private.key"), b"not really").unwrap();
    std::fs::set_permissions(
        p("documents/private.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(p("cache/tmp.bin"), common::noise(10_000, 3)).unwrap();
    symlink("../photos/2026/b.jpg", p("documents/latest.jpg")).unwrap();
    // Two names of one file: tar would send the second as a link without data.
    std::fs::hard_link(p("photos/2026/b.jpg"), p("photos/2026/b-link.jpg")).unwrap();
    // Children first: setting a file's time leaves its directory's alone, but the
    // directories were changed by creating the files.
    fn times(p: &Path) {
        if p.symlink_metadata().unwrap().is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                times(&e.unwrap().path());
            }
        }
        set_mtime(p, T0);
    }
    times(dir);
}

fn start(env: &Env, extra: &[&str]) -> Cluster {
    let root = env.path("cluster");
    std::fs::create_dir_all(root.join("data/immich")).unwrap();
    std::fs::create_dir_all(root.join("data/database")).unwrap();
    std::fs::create_dir_all(root.join("data/media")).unwrap();
    std::fs::write(
        root.join("volumes.json"),
        serde_json::json!({
            "storageClasses": [
                {"name": "ceph-filesystem", "provisioner": "rook-ceph.cephfs.csi.ceph.com"},
                {"name": "ceph-block", "provisioner": "rook-ceph.rbd.csi.ceph.com"}],
            "snapshotClasses": [
                {"name": "csi-cephfsplugin-snapclass", "driver": "rook-ceph.cephfs.csi.ceph.com", "default": true},
                {"name": "csi-rbdplugin-snapclass", "driver": "rook-ceph.rbd.csi.ceph.com", "default": true}],
            "pvcs": [
                {"namespace": "immich", "name": "library", "volumeMode": "Filesystem",
                 "storageClassName": "ceph-filesystem", "accessModes": ["ReadWriteMany"], "size": "10Gi",
                 "labels": {"backup": "yes"}},
                {"namespace": "database", "name": "data-postgresql-0", "volumeMode": "Block",
                 "storageClassName": "ceph-block", "accessModes": ["ReadWriteOnce"], "size": "8Mi",
                 "labels": {"backup": "yes"}},
                {"namespace": "media", "name": "cache", "volumeMode": "Filesystem",
                 "storageClassName": "ceph-filesystem", "accessModes": ["ReadWriteMany"], "size": "1Gi"},
                {"namespace": "media", "name": "stuck", "volumeMode": "Filesystem",
                 "storageClassName": "ceph-filesystem", "accessModes": ["ReadWriteMany"], "size": "1Gi"}]
        })
        .to_string(),
    )
    .unwrap();
    let lib = root.join("data/immich/library");
    std::fs::create_dir_all(&lib).unwrap();
    fill_library(&lib);
    std::fs::write(
        root.join("data/database/data-postgresql-0"),
        common::noise(8 << 20, 9),
    )
    .unwrap();
    for d in ["cache", "stuck"] {
        std::fs::create_dir_all(root.join("data/media").join(d)).unwrap();
        std::fs::write(root.join("data/media").join(d).join("x"), b"x").unwrap();
    }
    let mut args = vec!["--volumes", root.to_str().unwrap()];
    args.extend_from_slice(extra);
    let kube = FakeKube::start(env.dir.path(), &args);
    Cluster { kube, root }
}

fn config(env: &Env, c: &Cluster, extra: &str) -> PathBuf {
    let token = env.path("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = env.path("config.toml");
    // Test-sized timeouts unless the test sets its own.
    let defaults: String = ["snapshot_timeout_secs = 20\n", "pod_timeout_secs = 20\n"]
        .iter()
        .filter(|d| !extra.contains(d.split(' ').next().unwrap()))
        .map(|d| d.to_string())
        .collect();
    std::fs::write(
        &config,
        format!(
            "[repository]\npath = \"{}\"\ncreate = true\nstate_dir = \"{}\"\n\n[daemon]\nattempts = 1\nmin_free_space = \"1 KiB\"\n\n[jobs.volumes]\nkind = \"volume\"\nschedule = \"@daily\"\nserver = \"{}\"\ntoken_file = \"{}\"\nrequest_timeout_secs = 10\nretention = {{ keep_last = 10 }}\n{defaults}{extra}\n",
            env.repo().display(),
            env.path("state").display(),
            c.kube.url(),
            token.display()
        ),
    )
    .unwrap();
    config
}

fn run(env: &Env, config: &Path) -> (std::process::Output, serde_json::Value) {
    let out = env.run(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "volumes",
        "--json",
    ]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out, v)
}

fn ls(env: &Env) -> Vec<serde_json::Value> {
    serde_json::from_slice(&env.ok(&["ls", "latest:volumes", "--json"]).stdout).unwrap()
}

/// A cluster whose library and block volume were backed up once, completely.
fn backed_up() -> (Env, Cluster, PathBuf, std::process::Output) {
    let env = Env::new();
    let c = start(&env, &[]);
    let cfg = config(
        &env,
        &c,
        "volumes = [\"immich/library\", \"database/data-postgresql-0\"]",
    );
    let (out, v) = run(&env, &cfg);
    assert_eq!(v["status"], "complete", "{v}: {}", text(&out));
    (env, c, cfg, out)
}

#[test]
fn files_and_block_round_trip_and_an_unchanged_run_transfers_nothing() {
    let (env, c, cfg, out) = backed_up();
    assert!(!text(&out).contains(TOKEN), "the token leaked");
    // Nothing of the run is left in the cluster.
    assert_eq!(c.leftovers(), Vec::<String>::new());

    // Entries with their metadata: the volume's root carries what it was.
    let entries = ls(&env);
    let find = |p: &str| {
        entries
            .iter()
            .find(|e| e["path"] == p)
            .unwrap_or_else(|| panic!("{p} missing: {entries:?}"))
            .clone()
    };
    let root = find("immich/library");
    assert_eq!(root["meta"]["volumeMode"], "Filesystem", "{root}");
    assert_eq!(root["meta"]["pointInTime"], "true", "{root}");
    let block = find("database/data-postgresql-0");
    assert_eq!(block["meta"]["volumeMode"], "Block", "{block}");
    assert_eq!(block["size"], 8 << 20);
    assert_eq!(
        find("immich/library/documents/latest.jpg")["link_target"],
        "../photos/2026/b.jpg"
    );

    // Restored on the Pi, the files are the volume's.
    let target = env.path("restored");
    env.ok(&[
        "restore",
        "latest:volumes",
        "--target",
        target.to_str().unwrap(),
    ]);
    common::assert_same_tree(&c.data("immich", "library"), &target.join("immich/library"));
    assert_eq!(
        std::fs::read(target.join("database/data-postgresql-0")).unwrap(),
        std::fs::read(c.data("database", "data-postgresql-0")).unwrap()
    );

    // An unchanged second run: the listing and the block device, no file batch.
    let before = c.execs().len();
    let (out, v) = run(&env, &cfg);
    assert_eq!(v["status"], "complete", "{v}: {}", text(&out));
    let second: Vec<String> = c.execs()[before..].to_vec();
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(!second.iter().any(|r| r.contains("tar")), "{second:?}");

    // One file changed, one added: exactly those two travel.
    let lib = c.data("immich", "library");
    std::fs::write(lib.join("documents/notes.txt"), b"notes, edited\n").unwrap();
    set_mtime(&lib.join("documents/notes.txt"), T0 + 60);
    std::fs::write(lib.join("photos/2026/new.jpg"), b"new").unwrap();
    set_mtime(&lib.join("photos/2026/new.jpg"), T0 + 60);
    set_mtime(&lib.join("photos/2026"), T0 + 60);
    let before = c.execs().len();
    let (out, v) = run(&env, &cfg);
    assert_eq!(v["status"], "complete", "{v}: {}", text(&out));
    let third: Vec<String> = c.execs()[before..].to_vec();
    let batches: Vec<&String> = third.iter().filter(|r| r.contains("tar")).collect();
    assert_eq!(batches.len(), 1, "{third:?}");
    assert!(
        batches[0].contains("notes.txt") && batches[0].contains("new.jpg"),
        "{batches:?}"
    );
    for unchanged in ["b.jpg&", "private.key", "tmp.bin", "latest.jpg"] {
        assert!(
            !batches[0].contains(unchanged),
            "{unchanged} travelled: {batches:?}"
        );
    }
    let target = env.path("restored-3");
    env.ok(&[
        "restore",
        "latest:volumes",
        "--target",
        target.to_str().unwrap(),
    ]);
    common::assert_same_tree(&lib, &target.join("immich/library"));
}

#[test]
fn a_stream_cut_short_fails_that_volume_only() {
    let env = Env::new();
    // The library's tar batch is cut after 500 kB (its listing is far smaller).
    let c = start(&env, &["--cut-stream", "immich/library:500000"]);
    let cfg = config(
        &env,
        &c,
        "volumes = [\"immich/library\", \"database/data-postgresql-0\"]",
    );
    let (out, v) = run(&env, &cfg);
    let log = text(&out);
    assert_eq!(v["status"], "partial", "{v}: {log}");
    assert!(log.contains("immich/library"), "{log}");
    assert!(log.contains("cut short"), "{log}");
    assert!(!log.contains("database/data-postgresql-0:"), "{log}");
    assert_eq!(c.leftovers(), Vec::<String>::new());
    // The block volume is whole.
    let img = env
        .ok(&["cat", "latest:volumes", "database/data-postgresql-0"])
        .stdout;
    assert!(img == std::fs::read(c.data("database", "data-postgresql-0")).unwrap());
}

#[test]
fn per_volume_failures_are_named_and_the_rest_is_kept() {
    let env = Env::new();
    let c = start(
        &env,
        &[
            "--unschedulable",
            "media/cache",
            "--never-ready",
            "media/stuck",
        ],
    );
    let cfg = config(
        &env,
        &c,
        "volumes = [\"immich/library\", \"media/cache\", \"media/stuck\", \"media/missing\"]\nsnapshot_timeout_secs = 2\npod_timeout_secs = 2",
    );
    let (out, v) = run(&env, &cfg);
    let log = text(&out);
    assert_eq!(v["status"], "partial", "{v}: {log}");
    assert_eq!(v["stats"]["failures"], 3, "{v}: {log}");
    assert!(
        log.contains("media/cache") && log.contains("Unschedulable"),
        "{log}"
    );
    assert!(
        log.contains("media/stuck") && log.contains("not ready within 2 s"),
        "{log}"
    );
    assert!(
        log.contains("media/missing") && log.contains("404"),
        "{log}"
    );
    assert_eq!(c.leftovers(), Vec::<String>::new());
    assert!(
        ls(&env)
            .iter()
            .any(|e| e["path"] == "immich/library/documents/notes.txt")
    );

    // An image that cannot be pulled fails every volume: a failed run.
    let cfg = config(
        &env,
        &c,
        "volumes = [\"immich/library\"]\nreader_image = \"registry.lan/does-not-exist:1\"\npod_timeout_secs = 2",
    );
    let (out, v) = run(&env, &cfg);
    let log = text(&out);
    assert_eq!(v["status"], "failed", "{v}: {log}");
    assert!(log.contains("ErrImagePull"), "{log}");
}

#[test]
fn a_403_on_volumesnapshots_is_a_clear_error() {
    let env = Env::new();
    let c = start(
        &env,
        &["--forbid", "volumesnapshots.snapshot.storage.k8s.io"],
    );
    let cfg = config(&env, &c, "volumes = [\"immich/library\"]");
    let (out, v) = run(&env, &cfg);
    let log = text(&out);
    assert_eq!(v["status"], "failed", "{v}: {log}");
    assert!(
        log.contains("creating the VolumeSnapshot: forbidden") && log.contains("rbac.yaml"),
        "{log}"
    );
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn leftovers_of_a_killed_run_are_swept_by_the_next() {
    let env = Env::new();
    let c = start(&env, &["--unschedulable", "media/cache"]);
    let cfg = config(
        &env,
        &c,
        "volumes = [\"media/cache\"]\npod_timeout_secs = 600",
    );
    let mut child = env
        .cmd(&["run", "--config", cfg.to_str().unwrap(), "volumes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once its reader pod exists (it never gets scheduled).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !c
        .kube
        .requests()
        .iter()
        .any(|r| r.starts_with("POST /api/v1/namespaces/media/pods"))
    {
        assert!(std::time::Instant::now() < deadline, "no pod was created");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = c.leftovers();
    assert_eq!(left.len(), 3, "snapshot, PVC and pod: {left:?}");

    // The next run (of another volume) removes them first.
    let cfg = config(&env, &c, "volumes = [\"immich/library\"]");
    let (out, v) = run(&env, &cfg);
    assert_eq!(v["status"], "complete", "{v}: {}", text(&out));
    assert_eq!(c.leftovers(), Vec::<String>::new());
    assert!(text(&out).contains("leftover"), "{}", text(&out));
}

#[test]
fn restore_volume_writes_files_and_block_images_back_into_pvcs() {
    let (env, c, _, _) = backed_up();
    let kubeconf = env.path("token");
    let common_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["restore-volume", "latest:volumes", "--server"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(c.kube.url());
        a.push("--token-file".into());
        a.push(kubeconf.to_str().unwrap().into());
        a.push("--image".into());
        a.push("busybox:1.37".into());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run_restore = |extra: &[&str]| {
        let args = common_args(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        env.run(&refs)
    };
    // Files into a new PVC.
    let out = run_restore(&[
        "--volume",
        "immich/library",
        "--into",
        "immich/restored",
        "--create",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    common::assert_same_tree(&c.data("immich", "library"), &c.data("immich", "restored"));
    // Not again without --overwrite; with it, yes.
    let out = run_restore(&["--volume", "immich/library", "--into", "immich/restored"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not empty") && text(&out).contains("--overwrite"),
        "{}",
        text(&out)
    );
    std::fs::remove_file(c.data("immich", "restored").join("documents/notes.txt")).unwrap();
    let out = run_restore(&[
        "--volume",
        "immich/library",
        "--into",
        "immich/restored",
        "--path",
        "documents",
        "--overwrite",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(c.data("immich", "restored").join("documents/notes.txt")).unwrap(),
        b"notes\n"
    );
    // The block image into a new block PVC.
    let out = run_restore(&[
        "--volume",
        "database/data-postgresql-0",
        "--into",
        "database/restored",
        "--create",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let original = std::fs::read(c.data("database", "data-postgresql-0")).unwrap();
    let written = std::fs::read(c.data("database", "restored")).unwrap();
    assert!(written.len() >= original.len());
    assert!(
        written[..original.len()] == original[..],
        "the block image differs"
    );
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn the_shipped_volume_role_writes_only_what_a_run_creates_and_only_per_namespace() {
    use serde::Deserialize;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/volume-rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut bindings = 0;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        match v["kind"].as_str().unwrap() {
            "ClusterRole" => {
                for rule in v["rules"].as_array().unwrap() {
                    let list = |k: &str| -> Vec<String> {
                        rule[k]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_str().unwrap().to_string())
                            .collect()
                    };
                    for r in list("resources") {
                        assert!(
                            [
                                "volumesnapshots",
                                "persistentvolumeclaims",
                                "pods",
                                "pods/exec"
                            ]
                            .contains(&r.as_str()),
                            "{r}"
                        );
                    }
                    for verb in list("verbs") {
                        assert!(
                            ["get", "list", "create", "delete"].contains(&verb.as_str()),
                            "{verb}"
                        );
                    }
                    assert!(!list("apiGroups").iter().any(|g| g == "*"));
                }
            }
            // Granted namespace by namespace, never cluster-wide.
            "RoleBinding" => {
                bindings += 1;
                assert!(v["metadata"]["namespace"].is_string());
            }
            other => panic!("unexpected {other} in volume-rbac.yaml"),
        }
    }
    assert!(bindings > 0);
}

#[test]
fn sigterm_stops_a_waiting_run_and_removes_its_objects() {
    let env = Env::new();
    let c = start(&env, &["--unschedulable", "media/cache"]);
    let cfg = config(
        &env,
        &c,
        "volumes = [\"media/cache\"]\npod_timeout_secs = 600",
    );
    let child = env
        .cmd(&[
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "volumes",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !c
        .kube
        .requests()
        .iter()
        .any(|r| r.starts_with("POST /api/v1/namespaces/media/pods"))
    {
        assert!(std::time::Instant::now() < deadline, "no pod was created");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let started = std::time::Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    // Stopped long before the pod's 600 s, without a snapshot, leaving nothing.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "failed", "{v}: {}", text(&out));
    assert_eq!(v["snapshot"], serde_json::Value::Null, "{v}");
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn the_live_volume_is_read_without_a_snapshot_and_says_so() {
    let env = Env::new();
    let c = start(&env, &[]);
    let cfg = config(
        &env,
        &c,
        "volumes = [\"immich/library\"]\nsnapshot_class = \"none\"\ninclude = [\"documents/**\"]",
    );
    let (out, v) = run(&env, &cfg);
    assert_eq!(v["status"], "complete", "{v}: {}", text(&out));
    assert!(
        !c.kube
            .requests()
            .iter()
            .any(|r| r.contains("volumesnapshots") && r.starts_with("POST")),
        "a snapshot was made"
    );
    let entries = ls(&env);
    let root = entries
        .iter()
        .find(|e| e["path"] == "immich/library")
        .unwrap();
    assert_eq!(root["meta"]["pointInTime"], "false", "{root}");
    let paths: Vec<&str> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"immich/library/documents/notes.txt"),
        "{paths:?}"
    );
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("photos") || p.contains("cache")),
        "{paths:?}"
    );
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn a_name_with_a_newline_is_reported_not_lost_silently() {
    let env = Env::new();
    let c = start(&env, &[]);
    let dir = c.data("media", "cache");
    std::fs::write(dir.join("bad\nname"), b"x").unwrap();
    std::fs::create_dir(dir.join("sub\ndir")).unwrap();
    std::fs::write(dir.join("sub\ndir/inside"), b"y").unwrap();
    let cfg = config(&env, &c, "volumes = [\"media/cache\"]");
    let (out, v) = run(&env, &cfg);
    let log = text(&out);
    assert_eq!(v["status"], "partial", "{v}: {log}");
    assert!(log.contains("2 path(s) with a newline"), "{log}");
    assert!(ls(&env).iter().any(|e| e["path"] == "media/cache/x"));
    assert_eq!(c.leftovers(), Vec::<String>::new());
}
