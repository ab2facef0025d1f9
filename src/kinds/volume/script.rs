//! What runs in the reader and writer pods, and the parsers of what they print. Pure:
//! tested directly, and end to end against Debian's busybox by the fake API server.
//!
//! Only POSIX/busybox tools are used (the reader image is `busybox`). Every script is
//! wrapped by [`framed`]: its stdout also passes through `sha256sum` and `wc -c` (via
//! fifos), and after it ends the pod prints one line on stderr,
//! `backuphub-end <bytes> <sha256> <status>`. The Pi counts and hashes what it received
//! and compares: an exec cut short (which a WebSocket can be, silently) never passes.

use crate::repo::tree::EntryKind;

/// Where the reader pod mounts a filesystem volume.
pub const MOUNT_PATH: &str = "/backuphub/volume";
/// Where the reader pod sees a block volume.
pub const DEVICE_PATH: &str = "/dev/backuphub-volume";

/// The `stat` format of a listing line: raw mode (hex), uid, gid, size, mtime (s),
/// device major and minor (hex), link count, name. The name comes last, so it may hold
/// spaces.
const STAT_FORMAT: &str = "%f %u %g %s %Y %t %T %h %n";
const NAME_FIELD: usize = 9;
/// What `find` prints, instead of a name, for a path with a newline in it: `-T`-less
/// tools cannot pass such a name on, so it is counted and reported rather than lost
/// silently. Sorts before every name (`#` < `.`).
pub const SKIPPED_MARK: &[u8] = b"#newline";

/// Wraps `inner` (shell commands writing the payload to stdout) so that the payload's
/// byte count and SHA-256 and `inner`'s exit status follow on stderr as the end mark.
pub fn framed(inner: &str) -> String {
    format!(
        r#"set -u
set -o pipefail 2>/dev/null || true
d=$(mktemp -d) || exit 71
mkfifo "$d/h" "$d/c" || exit 71
sha256sum < "$d/h" > "$d/hash" &
wc -c < "$d/c" > "$d/count" &
{{ {inner}
echo $? > "$d/status"; }} | tee "$d/h" "$d/c"
wait
printf 'backuphub-end %s %s %s\n' "$(cat "$d/count")" "$(cut -d ' ' -f 1 "$d/hash")" "$(cat "$d/status")" >&2
rm -rf "$d"
"#
    )
}

/// Lists a filesystem volume: one line per entry ([`STAT_FORMAT`]), sorted bytewise by
/// name, the root (`.`) first; nothing crosses into other mounts.
pub fn listing() -> String {
    framed(&format!(
        r#"cd {MOUNT_PATH} || exit 70
nl='
'
find . -xdev -path "*${{nl}}*" -prune -exec echo '{mark}' \; -o -exec stat -c '{STAT_FORMAT}' {{}} + | LC_ALL=C sort -t ' ' -k {NAME_FIELD}"#,
        mark = std::str::from_utf8(SKIPPED_MARK).expect("ascii"),
    ))
}

/// Sends the named entries (arguments `"$@"`, `./`-relative) as one tar stream.
pub fn tar_batch() -> String {
    framed(&format!(
        "cd {MOUNT_PATH} || exit 70\ntar -c -f - --no-recursion -- \"$@\""
    ))
}

/// Sends a block volume's whole device.
pub fn block() -> String {
    framed(&format!("cat {DEVICE_PATH}"))
}

/// Like [`framed`], for what a script reads: stdin passes through `sha256sum` and
/// `wc -c` on its way to `consumer`, and the end mark tells what arrived.
pub fn framed_input(check: &str, consumer: &str) -> String {
    format!(
        r#"set -u
set -o pipefail 2>/dev/null || true
{check}
d=$(mktemp -d) || exit 71
mkfifo "$d/h" "$d/c" || exit 71
sha256sum < "$d/h" > "$d/hash" &
wc -c < "$d/c" > "$d/count" &
tee "$d/h" "$d/c" | {{ {consumer}
}}
echo $? > "$d/status"
wait
printf 'backuphub-end %s %s %s\n' "$(cat "$d/count")" "$(cut -d ' ' -f 1 "$d/hash")" "$(cat "$d/status")" >&2
rm -rf "$d"
"#
    )
}

