//! The foundation's promises under hostile conditions: a stale index cache never vouches
//! for data, damaged manifests and keys are named instead of passed over, keys and
//! manifests cannot be swapped in by whoever can write to the disk.

mod common;
use common::*;

use backuphub::repo::id::Id;
use backuphub::repo::index::Location;
use backuphub::repo::pack::BlobKind;
use backuphub::repo::{OpenOptions, RepoError, Repository};

/// An encrypted repository holding one snapshot of job `s`: file `x` = "payload".
fn encrypted_with_payload(env: &Env) -> (String, std::path::PathBuf) {
    let (recipient, identity) = keypair(env);
    env.ok(&["init", "--recipient", &recipient]);
    env.run_with_stdin(
        &["backup", "--job", "s", "--stdin", "--name", "x"],
        b"payload",
    );
    (recipient, identity)
}

/// The reported data loss: an index entry whose pack is gone (left by a crash between
/// index writes, while another process pruned the pack) made the next backup dedup
/// against it and report success. A location is trusted only with its pack on disk.
#[test]
fn an_index_entry_without_its_pack_is_never_a_dedup_hit() {
    let env = Env::new();
    let repo = test_repo(env.dir.path(), 16 << 10, 1 << 20);
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let content = noise(200 << 10, 9);
    std::fs::write(data.join("f"), &content).unwrap();
    // Every chunk of the file "indexed" in a pack that does not exist.
    let hasher = repo.write_keys().unwrap().0;
    let params = repo.config().chunker;
    let ghost = Id::of(b"a pack that was pruned by another process");
    let mut n = 0;
    for chunk in params.chunks(std::io::Cursor::new(content.clone()), 0) {
        let chunk = chunk.unwrap();
        let loc = Location {
            pack: ghost,
            offset: 8,
            length: chunk.len() as u32,
            kind: BlobKind::Data,
            key: 0,
        };
        repo.index().set_location(&hasher.id(&chunk), loc).unwrap();
        n += 1;
    }
    assert!(n > 3);
    let snap = archive_paths(&repo, "j", std::slice::from_ref(&data));
    assert!(
        snap.stats.new_chunks >= n,
        "every chunk stored afresh: {:?}",
        snap.stats
    );
    drop(repo);
    // The binary, on the same repository and state directory.
    env.ok(&["check", "--read-data"]);
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&data, &restored(&target, &data));
}

/// A damaged newest manifest must not make `latest` quietly mean the one before.
#[test]
fn a_damaged_newest_manifest_is_an_error_not_an_older_restore() {
    let env = Env::new();
    env.ok(&["init"]);
    env.run_with_stdin(
        &["backup", "--job", "s", "--stdin", "--name", "x"],
        b"first",
    );
    let first: Vec<_> = walk(&env.repo().join("snapshots"));
    env.run_with_stdin(
        &["backup", "--job", "s", "--stdin", "--name", "x"],
        b"second",
    );
    let newest = walk(&env.repo().join("snapshots"))
        .into_iter()
        .find(|p| !first.contains(p))
        .unwrap();
    std::fs::write(&newest, b"{ rot").unwrap();
    // Seen by a reader that never cached the manifest (another machine, a new state
    // directory). One that cached it keeps using the copy it verified; `check` reads the
    // file and reports it (repo_snapshot_cache.rs).
    std::fs::remove_dir_all(env.path("state")).unwrap();
    let target = env.path("out");
    for args in [
        vec!["restore", "latest", "--target", target.to_str().unwrap()],
        vec!["restore", "latest:s", "--target", target.to_str().unwrap()],
        vec!["cat", "latest", "x"],
    ] {
        let out = env.run(&args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("damaged"), "{args:?}: {}", text(&out));
    }
    assert!(!target.join("x").exists());
    // Named by id, the intact one still restores.
    let id = first[0].file_name().unwrap().to_str().unwrap()[..8].to_string();
    assert_eq!(env.ok(&["cat", &id, "x"]).stdout, b"first");
}

