//! Local paths: directories, files, symlinks and special files, with their metadata.
//!
//! Paths are stored without the leading `/` (`/srv/data/x` → `srv/data/x`), ancestors of
//! the given paths included, so several roots share one tree. The walk emits entries in
//! byte order of full paths: within a directory, a child directory's own entry sorts under
//! its name but its contents under `name/`, which is exactly where byte order puts them
//! (`a` < `a.txt` < `a/x`). Per directory level of the current path only the sorted
//! child names are held (no metadata, no paths); each child is `lstat`ed when its turn
//! comes. A directory's names are held whole while it is walked (a million-entry
//! directory costs its names plus ~40 bytes each of bookkeeping; no spilling to disk yet).

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{Content, Source, SourceEntry, SourceError};
use crate::repo::index::Previous;
use crate::repo::tree::{Entry, EntryKind, EntryPath};

pub struct LocalSource {
    roots: Vec<PathBuf>,
    exclude: GlobSet,
    exclude_text: Vec<String>,
}

impl LocalSource {
    pub fn new(paths: &[PathBuf], exclude: &[String]) -> Result<LocalSource, SourceError> {
        if paths.is_empty() {
            return Err(SourceError::Fatal("no paths to back up".into()));
        }
        let mut roots: Vec<PathBuf> = Vec::new();
        for p in paths {
            let abs = std::path::absolute(p)
                .map_err(|e| SourceError::Fatal(format!("{}: {e}", p.display())))?;
            let normal: PathBuf = abs
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .collect();
            if normal
                .components()
                .any(|c| matches!(c, Component::ParentDir))
            {
                return Err(SourceError::Fatal(format!(
                    "{}: paths with .. are ambiguous; give the real path",
                    p.display()
                )));
            }
            std::fs::symlink_metadata(&normal)
                .map_err(|e| SourceError::Fatal(format!("{}: {e}", normal.display())))?;
            roots.push(normal);
        }
        roots.sort();
        roots.dedup();
        // A root inside another root adds nothing.
        let mut kept: Vec<PathBuf> = Vec::new();
        for r in roots {
            if !kept.iter().any(|k| r.starts_with(k)) {
                kept.push(r);
            }
        }
        let mut b = GlobSetBuilder::new();
        for pat in exclude {
            b.add(
                Glob::new(pat)
                    .map_err(|e| SourceError::Fatal(format!("exclude pattern {pat:?}: {e}")))?,
            );
        }
        let exclude_set = b
            .build()
            .map_err(|e| SourceError::Fatal(format!("exclude patterns: {e}")))?;
        Ok(LocalSource {
            roots: kept,
            exclude: exclude_set,
            exclude_text: exclude.to_vec(),
        })
    }
}

impl Source for LocalSource {
    fn description(&self) -> String {
        let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
        if self.exclude_text.is_empty() {
            format!("paths {}", roots.join(" "))
        } else {
            format!(
                "paths {} excluding {}",
                roots.join(" "),
                self.exclude_text.join(" ")
            )
        }
    }

    fn entries<'a>(
        &'a mut self,
        previous: Previous,
    ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a> {
        let mut top = VNode::default();
        for r in &self.roots {
            top.insert(r);
        }
        let mut roots = Vec::new();
        top.plan(Path::new("/"), &EntryPath::from(""), &mut roots);
        roots.reverse();
        Box::new(Walker {
            roots,
            frames: Vec::new(),
            exclude: &self.exclude,
            previous,
        })
    }
}

/// The tree of roots and their ancestors, before walking.
#[derive(Default)]
struct VNode {
    children: BTreeMap<Vec<u8>, VNode>,
    /// Walk everything below (a root), rather than only `children`.
    real: bool,
}

impl VNode {
    fn insert(&mut self, root: &Path) {
        let mut node = self;
        for c in root.components() {
            if let Component::Normal(name) = c {
                node = node.children.entry(name.as_bytes().to_vec()).or_default();
            }
        }
        node.real = true;
    }

