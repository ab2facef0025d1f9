//! Logging: journald when systemd started us (JOURNAL_STREAM set), readable text on
//! stderr otherwise. `RUST_LOG` filters either way.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

fn filter(default: &str) -> EnvFilter {
    // The scheduler library narrates its own start-up at info; that is noise here.
    EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},tokio_cron_scheduler=warn")))
}

/// For one-shot commands: warnings and errors on stderr, so stdout stays data.
pub fn init_cli() {
    let _ = tracing_subscriber::registry()
        .with(filter("warn"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false),
        )
        .try_init();
}

/// For the daemon: journald under systemd, else text.
pub fn init_daemon() {
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(journald) = tracing_journald::layer()
    {
        let _ = tracing_subscriber::registry()
            .with(filter("info"))
            .with(journald.with_syslog_identifier("backuphub".into()))
            .try_init();
        return;
    }
    let _ = tracing_subscriber::registry()
        .with(filter("info"))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init();
}
