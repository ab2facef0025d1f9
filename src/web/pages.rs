//! The pages: overview, a job, a snapshot's tree.

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Form;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use bytesize::ByteSize;
use chrono::{DateTime, Utc};

use super::Web;
use super::auth::{self, CsrfForm, LoggedIn, session};
use crate::repo::Repository;
use crate::repo::id::Id;
use crate::repo::tree::{Entry, EntryKind, EntryPath};
use crate::runner::{Context, TriggerError};
use crate::state::{JobState, RunResult, Status};

/// How many entries a directory page lists; the rest is counted.
const MAX_ENTRIES: usize = 2000;
/// How long a page waits for the repository's lock (a prune holds it exclusively).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// What every page's frame needs.
pub(crate) struct Page {
    pub title: String,
    pub logged_in: bool,
    pub csrf: String,
    pub version: &'static str,
    pub login_enabled: bool,
}

impl Page {
    pub fn new(web: &Web, headers: &HeaderMap, title: &str) -> Page {
        let me = session(web, headers);
        Page {
            title: title.to_string(),
            logged_in: me.is_some(),
            csrf: me.map(|m| m.csrf).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION"),
            login_enabled: web.token.is_some(),
        }
    }
}

/// Renders a template; a template error is a bug, reported without a panic.
pub(crate) fn html(code: StatusCode, t: impl Template) -> Response {
    match t.render() {
        Ok(body) => (
            code,
            [
                (header::CACHE_CONTROL, "no-store"),
                // No scripts, no framing, nothing from elsewhere.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "same-origin"),
            ],
            Html(body),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "rendering failed").into_response()
        }
    }
}

pub(crate) async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("templates/style.css"),
    )
        .into_response()
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "—".into())
}

fn bytes(n: u64) -> String {
    ByteSize(n).display().iec().to_string()
}

/// Percent-encodes raw path bytes for a query string (names need not be UTF-8).
pub(crate) fn encode_path(p: &[u8]) -> String {
    let mut s = String::with_capacity(p.len());
    for &b in p {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                s.push(b as char)
            }
            _ => s.push_str(&format!("%{b:02X}")),
        }
    }
    s
}

/// The raw bytes of the `path` query parameter (percent-decoded; `+` is a space), without
/// leading or trailing slashes.
pub(crate) fn path_param(query: Option<&str>) -> EntryPath {
    let value = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| match pair.split_once('=') {
            Some(("path", v)) => Some(v),
            _ => None,
        });
    let Some(v) = value else {
        return EntryPath::new(Vec::new());
    };
    let v = v.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match (
            v[i],
            v.get(i + 1).copied().and_then(hex),
            v.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            (b'+', _, _) => out.push(b' '),
            (b, _, _) => out.push(b),
        }
        i += 1;
    }
    let start = out.iter().position(|b| *b != b'/').unwrap_or(out.len());
    let end = out
        .iter()
        .rposition(|b| *b != b'/')
        .map_or(start, |e| e + 1);
    EntryPath::new(out[start..end].to_vec())
}

struct JobRow {
    name: String,
    kind: String,
    status: &'static str,
    /// `status` as a CSS class.
    status_class: &'static str,
    last_run: String,
    next_run: String,
    last_error: Option<String>,
    snapshots: u64,
    drill: Option<String>,
}

fn status_of(j: &JobState) -> &'static str {
    if j.running {
        "running"
    } else {
        j.last_run
            .as_ref()
            .map_or("never run", |r| r.status.as_str())
    }
}

fn job_row(j: &JobState) -> JobRow {
    JobRow {
        name: j.name.clone(),
        kind: j.kind.clone(),
        status: status_of(j),
        status_class: match status_of(j) {
            "never run" => "never-run",
            other => other,
        },
        last_run: time(j.last_run.as_ref().map(|r| r.end)),
        next_run: time(j.next_run),
        last_error: j.last_run.as_ref().and_then(|r| r.error.clone()),
        snapshots: j.snapshots,
        drill: j.drill.as_ref().map(|d| {
            if d.ok {
                format!("restore drill passed {}", time(Some(d.time)))
            } else {
                format!(
                    "restore drill FAILED {}: {}",
                    time(Some(d.time)),
                    d.error.as_deref().unwrap_or("see the status API")
                )
            }
        }),
    }
}

