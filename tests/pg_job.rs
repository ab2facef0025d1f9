//! The postgres job kind against real PostgreSQL servers (see tests/common/pg.rs):
//! backup → restore-postgres into a second server → identical data, for each format;
//! the ordered format's day-2 growth; failures that must never look complete; drills.

mod common;

use std::path::{Path, PathBuf};

use common::pg::{PASSWORD, PgServer};
use common::{Env, text};

const FIXTURE_SHOP: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, city text);
INSERT INTO customers (name, city)
  SELECT 'Kunde ' || g || ' Grüße ☃ ' || md5(g::text), CASE WHEN g % 3 = 0 THEN 'Zürich' END
  FROM generate_series(1, 2000) g;
CREATE TABLE orders (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer int REFERENCES customers(id),
  total numeric(10,2),
  note text,
  total_x2 numeric GENERATED ALWAYS AS (total * 2) STORED);
INSERT INTO orders (customer, total, note)
  SELECT 1 + g % 2000, g * 1.5, repeat('x', g % 50) FROM generate_series(1, 5000) g;
CREATE TABLE log_nopk (at timestamptz, msg text);
INSERT INTO log_nopk SELECT '2026-01-01'::timestamptz + g * interval '1 minute', 'event ' || g
  FROM generate_series(1, 1000) g;
CREATE TABLE composite (a int, b text, v jsonb, PRIMARY KEY (b, a));
INSERT INTO composite SELECT g % 7, 'k' || (g / 7), jsonb_build_object('g', g) FROM generate_series(1, 700) g;
CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100;
CREATE INDEX orders_customer ON orders (customer);
SELECT lo_from_bytea(0, convert_to(repeat('large object ✓ ', 20000), 'UTF8'));
ALTER TABLE customers OWNER TO app;
";

const FIXTURE_WIKI: &str = "
CREATE TABLE pages (id int PRIMARY KEY, title text);
INSERT INTO pages VALUES (1, 'Home'), (2, 'Über uns'), (3, '日本語');
";

/// Server A with roles, two databases and the fixtures.
fn source_server() -> PgServer {
    let pg = PgServer::start();
    pg.sql(
        "postgres",
        "CREATE ROLE app LOGIN PASSWORD 'app-role-password-1'",
    );
    pg.sql("postgres", "CREATE DATABASE shop OWNER app");
    pg.sql("postgres", "CREATE DATABASE wiki");
    pg.sql("shop", FIXTURE_SHOP);
    pg.sql("wiki", FIXTURE_WIKI);
    pg
}

struct Setup {
    env: Env,
    config: PathBuf,
}

fn password_file(env: &Env, password: &str) -> PathBuf {
    let p = env.path("pg-password");
    std::fs::write(&p, format!("{password}\n")).unwrap();
    p
}

/// A config with one postgres job `pg`; `extra` goes into the job's table.
fn setup(env: Env, pg: &PgServer, format: &str, extra: &str) -> Setup {
    let pw = password_file(&env, PASSWORD);
    write_config(env, pg.port, &pw, format, extra)
}

fn write_config(env: Env, port: u16, pw: &Path, format: &str, extra: &str) -> Setup {
    let config = env.path("config.toml");
    std::fs::write(
        &config,
        format!(
            "[repository]\npath = \"{}\"\ncreate = true\nstate_dir = \"{}\"\n\n[daemon]\nattempts = 1\nmin_free_space = \"1 KiB\"\n\n[jobs.pg]\nkind = \"postgres\"\nschedule = \"@daily\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"postgres\"\npassword_file = \"{}\"\nformat = \"{format}\"\nconnect_timeout_secs = 5\n{extra}\n",
            env.repo().display(),
            env.path("state").display(),
            pw.display()
        ),
    )
    .unwrap();
    Setup { env, config }
}

impl Setup {
    fn run(&self) -> (std::process::Output, serde_json::Value) {
        let out = self.env.run(&[
            "run",
            "--config",
            self.config.to_str().unwrap(),
            "pg",
            "--json",
        ]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        (out, v)
    }

    /// `backuphub drill --json`: the output and, when it printed one, the result.
    fn drill(&self) -> (std::process::Output, serde_json::Value) {
        let out = self.env.run(&[
            "drill",
            "--config",
            self.config.to_str().unwrap(),
            "pg",
            "--json",
        ]);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out, v)
    }

