//! Restoring snapshots to a directory, and single files to a writer.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;

use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Entry, EntryKind, EntryPath};
use crate::repo::{RepoError, Repository};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} exists; pass --overwrite to replace existing files")]
    Exists(PathBuf),
    #[error("refusing unsafe path {0:?} from the snapshot")]
    UnsafePath(String),
    #[error("no entry {0:?} in this snapshot")]
    NotFound(String),
    #[error("{0:?} is not a regular file")]
    NotAFile(String),
}

impl RestoreError {
    pub fn kind(&self) -> &'static str {
        match self {
            RestoreError::Repo(e) => e.kind(),
            RestoreError::Io { .. } => "io",
            RestoreError::Exists(_) => "exists",
            RestoreError::UnsafePath(_) => "corrupt",
            RestoreError::NotFound(_) | RestoreError::NotAFile(_) => "not_found",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Only this path and what lies below it.
    pub only: Option<EntryPath>,
    pub overwrite: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub entries: u64,
    pub bytes: u64,
}

/// Writes a file entry's content to `out`.
pub fn write_content(
    repo: &Repository,
    entry: &Entry,
    out: &mut dyn Write,
) -> Result<u64, RestoreError> {
    let mut n = 0u64;
    for c in &entry.chunks {
        let data = repo.read_blob(c)?;
        out.write_all(&data).map_err(io(Path::new("<output>")))?;
        n += data.len() as u64;
    }
    Ok(n)
}

/// Finds one entry by exact path, streaming the tree.
pub fn find_entry(
    repo: &Repository,
    snap: &Snapshot,
    path: &EntryPath,
) -> Result<Entry, RestoreError> {
    for e in repo.entries(snap) {
        let e = e?;
        if &e.path == path {
            return Ok(e);
        }
        if e.path > *path && !e.path.starts_with(path) {
            break; // sorted: it is not there
        }
    }
    Err(RestoreError::NotFound(path.display()))
}

/// `cat`: one file's content to `out`.
pub fn cat(
    repo: &Repository,
    snap: &Snapshot,
    path: &EntryPath,
    out: &mut dyn Write,
) -> Result<u64, RestoreError> {
    let e = find_entry(repo, snap, path)?;
    if e.kind != EntryKind::File {
        return Err(RestoreError::NotAFile(path.display()));
    }
    write_content(repo, &e, out)
}

/// Restores a snapshot (or part of it) below `target`, metadata included. Directory
/// metadata is applied in a second pass, after their contents are written.
pub fn restore(
    repo: &Repository,
    snap: &Snapshot,
    target: &Path,
    opts: &RestoreOptions,
) -> Result<RestoreStats, RestoreError> {
    std::fs::create_dir_all(target).map_err(io(target))?;
    let is_root = rustix::process::geteuid().is_root();
    let selected = |e: &Entry| opts.only.as_ref().is_none_or(|p| e.path.starts_with(p));
    let mut stats = RestoreStats::default();
    let mut matched = false;
    for e in repo.entries(snap) {
        let e = e?;
        if !selected(&e) {
            continue;
        }
        matched = true;
        if !e.path.is_safe() {
            return Err(RestoreError::UnsafePath(e.path.display()));
        }
        let dest = target.join(e.path.to_os_path());
        ensure_no_symlink_below(target, &e.path)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        match e.kind {
            EntryKind::Dir => {
                if dest
                    .symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
                {
                    return Err(RestoreError::UnsafePath(e.path.display()));
                }
                if !dest.is_dir() {
                    std::fs::create_dir(&dest).map_err(io(&dest))?;
                }
                // Writable until the second pass sets the real mode.
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o700))
                    .map_err(io(&dest))?;
            }
            EntryKind::File => {
                make_room(&dest, opts.overwrite)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(io(&dest))?;
                stats.bytes += write_content(repo, &e, &mut f)?;
                f.sync_all().map_err(io(&dest))?;
                drop(f);
                apply_metadata(&dest, &e, is_root)?;
            }
            EntryKind::Symlink => {
                make_room(&dest, opts.overwrite)?;
                let target_bytes = e.link_target.clone().unwrap_or_default();
                let link = EntryPath::new(target_bytes).to_os_path();
                std::os::unix::fs::symlink(&link, &dest).map_err(io(&dest))?;
                apply_metadata(&dest, &e, is_root)?;
            }
            EntryKind::Fifo | EntryKind::CharDevice | EntryKind::BlockDevice => {
                make_room(&dest, opts.overwrite)?;
                let ft = match e.kind {
                    EntryKind::Fifo => rustix::fs::FileType::Fifo,
                    EntryKind::CharDevice => rustix::fs::FileType::CharacterDevice,
                    _ => rustix::fs::FileType::BlockDevice,
                };
                let mode = rustix::fs::Mode::from_raw_mode(e.mode & 0o777);
                match rustix::fs::mknodat(rustix::fs::CWD, &dest, ft, mode, e.rdev.unwrap_or(0)) {
                    Ok(()) => apply_metadata(&dest, &e, is_root)?,
                    // Device nodes need root; say so rather than fail the whole restore.
                    Err(err) if !is_root && e.kind != EntryKind::Fifo => {
                        tracing::warn!(path = %dest.display(), error = %err, "cannot create device node without root");
                    }
                    Err(err) => return Err(io(&dest)(err.into())),
                }
            }
        }
        stats.entries += 1;
    }
    if let Some(only) = &opts.only
        && !matched
    {
        return Err(RestoreError::NotFound(only.display()));
    }
    for e in repo.entries(snap) {
        let e = e?;
        if e.kind == EntryKind::Dir && selected(&e) {
            apply_metadata(&target.join(e.path.to_os_path()), &e, is_root)?;
        }
    }
    Ok(stats)
}

/// Clears the way for a non-directory entry: an existing file, link or node is replaced
/// only with `--overwrite`.
fn make_room(dest: &Path, overwrite: bool) -> Result<(), RestoreError> {
    if dest.symlink_metadata().is_err() {
        return Ok(());
    }
    if !overwrite {
        return Err(RestoreError::Exists(dest.to_owned()));
    }
    std::fs::remove_file(dest).map_err(io(dest))
}

/// Refuses to write through a symlink: every directory between `target` and the entry
/// must be a real directory (or not exist yet). Otherwise a snapshot holding `x -> /etc`
/// and `x/cron.d/job` would write outside the target.
fn ensure_no_symlink_below(target: &Path, path: &EntryPath) -> Result<(), RestoreError> {
    let mut here = target.to_path_buf();
    let parts: Vec<&[u8]> = path.as_bytes().split(|b| *b == b'/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        here.push(EntryPath::new(part.to_vec()).to_os_path());
        match here.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(RestoreError::UnsafePath(path.display()));
            }
            Ok(_) => {}
            Err(_) => return Ok(()), // below a missing directory nothing can be a link yet
        }
    }
    Ok(())
}

fn apply_metadata(dest: &Path, e: &Entry, is_root: bool) -> Result<(), RestoreError> {
    if is_root {
        std::os::unix::fs::lchown(dest, Some(e.uid), Some(e.gid)).map_err(io(dest))?;
    }
    if e.kind != EntryKind::Symlink {
        std::fs::set_permissions(dest, std::fs::Permissions::from_mode(e.mode & 0o7777))
            .map_err(io(dest))?;
    }
    let mtime = FileTime::from_unix_time(
        e.mtime_ns.div_euclid(1_000_000_000),
        e.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_symlink_file_times(dest, mtime, mtime).map_err(io(dest))?;
    Ok(())
}
