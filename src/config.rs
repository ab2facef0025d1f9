//! The daemon's TOML configuration, parsed into types at load time.
//!
//! Unknown keys are rejected everywhere; errors name the key path and the line. Secrets
//! are only ever referenced by file path. Adding a job kind means adding one variant to
//! [`JobKind`] (and its settings type in its source module).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use serde::Deserialize;

use crate::retention::RetentionPolicy;
use crate::schedule::Schedule;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub repository: RepositoryConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub prune: PruneConfig,
    #[serde(default)]
    pub jobs: BTreeMap<JobName, JobConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    pub path: PathBuf,
    /// Create the repository when missing. Off by default, so that an unmounted disk
    /// never gets a fresh repository on the SD card.
    #[serde(default)]
    pub create: bool,
    pub state_dir: Option<PathBuf>,
    /// Public keys for a repository this config creates.
    #[serde(default)]
    pub recipients: Vec<String>,
    pub recipients_file: Option<PathBuf>,
    /// Needed for restore drills and for verifying data of an encrypted repository.
    pub identity_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token for the POST endpoints; without it they are refused.
    pub token_file: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:9750".parse().expect("valid address")
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            token_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// How many jobs may run at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A backup does not start with less free space than this on the repository's disk.
    #[serde(default = "default_min_free")]
    pub min_free_space: ByteSize,
    /// Attempts per scheduled run, for transient failures.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Seconds before the first retry; doubles each time.
    #[serde(default = "default_backoff")]
    pub retry_backoff_secs: u64,
    /// Seconds SIGTERM waits for running jobs before abandoning them.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_secs: u64,
}