struct VerifyView {
    schedule: String,
    subset: String,
    next_run: String,
    running: bool,
    last: Option<crate::verify::VerifyResult>,
    last_time: String,
    last_read: String,
    /// From the last run that ran to the end.
    damaged_chunks: u64,
    damaged_files: Vec<String>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    page: Page,
    status: Status,
    jobs: Vec<JobRow>,
    repo_size: String,
    disk: String,
    dedup: String,
    prune: String,
    verify: Option<VerifyView>,
}

pub(crate) async fn overview(State(web): State<Web>, headers: HeaderMap) -> Response {
    let status = web.ctx.state.status(Utc::now());
    let r = &status.repository;
    let disk = if r.disk_size_bytes > 0 {
        format!(
            "{} free of {} ({:.0} % used)",
            bytes(r.disk_free_bytes),
            bytes(r.disk_size_bytes),
            100.0 * (1.0 - r.disk_free_bytes as f64 / r.disk_size_bytes as f64)
        )
    } else {
        "unknown".into()
    };
    let prune = match (&status.prune.error, status.prune.last_success) {
        (Some(e), _) => format!("last prune failed: {e}"),
        (None, Some(t)) => format!("last prune {}", time(Some(t))),
        (None, None) => "no prune since the daemon started".into(),
    };
    let verify = status.verify.as_ref().map(|v| VerifyView {
        schedule: v.schedule.clone(),
        subset: v.read_data_subset.clone(),
        next_run: time(v.next_run),
        running: v.running,
        last_time: time(v.last.as_ref().map(|l| l.time)),
        last_read: v
            .last
            .as_ref()
            .map(|l| bytes(l.bytes_read))
            .unwrap_or_default(),
        last: v.last.clone(),
        damaged_chunks: v.last_damaged_chunks,
        damaged_files: v.last_damaged_files.clone(),
    });
    let page = Overview {
        page: Page::new(&web, &headers, "backuphub"),
        jobs: status.jobs.iter().map(job_row).collect(),
        repo_size: bytes(r.size_bytes),
        dedup: r
            .dedup_ratio
            .map(|d| format!("{d:.2}×"))
            .unwrap_or_else(|| "—".into()),
        disk,
        prune,
        verify,
        status,
    };
    html(StatusCode::OK, page)
}

struct SnapRow {
    id: String,
    short: String,
    time: String,
    status: String,
    entries: u64,
    size: String,
    stored: String,
}

struct RunRow {
    start: String,
    trigger: String,
    status: &'static str,
    duration: String,
    /// Full id and its short form.
    snapshot: Option<(String, String)>,
    error: Option<String>,
}

fn run_row(r: &RunResult) -> RunRow {
    RunRow {
        start: time(Some(r.start)),
        trigger: r.trigger.clone(),
        status: r.status.as_str(),
        duration: format!(
            "{:.1} s",
            (r.end - r.start).num_milliseconds() as f64 / 1000.0
        ),
        snapshot: r
            .snapshot
            .as_ref()
            .map(|s| (s.clone(), s.chars().take(8).collect())),
        error: r.error.clone(),
    }
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    page: Page,
    job: JobRow,
    schedule: String,
    snapshots: Result<Vec<SnapRow>, String>,
    runs: Vec<RunRow>,
}

