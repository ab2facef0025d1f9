//! Connecting to PostgreSQL, and the client programs that fit a server.
//!
//! Queries (versions, the database list, the `ordered` format's rows) go through the
//! `postgres` crate; dumps and restores through PostgreSQL's own programs, which get the
//! same connection settings by environment (`PGHOST`, `PGPASSWORD`, …): never on a
//! command line, where `ps` would show them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::{PgError, PostgresJob, SslMode};

/// Where and as whom to connect. The password is wiped from memory on drop.
#[derive(Clone)]
pub struct ConnParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Arc<Zeroizing<String>>>,
    pub sslmode: SslMode,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Reads a password file: its first line, without the line end.
pub fn read_password_file(path: &Path) -> Result<Zeroizing<String>, PgError> {
    crate::kinds::secret_line(path)
        .map_err(PgError::io(format!("password file {}", path.display())))?
        .ok_or_else(|| PgError::Connect(format!("password file {} is empty", path.display())))
}

impl ConnParams {
    pub fn from_job(job: &PostgresJob) -> Result<ConnParams, PgError> {
        let password = match &job.password_file {
            Some(p) => Some(Arc::new(read_password_file(p)?)),
            None => None,
        };
        Ok(ConnParams {
            host: job.host.clone(),
            port: job.port,
            user: job.user.clone(),
            password,
            sslmode: job.sslmode,
            connect_timeout: Duration::from_secs(job.connect_timeout_secs),
        })
    }

    /// `postgresql://user@host:port/` (a password in it is taken, but a password file is
    /// better: command lines are visible to every user of the machine).
    pub fn from_url(url: &str, password_file: Option<&Path>) -> Result<ConnParams, PgError> {
        let config: postgres::Config = url.parse().map_err(|e| {
            PgError::Connect(format!(
                "{}: not a connection URL such as postgresql://user@host:5432/ ({e})",
                crate::redact::Redactor::default().redact(url)
            ))
        })?;
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("USER").ok())
            .ok_or_else(|| PgError::Connect("the URL names no user".into()))?;
        let password = match password_file {
            Some(p) => Some(Arc::new(read_password_file(p)?)),
            None => config
                .get_password()
                .map(|p| Arc::new(Zeroizing::new(String::from_utf8_lossy(p).into_owned()))),
        };
        let sslmode = match config.get_ssl_mode() {
            postgres::config::SslMode::Disable => SslMode::Disable,
            postgres::config::SslMode::Require => SslMode::Require,
            _ => SslMode::Prefer,
        };
        Ok(ConnParams {
            host,
            port,
            user,
            password,
            sslmode,
            connect_timeout: config
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(15)),
        })
    }

    /// Where, for messages (no password).
    pub fn describe(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}@{} (socket, port {})", self.user, self.host, self.port)
        } else {
            format!("{}@{}:{}", self.user, self.host, self.port)
        }
    }

    /// The password, for the redactor.
    pub fn secret(&self) -> Option<String> {
        self.password.as_ref().map(|p| p.as_str().to_string())
    }

    pub fn connect(&self, database: &str) -> Result<postgres::Client, PgError> {
        let mut c = postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(database)
            .application_name("backuphub")
            .connect_timeout(self.connect_timeout)
            .ssl_mode(match self.sslmode {
                SslMode::Disable => postgres::config::SslMode::Disable,
                SslMode::Prefer => postgres::config::SslMode::Prefer,
                SslMode::Require => postgres::config::SslMode::Require,
            })
            // A dropped LAN must not hang a run until TCP gives up (hours).
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(60));
        if let Some(p) = &self.password {
            c.password(p.as_bytes());
        }
        c.connect(tls()).map_err(|e| {
            PgError::Connect(format!(
                "cannot connect to PostgreSQL at {} (database {database:?}): {}",
                self.describe(),
                error_text(&e)
            ))
        })
    }

    /// Connection settings for PostgreSQL's programs, as libpq environment variables.
    pub fn child_env(&self, database: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("PGHOST".to_string(), self.host.clone()),
            ("PGPORT".into(), self.port.to_string()),
            ("PGUSER".into(), self.user.clone()),
            ("PGDATABASE".into(), database.to_string()),
            ("PGSSLMODE".into(), self.sslmode.as_str().to_string()),
            (
                "PGCONNECT_TIMEOUT".into(),
                self.connect_timeout.as_secs().max(2).to_string(),
            ),
            ("PGAPPNAME".into(), "backuphub".into()),
        ];
        if let Some(p) = &self.password {
            env.push(("PGPASSWORD".into(), p.as_str().to_string()));
        }
        env
    }
}

/// A `postgres` error with its server message and detail (its `Display` says only
/// "db error").
pub fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                let t = inner.to_string();
                if !s.contains(&t) {
                    s.push_str(&format!(": {t}"));
                }
                source = inner.source();
            }
            s
        }
    }
}

