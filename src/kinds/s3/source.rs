//! The s3 [`Source`]: buckets in name order, each listed page by page (ListObjectsV2;
//! keys in byte order), merged with the previous snapshot's entries in that order. An
//! object whose size, ETag and last-modified are unchanged reuses its chunks without a
//! request; the rest are downloaded, at most `concurrency` at a time and at most a few
//! pieces each buffered, while entries still reach the archiver in key order. Memory is
//! constant in the number of objects: one listing page, the objects ahead, the cursor
//! into the previous snapshot.

use std::collections::VecDeque;
use std::sync::Arc;

use super::client::{Download, Listed, S3};
use super::{S3Job, meta};
use crate::kinds::globs;
use crate::redact::Redactor;
use crate::repo::index::Previous;
use crate::repo::tree::{Entry, EntryKind, EntryPath};
use crate::source::{Content, Opener, Source, SourceEntry, SourceError};

/// Unchanged objects queued ahead of the archiver at most (they cost no request).
const MAX_AHEAD: usize = 1000;

pub struct S3Source {
    job: S3Job,
    redactor: Redactor,
}

impl S3Source {
    pub fn new(job: &S3Job, redactor: Redactor) -> S3Source {
        S3Source {
            job: job.clone(),
            redactor,
        }
    }
}

impl Source for S3Source {
    fn description(&self) -> String {
        format!("s3 {}", self.job.endpoint)
    }

    fn entries<'a>(
        &'a mut self,
        previous: Previous,
    ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a> {
        match Walk::start(&self.job, previous) {
            Ok(w) => Box::new(w),
            Err(m) => Box::new(std::iter::once(Err(SourceError::Fatal(
                self.redactor.redact(&m),
            )))),
        }
    }
}

enum Ahead {
    Reuse(Entry),
    Fetch(Entry, Download),
}

struct Walk {
    s3: Arc<S3>,
    include: globset::GlobSet,
    exclude: globset::GlobSet,
    buckets: VecDeque<String>,
    bucket: Option<String>,
    /// `Some(token)` while the bucket has pages left (`Some(None)`: its first).
    next_page: Option<Option<String>>,
    page: VecDeque<Listed>,
    ahead: VecDeque<Ahead>,
    fetching: usize,
    concurrency: usize,
    previous: Previous,
    failed: Option<String>,
}

impl Walk {
    fn start(job: &S3Job, previous: Previous) -> Result<Walk, String> {
        let s3 = S3::from_job(job).map_err(|e| e.to_string())?;
        let mut buckets = if job.buckets.is_empty() {
            s3.list_buckets().map_err(|e| e.to_string())?
        } else {
            job.buckets.clone()
        };
        // Entries are keyed `bucket/key`: `a-b/…` sorts before `a/…`.
        buckets.sort_by(|a, b| format!("{a}/").cmp(&format!("{b}/")));
        buckets.dedup();
        tracing::info!(buckets = buckets.len(), endpoint = %s3.endpoint, "listing S3 buckets");
        Ok(Walk {
            s3: Arc::new(s3),
            include: globs(&job.include)?,
            exclude: globs(&job.exclude)?,
            buckets: buckets.into(),
            bucket: None,
            next_page: None,
            page: VecDeque::new(),
            ahead: VecDeque::new(),
            fetching: 0,
            concurrency: job.concurrency.max(1),
            previous,
            failed: None,
        })
    }

    /// The next listed object to take, across pages and buckets. A bucket that cannot
    /// be listed fails the run.
    fn next_listed(&mut self) -> Result<Option<(String, Listed)>, String> {
        loop {
            if let Some(o) = self.page.pop_front() {
                let bucket = self.bucket.clone().expect("a page belongs to a bucket");
                if self.include.is_match(&o.key) && !self.exclude.is_match(&o.key) {
                    return Ok(Some((bucket, o)));
                }
                continue;
            }
            match self.next_page.take() {
                Some(token) => {
                    let bucket = self.bucket.clone().expect("listing a bucket");
                    let (items, next) = self
                        .s3
                        .list_page(&bucket, token)
                        .map_err(|e| e.to_string())?;
                    self.page = items.into();
                    self.next_page = next.map(Some);
                }
                None => {
                    let Some(b) = self.buckets.pop_front() else {
                        return Ok(None);
                    };
                    self.bucket = Some(b);
                    self.next_page = Some(None);
                }
            }
        }
    }

