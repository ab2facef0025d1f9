//! A backup disk that fills up: the run fails as `disk_space` (not `corrupt`), and the
//! repository stays sound. Needs a small file system: a tmpfs mounted by root; skipped
//! (with a message) where mounting is not permitted, as in the Nix build sandbox.

mod common;
use common::*;

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_run_as_disk_space_and_check_still_passes() {
    let env = Env::new();
    let Some(_fs) = Tmpfs::mount(&env.path("disk"), "3m") else {
        eprintln!("cannot mount a tmpfs here (not root?); skipping");
        return;
    };
    let repo = env.path("disk/repo");
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    // Random data does not compress: 8 MiB cannot fit in 3 MiB.
    std::fs::write(data.join("big"), noise(8 << 20, 11)).unwrap();
    let cfg = env.path("backuphub.toml");
    std::fs::write(
        &cfg,
        format!(
            "[repository]\npath = {:?}\nstate_dir = {:?}\n[daemon]\nmin_free_space = \"1 KiB\"\nattempts = 1\n[jobs.big]\nkind = \"path\"\nschedule = \"@daily\"\npaths = [{:?}]\n",
            repo,
            env.path("state"),
            data
        ),
    )
    .unwrap();
    env.ok(&["init", "--repo", repo.to_str().unwrap()]);
    let out = env.run(&["run", "--config", cfg.to_str().unwrap(), "big", "--json"]);
    assert!(!out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "failed", "{v}");
    assert_eq!(v["error_kind"], "disk_space", "{v}");
    let out = env.run(&["check", "--read-data", "--repo", repo.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
}
