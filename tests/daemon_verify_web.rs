//! Scheduled verification and the web UI against the real daemon binary: a byte budget
//! reads one pack per run and a cycle reads every pack once; damage is found, names the
//! file, stays reported until healed, and shows in metrics; an encrypted repository
//! without its identity is verified by pack hashes and says so, and the web UI says it
//! cannot show contents; a download over a damaged chunk is cut, never short-but-complete.
//! (The browser's view of the UI is tested by tests/web_ui/browser_test.py.)

mod common;
use common::daemon::Daemon;
use common::*;

use std::time::Duration;

const TOKEN: &str = "t0ken-for-verify-tests";

fn config(env: &Env, subset: &str, extra: &str) -> String {
    std::fs::write(env.path("token"), format!("{TOKEN}\n")).unwrap();
    format!(
        r#"
[repository]
path = "{repo}"
create = true
state_dir = "{state}"
{extra}
[http]
listen = "127.0.0.1:PORT"
token_file = "{token}"
[daemon]
min_free_space = "1 MiB"
attempts = 1
[verify]
schedule = "@yearly"
read_data_subset = "{subset}"
[jobs.files]
kind = "path"
schedule = "@yearly"
paths = ["{data}"]
retention = {{ keep_last = 10 }}
"#,
        repo = env.repo().display(),
        state = env.path("state").display(),
        token = env.path("token").display(),
        data = env.path("data").display(),
    )
}

/// Runs the job over HTTP and waits for that run's outcome.
fn run_job(d: &Daemon) {
    let before = d.job("files")["last_run"]["run_id"].clone();
    assert_eq!(d.post("/api/v1/jobs/files/run", Some(TOKEN)), 202);
    d.wait_for(Duration::from_secs(60), || {
        let j = d.job("files");
        j["last_run"]["run_id"] != before && !j["running"].as_bool().unwrap()
    });
    assert_eq!(d.job("files")["last_run"]["status"], "complete");
}