/// Exit status of the writer when the target is not empty and `overwrite` was not given.
pub const NOT_EMPTY: i32 = 73;
/// What the writer says then (matched exactly: tar's own "Directory not empty" is not it).
pub const NOT_EMPTY_LINE: &str = "backuphub: the target volume is not empty";

/// The writer's side of `restore-volume`: refuses a non-empty target unless `$1` is
/// `overwrite` (an empty file system's `lost+found` does not count), then unpacks the
/// tar stream on stdin (numeric owners; modes and times as stored), or for a block
/// volume copies stdin onto the device.
///
/// Directory times: busybox tar creates symlinks only after everything else, which
/// changes their directories' times again. So the stream ends with a file `$2` of lines
/// `<mtime> ./<dir>`, applied after the unpacking (and removed first, since removing it
/// changes the root's time).
pub fn writer(block: bool) -> String {
    if block {
        return framed_input("", &format!("cat > {DEVICE_PATH}"));
    }
    framed_input(
        &format!(
            r#"cd {MOUNT_PATH} || exit 70
if [ "${{1:-}}" != overwrite ] && [ -n "$(ls -A | grep -v '^lost+found$')" ]; then echo "{NOT_EMPTY_LINE}" >&2; exit {NOT_EMPTY}; fi"#
        ),
        // busybox tar may stop at the first zero block: the rest is drained so that
        // `tee` does not fail writing it.
        r#"tar -x -f - --numeric-owner; t=$?; cat > /dev/null
if [ "$t" = 0 ] && [ -f "$2" ]; then
  exec 3< "$2" && rm -f "$2" || exit 72
  while IFS= read -r line <&3; do touch -c -d "@${line%% *}" -- "${line#* }" || t=1; done
  exec 3<&-
fi
exit $t"#,
    )
}

/// One line of a [`listing`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The path below the volume's root, without `./`; empty for the root.
    pub rel: Vec<u8>,
    pub kind: Option<EntryKind>,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// `(major, minor)` of a device.
    pub rdev: (u32, u32),
    /// Hard links to the inode (a file with more is sent alone: tar sends a second name
    /// in one archive as a link without data).
    pub nlink: u64,
}

/// A line of a listing: an entry, or a path that was skipped for a newline in its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Entry(Listed),
    Skipped,
}

/// Parses one listing line (without its `\n`). `kind` is `None` for sockets and
/// anything else a backup does not keep.
pub fn parse_line(line: &[u8]) -> Result<Line, String> {
    if line == SKIPPED_MARK {
        return Ok(Line::Skipped);
    }
    let bad = || {
        format!(
            "unreadable listing line {:?}",
            String::from_utf8_lossy(line)
        )
    };
    let mut fields = line.splitn(NAME_FIELD, |b| *b == b' ');
    let mut next = || fields.next().ok_or_else(bad);
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|_| bad())
    };
    let raw = u32::from_str_radix(&text(next()?)?, 16).map_err(|_| bad())?;
    let uid = text(next()?)?.parse().map_err(|_| bad())?;
    let gid = text(next()?)?.parse().map_err(|_| bad())?;
    let size = text(next()?)?.parse().map_err(|_| bad())?;
    let mtime = text(next()?)?.parse().map_err(|_| bad())?;
    let major = u32::from_str_radix(&text(next()?)?, 16).map_err(|_| bad())?;
    let minor = u32::from_str_radix(&text(next()?)?, 16).map_err(|_| bad())?;
    let nlink = text(next()?)?.parse().map_err(|_| bad())?;
    let name = next()?;
    let rel = if name == b"." {
        Vec::new()
    } else if let Some(rest) = name.strip_prefix(b"./")
        && !rest.is_empty()
    {
        rest.to_vec()
    } else {
        return Err(bad());
    };
    let kind = match raw & 0o170000 {
        0o100000 => Some(EntryKind::File),
        0o040000 => Some(EntryKind::Dir),
        0o120000 => Some(EntryKind::Symlink),
        0o010000 => Some(EntryKind::Fifo),
        0o020000 => Some(EntryKind::CharDevice),
        0o060000 => Some(EntryKind::BlockDevice),
        _ => None,
    };
    Ok(Line::Entry(Listed {
        rel,
        kind,
        mode: raw & 0o7777,
        uid,
        gid,
        size,
        mtime,
        rdev: (major, minor),
        nlink,
    }))
}

