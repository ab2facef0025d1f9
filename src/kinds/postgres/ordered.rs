//! The `ordered` format: one plain SQL file that `psql` restores, with every table's
//! rows in primary-key order.
//!
//! pg_dump writes rows in heap order, which updates and vacuum shuffle, so two days'
//! dumps share few chunks. Here one repeatable-read transaction exports its snapshot;
//! `pg_dump --snapshot` writes the pre-data and post-data sections from it, and between
//! them this module writes, from the same snapshot, each table as `COPY (SELECT … ORDER
//! BY <primary key>)` (heap order without one), sequence values and large objects —
//! what pg_dump's data section holds. Rows keep their place in the file from day to day,
//! so content-defined chunking finds the unchanged ones again.
//!
//! The producer runs on its own thread and writes into a pipe; the archiver reads the
//! other end. A failure anywhere is reported as a read error at the end of the stream,
//! so a cut-short dump is never stored as a whole one.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use super::PgError;
use super::client::{ConnParams, Tools, error_text, quote_literal};
use crate::redact::Redactor;
use crate::source::stream::CommandOutput;

/// Large objects are written in pieces of this size (as hex, twice that on a line).
const LO_PIECE: i32 = 64 * 1024;
/// Large object ids are listed this many at a time, so a database with millions of them
/// needs no list in memory.
const LO_BATCH: i64 = 1000;

/// Starts the ordered dump of `database`; the returned reader yields the SQL and ends
/// with an error if any step failed.
pub fn spawn(
    params: ConnParams,
    database: String,
    tools: Tools,
    server_major: u32,
    redactor: Redactor,
) -> std::io::Result<Box<dyn Read + Send>> {
    let (reader, mut writer) = std::io::pipe()?;
    let outcome: Arc<Mutex<Option<Result<(), String>>>> = Arc::new(Mutex::new(None));
    let slot = outcome.clone();
    let thread = std::thread::Builder::new()
        .name(format!("pg-ordered-{database}"))
        .spawn(move || {
            let r = produce(
                &params,
                &database,
                &tools,
                server_major,
                &redactor,
                &mut writer,
            )
            .map_err(|e| redactor.redact(&e.to_string()));
            // Close the pipe only after the outcome is recorded: the reader looks at it
            // when it sees the end.
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            drop(writer);
        })?;
    Ok(Box::new(OrderedReader {
        pipe: reader,
        outcome,
        thread: Some(thread),
    }))
}

struct OrderedReader {
    pipe: std::io::PipeReader,
    outcome: Arc<Mutex<Option<Result<(), String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Read for OrderedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            let outcome = self
                .outcome
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            return match outcome {
                Some(Ok(())) => Ok(0),
                Some(Err(m)) => Err(std::io::Error::other(m)),
                None => Err(std::io::Error::other(
                    "the ordered dump ended without a result (its thread panicked)",
                )),
            };
        }
        Ok(n)
    }
}

// Dropping the reader early (a cancelled run) closes the pipe: the producer's next write
// fails with EPIPE, it ends, and its connection and pg_dump go with it.

struct Table {
    qualified: String,
    columns: Vec<String>,
    primary_key: Option<Vec<String>>,
}

fn sql_err(what: &str) -> impl Fn(postgres::Error) -> PgError + '_ {
    move |e| PgError::Failed(format!("{what}: {}", error_text(&e)))
}

