//! The real daemon binary end to end: schedules fire, status and metrics change, a run is
//! triggered over HTTP with the token, SIGTERM stops it cleanly; and against a missing
//! repository it reports not ready and writes nothing.

mod common;
use common::daemon::Daemon;
use common::*;

use std::process::Stdio;
use std::time::Duration;

/// `promtool check metrics`: exposition format and Prometheus naming conventions.
/// tests/run-all.sh installs it (Debian's prometheus package).
fn promtool_check(metrics: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (apt-get install prometheus; tests/run-all.sh does it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}",
        text(&out)
    );
}

fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn schedules_status_metrics_trigger_and_sigterm() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a"), b"hello").unwrap();
    std::fs::write(env.path("token"), "t0ken-for-tests\n").unwrap();
    let config = format!(
        r#"
[repository]
path = "{repo}"
create = true
state_dir = "{state}"
[http]
listen = "127.0.0.1:PORT"
token_file = "{token}"
[daemon]
min_free_space = "1 MiB"
[jobs.files]
kind = "path"
schedule = "*/2 * * * * *"
paths = ["{data}"]
retention = {{ keep_last = 3 }}
[jobs.slow]
kind = "command"
schedule = "@yearly"
command = ["sh", "-c", "sleep 2; echo done"]
name = "slow.txt"
"#,
        repo = env.repo().display(),
        state = env.path("state").display(),
        token = env.path("token").display(),
        data = data.display()
    );
    let d = Daemon::start(&env, &config);
    assert_eq!(d.get("/readyz").unwrap().0, 200);

    // The schedule fires, again and again.
    d.wait_for(Duration::from_secs(30), || {
        d.job("files")["last_run"]["status"] == "complete"
    });
    let first = d.job("files")["last_run"]["end"].clone();
    d.wait_for(Duration::from_secs(30), || {
        d.job("files")["last_run"]["end"] != first
    });
    let job = d.job("files");
    assert!(job["next_run"].is_string());
    assert_eq!(job["kind"], "path");
    assert!(job["last_run"]["stats"]["entries"].as_u64().unwrap() >= 2);

    let (code, metrics) = d.get("/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metric(
            &metrics,
            "backuphub_job_runs_total{job=\"files\",status=\"complete\"}"
        )
        .unwrap()
            >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "backuphub_job_last_success_timestamp_seconds{job=\"files\"}"
        )
        .unwrap()
            > 1.7e9
    );
    assert_eq!(
        metric(&metrics, "backuphub_job_last_run_status{job=\"files\"}"),
        Some(1.0)
    );
    assert!(metric(&metrics, "backuphub_repository_size_bytes").unwrap() > 0.0);
    assert!(metrics.contains("backuphub_build_info{version=\""));
    assert!(!metrics.contains("t0ken-for-tests"));
    promtool_check(&metrics);

    // A job that never succeeded was caught up at start; let that run finish first.
    d.wait_for(Duration::from_secs(30), || {
        d.job("slow")["last_run"]["trigger"] == "catch-up"
    });
    // Trigger over HTTP: token required, one run at a time.
    assert_eq!(d.post("/api/v1/jobs/slow/run", None), 401);
    assert_eq!(d.post("/api/v1/jobs/slow/run", Some("wrong")), 401);
    assert_eq!(
        d.post("/api/v1/jobs/slow/run", Some("t0ken-for-tests")),
        202
    );
    assert_eq!(
        d.post("/api/v1/jobs/slow/run", Some("t0ken-for-tests")),
        409
    );
    assert_eq!(
        d.post("/api/v1/jobs/nope/run", Some("t0ken-for-tests")),
        404
    );
    d.wait_for(Duration::from_secs(30), || {
        d.job("slow")["last_run"]["trigger"] == "http"
            && d.job("slow")["last_run"]["status"] == "complete"
    });
    let (code, body) = d.get("/api/v1/jobs/slow/snapshots").unwrap();
    assert_eq!(code, 200);
    // Two runs today, and the default retention (keep_daily = 14) keeps one per day.
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // `status` renders the same as a table.
    let out = env.ok(&["status", "--url", &d.base]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("files") && table.contains("slow") && table.contains("complete"),
        "{table}"
    );

    // A run in progress when SIGTERM arrives is cancelled cleanly.
    assert_eq!(
        d.post("/api/v1/jobs/slow/run", Some("t0ken-for-tests")),
        202
    );
    let status = d.stop();
    assert!(status.success(), "exit status {status}");
    let out = env.run(&["check", "--read-data"]);
    assert!(out.status.success(), "{}", text(&out));
    let snaps: serde_json::Value =
        serde_json::from_slice(&env.ok(&["snapshots", "--job", "slow", "--json"]).stdout).unwrap();
    assert_eq!(
        snaps.as_array().unwrap().len(),
        1,
        "the interrupted run left no snapshot"
    );
    let log = std::fs::read_to_string(env.path("daemon.log")).unwrap();
    assert!(!log.contains("t0ken-for-tests"), "token in the log");
    assert!(
        log.contains("job=files") || log.contains("job: files") || log.contains("{job=files"),
        "runs are logged with their job"
    );
}

#[test]
fn a_missing_repository_is_not_ready_and_nothing_is_written() {
    let env = Env::new();
    let missing = env.path("unmounted/backuphub");
    let config = format!(
        r#"
[repository]
path = "{repo}"
state_dir = "{state}"
[http]
listen = "127.0.0.1:PORT"
[daemon]
attempts = 1
[jobs.files]
kind = "path"
schedule = "* * * * * *"
paths = ["/etc/hostname"]
"#,
        repo = missing.display(),
        state = env.path("state").display()
    );
    let d = Daemon::start(&env, &config);
    let (code, body) = d.get("/readyz").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("not a backuphub repository"), "{body}");
    d.wait_for(Duration::from_secs(20), || {
        d.job("files")["last_run"]["status"] == "failed"
    });
    assert_eq!(d.job("files")["last_run"]["error_kind"], "no_repository");
    assert!(!env.path("unmounted").exists(), "nothing may be created");
    let (_, metrics) = d.get("/metrics").unwrap();
    assert_eq!(metric(&metrics, "backuphub_repository_ready"), Some(0.0));
    assert!(
        metric(
            &metrics,
            "backuphub_job_failures_total{job=\"files\",kind=\"no_repository\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(d.stop().success());
}
