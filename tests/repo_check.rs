//! `check` judges the repository by what is on disk, never by the index cache.

mod common;

use backuphub::check::{Problem, ReadData, check};
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