fn default_concurrency() -> usize {
    2
}
fn default_min_free() -> ByteSize {
    ByteSize::gib(1)
}
fn default_attempts() -> u32 {
    3
}
fn default_backoff() -> u64 {
    30
}
fn default_stop_timeout() -> u64 {
    60
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            concurrency: default_concurrency(),
            min_free_space: default_min_free(),
            attempts: default_attempts(),
            retry_backoff_secs: default_backoff(),
            stop_timeout_secs: default_stop_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneConfig {
    #[serde(default = "default_prune_schedule")]
    pub schedule: Schedule,
}

fn default_prune_schedule() -> Schedule {
    "0 30 4 * * *".parse().expect("valid cron")
}

impl Default for PruneConfig {
    fn default() -> Self {
        PruneConfig {
            schedule: default_prune_schedule(),
        }
    }
}

/// A job name: also a metric label and a lock name, so kept to a safe alphabet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct JobName(String);

impl JobName {
    pub fn parse(s: &str) -> Result<JobName, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if ok {
            Ok(JobName(s.to_owned()))
        } else {
            Err(format!(
                "job name {s:?} must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for JobName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for JobName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JobName, D::Error> {
        JobName::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobConfig {
    pub schedule: Schedule,
    /// IANA time zone the schedule is read in.
    #[serde(default = "default_tz")]
    pub timezone: chrono_tz::Tz,
    #[serde(default)]
    pub retention: RetentionPolicy,
    /// Everything else belongs to the kind; each kind rejects keys it does not know.
    #[serde(flatten)]
    pub kind: JobKind,
}

fn default_tz() -> chrono_tz::Tz {
    chrono_tz::UTC
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum JobKind {
    Path(PathJob),
    Command(CommandJob),
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Path(_) => "path",
            JobKind::Command(_) => "command",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathJob {
    pub paths: Vec<PathBuf>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandJob {
    /// Program and arguments; no shell is involved.
    pub command: Vec<String>,
    /// File name the output is stored under.
    pub name: String,
    /// Extra environment (no secrets: point at files, e.g. PGPASSFILE).
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Config::parse(&text, &abs)
    }

    /// Parses and validates. `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| invalid_from_toml(file, text, &e))?;
        let mut track = serde_path_to_error::Track::new();
        let config = Config::deserialize(serde_path_to_error::Deserializer::new(de, &mut track))
            .map_err(|e| {
                let mut key = track.path().to_string();
                // Unknown keys inside a flattened job table are reported at the table; name
                // the key itself, so the line points at it.
                if let Some(field) = e
                    .message()
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split('`').next())
                {
                    key = if key.is_empty() || key == "." {
                        field.to_string()
                    } else {
                        format!("{key}.{field}")
                    };
                }
                let line = line_of_key(text, &key)
                    .or_else(|| e.span().map(|s| line_of(text, s.start)))
                    .unwrap_or(1);
                ConfigError::Invalid {
                    file: file.to_owned(),
                    line,
                    key: display_key(&key),
                    message: clean_message(e.message()),
                }
            })?;
        let mut config = config;
        // Relative paths are read from the config file's directory, so an example can
        // point next to itself; absolute ones are taken as they are.
        if let Some(base) = file.parent().filter(|b| b.is_absolute()) {
            config.resolve_paths(base);
        }
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                file: file.to_owned(),
                line: line_of_key(text, &key).unwrap_or(1),
                key,
                message,
            })?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                let joined = base.join(&*p);
                // Lexically: `..` must not depend on symlinks that may not exist yet.
                let mut out = PathBuf::new();
                for c in joined.components() {
                    match c {
                        std::path::Component::ParentDir => {
                            out.pop();
                        }
                        std::path::Component::CurDir => {}
                        other => out.push(other),
                    }
                }
                *p = out;
            }
        };
        let r = &mut self.repository;
        fix(&mut r.path);
        r.state_dir
            .iter_mut()
            .chain(r.recipients_file.iter_mut())
            .chain(r.identity_file.iter_mut())
            .for_each(fix);
        self.http.token_file.iter_mut().for_each(fix);
        for job in self.jobs.values_mut() {
            if let JobKind::Path(p) = &mut job.kind {
                p.paths.iter_mut().for_each(fix);
            }
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        if !self.repository.path.is_absolute() {
            return Err(("repository.path".into(), "must be an absolute path".into()));
        }
        if !(1..=64).contains(&self.daemon.concurrency) {
            return Err((
                "daemon.concurrency".into(),
                "must be between 1 and 64".into(),
            ));
        }
        if self.daemon.attempts == 0 {
            return Err(("daemon.attempts".into(), "must be at least 1".into()));
        }
        for r in &self.repository.recipients {
            r.parse::<crate::repo::crypto::Recipient>()
                .map_err(|e| ("repository.recipients".to_string(), e.to_string()))?;
        }
        for (name, job) in &self.jobs {
            let key = |k: &str| format!("jobs.{name}.{k}");
            job.retention
                .validate()
                .map_err(|m| (key("retention"), m))?;
            match &job.kind {
                JobKind::Path(p) => {
                    if p.paths.is_empty() {
                        return Err((key("paths"), "needs at least one path".into()));
                    }
                    if let Some(rel) = p.paths.iter().find(|p| !p.is_absolute()) {
                        return Err((
                            key("paths"),
                            format!("{} is not an absolute path", rel.display()),
                        ));
                    }
                    for g in &p.exclude {
                        globset::Glob::new(g).map_err(|e| (key("exclude"), e.to_string()))?;
                    }
                }
                JobKind::Command(c) => {
                    if c.command.is_empty() {
                        return Err((key("command"), "needs a program".into()));
                    }
                    if !crate::repo::tree::EntryPath::from(c.name.as_str()).is_safe() {
                        return Err((
                            key("name"),
                            format!("{:?} must be a relative file name", c.name),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.repository
            .state_dir
            .clone()
            .unwrap_or_else(crate::repo::default_state_dir)
    }
}

fn invalid_from_toml(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
        key: "(syntax)".into(),
        message: clean_message(e.message()),
    }
}

fn clean_message(m: &str) -> String {
    m.trim().replace('\n', " ")
}

fn display_key(path: &str) -> String {
    if path.is_empty() || path == "." {
        "(top level)".into()
    } else {
        path.to_string()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line defining the deepest existing part of a dotted key path, using the
/// span-preserving TOML parser (errors inside flattened tables carry no span of their own).
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut line = None;
    for part in key.split('.').filter(|p| !p.is_empty()) {
        let (k, v) = table.get_key_value(part)?;
        line = Some(line_of(text, k.span().start));
        match v.get_ref() {
            toml::de::DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[repository]
path = "/mnt/backup/backuphub"

[http]
listen = "0.0.0.0:9750"

[jobs.etc]
kind = "path"
schedule = "0 0 2 * * *"
timezone = "Europe/Berlin"
paths = ["/etc"]
exclude = ["*.tmp"]
retention = { keep_daily = 14 }

[jobs.pgdump]
kind = "command"
schedule = "0 15 2 * * *"
command = ["pg_dumpall", "-h", "/run/postgresql"]
name = "all.sql"
"#;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("test.toml"))
    }

    #[test]
    fn a_good_config_parses_into_types() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.jobs.len(), 2);
        let etc = &c.jobs[&JobName::parse("etc").unwrap()];
        assert_eq!(etc.timezone, chrono_tz::Europe::Berlin);
        assert!(matches!(&etc.kind, JobKind::Path(p) if p.exclude == ["*.tmp"]));
        assert_eq!(etc.retention.keep_daily, Some(14));
        assert_eq!(c.daemon.concurrency, 2);
    }

    fn err(t: &str) -> String {
        parse(t).expect_err("should fail").to_string()
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = err(&GOOD.replace("exclude = [\"*.tmp\"]", "exclude = [\"*.tmp\"]\npathz = 1"));
        assert!(e.contains("pathz"), "{e}");
        assert!(e.contains("test.toml:14"), "{e}");

        let e = err(&GOOD.replace("kind = \"command\"", "kind = \"ftp\""));
        assert!(e.contains("jobs.pgdump") && e.contains("ftp"), "{e}");

        let e = err(&GOOD.replace("0 15 2 * * *", "every day"));
        assert!(e.contains("jobs.pgdump.schedule"), "{e}");
        assert!(e.contains("test.toml:18"), "{e}");

        let e = err(&GOOD.replace("Europe/Berlin", "Mars/Olympus"));
        assert!(e.contains("jobs.etc.timezone"), "{e}");

        let e = err(&GOOD.replace("[http]", "[http]\nport = 1"));
        assert!(e.contains("http") && e.contains("port"), "{e}");

        let e = err(&GOOD.replace("[jobs.etc]", "[jobs.\"bad name\"]"));
        assert!(e.contains("bad name"), "{e}");

        let e = err(&GOOD.replace("\"/etc\"", "\"etc\""));
        assert!(
            e.contains("jobs.etc.paths") && e.contains("absolute"),
            "{e}"
        );

        let e = err("[repository\npath = 1");
        assert!(e.contains("test.toml:1"), "{e}");
    }
}
