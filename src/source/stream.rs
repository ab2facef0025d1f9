//! Byte streams: stdin, and a command's stdout stored as one file.
//!
//! A stream is always read in full; it never reuses the previous run's content, because
//! a same-named stream says nothing about its bytes.

use std::collections::VecDeque;
use std::io::Read;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::{Content, Source, SourceEntry, SourceError};
use crate::redact::Redactor;
use crate::repo::index::Previous;
use crate::repo::tree::{Entry, EntryKind, EntryPath};

/// How much of a failing command's stderr ends up in the error.
const STDERR_TAIL: usize = 2048;

/// Where the bytes come from.
pub enum StreamInput {
    Stdin,
    Command {
        argv: Vec<String>,
        env: Vec<(String, String)>,
    },
}

pub struct StreamSource {
    name: EntryPath,
    input: Option<StreamInput>,
    description: String,
    redactor: Redactor,
}

/// Whether `name` can be the path a stream is stored under: relative, no empty, `.` or
/// `..` components, no NUL. Config checking uses the same rule.
pub fn is_safe_name(name: &str) -> bool {
    EntryPath::new(name.as_bytes().to_vec()).is_safe()
}

impl StreamSource {
    pub fn new(
        name: &str,
        input: StreamInput,
        redactor: Redactor,
    ) -> Result<StreamSource, SourceError> {
        // Judged as written: `EntryPath::from` would strip a leading `/`, and `/etc/passwd`
        // would pass as `etc/passwd`.
        if !is_safe_name(name) {
            return Err(SourceError::Fatal(format!(
                "stream name {name:?} must be a relative path without . or .. components"
            )));
        }
        let description = match &input {
            StreamInput::Stdin => format!("stdin as {name}"),
            // Arguments may carry credentials (`-pS3cret`) that no pattern recognises; the
            // program's name is description enough.
            StreamInput::Command { argv, .. } => format!(
                "command {} ({} arguments) as {name}",
                argv.first().map(String::as_str).unwrap_or_default(),
                argv.len().saturating_sub(1)
            ),
        };
        Ok(StreamSource {
            name: EntryPath::new(name.as_bytes().to_vec()),
            input: Some(input),
            description,
            redactor,
        })
    }
}

impl Source for StreamSource {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn entries<'a>(
        &'a mut self,
        _previous: Previous,
    ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a> {
        let Some(input) = self.input.take() else {
            return Box::new(std::iter::empty());
        };
        let mut entry = Entry::new(self.name.clone(), EntryKind::File);
        entry.mode = 0o600;
        entry.uid = rustix::process::getuid().as_raw();
        entry.gid = rustix::process::getgid().as_raw();
        entry.mtime_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let content: Result<Box<dyn Read + Send>, SourceError> = match input {
            StreamInput::Stdin => Ok(Box::new(std::io::stdin())),
            StreamInput::Command { argv, env } => {
                CommandOutput::spawn(&argv, &env, self.redactor.clone()).map(|c| Box::new(c) as _)
            }
        };
        Box::new(std::iter::once(content.map(|r| SourceEntry {
            entry,
            content: Content::Read(r),
        })))
    }
}

/// A child's stdout that reports the child's failure as a read error at the end, so a
/// dump that died half-way can never be stored as if it were whole.
pub struct CommandOutput {
    child: Child,
    stdout: ChildStdout,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    program: String,
    redactor: Redactor,
    done: bool,
}

impl CommandOutput {
    pub fn spawn(
        argv: &[String],
        env: &[(String, String)],
        redactor: Redactor,
    ) -> Result<CommandOutput, SourceError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| SourceError::Fatal("empty command".into()))?;
        let mut command = Command::new(program);
        // If backuphub dies (killed, or stopped while the command hangs), the command must
        // not live on as an orphan holding database connections.
        // SAFETY: between fork and exec only the async-signal-safe prctl(2) runs.
        unsafe {
            use std::os::unix::process::CommandExt;
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SourceError::Fatal(format!("cannot start {program:?}: {e}")))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        // Secrets are masked before the tail is cut to size: a secret straddling the cut
        // would otherwise leave its end unmasked. So more is kept than is shown.
        let keep = STDERR_TAIL + redactor.longest_secret();
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(keep)));
        let tail2 = tail.clone();
        // Stderr is drained concurrently so a chatty command cannot block on a full pipe.
        let stderr_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail2.lock().unwrap_or_else(|p| p.into_inner());
                t.extend(&buf[..n]);
                let excess = t.len().saturating_sub(keep);
                t.drain(..excess);
            }
        });
        Ok(CommandOutput {
            child,
            stdout,
            stderr: tail,
            stderr_thread: Some(stderr_thread),
            program: program.clone(),
            redactor,
            done: false,
        })
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.done = true;
        let status = self.child.wait()?;
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        if status.success() {
            return Ok(());
        }
        let tail = {
            let t = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
            let bytes: Vec<u8> = t.iter().copied().collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        let tail = redacted_tail(&self.redactor, &tail, STDERR_TAIL);
        Err(std::io::Error::other(if tail.is_empty() {
            format!("{} exited with {status}", self.program)
        } else {
            format!("{} exited with {status}; stderr: {tail}", self.program)
        }))
    }
}