/// One flipped bit in the key file must not lose the repository: the second copy is
/// used, and the damage is named.
#[test]
fn a_damaged_key_file_falls_back_to_its_copy() {
    let env = Env::new();
    let (_, identity) = encrypted_with_payload(&env);
    let key = env.repo().join("keys/repo.age");
    let mut bytes = std::fs::read(&key).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    std::fs::write(&key, &bytes).unwrap();
    // check notices without the identity, and names the file.
    let out = env.run(&["check"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("keys/repo.age is damaged"),
        "{}",
        text(&out)
    );
    // A reader on another machine (a fresh state directory) needs the key file.
    let cat_elsewhere = |state: &str| {
        env.cmd(&[
            "cat",
            "latest",
            "x",
            "--identity",
            identity.to_str().unwrap(),
        ])
        .env("BACKUPHUB_STATE_DIR", env.path(state))
        .output()
        .unwrap()
    };
    let out = cat_elsewhere("state-other");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, b"payload");
    // Both copies damaged: the error names the files.
    let copy = env.repo().join("keys/repo.2.age");
    std::fs::write(&copy, &bytes).unwrap();
    let out = cat_elsewhere("state-third");
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("keys/repo.age") && msg.contains("keys/repo.2.age"),
        "{msg}"
    );
}

/// Whoever can write to the backup disk must not be able to make the writer adopt a key
/// or recipients of their choosing, nor pass off a forged manifest to a reader.
#[test]
fn swapped_keys_recipients_and_forged_manifests_are_refused() {
    let env = Env::new();
    let (recipient, identity) = encrypted_with_payload(&env);
    let id_arg = identity.to_str().unwrap();

    // A forged manifest: an edit of a real one (its name fixed up to match).
    let snap = walk(&env.repo().join("snapshots")).remove(0);
    let text_of = std::fs::read_to_string(&snap).unwrap();
    let forged = text_of.replace("\"complete\"", "\"partial\"");
    assert_ne!(forged, text_of);
    let forged_id = Id::of(forged.as_bytes()).to_hex();
    std::fs::write(env.repo().join("snapshots").join(&forged_id), &forged).unwrap();
    let out = env.run(&["cat", &forged_id[..12], "x", "--identity", id_arg]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("MAC"), "{}", text(&out));
    std::fs::remove_file(env.repo().join("snapshots").join(&forged_id)).unwrap();

    // A new key, properly encrypted to the same recipient, swapped in with its hash.
    let orig_key = std::fs::read(env.repo().join("keys/repo.age")).unwrap();
    let orig_cfg = std::fs::read(env.repo().join("backuphub.json")).unwrap();
    let other_env = Env::new();
    other_env.ok(&["init", "--recipient", &recipient]);
    let foreign = std::fs::read(other_env.repo().join("keys/repo.age")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_slice(&orig_cfg).unwrap();
    cfg["key_hash"] = serde_json::json!(Id::of(&foreign).to_hex());
    for f in ["keys/repo.age", "keys/repo.2.age"] {
        std::fs::write(env.repo().join(f), &foreign).unwrap();
    }
    std::fs::write(
        env.repo().join("backuphub.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    for args in [
        vec!["backup", "--job", "s", "--stdin", "--name", "y"],
        vec!["cat", "latest", "x", "--identity", id_arg],
    ] {
        let out = env.run_with_stdin(&args, b"more");
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains("changed"), "{args:?}: {}", text(&out));
    }
    // Put the key back; change the recipients instead (the writer would encrypt to them).
    for f in ["keys/repo.age", "keys/repo.2.age"] {
        std::fs::write(env.repo().join(f), &orig_key).unwrap();
    }
    let mut cfg: serde_json::Value = serde_json::from_slice(&orig_cfg).unwrap();
    let attacker = age::x25519::Identity::generate().to_public().to_string();
    cfg["recipients"] = serde_json::json!([attacker]);
    std::fs::write(
        env.repo().join("backuphub.json"),
        serde_json::to_vec(&cfg).unwrap(),
    )
    .unwrap();
    let out = env.run_with_stdin(&["backup", "--job", "s", "--stdin", "--name", "y"], b"z");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("recipients"), "{}", text(&out));
    // All restored: everything works again.
    std::fs::write(env.repo().join("backuphub.json"), &orig_cfg).unwrap();
    let out = env.run_with_stdin(&["backup", "--job", "s", "--stdin", "--name", "y"], b"z");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        env.ok(&["cat", "latest", "y", "--identity", id_arg]).stdout,
        b"z"
    );
}

