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
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
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
    /// Scheduled verification; none without this section.
    pub verify: Option<crate::verify::VerifyConfig>,
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
    #[serde(default = "default_min_free", deserialize_with = "de_size")]
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

/// Where Nix keeps its store (`builtins.storeDir` of every ordinary installation).
const NIX_STORE: &str = "/nix/store";

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

impl JobConfig {
    /// The job's retention policy: its own, or `keep_daily = 14` when it sets none.
    pub fn retention_policy(&self) -> RetentionPolicy {
        if self.retention.is_empty() {
            RetentionPolicy::seed_default()
        } else {
            self.retention.clone()
        }
    }
}

fn default_tz() -> chrono_tz::Tz {
    chrono_tz::UTC
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum JobKind {
    Path(PathJob),
    Command(CommandJob),
    Postgres(Box<crate::kinds::postgres::PostgresJob>),
    Kubernetes(Box<crate::kinds::kubernetes::KubernetesJob>),
    S3(Box<crate::kinds::s3::S3Job>),
    Volume(Box<crate::kinds::volume::VolumeJob>),
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Path(_) => "path",
            JobKind::Command(_) => "command",
            JobKind::Postgres(_) => "postgres",
            JobKind::Kubernetes(_) => "kubernetes",
            JobKind::S3(_) => "s3",
            JobKind::Volume(_) => "volume",
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
        let bytes = std::fs::read(path).map_err(|error| ConfigError::Io {
            path: path.to_owned(),
            error,
        })?;
        let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Config::parse_bytes(&bytes, &abs)
    }

    /// Like [`Config::parse`], for input not yet known to be UTF-8: an invalid byte is
    /// reported with its line and column, so it can be found in an editor.
    pub fn parse_bytes(bytes: &[u8], file: &Path) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let valid = &bytes[..e.valid_up_to()];
            let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            // The prefix is valid UTF-8, so its characters are the columns.
            let column = String::from_utf8_lossy(&valid[line_start..])
                .chars()
                .count()
                + 1;
            ConfigError::Invalid {
                file: file.to_owned(),
                line: valid.iter().filter(|b| **b == b'\n').count() + 1,
                key: "(encoding)".into(),
                message: format!(
                    "not valid UTF-8: byte 0x{:02x} at column {column}",
                    bytes[e.valid_up_to()]
                ),
            }
        })?;
        Config::parse(text, file)
    }

    /// Parses and validates. `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| invalid_from_toml(file, text, &e))?;
        let mut track = serde_path_to_error::Track::new();
        let mut config = Config::deserialize(serde_path_to_error::Deserializer::new(
            de, &mut track,
        ))
        .map_err(|e| {
            let (key, line, message) = locate_error(text, &track.path(), &e);
            ConfigError::Invalid {
                file: file.to_owned(),
                line,
                key: key.to_string(),
                message: clean_message(&message),
            }
        })?;
        let invalid = |(key, message): (KeyPath, String)| ConfigError::Invalid {
            file: file.to_owned(),
            line: deepest_line(text, &key).unwrap_or(1),
            key: key.to_string(),
            message,
        };
        // Before resolving: an empty path would silently become the config's directory.
        config.reject_empty_paths().map_err(invalid)?;
        // Relative paths are read from the config file's directory, so an example can
        // point next to itself; absolute ones are taken as they are.
        if let Some(base) = file.parent().filter(|b| b.is_absolute()) {
            config.resolve_paths(base);
        }
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn reject_empty_paths(&self) -> Result<(), (KeyPath, String)> {
        let empty = |key: KeyPath| Err((key, "is empty; give a path".to_string()));
        let r = &self.repository;
        let repo = KeyPath::key("repository");
        if r.path.as_os_str().is_empty() {
            return empty(repo.and("path"));
        }
        for (name, p) in [
            ("state_dir", &r.state_dir),
            ("recipients_file", &r.recipients_file),
            ("identity_file", &r.identity_file),
        ] {
            if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return empty(repo.and(name));
            }
        }
        if let Some(p) = &self.http.token_file
            && p.as_os_str().is_empty()
        {
            return empty(KeyPath::key("http").and("token_file"));
        }
        for (name, job) in &self.jobs {
            if let JobKind::Path(p) = &job.kind
                && let Some(i) = p.paths.iter().position(|p| p.as_os_str().is_empty())
            {
                return empty(job_key(name, "paths").at(i));
            }
            if let JobKind::Postgres(p) = &job.kind {
                if p.password_file
                    .as_ref()
                    .is_some_and(|p| p.as_os_str().is_empty())
                {
                    return empty(job_key(name, "password_file"));
                }
                if let Some(i) = p.bin_dirs.iter().position(|p| p.as_os_str().is_empty()) {
                    return empty(job_key(name, "bin_dirs").at(i));
                }
                if let Some(d) = &p.drill {
                    for (k, v) in [
                        ("server_bin_dir", &d.server_bin_dir),
                        ("work_dir", &d.work_dir),
                    ] {
                        if v.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                            return empty(job_key(name, "drill").and(k));
                        }
                    }
                }
            }
        }
        Ok(())
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
            match &mut job.kind {
                JobKind::Path(p) => p.paths.iter_mut().for_each(fix),
                JobKind::Command(_) => {}
                JobKind::S3(j) => {
                    fix(&mut j.access_key_file);
                    fix(&mut j.secret_key_file);
                }
                JobKind::Kubernetes(k) => {
                    k.kubeconfig
                        .iter_mut()
                        .chain(k.token_file.iter_mut())
                        .chain(k.ca_file.iter_mut())
                        .for_each(fix);
                }
                JobKind::Volume(v) => {
                    v.kubeconfig
                        .iter_mut()
                        .chain(v.token_file.iter_mut())
                        .chain(v.ca_file.iter_mut())
                        .for_each(fix);
                }
                JobKind::Postgres(p) => {
                    p.password_file.iter_mut().for_each(fix);
                    p.bin_dirs.iter_mut().for_each(fix);
                    if let Some(d) = &mut p.drill {
                        d.server_bin_dir
                            .iter_mut()
                            .chain(d.work_dir.iter_mut())
                            .for_each(fix);
                    }
                }
            }
        }
    }

    fn validate(&self) -> Result<(), (KeyPath, String)> {
        if !self.repository.path.is_absolute() {
            return Err((
                KeyPath::key("repository").and("path"),
                "must be an absolute path".into(),
            ));
        }
        if !(1..=64).contains(&self.daemon.concurrency) {
            return Err((
                KeyPath::key("daemon").and("concurrency"),
                "must be between 1 and 64".into(),
            ));
        }
        if self.daemon.attempts == 0 {
            return Err((
                KeyPath::key("daemon").and("attempts"),
                "must be at least 1".into(),
            ));
        }
        for (i, r) in self.repository.recipients.iter().enumerate() {
            r.parse::<crate::repo::crypto::Recipient>().map_err(|e| {
                (
                    KeyPath::key("repository").and("recipients").at(i),
                    e.to_string(),
                )
            })?;
        }
        for (name, job) in &self.jobs {
            let key = |k: &str| job_key(name, k);
            job.retention
                .validate()
                .map_err(|m| (key("retention"), m))?;
            match &job.kind {
                JobKind::Path(p) => {
                    if p.paths.is_empty() {
                        return Err((key("paths"), "needs at least one path".into()));
                    }
                    if let Some(i) = p.paths.iter().position(|p| !p.is_absolute()) {
                        return Err((
                            key("paths").at(i),
                            format!("{} is not an absolute path", p.paths[i].display()),
                        ));
                    }
                    for (i, g) in p.exclude.iter().enumerate() {
                        globset::Glob::new(g).map_err(|e| (key("exclude").at(i), e.to_string()))?;
                    }
                }
                JobKind::S3(j) => {
                    crate::kinds::s3::validate(j).map_err(|(key, m)| (job_key(name, key), m))?;
                }
                JobKind::Volume(v) => {
                    crate::kinds::volume::validate(v)
                        .map_err(|(key, m)| (job_key(name, key), m))?;
                }
                JobKind::Kubernetes(k) => {
                    let encrypted = !self.repository.recipients.is_empty()
                        || self.repository.recipients_file.is_some();
                    crate::kinds::kubernetes::validate(k, encrypted)
                        .map_err(|(key, m)| (job_key(name, key), m))?;
                }
                JobKind::Postgres(p) => {
                    crate::kinds::postgres::validate(p).map_err(|(k, m)| {
                        let path = k
                            .split('.')
                            .fold(KeyPath::key("jobs").and(name.as_str()), KeyPath::and);
                        (path, m)
                    })?;
                }
                JobKind::Command(c) => {
                    if c.command.first().is_none_or(|p| p.is_empty()) {
                        return Err((key("command"), "needs a program".into()));
                    }
                    if !crate::source::stream::is_safe_name(&c.name) {
                        return Err((
                            key("name"),
                            format!(
                                "{:?} must be a relative file name: not empty, no leading '/', \
                                 no empty, '.' or '..' components, no NUL",
                                c.name
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Configured paths that lie in the Nix store, with their keys. A relative path in a
    /// configuration file that Nix generated resolves there (the file's own directory), and
    /// the store is read-only and world-readable: no place for a repository, state or a
    /// secret, nor a likely source to back up. The daemon warns about each. (recipients_file
    /// holds public keys and may well be in the store.)
    pub fn paths_in_nix_store(&self) -> Vec<(String, PathBuf)> {
        let r = &self.repository;
        let repo = KeyPath::key("repository");
        let mut found: Vec<(KeyPath, &PathBuf)> = vec![(repo.clone().and("path"), &r.path)];
        found.extend(
            r.state_dir
                .iter()
                .map(|p| (repo.clone().and("state_dir"), p)),
        );
        found.extend(
            r.identity_file
                .iter()
                .map(|p| (repo.clone().and("identity_file"), p)),
        );
        found.extend(
            self.http
                .token_file
                .iter()
                .map(|p| (KeyPath::key("http").and("token_file"), p)),
        );
        for (name, job) in &self.jobs {
            if let JobKind::Path(p) = &job.kind {
                found.extend(
                    p.paths
                        .iter()
                        .enumerate()
                        .map(|(i, path)| (job_key(name, "paths").at(i), path)),
                );
            }
            if let JobKind::Postgres(p) = &job.kind {
                found.extend(
                    p.password_file
                        .iter()
                        .map(|path| (job_key(name, "password_file"), path)),
                );
            }
            if let JobKind::S3(j) = &job.kind {
                found.push((job_key(name, "access_key_file"), &j.access_key_file));
                found.push((job_key(name, "secret_key_file"), &j.secret_key_file));
            }
            if let JobKind::Volume(k) = &job.kind {
                found.extend(
                    k.kubeconfig
                        .iter()
                        .map(|p| (job_key(name, "kubeconfig"), p))
                        .chain(
                            k.token_file
                                .iter()
                                .map(|p| (job_key(name, "token_file"), p)),
                        ),
                );
            }
            if let JobKind::Kubernetes(k) = &job.kind {
                found.extend(
                    k.kubeconfig
                        .iter()
                        .map(|p| (job_key(name, "kubeconfig"), p))
                        .chain(
                            k.token_file
                                .iter()
                                .map(|p| (job_key(name, "token_file"), p)),
                        ),
                );
            }
        }
        found
            .into_iter()
            .filter(|(_, p)| p.starts_with(NIX_STORE))
            .map(|(k, p)| (k.to_string(), p.clone()))
            .collect()
    }

    /// The configured job of this name, if any.
    pub fn job_name(&self, name: &str) -> Option<JobName> {
        self.jobs.keys().find(|n| n.as_str() == name).cloned()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.repository
            .state_dir
            .clone()
            .unwrap_or_else(crate::repo::default_state_dir)
    }
}

/// Sizes as `bytesize` reads them ("1 GiB", "1.5 MB", 1024), except that a size beyond
/// u64 is an error: `bytesize` saturates it silently.
fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = ByteSize;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a size such as \"1 GiB\" or a number of bytes")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
            Ok(ByteSize(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
            u64::try_from(v)
                .map(ByteSize)
                .map_err(|_| E::custom(format!("{v} is negative; a size is at least 0")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
            parse_size(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// Parses a size like `bytesize` does, but refuses one that does not fit in u64.
pub fn parse_size(s: &str) -> Result<ByteSize, String> {
    let s = s.trim();
    let too_large = || format!("{s:?} is too large: the largest size is 16 EiB (2^64 - 1 bytes)");
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..number_len], s[number_len..].trim_start());
    let not_a_size = |e: String| format!("{s:?} is not a size such as \"1 GiB\": {e}");
    // One unit is at most 1 EiB, so this never saturates.
    let factor = if unit.is_empty() {
        1
    } else {
        format!("1 {unit}")
            .parse::<ByteSize>()
            .map_err(not_a_size)?
            .as_u64()
    };
    let fits = match number.parse::<u64>() {
        Ok(n) => n.checked_mul(factor).is_some(),
        // All digits but beyond u64.
        Err(_) if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) => false,
        // 2^64 is exact in f64; anything at or above it does not fit. Malformed numbers
        // are left to the parser below, for its message.
        Err(_) => number
            .parse::<f64>()
            .map_or(true, |n| n * (factor as f64) < 18_446_744_073_709_551_616.0),
    };
    if !fits {
        return Err(too_large());
    }
    s.parse().map_err(not_a_size)
}

/// A key path into the TOML document, kept as segments: job names may contain dots.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyPath(Vec<Seg>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

impl KeyPath {
    fn key(k: &str) -> KeyPath {
        KeyPath(vec![Seg::Key(k.to_owned())])
    }

    fn and(mut self, k: &str) -> KeyPath {
        self.0.push(Seg::Key(k.to_owned()));
        self
    }

    fn at(mut self, i: usize) -> KeyPath {
        self.0.push(Seg::Index(i));
        self
    }

    fn from_tracked(path: &serde_path_to_error::Path) -> KeyPath {
        use serde_path_to_error::Segment;
        let mut out = Vec::new();
        for seg in path {
            match seg {
                Segment::Seq { index } => out.push(Seg::Index(*index)),
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    out.push(Seg::Key(key.clone()))
                }
                Segment::Unknown => break,
            }
        }
        KeyPath(out)
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(top level)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

fn job_key(name: &JobName, k: &str) -> KeyPath {
    KeyPath::key("jobs").and(name.as_str()).and(k)
}

/// The keys of a job table that are not its kind's settings (see [`JobConfig`]).
const JOB_COMMON_KEYS: [&str; 4] = ["kind", "schedule", "timezone", "retention"];

/// Where a deserialization error is: its key path, line and message.
///
/// A job's kind is `flatten`ed, and serde deserializes flattened fields from a buffer
/// that carries neither key path nor span: such errors arrive as "somewhere in
/// `jobs.<name>`". Those settings are then deserialized once more, directly, to find the
/// key and line of the error.
fn locate_error(
    text: &str,
    tracked: &serde_path_to_error::Path,
    e: &toml::de::Error,
) -> (KeyPath, usize, String) {
    let mut key = KeyPath::from_tracked(tracked);
    let mut message = e.message().to_owned();
    let mut span = e.span();
    if let [Seg::Key(jobs), Seg::Key(name)] = key.0.as_slice()
        && jobs == "jobs"
        && let Some(precise) = job_settings_error(text, name)
        // The same error, only found again with its place; anything else is not it.
        && precise.inner().message() == message
    {
        key.0.extend(KeyPath::from_tracked(precise.path()).0);
        message = precise.inner().message().to_owned();
        span = precise.inner().span();
    }
    // serde names an unknown key in the message, and the tracker has it as the last
    // segment except when it sits in a flattened table.
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
        && key.0.last() != Some(&Seg::Key(field.to_owned()))
    {
        key.0.push(Seg::Key(field.to_owned()));
    }
    let line = line_of_path(text, &key)
        .or_else(|| span.map(|s| line_of(text, s.start)))
        .or_else(|| deepest_line(text, &key))
        .unwrap_or(1);
    (key, line, message)
}

/// Deserializes the kind-specific settings of job `name` directly (not flattened), for
/// the key path and span of their error.
fn job_settings_error(
    text: &str,
    name: &str,
) -> Option<serde_path_to_error::Error<toml::de::Error>> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let job = doc.get_ref().get("jobs")?.get_ref().as_table()?.get(name)?;
    let mut settings = job.get_ref().as_table()?.clone();
    let kind = settings.get("kind")?.get_ref().as_str()?.to_owned();
    for k in JOB_COMMON_KEYS {
        settings.remove(k);
    }
    let de = toml::de::Deserializer::from(toml::Spanned::new(job.span(), settings));
    match kind.as_str() {
        "path" => serde_path_to_error::deserialize::<_, PathJob>(de).err(),
        "command" => serde_path_to_error::deserialize::<_, CommandJob>(de).err(),
        "postgres" => {
            serde_path_to_error::deserialize::<_, crate::kinds::postgres::PostgresJob>(de).err()
        }
        _ => None,
    }
}

fn invalid_from_toml(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let mut message = clean_message(e.message());
    // The parser's message does not say which key; its span points at the key.
    if message == "duplicate key"
        && let Some(k) = e.span().and_then(|s| text.get(s)).map(str::trim)
        && !k.is_empty()
    {
        message = format!("duplicate key `{}`", k.trim_matches('"'));
    }
    ConfigError::Invalid {
        file: file.to_owned(),
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
        key: "(syntax)".into(),
        message,
    }
}

fn clean_message(m: &str) -> String {
    m.trim().replace('\n', " ")
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of the item the whole key path names, if it exists in the document.
fn line_of_path(text: &str, key: &KeyPath) -> Option<usize> {
    let (line, whole) = walk(text, key)?;
    whole.then_some(line)
}

/// The line of the deepest existing item along the key path.
fn deepest_line(text: &str, key: &KeyPath) -> Option<usize> {
    walk(text, key).map(|(line, _)| line)
}

/// Follows the key path through the span-preserving parse; returns the line of the
/// deepest item found and whether that is the whole path.
fn walk(text: &str, key: &KeyPath) -> Option<(usize, bool)> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = Some(doc.get_ref());
    let mut array = None;
    let mut line = None;
    for seg in &key.0 {
        let found = match seg {
            Seg::Key(k) => table
                .and_then(|t| t.get_key_value(k.as_str()))
                .map(|(k, v)| (k.span().start, v)),
            Seg::Index(i) => array
                .and_then(|a: &toml::de::DeArray| a.get(*i))
                .map(|v| (v.span().start, v)),
        };
        let Some((at, v)) = found else {
            return line.map(|l| (l, false));
        };
        line = Some(line_of(text, at));
        table = v.get_ref().as_table();
        array = v.get_ref().as_array();
    }
    line.map(|l| (l, true))
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

    /// GOOD with `from` replaced by `to`, asserting the replacement happened.
    fn with(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from:?} is not in GOOD");
        GOOD.replacen(from, to, 1)
    }

    #[test]
    fn empty_paths_are_rejected_not_taken_for_the_config_directory() {
        // An absolute config file, so relative paths are resolved (as `load` does).
        let abs = |t: &str| Config::parse(t, Path::new("/etc/backuphub/test.toml"));
        let cases = [
            (
                with("path = \"/mnt/backup/backuphub\"", "path = \"\""),
                "repository.path",
            ),
            (
                with("[http]", "[http]\ntoken_file = \"\""),
                "http.token_file",
            ),
            (
                with("[http]", "state_dir = \"\"\n[http]"),
                "repository.state_dir",
            ),
            (
                with("[http]", "identity_file = \"\"\n[http]"),
                "repository.identity_file",
            ),
            (
                with("[http]", "recipients_file = \"\"\n[http]"),
                "repository.recipients_file",
            ),
            (
                with("paths = [\"/etc\"]", "paths = [\"/etc\", \"\"]"),
                "jobs.etc.paths[1]",
            ),
        ];
        for (text, key) in cases {
            let e = abs(&text).expect_err(key).to_string();
            assert!(e.contains(&format!(": {key}: ")), "{key}: {e}");
            assert!(e.contains("empty"), "{key}: {e}");
        }
        let e = err(&with("command = [\"pg_dumpall\",", "command = [\"\","));
        assert!(e.contains("jobs.pgdump.command"), "{e}");
    }

    #[test]
    fn paths_in_the_nix_store_are_found_with_their_keys() {
        // A config that NixOS generated lives in the store: its relative paths resolve there.
        let in_store = |t: &str| {
            Config::parse(t, Path::new("/nix/store/abc-backuphub.toml"))
                .unwrap()
                .paths_in_nix_store()
        };
        assert!(in_store(GOOD).is_empty(), "absolute paths elsewhere");
        let text = with("[http]", "identity_file = \"identity\"\n[http]")
            .replace("paths = [\"/etc\"]", "paths = [\"/etc\", \"srv/data\"]")
            .replace(
                "listen = \"0.0.0.0:9750\"",
                "listen = \"0.0.0.0:9750\"\ntoken_file = \"/nix/store/xyz-token\"",
            );
        let found = in_store(&text);
        let keys: Vec<&str> = found.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "repository.identity_file",
                "http.token_file",
                "jobs.etc.paths[1]"
            ]
        );
        assert_eq!(found[0].1, Path::new("/nix/store/identity"));
        assert_eq!(found[2].1, Path::new("/nix/store/srv/data"));
        // The store prefix is a path prefix, not a string prefix.
        let near = with(
            "path = \"/mnt/backup/backuphub\"",
            "path = \"/nix/store-backups/repo\"",
        );
        assert!(in_store(&near).is_empty());
        // Public keys may live in the store.
        let recipients = with("[http]", "recipients_file = \"keys.txt\"\n[http]");
        assert!(in_store(&recipients).is_empty());
    }

    #[test]
    fn sizes_beyond_u64_are_rejected() {
        let size = |v: &str| {
            parse(&with(
                "[http]",
                &format!("[daemon]\nmin_free_space = {v}\n[http]"),
            ))
            .map(|c| c.daemon.min_free_space.as_u64())
        };
        for big in [
            "\"99999999999 EiB\"",
            "\"16 EiB\"",
            "\"18446744073709551616\"",
            "\"18446744073709551616 B\"",
            "\"20000000000 GB\"",
            "\"16384.5 PiB\"",
            "\"17179869184 GiB\"",
        ] {
            let e = size(big).expect_err(big).to_string();
            assert!(
                e.contains("daemon.min_free_space") && e.contains("too large"),
                "{big}: {e}"
            );
            assert!(e.contains("test.toml:6"), "{big}: {e}");
        }
        assert_eq!(size("\"15 EiB\"").unwrap(), 15 << 60);
        assert_eq!(size("\"1.5 KiB\"").unwrap(), 1536);
        assert_eq!(size("\"2 GB\"").unwrap(), 2_000_000_000);
        assert_eq!(size("4096").unwrap(), 4096);
        assert_eq!(size("\"18446744073709551615\"").unwrap(), u64::MAX);
        assert!(size("-1").is_err());
        assert!(size("\"lots\"").is_err());
        assert!(size("\"1e30 B\"").is_err());
    }

    #[test]
    fn a_command_jobs_name_must_be_a_safe_relative_name() {
        for bad in [
            "/etc/passwd",
            "",
            "a/../../b",
            "./x",
            "x/.",
            "..",
            "a//b",
            "dir/",
            "a\\u0000b",
        ] {
            let e = err(&with("name = \"all.sql\"", &format!("name = \"{bad}\"")));
            assert!(e.contains("jobs.pgdump.name"), "{bad:?}: {e}");
            assert!(e.contains("test.toml:20"), "{bad:?}: {e}");
        }
        for good in ["all.sql", "db/all.sql", ".hidden"] {
            parse(&with("name = \"all.sql\"", &format!("name = \"{good}\""))).unwrap();
        }
    }

    #[test]
    fn non_utf8_input_names_line_and_column() {
        let mut bytes = GOOD.as_bytes().to_vec();
        let at = GOOD.find("0.0.0.0").unwrap();
        bytes.insert(at, 0xff);
        let e = Config::parse_bytes(&bytes, Path::new("test.toml"))
            .expect_err("invalid UTF-8")
            .to_string();
        assert!(e.contains("test.toml:6:"), "{e}");
        assert!(e.contains("UTF-8") && e.contains("column 11"), "{e}");
        // Multi-byte characters before it count as one column each.
        let e = Config::parse_bytes(b"# \xc3\xa9\xc3\xa9 \xc3(\n", Path::new("t.toml"))
            .expect_err("truncated sequence")
            .to_string();
        assert!(e.contains("t.toml:1:") && e.contains("column 6"), "{e}");
        assert!(
            Config::parse_bytes(GOOD.as_bytes(), Path::new("t.toml")).is_ok(),
            "valid UTF-8 parses"
        );
    }

    #[test]
    fn type_errors_inside_a_jobs_kind_point_at_their_own_line() {
        // (replace, by, key in the message, line)
        let cases = [
            (
                "paths = [\"/etc\"]",
                "paths = \"/etc\"",
                "jobs.etc.paths",
                12,
            ),
            (
                "paths = [\"/etc\"]",
                "paths = [\"/etc\", 5]",
                "jobs.etc.paths[1]",
                12,
            ),
            (
                "paths = [\"/etc\"]",
                "paths = [\n  \"/etc\",\n  5,\n]",
                "jobs.etc.paths[1]",
                14,
            ),
            (
                "exclude = [\"*.tmp\"]",
                "exclude = 3",
                "jobs.etc.exclude",
                13,
            ),
            (
                "command = [\"pg_dumpall\", \"-h\", \"/run/postgresql\"]",
                "command = [\n\"pg\",\n3]",
                "jobs.pgdump.command[1]",
                21,
            ),
            ("name = \"all.sql\"", "name = 5", "jobs.pgdump.name", 20),
            (
                "name = \"all.sql\"",
                "name = \"all.sql\"\nenvironment = { A = 1 }",
                "jobs.pgdump.environment.A",
                21,
            ),
            (
                "keep_daily = 14 }",
                "keep_daily = \"x\" }",
                "jobs.etc.retention.keep_daily",
                14,
            ),
            (
                "exclude = [\"*.tmp\"]",
                "exclude = [\"a[\"]",
                "jobs.etc.exclude[0]",
                13,
            ),
            (
                "paths = [\"/etc\"]",
                "paths = [\"/etc\",\n\"etc\"]",
                "jobs.etc.paths[1]",
                13,
            ),
        ];
        for (from, to, key, line) in cases {
            let e = err(&with(from, to));
            assert!(e.contains(&format!(": {key}: ")), "{to}: {e}");
            assert!(e.starts_with(&format!("test.toml:{line}: ")), "{to}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_named_once() {
        let e = err(&with("path = \"/mnt", "pth = \"/x\"\npath = \"/mnt"));
        assert!(e.contains(": repository.pth: "), "{e}");
        assert!(!e.contains("pth.pth"), "{e}");
        assert!(e.starts_with("test.toml:3: "), "{e}");

        let e = err(&format!("\nrepositry = 1\n{GOOD}"));
        assert!(e.starts_with("test.toml:2: repositry: "), "{e}");

        let e = err(&with("keep_daily = 14", "keep_dayly = 14"));
        assert!(e.contains(": jobs.etc.retention.keep_dayly: "), "{e}");

        let e = err(&with("name = \"all.sql\"", "name = \"all.sql\"\nnmae = 1"));
        assert!(e.starts_with("test.toml:21: jobs.pgdump.nmae: "), "{e}");
    }

    #[test]
    fn a_duplicate_key_is_named_with_its_line() {
        let e = err(&with(
            "path = \"/mnt/backup/backuphub\"",
            "path = \"/a\"\npath = \"/b\"",
        ));
        assert!(e.starts_with("test.toml:4: "), "{e}");
        assert!(e.contains("duplicate key `path`"), "{e}");

        let e = err(&with("[jobs.pgdump]", "[jobs.etc]"));
        assert!(e.starts_with("test.toml:16: "), "{e}");
        assert!(e.contains("`etc`"), "{e}");

        let e = err(&with("keep_daily = 14", "keep_daily = 14, keep_daily = 1"));
        assert!(
            e.starts_with("test.toml:14: ") && e.contains("`keep_daily`"),
            "{e}"
        );
    }

    #[test]
    fn dotted_job_names_still_find_their_line() {
        let e = err(&with("[jobs.etc]", "[jobs.\"etc.d\"]").replace("\"/etc\"", "\"etc\""));
        assert!(e.starts_with("test.toml:12: jobs.etc.d.paths[0]: "), "{e}");
    }

    const PG: &str = "[repository]\npath = \"/r\"\n[jobs.pg]\nkind = \"postgres\"\nschedule = \"@daily\"\nhost = \"10.0.0.20\"\nuser = \"backup\"\n";

    #[test]
    fn a_postgres_job_parses_with_its_drill() {
        let c = parse(&format!(
            "{PG}password_file = \"pw\"\nformat = \"ordered\"\n[jobs.pg.drill]\nschedule = \"0 0 5 * * 0\"\nchecks = [ {{ database = \"shop\", query = \"SELECT 1\", expect = \">= 1\" }} ]\n"
        ))
        .unwrap();
        let JobKind::Postgres(p) = &c.jobs.values().next().unwrap().kind else {
            panic!("not a postgres job")
        };
        assert_eq!(p.port, 5432);
        assert_eq!(p.format, crate::kinds::postgres::DumpFormat::Ordered);
        assert_eq!(p.sslmode, crate::kinds::postgres::SslMode::Prefer);
        // (Relative paths are resolved only for a config file given by absolute path.)
        assert_eq!(p.password_file.as_deref(), Some(Path::new("pw")));
        let d = p.drill.as_ref().unwrap();
        assert_eq!(d.allow_empty_databases, vec!["postgres".to_string()]);
        assert_eq!(d.checks[0].expect.to_string(), ">= 1");
    }

    #[test]
    fn postgres_mistakes_name_their_key_and_line() {
        let e = err(&format!("{PG}format = \"tar\"\n"));
        assert!(e.contains(":8:") && e.contains("format"), "{e}");
        let e = err(&format!("{PG}pasword_file = \"x\"\n"));
        assert!(e.contains("pasword_file"), "{e}");
        let e = err(&format!(
            "{PG}[jobs.pg.drill]\nschedule = \"@weekly\"\nchecks = [ {{ database = \"a\", query = \"SELECT 1\", expect = \"lots\" }} ]\n"
        ));
        assert!(e.contains("must start with one of"), "{e}");
        let e = err(&format!(
            "{PG}databases = [\"a\"]\n[jobs.pg.drill]\nschedule = \"@weekly\"\nchecks = [ {{ database = \"b\", query = \"SELECT 1\", expect = \"= 1\" }} ]\n"
        ));
        assert!(
            e.contains("jobs.pg.drill.checks") && e.contains("does not dump"),
            "{e}"
        );
        let e = err(&format!("{PG}password_file = \"\"\n"));
        assert!(e.contains("password_file") && e.contains("empty"), "{e}");
        let e = err(&PG.replace("user = \"backup\"", "user = \"\""));
        assert!(e.contains("jobs.pg.user"), "{e}");
    }
}