    /// Emits this node's children in walk order onto `out` (forward order).
    fn plan(&self, fs_dir: &Path, dir: &EntryPath, out: &mut Vec<Step>) {
        if self.real {
            out.push(Step::Expand(fs_dir.to_owned(), dir.clone(), Given::Root));
            return;
        }
        let mut keyed: Vec<(Vec<u8>, &Vec<u8>, bool)> = Vec::new();
        for name in self.children.keys() {
            keyed.push((name.clone(), name, false));
            let mut k = name.clone();
            k.push(b'/');
            keyed.push((k, name, true));
        }
        keyed.sort();
        for (_, name, expand) in keyed {
            let child = &self.children[name];
            let fs_path = fs_dir.join(std::ffi::OsStr::from_bytes(name));
            let path = dir.join(name);
            if expand {
                child.plan(&fs_path, &path, out);
            } else {
                out.push(Step::Emit(fs_path, path, Given::Root));
            }
        }
    }
}

/// Roots and their ancestors were named by the operator: symlinks among them are
/// followed (`/srv/data -> /mnt/disk1/data` backs up the data, and restores as a
/// directory), and an empty root is suspicious. What is found inside is taken as it is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Given {
    Root,
    Found,
}

enum Step {
    /// Emit the entry for this file system path.
    Emit(PathBuf, EntryPath, Given),
    /// List this directory and schedule its children.
    Expand(PathBuf, EntryPath, Given),
}

/// One directory being walked: its children's names, sorted in walk order, and nothing
/// else. Metadata is read (`lstat`) only when a child's turn comes, so a directory of a
/// million files costs its names (plus ~25 bytes each), not a million `Metadata`s or paths.
struct Frame {
    fs_dir: PathBuf,
    dir: EntryPath,
    children: Vec<Child>,
    next: usize,
}

/// A child to visit: its own entry, or (`expand`) the contents of the directory it is.
/// A subdirectory appears twice, as `name` and as `name/`, because that is where byte
/// order of full paths puts its entry and its contents (`a` < `a.txt` < `a/x`).
struct Child {
    name: Box<[u8]>,
    expand: bool,
}

impl Child {
    fn walk_key(&self) -> impl Iterator<Item = &u8> {
        self.name.iter().chain(self.expand.then_some(&b'/'))
    }
}

/// The walk: planned steps for the roots and their ancestors (a handful), then one
/// [`Frame`] per directory level of the current path.
struct Walker<'a> {
    /// Pending steps for roots and ancestors, next on top.
    roots: Vec<Step>,
    frames: Vec<Frame>,
    exclude: &'a GlobSet,
    previous: Previous,
}

impl Walker<'_> {
    fn expand(&mut self, fs_dir: PathBuf, dir: EntryPath, given: Given) -> Result<(), SourceError> {
        let md = if given == Given::Root {
            std::fs::metadata(&fs_dir)
        } else {
            std::fs::symlink_metadata(&fs_dir)
        };
        // A root may be a single file: nothing to list then.
        if !md.is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        let rd = std::fs::read_dir(&fs_dir)
            .map_err(|e| SourceError::entry(&dir, format!("cannot list directory: {e}")))?;
        let mut children: Vec<Child> = Vec::new();
        for item in rd {
            let item =
                item.map_err(|e| SourceError::entry(&dir, format!("cannot list directory: {e}")))?;
            if self.exclude.is_match(item.path()) {
                continue;
            }
            let name: Box<[u8]> = item.file_name().as_bytes().into();
            // The kind is needed now to place the directory's contents; file_type() is
            // served from the listing on most file systems, without a stat.
            if item.file_type().is_ok_and(|t| t.is_dir()) {
                children.push(Child {
                    name: name.clone(),
                    expand: true,
                });
            }
            children.push(Child {
                name,
                expand: false,
            });
        }
        if children.is_empty() && given == Given::Root {
            // An unmounted file system looks exactly like this; a snapshot of it must not
            // pass for a good one (and push real ones out of retention).
            // It fails the run as a whole: no snapshot, and the job's file cache stays
            // as it was, so the next good run needs no full re-read.
            return Err(SourceError::Fatal(format!(
                "backup root {} is empty (file system not mounted?); no snapshot written",
                fs_dir.display()
            )));
        }
        children.sort_unstable_by(|a, b| a.walk_key().cmp(b.walk_key()));
        children.shrink_to_fit();
        self.frames.push(Frame {
            fs_dir,
            dir,
            children,
            next: 0,
        });
        Ok(())
    }

    fn emit(
        &mut self,
        fs_path: &Path,
        path: EntryPath,
        given: Given,
    ) -> Option<Result<SourceEntry, SourceError>> {
        let md = if given == Given::Root {
            std::fs::metadata(fs_path)
        } else {
            std::fs::symlink_metadata(fs_path)
        };
        let md = match md {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None, // vanished: not a failure
            Err(e) => return Some(Err(SourceError::entry(&path, e))),
        };
        let ft = md.file_type();
        let kind = if ft.is_file() {
            EntryKind::File
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_char_device() {
            EntryKind::CharDevice
        } else if ft.is_block_device() {
            EntryKind::BlockDevice
        } else {
            // Sockets only exist while their server runs; there is nothing to keep.
            tracing::debug!(path = %path, "skipping socket");
            return None;
        };
        let mut entry = match entry_from_metadata(path.clone(), kind, &md) {
            Ok(e) => e,
            Err(e) => return Some(Err(SourceError::entry(&path, e))),
        };
        let content = match kind {
            EntryKind::Symlink => match std::fs::read_link(fs_path) {
                Ok(t) => {
                    entry.link_target = Some(t.as_os_str().as_bytes().to_vec());
                    Content::None
                }
                Err(e) => return Some(Err(SourceError::entry(&entry.path, e))),
            },
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                entry.rdev = Some(md.rdev());
                Content::None
            }
            EntryKind::File if md.len() > 0 => {
                let opener = Box::new(FileOpener {
                    fs_path: fs_path.to_owned(),
                    follow: given == Given::Root,
                });
                let unchanged = self.previous.find(entry.sort_key()).filter(|prev| {
                    prev.kind == EntryKind::File
                        && prev.size == entry.size
                        && prev.mtime_ns == entry.mtime_ns
                        && prev.change == entry.change
                        && !prev.chunks.is_empty()
                });
                match unchanged {
                    Some(prev) => Content::Reuse {
                        chunks: prev.chunks,
                        fallback: Some(opener),
                    },
                    None => Content::Open(opener),
                }
            }
            _ => Content::None,
        };
        Some(Ok(SourceEntry { entry, content }))
    }
}