/// The last `max` bytes of `raw` (which may begin inside a secret), secrets masked.
///
/// `raw` holds up to `longest secret` bytes more than are shown. Masking only shortens
/// text, so whatever piece of a secret the window begins with lies within the first
/// `longest secret` bytes of the masked text too, and those are dropped; so is the rest of
/// that first line when there is a later one, as it may hold the tail of a `password=…`.
pub fn redacted_tail(redactor: &Redactor, raw: &str, max: usize) -> String {
    let masked = redactor.redact(raw);
    let slack = raw.len().saturating_sub(max);
    let mut start = if slack > 0 {
        slack
            .min(masked.len())
            .max(redactor.longest_secret().min(masked.len()))
    } else {
        0
    };
    if start > 0 {
        start = match masked[floor_char(&masked, start)..].find('\n') {
            Some(nl) => floor_char(&masked, start) + nl + 1,
            None => floor_char(&masked, start),
        };
    }
    let shown = &masked[start..];
    let cut = shown.len().saturating_sub(max);
    shown[floor_char(shown, cut)..].trim().to_string()
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Read for CommandOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.finish()?;
        }
        Ok(n)
    }
}

impl Drop for CommandOutput {
    fn drop(&mut self) {
        if !self.done {
            // The run was abandoned: do not leave the command running.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(argv: &[&str]) -> std::io::Result<Vec<u8>> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut c =
            CommandOutput::spawn(&argv, &[], Redactor::new(vec!["hunter2".into()])).unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn success_yields_stdout() {
        assert_eq!(run(&["sh", "-c", "printf hello"]).unwrap(), b"hello");
    }

    #[test]
    fn failure_is_an_error_with_redacted_stderr() {
        let err = run(&[
            "sh",
            "-c",
            "printf part; echo 'auth failed for password=hunter2' >&2; exit 3",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("auth failed"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn a_secret_straddling_the_tail_cut_leaks_no_piece() {
        let token = "tok_0123456789abcdefghijklmnopqrstuvwxyz";
        let redactor = Redactor::new(vec![token.to_string()]);
        // Put the cut (2 KiB before the end) at every position inside the token.
        for k in 1..token.len() {
            let after = format!("{}\nthe end", &"x".repeat(STDERR_TAIL));
            let raw = format!("{token}{after}");
            let start = token.len() - k; // the kept window begins inside the token
            let window = &raw[start..];
            let shown = redacted_tail(&redactor, window, STDERR_TAIL);
            assert!(shown.len() <= STDERR_TAIL);
            assert!(
                !shown.contains(&token[token.len() - 6..]),
                "cut at {k}: {shown}"
            );
            assert!(shown.ends_with("the end"));
        }
        // End to end: a command printing the token right where the tail is cut.
        let script = format!(
            "head -c {} /dev/zero | tr '\\0' y >&2; echo '{token}' >&2; head -c {} /dev/zero | tr '\\0' z >&2; exit 1",
            4000,
            STDERR_TAIL - 18
        );
        let argv = vec!["sh".to_string(), "-c".to_string(), script];
        let mut c = CommandOutput::spawn(&argv, &[], redactor).unwrap();
        let err = c.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert!(!err.contains(&token[token.len() - 10..]), "{err}");
    }

    #[test]
    fn missing_program_is_fatal() {
        let argv = vec!["/nonexistent/prog".to_string()];
        assert!(matches!(
            CommandOutput::spawn(&argv, &[], Redactor::default()),
            Err(SourceError::Fatal(_))
        ));
    }

    #[test]
    fn unsafe_names_are_refused() {
        for bad in ["../x", "/etc/passwd", "", "a//b", "a/./b", "x/"] {
            assert!(
                StreamSource::new(bad, StreamInput::Stdin, Redactor::default()).is_err(),
                "{bad:?}"
            );
        }
        assert!(StreamSource::new("dump.sql", StreamInput::Stdin, Redactor::default()).is_ok());
    }
}
