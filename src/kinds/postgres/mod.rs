//! The `postgres` job kind: one snapshot holds `globals.sql` (roles, tablespaces) and one
//! dump per database, each streamed from its dump process into the archiver (never
//! staged on disk), with per-entry metadata (server and client versions, format, size).
//!
//! - [`client`]: connecting (TLS by `sslmode`), the server's version, picking the client
//!   tools whose major version is at least the server's.
//! - [`source`]: the [`Source`](crate::source::Source): lists databases, dumps them one
//!   after another.
//! - [`ordered`]: the dedup-friendly `ordered` format: rows in primary-key order inside
//!   one exported snapshot.
//! - [`restore`]: `restore-postgres`: create each database and restore it.
//! - [`drill`]: a throwaway server on the Pi, the latest complete snapshot restored into
//!   it, checks run, everything torn down.

pub mod client;
pub mod drill;
pub mod ordered;
pub mod restore;
pub mod source;

use std::path::PathBuf;

use serde::Deserialize;

use crate::schedule::Schedule;

/// The job's settings (`kind = "postgres"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresJob {
    /// A host name, an IP address, or an absolute unix-socket directory.
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub user: String,
    /// A file holding the password (its first line). Never inline.
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub sslmode: SslMode,
    /// Databases to dump; empty: every database that allows connections, templates
    /// excluded.
    #[serde(default)]
    pub databases: Vec<String>,
    #[serde(default)]
    pub exclude_databases: Vec<String>,
    #[serde(default)]
    pub format: DumpFormat,
    /// Directories holding PostgreSQL client programs (`pg_dump`, `pg_dumpall`, …), of
    /// any number of major versions; the one matching the server is chosen per run.
    /// Empty: the programs on `PATH`.
    #[serde(default)]
    pub bin_dirs: Vec<PathBuf>,
    /// Seconds to wait for a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
    pub drill: Option<DrillConfig>,
}

fn default_port() -> u16 {
    5432
}
fn default_connect_timeout() -> u64 {
    15
}

/// libpq's `sslmode`, as far as this client implements it: `prefer` and `require`
/// encrypt without verifying the server's certificate (as libpq does without a root
/// certificate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
}

impl SslMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
        }
    }
}

/// How each database is dumped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DumpFormat {
    /// `pg_dump -Fc --compress=0`: restored with `pg_restore`.
    #[default]
    Custom,
    /// `pg_dump -Fp`: SQL for `psql`.
    Plain,
    /// SQL for `psql` with every table's rows in primary-key order, so that a day's dump
    /// shares most chunks with the day before.
    Ordered,
}

impl DumpFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            DumpFormat::Custom => "custom",
            DumpFormat::Plain => "plain",
            DumpFormat::Ordered => "ordered",
        }
    }

    pub fn parse(s: &str) -> Option<DumpFormat> {
        match s {
            "custom" => Some(DumpFormat::Custom),
            "plain" => Some(DumpFormat::Plain),
            "ordered" => Some(DumpFormat::Ordered),
            _ => None,
        }
    }

    fn extension(&self) -> &'static str {
        match self {
            DumpFormat::Custom => "pgdump",
            DumpFormat::Plain | DumpFormat::Ordered => "sql",
        }
    }
}

/// `[jobs.NAME.drill]`: restore the latest complete snapshot into a throwaway server
/// and run checks against it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    pub schedule: Schedule,
    #[serde(default)]
    pub checks: Vec<DrillCheck>,
    /// Where `initdb`, `postgres` (and, if present, `pg_restore` and `psql`) are. Default:
    /// the first of `bin_dirs`, `PATH` and `/usr/lib/postgresql/*/bin` that has them.
    pub server_bin_dir: Option<PathBuf>,
    /// Where the throwaway cluster lives while the drill runs (it needs room for the
    /// restored databases). Default: the system's temporary directory.
    pub work_dir: Option<PathBuf>,
    /// The whole drill is abandoned (and torn down) after this many seconds.
    #[serde(default = "default_drill_timeout")]
    pub timeout_secs: u64,
    /// Databases that may restore without any row (default: `postgres`, the usually
    /// empty maintenance database). Any other database restored empty fails the drill:
    /// an empty dump proves nothing.
    #[serde(default = "default_allow_empty")]
    pub allow_empty_databases: Vec<String>,
    /// The account the throwaway server runs as when the drill is started by root
    /// (`initdb` refuses root).
    #[serde(default = "default_run_as")]
    pub run_as: String,
}

