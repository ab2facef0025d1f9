//! The HTTP surface: health, readiness, metrics, status and a run trigger. It reads the
//! shared state; the only thing it writes is a trigger, which goes through the same path
//! as the scheduler.
//!
//! [`Server`] serves it with bounds on what a client can hold: the time to send a request
//! head (which also bounds an idle keep-alive connection), the time a handler may take,
//! the number of connections, and the time shutdown waits for them.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::runner::{Context, TriggerError};

/// A client that has not sent a whole request head by then is disconnected. hyper arms
/// this timer whenever it waits for a head, so it also closes idle keep-alive
/// connections. Generous for any client on a LAN; short enough that half-sent requests
/// cannot pile up (they once exhausted a 300-fd limit and failed a scheduled backup).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A handler taking longer is answered 503. Listing snapshots reads the repository, which
/// on a slow USB disk can take seconds; nothing here should take half a minute.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once. Prometheus, a dashboard and a few curls need a handful; 32
/// keeps the daemon's descriptors for packs, the index and sources.
pub const MAX_CONNECTIONS: usize = 32;
/// On shutdown, requests in flight get this long to finish (never more than the daemon's
/// `stop_timeout_secs`); then their connections are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The bounds [`Server`] enforces; see the constants for the defaults and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl ServeLimits {
    /// The defaults, with a shutdown grace no longer than the daemon's stop timeout.
    pub fn new(stop_timeout: Duration) -> ServeLimits {
        ServeLimits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            shutdown_grace: SHUTDOWN_GRACE.min(stop_timeout),
        }
    }
}

/// HTTP/1.1 over a bound listener, within [`ServeLimits`].
///
/// Beyond `max_connections`, new connections are not accepted: they wait in the kernel's
/// listen backlog, which costs this process no descriptor, until a served one ends (at
/// the latest after `header_read_timeout` if it is idle or half-sent). Waiting rather
/// than refusing delays a scrape during a flood instead of failing it, and refusing
/// would still cost an accept and a descriptor per attempt.
pub struct Server {
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    open: OpenConnections,
}

/// How many connections a [`Server`] is serving now.
#[derive(Clone, Default)]
pub struct OpenConnections(Arc<std::sync::atomic::AtomicUsize>);

impl OpenConnections {
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One served connection: its slot and its place in the count, both given back when the
/// connection's task ends or is aborted.
struct Served {
    _slot: tokio::sync::OwnedSemaphorePermit,
    open: OpenConnections,
}

impl Served {
    fn new(slot: tokio::sync::OwnedSemaphorePermit, open: &OpenConnections) -> Served {
        open.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Served {
            _slot: slot,
            open: open.clone(),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.open
            .0
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Server {
    pub fn new(listener: TcpListener, app: Router, limits: ServeLimits) -> Server {
        Server {
            listener,
            app,
            limits,
            open: OpenConnections::default(),
        }
    }

    pub fn open_connections(&self) -> OpenConnections {
        self.open.clone()
    }

    /// Serves until `shutdown` is cancelled; then stops accepting, lets requests in
    /// flight finish within `shutdown_grace`, and drops whatever is left (half-sent
    /// requests included), so shutdown never waits on a client.
    pub async fn run(self, shutdown: CancellationToken) {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use hyper_util::server::graceful::GracefulShutdown;
        use hyper_util::service::TowerToHyperService;

        let Server {
            listener,
            app,
            limits,
            open,
        } = self;
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let app = app.layer(axum::middleware::from_fn_with_state(
            limits.request_timeout,
            request_deadline,
        ));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            // A slot first, then accept: beyond the limit, clients wait in the backlog.
            let permit = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(e) if is_per_connection(&e) => continue,
                    Err(e) => {
                        // Out of descriptors or memory: retrying at once would spin.
                        tracing::warn!(error = %e, "cannot accept HTTP connections; retrying in 1 s");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                },
            };
            let conn =
                http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
            let conn = graceful.watch(conn);
            let served = Served::new(permit, &open);
            connections.spawn(async move {
                let _served = served;
                if let Err(e) = conn.await {
                    // Timeouts and clients going away: routine, not worth a warning.
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                "HTTP connections did not finish in time; closing them"
            );
        }
        connections.shutdown().await;
    }
}

/// Errors of one incoming connection (it went away before we took it), not of the
/// listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

async fn request_deadline(
    State(limit): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took too long; try again later",
        ),
    }
}

#[derive(Clone)]
pub struct Http {
    pub ctx: Arc<Context>,
    pub metrics: PrometheusHandle,
    /// The bearer token for POST endpoints; `None` disables them.
    pub token: Option<Arc<str>>,
}

pub fn router(http: Http) -> Router {
    let web = crate::web::router(http.ctx.clone(), http.token.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/jobs/{job}/snapshots", get(snapshots))
        .route("/api/v1/jobs/{job}/run", post(run))
        .route("/api/v1/verify/run", post(verify))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(http)
        .merge(web)
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(json!({ "error": message }))).into_response()
}

async fn readyz(State(h): State<Http>) -> Response {
    match h.ctx.state.not_ready() {
        None => Json(json!({ "ready": true })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": reason })),
        )
            .into_response(),
    }
}

async fn metrics(State(h): State<Http>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.metrics.render(),
    )
        .into_response()
}

async fn status(State(h): State<Http>) -> Response {
    Json(h.ctx.state.status(Utc::now())).into_response()
}

async fn snapshots(State(h): State<Http>, Path(job): Path<String>) -> Response {
    if !h.ctx.config.jobs.keys().any(|n| n.as_str() == job) {
        return error(StatusCode::NOT_FOUND, "no such job");
    }
    let ctx = h.ctx.clone();
    let listed = tokio::task::spawn_blocking(move || {
        let repo = ctx.repository().map_err(|e| e.to_string())?;
        let snaps = repo.snapshots().map_err(|e| e.to_string())?;
        Ok::<_, String>(
            snaps
                .into_iter()
                .filter(|s| s.snapshot.job == job)
                .map(|s| {
                    json!({
                        "id": s.id,
                        "time": s.snapshot.time,
                        "status": s.snapshot.status,
                        "host": s.snapshot.host,
                        "stats": s.snapshot.stats,
                    })
                })
                .collect::<Vec<_>>(),
        )
    })
    .await;
    match listed {
        Ok(Ok(list)) => Json(list).into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, &h.ctx.redactor.redact(&e)),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "listing failed"),
    }
}