fn produce(
    params: &ConnParams,
    database: &str,
    tools: &Tools,
    server_major: u32,
    redactor: &Redactor,
    out: &mut dyn Write,
) -> Result<(), PgError> {
    let mut client = params.connect(database)?;
    client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;
             SET row_security = off;
             SET statement_timeout = 0;
             SET lock_timeout = 0;
             SET extra_float_digits = 3;
             SET DateStyle = ISO;
             SET IntervalStyle = postgres;",
        )
        .map_err(sql_err("starting the dump transaction"))?;
    let snapshot: String = client
        .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
        .map_err(sql_err("exporting the snapshot"))?
        .get(0);
    let encoding: String = client
        .query_one("SELECT pg_catalog.pg_encoding_to_char(encoding) FROM pg_catalog.pg_database WHERE datname = current_database()", &[])
        .map_err(sql_err("reading the database encoding"))?
        .get(0);

    section(
        params, database, tools, &snapshot, "pre-data", redactor, out,
    )?;

    let tables = list_tables(&mut client, server_major)?;
    let sequences = list_sequences(&mut client)?;
    // COPY text comes in the client encoding: the database's own, as pg_dump does, so the
    // file restores byte for byte whatever the database's encoding.
    client
        .batch_execute(&format!(
            "SET client_encoding = {}",
            quote_literal(&encoding)
        ))
        .map_err(sql_err("setting the client encoding"))?;
    let w = |out: &mut dyn Write, s: &str| out.write_all(s.as_bytes()).map_err(write_err);
    w(
        out,
        &format!(
            "\n--\n-- Data in primary-key order (backuphub ordered format)\n--\n\nSET client_encoding = {};\n",
            quote_literal(&encoding)
        ),
    )?;
    for t in &tables {
        let cols = t.columns.join(", ");
        let list = if cols.is_empty() {
            String::new()
        } else {
            format!(" ({cols})")
        };
        w(out, &format!("\nCOPY {}{list} FROM stdin;\n", t.qualified))?;
        let order = match &t.primary_key {
            Some(pk) if !pk.is_empty() => format!(" ORDER BY {}", pk.join(", ")),
            _ => String::new(),
        };
        let query = format!(
            "COPY (SELECT {cols} FROM ONLY {}{order}) TO STDOUT",
            t.qualified
        );
        let mut rows = client
            .copy_out(query.as_str())
            .map_err(sql_err(&format!("reading table {}", t.qualified)))?;
        std::io::copy(&mut rows, out).map_err(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                write_err(e)
            } else {
                PgError::Failed(format!("reading table {}: {e}", t.qualified))
            }
        })?;
        drop(rows);
        w(out, "\\.\n")?;
    }
    w(out, "\nSET client_encoding = 'UTF8';\n")?;
    client
        .batch_execute("SET client_encoding = 'UTF8'")
        .map_err(sql_err("resetting the client encoding"))?;
    for (name, last, called) in sequences {
        w(
            out,
            &format!(
                "SELECT pg_catalog.setval({}, {last}, {called});\n",
                quote_literal(&name)
            ),
        )?;
    }
    large_objects(&mut client, out)?;

    section(
        params,
        database,
        tools,
        &snapshot,
        "post-data",
        redactor,
        out,
    )?;
    client
        .batch_execute("COMMIT")
        .map_err(sql_err("ending the dump transaction"))?;
    Ok(())
}

fn write_err(e: std::io::Error) -> PgError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        PgError::Cancelled
    } else {
        PgError::Io {
            context: "writing the dump".into(),
            err: e,
        }
    }
}

/// One section of pg_dump's plain output, from the exported snapshot.
fn section(
    params: &ConnParams,
    database: &str,
    tools: &Tools,
    snapshot: &str,
    name: &str,
    redactor: &Redactor,
    out: &mut dyn Write,
) -> Result<(), PgError> {
    let argv = vec![
        tools.program("pg_dump").display().to_string(),
        "--format=plain".into(),
        format!("--section={name}"),
        format!("--snapshot={snapshot}"),
        "--no-password".into(),
    ];
    let mut dump = CommandOutput::spawn(&argv, &params.child_env(database), redactor.clone())
        .map_err(|e| PgError::Failed(e.to_string()))?;
    std::io::copy(&mut dump, out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            PgError::Cancelled
        } else {
            PgError::Failed(format!("pg_dump --section={name}: {e}"))
        }
    })?;
    Ok(())
}

