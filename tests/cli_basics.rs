//! The command line as an operator meets it: exit codes, messages, listings.

mod common;
use common::*;

#[test]
fn init_refuses_a_non_empty_directory_and_open_needs_a_repository() {
    let env = Env::new();
    std::fs::create_dir_all(env.repo()).unwrap();
    std::fs::write(env.repo().join("stray"), b"x").unwrap();
    let out = env.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not empty"), "{}", text(&out));

    let out = env.run(&["snapshots", "--repo", env.path("nothing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("not a backuphub repository"),
        "{}",
        text(&out)
    );

    assert_eq!(env.run(&["backup"]).status.code(), Some(2), "usage error");
}

#[test]
fn backup_list_cat_restore() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(data.join("d")).unwrap();
    std::fs::write(data.join("d/f.txt"), b"content").unwrap();
    env.ok(&["init"]);
    env.ok(&["backup", "--job", "files", data.to_str().unwrap()]);

    let out = env.ok(&["snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["snapshot"]["job"], "files");
    assert_eq!(v[0]["snapshot"]["status"], "complete");

    let rel = data.join("d/f.txt");
    let rel = rel.to_str().unwrap().trim_start_matches('/');
    let out = env.ok(&["ls", "latest:files", "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == rel && e["size"] == 7)
    );

    let out = env.ok(&["cat", "latest", rel]);
    assert_eq!(out.stdout, b"content");
    let out = env.run(&["cat", "latest", "no/such/file"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no entry"), "{}", text(&out));

    let target = env.path("restore");
    env.ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(restored(&target, &data.join("d/f.txt"))).unwrap(),
        b"content"
    );
    // A second restore would overwrite: refused without --overwrite, entry by entry
    // (listed; exit code 3, the restore is incomplete).
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).contains("--overwrite"), "{}", text(&out));
    env.ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--overwrite",
    ]);

    let out = env.run(&["ls", "zzzz"]);
    assert!(text(&out).contains("no snapshot matches"), "{}", text(&out));
}

#[test]
fn streams_are_always_read_and_failed_commands_fail() {
    let env = Env::new();
    env.ok(&["init"]);
    let out = env.run_with_stdin(
        &["backup", "--job", "s", "--stdin", "--name", "dump.sql"],
        b"first",
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = env.run_with_stdin(
        &["backup", "--job", "s", "--stdin", "--name", "dump.sql"],
        b"second",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.ok(&["cat", "latest:s", "dump.sql"]).stdout, b"second");

    env.ok(&[
        "backup",
        "--job",
        "c",
        "--command",
        "printf 'from a command'",
        "--name",
        "out.txt",
    ]);
    assert_eq!(
        env.ok(&["cat", "latest:c", "out.txt"]).stdout,
        b"from a command"
    );

    let before = env.ok(&["snapshots", "--json"]).stdout;
    let out = env.run(&[
        "backup",
        "--job",
        "c",
        "--name",
        "out.txt",
        "--command",
        "sh -c 'printf partial; echo \"FATAL: password=letmein rejected\" >&2; exit 7'",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let msg = text(&out);
    assert!(
        msg.contains("exit status: 7") && msg.contains("FATAL"),
        "{msg}"
    );
    assert!(!msg.contains("letmein"), "secret leaked: {msg}");
    // No snapshot was written for the failed run.
    assert_eq!(env.ok(&["snapshots", "--json"]).stdout, before);
    assert_eq!(
        env.ok(&["cat", "latest:c", "out.txt"]).stdout,
        b"from a command"
    );

    let out = env.run(&[
        "backup",
        "--job",
        "c",
        "--name",
        "x",
        "--command",
        "/no/such/program",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("/no/such/program"), "{}", text(&out));
}

#[test]
fn unreadable_files_make_a_partial_snapshot_and_exit_3() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("ok"), b"fine").unwrap();
    std::fs::write(data.join("secret"), b"no").unwrap();
    env.ok(&["init"]);
    // Root reads everything: run the backup as nobody, with everything else open to it.
    let as_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        .starts_with(b"0\n");
    let mut cmd = if as_root {
        let _ = std::process::Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(env.dir.path())
            .status();
        let mut c = std::process::Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_backuphub"),
        ]);
        c.env("BACKUPHUB_STATE_DIR", env.path("state"))
            .env("BACKUPHUB_REPO", env.repo());
        c
    } else {
        env.cmd(&[])
    };
    std::fs::set_permissions(data.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = cmd
        .args(["backup", "--job", "p", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("secret") && text(&out).contains("ermission denied"),
        "{}",
        text(&out)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&env.ok(&["snapshots", "--json"]).stdout).unwrap();
    assert_eq!(v[0]["snapshot"]["status"], "partial");
    assert_eq!(v[0]["snapshot"]["stats"]["failures"], 1);
}

#[test]
fn config_check_names_key_and_line() {
    let env = Env::new();
    let cfg = env.path("c.toml");
    std::fs::write(&cfg, "[repository]\npath = \"/mnt/x\"\n\n[jobs.a]\nkind = \"path\"\nschedule = \"@daily\"\npaths = [\"/etc\"]\nbogus = 1\n").unwrap();
    let out = env.run(&["config", "check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let msg = text(&out);
    assert!(
        msg.contains("c.toml:8") && msg.contains("jobs.a.bogus"),
        "{msg}"
    );
    std::fs::write(&cfg, "[repository]\npath = \"/mnt/x\"\n").unwrap();
    env.ok(&["config", "check", "--config", cfg.to_str().unwrap()]);
}

#[test]
fn reading_works_without_a_usable_state_directory() {
    let env = Env::new();
    env.ok(&["init"]);
    let out = env.run_with_stdin(&["backup", "--job", "s", "--stdin", "--name", "f"], b"data");
    assert!(out.status.success(), "{}", text(&out));
    // A service user whose home is /var/empty: the state directory cannot be created.
    std::fs::write(env.path("a-file"), b"").unwrap();
    let out = env
        .cmd(&["cat", "latest:s", "f"])
        .env("BACKUPHUB_STATE_DIR", env.path("a-file/state"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(out.stdout, b"data");
}

/// `backup` reaches a snapshot the way the daemon's runs do, retention included.
#[test]
fn backup_applies_a_given_retention_policy() {
    let env = Env::new();
    env.ok(&["init"]);
    for i in 0..3 {
        let out = env.run_with_stdin(
            &[
                "backup",
                "--job",
                "j",
                "--stdin",
                "--name",
                "x",
                "--keep-last",
                "2",
            ],
            format!("version {i}").as_bytes(),
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = env.ok(&["snapshots", "--job", "j", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(env.ok(&["cat", "latest:j", "x"]).stdout, b"version 2");
    // Without a policy, nothing is removed.
    env.run_with_stdin(&["backup", "--job", "j", "--stdin", "--name", "x"], b"v3");
    let out = env.ok(&["snapshots", "--job", "j", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
}

#[test]
fn every_command_has_an_example_in_its_help() {
    let env = Env::new();
    let top = String::from_utf8(env.ok(&["--help"]).stdout).unwrap();
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 15, "{commands:?}");
    for c in commands {
        let help = String::from_utf8(env.ok(&[c, "--help"]).stdout).unwrap();
        assert!(
            help.contains("Example:") || help.contains("Examples:"),
            "`backuphub {c} --help` shows no example"
        );
        assert!(help.contains(&format!("backuphub {c}")), "{c}: {help}");
    }
}