/// The end mark a [`framed`] script prints on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndMark {
    pub bytes: u64,
    pub sha256: String,
    /// The exit status of the framed commands.
    pub status: i32,
}

/// Finds the last end mark in a stderr tail.
pub fn end_mark(stderr: &[u8]) -> Option<EndMark> {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("backuphub-end "))?;
    let mut f = line.split_whitespace().skip(1);
    let bytes = f.next()?.parse().ok()?;
    let sha256 = f.next()?.to_string();
    let status = f.next()?.parse().ok()?;
    (sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit())).then_some(EndMark {
        bytes,
        sha256,
        status,
    })
}

/// What stderr said besides the end mark, for messages (bounded, one line).
pub fn complaint(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("backuphub-end ") && !l.trim().is_empty())
        .collect();
    let joined = lines.join("; ");
    let mut end = joined.len().min(500);
    while !joined.is_char_boundary(end) {
        end -= 1;
    }
    joined[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_lines_parse_with_spaces_in_names() {
        let Line::Entry(l) =
            parse_line(b"81a4 1001 1001 12 1796423922 0 0 1 ./photos/a b.jpg").unwrap()
        else {
            panic!()
        };
        assert_eq!(l.rel, b"photos/a b.jpg");
        assert_eq!(l.kind, Some(EntryKind::File));
        assert_eq!(
            (l.mode, l.uid, l.gid, l.size, l.mtime),
            (0o644, 1001, 1001, 12, 1796423922)
        );
        let Line::Entry(root) = parse_line(b"41ed 0 0 4096 1 0 0 3 .").unwrap() else {
            panic!()
        };
        assert_eq!((root.rel.len(), root.kind), (0, Some(EntryKind::Dir)));
        let Line::Entry(dev) = parse_line(b"21b6 0 0 0 1 1 3 1 ./null").unwrap() else {
            panic!()
        };
        assert_eq!((dev.kind, dev.rdev), (Some(EntryKind::CharDevice), (1, 3)));
        let Line::Entry(sock) = parse_line(b"c1ed 0 0 0 1 0 0 1 ./sock").unwrap() else {
            panic!()
        };
        assert_eq!(sock.kind, None);
        assert_eq!(parse_line(SKIPPED_MARK).unwrap(), Line::Skipped);
        for bad in [
            &b"81a4 0 0 1 1 0 0 1 photos"[..],
            b"81a4 0 0 1 1 0 0 1 ./",
            b"zz 0 0 1 1 0 0 1 ./a",
            b"81a4 0 0 -1 1 0 0 1 ./a",
            b"81a4 0 0 1 1 0 0 x ./a",
            b"81a4 0 0",
        ] {
            assert!(parse_line(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_end_mark_is_the_last_one_and_well_formed() {
        let h = "a".repeat(64);
        let err = format!("tar: x: Permission denied\nbackuphub-end     1234 {h} 1\n");
        assert_eq!(
            end_mark(err.as_bytes()),
            Some(EndMark {
                bytes: 1234,
                sha256: h.clone(),
                status: 1
            })
        );
        assert_eq!(complaint(err.as_bytes()), "tar: x: Permission denied");
        assert_eq!(end_mark(b"backuphub-end 12 abc 0\n"), None);
        assert_eq!(end_mark(b"no mark at all"), None);
    }

    #[test]
    fn scripts_frame_their_payload() {
        for s in [listing(), tar_batch(), block(), writer(true), writer(false)] {
            assert!(s.contains("backuphub-end"), "{s}");
            assert!(s.contains("sha256sum"), "{s}");
        }
        assert!(listing().contains("sort -t ' ' -k 9"));
    }
}
