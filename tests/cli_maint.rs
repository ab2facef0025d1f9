//! Maintenance commands report what really happened: `key cache`, `repair index`,
//! `prune --dry-run`.

mod common;
use common::*;

fn repo_id(env: &Env) -> String {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.repo().join("backuphub.json")).unwrap()).unwrap();
    cfg["id"].as_str().unwrap().to_owned()
}

#[test]
fn key_cache_fails_when_the_key_cannot_be_written() {
    let env = Env::new();
    let identity = age::x25519::Identity::generate();
    let key = env.path("identity.txt");
    use age::secrecy::ExposeSecret;
    std::fs::write(&key, format!("{}\n", identity.to_string().expose_secret())).unwrap();
    env.ok(&["init", "--recipient", &identity.to_public().to_string()]);
    let cached = env.path("state").join(repo_id(&env)).join("key.json");
    assert!(cached.exists());

    // Something is in the way of the cached key (a directory with content cannot be
    // replaced by a file, whoever runs this).
    std::fs::remove_file(&cached).unwrap();
    std::fs::create_dir_all(cached.join("in-the-way")).unwrap();
    let out = env.run(&["key", "cache", "--identity", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&cached.display().to_string()),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("cached in"), "{}", text(&out));

    std::fs::remove_dir_all(&cached).unwrap();
    let out = env.ok(&["key", "cache", "--identity", key.to_str().unwrap()]);
    assert!(text(&out).contains("cached in"), "{}", text(&out));
    assert!(cached.is_file());
}

#[test]
fn repair_index_fails_while_another_process_holds_the_index() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), noise(100_000, 1)).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", "--job", "j", data.to_str().unwrap()]);

    let index = env.path("state").join(repo_id(&env)).join("index");
    let held = backuphub::repo::index::Index::open(&index).unwrap();
    assert_eq!(held.mode, backuphub::repo::index::IndexMode::Persistent);
    let out = env.run(&["repair", "index"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nothing repaired"), "{}", text(&out));
    assert!(
        text(&out).contains(&index.display().to_string()),
        "{}",
        text(&out)
    );
    drop(held);
    let out = env.ok(&["repair", "index"]);
    assert!(text(&out).contains("index rebuilt"), "{}", text(&out));
}

#[test]
fn prune_dry_run_prints_the_plan_that_prune_then_carries_out() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    env.ok(&["init", "--chunk-size", "64KiB", "--pack-size", "256KiB"]);
    for day in 0..3u64 {
        std::fs::write(data.join("f"), noise(700_000, day)).unwrap();
        env.ok(&["backup", "--job", "j", data.to_str().unwrap()]);
    }
    env.ok(&["forget", "--job", "j", "--keep-last", "1"]);
    let before = du(&env.repo().join("packs"));

    let out = env.ok(&["prune", "--dry-run", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deletes = plan["delete"].as_array().unwrap();
    assert!(!deletes.is_empty(), "{plan}");
    let out = env.ok(&["prune", "--dry-run"]);
    let listing = String::from_utf8(out.stdout).unwrap();
    for d in deletes {
        let line = format!("delete pack {}", d["pack"].as_str().unwrap());
        assert!(listing.contains(&line), "{line} not in {listing}");
    }
    assert_eq!(
        du(&env.repo().join("packs")),
        before,
        "a dry run removes nothing"
    );

    let out = env.ok(&["prune", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["packs_deleted"], deletes.len());
    assert_eq!(
        report["packs_repacked"],
        plan["repack"].as_array().unwrap().len()
    );
    assert_eq!(report["bytes_removed"], plan["bytes_removed"]);
    assert_eq!(
        report["bytes_freed"].as_u64().unwrap(),
        before - du(&env.repo().join("packs"))
    );
    for d in deletes {
        let hex = d["pack"].as_str().unwrap();
        assert!(!env.repo().join("packs").join(&hex[..2]).join(hex).exists());
    }
    env.ok(&["check", "--read-data"]);
}
