//! `restore-postgres`: databases of a snapshot back into a server.
//!
//! Each selected database is created (with `clean`, dropped first; an existing one that
//! holds anything is refused otherwise), then its dump is streamed from the repository
//! into `pg_restore` (custom format) or `psql` with `ON_ERROR_STOP` (plain and ordered),
//! and its tables and rows are counted for the report. The drill uses the same function.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::{
    ConnParams, Version, error_text, quote_ident, quote_literal, server_version, tools_for,
};
use super::{DumpFormat, PgError, meta};
use crate::redact::Redactor;
use crate::repo::Repository;
use crate::repo::snapshot::Snapshot;
use crate::repo::tree::{Entry, EntryKind};
use crate::restore::EntryContent;

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Only these databases (by name); empty: every database in the snapshot.
    pub databases: Vec<String>,
    /// Restore `globals.sql` (roles, tablespaces) first.
    pub globals: bool,
    /// Drop and recreate databases that exist.
    pub clean: bool,
    /// Custom format only: skip ownership and privileges (for a server without the roles).
    pub no_owner: bool,
    /// Directories of client programs; empty: `PATH`.
    pub bin_dirs: Vec<PathBuf>,
}

/// One database's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct DbReport {
    pub database: String,
    pub format: String,
    pub ok: bool,
    pub tables: u64,
    pub rows: u64,
    pub restored_bytes: u64,
    pub duration_ms: u64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    /// Errors `psql` reported for `globals.sql` other than "already exists".
    pub globals: Option<Result<u64, String>>,
    pub databases: Vec<DbReport>,
}

impl RestoreReport {
    pub fn ok(&self) -> bool {
        !matches!(self.globals, Some(Err(_))) && self.databases.iter().all(|d| d.ok)
    }
}

/// The postgres entries of a snapshot: `globals.sql` and the databases, selected.
pub fn dump_entries(
    repo: &Repository,
    snap: &Snapshot,
    wanted: &[String],
) -> Result<(Option<Entry>, Vec<Entry>), PgError> {
    let mut globals = None;
    let mut dbs = Vec::new();
    for e in repo.entries(snap) {
        let e = e?;
        if e.kind != EntryKind::File {
            continue;
        }
        if e.meta.get(meta::CONTENT).map(String::as_str) == Some("globals") {
            globals = Some(e);
        } else if let Some(name) = e.meta.get(meta::DATABASE)
            && (wanted.is_empty() || wanted.contains(name))
        {
            dbs.push(e);
        }
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !dbs.iter().any(|e| e.meta.get(meta::DATABASE) == Some(w)))
        .collect();
    if !missing.is_empty() {
        return Err(PgError::Failed(format!(
            "the snapshot holds no dump of {missing:?} (a partial snapshot lists what failed)"
        )));
    }
    if dbs.is_empty() && globals.is_none() {
        return Err(PgError::Failed(
            "the snapshot holds no PostgreSQL dumps (is it a postgres job's?)".into(),
        ));
    }
    Ok((globals, dbs))
}

