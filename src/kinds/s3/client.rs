//! aws-sdk-s3 for homelab servers, and the streamed, verified, resumable download.
//!
//! Recent SDKs compute and validate CRC checksums by default, which several Ceph RGW and
//! MinIO versions reject or answer inconsistently: here checksums are "when required",
//! and integrity is checked by this module — the length against the listing, and the MD5
//! where the ETag is one (single-part uploads). The SDK's own retries are off: one policy
//! here (attempts, exponential backoff with jitter) covers 5xx, throttling, timeouts and
//! resets, and a body cut short is resumed with `Range` + `If-Match`, so the bytes the
//! archiver already took stay valid.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use md5::{Digest, Md5};
use tokio::sync::{mpsc, oneshot};

use super::{S3Error, S3Job, etag_md5};

/// An object as listed.
#[derive(Clone, Debug)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// Nanoseconds since the epoch.
    pub last_modified_ns: i64,
}

/// What a GET's headers say about an object (kept in the entry for restore).
#[derive(Clone, Debug, Default)]
pub struct Headers {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub cache_control: Option<String>,
    pub content_disposition: Option<String>,
    pub user: BTreeMap<String, String>,
    pub etag: Option<String>,
    /// The object as it was read (it may have been replaced since it was listed).
    pub size: u64,
    pub last_modified_ns: Option<i64>,
}

pub struct S3 {
    pub client: aws_sdk_s3::Client,
    pub rt: tokio::runtime::Runtime,
    pub endpoint: String,
    pub timeout: Duration,
    pub attempts: u32,
}

/// An access or secret key from its file: the first line, trimmed.
pub fn read_secret(path: &std::path::Path) -> Result<String, S3Error> {
    let line = crate::kinds::secret_line(path)
        .map_err(|e| S3Error::Settings(format!("{}: {e}", path.display())))?;
    match line.as_deref().map(|l| l.trim()) {
        Some(s) if !s.is_empty() => Ok(s.to_string()),
        _ => Err(S3Error::Settings(format!("{} is empty", path.display()))),
    }
}

impl S3 {
    pub fn from_job(job: &S3Job) -> Result<S3, S3Error> {
        let ak = read_secret(&job.access_key_file)?;
        let sk = read_secret(&job.secret_key_file)?;
        S3::connect(
            &job.endpoint,
            &job.region,
            job.path_style,
            &ak,
            &sk,
            Duration::from_secs(job.request_timeout_secs),
            job.attempts,
        )
    }

