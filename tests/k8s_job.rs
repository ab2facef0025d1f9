//! The kubernetes job kind against a protocol-faithful fake API server (a separate
//! process: tests/fake_kube/server.py) that the real `kube` client talks to.

mod common;

use common::kube::{FakeKube, TOKEN};
use common::{Env, text};

const MARKER: &str = "SECRET-MARKER-5f2c9e";

fn config(env: &Env, server: &str, extra: &str) -> std::path::PathBuf {
    let token = env.path("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = env.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\npath = \"{}\"\ncreate = true\nstate_dir = \"{}\"\n\n[daemon]\nattempts = 1\nmin_free_space = \"1 KiB\"\n\n[jobs.cluster]\nkind = \"kubernetes\"\nschedule = \"@daily\"\nserver = \"{server}\"\ntoken_file = \"{}\"\nrequest_timeout_secs = 10\nretention = {{ keep_last = 10 }}\n{extra}\n",
            env.repo().display(),
            env.path("state").display(),
            token.display()
        ),
    )
    .unwrap();
    config
}

fn run(env: &Env, config: &std::path::Path) -> (std::process::Output, serde_json::Value) {
    let out = env.run(&[
        "run",
        "--config",
        config.to_str().unwrap(),
        "cluster",
        "--json",
    ]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out, v)
}

fn entries(env: &Env) -> Vec<serde_json::Value> {
    serde_json::from_slice(&env.ok(&["ls", "latest:cluster", "--json"]).stdout).unwrap()
}

