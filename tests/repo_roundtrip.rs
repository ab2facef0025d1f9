//! Round trips through the library: random trees and streams restore byte for byte,
//! metadata included.

mod common;

use std::path::Path;

use backuphub::redact::Redactor;
use backuphub::repo::Repository;
use backuphub::restore::{RestoreOptions, restore};
use backuphub::source::local::LocalSource;
use backuphub::source::stream::{StreamInput, StreamSource};
use common::{archive_source, assert_same_tree, noise, restored, test_repo};
use proptest::prelude::*;

fn small_repo(dir: &Path) -> Repository {
    test_repo(dir, 8192, 256 << 10)
}

#[derive(Debug, Clone)]
enum Node {
    File {
        name: String,
        len: usize,
        seed: u64,
        mode: u32,
    },
    Link {
        name: String,
        target: String,
    },
    Dir {
        name: String,
        children: Vec<Node>,
    },
}

fn name() -> impl Strategy<Value = String> {
    // Unicode, spaces, dots and dashes; never "." or "..".
    prop_oneof![
        "[a-z]{1,8}",
        "[a-zA-Z0-9 ._-]{1,12}",
        "(ä|ß|日本|😀|é|ø)[a-z]{0,4}",
    ]
    .prop_filter("not a dot name", |n| n != "." && n != "..")
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (
            name(),
            prop_oneof![Just(0usize), 1usize..300, 20_000usize..200_000],
            any::<u64>(),
            prop_oneof![Just(0o644u32), Just(0o600), Just(0o755), Just(0o400)]
        )
            .prop_map(|(name, len, seed, mode)| Node::File {
                name,
                len,
                seed,
                mode
            }),
        (name(), name()).prop_map(|(name, target)| Node::Link { name, target }),
    ];
    leaf.prop_recursive(6, 40, 6, |inner| {
        (name(), proptest::collection::vec(inner, 0..6))
            .prop_map(|(name, children)| Node::Dir { name, children })
    })
}

fn materialize(dir: &Path, nodes: &[Node], mtime_base: i64) {
    use std::os::unix::fs::PermissionsExt;
    for (i, n) in nodes.iter().enumerate() {
        let mt = filetime::FileTime::from_unix_time(
            mtime_base + i as i64 * 7,
            (i as u32 * 1_000_003) % 1_000_000_000,
        );
        match n {
            Node::File {
                name,
                len,
                seed,
                mode,
            } => {
                let p = dir.join(name);
                if p.symlink_metadata().is_ok() {
                    continue;
                }
                std::fs::write(&p, noise(*len, *seed)).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
                filetime::set_file_mtime(&p, mt).unwrap();
            }
            Node::Link { name, target } => {
                let p = dir.join(name);
                if p.symlink_metadata().is_ok() {
                    continue;
                }
                std::os::unix::fs::symlink(target, &p).unwrap();
            }
            Node::Dir { name, children } => {
                let p = dir.join(name);
                if p.symlink_metadata().is_ok() {
                    continue;
                }
                std::fs::create_dir(&p).unwrap();
                materialize(&p, children, mtime_base + 1000);
                filetime::set_file_mtime(&p, mt).unwrap();
            }
        }
    }
}

fn backup_and_restore(tmp: &Path, data: &Path) -> std::path::PathBuf {
    let repo = small_repo(tmp);
    let mut src = LocalSource::new(&[data.to_owned()], &[]).unwrap();
    let snap = archive_source(&repo, "t", &mut src);
    assert_eq!(snap.stats.failures, 0);
    let target = tmp.join("out");
    restore(&repo, &snap, &target, &RestoreOptions::default()).unwrap();
    restored(&target, data)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn random_trees_restore_exactly(nodes in proptest::collection::vec(node(), 0..8)) {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        // An empty backup root is reported as a failure (an unmounted disk looks like that).
        std::fs::write(data.join(".keep"), b"").unwrap();
        materialize(&data, &nodes, 1_600_000_000);
        let back = backup_and_restore(tmp.path(), &data);
        assert_same_tree(&data, &back);
    }

    #[test]
    fn random_streams_restore_exactly(len in prop_oneof![Just(0usize), 1usize..100, 100_000usize..400_000], seed in any::<u64>()) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = small_repo(tmp.path());
        let bytes = noise(len, seed);
        let file = tmp.path().join("input");
        std::fs::write(&file, &bytes).unwrap();
        let argv = vec!["cat".to_string(), file.to_str().unwrap().to_string()];
        let mut src = StreamSource::new("streams/dump.bin", StreamInput::Command { argv, env: vec![] }, Redactor::default()).unwrap();
        let snap = archive_source(&repo, "s", &mut src);
        let mut out = Vec::new();
        backuphub::restore::cat(&repo, &snap, &"streams/dump.bin".into(), &mut out).unwrap();
        prop_assert!(out == bytes);
    }
}