/// A local file's content, reopenable: a file that changed while it was read is read
/// once more (what the second read gets is stored, and said to be torn if it changed
/// again). Each open refreshes the entry's size, times and change token from the opened
/// file itself, so they describe what is read.
struct FileOpener {
    fs_path: PathBuf,
    /// Roots may be symlinks (see [`Given`]); what is found inside is never followed.
    follow: bool,
}

impl super::Opener for FileOpener {
    fn open(
        &mut self,
        _attempt: u32,
        entry: &mut Entry,
    ) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true);
        if !self.follow {
            // Swapped for a symlink since the listing: not followed out of the tree.
            opts.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        }
        let f = opts.open(&self.fs_path)?;
        let md = f.metadata()?;
        if !md.is_file() {
            return Err(std::io::Error::other("no longer a regular file"));
        }
        let fresh = entry_from_metadata(entry.path.clone(), EntryKind::File, &md)
            .map_err(std::io::Error::other)?;
        entry.size = fresh.size;
        entry.mtime_ns = fresh.mtime_ns;
        entry.change = fresh.change;
        entry.mode = fresh.mode;
        entry.uid = fresh.uid;
        entry.gid = fresh.gid;
        Ok(Box::new(f))
    }

    fn retry(&self) -> super::RetryPolicy {
        super::RetryPolicy {
            attempts: 2,
            backoff: std::time::Duration::ZERO,
        }
    }
}

/// Seconds and nanoseconds as nanoseconds since the epoch, which an `i64` holds from 1677
/// to 2262. A time outside that (a bogus clock, a crafted file) fails its entry instead
/// of wrapping into another date.
pub fn time_ns(secs: i64, nsec: i64) -> Result<i64, String> {
    secs.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(nsec))
        .ok_or_else(|| {
            format!("timestamp {secs} s is outside the range a snapshot holds (years 1677 to 2262)")
        })
}

pub fn entry_from_metadata(
    path: EntryPath,
    kind: EntryKind,
    md: &Metadata,
) -> Result<Entry, String> {
    let mut e = Entry::new(path, kind);
    e.mode = md.mode() & 0o7777;
    e.uid = md.uid();
    e.gid = md.gid();
    e.mtime_ns = time_ns(md.mtime(), md.mtime_nsec())?;
    e.size = if kind == EntryKind::File { md.len() } else { 0 };
    // ctime only detects change; saturating keeps detection working for odd values.
    let ctime = md
        .ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.ctime_nsec());
    e.change = Some((md.dev(), md.ino(), ctime));
    Ok(e)
}