    pub fn connect(
        endpoint: &str,
        region: &str,
        path_style: bool,
        access_key: &str,
        secret_key: &str,
        timeout: Duration,
        attempts: u32,
    ) -> Result<S3, S3Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3")
            .enable_all()
            .build()
            .map_err(|e| S3Error::Settings(format!("starting the S3 runtime: {e}")))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new(region.to_string()))
            .force_path_style(path_style)
            .credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "backuphub",
            ))
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10).min(timeout))
                    .read_timeout(timeout)
                    .build(),
            )
            .http_client(http)
            .build();
        Ok(S3 {
            client: aws_sdk_s3::Client::from_conf(config),
            rt,
            endpoint: endpoint.to_string(),
            timeout,
            attempts: attempts.max(1),
        })
    }

    /// Every bucket the credentials can list.
    pub fn list_buckets(&self) -> Result<Vec<String>, S3Error> {
        let out = self
            .rt
            .block_on(retrying(self.attempts, || {
                self.client.list_buckets().send()
            }))
            .map_err(|e| {
                S3Error::Fatal(format!(
                    "listing buckets at {}: {}",
                    self.endpoint,
                    describe(&e)
                ))
            })?;
        let mut names: Vec<String> = out
            .buckets()
            .iter()
            .filter_map(|b| b.name().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// One page of a bucket's listing (keys in byte order, as S3 lists them).
    pub fn list_page(
        &self,
        bucket: &str,
        token: Option<String>,
    ) -> Result<(Vec<Listed>, Option<String>), S3Error> {
        let out = self
            .rt
            .block_on(retrying(self.attempts, || {
                self.client
                    .list_objects_v2()
                    .bucket(bucket)
                    .set_continuation_token(token.clone())
                    .send()
            }))
            .map_err(|e| S3Error::Fatal(format!("listing bucket {bucket:?}: {}", describe(&e))))?;
        let items = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(Listed {
                    key: o.key()?.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().unwrap_or_default().to_string(),
                    last_modified_ns: o
                        .last_modified()
                        .map(|t| t.secs().saturating_mul(1_000_000_000) + t.subsec_nanos() as i64)
                        .unwrap_or(0),
                })
            })
            .collect();
        let next = if out.is_truncated().unwrap_or(false) {
            out.next_continuation_token().map(str::to_string)
        } else {
            None
        };
        Ok((items, next))
    }

    /// Starts downloading an object; its headers and body arrive through the returned
    /// handle. At most a few pieces are buffered.
    pub fn download(&self, bucket: &str, listed: &Listed) -> Download {
        let (htx, hrx) = oneshot::channel();
        let (btx, brx) = mpsc::channel(8);
        let task = Fetch {
            client: self.client.clone(),
            bucket: bucket.to_string(),
            listed: listed.clone(),
            attempts: self.attempts,
            timeout: self.timeout,
        };
        self.rt.spawn(task.run(htx, btx));
        Download {
            headers: Some(hrx),
            body: BodyReader {
                rx: brx,
                piece: Vec::new(),
                pos: 0,
            },
        }
    }
}

/// Retries an SDK call on what may pass (5xx, throttling, timeouts, connection errors).
pub async fn retrying<T, E, F, Fut>(
    attempts: u32,
    mut op: F,
) -> Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, aws_sdk_s3::config::http::HttpResponse>>>,
    E: ProvideErrorMetadata,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < attempts && transient(&e) => {
                tokio::time::sleep(backoff(attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether another attempt may succeed.
pub fn transient<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            status >= 500
                || status == 429
                || matches!(
                    s.err().code(),
                    Some("SlowDown" | "Throttling" | "RequestTimeout")
                )
        }
        _ => false,
    }
}

/// Exponential backoff from 200 ms with up to 100 % jitter, capped at 20 s.
pub fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.min(7)).min(20_000);
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    Duration::from_millis(base + u64::from(u32::from_le_bytes(r)) % base.max(1))
}

/// An SDK error as one line: the server's code and message, or the transport's reason.
pub fn describe<E: ProvideErrorMetadata + std::error::Error + 'static>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> String {
    match e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match (s.err().code(), s.err().message()) {
                (Some(c), Some(m)) => format!("{status} {c}: {m}"),
                (Some(c), None) => format!("{status} {c}"),
                _ => format!("HTTP {status}"),
            }
        }
        other => format!("{}", DisplayErrorContext(other)),
    }
}

pub struct Download {
    pub headers: Option<oneshot::Receiver<Result<Headers, String>>>,
    pub body: BodyReader,
}

impl Download {
    /// Waits for the response headers (or the reason there are none).
    pub fn headers(&mut self) -> Result<Headers, String> {
        match self.headers.take() {
            Some(rx) => rx
                .blocking_recv()
                .unwrap_or_else(|_| Err("the download ended without an answer".into())),
            None => Err("headers taken already".into()),
        }
    }
}

