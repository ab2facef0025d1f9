//! The real daemon binary as a child process, with its HTTP API at hand.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{Env, free_port};

pub struct Daemon {
    pub child: Child,
    pub base: String,
}

impl Daemon {
    pub fn start(env: &Env, config: &str) -> Daemon {
        let port = free_port();
        let cfg = env.path("daemon.toml");
        std::fs::write(&cfg, config.replace("PORT", &port.to_string())).unwrap();
        let child = env
            .cmd(&["daemon", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(env.path("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        d.wait_for(Duration::from_secs(20), || {
            d.get("/healthz").map(|(c, _)| c == 200).unwrap_or(false)
        });
        d
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = ureq::get(&format!("{}{path}", self.base))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .ok()?;
        let code = resp.status().as_u16();
        Some((code, resp.into_body().read_to_string().ok()?))
    }

    pub fn post(&self, path: &str, token: Option<&str>) -> u16 {
        let mut req = ureq::post(&format!("{}{path}", self.base))
            .config()
            .http_status_as_error(false)
            .build();
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        req.send_empty().unwrap().status().as_u16()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/api/v1/status").unwrap().1).unwrap()
    }

    pub fn job(&self, name: &str) -> serde_json::Value {
        self.status()["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap()
            .clone()
    }

    pub fn wait_for(&self, limit: Duration, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < limit,
                "condition not met within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