/// User tables with data (not views, foreign or partitioned parents, not an extension's),
/// by schema and name, with their columns and primary key, quoted.
fn list_tables(client: &mut postgres::Client, server_major: u32) -> Result<Vec<Table>, PgError> {
    // Generated columns (12+) are computed on restore, never copied.
    let generated = if server_major >= 12 {
        "AND a.attgenerated = ''"
    } else {
        ""
    };
    let q = format!(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname),
                ARRAY(SELECT quote_ident(a.attname) FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped {generated}
                      ORDER BY a.attnum),
                (SELECT ARRAY(SELECT quote_ident(a.attname)
                              FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, pos)
                              JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                              ORDER BY k.pos)
                 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r'
           AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                           WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
         ORDER BY n.nspname, c.relname"
    );
    let rows = client
        .query(q.as_str(), &[])
        .map_err(sql_err("listing tables"))?;
    Ok(rows
        .into_iter()
        .map(|r| Table {
            qualified: r.get(0),
            columns: r.get(1),
            primary_key: r.get(2),
        })
        .collect())
}

/// Every sequence with its value, as `setval` wants them.
fn list_sequences(client: &mut postgres::Client) -> Result<Vec<(String, i64, bool)>, PgError> {
    let names: Vec<String> = client
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'S' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                               WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
             ORDER BY n.nspname, c.relname",
            &[],
        )
        .map_err(sql_err("listing sequences"))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let row = client
            .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
            .map_err(sql_err(&format!("reading sequence {name}")))?;
        out.push((name, row.get(0), row.get(1)));
    }
    Ok(out)
}

/// Large objects' contents, as pg_dump writes them (their creation and owners are in
/// the pre-data section). Each is written in its own transaction, as pg_dump does:
/// large-object descriptors live only inside one.
fn large_objects(client: &mut postgres::Client, out: &mut dyn Write) -> Result<(), PgError> {
    let w = |out: &mut dyn Write, s: &str| out.write_all(s.as_bytes()).map_err(write_err);
    let mut after: i64 = -1;
    loop {
        let oids: Vec<i64> = client
            .query(
                "SELECT oid::int8 FROM pg_catalog.pg_largeobject_metadata WHERE oid::int8 > $1 ORDER BY oid LIMIT $2",
                &[&after, &LO_BATCH],
            )
            .map_err(sql_err("listing large objects"))?
            .into_iter()
            .map(|r| r.get(0))
            .collect();
        let Some(&last) = oids.last() else {
            return Ok(());
        };
        for oid in oids {
            w(
                out,
                &format!("\nBEGIN;\nSELECT pg_catalog.lo_open('{oid}', 131072);\n"),
            )?;
            let mut offset: i64 = 0;
            loop {
                let piece: Vec<u8> = client
                    .query_one(
                        "SELECT pg_catalog.lo_get($1::int8::oid, $2, $3)",
                        &[&oid, &offset, &LO_PIECE],
                    )
                    .map_err(sql_err(&format!("reading large object {oid}")))?
                    .get(0);
                if piece.is_empty() {
                    break;
                }
                offset += piece.len() as i64;
                w(
                    out,
                    &format!(
                        "SELECT pg_catalog.lowrite(0, '\\x{}');\n",
                        hex::encode(&piece)
                    ),
                )?;
                if piece.len() < LO_PIECE as usize {
                    break;
                }
            }
            w(out, "SELECT pg_catalog.lo_close(0);\nCOMMIT;\n")?;
        }
        after = last;
    }
}

/// For tests and the drill: the qualified names of tables as this module lists them.
pub fn table_names(
    client: &mut postgres::Client,
    server_major: u32,
) -> Result<Vec<String>, PgError> {
    Ok(list_tables(client, server_major)?
        .into_iter()
        .map(|t| t.qualified)
        .collect())
}
