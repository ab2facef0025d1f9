//! Downloads: one file, or a directory as a tar stream. Both stream from the repository
//! through a small channel (memory does not grow with the file), and both fail the
//! transfer — the connection is cut, never a short "complete" download — when a chunk
//! cannot be read.

use std::io::Write;

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
use crate::restore::{EntryContent, EntryError, RestoreError, RestoreOptions, RestoreStats, Sink};

/// Bytes per message on the way to the client; a few are in flight at most.
const PIECE: usize = 256 * 1024;
const PIECES_IN_FLIGHT: usize = 4;

type Piece = Result<Bytes, std::io::Error>;

/// A blocking writer feeding the response body.
struct ChannelWriter {
    tx: mpsc::Sender<Piece>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Piece>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(PIECE),
        }
    }

    /// Ends the body with an error: the client sees a broken transfer.
    fn fail(&self, why: String) {
        let _ = self.tx.blocking_send(Err(std::io::Error::other(why)));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE)));
        self.tx.blocking_send(Ok(piece)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

fn body(rx: mpsc::Receiver<Piece>) -> Body {
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|p| (p, rx))
    }))
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
    let exact: String = name
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
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
    rx: mpsc::Receiver<Piece>,
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
    download(
        web,
        headers,
        id,
        "file",
        query,
        |repo, snap, _, path, start, mut out| {
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
            let copied = EntryContent::new(repo, &entry)
                .copy_to(&mut out)
                .map_err(|e| e.to_string())
                .and_then(|n| out.flush().map(|()| n).map_err(|e| e.to_string()));
            match copied {
                Ok(n) if n == entry.size => {}
                Ok(n) => out.fail(format!(
                    "{path}: {n} bytes read, the snapshot says {}",
                    entry.size
                )),
                Err(why) => {
                    tracing::warn!(path = %path, error = %why, "download cut: content unreadable");
                    out.fail(why)
                }
            }
        },
    )
    .await
}

/// Writes the selected entries as a tar stream. Paths in the archive start at the
/// directory asked for (`photos/2024/a.jpg` for `srv/photos`).
struct TarSink {
    tar: tar::Builder<ChannelWriter>,
    /// Bytes of the path to strip: the parent of the directory asked for.
    strip: usize,
    broken: Option<String>,
}

impl TarSink {
    fn name_of(&self, e: &Entry) -> Vec<u8> {
        e.restore_path().as_bytes()[self.strip..].to_vec()
    }
}

fn io(err: std::io::Error) -> EntryError {
    EntryError::Io { op: "tar", err }
}

impl Sink for TarSink {
    fn entry(&mut self, e: &Entry, content: &mut EntryContent<'_>) -> Result<u64, EntryError> {
        if let Some(why) = &self.broken {
            // The archive is already cut; say so for each entry rather than write on.
            return Err(io(std::io::Error::other(why.clone())));
        }
        use std::os::unix::ffi::OsStrExt;
        let name = self.name_of(e);
        let name = std::path::Path::new(std::ffi::OsStr::from_bytes(&name));
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode & 0o7777);
        h.set_uid(e.uid.into());
        h.set_gid(e.gid.into());
        h.set_mtime(e.mtime_ns.div_euclid(1_000_000_000).max(0) as u64);
        let result = match e.kind {
            EntryKind::File => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(e.size);
                // The size is in the header already: a short read must not pass.
                let mut counted = CountingReader {
                    inner: content,
                    n: 0,
                };
                let r = self.tar.append_data(&mut h, name, &mut counted);
                match r {
                    Ok(()) if counted.n == e.size => Ok(e.size),
                    Ok(()) => Err(std::io::Error::other(format!(
                        "{}: {} bytes, the snapshot says {}",
                        e.path, counted.n, e.size
                    ))),
                    Err(err) => Err(err),
                }
            }
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                self.tar
                    .append_data(&mut h, name, std::io::empty())
                    .map(|()| 0)
            }
            EntryKind::Symlink => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                let target = e.link_target.clone().unwrap_or_default();
                let target = std::path::Path::new(std::ffi::OsStr::from_bytes(&target));
                self.tar.append_link(&mut h, name, target).map(|()| 0)
            }
            // Device nodes and FIFOs carry no data; a download has no use for them.
            _ => return Ok(0),
        };
        result.map_err(|err| {
            let why = err.to_string();
            self.broken = Some(why);
            io(err)
        })
    }

    fn finish(&mut self, _stats: &mut RestoreStats) -> Result<(), RestoreError> {
        Ok(())
    }
}

/// Counts what the tar builder read from an entry (it pads a short read with nothing).
struct CountingReader<'a, 'r> {
    inner: &'a mut EntryContent<'r>,
    n: u64,
}

impl std::io::Read for CountingReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

pub(crate) async fn tar(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    download(
        web,
        headers,
        id,
        "tar",
        query,
        |repo, snap, sid, path, start, out| {
            let name = if path.as_bytes().is_empty() {
                format!("{}-{}", snap.job, sid.short()).into_bytes()
            } else {
                last_component(&path).to_vec()
            };
            let strip = match path.as_bytes().iter().rposition(|b| *b == b'/') {
                Some(i) => i + 1,
                None => 0,
            };
            let _ = start.send(Start::Tar { name });
            let mut sink = TarSink {
                tar: tar::Builder::new(out),
                strip,
                broken: None,
            };
            let opts = RestoreOptions {
                only: (!path.as_bytes().is_empty()).then(|| path.clone()),
                overwrite: false,
            };
            let result = crate::restore::restore_to(repo, &snap, &mut sink, &opts, &mut || {});
            let why = match (result, sink.broken.take()) {
                (_, Some(why)) => Some(why),
                (Ok(_), None) => None,
                (Err(RestoreError::Incomplete(stats)), None) => Some(format!(
                    "{} entries could not be read: {}",
                    stats.failures.len(),
                    stats
                        .failures
                        .iter()
                        .take(3)
                        .map(|f| format!("{} ({})", f.path, f.error))
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
                (Err(e), None) => Some(e.to_string()),
            };
            match why {
                None => {
                    if let Err(e) = sink.tar.into_inner().and_then(|mut w| w.flush()) {
                        tracing::debug!(error = %e, "tar download not finished");
                    }
                }
                Some(why) => {
                    tracing::warn!(path = %path, error = %why, "tar download cut");
                    // The end-of-archive blocks are never written: `tar` reports the cut.
                    sink.tar.get_ref().fail(why);
                }
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

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
