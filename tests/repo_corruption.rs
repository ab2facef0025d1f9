//! Damage on disk: found by `check --read-data`, named down to the files, contained.

mod common;
use common::*;

#[test]
fn flipped_bytes_are_found_and_named_and_the_rest_restores() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    // Small packs so that the two files land in different packs.
    env.ok(&["init", "--chunk-size", "64KiB", "--pack-size", "256KiB"]);
    std::fs::write(data.join("victim.bin"), noise(600 << 10, 1)).unwrap();
    env.ok(&["backup", "--job", "a", data.to_str().unwrap()]);
    std::fs::write(data.join("survivor.bin"), noise(600 << 10, 2)).unwrap();
    env.ok(&["backup", "--job", "a", data.to_str().unwrap()]);
    env.ok(&["check", "--read-data"]);

    // Damage victim.bin's first chunk.
    damage_first_chunk_of(&env, "victim.bin");

    let out = env.run(&["check"]);
    assert!(
        out.status.success(),
        "a structural check does not read blobs: {}",
        text(&out)
    );
    let out = env.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("victim.bin"), "names the file: {msg}");
    assert!(msg.contains("chunk "), "names the chunk: {msg}");
    assert!(!msg.contains("survivor.bin"), "{msg}");

    let out = env.run(&["check", "--read-data", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["problem"] == "damaged_chunk")
    );

    // The untouched file still restores; the damaged one fails loudly, never silently.
    let survivor = data.join("survivor.bin");
    let rel = survivor.to_str().unwrap().trim_start_matches('/');
    assert_eq!(env.ok(&["cat", "latest", rel]).stdout, noise(600 << 10, 2));
    let victim = data.join("victim.bin");
    let out = env.run(&[
        "cat",
        "latest",
        victim.to_str().unwrap().trim_start_matches('/'),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("damaged"), "{}", text(&out));
}

#[test]
fn a_truncated_pack_and_a_damaged_manifest_are_reported_not_panicked() {
    let env = Env::new();
    env.ok(&["init"]);
    env.run_with_stdin(
        &["backup", "--job", "s", "--stdin", "--name", "x"],
        &noise(100_000, 1),
    );
    let pack = walk(&env.repo().join("packs")).remove(0);
    let len = std::fs::metadata(&pack).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pack)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(4));
    let msg = text(&out);
    assert!(msg.contains("damaged") && msg.contains("missing"), "{msg}");

    let snap = walk(&env.repo().join("snapshots")).remove(0);
    std::fs::write(&snap, b"{ not json").unwrap();
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out).contains("snapshot"), "{}", text(&out));
}
