//! Real PostgreSQL servers for the tests: initdb in a scratch directory, a free port on
//! 127.0.0.1, password (SCRAM) authentication over TCP. Run as `nobody` when the tests
//! run as root (initdb refuses root). The binaries come from Debian's postgresql
//! package, which `tests/run-all.sh` installs when missing.

use super::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "Pg-S3cret-7f1e2d9c";

/// The newest `/usr/lib/postgresql/*/bin` (or `$BACKUPHUB_TEST_PG_BIN`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BACKUPHUB_TEST_PG_BIN") {
        return d.into();
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (tests/run-all.sh installs it)")
        .flatten()
        .map(|d| d.path().join("bin"))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
    });
    dirs.pop()
        .expect("a PostgreSQL server in /usr/lib/postgresql/*/bin")
}

pub struct PgServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub bin: PathBuf,
    child: Option<Child>,
    run_as: Option<(u32, u32)>,
}

impl PgServer {
    pub fn start() -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("pgtest")
            .tempdir_in("/tmp")
            .unwrap();
        let run_as = rustix::process::geteuid()
            .is_root()
            .then_some((65534u32, 65534u32));
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let mut s = PgServer {
            port: 0,
            bin,
            child: None,
            run_as,
            dir,
        };
        let out = s
            .as_owner(&s.bin.join("initdb"))
            .arg("-D")
            .arg(s.dir.path().join("data"))
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        s.start_on(free_port());
        s
    }

    fn as_owner(&self, program: &Path) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(program);
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c.current_dir(self.dir.path()).env("LC_ALL", "C");
        c
    }

    /// (Re)starts the server on `port`.
    pub fn start_on(&mut self, port: u16) {
        self.port = port;
        let log = std::fs::File::create(self.dir.path().join("log")).unwrap();
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(self.dir.path().join("log"), Some(uid), Some(gid)).unwrap();
        }
        let child = self
            .as_owner(&self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=50",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self
                .psql_cmd("postgres", "SELECT 1")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGQUIT) };
            let _ = c.wait();
        }
    }

    pub fn url(&self, user: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/", self.port)
    }

    fn psql_cmd(&self, db: &str, sql: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
        ])
        .arg(self.port.to_string())
        .args(["-d", db, "-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null());
        c
    }

    /// Runs SQL as the superuser; panics on failure. Returns the unaligned output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_cmd(db, sql).output().unwrap();
        assert!(
            out.status.success(),
            "psql {db}: {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Like `sql`, without panicking.
    pub fn try_sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self.psql_cmd(db, sql).output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A fingerprint of every user table of `db` (schema.table → row count and md5 of its
    /// rows in a canonical order), plus large objects' contents.
    pub fn fingerprint(&self, db: &str) -> Vec<String> {
        let tables = self.sql(
            db,
            "SELECT quote_ident(n.nspname)||'.'||quote_ident(c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid=c.relnamespace WHERE c.relkind='r' AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
        );
        let mut out = Vec::new();
        for t in tables.lines().filter(|l| !l.is_empty()) {
            let fp = self.sql(
                db,
                &format!("SELECT count(*)||':'||coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)),'') FROM {t} x"),
            );
            out.push(format!("{t} {fp}"));
        }
        out.push(self.sql(
            db,
            "SELECT 'lo '||coalesce(string_agg(oid::text||':'||md5(lo_get(oid)), ',' ORDER BY oid),'') FROM pg_largeobject_metadata",
        ));
        out.push(self.sql(
            db,
            "SELECT 'seq '||coalesce(string_agg(sequencename||':'||coalesce(last_value,0), ',' ORDER BY sequencename),'') FROM pg_sequences",
        ));
        out
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
