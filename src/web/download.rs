//! Downloads: one file, or a directory as a tar stream. Both stream from the repository
//! through a small channel (memory does not grow with the file), and both fail the
//! transfer — the body breaks, never a short "complete" download — when a chunk cannot
//! be read, a content is not the size its entry says, or the producer dies.

use std::io::{Read, Write};

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use tokio::sync::{mpsc, oneshot};

use super::Web;
use super::auth::{self, session};
use super::pages::{message, not_found, path_param, reader, snapshot_id};
use crate::repo::Repository;
use crate::repo::id::Id;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Entry, EntryKind, EntryPath};
use crate::restore::{EntryContent, EntryError, RestoreOptions, RestoreStats, Sink};

/// Bytes per message on the way to the client; a few are in flight at most, so a
/// download holds about a megabyte whatever the chunk size.
const PIECE: usize = 256 * 1024;
const PIECES_IN_FLIGHT: usize = 4;

/// What travels to the response body. A channel that closes without `Done` (the producer
/// panicked) breaks the body too: only an explicit end ends it cleanly.
enum Msg {
    Data(Bytes),
    Done,
    Fail(String),
}

/// A blocking writer feeding the response body.
struct ChannelWriter {
    tx: mpsc::Sender<Msg>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Msg>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
        }
    }

    /// Ends the body with an error: the client sees a broken transfer.
    fn fail(&self, why: String) {
        let _ = self.tx.blocking_send(Msg::Fail(why));
    }

    /// Sends what is left and ends the body cleanly.
    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.tx.blocking_send(Msg::Done).map_err(|_| gone())
    }
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        // At most one piece at a time, whatever the caller hands over (a 4 MiB chunk).
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx.blocking_send(Msg::Data(piece)).map_err(|_| gone())
    }
}

fn body(rx: mpsc::Receiver<Msg>) -> Body {
    let stream = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let why = match rx.recv().await {
            Some(Msg::Data(b)) => return Some((Ok(b), Some(rx))),
            Some(Msg::Done) => return None,
            Some(Msg::Fail(why)) => why,
            None => "the download ended before its end".to_string(),
        };
        Some((Err(std::io::Error::other(why)), None))
    });
    Body::from_stream(stream)
}

/// Ends a download that failed: logged (damage is a warning, a client that left is not)
/// and the body broken.
fn cut(out: &ChannelWriter, path: &EntryPath, why: String) {
    if out.tx.is_closed() {
        tracing::debug!(path = %path, "download ended: the client went away");
    } else {
        tracing::warn!(path = %path, error = %why, "download cut");
        out.fail(why);
    }
}