pub(crate) async fn job(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let Some(state) = web.ctx.state.read(|s| s.jobs.get(&name).cloned()) else {
        return not_found(&web, &headers, "no such job");
    };
    let ctx = web.ctx.clone();
    let job = name.clone();
    // Manifests are plaintext: listing needs no identity.
    let snapshots = tokio::task::spawn_blocking(move || {
        let repo = ctx.repository().map_err(|e| e.to_string())?;
        let snaps = repo.snapshots().map_err(|e| e.to_string())?;
        Ok::<_, String>(
            snaps
                .into_iter()
                .rev()
                .filter(|s| s.snapshot.job == job)
                .map(|s| SnapRow {
                    id: s.id.to_hex(),
                    short: s.id.short(),
                    time: time(Some(s.snapshot.time)),
                    status: format!("{:?}", s.snapshot.status).to_lowercase(),
                    entries: s.snapshot.stats.entries,
                    size: bytes(s.snapshot.stats.total_bytes),
                    stored: bytes(s.snapshot.stats.stored_bytes),
                })
                .collect(),
        )
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
    .map_err(|e| web.ctx.redactor.redact(&e));
    let page = JobPage {
        page: Page::new(&web, &headers, &format!("job {name}")),
        schedule: format!("{} ({})", state.schedule, state.timezone),
        job: job_row(&state),
        runs: state.recent_runs.iter().map(run_row).collect(),
        snapshots,
    };
    html(StatusCode::OK, page)
}

pub(crate) async fn run_now(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let Some(me) = session(&web, &headers) else {
        return auth::to_login("/");
    };
    if !auth::csrf_ok(&me, &f.csrf) {
        return (StatusCode::FORBIDDEN, "bad or missing CSRF token").into_response();
    }
    match web.ctx.trigger(&name, "web") {
        // "Already running" is what the user wanted anyway: back to the overview.
        Ok(_) | Err(TriggerError::AlreadyRunning) => {
            Redirect::to(&format!("/#job-{name}")).into_response()
        }
        Err(_) => not_found(&web, &headers, "no such job"),
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    page: Page,
    message: &'a str,
}

pub(crate) fn not_found(web: &Web, headers: &HeaderMap, what: &str) -> Response {
    html(
        StatusCode::NOT_FOUND,
        Message {
            page: Page::new(web, headers, "not found"),
            message: what,
        },
    )
}

pub(crate) fn message(web: &Web, headers: &HeaderMap, code: StatusCode, what: &str) -> Response {
    html(
        code,
        Message {
            page: Page::new(web, headers, "backuphub"),
            message: what,
        },
    )
}

/// Why contents cannot be read on this machine, said plainly.
pub(crate) const NO_IDENTITY: &str = "This repository is encrypted, and this machine holds only the public keys (no repository.identity_file): snapshot contents cannot be browsed or downloaded here. That is by design: a thief of the Pi cannot read the backups either. Use `backuphub ls` / `restore --identity FILE` on a machine that has the identity.";

/// A handle that can read contents, and the shared lock that keeps prune away while it
/// reads; or a message for the user.
pub(crate) fn reader(
    ctx: &Arc<Context>,
) -> Result<(Arc<Repository>, crate::repo::lock::LockGuard), String> {
    let repo = ctx.repository().map_err(|e| e.to_string())?;
    if !repo.config().recipients.is_empty() && ctx.config.repository.identity_file.is_none() {
        return Err(NO_IDENTITY.into());
    }
    ctx.read_locked(LOCK_WAIT, true).map_err(|e| {
        if e.kind() == crate::error::ErrorKind::Locked {
            format!("the repository is busy (a prune holds it); try again in a minute ({e})")
        } else {
            e.to_string()
        }
    })
}

/// A snapshot id from a URL: the whole hex id, nothing else.
pub(crate) fn snapshot_id(s: &str) -> Option<Id> {
    (s.len() == 64).then(|| s.parse().ok()).flatten()
}

struct EntryRow {
    path: String,
    name: String,
    kind: &'static str,
    mode: String,
    size: String,
    mtime: String,
    link_target: Option<String>,
    meta: Vec<(String, String)>,
    browse: Option<String>,
    download: Option<String>,
    tar: Option<String>,
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Fifo => "fifo",
        EntryKind::CharDevice => "char-device",
        EntryKind::BlockDevice => "block-device",
    }
}

fn entry_row(id: &str, e: &Entry) -> EntryRow {
    let path = e.restore_path();
    let bytes_path = path.as_bytes();
    let name = bytes_path
        .rsplit(|b| *b == b'/')
        .next()
        .unwrap_or(bytes_path);
    let enc = encode_path(bytes_path);
    EntryRow {
        path: path.display(),
        name: String::from_utf8_lossy(name).into_owned(),
        kind: kind_name(e.kind),
        mode: format!("{:o}", e.mode & 0o7777),
        size: if e.kind == EntryKind::File {
            bytes(e.size)
        } else {
            String::new()
        },
        mtime: DateTime::from_timestamp(e.mtime_ns.div_euclid(1_000_000_000), 0)
            .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_default(),
        link_target: e
            .link_target
            .as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned()),
        meta: e.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        browse: (e.kind == EntryKind::Dir).then(|| format!("/snapshots/{id}?path={enc}")),
        download: (e.kind == EntryKind::File).then(|| format!("/snapshots/{id}/file?path={enc}")),
        tar: (e.kind == EntryKind::Dir).then(|| format!("/snapshots/{id}/tar?path={enc}")),
    }
}

/// What follows `dir/` in `e` (all of `e` when `dir` is the root); `None` when `e` is
/// not below `dir`.
fn below<'a>(dir: &EntryPath, e: &'a EntryPath) -> Option<&'a [u8]> {
    let (d, p) = (dir.as_bytes(), e.as_bytes());
    if d.is_empty() {
        return (!p.is_empty()).then_some(p);
    }
    (p.len() > d.len() + 1 && p.starts_with(d) && p[d.len()] == b'/').then(|| &p[d.len() + 1..])
}