fn default_drill_timeout() -> u64 {
    4 * 3600
}
fn default_allow_empty() -> Vec<String> {
    vec!["postgres".into()]
}
fn default_run_as() -> String {
    "nobody".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillCheck {
    pub database: String,
    /// Its first column of its first row is compared.
    pub query: String,
    pub expect: Expectation,
}

/// `OP VALUE`: OP one of `=`, `!=`, `>=`, `<=`, `>`, `<`; VALUE a number or a single-quoted
/// string (`''` for a quote). Numbers compare as numbers, strings as text (`=`, `!=`
/// only).
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub op: CmpOp,
    pub value: ExpectValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    Lt,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExpectValue {
    Number(f64),
    Text(String),
}

impl std::str::FromStr for Expectation {
    type Err = String;
    fn from_str(s: &str) -> Result<Expectation, String> {
        let s = s.trim();
        let (op, rest) = [
            (">=", CmpOp::Ge),
            ("<=", CmpOp::Le),
            ("!=", CmpOp::Ne),
            ("<>", CmpOp::Ne),
            ("=", CmpOp::Eq),
            (">", CmpOp::Gt),
            ("<", CmpOp::Lt),
        ]
        .into_iter()
        .find_map(|(p, op)| s.strip_prefix(p).map(|r| (op, r.trim())))
        .ok_or_else(|| {
            format!("expectation {s:?} must start with one of = != >= <= > < (e.g. \">= 1000\")")
        })?;
        let value =
            if let Some(inner) = rest.strip_prefix('\'') {
                let inner = inner
                    .strip_suffix('\'')
                    .ok_or_else(|| format!("expectation {s:?}: the string has no closing quote"))?;
                if inner.replace("''", "").contains('\'') {
                    return Err(format!(
                        "expectation {s:?}: a quote inside the string is written ''"
                    ));
                }
                ExpectValue::Text(inner.replace("''", "'"))
            } else {
                ExpectValue::Number(rest.parse::<f64>().ok().filter(|n| n.is_finite()).ok_or_else(
                || format!("expectation {s:?}: {rest:?} is neither a number nor a 'quoted string'"),
            )?)
            };
        if matches!(value, ExpectValue::Text(_)) && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
            return Err(format!(
                "expectation {s:?}: strings compare only with = or !="
            ));
        }
        Ok(Expectation { op, value })
    }
}

impl<'de> Deserialize<'de> for Expectation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Expectation, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Expectation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            CmpOp::Eq => "=",
            CmpOp::Ne => "!=",
            CmpOp::Ge => ">=",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Lt => "<",
        };
        match &self.value {
            ExpectValue::Number(n) => write!(f, "{op} {n}"),
            ExpectValue::Text(t) => write!(f, "{op} '{}'", t.replace('\'', "''")),
        }
    }
}

impl Expectation {
    /// Whether `actual` (a query's first value as text; `None` for SQL NULL or no row)
    /// meets the expectation; `Err` says why not.
    pub fn check(&self, actual: Option<&str>) -> Result<(), String> {
        let Some(actual) = actual else {
            return Err(format!("got no value (no row, or NULL); expected {self}"));
        };
        let ok = match &self.value {
            ExpectValue::Number(want) => {
                let got: f64 = actual.trim().parse().map_err(|_| {
                    format!("got {actual:?}, which is not a number; expected {self}")
                })?;
                match self.op {
                    CmpOp::Eq => got == *want,
                    CmpOp::Ne => got != *want,
                    CmpOp::Ge => got >= *want,
                    CmpOp::Le => got <= *want,
                    CmpOp::Gt => got > *want,
                    CmpOp::Lt => got < *want,
                }
            }
            ExpectValue::Text(want) => match self.op {
                CmpOp::Eq => actual == want,
                _ => actual != want,
            },
        };
        if ok {
            Ok(())
        } else {
            Err(format!("got {actual:?}; expected {self}"))
        }
    }
}

/// The entry a database's dump is stored under: its name with bytes outside
/// `[A-Za-z0-9._-]` (and a leading `.`) percent-encoded, plus the format's extension. A
/// database named `globals` in a text format gets its first letter encoded, so it never
/// takes the place of `globals.sql`. The real name is in the entry's `database` metadata.
pub fn dump_file_name(database: &str, format: DumpFormat) -> String {
    let mut out = String::with_capacity(database.len() + 8);
    for (i, b) in database.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain && !(i == 0 && database == "globals" && format.extension() == "sql") {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{out}.{}", format.extension())
}

/// The roles-and-tablespaces entry of every snapshot.
pub const GLOBALS_FILE: &str = "globals.sql";

/// Metadata keys of a postgres entry.
pub mod meta {
    pub const DATABASE: &str = "database";
    pub const FORMAT: &str = "format";
    pub const SERVER_VERSION: &str = "server_version";
    pub const CLIENT_VERSION: &str = "client_version";
    pub const DATABASE_SIZE: &str = "database_size";
    pub const ENCODING: &str = "encoding";
    /// `globals`, for `globals.sql`.
    pub const CONTENT: &str = "content";
    /// `false` when the globals were dumped without role passwords (not a superuser).
    pub const ROLE_PASSWORDS: &str = "role_passwords";
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Cannot connect, authentication failed, the server went away.
    #[error("{0}")]
    Connect(String),
    /// No client or server programs fit.
    #[error("{0}")]
    Tools(String),
    /// A query or a program failed.
    #[error("{0}")]
    Failed(String),
    /// The target refuses (a non-empty database without `--clean`).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Repo(#[from] crate::repo::RepoError),
    #[error("{0}")]
    Restore(#[from] crate::restore::RestoreError),
    #[error("cancelled")]
    Cancelled,
    #[error("{context}: {err}")]
    Io {
        context: String,
        err: std::io::Error,
    },
}

impl PgError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
        let context = context.into();
        move |err| PgError::Io { context, err }
    }

    pub fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            PgError::Connect(_) | PgError::Failed(_) => ErrorKind::Source,
            PgError::Tools(_) => ErrorKind::Settings,
            PgError::Refused(_) => ErrorKind::Exists,
            PgError::Repo(e) => e.kind(),
            PgError::Restore(e) => e.kind(),
            PgError::Cancelled => ErrorKind::Cancelled,
            PgError::Io { .. } => ErrorKind::Io,
        }
    }
}