/// The body as a `Read`; a failed or cut-short download ends with an error.
pub struct BodyReader {
    rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    piece: Vec<u8>,
    pos: usize,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.piece.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(p)) => {
                    self.piece = p;
                    self.pos = 0;
                }
                Some(Err(m)) => return Err(std::io::Error::other(m)),
            }
        }
        let n = buf.len().min(self.piece.len() - self.pos);
        buf[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct Fetch {
    client: aws_sdk_s3::Client,
    bucket: String,
    listed: Listed,
    attempts: u32,
    timeout: Duration,
}

impl Fetch {
    async fn run(
        self,
        headers: oneshot::Sender<Result<Headers, String>>,
        body: mpsc::Sender<Result<Vec<u8>, String>>,
    ) {
        let mut headers = Some(headers);
        let mut received: u64 = 0;
        let mut md5 = Md5::new();
        let mut etag: Option<String> = None;
        let mut expected = self.listed.size;
        let mut attempt = 0;
        let mut last_error = String::new();
        let fail = |headers: &mut Option<oneshot::Sender<Result<Headers, String>>>, m: String| {
            if let Some(h) = headers.take() {
                let _ = h.send(Err(m.clone()));
            }
            m
        };
        loop {
            attempt += 1;
            if attempt > self.attempts {
                let m = fail(
                    &mut headers,
                    format!("gave up after {} attempts: {last_error}", self.attempts),
                );
                let _ = body.send(Err(m)).await;
                return;
            }
            if attempt > 1 {
                tokio::time::sleep(backoff(attempt - 1)).await;
            }
            let mut req = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&self.listed.key);
            // A resumed read must continue the same object the first answer came from:
            // one replaced meanwhile answers 412 instead of mixing two versions' bytes.
            // (The first read takes whatever the object is now; the entry says what.)
            if let Some(e) = &etag {
                req = req.if_match(e.clone());
            }
            if received > 0 {
                req = req.range(format!("bytes={received}-"));
            }
            let resp = match tokio::time::timeout(self.timeout, req.send()).await {
                Err(_) => {
                    last_error = format!("no answer within {} s", self.timeout.as_secs());
                    continue;
                }
                Ok(Err(e)) => {
                    last_error = describe(&e);
                    if transient(&e) {
                        continue;
                    }
                    let m = fail(&mut headers, last_error);
                    let _ = body.send(Err(m)).await;
                    return;
                }
                Ok(Ok(r)) => r,
            };
            last_error.clear();
            if let Some(h) = headers.take() {
                etag = resp.e_tag().map(str::to_string);
                expected = resp
                    .content_length()
                    .map_or(self.listed.size, |n| n.max(0) as u64);
                let _ = h.send(Ok(Headers {
                    content_type: resp.content_type().map(str::to_string),
                    content_encoding: resp.content_encoding().map(str::to_string),
                    cache_control: resp.cache_control().map(str::to_string),
                    content_disposition: resp.content_disposition().map(str::to_string),
                    user: resp
                        .metadata()
                        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                        .unwrap_or_default(),
                    etag: etag.clone(),
                    size: expected,
                    last_modified_ns: resp
                        .last_modified()
                        .map(|t| t.secs().saturating_mul(1_000_000_000) + t.subsec_nanos() as i64),
                }));
            }
            let mut stream = resp.body;
            loop {
                match tokio::time::timeout(self.timeout, stream.next()).await {
                    Err(_) => {
                        last_error = format!(
                            "the body stalled for {} s at byte {received}",
                            self.timeout.as_secs()
                        );
                        break;
                    }
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        last_error = format!("the body broke off at byte {received}: {e}");
                        break;
                    }
                    Ok(Some(Ok(bytes))) => {
                        md5.update(&bytes);
                        received += bytes.len() as u64;
                        if body.send(Ok(bytes.to_vec())).await.is_err() {
                            return; // the reader is gone (cancelled)
                        }
                    }
                }
            }
            if received < expected {
                if last_error.is_empty() {
                    last_error = format!("the body ended at byte {received} of {expected}");
                }
                continue; // resume from `received`
            }
            if received > expected {
                let _ = body
                    .send(Err(format!(
                        "got {received} bytes, Content-Length said {expected}"
                    )))
                    .await;
                return;
            }
            let want = etag_md5(etag.as_deref().unwrap_or(&self.listed.etag));
            if let Some(want) = want
                && md5.finalize().as_slice() != want
            {
                let _ = body
                    .send(Err(
                        "the body does not match its ETag (MD5): damaged in transit".into(),
                    ))
                    .await;
            }
            return;
        }
    }
}