/// `attachment` with an ASCII fallback name and the exact name in RFC 5987 form.
fn disposition(name: &[u8]) -> HeaderValue {
    let ascii: String = String::from_utf8_lossy(name)
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let ascii = if ascii.trim().is_empty() {
        "download".to_string()
    } else {
        ascii
    };
    // A last path component: no `/` to keep.
    let exact = super::pages::encode_path(name);
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{exact}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

fn last_component(p: &EntryPath) -> &[u8] {
    let b = p.as_bytes();
    b.rsplit(|c| *c == b'/').next().unwrap_or(b)
}

/// What the blocking side says before the first byte: the headers, or why not.
enum Start {
    File { name: Vec<u8>, size: u64 },
    Tar { name: Vec<u8> },
    Refused(StatusCode, String),
}

async fn respond(
    web: &Web,
    headers: &HeaderMap,
    started: oneshot::Receiver<Start>,
    rx: mpsc::Receiver<Msg>,
) -> Response {
    let Ok(start) = started.await else {
        return message(
            web,
            headers,
            StatusCode::INTERNAL_SERVER_ERROR,
            "the download ended before it began",
        );
    };
    let (ctype, name, len) = match start {
        Start::File { name, size } => ("application/octet-stream", name, Some(size)),
        Start::Tar { mut name } => {
            name.extend_from_slice(b".tar");
            ("application/x-tar", name, None)
        }
        Start::Refused(code, why) => {
            return message(web, headers, code, &web.ctx.redactor.redact(&why));
        }
    };
    let mut r = Response::new(body(rx));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CONTENT_DISPOSITION, disposition(&name));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(len) = len {
        // A client can tell a cut transfer from a complete one.
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    r
}

/// Checks the session and the snapshot id; `Err` is the response to send (boxed: it is
/// large, and the common case is `Ok`).
fn admit(
    web: &Web,
    headers: &HeaderMap,
    id: &str,
    kind: &str,
    query: &Option<String>,
) -> Result<(crate::repo::id::Id, EntryPath), Box<Response>> {
    if session(web, headers).is_none() {
        let q = query.as_deref().unwrap_or("");
        return Err(Box::new(auth::to_login(&format!(
            "/snapshots/{id}/{kind}?{q}"
        ))));
    }
    let Some(sid) = snapshot_id(id) else {
        return Err(Box::new(not_found(web, headers, "no such snapshot")));
    };
    Ok((sid, path_param(query.as_deref())))
}

/// The common part of both downloads: the session, the snapshot, a reader holding the
/// shared lock, then `produce` on a blocking thread, which first says how to start
/// (headers or a refusal) and then writes the body.
async fn download(
    web: Web,
    headers: HeaderMap,
    id: String,
    what: &str,
    query: Option<String>,
    produce: impl FnOnce(&Repository, Snapshot, Id, EntryPath, oneshot::Sender<Start>, ChannelWriter)
    + Send
    + 'static,
) -> Response {
    let (sid, path) = match admit(&web, &headers, &id, what, &query) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let (tx, rx) = mpsc::channel(PIECES_IN_FLIGHT);
    let (start_tx, start_rx) = oneshot::channel();
    let ctx = web.ctx.clone();
    tokio::task::spawn_blocking(move || {
        let (repo, _lock) = match reader(&ctx) {
            Ok(x) => x,
            Err(why) => {
                let _ = start_tx.send(Start::Refused(StatusCode::SERVICE_UNAVAILABLE, why));
                return;
            }
        };
        match repo.load_snapshot(&sid) {
            Ok(snap) => produce(&repo, snap, sid, path, start_tx, ChannelWriter::new(tx)),
            Err(e) => {
                let _ = start_tx.send(Start::Refused(StatusCode::NOT_FOUND, e.to_string()));
            }
        }
    });
    respond(&web, &headers, start_rx, rx).await
}

pub(crate) async fn file(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    download(web, headers, id, "file", query, send_file).await
}

fn send_file(
    repo: &Repository,
    snap: Snapshot,
    _: Id,
    path: EntryPath,
    start: oneshot::Sender<Start>,
    mut out: ChannelWriter,
) {
    let entry = match crate::restore::find_entry(repo, &snap, &path) {
        Ok(e) if e.kind == EntryKind::File => e,
        Ok(_) => {
            let _ = start.send(Start::Refused(
                StatusCode::BAD_REQUEST,
                format!("{path} is not a file (a directory downloads as a tar)"),
            ));
            return;
        }
        Err(e) => {
            let _ = start.send(Start::Refused(StatusCode::NOT_FOUND, e.to_string()));
            return;
        }
    };
    let _ = start.send(Start::File {
        name: last_component(&path).to_vec(),
        size: entry.size,
    });
    let mut content = EntryContent::new(repo, &entry);
    // Exactly the size the headers promised, and nothing after it: a longer content is
    // damage too, and must not reach the client as a "complete" file cut at its length.
    let copied = std::io::copy(&mut (&mut content).take(entry.size), &mut out);
    let mut probe = [0u8; 1];
    let outcome = match copied {
        Ok(n) if n < entry.size => Err(format!(
            "{path}: {n} bytes, the snapshot says {}",
            entry.size
        )),
        Ok(_) => match content.read(&mut probe) {
            Ok(0) => out.finish().map_err(|e| e.to_string()),
            Ok(_) => Err(format!("{path}: longer than the snapshot says")),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    if let Err(why) = outcome {
        cut(&out, &path, why);
    }
}

/// Writes the selected entries as a tar stream. Paths in the archive start at the
/// directory asked for (`photos/2024/a.jpg` for `srv/photos`). The headers go out with
/// the first entry, so a path with nothing below it is a 404, not an empty archive.
struct TarSink {
    tar: tar::Builder<ChannelWriter>,
    /// Bytes of the path to strip: the parent of the directory asked for.
    strip: usize,
    start: Option<oneshot::Sender<Start>>,
    name: Vec<u8>,
    /// Symlinks written that later entries could lie below (entries come sorted, so only
    /// those whose path is a prefix of the current one are kept: a stack, not a set).
    links: Vec<Vec<u8>>,
}

impl TarSink {
    /// What makes the archive unsafe to unpack or untrue: the entry fails, and the
    /// restore stops (the error is fatal), so the body is cut.
    fn refuse(&self, e: &Entry, why: &str) -> EntryError {
        EntryError::Aborted(format!("{}: {why}; the archive is cut", e.path))
    }
}

impl Sink for TarSink {
    fn entry(&mut self, e: &Entry, content: &mut EntryContent<'_>) -> Result<u64, EntryError> {
        use std::os::unix::ffi::OsStrExt;
        if let Some(start) = self.start.take() {
            let _ = start.send(Start::Tar {
                name: self.name.clone(),
            });
        }
        let path = e.restore_path();
        // A hostile repository could name `../../etc/cron.d/x`, or a symlink `d/l -> /etc`
        // and then `d/l/cron.d/x`: neither goes into an archive someone will unpack.
        if !path.is_safe() {
            return Err(self.refuse(e, "unsafe path in the snapshot"));
        }
        let p = path.as_bytes();
        self.links.retain(|l| p.starts_with(l));
        if self
            .links
            .iter()
            .any(|l| p.len() > l.len() && p[l.len()] == b'/')
        {
            return Err(self.refuse(e, "lies below a symlink of the snapshot"));
        }
        let name = &p[self.strip..];
        let name = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
        let mut h = tar::Header::new_gnu();
        // No setuid/setgid bits: `restore` clears them unless asked, and so does this.
        h.set_mode(e.mode & 0o1777);
        h.set_uid(e.uid.into());
        h.set_gid(e.gid.into());
        h.set_mtime(e.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
        let written = match e.kind {
            EntryKind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.size);
                // The header promises `size` bytes: exactly those are read, and a content
                // that is shorter or longer fails (tar pads a short one silently).
                let mut limited = (&mut *content).take(e.size);
                let r = self.tar.append_data(&mut h, name, &mut limited);
                let n = e.size - limited.limit();
                let mut probe = [0u8; 1];
                match r {
                    Ok(()) if n == e.size => match content.read(&mut probe) {
                        Ok(0) => Ok(e.size),
                        Ok(_) => Err("longer than the snapshot says".to_string()),
                        Err(err) => Err(err.to_string()),
                    },
                    Ok(()) => Err(format!("{n} bytes, the snapshot says {}", e.size)),
                    Err(err) => Err(err.to_string()),
                }
            }
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                self.tar
                    .append_data(&mut h, name, std::io::empty())
                    .map(|()| 0)
                    .map_err(|err| err.to_string())
            }
            EntryKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                let target = e.link_target.clone().unwrap_or_default();
                let target = std::path::Path::new(std::ffi::OsStr::from_bytes(&target));
                self.links.push(p.to_vec());
                self.tar
                    .append_link(&mut h, name, target)
                    .map(|()| 0)
                    .map_err(|err| err.to_string())
            }
            // Device nodes and FIFOs carry no data; a download has no use for them.
            _ => Ok(0),
        };
        written.map_err(|why| self.refuse(e, &why))
    }

    fn finish(&mut self, _stats: &mut RestoreStats) -> Result<(), crate::restore::RestoreError> {
        Ok(())
    }
}