/// Validation at config load (names the key in the caller).
pub fn validate(job: &PostgresJob) -> Result<(), (&'static str, String)> {
    if job.host.trim().is_empty() {
        return Err((
            "host",
            "is empty; give a host name, an address or a socket directory".into(),
        ));
    }
    if job.host.starts_with('.') {
        return Err(("host", "a socket directory must be an absolute path".into()));
    }
    if job.user.trim().is_empty() {
        return Err(("user", "is empty".into()));
    }
    if job.connect_timeout_secs == 0 {
        return Err(("connect_timeout_secs", "must be at least 1".into()));
    }
    for d in job.databases.iter().chain(&job.exclude_databases) {
        if d.is_empty() || d.contains('\0') {
            return Err(("databases", format!("{d:?} is not a database name")));
        }
    }
    if let Some(dr) = &job.drill {
        if dr.timeout_secs == 0 {
            return Err(("drill.timeout_secs", "must be at least 1".into()));
        }
        if dr.run_as.trim().is_empty() {
            return Err(("drill.run_as", "is empty".into()));
        }
        for c in &dr.checks {
            if c.query.trim().is_empty() {
                return Err((
                    "drill.checks",
                    format!("the check on {:?} has an empty query", c.database),
                ));
            }
            if !job.databases.is_empty() && !job.databases.contains(&c.database) {
                return Err((
                    "drill.checks",
                    format!(
                        "checks database {:?}, which the job does not dump",
                        c.database
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_parse_and_compare() {
        let e: Expectation = ">= 1000".parse().unwrap();
        assert!(e.check(Some("1000")).is_ok());
        assert!(e.check(Some("999")).unwrap_err().contains(">= 1000"));
        assert!(e.check(None).is_err());
        assert!(e.check(Some("lots")).unwrap_err().contains("not a number"));
        let e: Expectation = "= 'Home'".parse().unwrap();
        assert!(e.check(Some("Home")).is_ok());
        assert!(e.check(Some("home")).is_err());
        let e: Expectation = "= 'it''s'".parse().unwrap();
        assert_eq!(e.value, ExpectValue::Text("it's".into()));
        assert_eq!(e.to_string(), "= 'it''s'");
        assert!(
            "<> 0"
                .parse::<Expectation>()
                .unwrap()
                .check(Some("3"))
                .is_ok()
        );
        assert!(
            "< 2.5"
                .parse::<Expectation>()
                .unwrap()
                .check(Some("2"))
                .is_ok()
        );
        for bad in [
            "1000", ">= ", "= 'open", "> 'x'", "= it's", "= 'a'b'", ">= NaN",
        ] {
            assert!(bad.parse::<Expectation>().is_err(), "{bad}");
        }
    }

    #[test]
    fn dump_names_are_safe_distinct_and_never_globals() {
        assert_eq!(dump_file_name("shop", DumpFormat::Custom), "shop.pgdump");
        assert_eq!(dump_file_name("shop", DumpFormat::Ordered), "shop.sql");
        assert_eq!(dump_file_name("a/b", DumpFormat::Plain), "a%2Fb.sql");
        assert_eq!(dump_file_name("..", DumpFormat::Plain), "%2E..sql");
        assert_eq!(
            dump_file_name("globals", DumpFormat::Plain),
            "%67lobals.sql"
        );
        assert_eq!(
            dump_file_name("globals", DumpFormat::Custom),
            "globals.pgdump"
        );
        assert_eq!(
            dump_file_name("größe", DumpFormat::Plain),
            "gr%C3%B6%C3%9Fe.sql"
        );
        let names = ["a b", "a%20b", "a_b", "A b"];
        let files: std::collections::BTreeSet<_> = names
            .iter()
            .map(|n| dump_file_name(n, DumpFormat::Plain))
            .collect();
        assert_eq!(files.len(), names.len());
        for n in names {
            assert!(crate::source::stream::is_safe_name(&dump_file_name(
                n,
                DumpFormat::Plain
            )));
        }
    }
}