/// The bearer token check of the POST endpoints: `Some` is the refusal to send.
fn refusal(h: &Http, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &h.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "triggering runs is disabled: no http.token_file configured",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    // Compared without an early exit, so response time says nothing about the token.
    if !given.is_some_and(|g| crate::repo::crypto::constant_time_eq(g.as_bytes(), token.as_bytes()))
    {
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({ "error": "missing or wrong bearer token" })),
            )
                .into_response(),
        );
    }
    None
}

async fn run(State(h): State<Http>, Path(job): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&h, &headers) {
        return r;
    }
    match h.ctx.trigger(&job, "http") {
        Ok(run) => (
            StatusCode::ACCEPTED,
            Json(json!({ "job": job, "run": run })),
        )
            .into_response(),
        Err(TriggerError::UnknownJob | TriggerError::NotConfigured) => {
            error(StatusCode::NOT_FOUND, "no such job")
        }
        Err(TriggerError::AlreadyRunning) => {
            error(StatusCode::CONFLICT, "the job is already running")
        }
    }
}

async fn verify(State(h): State<Http>, headers: HeaderMap) -> Response {
    if let Some(r) = refusal(&h, &headers) {
        return r;
    }
    match h.ctx.trigger_verify() {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({ "verify": "started" }))).into_response(),
        Err(TriggerError::AlreadyRunning) => {
            error(StatusCode::CONFLICT, "a verification is already running")
        }
        Err(_) => error(StatusCode::NOT_FOUND, "no [verify] section is configured"),
    }
}

#[cfg(test)]
mod router_tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn app(dir: &std::path::Path) -> (Router, Arc<Context>) {
        let text = format!(
            "[repository]\npath = \"{}/repo\"\ncreate = true\nstate_dir = \"{}/state\"\n[daemon]\nmin_free_space = \"1 KiB\"\n[jobs.j]\nkind = \"command\"\nschedule = \"@daily\"\ncommand = [\"true\"]\nname = \"x\"\n",
            dir.display(),
            dir.display()
        );
        let ctx = Context::new(
            crate::config::Config::parse(&text, std::path::Path::new("/t.toml")).unwrap(),
        );
        let http = Http {
            ctx: ctx.clone(),
            metrics: crate::metrics::install(),
            token: Some(Arc::from("s3cret-token")),
        };
        (router(http), ctx)
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        token: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            code,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn auth_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (app, ctx) = app(dir.path());
        assert_eq!(
            call(&app, "POST", "/api/v1/jobs/j/run", None).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&app, "POST", "/api/v1/jobs/j/run", Some("wrong"))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&app, "POST", "/api/v1/jobs/zz/run", Some("s3cret-token"))
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        ctx.state.update_job("j", |j| j.running = true);
        assert_eq!(
            call(&app, "POST", "/api/v1/jobs/j/run", Some("s3cret-token"))
                .await
                .0,
            StatusCode::CONFLICT
        );
        ctx.state.update_job("j", |j| j.running = false);
        let (code, body) = call(&app, "POST", "/api/v1/jobs/j/run", Some("s3cret-token")).await;
        assert_eq!(code, StatusCode::ACCEPTED);
        assert_eq!(body["job"], "j");
        assert_eq!(
            call(&app, "GET", "/nope", None).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            call(&app, "GET", "/api/v1/jobs/zz/snapshots", None).await.0,
            StatusCode::NOT_FOUND
        );
        ctx.tasks.close();
        ctx.tasks.wait().await;
        let (code, body) = call(&app, "GET", "/api/v1/jobs/j/snapshots", None).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body.as_array().unwrap().len(), 1);
        let (_, status) = call(&app, "GET", "/api/v1/status", None).await;
        assert_eq!(status["jobs"][0]["last_run"]["status"], "complete");
        assert!(!status.to_string().contains("s3cret-token"));
    }

    #[tokio::test]
    async fn every_served_path_is_in_the_openapi_document() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../docs/openapi.json")).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for p in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/v1/status",
            "/api/v1/jobs/{job}/snapshots",
            "/api/v1/jobs/{job}/run",
            "/api/v1/verify/run",
        ] {
            assert!(paths.contains_key(p), "{p} missing from docs/openapi.json");
        }
        assert_eq!(
            paths.len(),
            7,
            "the document lists endpoints the router does not serve"
        );
    }
}