#[test]
fn deep_nesting_and_a_large_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut deep = data.clone();
    for i in 0..60 {
        deep = deep.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("leaf"), b"bottom").unwrap();
    std::fs::write(data.join("large"), noise(6 << 20, 99)).unwrap();
    std::fs::write(data.join("empty"), b"").unwrap();
    let back = backup_and_restore(tmp.path(), &data);
    assert_same_tree(&data, &back);
}

#[test]
fn restore_of_a_subpath_only() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("keep")).unwrap();
    std::fs::create_dir_all(data.join("skip")).unwrap();
    std::fs::write(data.join("keep/a"), b"a").unwrap();
    std::fs::write(data.join("skip/b"), b"b").unwrap();
    let repo = small_repo(tmp.path());
    let mut src = LocalSource::new(std::slice::from_ref(&data), &[]).unwrap();
    let snap = archive_source(&repo, "t", &mut src);
    let target = tmp.path().join("out");
    let only = data.join("keep");
    let only = only.to_str().unwrap();
    restore(
        &repo,
        &snap,
        &target,
        &RestoreOptions {
            only: Some(only.into()),
            overwrite: false,
        },
    )
    .unwrap();
    assert!(restored(&target, &data.join("keep/a")).exists());
    assert!(!restored(&target, &data.join("skip")).exists());
}

/// A source that yields whatever entries it is given: a hostile or damaged tree.
struct Canned(Vec<backuphub::repo::tree::Entry>);

impl backuphub::source::Source for Canned {
    fn description(&self) -> String {
        "canned".into()
    }
    fn entries<'a>(
        &'a mut self,
        _previous: backuphub::repo::index::Previous,
    ) -> Box<
        dyn Iterator<Item = Result<backuphub::source::SourceEntry, backuphub::source::SourceError>>
            + 'a,
    > {
        Box::new(self.0.drain(..).map(|entry| {
            Ok(backuphub::source::SourceEntry {
                entry,
                content: backuphub::source::Content::None,
            })
        }))
    }
}

#[test]
fn restore_never_writes_through_symlinks() {
    use backuphub::repo::tree::{Entry, EntryKind, EntryPath};
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let repo = small_repo(tmp.path());
    let mut link = Entry::new(EntryPath::from("x"), EntryKind::Symlink);
    link.link_target = Some(outside.to_str().unwrap().as_bytes().to_vec());
    let evil = Entry::new(EntryPath::from("x/evil"), EntryKind::File);
    let mut src = Canned(vec![link, evil]);
    let snap = archive_source(&repo, "hostile", &mut src);
    let target = tmp.path().join("target");
    let err = restore(
        &repo,
        &snap,
        &target,
        &RestoreOptions {
            only: None,
            overwrite: true,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("unsafe path"), "{err}");
    assert!(!outside.join("evil").exists(), "wrote outside the target");
}

#[test]
fn symlinked_roots_are_followed_and_empty_roots_fail_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::write(real.join("file"), b"content").unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let empty = tmp.path().join("mountpoint");
    std::fs::create_dir(&empty).unwrap();
    let repo = small_repo(tmp.path());

    let mut src = LocalSource::new(std::slice::from_ref(&link), &[]).unwrap();
    let snap = archive_source(&repo, "l", &mut src);
    assert_eq!(snap.stats.failures, 0);
    let mut out = Vec::new();
    backuphub::restore::cat(
        &repo,
        &snap,
        &link.join("file").to_str().unwrap().into(),
        &mut out,
    )
    .unwrap();
    assert_eq!(out, b"content");

    // An empty root (an unmounted file system) fails the whole run: no snapshot, even
    // though another root has data.
    let before = repo.snapshot_ids().unwrap().len();
    let mut src = LocalSource::new(&[empty.clone(), real.clone()], &[]).unwrap();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let progress = backuphub::archiver::Progress::default();
    let err = backuphub::archiver::archive(&repo, "e", &mut src, &progress, &cancel, &|| Ok(()))
        .unwrap_err();
    assert!(err.to_string().contains("not mounted"), "{err}");
    assert_eq!(repo.snapshot_ids().unwrap().len(), before);
}