/// Every file below `dir`, recursively, sorted.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = common::walk(dir)
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn a_cluster_is_backed_up_partially_named_and_restored_in_order() {
    let env = Env::new();
    let kube = FakeKube::start(
        env.dir.path(),
        &[
            "--namespaces",
            "3",
            "--configmaps",
            "5",
            "--expire-once",
            "configmaps",
            "--forbid",
            "roles.rbac.authorization.k8s.io",
        ],
    );
    // Small pages: the configmaps take several, and the second one's token expires.
    let cfg = config(&env, &kube.url(), "page_size = 4");
    let (out, v) = run(&env, &cfg);
    let log = text(&out);
    assert_eq!(v["status"], "partial", "{v}: {log}");
    // Exactly two failures: the aggregated API (503) and the forbidden resource (403).
    assert_eq!(v["stats"]["failures"], 2, "{v}: {log}");
    assert!(
        log.contains("metrics.k8s.io/v1beta1") && log.contains("503"),
        "{log}"
    );
    assert!(
        log.contains("roles.rbac.authorization.k8s.io") && log.contains("403"),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "the token leaked: {log}");
    // The failing group cost one request: no client-side retries.
    let requests = kube.requests();
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.contains("/apis/metrics.k8s.io/v1beta1"))
            .count(),
        1,
        "{requests:?}"
    );
    // A 410 came, and the configmaps were listed again from the start.
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/api/v1/configmaps") && r.ends_with(" 410"))
    );
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.starts_with("GET /api/v1/configmaps?") && !r.contains("continue="))
            .count(),
        2,
        "{requests:?}"
    );

    let entries = entries(&env);
    let paths: Vec<String> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    // Every configmap exactly once across the 410: 3 namespaces × 5, and 5 in shop.
    let cms: Vec<&String> = paths
        .iter()
        .filter(|p| p.starts_with("namespaced/configmaps/"))
        .collect();
    assert_eq!(cms.len(), 20, "{cms:?}");
    let unique: std::collections::BTreeSet<_> = cms.iter().collect();
    assert_eq!(unique.len(), 20);
    for p in [
        "cluster/customresourcedefinitions.apiextensions.k8s.io/certificates.cert-manager.io.yaml",
        "cluster/namespaces/shop.yaml",
        "cluster/persistentvolumes/pvc-123.yaml",
        "namespaced/certificates.cert-manager.io/shop/shop-tls.yaml",
        "namespaced/deployments.apps/shop/web.yaml",
        "namespaced/configmaps/shop/app.v2.yaml",
        "namespaced/pods/shop/standalone.yaml",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} missing from {paths:?}");
    }
    // Default exclusions: never a Secret, an Event or a Lease.
    for p in &paths {
        assert!(
            !p.contains("/secrets/") && !p.contains("/events/") && !p.contains("leases."),
            "{p}"
        );
    }
    let dep = entries
        .iter()
        .find(|e| e["path"] == "namespaced/deployments.apps/shop/web.yaml")
        .unwrap();
    assert_eq!(dep["meta"]["apiVersion"], "apps/v1");
    assert_eq!(dep["meta"]["kind"], "Deployment");
    assert_eq!(dep["meta"]["namespace"], "shop");
    assert_eq!(dep["meta"]["name"], "web");
    assert!(dep["meta"]["resourceVersion"].as_str().is_some());

    // Everything the repository holds, restored as files: no Secret content anywhere, no
    // managedFields.
    let all = env.path("all");
    env.ok(&[
        "restore",
        "latest:cluster",
        "--target",
        all.to_str().unwrap(),
    ]);
    for f in files(&all) {
        let body = std::fs::read_to_string(&f).unwrap();
        assert!(!body.contains(MARKER), "{} holds the Secret", f.display());
        assert!(!body.contains("managedFields"), "{}", f.display());
    }
    let cm = std::fs::read_to_string(all.join("namespaced/configmaps/ns-01/cm-0003.yaml")).unwrap();
    assert!(
        cm.contains("Grüße ☃") && cm.contains("value ns-01 3"),
        "{cm}"
    );

    // An unchanged second run stores (almost) nothing.
    let (_, v2) = run(&env, &cfg);
    assert_eq!(v2["status"], "partial");
    let stored = v2["stats"]["stored_bytes"].as_u64().unwrap();
    assert!(stored <= 1024, "unchanged run stored {stored} bytes");

    // restore-kubernetes: apply-ready, ordered, cleaned.
    let target = env.path("apply");
    let out = env.ok(&[
        "restore-kubernetes",
        "latest:cluster",
        "--target",
        target.to_str().unwrap(),
    ]);
    let report = text(&out);
    assert!(report.contains("kubectl apply -f"), "{report}");
    let mut dirs: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .flatten()
        .filter(|d| d.path().is_dir())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let names: Vec<&str> = dirs.iter().map(|d| &d[4..]).collect();
    let at = |n: &str| {
        names
            .iter()
            .position(|x| *x == n)
            .unwrap_or_else(|| panic!("{n} not in {names:?}"))
    };
    assert_eq!(at("customresourcedefinitions.apiextensions.k8s.io"), 0);
    assert_eq!(at("namespaces"), 1);
    assert!(at("persistentvolumes") < at("persistentvolumeclaims"));
    assert!(at("persistentvolumeclaims") < at("serviceaccounts"));
    assert!(at("configmaps") < at("deployments.apps"));
    assert!(at("services") < at("deployments.apps"));
    assert_eq!(
        at("certificates.cert-manager.io"),
        names.len() - 1,
        "custom resources last: {names:?}"
    );
    assert!(target.join("README.txt").exists());
    let restored = files(&target);
    for f in &restored {
        if f.file_name().unwrap() == "README.txt" {
            continue;
        }
        let v: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", f.display()));
        let m = &v["metadata"];
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
        ] {
            assert!(m.get(k).is_none(), "{}: {k} left", f.display());
        }
        assert!(v.get("status").is_none(), "{}: status left", f.display());
        assert!(v["kind"].as_str().is_some() && v["apiVersion"].as_str().is_some());
    }
    let rel: Vec<String> = restored
        .iter()
        .map(|p| {
            p.strip_prefix(&target)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // Left out: what the restored Deployment and Service recreate.
    assert!(
        !rel.iter().any(|p| p.contains("replicasets.apps")),
        "{rel:?}"
    );
    assert!(!rel.iter().any(|p| p.contains("web-5d9c-x1")), "{rel:?}");
    assert!(!rel.iter().any(|p| p.contains("-endpoints/")), "{rel:?}");
    let svc: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            restored
                .iter()
                .find(|p| p.to_string_lossy().contains("-services/shop/web.yaml"))
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(svc["spec"].get("clusterIP").is_none() && svc["spec"]["selector"]["app"] == "web");
    let pod: serde_json::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(
            restored
                .iter()
                .find(|p| p.to_string_lossy().contains("standalone.yaml"))
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(pod["spec"].get("nodeName").is_none());

    // One namespace only.
    let only = env.path("only-shop");
    env.ok(&[
        "restore-kubernetes",
        "latest:cluster",
        "--target",
        only.to_str().unwrap(),
        "--namespace",
        "shop",
        "--resource",
        "configmaps",
    ]);
    let shop: Vec<_> = files(&only)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert_eq!(shop.len(), 5, "{shop:?}");
}

#[test]
fn unreachable_or_rejected_fails_the_run() {
    let env = Env::new();
    let mut kube = FakeKube::start(env.dir.path(), &["--namespaces", "1"]);
    let cfg = config(&env, &kube.url(), "");
    std::fs::write(env.path("token"), "wrong-token-value-000\n").unwrap();
    let (out, v) = run(&env, &cfg);
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("rejected the credentials"),
        "{v}"
    );
    assert!(!text(&out).contains("wrong-token-value-000"));
    kube.stop();
    let cfg = config(&env, &kube.url(), "");
    let (_, v) = run(&env, &cfg);
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("cannot reach"), "{v}");
}

#[test]
fn the_shipped_role_is_read_only_and_never_reaches_secrets() {
    use serde::Deserialize;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/rbac.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut kinds = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        kinds.push(v["kind"].as_str().unwrap_or_default().to_string());
        if v["kind"] != "ClusterRole" {
            continue;
        }
        for rule in v["rules"].as_array().unwrap() {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect()
            };
            for verb in list("verbs") {
                assert!(["get", "list", "watch"].contains(&verb.as_str()), "{verb}");
            }
            let groups = list("apiGroups");
            // A wildcard group would include the core group, and with it Secrets.
            assert!(!groups.iter().any(|g| g == "*"), "{rule}");
            if groups.iter().any(|g| g.is_empty()) {
                let res = list("resources");
                assert!(!res.iter().any(|r| r == "secrets" || r == "*"), "{rule}");
                assert!(res.iter().any(|r| r == "configmaps"));
            }
        }
    }
    for k in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing: {kinds:?}");
    }
}
