//! The daemon: schedules, the HTTP server, systemd integration, graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::config::Config;
use crate::http::{Http, ServeLimits, Server, router};
use crate::runner::Context;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
    #[error("cannot read the token file {path}: {error}")]
    Token {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("token file {0} is empty")]
    EmptyToken(std::path::PathBuf),
    #[error("scheduler: {0}")]
    Scheduler(String),
}

fn notify(state: &[sd_notify::NotifyState]) {
    // Outside systemd there is no socket; that is fine.
    let _ = sd_notify::notify(false, state);
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let metrics = crate::metrics::install();
    let token = match &config.http.token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|error| DaemonError::Token {
                path: p.clone(),
                error,
            })?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(DaemonError::EmptyToken(p.clone()));
            }
            Some(Arc::<str>::from(t))
        }
        None => None,
    };
    let listen = config.http.listen;
    let stop_timeout = Duration::from_secs(config.daemon.stop_timeout_secs);
    let ctx = Context::new(config);
    {
        let ctx = ctx.clone();
        tokio::task::spawn_blocking(move || ctx.refresh())
            .await
            .ok();
    }
    if let Some(reason) = ctx.state.not_ready() {
        tracing::error!(reason, "not ready: no job will write until this is fixed");
    }

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|error| DaemonError::Listen {
            addr: listen,
            error,
        })?;
    tracing::info!(addr = %listen, "serving status and metrics");
    let app = router(Http {
        ctx: ctx.clone(),
        metrics,
        token,
    });
    // Stops on the same cancel as the jobs, within a grace no longer than the stop
    // timeout, so no client can hold up SIGTERM.
    let server = Server::new(listener, app, ServeLimits::new(stop_timeout));
    let server = tokio::spawn(server.run(ctx.cancel.clone()));

    let sched = JobScheduler::new()
        .await
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    for (name, job) in &ctx.config.jobs {
        let (c, n) = (ctx.clone(), name.to_string());
        let j = Job::new_async_tz(job.schedule.as_cron(), job.timezone, move |_, _| {
            let (c, n) = (c.clone(), n.clone());
            Box::pin(async move {
                let _ = c.trigger(&n, "schedule");
            })
        })
        .map_err(|e| DaemonError::Scheduler(format!("job {name}: {e}")))?;
        sched
            .add(j)
            .await
            .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    }
    {
        let c = ctx.clone();
        let j = Job::new_async(ctx.config.prune.schedule.as_cron(), move |_, _| {
            let c = c.clone();
            Box::pin(async move {
                if !c.cancel.is_cancelled() {
                    // Tracked, so that shutdown waits for it like for a backup.
                    let _ = c.tasks.track_future(c.prune()).await;
                    let r = c.clone();
                    let _ = tokio::task::spawn_blocking(move || r.refresh()).await;
                }
            })
        })
        .map_err(|e| DaemonError::Scheduler(format!("prune: {e}")))?;
        sched
            .add(j)
            .await
            .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    }
    sched
        .start()
        .await
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;

    // Catch up once on runs missed while we were down (like systemd's Persistent=).
    let now = Utc::now();
    for (name, job) in &ctx.config.jobs {
        let last = ctx
            .state
            .read(|s| s.jobs.get(name.as_str()).and_then(|j| j.last_success));
        if job.schedule.missed(last, now, job.timezone) && ctx.state.not_ready().is_none() {
            tracing::info!(job = %name, ?last, "catching up on a missed run");
            let _ = ctx.trigger(name.as_str(), "catch-up");
        }
    }

    // Figures for status and metrics, and re-opening a repository that appears later
    // (a disk mounted after start).
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut ticks = 0u64;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                    _ = ctx.cancel.cancelled() => break,
                }
                ticks += 1;
                let c = ctx.clone();
                // Every 30 s the cheap probe, every 10 min the full figures.
                let full = ticks.is_multiple_of(20);
                let _ =
                    tokio::task::spawn_blocking(move || if full { c.refresh() } else { c.probe() })
                        .await;
            }
        });
    }

    notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = watchdog_interval() {
        let token = ctx.cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => notify(&[sd_notify::NotifyState::Watchdog]),
                    _ = token.cancelled() => break,
                }
            }
        });
    }
    tracing::info!(jobs = ctx.config.jobs.len(), "daemon started");

    wait_for_signal().await;
    tracing::info!("stopping: no new runs; waiting for running ones");
    notify(&[sd_notify::NotifyState::Stopping]);
    let mut sched = sched;
    let _ = sched.shutdown().await;
    ctx.cancel.cancel();
    ctx.tasks.close();
    if tokio::time::timeout(stop_timeout, ctx.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "running jobs did not stop in time; exiting anyway (no snapshot was written for them)"
        );
    }
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

/// Half of systemd's WatchdogSec, if the unit has one.
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        Some(Duration::from_micros(usec / 2))
    } else {
        None
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