pub(crate) async fn tar(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    download(web, headers, id, "tar", query, send_tar).await
}

fn send_tar(
    repo: &Repository,
    snap: Snapshot,
    sid: Id,
    path: EntryPath,
    start: oneshot::Sender<Start>,
    out: ChannelWriter,
) {
    let name = if path.as_bytes().is_empty() {
        format!("{}-{}", snap.job, sid.short()).into_bytes()
    } else {
        last_component(&path).to_vec()
    };
    let strip = match path.as_bytes().iter().rposition(|b| *b == b'/') {
        Some(i) => i + 1,
        None => 0,
    };
    let mut sink = TarSink {
        tar: tar::Builder::new(out),
        strip,
        start: Some(start),
        name,
        links: Vec::new(),
    };
    let opts = RestoreOptions {
        only: (!path.as_bytes().is_empty()).then(|| path.clone()),
        overwrite: false,
    };
    let result = crate::restore::restore_to(repo, &snap, &mut sink, &opts, &mut || {});
    if let Some(start) = sink.start.take() {
        // Nothing was written: no archive at all, and the reason.
        let why = match result {
            Ok(_) => format!("nothing at {path} in this snapshot"),
            Err(e) => e.to_string(),
        };
        let _ = start.send(Start::Refused(StatusCode::NOT_FOUND, why));
        return;
    }
    let why = match result {
        Ok(_) => {
            // The end-of-archive blocks, the last piece, then the clean end.
            match sink.tar.into_inner() {
                Ok(mut out) => {
                    if let Err(e) = out.finish() {
                        cut(&out, &path, e.to_string());
                    }
                }
                Err(e) => tracing::debug!(error = %e, "tar download not finished"),
            }
            return;
        }
        Err(crate::restore::RestoreError::Incomplete(stats)) => format!(
            "{} entries could not be read: {}",
            stats.failures.len(),
            stats
                .failures
                .iter()
                .take(3)
                .map(|f| format!("{} ({})", f.path, f.error))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Err(e) => e.to_string(),
    };
    // The end-of-archive blocks are never sent: the body breaks, and `tar` reports it.
    cut(sink.tar.get_ref(), &path, why);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Content, Source, SourceEntry, SourceError};

    /// A snapshot of exactly these entries (a hostile repository can hold anything).
    fn snapshot(dir: &std::path::Path, entries: Vec<(Entry, Vec<u8>)>) -> (Repository, Snapshot) {
        struct Canned(Vec<(Entry, Vec<u8>)>);
        impl Source for Canned {
            fn description(&self) -> String {
                "canned".into()
            }
            fn entries<'a>(
                &'a mut self,
                _: crate::repo::index::Previous,
            ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a> {
                Box::new(self.0.drain(..).map(|(entry, data)| {
                    let content = if entry.kind == EntryKind::File {
                        Content::Read(Box::new(std::io::Cursor::new(data)))
                    } else {
                        Content::None
                    };
                    Ok(SourceEntry { entry, content })
                }))
            }
        }
        let opts = crate::repo::OpenOptions {
            identity: None,
            state_dir: dir.join("state"),
        };
        let repo = Repository::init(&dir.join("repo"), &opts, &Default::default()).unwrap();
        let (_, snap) = crate::archiver::archive(
            &repo,
            "job",
            &mut Canned(entries),
            &Default::default(),
            &Default::default(),
            &|| Ok(()),
        )
        .unwrap();
        (repo, snap)
    }

    fn file(path: &str, data: &[u8], mode: u32) -> (Entry, Vec<u8>) {
        let mut e = Entry::new(EntryPath::from(path), EntryKind::File);
        e.size = data.len() as u64;
        e.mode = mode;
        (e, data.to_vec())
    }

    fn dir(path: &str) -> (Entry, Vec<u8>) {
        let mut e = Entry::new(EntryPath::from(path), EntryKind::Dir);
        e.mode = 0o755;
        (e, Vec::new())
    }

    /// Runs `send_tar` for `path` and collects what the body would get: the start, the
    /// bytes, and whether it ended cleanly.
    fn tar_of(repo: &Repository, snap: &Snapshot, path: &str) -> (Start, Vec<u8>, Option<String>) {
        let (tx, mut rx) = mpsc::channel(PIECES_IN_FLIGHT);
        let (start_tx, start_rx) = oneshot::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                send_tar(
                    repo,
                    snap.clone(),
                    Id::of(b"x"),
                    EntryPath::from(path),
                    start_tx,
                    ChannelWriter::new(tx),
                )
            });
            let start = start_rx.blocking_recv().unwrap();
            let (mut bytes, mut end) = (Vec::new(), Some("closed without an end".to_string()));
            while let Some(m) = rx.blocking_recv() {
                match m {
                    Msg::Data(b) => bytes.extend_from_slice(&b),
                    Msg::Done => end = None,
                    Msg::Fail(why) => end = Some(why),
                }
            }
            (start, bytes, end)
        })
    }

    #[test]
    fn a_tar_carries_no_setuid_bits_and_ends_cleanly() {
        let t = tempfile::tempdir().unwrap();
        let (repo, snap) = snapshot(
            t.path(),
            vec![
                dir("d"),
                file("d/a", b"hello", 0o4755),
                file("d/b", b"", 0o644),
            ],
        );
        let (start, bytes, end) = tar_of(&repo, &snap, "d");
        assert!(matches!(start, Start::Tar { .. }));
        assert_eq!(end, None, "a clean end");
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mode = e.header().mode().unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            seen.push((name, mode, data));
        }
        assert_eq!(
            seen,
            vec![
                ("d".into(), 0o755, vec![]),
                ("d/a".into(), 0o755, b"hello".to_vec()),
                ("d/b".into(), 0o644, vec![]),
            ]
        );
        // Nothing there: a 404, not an empty archive.
        let (start, _, _) = tar_of(&repo, &snap, "nothing/here");
        assert!(matches!(start, Start::Refused(StatusCode::NOT_FOUND, _)));
    }

    #[test]
    fn a_path_below_a_symlink_cuts_the_tar() {
        let t = tempfile::tempdir().unwrap();
        let mut link = Entry::new(EntryPath::from("d/l"), EntryKind::Symlink);
        link.link_target = Some(b"/etc".to_vec());
        let (repo, snap) = snapshot(
            t.path(),
            vec![
                dir("d"),
                (link, Vec::new()),
                file("d/l.txt", b"beside it: fine", 0o644),
                file("d/l/cron.d/x", b"* * * * * root evil", 0o644),
            ],
        );
        let (_, bytes, end) = tar_of(&repo, &snap, "d");
        let why = end.expect("the archive must break");
        assert!(why.contains("below a symlink"), "{why}");
        assert!(
            !bytes.windows(4).any(|w| w == b"evil"),
            "the member's content never went out"
        );
    }

    #[test]
    fn dispositions_are_safe_and_exact() {
        let v = disposition(b"report 2024.pdf");
        assert_eq!(
            v.to_str().unwrap(),
            "attachment; filename=\"report 2024.pdf\"; filename*=UTF-8''report%202024.pdf"
        );
        let v = disposition(b"a\"b\r\nSet-Cookie: x\xff.txt");
        let s = v.to_str().unwrap();
        assert!(!s.contains('\r') && !s.contains('\n'), "{s}");
        assert!(
            s.starts_with("attachment; filename=\"a_b__Set-Cookie: x_.txt\""),
            "{s}"
        );
        assert!(
            s.ends_with("filename*=UTF-8''a%22b%0D%0ASet-Cookie%3A%20x%FF.txt"),
            "{s}"
        );
        assert!(disposition(b"").to_str().unwrap().contains("\"download\""));
    }
}