/// The first component of `e` below `dir`, when `e` lies deeper than directly in it.
fn first_below<'a>(dir: &EntryPath, e: &'a EntryPath) -> Option<&'a [u8]> {
    let rest = below(dir, e)?;
    let slash = rest.iter().position(|b| *b == b'/')?;
    (slash > 0).then(|| &rest[..slash])
}

/// A directory that only the paths below it imply.
fn implied_dir_row(id: &str, path: &EntryPath) -> EntryRow {
    let enc = encode_path(path.as_bytes());
    let b = path.as_bytes();
    EntryRow {
        path: path.display(),
        name: String::from_utf8_lossy(b.rsplit(|c| *c == b'/').next().unwrap_or(b)).into_owned(),
        kind: "dir",
        mode: String::new(),
        size: String::new(),
        mtime: String::new(),
        link_target: None,
        meta: Vec::new(),
        browse: Some(format!("/snapshots/{id}?path={enc}")),
        download: None,
        tar: Some(format!("/snapshots/{id}/tar?path={enc}")),
    }
}

/// True when `e` lies directly in `dir` (the root when `dir` is empty).
fn is_child(dir: &EntryPath, e: &EntryPath) -> bool {
    below(dir, e).is_some_and(|rest| !rest.contains(&b'/'))
}

struct Listing {
    entries: Vec<EntryRow>,
    more: u64,
    errors: Vec<String>,
    failures: Result<Vec<crate::repo::snapshot::Failure>, String>,
}

#[derive(Template)]
#[template(path = "snapshot.html")]
struct SnapshotPage {
    page: Page,
    short: String,
    job: String,
    time: String,
    status: String,
    host: String,
    stats: crate::repo::snapshot::SnapshotStats,
    total: String,
    stored: String,
    crumbs: Vec<(String, String)>,
    up_tar: String,
    up_tar_label: &'static str,
    listing: Result<Listing, String>,
}

