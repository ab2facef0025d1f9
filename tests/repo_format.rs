//! Repository format 2 as a whole: per-pack keys and per-blob AEAD through the
//! repository's read path, prune's repack without the identity, and the refusal of
//! format 1.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use backuphub::check::{ReadData, check};
use backuphub::chunker::ChunkerParams;
use backuphub::error::ErrorKind;
use backuphub::prune::{forget, prune};
use backuphub::repo::crypto::Recipient;
use backuphub::repo::id::Id;
use backuphub::repo::index::Location;
use backuphub::repo::lock::LockKind;
use backuphub::repo::pack::{self, BlobKind, PackWriter};
use backuphub::repo::{InitOptions, OpenOptions, RepoError, Repository};
use backuphub::restore::cat;
use backuphub::retention::RetentionPolicy;
use common::{Env, archive_paths, keypair, noise, test_repo};

/// An encrypted repository with small chunks and packs; returns the writer's handle
/// (no identity: the key cached by `init`) and the identity file.
fn encrypted(env: &Env) -> (Repository, PathBuf) {
    let (recipient, identity) = keypair(env);
    let init = InitOptions {
        recipients: vec![recipient.parse::<Recipient>().unwrap()],
        chunker: ChunkerParams {
            min_size: 4 << 10,
            avg_size: 16 << 10,
            max_size: 128 << 10,
        },
        pack_size: 256 << 10,
        ..Default::default()
    };
    let repo = Repository::init(&env.repo(), &opts(env, None), &init).unwrap();
    (repo, identity)
}

fn opts(env: &Env, identity: Option<&Path>) -> OpenOptions {
    OpenOptions {
        identity: identity.map(Path::to_owned),
        state_dir: env.path("state"),
    }
}

fn file_path(data: &Path, name: &str) -> backuphub::repo::tree::EntryPath {
    data.join(name).to_str().unwrap().into()
}

/// Every blob of the repository, with where it is.
fn blobs(repo: &Repository) -> Vec<(Id, pack::PackEntry)> {
    let mut out = Vec::new();
    for p in repo.list_packs().unwrap() {
        for e in pack::read_header(&pack::pack_path(&repo.packs_dir(), &p)).unwrap() {
            out.push((p, e));
        }
    }
    out
}