/// Starts a verification over HTTP and returns its result.
fn verify(d: &Daemon) -> serde_json::Value {
    let before = d.status()["verify"]["last"]["time"].clone();
    assert_eq!(d.post("/api/v1/verify/run", Some(TOKEN)), 202);
    d.wait_for(Duration::from_secs(60), || {
        let v = d.status()["verify"].clone();
        v["last"]["time"] != before && !v["running"].as_bool().unwrap()
    });
    d.status()["verify"]["last"].clone()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

fn packs(env: &Env) -> Vec<std::path::PathBuf> {
    walk(&env.repo().join("packs"))
}

#[test]
fn a_byte_budget_rotates_through_every_pack_and_damage_stays_reported_until_healed() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    // Large enough that the oldest pack starts with its data, not with a tree blob.
    std::fs::write(data.join("a"), noise(2 << 20, 1)).unwrap();
    // One byte: every run reads exactly one pack.
    let d = Daemon::start(&env, &config(&env, "1 B", ""));
    d.wait_for(Duration::from_secs(60), || {
        d.job("files")["last_run"]["status"] == "complete"
    });
    // Each run with new data writes at least one new pack.
    for i in 2..=3 {
        std::fs::write(data.join(format!("f{i}")), noise(20_000, i)).unwrap();
        run_job(&d);
    }
    let n = packs(&env).len();
    assert!(n >= 3, "{n} packs");

    let mut read = 0u64;
    for run in 1..=n {
        let v = verify(&d);
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["packs_read"], 1, "run {run}: {v}");
        assert_eq!(v["packs"], n as u64);
        assert_eq!(
            v["contents_verified"], true,
            "unencrypted: contents are read"
        );
        assert_eq!(v["cycle_completed"], run == n, "run {run}: {v}");
        let ratio = v["cycle_ratio"].as_f64().unwrap();
        assert!((ratio - run as f64 / n as f64).abs() < 1e-9, "{ratio}");
        read += v["bytes_read"].as_u64().unwrap();
    }
    let total: u64 = packs(&env)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(read, total, "one cycle reads every pack once");
    let (_, m) = d.get("/metrics").unwrap();
    assert_eq!(
        metric(&m, "backuphub_verify_bytes_read_total"),
        total as f64
    );
    assert_eq!(metric(&m, "backuphub_verify_damaged_chunks"), 0.0);
    assert_eq!(metric(&m, "backuphub_verify_cycle_ratio"), 1.0);
    let success = metric(&m, "backuphub_verify_last_success_timestamp_seconds");
    assert!(success > 1.7e9);

    // Bit rot in file `a`'s first chunk: one run of the next cycle finds it; the runs
    // after it read other packs, and must keep reporting it.
    damage_first_chunk_of(&env, "data/a");
    let results: Vec<serde_json::Value> = (0..n).map(|_| verify(&d)).collect();
    let first_bad = results
        .iter()
        .position(|v| v["ok"] == false)
        .unwrap_or_else(|| panic!("no run found the damage: {results:?}"));
    for v in &results[first_bad..] {
        assert_eq!(v["ok"], false, "damage forgotten: {v}");
        assert!(v["damaged_chunks"].as_u64().unwrap() >= 1, "{v}");
        let files = v["damaged_files"].as_array().unwrap();
        assert!(
            files
                .iter()
                .any(|f| f.as_str().unwrap().ends_with("/data/a")),
            "the damaged file is named: {v}"
        );
    }
    let (_, m) = d.get("/metrics").unwrap();
    assert!(metric(&m, "backuphub_verify_damaged_chunks") >= 1.0);
    // The runs of this cycle before the damage was found were successes; none after.
    let last_good = results[..first_bad].last().map_or(success, |v| {
        let t: chrono::DateTime<chrono::Utc> = v["time"].as_str().unwrap().parse().unwrap();
        t.timestamp() as f64
    });
    assert_eq!(
        metric(&m, "backuphub_verify_last_success_timestamp_seconds"),
        last_good,
        "a run that found damage is no success"
    );
    let (_, page) = d.get("/").unwrap();
    assert!(page.contains("DAMAGE FOUND"), "{page}");
    assert!(
        !page.contains("/data/a"),
        "file names only behind the login"
    );
    let cookie = login(&d);
    let page = get_with(&d, "/", &cookie)
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(page.contains("/data/a"), "the overview names the file");

    // Healing: the next backup stores the damaged data afresh; verification is clean again.
    run_job(&d);
    let v = verify(&d);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["damaged_chunks"], 0);
    let (_, m) = d.get("/metrics").unwrap();
    assert_eq!(metric(&m, "backuphub_verify_damaged_chunks"), 0.0);

    // The cursor and the last result survive a restart.
    let cursor_before = std::fs::read_to_string(env.path("state/verify.json")).unwrap();
    d.stop();
    let d = Daemon::start(&env, &config(&env, "1 B", ""));
    let (_, m) = d.get("/metrics").unwrap();
    let healed: chrono::DateTime<chrono::Utc> = v["time"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        metric(&m, "backuphub_verify_last_success_timestamp_seconds"),
        healed.timestamp() as f64,
        "exported again from the state directory"
    );
    assert_eq!(metric(&m, "backuphub_verify_damaged_chunks"), 0.0);
    assert_eq!(d.status()["verify"]["last"]["ok"], true);
    assert!(cursor_before.contains("\"cursor\""));
}

/// A client that shows redirects and error statuses instead of following or failing.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .build()
        .into()
}

/// Logs in through the form; returns the session cookie (`name=value`) and checks its
/// attributes.
fn login(d: &Daemon) -> String {
    let agent = agent();
    let wrong = agent
        .post(&format!("{}/login", d.base))
        .send_form([("token", "nope"), ("next", "/")])
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let r = agent
        .post(&format!("{}/login", d.base))
        .send_form([("token", TOKEN), ("next", "//evil.example/")])
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/", "no open redirect");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(TOKEN));
    cookie.split(';').next().unwrap().to_string()
}

fn get_with(d: &Daemon, path: &str, cookie: &str) -> ureq::http::Response<ureq::Body> {
    try_get_with(d, path, cookie).unwrap()
}

