//! The postgres [`Source`]: `globals.sql`, then one dump per database in file-name order,
//! each dump process started only when the archiver asks for its entry (one at a time),
//! its output streamed straight into the chunker.
//!
//! Failure semantics: the server unreachable or the login refused fails the run (no
//! snapshot); one database failing (dropped meanwhile, permission denied, dump killed)
//! fails that entry only, with the dump's redacted stderr tail, and the snapshot is
//! partial. A dump process that exits non-zero ends its stream with an error, so its
//! entry is never stored looking whole.

use std::collections::BTreeMap;

use super::client::{ConnParams, Tools, Version, error_text, server_version, tools_for};
use super::{DumpFormat, GLOBALS_FILE, PgError, PostgresJob, dump_file_name, meta};
use crate::redact::Redactor;
use crate::repo::index::Previous;
use crate::repo::tree::{Entry, EntryKind, EntryPath};
use crate::source::stream::CommandOutput;
use crate::source::{Content, Source, SourceEntry, SourceError};

pub struct PostgresSource {
    job: PostgresJob,
    redactor: Redactor,
}

impl PostgresSource {
    pub fn new(job: &PostgresJob, redactor: Redactor) -> PostgresSource {
        PostgresSource {
            job: job.clone(),
            redactor,
        }
    }
}

/// One database as listed.
#[derive(Clone, Debug)]
struct Database {
    name: String,
    size: Option<i64>,
    encoding: String,
}

enum Item {
    Globals,
    Database(Database),
    /// Named in `databases` but not there (or not connectable): fails as an entry.
    Missing(String),
}

/// What a run learned before dumping anything.
struct Plan {
    params: ConnParams,
    server: Version,
    tools: Tools,
    superuser: bool,
    maintenance_db: String,
    /// By entry name, so entries come in byte order.
    items: BTreeMap<String, Item>,
}

/// The databases to dump: `wanted` (all when empty) minus `excluded`, each either
/// present or missing. Pure.
fn select<'a>(
    present: &'a [String],
    wanted: &'a [String],
    excluded: &'a [String],
) -> Vec<(&'a str, bool)> {
    let chosen: Vec<(&str, bool)> = if wanted.is_empty() {
        present.iter().map(|d| (d.as_str(), true)).collect()
    } else {
        wanted
            .iter()
            .map(|w| (w.as_str(), present.contains(w)))
            .collect()
    };
    chosen
        .into_iter()
        .filter(|(d, _)| !excluded.iter().any(|e| e == d))
        .collect()
}

fn plan(job: &PostgresJob) -> Result<Plan, PgError> {
    let params = ConnParams::from_job(job)?;
    // The maintenance database that every cluster has; template1 when `postgres` was
    // dropped.
    let (mut client, maintenance_db) = match params.connect("postgres") {
        Ok(c) => (c, "postgres".to_string()),
        Err(first) => match params.connect("template1") {
            Ok(c) => (c, "template1".to_string()),
            Err(_) => return Err(first),
        },
    };
    let server = server_version(&mut client)?;
    let tools = tools_for(&server, &job.bin_dirs, "pg_dump")?;
    let superuser: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .map(|r| r.get(0))
        .map_err(|e| PgError::Failed(format!("reading the role: {}", error_text(&e))))?;
    let rows = client
        .query(
            "SELECT datname,
                    CASE WHEN has_database_privilege(oid, 'CONNECT') THEN pg_catalog.pg_database_size(oid) END,
                    pg_catalog.pg_encoding_to_char(encoding)
             FROM pg_catalog.pg_database
             WHERE datallowconn AND NOT datistemplate
             ORDER BY datname",
            &[],
        )
        .map_err(|e| PgError::Failed(format!("listing databases: {}", error_text(&e))))?;
    let listed: Vec<Database> = rows
        .iter()
        .map(|r| Database {
            name: r.get(0),
            size: r.get(1),
            encoding: r.get(2),
        })
        .collect();
    let names: Vec<String> = listed.iter().map(|d| d.name.clone()).collect();
    let mut items = BTreeMap::new();
    items.insert(GLOBALS_FILE.to_string(), Item::Globals);
    for (name, present) in select(&names, &job.databases, &job.exclude_databases) {
        let file = dump_file_name(name, job.format);
        let item = match listed.iter().find(|d| d.name == name) {
            Some(d) if present => Item::Database(d.clone()),
            _ => Item::Missing(name.to_string()),
        };
        items.insert(file, item);
    }
    Ok(Plan {
        params,
        server,
        tools,
        superuser,
        maintenance_db,
        items,
    })
}

impl Source for PostgresSource {
    fn description(&self) -> String {
        format!(
            "postgres {}@{}:{} ({} format)",
            self.job.user,
            self.job.host,
            self.job.port,
            self.job.format.as_str()
        )
    }