    fn snapshots(&self) -> Vec<serde_json::Value> {
        let out = self.env.ok(&["snapshots", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn entries(&self) -> Vec<serde_json::Value> {
        let out = self.env.ok(&["ls", "latest:pg", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

fn assert_no_password(what: &str, s: &str) {
    assert!(!s.contains(PASSWORD), "{what} shows the password: {s}");
}

#[test]
fn every_format_round_trips_into_a_fresh_server() {
    let a = source_server();
    let b = PgServer::start();
    let expected: Vec<(&str, Vec<String>)> = vec![
        ("shop", a.fingerprint("shop")),
        ("wiki", a.fingerprint("wiki")),
    ];
    assert!(expected[0].1.iter().any(|l| l.contains("log_nopk 1000:")));
    for format in ["custom", "plain", "ordered"] {
        let s = setup(Env::new(), &a, format, "");
        let (out, v) = s.run();
        assert!(out.status.success(), "{format}: {}", text(&out));
        assert_eq!(v["status"], "complete", "{format}: {v}");
        assert_no_password("run output", &text(&out));
        let entries = s.entries();
        let ext = if format == "custom" { "pgdump" } else { "sql" };
        let names: Vec<&str> = entries.iter().filter_map(|e| e["path"].as_str()).collect();
        assert_eq!(
            names,
            vec![
                "globals.sql".to_string(),
                format!("postgres.{ext}"),
                format!("shop.{ext}"),
                format!("wiki.{ext}")
            ],
            "{format}"
        );
        let shop = &entries[2]["meta"];
        assert_eq!(shop["database"], "shop");
        assert_eq!(shop["format"], format);
        assert!(
            shop["server_version"].as_str().unwrap().starts_with(
                &b.bin
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .to_string()
            )
        );
        assert!(shop["client_version"].as_str().is_some());
        assert!(
            shop["database_size"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                > 0
        );

        let pw = password_file(&s.env, PASSWORD);
        let out = s.env.run(&[
            "restore-postgres",
            "latest:pg",
            "--into",
            &b.url("postgres"),
            "--password-file",
            pw.to_str().unwrap(),
            "--globals",
            "--clean",
        ]);
        assert!(out.status.success(), "{format}: restore: {}", text(&out));
        let report = text(&out);
        assert!(report.contains("shop") && report.contains("ok"), "{report}");
        assert_no_password("restore output", &report);
        for (db, fp) in &expected {
            assert_eq!(
                &b.fingerprint(db),
                fp,
                "{format}: {db} differs after restore"
            );
        }
        // Roles came with globals.sql; the owner with the dump.
        assert_eq!(
            b.sql(
                "shop",
                "SELECT tableowner FROM pg_tables WHERE tablename = 'customers'"
            ),
            "app"
        );
        // Generated columns are recomputed, views and indexes are back.
        assert_eq!(
            b.sql("shop", "SELECT count(*) FROM big_orders"),
            a.sql("shop", "SELECT count(*) FROM big_orders")
        );
        assert_eq!(
            b.sql(
                "shop",
                "SELECT count(*) FROM pg_indexes WHERE indexname = 'orders_customer'"
            ),
            "1"
        );
        assert_eq!(
            b.sql("shop", "SELECT total_x2 FROM orders WHERE id = 10"),
            "30.00"
        );
        // The identity sequence goes on where it was.
        assert_eq!(
            b.sql(
                "shop",
                "INSERT INTO orders (customer, total) VALUES (1, 1) RETURNING id"
            ),
            "5001"
        );
    }
}

#[test]
fn a_non_empty_database_is_refused_without_clean_and_cat_still_works() {
    let a = source_server();
    let s = setup(Env::new(), &a, "custom", "databases = [\"wiki\"]");
    assert_eq!(s.run().1["status"], "complete");
    // Into the same server: wiki exists and holds a table.
    let pw = password_file(&s.env, PASSWORD);
    let out = s.env.run(&[
        "restore-postgres",
        "latest:pg",
        "--into",
        &a.url("postgres"),
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("exists and is not empty"),
        "{}",
        text(&out)
    );
    // By hand, as documented: cat | pg_restore into a new database.
    a.sql("postgres", "CREATE DATABASE wiki2");
    let cat = s.env.ok(&["cat", "latest:pg", "wiki.pgdump"]);
    let mut child = std::process::Command::new(a.bin.join("pg_restore"))
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &a.port.to_string(),
            "-d",
            "wiki2",
        ])
        .env("PGPASSWORD", PASSWORD)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&cat.stdout).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(a.fingerprint("wiki2"), a.fingerprint("wiki"));
}

#[test]
fn ordered_dumps_of_a_churning_database_store_little_on_day_two() {
    let pg = PgServer::start();
    pg.sql("postgres", "CREATE DATABASE busy");
    pg.sql(
        "busy",
        "CREATE TABLE events (id bigint PRIMARY KEY, payload text, updated int NOT NULL DEFAULT 0);
         INSERT INTO events SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text), 0
           FROM generate_series(1, 400000) g;",
    );
    let s = setup(
        Env::new(),
        &pg,
        "ordered",
        "databases = [\"busy\"]\nretention = { keep_last = 10 }",
    );
    assert_eq!(s.run().1["status"], "complete");
    // A day: the oldest rows deleted, recent ones updated, new ones inserted; vacuum
    // lets the new rows land in the freed space at the front of the heap.
    pg.sql(
        "busy",
        "DELETE FROM events WHERE id <= 4000;
         UPDATE events SET updated = updated + 1, payload = md5(payload) WHERE id > 396000;",
    );
    pg.sql("busy", "VACUUM events");
    pg.sql(
        "busy",
        "INSERT INTO events SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text), 0
           FROM generate_series(400001, 404000) g;",
    );
    assert_eq!(s.run().1["status"], "complete");
    let snaps = s.snapshots();
    let stored = |i: usize| {
        snaps[i]["snapshot"]["stats"]["stored_bytes"]
            .as_u64()
            .unwrap()
    };
    let (day1, day2) = (stored(0), stored(1));
    eprintln!(
        "ordered: day 1 stored {day1} bytes, day 2 {day2} ({:.1} %)",
        day2 as f64 * 100.0 / day1 as f64
    );
    assert!(
        day2 * 10 <= day1,
        "day 2 stored {day2} bytes, more than 10 % of day 1's {day1}"
    );
    // And the data is whole: restore into a new database and compare.
    pg.sql("postgres", "ALTER DATABASE busy RENAME TO busy_orig");
    let pw = password_file(&s.env, PASSWORD);
    s.env.ok(&[
        "restore-postgres",
        "latest:pg",
        "--into",
        &pg.url("postgres"),
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert_eq!(pg.fingerprint("busy"), pg.fingerprint("busy_orig"));
}

/// A bin dir whose pg_dump and pg_dumpall wrap the real ones, with `script` run before
/// the real pg_dump (it may exit, or exec).
fn wrapper_bin(env: &Env, pg: &PgServer, script: &str) -> PathBuf {
    let dir = env.path("wrapped-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let real = pg.bin.display();
    let write = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write(
        "pg_dumpall",
        &format!("#!/bin/sh\nexec {real}/pg_dumpall \"$@\"\n"),
    );
    write(
        "pg_dump",
        &format!(
            "#!/bin/sh\nREAL={real}\ncase \"$1\" in --version) exec $REAL/pg_dump --version;; esac\n{script}\nexec $REAL/pg_dump \"$@\"\n"
        ),
    );
    dir
}

#[test]
fn failures_are_failed_or_partial_never_complete() {
    let mut a = source_server();

    // Wrong password: the run fails, saying why, without the password.
    let env = Env::new();
    let wrong = password_file(&env, "not-the-Password-123");
    let s = write_config(env, a.port, &wrong, "custom", "");
    let (out, v) = s.run();
    assert_eq!(v["status"], "failed", "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        !text(&out).contains("not-the-Password-123"),
        "{}",
        text(&out)
    );
    assert!(s.env.run(&["snapshots", "--json"]).stdout.len() < 10 || s.snapshots().is_empty());

    // A dump killed mid-stream and a database dropped between listing and dumping:
    // partial, naming exactly those two.
    let env = Env::new();
    let bin = wrapper_bin(
        &env,
        &a,
        "if [ \"$PGDATABASE\" = shop ]; then $REAL/pg_dump \"$@\" | head -c 20000; kill -9 $$; fi\nif [ \"$PGDATABASE\" = wiki ]; then PGDATABASE=postgres $REAL/psql -X -q -c 'DROP DATABASE wiki' >&2; fi",
    );
    a.sql("postgres", "CREATE DATABASE third");
    a.sql(
        "third",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
    );
    let s = setup(
        env,
        &a,
        "custom",
        &format!("bin_dirs = [\"{}\"]", bin.display()),
    );
    let (out, v) = s.run();
    assert_eq!(v["status"], "partial", "{v}: {}", text(&out));
    assert_eq!(v["stats"]["failures"], 2, "{v}");
    let log = text(&out);
    assert!(
        log.contains("shop.pgdump") && log.contains("signal: 9"),
        "{log}"
    );
    assert!(
        log.contains("wiki.pgdump") && log.contains("does not exist"),
        "{log}"
    );
    let names: Vec<String> = s
        .entries()
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        vec!["globals.sql", "postgres.pgdump", "third.pgdump"],
        "no failed dump is stored"
    );
    assert_no_password("partial run", &log);

    // A client older than the server: fails before dumping, naming both versions.
    let env = Env::new();
    let old = env.path("old-bin");
    std::fs::create_dir_all(&old).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let p = old.join("pg_dump");
        std::fs::write(&p, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let s = setup(
        env,
        &a,
        "custom",
        &format!("bin_dirs = [\"{}\"]", old.display()),
    );
    let (_, v) = s.run();
    assert_eq!(v["status"], "failed", "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("9.6.24") && err.contains("newer than every pg_dump"),
        "{err}"
    );

    // The server stopped: fails with the reason.
    let s = setup(Env::new(), &a, "custom", "");
    a.stop();
    let (_, v) = s.run();
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("cannot connect"),
        "{v}"
    );
}

/// The drills' work directory: one the server's user (`nobody`, when the tests run as
/// root) can enter.
static WORK: std::sync::LazyLock<tempfile::TempDir> = std::sync::LazyLock::new(|| {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix("drills")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
});

fn drill_section(extra: &str) -> String {
    format!(
        "\n[jobs.pg.drill]\nschedule = \"0 0 5 * * 0\"\ntimeout_secs = 600\nwork_dir = \"{}\"\n{extra}\n",
        WORK.path().display()
    )
}

#[test]
fn drills_pass_fail_on_a_failed_check_and_fail_on_an_empty_database() {
    let a = source_server();
    let checks = "checks = [\n  { database = \"shop\", query = \"SELECT count(*) FROM customers\", expect = \">= 2000\" },\n  { database = \"wiki\", query = \"SELECT title FROM pages WHERE id = 1\", expect = \"= 'Home'\" },\n]";
    let s = setup(Env::new(), &a, "custom", &drill_section(checks));
    // Nothing to drill yet: a clear failure.
    let (out, _) = s.drill();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("no complete snapshot"),
        "{}",
        text(&out)
    );

    assert_eq!(s.run().1["status"], "complete");
    let (out, v) = s.drill();
    assert!(out.status.success(), "{v}: {}", text(&out));
    assert_eq!(v["ok"], true);
    assert_eq!(v["checks"].as_array().unwrap().len(), 2);
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true),
        "{v}"
    );
    assert!(v["restored_bytes"].as_u64().unwrap() > 0);
    let shop = v["databases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["database"] == "shop")
        .unwrap();
    assert_eq!(shop["rows"], 2000 + 5000 + 1000 + 700);
    assert_no_password("drill output", &text(&out));
    // Kept with the job's state, and nothing left behind.
    let saved = std::fs::read_to_string(s.env.path("state/drills/pg.json")).unwrap();
    assert!(saved.contains("\"ok\": true"));
    assert_no_password("saved drill", &saved);
    let left: Vec<_> = std::fs::read_dir(WORK.path())
        .unwrap()
        .flatten()
        .map(|d| d.file_name())
        .collect();
    assert!(left.is_empty(), "the drill left {left:?}");

    // A check that fails fails the drill, naming it.
    let bad = "checks = [ { database = \"wiki\", query = \"SELECT title FROM pages WHERE id = 1\", expect = \"= 'Nope'\" } ]";
    let s2 = write_config(
        s.env,
        a.port,
        &password_file(&Env::new(), PASSWORD),
        "custom",
        &drill_section(bad),
    );
    let (out, v) = s2.drill();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("'Nope'"), "{v}");

    // A database that restores empty fails the drill.
    let e = PgServer::start();
    e.sql("postgres", "CREATE DATABASE hollow");
    e.sql("hollow", "CREATE TABLE t (id int PRIMARY KEY)");
    let s3 = setup(
        Env::new(),
        &e,
        "plain",
        &format!("databases = [\"hollow\"]\n{}", drill_section("")),
    );
    assert_eq!(s3.run().1["status"], "complete");
    let (out, v) = s3.drill();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(v["error"].as_str().unwrap().contains("no rows"), "{v}");

    // Started by root, the server runs as `nobody`: a work_dir that user cannot enter is
    // refused with what to do.
    if rustix::process::geteuid().is_root() {
        let private = s3.env.path("private");
        std::fs::create_dir(&private).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let private = private.join("drills");
        let cfg = std::fs::read_to_string(&s3.config).unwrap().replace(
            &WORK.path().display().to_string(),
            &private.display().to_string(),
        );
        std::fs::write(&s3.config, cfg).unwrap();
        let out = s3
            .env
            .run(&["drill", "--config", s3.config.to_str().unwrap(), "pg"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("cannot reach") && text(&out).contains("set drill.work_dir"),
            "{}",
            text(&out)
        );
    }
}