/// Restores `snap`'s databases into the server `target`.
pub fn restore_snapshot(
    repo: &Repository,
    snap: &Snapshot,
    target: &ConnParams,
    opts: &RestoreOptions,
    redactor: &Redactor,
    cancel: &AtomicBool,
) -> Result<RestoreReport, PgError> {
    let (globals, dbs) = dump_entries(repo, snap, &opts.databases)?;
    // Not `postgres`: the snapshot may hold that database, and `--clean` cannot drop the
    // database it is connected to.
    let maintenance = "template1";
    let mut admin = target.connect(maintenance)?;
    let server = server_version(&mut admin)?;
    // The programs must read what the dump's pg_dump wrote and talk to this server.
    let dumped_major = dbs
        .iter()
        .chain(globals.iter())
        .filter_map(|e| e.meta.get(meta::CLIENT_VERSION))
        .filter_map(|v| v.split('.').next()?.parse::<u32>().ok())
        .max()
        .unwrap_or(0);
    let need = Version {
        major: server.major.max(dumped_major),
        text: if dumped_major > server.major {
            format!("{dumped_major} (the dump's pg_dump)")
        } else {
            server.text.clone()
        },
    };
    let mut report = RestoreReport::default();
    if opts.globals {
        let g = globals
            .as_ref()
            .ok_or_else(|| PgError::Failed("the snapshot has no globals.sql to restore".into()))?;
        let psql = tools_for(&need, &opts.bin_dirs, "psql")?;
        let mut cmd = psql.command("psql");
        cmd.args(["-X", "--no-password", "-q", "-d"])
            .arg(conninfo_db(maintenance))
            .envs(target.child_env(maintenance));
        report.globals = Some(match feed(repo, g, cmd, redactor) {
            Ok((_, stderr)) => {
                // Roles that exist already (the bootstrap superuser, always) are expected.
                let errors: Vec<&str> = stderr
                    .lines()
                    .filter(|l| l.contains("ERROR:") && !l.contains("already exists"))
                    .collect();
                if errors.is_empty() {
                    Ok(stderr.lines().filter(|l| l.contains("ERROR:")).count() as u64)
                } else {
                    Err(redactor.redact(&errors.join("; ")))
                }
            }
            Err(e) => Err(e),
        });
    }
    for e in &dbs {
        if cancel.load(Ordering::Relaxed) {
            return Err(PgError::Cancelled);
        }
        let started = Instant::now();
        let name = e.meta.get(meta::DATABASE).cloned().unwrap_or_default();
        let format = e
            .meta
            .get(meta::FORMAT)
            .and_then(|f| DumpFormat::parse(f))
            .unwrap_or(DumpFormat::Custom);
        let mut r = DbReport {
            database: name.clone(),
            format: format.as_str().into(),
            ok: false,
            tables: 0,
            rows: 0,
            restored_bytes: 0,
            duration_ms: 0,
            error: None,
        };
        let outcome = (|| -> Result<(u64, u64, u64), PgError> {
            prepare_database(
                &mut admin,
                target,
                &name,
                e.meta.get(meta::ENCODING),
                opts.clean,
            )?;
            let bytes = match format {
                DumpFormat::Custom => {
                    let t = tools_for(&need, &opts.bin_dirs, "pg_restore")?;
                    let mut cmd = t.command("pg_restore");
                    cmd.args(["--exit-on-error", "--no-password", "--dbname"])
                        .arg(conninfo_db(&name))
                        .envs(target.child_env(&name));
                    if opts.no_owner {
                        cmd.args(["--no-owner", "--no-privileges"]);
                    }
                    feed(repo, e, cmd, redactor).map_err(PgError::Failed)?.0
                }
                DumpFormat::Plain | DumpFormat::Ordered => {
                    let t = tools_for(&need, &opts.bin_dirs, "psql")?;
                    let mut cmd = t.command("psql");
                    cmd.args(["-X", "--no-password", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
                        .arg(conninfo_db(&name))
                        .envs(target.child_env(&name));
                    feed(repo, e, cmd, redactor).map_err(PgError::Failed)?.0
                }
            };
            let mut c = target.connect(&name)?;
            let (tables, rows) = count_rows(&mut c, server.major)?;
            Ok((bytes, tables, rows))
        })();
        r.duration_ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok((bytes, tables, rows)) => {
                r.ok = true;
                r.restored_bytes = bytes;
                r.tables = tables;
                r.rows = rows;
            }
            Err(err) => r.error = Some(redactor.redact(&err.to_string())),
        }
        report.databases.push(r);
    }
    Ok(report)
}

/// A libpq connection string naming only the database (the rest comes by environment),
/// safe for any name.
fn conninfo_db(name: &str) -> String {
    format!(
        "dbname='{}'",
        name.replace('\\', "\\\\").replace('\'', "\\'")
    )
}

/// Makes `name` ready to restore into: created if missing; if it exists, dropped and
/// recreated with `clean`, used as it is when it holds nothing, refused otherwise.
fn prepare_database(
    admin: &mut postgres::Client,
    target: &ConnParams,
    name: &str,
    encoding: Option<&String>,
    clean: bool,
) -> Result<(), PgError> {
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1",
            &[&name],
        )
        .map_err(|e| PgError::Failed(format!("looking up database {name:?}: {}", error_text(&e))))?
        .is_some();
    if exists {
        if clean {
            let q = format!("DROP DATABASE {} WITH (FORCE)", quote_ident(name));
            admin
                .batch_execute(&q)
                .or_else(|_| admin.batch_execute(&format!("DROP DATABASE {}", quote_ident(name))))
                .map_err(|e| {
                    PgError::Failed(format!("dropping database {name:?}: {}", error_text(&e)))
                })?;
        } else {
            let mut c = target.connect(name)?;
            let objects: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'",
                    &[],
                )
                .map_err(|e| PgError::Failed(format!("inspecting database {name:?}: {}", error_text(&e))))?
                .get(0);
            if objects > 0 {
                return Err(PgError::Refused(format!(
                    "database {name:?} exists and is not empty ({objects} relations); restore with --clean to replace it, or choose another server"
                )));
            }
            return Ok(());
        }
    }
    let mut q = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(name));
    if let Some(enc) = encoding {
        q.push_str(&format!(" ENCODING {}", quote_literal(enc)));
    }
    admin
        .batch_execute(&q)
        .map_err(|e| PgError::Failed(format!("creating database {name:?}: {}", error_text(&e))))
}