    fn entries<'a>(
        &'a mut self,
        _previous: Previous,
    ) -> Box<dyn Iterator<Item = Result<SourceEntry, SourceError>> + 'a> {
        // A dump says nothing about its bytes by its name: every run reads every dump.
        let plan = match plan(&self.job) {
            Ok(p) => p,
            Err(e) => {
                return Box::new(std::iter::once(Err(SourceError::Fatal(
                    self.redactor.redact(&e.to_string()),
                ))));
            }
        };
        tracing::info!(
            server = %plan.server,
            client = %plan.tools.describe(),
            databases = plan.items.len() - 1,
            "dumping PostgreSQL"
        );
        let format = self.job.format;
        let redactor = self.redactor.clone();
        let Plan {
            params,
            server,
            tools,
            superuser,
            maintenance_db,
            items,
        } = plan;
        Box::new(items.into_iter().map(move |(file, item)| {
            let path = EntryPath::new(file.into_bytes());
            let mut entry = Entry::new(path.clone(), EntryKind::File);
            entry.mode = 0o600;
            entry.uid = rustix::process::getuid().as_raw();
            entry.gid = rustix::process::getgid().as_raw();
            entry.mtime_ns = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
            entry
                .meta
                .insert(meta::SERVER_VERSION.into(), server.text.clone());
            entry
                .meta
                .insert(meta::CLIENT_VERSION.into(), tools.version.text.clone());
            let reader = match item {
                Item::Missing(name) => {
                    return Err(SourceError::entry(
                        &path,
                        format!("database {name:?} does not exist or does not allow connections"),
                    ));
                }
                Item::Globals => {
                    entry.meta.insert(meta::CONTENT.into(), "globals".into());
                    entry.meta.insert(meta::FORMAT.into(), "plain".into());
                    entry
                        .meta
                        .insert(meta::ROLE_PASSWORDS.into(), superuser.to_string());
                    let mut argv = vec![
                        tools.program("pg_dumpall").display().to_string(),
                        "--globals-only".into(),
                        "--no-password".into(),
                        format!("--database={maintenance_db}"),
                    ];
                    // Role passwords are in pg_authid, which only a superuser reads.
                    if !superuser {
                        argv.push("--no-role-passwords".into());
                    }
                    CommandOutput::spawn(
                        &argv,
                        &params.child_env(&maintenance_db),
                        redactor.clone(),
                    )
                    .map(|c| Box::new(c) as Box<dyn std::io::Read + Send>)
                    .map_err(|e| SourceError::entry(&path, e))?
                }
                Item::Database(db) => {
                    entry.meta.insert(meta::DATABASE.into(), db.name.clone());
                    entry
                        .meta
                        .insert(meta::FORMAT.into(), format.as_str().into());
                    entry
                        .meta
                        .insert(meta::ENCODING.into(), db.encoding.clone());
                    if let Some(size) = db.size {
                        entry
                            .meta
                            .insert(meta::DATABASE_SIZE.into(), size.to_string());
                    }
                    match format {
                        DumpFormat::Custom | DumpFormat::Plain => {
                            let argv = vec![
                                tools.program("pg_dump").display().to_string(),
                                if format == DumpFormat::Custom {
                                    "--format=custom".into()
                                } else {
                                    "--format=plain".into()
                                },
                                // backuphub compresses; uncompressed dumps dedup.
                                "--compress=0".into(),
                                "--no-password".into(),
                            ];
                            // The name goes by PGDATABASE: as an argument, a name with `=`
                            // would be read as a connection string.
                            CommandOutput::spawn(
                                &argv,
                                &params.child_env(&db.name),
                                redactor.clone(),
                            )
                            .map(|c| Box::new(c) as Box<dyn std::io::Read + Send>)
                            .map_err(|e| SourceError::entry(&path, e))?
                        }
                        DumpFormat::Ordered => super::ordered::spawn(
                            params.clone(),
                            db.name.clone(),
                            tools.clone(),
                            server.major,
                            redactor.clone(),
                        )
                        .map_err(|e| SourceError::entry(&path, e))?,
                    }
                }
            };
            Ok(SourceEntry {
                entry,
                content: Content::Read(reader),
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn selection_defaults_to_all_and_names_the_missing() {
        let present = s(&["app", "shop", "wiki"]);
        assert_eq!(
            select(&present, &[], &s(&["wiki"])),
            vec![("app", true), ("shop", true)]
        );
        assert_eq!(
            select(&present, &s(&["shop", "gone"]), &[]),
            vec![("shop", true), ("gone", false)]
        );
        assert!(select(&present, &s(&["shop"]), &s(&["shop"])).is_empty());
    }
}