/// TLS as libpq does it without a root certificate: encrypted, server not verified.
/// (`sslmode = "disable"` never starts TLS; `prefer` falls back to plain text.)
fn tls() -> tokio_postgres_rustls::MakeRustlsConnect {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A server version: major and the full text (`15.18`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub major: u32,
    pub text: String,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The server's version, from `server_version_num` (`150018` → 15.18).
pub fn server_version(client: &mut postgres::Client) -> Result<Version, PgError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .map_err(|e| PgError::Failed(format!("reading the server version: {}", error_text(&e))))?;
    let n: i32 = row.get(0);
    Ok(version_from_num(n as u32))
}

pub fn version_from_num(n: u32) -> Version {
    if n >= 100_000 {
        Version {
            major: n / 10_000,
            text: format!("{}.{}", n / 10_000, n % 10_000),
        }
    } else {
        // 9.6.24 is 90624.
        Version {
            major: n / 10_000,
            text: format!("{}.{}.{}", n / 10_000, (n / 100) % 100, n % 100),
        }
    }
}

/// `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` → 15, "15.18".
pub fn parse_tool_version(out: &str) -> Option<Version> {
    let rest = out
        .split(") ")
        .nth(1)
        .or_else(|| out.split_whitespace().nth(2))?;
    let text: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let major = text.split('.').next()?.parse().ok()?;
    Some(Version {
        major,
        text: text.trim_end_matches('.').to_string(),
    })
}

/// A set of PostgreSQL programs of one version: a directory, or `PATH` (`dir: None`).
#[derive(Clone, Debug)]
pub struct Tools {
    pub dir: Option<PathBuf>,
    pub version: Version,
}

impl Tools {
    pub fn program(&self, name: &str) -> PathBuf {
        match &self.dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    pub fn command(&self, name: &str) -> Command {
        Command::new(self.program(name))
    }

    pub fn describe(&self) -> String {
        match &self.dir {
            Some(d) => format!("{} ({})", self.version, d.display()),
            None => format!("{} (PATH)", self.version),
        }
    }
}

/// The version of `program` in `dir` (or on `PATH`), if it runs.
pub fn probe(dir: Option<&Path>, program: &str) -> Option<Tools> {
    let path = dir.map_or_else(|| PathBuf::from(program), |d| d.join(program));
    let out = Command::new(&path).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let version = parse_tool_version(&String::from_utf8_lossy(&out.stdout))?;
    Some(Tools {
        dir: dir.map(Path::to_path_buf),
        version,
    })
}

/// Of the candidates, the one of the lowest major version that is at least `server`'s
/// (pg_dump refuses a newer server; the closest version behaves most like the server).
/// The error names the server's version and every candidate's.
pub fn pick(server: &Version, candidates: &[Tools], program: &str) -> Result<Tools, String> {
    candidates
        .iter()
        .filter(|t| t.version.major >= server.major)
        .min_by_key(|t| t.version.major)
        .cloned()
        .ok_or_else(|| {
            if candidates.is_empty() {
                format!(
                    "no {program} found (searched bin_dirs or PATH); the server is PostgreSQL {server}: install a client of major version {} or newer",
                    server.major
                )
            } else {
                let found: Vec<String> = candidates.iter().map(Tools::describe).collect();
                format!(
                    "the server is PostgreSQL {server}, newer than every {program} found ({}): {program} refuses a newer server; add a client of major version {} or newer to bin_dirs",
                    found.join(", "),
                    server.major
                )
            }
        })
}

/// Probes `program` in each of `dirs` (or on `PATH` when there are none) and picks.
pub fn tools_for(server: &Version, dirs: &[PathBuf], program: &str) -> Result<Tools, PgError> {
    let candidates: Vec<Tools> = if dirs.is_empty() {
        probe(None, program).into_iter().collect()
    } else {
        dirs.iter()
            .filter_map(|d| probe(Some(d), program))
            .collect()
    };
    pick(server, &candidates, program).map_err(PgError::Tools)
}

/// Quotes an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal for SQL (standard_conforming_strings on, as since 9.1).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(major: u32, dir: &str) -> Tools {
        Tools {
            dir: Some(dir.into()),
            version: Version {
                major,
                text: format!("{major}.1"),
            },
        }
    }

    #[test]
    fn the_closest_client_not_older_than_the_server_is_picked() {
        let server = version_from_num(150_018);
        assert_eq!(server.text, "15.18");
        let all = [
            tools(14, "/a"),
            tools(17, "/b"),
            tools(16, "/c"),
            tools(15, "/d"),
        ];
        assert_eq!(
            pick(&server, &all, "pg_dump").unwrap().dir.unwrap(),
            PathBuf::from("/d")
        );
        assert_eq!(
            pick(&version_from_num(160_002), &all, "pg_dump")
                .unwrap()
                .dir
                .unwrap(),
            PathBuf::from("/c")
        );
        let err = pick(&version_from_num(180_000), &all, "pg_dump").unwrap_err();
        assert!(err.contains("18.0") && err.contains("17.1 (/b)"), "{err}");
        assert!(
            pick(&server, &[], "pg_dump")
                .unwrap_err()
                .contains("no pg_dump")
        );
    }

    #[test]
    fn tool_and_server_versions_parse() {
        let v =
            parse_tool_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n").unwrap();
        assert_eq!((v.major, v.text.as_str()), (15, "15.18"));
        let v = parse_tool_version("psql (PostgreSQL) 17.2\n").unwrap();
        assert_eq!((v.major, v.text.as_str()), (17, "17.2"));
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 9.6.24")
                .unwrap()
                .major,
            9
        );
        assert!(parse_tool_version("garbage").is_none());
        assert_eq!(version_from_num(90624).text, "9.6.24");
    }

    #[test]
    fn debug_output_hides_the_password() {
        let p = ConnParams {
            host: "db".into(),
            port: 5432,
            user: "u".into(),
            password: Some(Arc::new(Zeroizing::new("hunter2hunter2".into()))),
            sslmode: SslMode::Prefer,
            connect_timeout: Duration::from_secs(1),
        };
        assert!(!format!("{p:?}").contains("hunter2"));
        assert!(!p.describe().contains("hunter2"));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