impl Iterator for Walker<'_> {
    type Item = Result<SourceEntry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (fs_path, path, expand, given) = match self.frames.last_mut() {
                Some(f) => {
                    let Some(child) = f.children.get(f.next) else {
                        self.frames.pop();
                        continue;
                    };
                    f.next += 1;
                    let fs_path = f.fs_dir.join(std::ffi::OsStr::from_bytes(&child.name));
                    (fs_path, f.dir.join(&child.name), child.expand, Given::Found)
                }
                None => match self.roots.pop()? {
                    Step::Emit(fs_path, path, given) => (fs_path, path, false, given),
                    Step::Expand(fs_dir, dir, given) => (fs_dir, dir, true, given),
                },
            };
            if expand {
                if let Err(e) = self.expand(fs_path, path, given) {
                    return Some(Err(e));
                }
            } else if let Some(item) = self.emit(&fs_path, path, given) {
                return Some(item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(src: &mut LocalSource) -> Vec<String> {
        src.entries(Previous::empty())
            .map(|e| e.unwrap().entry.path.display())
            .collect()
    }

    #[test]
    fn walk_order_is_byte_order_with_ancestors() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        for d in ["r/a", "r/a/sub", "r/b"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in [
            "r/a.txt",
            "r/a/x",
            "r/a/sub/y",
            "r/a-b",
            "r/b/z.tmp",
            "r/b/z",
        ] {
            std::fs::write(t.path().join(f), b"1").unwrap();
        }
        let mut src = LocalSource::new(std::slice::from_ref(&root), &["*.tmp".into()]).unwrap();
        let paths = walk(&mut src);
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted, "byte order");
        let rel: Vec<&str> = paths
            .iter()
            .map(|p| {
                p.strip_prefix(root.to_str().unwrap().trim_start_matches('/'))
                    .unwrap_or(p)
            })
            .collect();
        assert!(rel.contains(&"/a/sub/y"));
        assert!(!rel.iter().any(|p| p.ends_with(".tmp")));
        // Ancestors of the root are present, so restore recreates the whole path.
        assert_eq!(
            paths[0],
            root.components()
                .nth(1)
                .unwrap()
                .as_os_str()
                .to_str()
                .unwrap()
        );
    }

    fn next_file(
        it: &mut dyn Iterator<Item = Result<SourceEntry, SourceError>>,
        name: &str,
    ) -> SourceEntry {
        it.map(|e| e.unwrap())
            .find(|e| e.entry.path.display().ends_with(name))
            .unwrap()
    }

    #[test]
    fn metadata_is_read_when_an_entrys_turn_comes_and_refreshed_on_open() {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        std::fs::create_dir_all(&root).unwrap();
        for f in ["a", "b"] {
            std::fs::write(root.join(f), b"12345").unwrap();
        }
        let mut src = LocalSource::new(std::slice::from_ref(&root), &[]).unwrap();
        let mut it = src.entries(Previous::empty());
        let mut a = next_file(&mut *it, "/a");
        // Listed, but not yet visited: what `b` is now is what its entry says.
        std::fs::set_permissions(root.join("b"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let b = next_file(&mut *it, "/b");
        assert_eq!(b.entry.mode, 0o600);
        // `a` grew after its stat: opening it describes what will be read.
        std::fs::write(root.join("a"), b"1234567").unwrap();
        let Content::Open(mut opener) = std::mem::replace(&mut a.content, Content::None) else {
            panic!("a local file is reopenable");
        };
        assert_eq!(
            opener.retry().attempts,
            2,
            "a changed file is read once more"
        );
        let mut data = Vec::new();
        opener
            .open(0, &mut a.entry)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        assert_eq!(a.entry.size, 7);
        assert_eq!(data, b"1234567");
        // Swapped for a symlink since the listing: never followed.
        std::fs::remove_file(root.join("a")).unwrap();
        std::os::unix::fs::symlink(root.join("b"), root.join("a")).unwrap();
        assert!(opener.open(1, &mut a.entry).is_err());
    }

    #[test]
    fn nested_and_missing_roots() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        let src = LocalSource::new(&[t.path().join("a"), t.path().join("a/b")], &[]).unwrap();
        assert_eq!(src.roots.len(), 1);
        let err = LocalSource::new(&[t.path().join("missing")], &[])
            .err()
            .unwrap();
        assert!(err.to_string().contains("missing"));
        assert!(LocalSource::new(&[t.path().into()], &["[".into()]).is_err());
    }
}
