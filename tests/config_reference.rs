//! The README's configuration reference cannot drift from the config types: every key
//! of every section and job kind appears in its README block (the field names come from
//! the types' own `Deserialize` impls), every key a block shows exists, and the blocks
//! parse as a configuration.

use std::collections::BTreeSet;

use serde::de::{self, Deserializer, Visitor};

/// A deserializer that only records the field names a struct asks for.
struct Fields;

#[derive(Debug)]
struct Got(Vec<&'static str>);
impl std::fmt::Display for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fields")
    }
}
impl std::error::Error for Got {}
impl de::Error for Got {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        panic!("not a struct: {msg}")
    }
}

impl<'de> Deserializer<'de> for Fields {
    type Error = Got;
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Got> {
        panic!("not a struct")
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Got> {
        Err(Got(fields.to_vec()))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

fn fields_of<T: for<'de> serde::Deserialize<'de>>() -> Vec<&'static str> {
    match T::deserialize(Fields) {
        Err(Got(f)) => f,
        Ok(_) => panic!("a struct deserialized from nothing"),
    }
}

/// The first ```toml block after the heading that starts with `heading`.
fn block(readme: &str, heading: &str) -> String {
    let at = readme
        .find(&format!("\n{heading}"))
        .unwrap_or_else(|| panic!("README has no heading {heading:?}"));
    let rest = &readme[at..];
    let start = rest.find("```toml\n").expect("a toml block") + 8;
    let end = rest[start..].find("```").expect("the block ends") + start;
    rest[start..end].to_string()
}

/// Keys a block shows, commented out or not, also inside inline tables, and a job's
/// sub-tables (`[jobs.pg.drill]` shows `drill`).
fn keys(block: &str) -> BTreeSet<String> {
    let key = regex::Regex::new(r"(?m)(?:^\s*#?\s*|[{,]\s*)([a-z_]+)\s*=").unwrap();
    let table = regex::Regex::new(r"(?m)^\s*#?\s*\[jobs\.[^.\]]+\.([a-z_]+)\]").unwrap();
    key.captures_iter(block)
        .chain(table.captures_iter(block))
        .map(|c| c[1].to_string())
        .collect()
}

#[test]
fn every_config_key_is_in_the_readme_and_every_readme_key_exists() {
    use backuphub::config as c;
    use backuphub::kinds;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let daemon = block(&readme, "## The daemon");
    let sections: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "repository",
            daemon.clone(),
            fields_of::<c::RepositoryConfig>(),
        ),
        ("http", daemon.clone(), fields_of::<c::HttpConfig>()),
        ("daemon", daemon.clone(), fields_of::<c::DaemonConfig>()),
        ("prune", daemon.clone(), fields_of::<c::PruneConfig>()),
        (
            "verify",
            daemon.clone(),
            fields_of::<backuphub::verify::VerifyConfig>(),
        ),
        ("path jobs", daemon.clone(), fields_of::<c::PathJob>()),
        ("command jobs", daemon.clone(), fields_of::<c::CommandJob>()),
        (
            "postgres jobs",
            block(&readme, "### PostgreSQL jobs"),
            [
                fields_of::<kinds::postgres::PostgresJob>(),
                fields_of::<kinds::postgres::DrillConfig>(),
                fields_of::<kinds::postgres::DrillCheck>(),
            ]
            .concat(),
        ),
        (
            "kubernetes jobs",
            block(&readme, "### Kubernetes jobs"),
            fields_of::<kinds::kubernetes::KubernetesJob>(),
        ),
        (
            "s3 jobs",
            block(&readme, "### S3 / Ceph RGW jobs"),
            fields_of::<kinds::s3::S3Job>(),
        ),
        (
            "volume jobs",
            block(&readme, "### Volume jobs"),
            fields_of::<kinds::volume::VolumeJob>(),
        ),
    ];
    // What every job has, besides its kind's keys.
    let common = ["kind", "schedule", "timezone", "retention"];
    let retention = [
        "keep_last",
        "keep_hourly",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "keep_yearly",
        "keep_within",
    ];
    let mut missing = Vec::new();
    for (name, text, fields) in &sections {
        let shown = keys(text);
        for f in fields {
            if !shown.contains(*f) {
                missing.push(format!("{name}: {f}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys missing from the README's reference: {missing:?}"
    );
    // The other way: a key shown in a block is a key of something.
    let known: BTreeSet<&str> = sections
        .iter()
        .flat_map(|(_, _, f)| f.iter().copied())
        .chain(common)
        .chain(retention)
        .collect();
    for (name, text, _) in &sections {
        for k in keys(text) {
            // Environment variable names of a command job are the user's own.
            if k.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                continue;
            }
            assert!(
                known.contains(k.as_str()),
                "{name}: the README shows {k:?}, which no config type has"
            );
        }
    }
}

#[test]
fn the_readme_blocks_are_valid_configuration() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let daemon = block(&readme, "## The daemon");
    for heading in [
        "### PostgreSQL jobs",
        "### Kubernetes jobs",
        "### S3 / Ceph RGW jobs",
        "### Volume jobs",
    ] {
        let text = format!("{daemon}\n{}", block(&readme, heading));
        let tmp = tempfile::tempdir().unwrap();
        // Parsing checks keys and values (validation that reads files is not the point).
        let file = tmp.path().join("config.toml");
        std::fs::write(&file, &text).unwrap();
        let parsed: Result<toml::Table, _> = toml::from_str(&text);
        assert!(parsed.is_ok(), "{heading}: {parsed:?}");
        match backuphub::config::Config::parse(&text, &file) {
            Ok(_) => {}
            Err(e) => {
                let e = e.to_string();
                // Only a file the example names may be missing here.
                assert!(
                    !e.contains("unknown field") && !e.contains("invalid"),
                    "{heading}: {e}"
                );
            }
        }
    }
}

#[test]
fn every_example_configuration_loads() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut seen = 0;
    for f in std::fs::read_dir(dir).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        if let Err(e) = backuphub::config::Config::load(&path) {
            panic!("{}: {e}", path.display());
        }
    }
    assert!(seen >= 4, "only {seen} examples found");
}
