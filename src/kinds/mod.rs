//! Job kinds that talk to a service: each lives in one module with its config type, its
//! [`Source`](crate::source::Source), its restore command and any drill. The archiver and
//! the repository know nothing about them.
//!
//! - [`kubernetes`]: every API object (CRDs and custom resources too, Secrets only when
//!   named), `restore-kubernetes` to apply-ready YAML in a safe order.
//! - [`s3`]: buckets pulled incrementally (unchanged objects cost no request),
//!   `restore-s3` into any S3 server.
//! - [`postgres`]: per-database dumps (custom, plain or row-ordered), `restore-postgres`,
//!   weekly restore drills into a throwaway server.
//! - [`volume`]: PVC contents (filesystem and block) from CSI snapshots through the API
//!   server, `restore-volume` back into a PVC.

pub mod kubernetes;
pub mod postgres;
pub mod s3;
pub mod volume;

/// A glob set over names (`*` matches `/` too: S3 keys and `resource.group` names are
/// not paths), with the pattern named in an error.
pub fn globs(patterns: &[String]) -> Result<globset::GlobSet, String> {
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        b.add(
            globset::GlobBuilder::new(p)
                .literal_separator(false)
                .build()
                .map_err(|e| format!("{p:?}: {e}"))?,
        );
    }
    b.build().map_err(|e| e.to_string())
}

/// The first line of a secret file (a password, an access key), without its line end,
/// wiped from memory on drop; `None` when that line is empty.
pub fn secret_line(path: &std::path::Path) -> std::io::Result<Option<zeroize::Zeroizing<String>>> {
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path)?);
    let first = text.lines().next().unwrap_or_default();
    Ok((!first.is_empty()).then(|| zeroize::Zeroizing::new(first.to_string())))
}
