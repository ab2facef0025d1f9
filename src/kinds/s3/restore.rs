//! `restore-s3`: a snapshot's objects back into a bucket of any S3 server (RGW, or the
//! Pi's MinIO when the cluster is gone), with their content type, encoding, cache
//! control, disposition and user metadata. The bucket is created if needed; an object
//! already there with the same ETag is skipped; large objects go up in parts, streamed
//! from the repository (one part in memory).

use std::collections::{BTreeSet, HashMap};
use std::io::Read;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use md5::{Digest, Md5};
use serde::Serialize;

use super::client::{S3, describe, retrying};
use super::{S3Error, meta};
use crate::repo::Repository;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Entry, EntryKind};
use crate::restore::EntryContent;

/// Objects above this go up in parts of this size.
pub const PART: usize = 16 << 20;

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    pub bucket: String,
    /// The snapshot's bucket to restore; needed when it holds several.
    pub source_bucket: Option<String>,
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Replace objects that exist with other content.
    pub overwrite: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct RestoreReport {
    pub uploaded: u64,
    pub uploaded_bytes: u64,
    /// Already there with the same content.
    pub skipped: u64,
    pub failures: Vec<(String, String)>,
}

fn is_object(e: &Entry) -> bool {
    e.kind == EntryKind::File && e.meta.contains_key(meta::BUCKET) && e.meta.contains_key(meta::KEY)
}

pub fn restore(
    repo: &Repository,
    snap: &Snapshot,
    s3: &S3,
    opts: &RestoreOptions,
) -> Result<RestoreReport, S3Error> {
    // Which buckets the snapshot holds (metadata only).
    let mut buckets = BTreeSet::new();
    for e in repo.entries(snap) {
        let e = e?;
        if is_object(&e) {
            buckets.insert(e.meta[meta::BUCKET].clone());
        }
    }
    let source = match (&opts.source_bucket, buckets.len()) {
        (Some(b), _) if buckets.contains(b) => b.clone(),
        (Some(b), _) => {
            return Err(S3Error::Settings(format!(
                "the snapshot holds no bucket {b:?} (it holds {buckets:?})"
            )));
        }
        (None, 1) => buckets.iter().next().cloned().expect("one"),
        (None, 0) => return Err(S3Error::Settings("the snapshot holds no S3 objects".into())),
        (None, _) => {
            return Err(S3Error::Settings(format!(
                "the snapshot holds buckets {buckets:?}: choose one with --source-bucket"
            )));
        }
    };
    ensure_bucket(s3, &opts.bucket)?;
    let mut report = RestoreReport::default();
    for e in repo.entries(snap) {
        let e = e?;
        if !is_object(&e) || e.meta[meta::BUCKET] != source {
            continue;
        }
        let key = e.meta[meta::KEY].clone();
        if opts
            .prefix
            .as_ref()
            .is_some_and(|p| !key.starts_with(p.as_str()))
        {
            continue;
        }
        match put(repo, &e, s3, &opts.bucket, &key, opts.overwrite) {
            Ok(Some(n)) => {
                report.uploaded += 1;
                report.uploaded_bytes += n;
            }
            Ok(None) => report.skipped += 1,
            Err(m) => report.failures.push((key, m)),
        }
    }
    Ok(report)
}

fn ensure_bucket(s3: &S3, bucket: &str) -> Result<(), S3Error> {
    let head = s3
        .rt
        .block_on(s3.client.head_bucket().bucket(bucket).send());
    match head {
        Ok(_) => Ok(()),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => s3
            .rt
            .block_on(s3.client.create_bucket().bucket(bucket).send())
            .map(|_| ())
            .map_err(|e| S3Error::Fatal(format!("creating bucket {bucket:?}: {}", describe(&e)))),
        Err(e) => Err(S3Error::Fatal(format!(
            "bucket {bucket:?} at {}: {}",
            s3.endpoint,
            describe(&e)
        ))),
    }
}