    /// Queues objects until `concurrency` downloads run or enough unchanged ones wait.
    fn fill(&mut self) -> Result<(), String> {
        while self.fetching < self.concurrency && self.ahead.len() < MAX_AHEAD {
            let Some((bucket, o)) = self.next_listed()? else {
                return Ok(());
            };
            let key = format!("{bucket}/{}", o.key);
            let mut entry = Entry::with_key(key.as_bytes(), EntryKind::File);
            entry.mode = 0o644;
            entry.size = o.size;
            entry.mtime_ns = o.last_modified_ns;
            let m = &mut entry.meta;
            m.insert(meta::BUCKET.into(), bucket.clone());
            m.insert(meta::KEY.into(), o.key.clone());
            m.insert(meta::ETAG.into(), o.etag.clone());
            m.insert(meta::LAST_MODIFIED.into(), o.last_modified_ns.to_string());
            let unchanged = self.previous.find(entry.sort_key()).filter(|p| {
                p.kind == EntryKind::File
                    && p.size == o.size
                    && p.meta.get(meta::ETAG) == Some(&o.etag)
                    && p.meta.get(meta::LAST_MODIFIED) == Some(&o.last_modified_ns.to_string())
                    && (!p.chunks.is_empty() || o.size == 0)
            });
            match unchanged {
                Some(prev) => {
                    // The headers (content type, user metadata) came with the same
                    // version: keep them.
                    entry.meta = prev.meta;
                    entry.chunks = prev.chunks;
                    self.ahead.push_back(Ahead::Reuse(entry));
                }
                None => {
                    let d = self.s3.download(&bucket, &o);
                    self.fetching += 1;
                    self.ahead.push_back(Ahead::Fetch(entry, d));
                }
            }
        }
        Ok(())
    }
}

/// Copies what a GET's headers say into the entry.
fn apply_headers(entry: &mut Entry, h: &super::client::Headers) {
    let m = &mut entry.meta;
    for (k, v) in [
        (meta::CONTENT_TYPE, &h.content_type),
        (meta::CONTENT_ENCODING, &h.content_encoding),
        (meta::CACHE_CONTROL, &h.cache_control),
        (meta::CONTENT_DISPOSITION, &h.content_disposition),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), v.clone());
        }
    }
    for (k, v) in &h.user {
        m.insert(format!("{}{k}", meta::USER_PREFIX), v.clone());
    }
}

impl Iterator for Walk {
    type Item = Result<SourceEntry, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(m) = self.failed.take() {
            return Some(Err(SourceError::Fatal(m)));
        }
        if let Err(m) = self.fill() {
            // What is queued is whole; the failure ends the run after it.
            if self.ahead.is_empty() {
                return Some(Err(SourceError::Fatal(m)));
            }
            self.failed = Some(m);
        }
        let item = self.ahead.pop_front()?;
        Some(match item {
            Ahead::Reuse(mut entry) => {
                let chunks = std::mem::take(&mut entry.chunks);
                let fallback = Box::new(Refetch {
                    s3: self.s3.clone(),
                    bucket: entry.meta.get(meta::BUCKET).cloned().unwrap_or_default(),
                    listed: Listed {
                        key: entry.meta.get(meta::KEY).cloned().unwrap_or_default(),
                        size: entry.size,
                        etag: entry.meta.get(meta::ETAG).cloned().unwrap_or_default(),
                        last_modified_ns: entry.mtime_ns,
                    },
                });
                if chunks.is_empty() {
                    Ok(SourceEntry {
                        entry,
                        content: Content::None,
                    })
                } else {
                    Ok(SourceEntry {
                        entry,
                        content: Content::Reuse {
                            chunks,
                            fallback: Some(fallback),
                        },
                    })
                }
            }
            Ahead::Fetch(mut entry, mut d) => {
                self.fetching -= 1;
                match d.headers() {
                    Ok(h) => {
                        apply_headers(&mut entry, &h);
                        entry.size = h.size;
                        Ok(SourceEntry {
                            entry,
                            content: Content::Read(Box::new(d.body)),
                        })
                    }
                    Err(m) => Err(SourceError::Entry {
                        path: EntryPath::new(entry.sort_key().to_vec()),
                        message: format!("GET failed: {m}"),
                    }),
                }
            }
        })
    }
}

/// Reads an unchanged object afresh when its chunks turned out to be gone.
struct Refetch {
    s3: Arc<S3>,
    bucket: String,
    listed: Listed,
}

impl Opener for Refetch {
    fn open(
        &mut self,
        _attempt: u32,
        entry: &mut Entry,
    ) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        let mut d = self.s3.download(&self.bucket, &self.listed);
        let h = d.headers().map_err(std::io::Error::other)?;
        apply_headers(entry, &h);
        entry.size = h.size;
        Ok(Box::new(d.body))
    }
}
