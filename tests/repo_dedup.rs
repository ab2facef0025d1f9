//! Deduplication, measured in stored bytes.

mod common;

use backuphub::repo::{InitOptions, OpenOptions, Repository};
use backuphub::source::local::LocalSource;
use common::{archive_source, noise};

fn repo(dir: &std::path::Path) -> Repository {
    Repository::init(
        &dir.join("repo"),
        &OpenOptions {
            identity: None,
            state_dir: dir.join("state"),
        },
        &InitOptions::default(),
    )
    .unwrap()
}

#[test]
fn unchanged_data_stores_almost_nothing_and_is_not_reread() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("d")).unwrap();
    std::fs::write(data.join("big"), noise(20 << 20, 1)).unwrap();
    for i in 0..50 {
        std::fs::write(data.join(format!("d/f{i}")), noise(1000 + i, i as u64)).unwrap();
    }
    let r = repo(tmp.path());
    let run = |r: &Repository| {
        let mut src = LocalSource::new(std::slice::from_ref(&data), &[]).unwrap();
        archive_source(r, "j", &mut src)
    };
    let first = run(&r);
    assert!(first.stats.stored_bytes > 20 << 20);
    let second = run(&r);
    assert_eq!(
        second.stats.read_bytes, 0,
        "unchanged files are not read again"
    );
    assert!(
        second.stats.stored_bytes < 4096,
        "stored {} bytes",
        second.stats.stored_bytes
    );

    // Without the index cache (a new machine), files are read again but not stored again.
    drop(r);
    std::fs::remove_dir_all(tmp.path().join("state")).unwrap();
    let r = Repository::open(
        &tmp.path().join("repo"),
        &OpenOptions {
            identity: None,
            state_dir: tmp.path().join("state"),
        },
    )
    .unwrap();
    let third = run(&r);
    assert!(third.stats.read_bytes > 20 << 20);
    // Only the file list is new: a tree blob, its refs blob (32 bytes per chunk used) and
    // a root.
    assert!(
        third.stats.stored_bytes < 8192,
        "stored {} bytes",
        third.stats.stored_bytes
    );
}

#[test]
fn an_insertion_into_a_large_file_stores_only_nearby_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut bytes = noise(64 << 20, 5);
    std::fs::write(data.join("disk.img"), &bytes).unwrap();
    let r = repo(tmp.path());
    let run = || {
        let mut src = LocalSource::new(std::slice::from_ref(&data), &[]).unwrap();
        archive_source(&r, "j", &mut src)
    };
    run();
    // Three small insertions far apart.
    for (i, at) in [(0, 5 << 20), (1, 30 << 20), (2, 50 << 20)] {
        let pos = at + i * 17;
        bytes.splice(pos..pos, b"some inserted bytes".iter().copied());
    }
    std::fs::write(data.join("disk.img"), &bytes).unwrap();
    let second = run();
    assert_eq!(second.stats.read_bytes, bytes.len() as u64);
    // Each insertion costs about two average chunks (1 MiB) at most; far less than the file.
    assert!(
        second.stats.stored_bytes < 3 * 3 * (1 << 20),
        "stored {} bytes",
        second.stats.stored_bytes
    );
    assert!(second.stats.new_chunks >= 3);
}