/// Uploads one object unless an object with the same ETag is there. Returns the bytes
/// uploaded, or `None` when skipped.
fn put(
    repo: &Repository,
    e: &Entry,
    s3: &S3,
    bucket: &str,
    key: &str,
    overwrite: bool,
) -> Result<Option<u64>, String> {
    let etag = e.meta.get(meta::ETAG).cloned().unwrap_or_default();
    let head = s3
        .rt
        .block_on(s3.client.head_object().bucket(bucket).key(key).send());
    match head {
        Ok(h) if h.e_tag() == Some(etag.as_str()) && h.content_length() == Some(e.size as i64) => {
            return Ok(None);
        }
        Ok(_) if !overwrite => {
            return Err("exists with other content (use --overwrite to replace it)".into());
        }
        Ok(_) => {}
        Err(err)
            if err
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 404) => {}
        Err(err) => return Err(format!("HEAD: {}", describe(&err))),
    }
    let user: HashMap<String, String> = e
        .meta
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(meta::USER_PREFIX)?.to_string(), v.clone())))
        .collect();
    let get = |k: &str| e.meta.get(k).cloned();
    let mut content = EntryContent::new(repo, e);
    if e.size as usize <= PART {
        let mut body = Vec::with_capacity(e.size as usize);
        content
            .read_to_end(&mut body)
            .map_err(|err| format!("reading the snapshot: {err}"))?;
        let md5 = hex::encode(Md5::digest(&body));
        let n = body.len() as u64;
        let out = s3
            .rt
            .block_on(retrying(s3.attempts, || {
                s3.client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(ByteStream::from(body.clone()))
                    .set_content_type(get(meta::CONTENT_TYPE))
                    .set_content_encoding(get(meta::CONTENT_ENCODING))
                    .set_cache_control(get(meta::CACHE_CONTROL))
                    .set_content_disposition(get(meta::CONTENT_DISPOSITION))
                    .set_metadata(Some(user.clone()))
                    .send()
            }))
            .map_err(|err| format!("PUT: {}", describe(&err)))?;
        // Where the server answers with the body's MD5, it must be what was sent.
        if let Some(tag) = out.e_tag().and_then(super::etag_md5)
            && hex::encode(tag) != md5
        {
            return Err("the server stored other bytes than were sent (ETag mismatch)".into());
        }
        return Ok(Some(n));
    }
    let upload = s3
        .rt
        .block_on(
            s3.client
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .set_content_type(get(meta::CONTENT_TYPE))
                .set_content_encoding(get(meta::CONTENT_ENCODING))
                .set_cache_control(get(meta::CACHE_CONTROL))
                .set_content_disposition(get(meta::CONTENT_DISPOSITION))
                .set_metadata(Some(user))
                .send(),
        )
        .map_err(|err| format!("starting a multipart upload: {}", describe(&err)))?;
    let id = upload.upload_id().unwrap_or_default().to_string();
    let result = (|| -> Result<u64, String> {
        let mut parts = Vec::new();
        let mut total = 0u64;
        for number in 1.. {
            let mut part = Vec::with_capacity(PART);
            (&mut content)
                .take(PART as u64)
                .read_to_end(&mut part)
                .map_err(|err| format!("reading the snapshot: {err}"))?;
            if part.is_empty() {
                break;
            }
            total += part.len() as u64;
            let out = s3
                .rt
                .block_on(retrying(s3.attempts, || {
                    s3.client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(&id)
                        .part_number(number)
                        .body(ByteStream::from(part.clone()))
                        .send()
                }))
                .map_err(|err| format!("part {number}: {}", describe(&err)))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build(),
            );
        }
        s3.rt
            .block_on(
                s3.client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send(),
            )
            .map(|_| ())
            .or_else(|err| {
                // Some servers (moto) answer 200 with a body the SDK does not parse:
                // the object is then judged by what the server holds.
                let ok = err
                    .raw_response()
                    .is_some_and(|r| r.status().as_u16() == 200)
                    && s3
                        .rt
                        .block_on(s3.client.head_object().bucket(bucket).key(key).send())
                        .is_ok_and(|h| h.content_length() == Some(total as i64));
                if ok {
                    Ok(())
                } else {
                    Err(format!("completing the upload: {}", describe(&err)))
                }
            })?;
        Ok(total)
    })();
    if result.is_err() {
        // Leave no half upload billing for space.
        let _ = s3.rt.block_on(
            s3.client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&id)
                .send(),
        );
    }
    result.map(Some)
}
