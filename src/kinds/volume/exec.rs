//! An exec in a pod as synchronous streams whose end is verified.
//!
//! The reader side ([`Stream`]) counts and hashes stdout as it is read; at EOF it waits
//! for the exec's status and the script's end mark on stderr ([`script::end_mark`]) and
//! turns any difference into the final read's error. A WebSocket that simply stops
//! (a node reboot, a proxy's idle timeout, a killed kubelet) thus fails the read, and
//! with it the entry or the volume, never passing as a complete stream.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::script::{self, EndMark};
use crate::kinds::kubernetes::client::{Kube, RequestError};

/// The stderr kept (the end of it: the end mark comes last).
const STDERR_TAIL: usize = 64 * 1024;
/// How long after stdout ends the status and end mark may take.
const END_WAIT: Duration = Duration::from_secs(60);

/// How an exec's WebSocket task ended: its status if one came, else why not.
#[derive(Clone, Debug)]
struct Ended {
    status: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
}

/// Waits, inside the runtime, for the exec's task to end; a pipe of kube's is not
/// closed when its task fails (only when it ends cleanly), so every read and write here
/// also watches this, and none can hang on a dead connection.
async fn ended(rx: &mut tokio::sync::watch::Receiver<Option<Ended>>) {
    let _ = rx.wait_for(Option::is_some).await;
}

/// An exec's stdin as a synchronous writer; [`Stdin::shutdown`] closes it (dropping it
/// does not: the halves of kube's pipe share it).
pub struct Stdin {
    w: tokio::io::WriteHalf<tokio::io::SimplexStream>,
    handle: tokio::runtime::Handle,
    ended: tokio::sync::watch::Receiver<Option<Ended>>,
}

impl Stdin {
    pub fn shutdown(&mut self) -> std::io::Result<()> {
        let (w, rx) = (&mut self.w, &mut self.ended);
        self.handle.block_on(async {
            tokio::select! {
                biased;
                r = w.shutdown() => r,
                _ = ended(rx) => Ok(()),
            }
        })
    }
}

impl std::io::Write for Stdin {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (w, rx) = (&mut self.w, &mut self.ended);
        self.handle.block_on(async {
            tokio::select! {
                biased;
                _ = ended(rx) => Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the command in the pod has ended",
                )),
                r = w.write(buf) => r,
            }
        })
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An exec under way.
pub struct Exec {
    /// `pod` in `namespace`, for messages.
    pub what: String,
    stdout: Option<tokio::io::ReadHalf<tokio::io::SimplexStream>>,
    stdin: Option<Stdin>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_done: Option<tokio::task::JoinHandle<()>>,
    handle: tokio::runtime::Handle,
    ended: tokio::sync::watch::Receiver<Option<Ended>>,
    /// Tells the monitor to abort the exec (on drop).
    abort: Option<tokio::sync::oneshot::Sender<()>>,
    hasher: Sha256,
    received: u64,
    /// A non-zero status of the framed commands is only logged (see [`Exec::lenient`]).
    lenient: bool,
    /// Where received bytes are also counted (a run's total).
    tally: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// Set once the end was checked: the verdict, repeated to later reads.
    verdict: Option<Result<EndMark, String>>,
    /// The client and its runtime live as long as any exec does (an exec read on the
    /// tar thread may outlive the source that started it).
    _kube: Arc<Kube>,
}