/// A GET that may fail before its headers arrive (a body that breaks at once).
fn try_get_with(
    d: &Daemon,
    path: &str,
    cookie: &str,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    agent()
        .get(&format!("{}{path}", d.base))
        .header("Cookie", cookie)
        .call()
}

fn first_snapshot(d: &Daemon) -> String {
    let (_, body) = d.get("/api/v1/jobs/files/snapshots").unwrap();
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    list[0]["id"].as_str().unwrap().to_string()
}

#[test]
fn an_encrypted_repository_without_identity_is_verified_by_pack_hash_and_not_shown() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("data")).unwrap();
    std::fs::write(env.path("data/secret.txt"), b"not for the Pi's eyes").unwrap();
    let (recipient, _identity) = keypair(&env);
    let d = Daemon::start(
        &env,
        &config(&env, "100%", &format!("recipients = [\"{recipient}\"]")),
    );
    d.wait_for(Duration::from_secs(60), || {
        d.job("files")["last_run"]["status"] == "complete"
    });
    let v = verify(&d);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["contents_verified"], false);
    assert!(
        v["notes"].to_string().contains("pack hash"),
        "it says what it verified: {v}"
    );
    let (_, page) = d.get("/").unwrap();
    assert!(page.contains("Pack hashes and structure only"), "{page}");

    // Bit rot is still found by the pack hash, without the identity.
    damage_oldest_pack(&env);
    let v = verify(&d);
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["damaged_chunks"].as_u64().unwrap() >= 1);

    // The UI lists the snapshot but says plainly that it cannot show its contents.
    let cookie = login(&d);
    let id = first_snapshot(&d);
    let r = get_with(&d, &format!("/snapshots/{id}"), &cookie);
    assert_eq!(r.status(), 200);
    let page = r.into_body().read_to_string().unwrap();
    assert!(page.contains("holds only the public keys"), "{page}");
    assert!(!page.contains("not for the Pi"), "no plaintext");
    let r = get_with(&d, &format!("/snapshots/{id}/tar?path=x"), &cookie);
    assert_eq!(r.status(), 503);
}

#[test]
fn downloads_need_a_session_and_a_damaged_chunk_cuts_them() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("data/dir")).unwrap();
    let big = noise(3 << 20, 7);
    std::fs::write(env.path("data/dir/big.bin"), &big).unwrap();
    let d = Daemon::start(&env, &config(&env, "100%", ""));
    d.wait_for(Duration::from_secs(60), || {
        d.job("files")["last_run"]["status"] == "complete"
    });
    let id = first_snapshot(&d);
    let root = env.path("data").display().to_string();
    let file = format!("{}/dir/big.bin", &root[1..]);
    let url = format!("/snapshots/{id}/file?path={file}");

    // No session: to the login page, nothing of the file.
    let r = get_with(&d, &url, "backuphub_session=forged");
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login?next=")
    );

    let cookie = login(&d);
    let r = get_with(&d, &url, &cookie);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"big.bin\"; filename*=UTF-8''big.bin"
    );
    let got = r
        .into_body()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    assert!(got == big, "the download is the file");

    // Run now needs the CSRF token of the session.
    let agent = agent();
    let r = agent
        .post(&format!("{}/jobs/files/run", d.base))
        .header("Cookie", &cookie)
        .send_form([("csrf", "guess")])
        .unwrap();
    assert_eq!(r.status(), 403);

    // Bit rot in the middle of the file: the transfer breaks instead of ending short.
    damage_first_chunk_of(&env, "dir/big.bin");
    // The break may come before the headers are out (the damage is in the first chunk):
    // then the request itself fails. Either way no complete-looking download.
    let cut = |path: &str| match try_get_with(&d, path, &cookie) {
        Err(_) => true,
        Ok(r) => {
            assert_eq!(r.status(), 200);
            r.into_body()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .is_err()
        }
    };
    assert!(cut(&url), "a damaged file must not download as if complete");
    assert!(
        cut(&format!("/snapshots/{id}/tar?path={}/dir", &root[1..])),
        "a tar over damaged data must break, not end cleanly"
    );
}
