//! The daemon binary stops on SIGTERM while a client holds a half-sent request open (it
//! used to wait for the client forever), and closes that connection.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Only turns a hang into a failure; the daemon's own bounds are far shorter.
const GUARD: Duration = Duration::from_secs(60);

fn healthy(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(GUARD)).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

#[test]
fn sigterm_is_not_held_up_by_a_half_sent_request() {
    let env = Env::new();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let cfg = env.path("daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[repository]\npath = \"{repo}\"\ncreate = true\nstate_dir = \"{state}\"\n\
             [http]\nlisten = \"{addr}\"\n[daemon]\nstop_timeout_secs = 1\n",
            repo = env.repo().display(),
            state = env.path("state").display(),
        ),
    )
    .unwrap();
    let mut child = env
        .cmd(&["daemon", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !healthy(&addr) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "daemon exited: {}",
            std::fs::read_to_string(env.path("daemon.log")).unwrap()
        );
        assert!(start.elapsed() < GUARD, "daemon did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    // A whole request on a second connection, answered, shows the server is serving
    // connections now (the half-sent one was accepted before it, in order).
    assert!(healthy(&addr));

    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > GUARD {
            let _ = child.kill();
            panic!("daemon did not stop on SIGTERM with a half-sent request open");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(env.path("daemon.log")).unwrap();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("stopped"), "{log}");

    half.set_read_timeout(Some(GUARD)).unwrap();
    let mut rest = Vec::new();
    match half.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the half-sent connection was not closed: {e}"),
    }
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
}