impl Exec {
    /// Starts `sh -c script sh args…` in the pod's container.
    pub fn start(
        kube: Arc<Kube>,
        namespace: &str,
        pod: &str,
        container: &str,
        script: &str,
        args: &[String],
    ) -> Result<Exec, RequestError> {
        let mut argv = vec!["sh".into(), "-c".into(), script.to_string(), "sh".into()];
        argv.extend(args.iter().cloned());
        let mut process = kube.exec(namespace, pod, container, argv)?;
        let handle = kube.handle();
        let (ended_tx, ended_rx) = tokio::sync::watch::channel(None);
        let (abort_tx, abort_rx) = tokio::sync::oneshot::channel::<()>();
        let status = process.take_status();
        let stdout = process.stdout();
        let stderr_half = process.stderr();
        let stdin_half = process.stdin();
        // The monitor: the status (if any), then the task's end.
        handle.spawn(async move {
            let status = async {
                match status {
                    Some(s) => s.await,
                    None => None,
                }
            };
            tokio::select! {
                s = status => {
                    let _ = process.join().await;
                    let _ = ended_tx.send(Some(Ended { status: s }));
                }
                _ = abort_rx => {
                    process.abort();
                    let _ = ended_tx.send(Some(Ended { status: None }));
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_done = stderr_half.map(|mut r| {
            let tail = stderr.clone();
            let mut rx = ended_rx.clone();
            handle.spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = tokio::select! {
                        biased;
                        r = r.read(&mut buf) => r.unwrap_or(0),
                        // Ended: what is buffered still counts (the end mark may be there).
                        _ = ended(&mut rx) => {
                            tokio::time::timeout(Duration::ZERO, r.read(&mut buf))
                                .await
                                .ok()
                                .and_then(Result::ok)
                                .unwrap_or(0)
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    t.extend_from_slice(&buf[..n]);
                    if t.len() > STDERR_TAIL {
                        let cut = t.len() - STDERR_TAIL;
                        t.drain(..cut);
                    }
                }
            })
        });
        let stdin = stdin_half.map(|w| Stdin {
            w,
            handle: handle.clone(),
            ended: ended_rx.clone(),
        });
        Ok(Exec {
            what: format!("pod {pod} in {namespace}"),
            stdout,
            stdin,
            stderr,
            stderr_done,
            handle,
            ended: ended_rx,
            abort: Some(abort_tx),
            hasher: Sha256::new(),
            received: 0,
            tally: None,
            lenient: false,
            verdict: None,
            _kube: kube,
        })
    }

    /// For a stream whose parts are checked one by one (a tar batch): a command that
    /// failed on some parts (a file that vanished from a live volume: tar names it and
    /// goes on) does not fail the stream; the missing parts fail on their own.
    pub fn lenient(mut self) -> Exec {
        self.lenient = true;
        self
    }

    /// Also counts what stdout delivers into `tally`.
    pub fn tally_into(mut self, tally: Arc<std::sync::atomic::AtomicU64>) -> Exec {
        self.tally = Some(tally);
        self
    }

    /// The writer to the command's stdin (once); shut it down to close stdin.
    pub fn take_stdin(&mut self) -> Option<Stdin> {
        self.stdin.take()
    }

    /// Waits for the command's end and checks its end mark against what was read from
    /// stdout (`expected` overrides: for a writer, what was sent to stdin).
    pub fn finish(&mut self, expected: Option<(u64, String)>) -> Result<EndMark, String> {
        if let Some(v) = &self.verdict {
            return v.clone();
        }
        // stdin must be closed for a reader of it to end.
        if let Some(mut s) = self.stdin.take() {
            let _ = s.shutdown();
        }
        let mut rx = self.ended.clone();
        let end = self.handle.block_on(async {
            tokio::time::timeout(END_WAIT, async {
                ended(&mut rx).await;
                rx.borrow().clone()
            })
            .await
            .ok()
            .flatten()
        });
        if let Some(task) = self.stderr_done.take() {
            let _ = self
                .handle
                .block_on(async { tokio::time::timeout(END_WAIT, task).await });
        }
        let stderr = self
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (bytes, sha) = expected.unwrap_or_else(|| {
            (
                self.received,
                hex::encode(std::mem::take(&mut self.hasher).finalize()),
            )
        });
        let status = end.and_then(|e| e.status);
        let verdict = verdict(
            &self.what,
            bytes,
            &sha,
            status.as_ref(),
            &stderr,
            self.lenient,
        );
        self.verdict = Some(verdict.clone());
        verdict
    }

    /// stderr's lines (its kept tail).
    pub fn stderr_lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner()))
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// What the command wrote on stderr besides its end mark.
    pub fn complaint(&self) -> String {
        script::complaint(&self.stderr.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads stdout, or returns 0 once the exec's task has ended and nothing is left.
    fn read_stdout(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(r) = self.stdout.as_mut() else {
            return Ok(0);
        };
        let rx = &mut self.ended;
        self.handle.block_on(async {
            tokio::select! {
                biased;
                n = r.read(buf) => n,
                _ = ended(rx) => Ok(tokio::time::timeout(Duration::ZERO, r.read(buf))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0)),
            }
        })
    }
}

/// The pure part of [`Exec::finish`]: the stream counts only when the end mark is there,
/// matches what arrived, and the commands succeeded.
fn verdict(
    what: &str,
    bytes: u64,
    sha: &str,
    status: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
    stderr: &[u8],
    lenient: bool,
) -> Result<EndMark, String> {
    let said = script::complaint(stderr);
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(" ({said})")
    };
    let Some(mark) = script::end_mark(stderr) else {
        let how = match status {
            Some(s) if s.status.as_deref() == Some("Success") => {
                "the command ended without its end mark".to_string()
            }
            Some(s) => format!(
                "the command failed: {}",
                s.message.clone().unwrap_or_default()
            ),
            None => "the stream was cut short".to_string(),
        };
        return Err(format!("{what}: {how} after {bytes} bytes{said}"));
    };
    if mark.bytes != bytes || !mark.sha256.eq_ignore_ascii_case(sha) {
        return Err(format!(
            "{what}: the stream does not match its end mark: {bytes} bytes arrived, the pod sent {} (SHA-256 {} vs {})",
            mark.bytes,
            &sha[..sha.len().min(12)],
            &mark.sha256[..12],
        ));
    }
    if mark.status != 0 && lenient {
        tracing::warn!(exec = what, status = mark.status, said = %said, "the command reported errors; the stream itself is whole");
    } else if mark.status != 0 {
        return Err(format!(
            "{what}: the command exited with status {}{said}",
            mark.status
        ));
    }
    if let Some(s) = status
        && s.status.as_deref() != Some("Success")
    {
        return Err(format!(
            "{what}: {}{said}",
            s.message
                .clone()
                .unwrap_or_else(|| "the exec failed".into())
        ));
    }
    Ok(mark)
}

impl Read for Exec {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(v) = &self.verdict {
            return v.clone().map(|_| 0).map_err(std::io::Error::other);
        }
        let n = self.read_stdout(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.received += n as u64;
            if let Some(t) = &self.tally {
                t.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
            return Ok(n);
        }
        self.finish(None).map(|_| 0).map_err(std::io::Error::other)
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        // An exec left mid-stream (an error elsewhere, cancellation) is ended, not left
        // running: the pod goes soon anyway, but its WebSocket task would not.
        if self.verdict.is_none()
            && let Some(a) = self.abort.take()
        {
            let _ = a.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

    fn ok() -> Status {
        Status {
            status: Some("Success".into()),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_matching_end_mark_passes() {
        let sha = "ab".repeat(32);
        let mark = format!("backuphub-end 10 {sha} 0\n");
        assert!(verdict("pod p", 10, &sha, Some(&ok()), mark.as_bytes(), false).is_ok());
        // Cut short: no status, no mark.
        let e = verdict("pod p", 7, &sha, None, b"", false).unwrap_err();
        assert!(e.contains("cut short after 7 bytes"), "{e}");
        // Fewer bytes than the pod sent.
        let e = verdict("pod p", 7, &sha, Some(&ok()), mark.as_bytes(), false).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        // Same count, other bytes.
        let e = verdict(
            "pod p",
            10,
            &"cd".repeat(32),
            Some(&ok()),
            mark.as_bytes(),
            false,
        )
        .unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        // The commands failed: their words are in the message.
        let failed = format!("tar: ./x: Permission denied\nbackuphub-end 10 {sha} 1\n");
        // A tar batch only logs it: its missing members fail one by one.
        assert!(verdict("pod p", 10, &sha, Some(&ok()), failed.as_bytes(), true).is_ok());
        let e = verdict("pod p", 10, &sha, Some(&ok()), failed.as_bytes(), false).unwrap_err();
        assert!(
            e.contains("status 1") && e.contains("Permission denied"),
            "{e}"
        );
        let refused = Status {
            status: Some("Failure".into()),
            message: Some("command terminated with non-zero exit code: 70".into()),
            ..Default::default()
        };
        let e = verdict("pod p", 0, &sha, Some(&refused), b"sh: cd: can't cd", false).unwrap_err();
        assert!(e.contains("exit code: 70") && e.contains("can't cd"), "{e}");
    }
}