pub(crate) async fn snapshot(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let here = match &query {
        Some(q) => format!("/snapshots/{id}?{q}"),
        None => format!("/snapshots/{id}"),
    };
    let Some(_me): Option<LoggedIn> = session(&web, &headers) else {
        return auth::to_login(&here);
    };
    let Some(sid) = snapshot_id(&id) else {
        return not_found(&web, &headers, "no such snapshot (ids are 64 hex digits)");
    };
    let dir = path_param(query.as_deref());
    let ctx = web.ctx.clone();
    let dir2 = dir.clone();
    let id2 = id.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let manifest = ctx
            .repository()
            .and_then(|r| r.load_snapshot(&sid).map_err(Into::into))
            .map_err(|e| e.to_string())?;
        let listing = reader(&ctx).map(|(repo, _lock)| {
            let failures = repo
                .open_details(&manifest)
                .map(|d| d.failures)
                .map_err(|e| e.to_string());
            let mut entries = Vec::new();
            let mut more = 0u64;
            let mut errors = Vec::new();
            // Names listed here: a directory that has no entry of its own (S3 keys,
            // Kubernetes objects: `ns/kind/name.yaml`) is listed once, from its first key.
            let mut names: std::collections::HashSet<Vec<u8>> = Default::default();
            let mut last_implied: Option<Vec<u8>> = None;
            for e in repo.entries(&manifest) {
                let e = match e {
                    Ok(e) => e,
                    Err(e) => {
                        errors.push(e.to_string());
                        continue;
                    }
                };
                let p = e.restore_path();
                let full = entries.len() >= MAX_ENTRIES;
                if is_child(&dir2, &p) {
                    let name = p
                        .as_bytes()
                        .rsplit(|b| *b == b'/')
                        .next()
                        .unwrap_or_default();
                    if full {
                        more += 1;
                    } else if names.insert(name.to_vec()) {
                        entries.push(entry_row(&id2, &e));
                    }
                } else if let Some(first) = first_below(&dir2, &p) {
                    // Past the limit only counted, against the previous name (keys come
                    // sorted), so `names` stays as small as the page.
                    if full {
                        if last_implied.as_deref() != Some(first) {
                            more += 1;
                            last_implied = Some(first.to_vec());
                        }
                    } else if names.insert(first.to_vec()) {
                        entries.push(implied_dir_row(&id2, &dir2.join(first)));
                    }
                }
            }
            Listing {
                entries,
                more,
                errors,
                failures,
            }
        });
        Ok::<_, String>((manifest, listing))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let (manifest, listing) = match loaded {
        Ok(x) => x,
        Err(e) => {
            return message(
                &web,
                &headers,
                StatusCode::NOT_FOUND,
                &web.ctx.redactor.redact(&e),
            );
        }
    };
    let mut crumbs = vec![("/".to_string(), format!("/snapshots/{id}"))];
    let mut acc: Vec<u8> = Vec::new();
    for part in dir
        .as_bytes()
        .split(|b| *b == b'/')
        .filter(|p| !p.is_empty())
    {
        if !acc.is_empty() {
            acc.push(b'/');
        }
        acc.extend_from_slice(part);
        crumbs.push((
            String::from_utf8_lossy(part).into_owned(),
            format!("/snapshots/{id}?path={}", encode_path(&acc)),
        ));
    }
    let page = SnapshotPage {
        page: Page::new(&web, &headers, &format!("snapshot {}", sid.short())),
        short: sid.short(),
        job: manifest.job.clone(),
        time: time(Some(manifest.time)),
        status: format!("{:?}", manifest.status).to_lowercase(),
        host: manifest.host.clone(),
        total: bytes(manifest.stats.total_bytes),
        stored: bytes(manifest.stats.stored_bytes),
        stats: manifest.stats.clone(),
        up_tar: format!("/snapshots/{id}/tar?path={}", encode_path(dir.as_bytes())),
        up_tar_label: if dir.as_bytes().is_empty() {
            "download the whole snapshot (tar)"
        } else {
            "download this directory (tar)"
        },
        crumbs,
        listing: listing.map_err(|e| web.ctx.redactor.redact(&e)),
    };
    html(StatusCode::OK, page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_through_the_query_string() {
        for raw in [&b"srv/photos/a b+c%d.jpg"[..], b"caf\xc3\xa9/\xff\xfe", b""] {
            let q = format!("x=1&path={}", encode_path(raw));
            assert_eq!(path_param(Some(&q)).as_bytes(), raw);
        }
        assert_eq!(path_param(Some("path=/a/b/")).as_bytes(), b"a/b");
        assert_eq!(path_param(Some("path=a+b")).as_bytes(), b"a b");
        assert_eq!(path_param(Some("path=%zz%4")).as_bytes(), b"%zz%4");
        assert_eq!(path_param(None).as_bytes(), b"");
    }

    #[test]
    fn children_are_one_level_below() {
        let d = EntryPath::from("a/b");
        assert!(is_child(&d, &EntryPath::from("a/b/c")));
        assert!(!is_child(&d, &EntryPath::from("a/b/c/d")));
        assert!(!is_child(&d, &EntryPath::from("a/bc")));
        assert!(!is_child(&d, &EntryPath::from("a/b")));
        let root = EntryPath::from("");
        assert!(is_child(&root, &EntryPath::from("a")));
        assert!(!is_child(&root, &EntryPath::from("a/b")));
        assert_eq!(
            first_below(&root, &EntryPath::from("a/b/c")),
            Some(&b"a"[..])
        );
        assert_eq!(
            first_below(&d, &EntryPath::from("a/b/c/d")),
            Some(&b"c"[..])
        );
        assert_eq!(first_below(&d, &EntryPath::from("a/b/c")), None);
        assert_eq!(first_below(&d, &EntryPath::from("a/bc/d")), None);
    }

    #[test]
    fn only_whole_ids_name_a_snapshot() {
        assert!(snapshot_id(&"ab".repeat(32)).is_some());
        assert!(snapshot_id("abcd").is_none());
        assert!(snapshot_id(&"zz".repeat(32)).is_none());
    }
}
