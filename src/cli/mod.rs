//! The `backuphub` command line. Parsing and presentation only: every command calls into
//! the library, and `anyhow` is used only here, at the edge.
//!
//! One function per command, grouped by what they do to a repository:
//! [`backup`] writes, [`read`] reads, [`maint`] creates and maintains, [`daemon`] runs
//! configured jobs and talks to a running daemon.

mod backup;
mod daemon;
mod kubernetes;
mod maint;
mod postgres;
mod read;
mod s3;
mod volume;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::repo::lock::LockGuard;
use crate::repo::{OpenOptions, Repository};

/// Exit codes, documented in the README.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    /// Usage errors (clap's own code).
    pub const USAGE: u8 = 2;
    /// Some entries failed, the rest succeeded: a backup stored a partial snapshot, or a
    /// restore restored all it could.
    pub const PARTIAL: u8 = 3;
    /// `check` found damage.
    pub const DAMAGED: u8 = 4;
}

#[derive(Parser)]
#[command(
    name = "backuphub",
    version,
    about = "Deduplicating, encrypting pull-model backups for a homelab",
    after_help = "Exit codes: 0 success, 1 error, 2 usage error, 3 partial (a backup stored a partial snapshot, or a restore could not restore every entry; they are listed), 4 check found damage."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct RepoArgs {
    /// Repository directory.
    #[arg(long, env = "BACKUPHUB_REPO")]
    repo: PathBuf,
    /// Where the index cache and the writer key live.
    #[arg(long, env = "BACKUPHUB_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct IdentityArg {
    /// age identity file or SSH private key, to read encrypted data.
    #[arg(long, env = "BACKUPHUB_IDENTITY")]
    identity: Option<PathBuf>,
}

impl RepoArgs {
    fn options(&self, identity: Option<&IdentityArg>) -> OpenOptions {
        OpenOptions {
            identity: identity.and_then(|i| i.identity.clone()),
            state_dir: self
                .state_dir
                .clone()
                .unwrap_or_else(crate::repo::default_state_dir),
        }
    }

    fn open(&self, identity: Option<&IdentityArg>) -> anyhow::Result<Repository> {
        Ok(Repository::open(&self.repo, &self.options(identity))?)
    }

