//! The one table of error kinds: a stable, low-cardinality name for every way a run or a
//! command can fail, used as the `kind` label of `backuphub_job_failures_total`, as
//! `error_kind` in the status API, and in logs. Each module's error type maps itself
//! onto it; nothing else invents kind strings.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No repository at the configured path (an unmounted disk).
    NoRepository,
    /// Less free space than the threshold, or the disk filled up (ENOSPC, EDQUOT).
    DiskSpace,
    /// The repository or the config asks for something invalid.
    Settings,
    /// A repository format this version does not read.
    Format,
    /// Other I/O errors on the repository's disk.
    Io,
    /// Damage: checksums, ids or structure do not match.
    Corrupt,
    /// Keys: missing, wrong identity, or changed since pinned.
    Crypto,
    /// The index cache could not be used.
    Index,
    /// Another process holds a conflicting lock, or ours was broken.
    Locked,
    /// A snapshot or entry that was asked for does not exist.
    NotFound,
    /// A restore target exists and `--overwrite` was not given.
    Exists,
    /// Something in a restore target that must not be followed (a planted symlink).
    UnsafeTarget,
    /// Restoring it needs an explicit opt-in (device nodes, setuid bits).
    NotPermitted,
    /// The source failed as a whole, or every entry failed.
    Source,
    /// The run was cancelled (daemon stopping).
    Cancelled,
    /// A bug: a panic or a broken invariant.
    Internal,
    /// Some entries failed and the rest succeeded: a partial snapshot, an incomplete
    /// restore.
    Partial,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 17] = [
        ErrorKind::NoRepository,
        ErrorKind::DiskSpace,
        ErrorKind::Settings,
        ErrorKind::Format,
        ErrorKind::Io,
        ErrorKind::Corrupt,
        ErrorKind::Crypto,
        ErrorKind::Index,
        ErrorKind::Locked,
        ErrorKind::NotFound,
        ErrorKind::Exists,
        ErrorKind::UnsafeTarget,
        ErrorKind::NotPermitted,
        ErrorKind::Source,
        ErrorKind::Cancelled,
        ErrorKind::Internal,
        ErrorKind::Partial,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NoRepository => "no_repository",
            ErrorKind::DiskSpace => "disk_space",
            ErrorKind::Settings => "settings",
            ErrorKind::Format => "format",
            ErrorKind::Io => "io",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Crypto => "crypto",
            ErrorKind::Index => "index",
            ErrorKind::Locked => "locked",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Exists => "exists",
            ErrorKind::UnsafeTarget => "unsafe_target",
            ErrorKind::NotPermitted => "not_permitted",
            ErrorKind::Source => "source",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
            ErrorKind::Partial => "partial",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_match_serde() {
        let mut seen = std::collections::HashSet::new();
        for k in ErrorKind::ALL {
            assert!(seen.insert(k.as_str()), "{k:?}");
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
    }
}