#[test]
fn a_format_1_repository_is_refused_with_what_to_do() {
    let env = Env::new();
    drop(test_repo(env.dir.path(), 16 << 10, 1 << 20));
    let cfg = env.repo().join("backuphub.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    json["format"] = 1.into();
    // Format 1 had no other fields to speak of; an unknown one must not hide the refusal.
    json["a_field_of_format_1"] = true.into();
    std::fs::write(&cfg, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = match Repository::open(&env.repo(), &opts(&env, None)) {
        Err(e) => e,
        Ok(_) => panic!("a format-1 repository was opened"),
    };
    assert_eq!(err.kind(), ErrorKind::Format);
    let msg = err.to_string();
    for part in [
        "format 1",
        "no longer supported",
        "no migration",
        "backuphub init",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    // The binary says the same, and fails.
    let out = env.run(&["snapshots"]);
    assert!(!out.status.success());
    assert!(
        common::text(&out).contains("no migration"),
        "{}",
        common::text(&out)
    );
}

#[test]
fn encrypted_blobs_fail_alone_and_name_their_pack() {
    let env = Env::new();
    let (writer, identity) = encrypted(&env);
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), noise(600 << 10, 11)).unwrap();
    let snap = archive_paths(&writer, "j", std::slice::from_ref(&data));
    drop(writer);

    // The writer's handle cannot read what it wrote.
    let writer = Repository::open(&env.repo(), &opts(&env, None)).unwrap();
    let all = blobs(&writer);
    let (p, e) = *all.iter().find(|(_, e)| e.kind == BlobKind::Data).unwrap();
    assert!(matches!(
        writer.read_blob(&e.id),
        Err(RepoError::Crypto(
            backuphub::repo::crypto::CryptoError::IdentityRequired
        ))
    ));
    drop(writer);

    let reader = Repository::open(&env.repo(), &opts(&env, Some(&identity))).unwrap();
    for (_, b) in &all {
        reader.read_blob(&b.id).unwrap();
    }
    assert!(check(&reader, ReadData::All).unwrap().ok());
    drop(reader);

    common::damage_blob(&env.repo(), &e.id);
    let reader = Repository::open(&env.repo(), &opts(&env, Some(&identity))).unwrap();
    match reader.read_blob(&e.id) {
        Err(RepoError::Corrupt(msg)) => {
            assert!(msg.contains(&e.id.short()), "{msg}");
            assert!(msg.contains(&p.short()), "{msg}");
            assert!(msg.contains("authentication failed"), "{msg}");
        }
        other => panic!("{:?}", other.map(|v| v.len())),
    }
    for (_, b) in all.iter().filter(|(_, b)| b.id != e.id) {
        reader.read_blob(&b.id).unwrap();
    }
    let mut out = Vec::new();
    assert!(cat(&reader, &snap, &file_path(&data, "f"), &mut out).is_err());
}

#[test]
fn a_blob_moved_to_another_pack_does_not_open() {
    let env = Env::new();
    let (writer, identity) = encrypted(&env);
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a"), noise(300 << 10, 1)).unwrap();
    archive_paths(&writer, "a", std::slice::from_ref(&data));
    let first: Vec<Id> = writer.list_packs().unwrap().into_iter().collect();
    std::fs::write(data.join("a"), noise(300 << 10, 2)).unwrap();
    archive_paths(&writer, "a", std::slice::from_ref(&data));
    drop(writer);
    let reader = Repository::open(&env.repo(), &opts(&env, Some(&identity))).unwrap();
    let all = blobs(&reader);
    let (from, e) = *all
        .iter()
        .find(|(p, e)| first.contains(p) && e.kind == BlobKind::Data)
        .unwrap();
    let (to, _) = *all.iter().find(|(p, _)| !first.contains(p)).unwrap();

    // Pack `to`'s key table, and `from`'s sealed bytes under the same id: a pack made by
    // someone who can write to the disk but has no key.
    let from_path = pack::pack_path(&reader.packs_dir(), &from);
    let f = std::fs::File::open(&from_path).unwrap();
    let sealed = pack::read_blob(&f, &from_path, e.offset, e.length).unwrap();
    let to_keys = pack::read_full_header(&pack::pack_path(&reader.packs_dir(), &to))
        .unwrap()
        .keys;
    let mut w = PackWriter::create(reader.tmp_dir().join("forged.pack"), None).unwrap();
    w.add_sealed(e.kind, e.id, &sealed, Some(&to_keys[0]))
        .unwrap();
    let (forged, entries) = w.finish(&reader.packs_dir()).unwrap();
    match reader.read_blob_at(&e.id, &Location::of(forged, &entries[0])) {
        Err(RepoError::Corrupt(msg)) => assert!(msg.contains("authentication failed"), "{msg}"),
        other => panic!("{:?}", other.map(|v| v.len())),
    }
    // The original, with its own key, still reads.
    reader.read_blob_at(&e.id, &Location::of(from, &e)).unwrap();
}

#[test]
fn prune_repacks_an_encrypted_repository_without_the_identity() {
    let env = Env::new();
    let (writer, identity) = encrypted(&env);
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    let small = noise(100 << 10, 5);
    std::fs::write(data.join("small"), &small).unwrap();
    std::fs::write(data.join("big"), noise(1 << 20, 6)).unwrap();
    archive_paths(&writer, "j", std::slice::from_ref(&data));
    std::fs::remove_file(data.join("big")).unwrap();
    let snap = archive_paths(&writer, "j", std::slice::from_ref(&data));
    let policy = RetentionPolicy {
        keep_last: Some(1),
        ..Default::default()
    };
    forget(&writer, "j", &policy, chrono_tz::UTC, false).unwrap();
    let lock = writer
        .lock(LockKind::Exclusive, None, Duration::from_secs(60))
        .unwrap();
    let report = prune(&writer, &lock, false).unwrap();
    assert!(report.packs_repacked > 0, "{report:?}");
    drop(lock);
    drop(writer);

    let reader = Repository::open(&env.repo(), &opts(&env, Some(&identity))).unwrap();
    assert!(check(&reader, ReadData::All).unwrap().ok());
    let mut out = Vec::new();
    cat(&reader, &snap, &file_path(&data, "small"), &mut out).unwrap();
    assert!(out == small);
}

/// A cancelled run leaves no pack behind: each worker drops its open pack rather than
/// make unreferenced data durable.
#[test]
fn a_cancelled_run_leaves_no_pack() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = Env::new();
    let repo = test_repo(env.dir.path(), 16 << 10, 64 << 20);
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..400u64 {
        std::fs::write(data.join(format!("f{i}")), noise(4 << 10, i)).unwrap();
    }
    let cancel = AtomicBool::new(false);
    let progress = backuphub::archiver::Progress::default();
    let mut src = backuphub::source::local::LocalSource::new(&[data], &[]).unwrap();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while progress.entries.load(Ordering::Relaxed) < 100 {
                std::thread::yield_now();
            }
            cancel.store(true, Ordering::Relaxed);
        });
        backuphub::archiver::archive(&repo, "j", &mut src, &progress, &cancel, &|| Ok(()))
    });
    assert!(
        matches!(result, Err(backuphub::archiver::ArchiveError::Cancelled)),
        "{:?}",
        result.map(|r| r.0)
    );
    assert!(repo.list_packs().unwrap().is_empty());
    assert_eq!(std::fs::read_dir(repo.tmp_dir()).unwrap().count(), 0);
}