/// An unmounted CephFS looks like an empty directory: no snapshot, and the file cache
/// stays, so the next good run does not re-read everything.
#[test]
fn an_empty_backup_root_fails_the_run_and_keeps_the_file_cache() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("big"), noise(3 << 20, 4)).unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", "--job", "j", data.to_str().unwrap()]);
    let snaps_before = walk(&env.repo().join("snapshots")).len();
    let moved = env.path("moved");
    std::fs::rename(&data, &moved).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let out = env.run(&["backup", "--job", "j", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("empty"), "{}", text(&out));
    assert_eq!(walk(&env.repo().join("snapshots")).len(), snaps_before);
    std::fs::remove_dir(&data).unwrap();
    std::fs::rename(&moved, &data).unwrap();
    let out = env.ok(&["backup", "--job", "j", "--json", data.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["snapshot"]["stats"]["read_bytes"], 0,
        "unchanged files are not read again: {v}"
    );
}

/// A time an i64 of nanoseconds cannot hold fails its entry; it is not wrapped into 1680.
#[test]
fn times_beyond_2262_fail_their_entry() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("ok"), b"fine").unwrap();
    std::fs::write(data.join("future"), b"from 2286").unwrap();
    let t = filetime::FileTime::from_unix_time(9_999_999_999, 0);
    if filetime::set_file_mtime(data.join("future"), t).is_err() {
        eprintln!("this file system cannot hold such a time; skipping");
        return;
    }
    env.ok(&["init"]);
    let out = env.run(&["backup", "--job", "j", data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "partial: {}", text(&out));
    assert!(text(&out).contains("future"), "{}", text(&out));
    assert!(text(&out).contains("2262"), "{}", text(&out));
}

/// A state directory whose index cannot be opened must not stop a reader.
#[test]
fn readers_work_when_the_index_cannot_be_kept() {
    let dir = tempfile::tempdir().unwrap();
    let repo = test_repo(dir.path(), 16 << 10, 1 << 20);
    let id = repo.config().id.to_hex();
    drop(repo);
    // The index path is taken by a file: sled cannot open a database there.
    let state = dir.path().join("state2");
    std::fs::create_dir_all(state.join(&id)).unwrap();
    std::fs::write(state.join(&id).join("index"), b"not a directory").unwrap();
    let opts = OpenOptions {
        identity: None,
        state_dir: state,
    };
    let repo = Repository::open(&dir.path().join("repo"), &opts).unwrap();
    assert!(repo.snapshots().unwrap().is_empty());
}

/// Reading a blob whose indexed copy is gone finds another copy without clearing the
/// index (the old code rebuilt the whole index per missing blob).
#[test]
fn a_missing_indexed_copy_is_found_elsewhere_without_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let repo = test_repo(dir.path(), 16 << 10, 1 << 20);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), noise(100 << 10, 5)).unwrap();
    let snap = archive_paths(&repo, "j", std::slice::from_ref(&data));
    let tree = tree_blobs(&repo, &snap)[0];
    let before = repo.index().chunk_count();
    // Point the tree blob at a pack that does not exist, as a stale cache would.
    let mut loc = repo.index().get(&tree).unwrap().unwrap();
    let real = loc.pack;
    loc.pack = Id::of(b"gone");
    repo.index().set_location(&tree, loc).unwrap();
    let entries: Vec<_> = repo
        .entries(&snap)
        .collect::<Result<_, RepoError>>()
        .unwrap();
    assert!(!entries.is_empty());
    assert_eq!(repo.index().get(&tree).unwrap().unwrap().pack, real);
    assert_eq!(repo.index().chunk_count(), before, "nothing else touched");
}