    /// Opens under a shared lock, so that no prune removes data while it is being read
    /// (on a read-only or full disk, after checking that no prune holds it).
    fn open_for_reading(&self, identity: &IdentityArg) -> anyhow::Result<(Repository, LockGuard)> {
        let r = self.open(Some(identity))?;
        let lock = r.lock_for_reading(None, Duration::from_secs(10))?;
        Ok((r, lock))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository in an empty or missing directory.
    #[command(
        after_help = "Examples:\n  backuphub init --repo /mnt/backup/repo\n  backuphub init --repo /mnt/backup/repo --recipient age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
    )]
    Init(maint::InitArgs),
    /// Back up paths, stdin or a command's output as a new snapshot of JOB.
    #[command(
        after_help = "Examples:\n  backuphub backup --repo /mnt/backup/repo --job home /home/pi --exclude '**/.cache'\n  backuphub backup --repo /mnt/backup/repo --job etcd --command 'etcdctl snapshot save /dev/stdout' --name etcd.db\n  backuphub backup --repo /mnt/backup/repo --job docs /srv/docs --keep-daily 14"
    )]
    Backup(backup::BackupArgs),
    /// List snapshots.
    #[command(
        after_help = "Examples:\n  backuphub snapshots --repo /mnt/backup/repo\n  backuphub snapshots --repo /mnt/backup/repo --job postgres --json"
    )]
    Snapshots(read::SnapshotsArgs),
    /// List a snapshot's entries (SNAPSHOT: id prefix, `latest` or `latest:JOB`).
    #[command(
        after_help = "Examples:\n  backuphub ls --repo /mnt/backup/repo latest:volumes immich/library/photos\n  backuphub ls --repo /mnt/backup/repo 3f2a9c1e --json"
    )]
    Ls(read::LsArgs),
    /// Restore a snapshot, or part of it, below a directory.
    #[command(
        after_help = "Examples:\n  backuphub restore --repo /mnt/backup/repo latest:home --target /tmp/home\n  backuphub restore --repo /mnt/backup/repo 3f2a9c1e --path home/pi/notes --target /tmp/r --overwrite"
    )]
    Restore(read::RestoreArgs),
    /// Write one file of a snapshot to stdout.
    #[command(
        after_help = "Examples:\n  backuphub cat --repo /mnt/backup/repo latest:etcd etcd.db > etcd.db\n  backuphub cat --repo /mnt/backup/repo latest:volumes database/data-postgresql-0 > pg.img"
    )]
    Cat(read::CatArgs),
    /// Verify the repository; non-zero when anything is wrong.
    #[command(
        after_help = "Examples:\n  backuphub check --repo /mnt/backup/repo\n  backuphub check --repo /mnt/backup/repo --read-data-subset 5\n  backuphub check --repo /mnt/backup/repo --read-data --identity ~/.config/backuphub/identity.txt"
    )]
    Check(maint::CheckArgs),
    /// Repair the repository's caches.
    #[command(after_help = "Example:\n  backuphub repair index --repo /mnt/backup/repo")]
    Repair {
        #[command(subcommand)]
        what: maint::RepairCommand,
    },
    /// Key management.
    #[command(
        after_help = "Example:\n  backuphub key cache --repo /mnt/backup/repo --identity ~/.config/backuphub/identity.txt"
    )]
    Key {
        #[command(subcommand)]
        what: maint::KeyCommand,
    },
    /// Configuration files.
    #[command(after_help = "Example:\n  backuphub config check /etc/backuphub/config.toml")]
    Config {
        #[command(subcommand)]
        what: daemon::ConfigCommand,
    },
    /// Run the daemon: every job on its schedule, status and metrics over HTTP.
    #[command(
        after_help = "Examples:\n  backuphub daemon --config /etc/backuphub/config.toml\n  backuphub daemon --config examples/local.toml   # the embedded local demo"
    )]
    Daemon(daemon::DaemonArgs),
    /// Run one configured job once, in the foreground, exactly as the daemon would.
    #[command(
        after_help = "Examples:\n  backuphub run --config /etc/backuphub/config.toml postgres\n  backuphub run --config /etc/backuphub/config.toml volumes --json"
    )]
    Run(daemon::RunArgs),
    /// Remove a job's snapshots that its retention policy does not keep (data goes at
    /// the next prune).
    #[command(
        after_help = "Examples:\n  backuphub forget --repo /mnt/backup/repo --job home --keep-daily 14 --keep-weekly 8 --dry-run\n  backuphub forget --repo /mnt/backup/repo --job etcd --keep-last 3"
    )]
    Forget(maint::ForgetArgs),
    /// Delete data no snapshot references and repack mostly-empty packs.
    #[command(
        after_help = "Examples:\n  backuphub prune --repo /mnt/backup/repo --dry-run\n  backuphub prune --repo /mnt/backup/repo --json"
    )]
    Prune(maint::PruneArgs),
    /// Show a running daemon's status.
    #[command(
        after_help = "Examples:\n  backuphub status\n  backuphub status --url http://pi.lan:9750 --json"
    )]
    Status(daemon::StatusArgs),
    /// Restore a postgres job's databases into a PostgreSQL server.
    RestorePostgres(postgres::RestorePostgresArgs),
    /// Run a postgres job's restore drill now: throwaway server, latest complete
    /// snapshot, checks.
    #[command(
        after_help = "Example:\n  backuphub drill --config /etc/backuphub/config.toml postgres"
    )]
    Drill(postgres::DrillArgs),
    /// Write a kubernetes job's objects as apply-ready YAML, numbered in a safe order.
    RestoreKubernetes(kubernetes::RestoreKubernetesArgs),
    /// Upload an s3 job's objects back into a bucket of any S3 server.
    RestoreS3(s3::RestoreS3Args),
    /// Write a volume job's volume back into a PVC through a short-lived writer pod.
    RestoreVolume(volume::RestoreVolumeArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<u8> {
    if matches!(cli.command, Command::Daemon(_)) {
        crate::logging::init_daemon();
    } else {
        crate::logging::init_cli();
    }
    match cli.command {
        Command::Init(a) => maint::init(a),
        Command::Backup(a) => backup::backup(a),
        Command::Snapshots(a) => read::snapshots(a),
        Command::Ls(a) => read::ls(a),
        Command::Restore(a) => read::restore(a),
        Command::Cat(a) => read::cat(a),
        Command::Check(a) => maint::check(a),
        Command::Repair { what } => maint::repair(what),
        Command::Key { what } => maint::key(what),
        Command::Config { what } => daemon::config(what),
        Command::Daemon(a) => daemon::daemon(a),
        Command::Run(a) => daemon::run_job(a),
        Command::Forget(a) => maint::forget(a),
        Command::Prune(a) => maint::prune(a),
        Command::Status(a) => daemon::status(a),
        Command::RestorePostgres(a) => postgres::restore_postgres(a),
        Command::Drill(a) => postgres::drill(a),
        Command::RestoreKubernetes(a) => kubernetes::restore_kubernetes(a),
        Command::RestoreS3(a) => s3::restore_s3(a),
        Command::RestoreVolume(a) => volume::restore_volume(a),
    }
}

pub fn exit_code_for_usage() -> u8 {
    exit::USAGE
}
