//! The fake Kubernetes API server (tests/fake_kube/server.py) as a separate process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const TOKEN: &str = "kube-token-0123456789abcdef";

pub struct FakeKube {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl FakeKube {
    pub fn start(dir: &Path, args: &[&str]) -> FakeKube {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_kube/server.py");
        let log = dir.join("kube-requests.log");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--token", TOKEN, "--log"])
            .arg(&log)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the fake API server");
        let port = super::printed_port(&mut child);
        FakeKube { child, port, log }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The request log: `GET path status` per line.
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// GETs a path of the fake: its status and JSON body (for what a test inspects).
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .get(&format!("{}{path}", self.url()))
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let body = resp.body_mut().read_to_string().unwrap();
        (resp.status().as_u16(), serde_json::from_str(&body).unwrap())
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.stop();
    }
}