/// A transient failure to read the repository's config says nothing about whether the
/// repository changed: the daemon keeps what it has open (and its persistent index).
#[test]
fn an_unreadable_marker_is_unknown_not_changed() {
    use backuphub::repo::RootStatus;
    let dir = tempfile::tempdir().unwrap();
    let repo = test_repo(dir.path(), 16 << 10, 1 << 20);
    assert_eq!(repo.root_status(), RootStatus::Same);
    let cfg = dir.path().join("repo/backuphub.json");
    let saved = std::fs::read(&cfg).unwrap();
    // A read error that is not "not found" (EISDIR stands in for EIO here).
    std::fs::remove_file(&cfg).unwrap();
    std::fs::create_dir(&cfg).unwrap();
    assert_eq!(repo.root_status(), RootStatus::Unknown);
    std::fs::remove_dir(&cfg).unwrap();
    assert_eq!(repo.root_status(), RootStatus::Changed);
    std::fs::write(&cfg, &saved).unwrap();
    assert_eq!(repo.root_status(), RootStatus::Same);
}

/// A source with one file whose reader yields fewer bytes than its metadata said, as a
/// file that shrank while it was read does.
struct Shrinking;

impl backuphub::source::Source for Shrinking {
    fn description(&self) -> String {
        "a file that changes while it is read".into()
    }

    fn entries<'a>(
        &'a mut self,
        _previous: backuphub::repo::index::Previous,
    ) -> Box<
        dyn Iterator<Item = Result<backuphub::source::SourceEntry, backuphub::source::SourceError>>
            + 'a,
    > {
        use backuphub::repo::tree::{Entry, EntryKind, EntryPath};
        let mut entry = Entry::new(EntryPath::from("log"), EntryKind::File);
        entry.size = 1000;
        entry.change = Some((1, 2, 3));
        Box::new(std::iter::once(Ok(backuphub::source::SourceEntry {
            entry,
            content: backuphub::source::Content::Read(Box::new(std::io::Cursor::new(vec![
                7u8;
                400
            ]))),
        })))
    }
}

/// A file that changed while it was read is stored as read, but the snapshot says so: it
/// is partial and lists the file, instead of only warning in a log.
#[test]
fn a_file_changed_while_read_makes_the_snapshot_partial() {
    use backuphub::repo::snapshot::SnapshotStatus;
    let dir = tempfile::tempdir().unwrap();
    let repo = test_repo(dir.path(), 16 << 10, 1 << 20);
    let snap = archive_source(&repo, "j", &mut Shrinking);
    assert_eq!(snap.status, SnapshotStatus::Partial);
    let details = repo.open_details(&snap).unwrap();
    assert_eq!(details.failures.len(), 1);
    assert_eq!(details.failures[0].path, "log");
    assert!(
        details.failures[0]
            .error
            .contains("changed while being read")
    );
    // What was read is kept, with its real size.
    let e = repo.entries(&snap).next().unwrap().unwrap();
    assert_eq!(e.size, 400);
    assert!(e.change.is_none(), "never trusted as unchanged next time");
}

/// After `check` has found a damaged chunk, the next backup of the intact source stores
/// it afresh (a new snapshot heals), and prune then drops the bad copy: the repository
/// checks clean again without a human picking packs apart.
#[test]
fn a_damaged_chunk_is_stored_afresh_and_pruned_away() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    env.ok(&["init", "--chunk-size", "64KiB", "--pack-size", "256KiB"]);
    std::fs::write(data.join("victim.bin"), noise(600 << 10, 1)).unwrap();
    env.ok(&["backup", "--job", "a", data.to_str().unwrap()]);
    std::fs::write(data.join("other.bin"), noise(600 << 10, 2)).unwrap();
    env.ok(&["backup", "--job", "a", data.to_str().unwrap()]);
    // Damage victim.bin's first chunk.
    damage_first_chunk_of(&env, "victim.bin");
    let out = env.run(&["check", "--read-data"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));

    // The source still has the data: the next backup stores the damaged chunk again.
    let out = env.ok(&["backup", "--job", "a", "--json", data.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["snapshot"]["stats"]["new_chunks"].as_u64().unwrap() >= 1,
        "the damaged chunk is stored afresh: {v}"
    );
    let target = env.path("out");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&data, &restored(&target, &data));

    // Prune drops the damaged copy (the intact one serves every snapshot, old ones
    // included); check is clean again.
    env.ok(&["prune"]);
    let out = env.run(&["check", "--read-data"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        walk(&env.repo().join("damaged")).is_empty(),
        "damage records of removed copies are cleared"
    );
    let target = env.path("out2");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_same_tree(&data, &restored(&target, &data));
}
