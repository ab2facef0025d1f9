//! Encryption: a round trip needs the identity, and nothing under the repository reveals
//! contents or names.

mod common;
use common::*;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn scan(dir: &std::path::Path, needles: &[&[u8]]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if needles.iter().any(|n| contains(name.as_bytes(), n)) {
            hits.push(format!("name {}", p.display()));
        }
        if p.is_dir() {
            hits.extend(scan(&p, needles));
        } else {
            let bytes = std::fs::read(&p).unwrap();
            if needles.iter().any(|n| contains(&bytes, n)) {
                hits.push(format!("content of {}", p.display()));
            }
        }
    }
    hits
}

#[test]
fn encrypted_round_trip_and_nothing_leaks() {
    let env = Env::new();
    let (recipient, identity) = keypair(&env);
    let data = env.path("data");
    std::fs::create_dir_all(data.join("secret-dir-name")).unwrap();
    let marker = "MARKER-7f3a-plaintext-that-must-not-appear ".repeat(200);
    std::fs::write(data.join("secret-dir-name/marker-file-name.txt"), &marker).unwrap();
    std::fs::write(data.join("noise.bin"), noise(3 << 20, 3)).unwrap();
    env.ok(&["init", "--recipient", &recipient]);
    env.ok(&["backup", "--job", "enc", data.to_str().unwrap()]);
    env.run_with_stdin(
        &[
            "backup",
            "--job",
            "enc2",
            "--stdin",
            "--name",
            "stream-name.sql",
        ],
        marker.as_bytes(),
    );

    let hits = scan(
        &env.repo(),
        &[
            b"MARKER-7f3a",
            b"secret-dir-name",
            b"marker-file-name",
            b"stream-name",
        ],
    );
    assert!(hits.is_empty(), "plaintext under the repository: {hits:?}");
    // Nor the plain BLAKE3 hash of the content.
    let plain_hash = blake3::hash(marker.as_bytes()).to_hex().to_string();
    assert!(
        scan(
            &env.repo(),
            &[
                plain_hash.as_bytes(),
                &blake3::hash(marker.as_bytes()).as_bytes()[..]
            ]
        )
        .is_empty()
    );

    // Listing snapshots needs no identity; reading data does, and says so.
    env.ok(&["snapshots"]);
    let out = env.run(&["ls", "latest:enc"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("--identity"), "{}", text(&out));

    let target = env.path("out");
    let id = identity.to_str().unwrap();
    env.ok(&[
        "restore",
        "latest:enc",
        "--target",
        target.to_str().unwrap(),
        "--identity",
        id,
    ]);
    assert_same_tree(&data, &restored(&target, &data));
    assert_eq!(
        env.ok(&["cat", "latest:enc2", "stream-name.sql", "--identity", id])
            .stdout,
        marker.as_bytes()
    );
    env.ok(&["check", "--read-data", "--identity", id]);

    // A wrong identity is named as such.
    let other = env.path("other.txt");
    use age::secrecy::ExposeSecret;
    std::fs::write(
        &other,
        age::x25519::Identity::generate()
            .to_string()
            .expose_secret(),
    )
    .unwrap();
    let out = env.run(&[
        "cat",
        "latest:enc2",
        "stream-name.sql",
        "--identity",
        other.to_str().unwrap(),
    ]);
    assert!(text(&out).contains("does not match"), "{}", text(&out));
}

#[test]
fn a_lost_state_directory_does_not_lose_the_repository() {
    let env = Env::new();
    let (recipient, identity) = keypair(&env);
    env.ok(&["init", "--recipient", &recipient]);
    env.run_with_stdin(
        &["backup", "--job", "s", "--stdin", "--name", "a"],
        b"precious",
    );
    std::fs::remove_dir_all(env.path("state")).unwrap();
    // Writing without the cached key is refused with instructions …
    let out = env.run_with_stdin(&["backup", "--job", "s", "--stdin", "--name", "a"], b"more");
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("key cache"), "{}", text(&out));
    // … reading with the identity alone works, and caching the key restores writing.
    let id = identity.to_str().unwrap();
    assert_eq!(
        env.ok(&["cat", "latest:s", "a", "--identity", id]).stdout,
        b"precious"
    );
    env.ok(&["key", "cache", "--identity", id]);
    let out = env.run_with_stdin(&["backup", "--job", "s", "--stdin", "--name", "a"], b"more");
    assert!(out.status.success(), "{}", text(&out));
    // The new chunks dedupe against the old ones: the id key was recovered, not renewed.
    let v: serde_json::Value =
        serde_json::from_slice(&env.ok(&["snapshots", "--json"]).stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
}

#[test]
fn ssh_recipients_are_accepted() {
    let env = Env::new();
    let out = env.run(&[
        "init",
        "--recipient",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let env = Env::new();
    let out = env.run(&["init", "--recipient", "not-a-key"]);
    assert!(text(&out).contains("not-a-key"), "{}", text(&out));
}
