//! The `s3` job kind: buckets of an S3 server (Ceph RGW, MinIO) pulled incrementally:
//! an object whose key, size, ETag and last-modified match the previous snapshot is not
//! downloaded again (no request at all), and `restore-s3` puts objects back into any S3
//! server with their metadata.
//!
//! - [`client`]: aws-sdk-s3 set up for non-AWS servers (path style, checksums only when
//!   required, our own integrity checks), a runtime, and the download task: streamed,
//!   resumed with `Range` + `If-Match`, verified by length and MD5 ETag.
//! - [`source`]: listing (ListObjectsV2 pages) merged with the previous snapshot in key
//!   order, at most `concurrency` downloads ahead, entries still in key order.
//! - [`restore`]: the `restore-s3` command.

pub mod client;
pub mod restore;
pub mod source;

use std::path::PathBuf;

use serde::Deserialize;

use super::globs;

/// The job's settings (`kind = "s3"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Job {
    /// `http://10.0.0.30:7480`
    pub endpoint: String,
    /// RGW's zonegroup name; any string for MinIO.
    #[serde(default = "default_region")]
    pub region: String,
    /// Path-style addressing (`endpoint/bucket/key`): homelab servers rarely have
    /// wildcard DNS.
    #[serde(default = "yes")]
    pub path_style: bool,
    pub access_key_file: PathBuf,
    pub secret_key_file: PathBuf,
    /// Buckets to back up; empty: every bucket the credentials can list.
    #[serde(default)]
    pub buckets: Vec<String>,
    /// Key globs.
    #[serde(default = "everything")]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Objects downloaded at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Attempts per object (GETs, with backoff and jitter) before it fails.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Seconds without progress before a request is given up.
    #[serde(default = "default_timeout")]
    pub request_timeout_secs: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn yes() -> bool {
    true
}
fn everything() -> Vec<String> {
    vec!["*".into()]
}
fn default_concurrency() -> usize {
    4
}
fn default_attempts() -> u32 {
    4
}
fn default_timeout() -> u64 {
    60
}

/// Metadata keys of an s3 entry. User metadata is kept as `x-amz-meta-<name>`.
pub mod meta {
    pub const BUCKET: &str = "bucket";
    pub const KEY: &str = "key";
    pub const ETAG: &str = "etag";
    pub const LAST_MODIFIED: &str = "last_modified";
    pub const CONTENT_TYPE: &str = "content_type";
    pub const CONTENT_ENCODING: &str = "content_encoding";
    pub const CACHE_CONTROL: &str = "cache_control";
    pub const CONTENT_DISPOSITION: &str = "content_disposition";
    pub const USER_PREFIX: &str = "x-amz-meta-";
}

/// Whether an ETag is the MD5 of the body: a single-part upload's is 32 hex digits; a
/// multipart one's has `-N`, and SSE-C/KMS ones are not MD5s either (they are then
/// checked by length only).
pub fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    let t = etag.trim_matches('"');
    if t.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(t, &mut out).ok()?;
    Some(out)
}

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// Endpoint unreachable, credentials refused, a bucket missing or not listable.
    #[error("{0}")]
    Fatal(String),
    #[error("{0}")]
    Object(String),
    #[error("{0}")]
    Repo(#[from] crate::repo::RepoError),
    #[error("{0}")]
    Settings(String),
}

pub fn validate(job: &S3Job) -> Result<(), (&'static str, String)> {
    if !(job.endpoint.starts_with("http://") || job.endpoint.starts_with("https://")) {
        return Err((
            "endpoint",
            format!("{:?} must be an http:// or https:// URL", job.endpoint),
        ));
    }
    if !(1..=64).contains(&job.concurrency) {
        return Err(("concurrency", "must be between 1 and 64".into()));
    }
    if !(1..=20).contains(&job.attempts) {
        return Err(("attempts", "must be between 1 and 20".into()));
    }
    if job.request_timeout_secs == 0 {
        return Err(("request_timeout_secs", "must be at least 1".into()));
    }
    for b in &job.buckets {
        if b.is_empty() || b.contains('/') {
            return Err(("buckets", format!("{b:?} is not a bucket name")));
        }
    }
    globs(&job.include).map_err(|e| ("include", e))?;
    globs(&job.exclude).map_err(|e| ("exclude", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_part_etags_are_md5s() {
        assert!(etag_md5("\"9e107d9d372bb6826bd81d3542a419d6\"").is_some());
        assert!(etag_md5("9e107d9d372bb6826bd81d3542a419d6-3").is_none());
        assert!(etag_md5("\"zz107d9d372bb6826bd81d3542a419d6\"").is_none());
    }
}