/// Tables and rows of the user tables in the connected database.
pub fn count_rows(client: &mut postgres::Client, server_major: u32) -> Result<(u64, u64), PgError> {
    let tables = super::ordered::table_names(client, server_major)?;
    let mut rows = 0u64;
    for t in &tables {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM ONLY {t}"), &[])
            .map_err(|e| PgError::Failed(format!("counting rows of {t}: {}", error_text(&e))))?
            .get(0);
        rows += n as u64;
    }
    Ok((tables.len() as u64, rows))
}

/// Streams `entry`'s content into `cmd`'s stdin. Returns the bytes fed and the stderr
/// text; a failing program is an error with its redacted stderr tail.
fn feed(
    repo: &Repository,
    entry: &Entry,
    mut cmd: Command,
    redactor: &Redactor,
) -> Result<(u64, String), String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let mut stderr = child.stderr.take().expect("piped");
    let collector = std::thread::spawn(move || {
        // Restores print a line per error; keep the start and the tail bounded.
        let mut text = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
            if text.len() > 256 * 1024 {
                text.drain(..text.len() - 128 * 1024);
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let mut stdin = child.stdin.take().expect("piped");
    let fed = EntryContent::new(repo, entry).copy_to(&mut stdin);
    drop(stdin);
    let status = child.wait().map_err(|e| format!("{program}: {e}"))?;
    let stderr = collector.join().unwrap_or_default();
    let tail = || crate::source::stream::redacted_tail(redactor, &stderr, 2048);
    match (status.success(), fed) {
        (true, Ok(n)) => Ok((n, stderr)),
        (false, _) => Err(format!("{program} exited with {status}: {}", tail())),
        (true, Err(e)) => Err(format!("reading the dump from the repository: {e}")),
    }
}

/// Waits `d` unless cancelled; for the drill's polling.
pub fn sleep_unless(cancel: &AtomicBool, d: Duration) -> Result<(), PgError> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if cancel.load(Ordering::Relaxed) {
            return Err(PgError::Cancelled);
        }
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quotes_any_name() {
        assert_eq!(conninfo_db("shop"), "dbname='shop'");
        assert_eq!(conninfo_db("a'b\\c=d"), "dbname='a\\'b\\\\c=d'");
    }
}
