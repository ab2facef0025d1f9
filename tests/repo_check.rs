//! `check` judges the repository by what is on disk, never by the index cache.

mod common;

use backuphub::check::{Problem, ReadData, check};
use backuphub::repo::id::Id;
use common::{archive_paths, noise, test_repo};

#[test]
fn a_stale_index_never_makes_check_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = test_repo(tmp.path(), 32768, 128 << 10);
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), noise(600 << 10, 1)).unwrap();
    archive_paths(&repo, "j", std::slice::from_ref(&data));
    assert!(check(&repo, ReadData::None).unwrap().ok());

    // A data pack disappears behind the back of an index that still lists it.
    let entries = repo
        .entries(&repo.resolve_snapshot("latest").unwrap().snapshot)
        .map(|e| e.unwrap())
        .find(|e| !e.chunks.is_empty())
        .unwrap();
    let chunk = entries.chunks[0];
    let pack = repo.index().get(&chunk).unwrap().unwrap().pack;
    std::fs::remove_file(backuphub::repo::pack::pack_path(&repo.packs_dir(), &pack)).unwrap();
    assert!(
        repo.index().get(&chunk).unwrap().is_some(),
        "the index is stale"
    );

    for mode in [ReadData::None, ReadData::All] {
        let report = check(&repo, mode).unwrap();
        assert!(
            report.problems.iter().any(
                |p| matches!(p, Problem::MissingChunk { chunk: c, .. } if *c == chunk.to_hex())
            ),
            "{mode:?}: {:?}",
            report.problems
        );
    }
}

/// Stores refs/root blobs (plaintext in every repository) in a new pack, as the archiver
/// would.
fn store(repo: &backuphub::repo::Repository, blobs: &[(backuphub::repo::pack::BlobKind, Vec<u8>)]) {
    use backuphub::repo::crypto::BlobCompressor;
    use backuphub::repo::pack::PackWriter;
    let mut w = PackWriter::create(repo.tmp_dir().join("t.pack"), None).unwrap();
    let mut z = BlobCompressor::new(3).unwrap();
    let mut payload = Vec::new();
    for (kind, plain) in blobs {
        z.compress_into(plain, &mut payload).unwrap();
        w.add(*kind, backuphub::repo::id::Id::of(plain), &payload)
            .unwrap();
    }
    let (id, entries) = w.finish(&repo.packs_dir()).unwrap();
    repo.register_pack(id, &entries).unwrap();
}

#[test]
fn a_refs_blob_that_does_not_match_its_tree_is_a_problem() {
    use backuphub::repo::pack::BlobKind;
    use backuphub::repo::snapshot::{encode_refs, encode_root};
    let tmp = tempfile::tempdir().unwrap();
    let repo = test_repo(tmp.path(), 16 << 10, 1 << 20);
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), noise(200 << 10, 3)).unwrap();
    let mut snap = archive_paths(&repo, "j", std::slice::from_ref(&data));
    let blobs: Vec<_> = repo
        .snapshot_blobs(&snap, |_| false)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(blobs.len(), 1);
    assert!(blobs[0].data.len() > 2);
    // A refs blob that leaves out a chunk the tree uses: prune would delete it.
    let refs = encode_refs(&blobs[0].tree, &blobs[0].data[1..]);
    let root = encode_root(&[backuphub::repo::id::Id::of(&refs)]);
    snap.root = backuphub::repo::id::Id::of(&root);
    store(&repo, &[(BlobKind::Refs, refs), (BlobKind::Root, root)]);
    let forged = repo.save_snapshot(&snap).unwrap();
    let report = check(&repo, ReadData::None).unwrap();
    assert!(
        report.problems.iter().any(|p| matches!(p,
            Problem::DamagedSnapshot { snapshot, what }
                if *snapshot == forged.short() && what.contains("does not list exactly"))),
        "{:?}",
        report.problems
    );
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
}

#[test]
fn a_missing_refs_blob_is_named_with_the_snapshot_using_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = test_repo(tmp.path(), 16 << 10, 1 << 20);
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), noise(50 << 10, 4)).unwrap();
    let snap = archive_paths(&repo, "j", std::slice::from_ref(&data));
    let refs = repo.read_root(&snap.root).unwrap()[0];
    // A root naming a refs blob that is nowhere.
    let mut bogus = snap.clone();
    let root = backuphub::repo::snapshot::encode_root(&[refs, Id::of(b"nowhere")]);
    bogus.root = Id::of(&root);
    store(&repo, &[(backuphub::repo::pack::BlobKind::Root, root)]);
    repo.save_snapshot(&bogus).unwrap();
    let report = check(&repo, ReadData::All).unwrap();
    let missing = Id::of(b"nowhere").to_hex();
    assert!(
        report.problems.iter().any(|p| matches!(p,
            Problem::MissingChunk { chunk, used_by }
                if *chunk == missing && used_by.len() == 1 && used_by[0].contains("its file list"))),
        "{:?}",
        report.problems
    );
}

/// Pack names are content hashes: storing the same blobs again (unencrypted) writes a pack
/// of the same name, replacing a damaged file with a good one. The damage record of that
/// copy must go with it, or the blob would count as damaged for ever (every backup storing
/// it again, scheduled verification reporting damage that is gone).
#[test]
fn a_pack_written_afresh_under_its_name_clears_its_damage_records() {
    let dir = tempfile::tempdir().unwrap();
    let repo = test_repo(dir.path(), 64 * 1024, 1 << 20);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), noise(300_000, 3)).unwrap();
    archive_paths(&repo, "j", std::slice::from_ref(&data));
    let packs = common::walk(&dir.path().join("repo/packs"));
    let path = &packs[0];
    let name: backuphub::repo::id::Id =
        path.file_name().unwrap().to_str().unwrap().parse().unwrap();
    let header = backuphub::repo::pack::read_header(path).unwrap();
    let blob = header[0].id;
    repo.record_damage(&name, &[blob]).unwrap();
    assert!(!repo.has_blob(&blob).unwrap());
    // Another pack holds a bad copy of the same blob too: that record stays.
    let other = backuphub::repo::id::Id::of(b"another pack");
    repo.record_damage(&other, &[blob]).unwrap();

    repo.register_written_pack(name, &header).unwrap();
    assert_eq!(repo.damaged_copies().get(&blob), Some(&vec![other]));
    assert!(repo.has_blob(&blob).unwrap());
    // The record on disk says the same after a reopen.
    drop(repo);
    let opts = backuphub::repo::OpenOptions {
        identity: None,
        state_dir: dir.path().join("state"),
    };
    let repo = backuphub::repo::Repository::open(&dir.path().join("repo"), &opts).unwrap();
    assert_eq!(repo.damaged_copies().get(&blob), Some(&vec![other]));
}
