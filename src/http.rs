//! The HTTP surface: health, readiness, metrics, status and a run trigger. It reads the
//! shared state; the only thing it writes is a trigger, which goes through the same path
//! as the scheduler.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::runner::{Context, TriggerError};

#[derive(Clone)]
pub struct Http {
    pub ctx: Arc<Context>,
    pub metrics: PrometheusHandle,
    /// The bearer token for POST endpoints; `None` disables them.
    pub token: Option<Arc<str>>,
}

pub fn router(http: Http) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/jobs/{job}/snapshots", get(snapshots))
        .route("/api/v1/jobs/{job}/run", post(run))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(http)
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(json!({ "error": message }))).into_response()
}

async fn readyz(State(h): State<Http>) -> Response {
    match h.ctx.state.not_ready() {
        None => Json(json!({ "ready": true })).into_response(),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "reason": reason }))).into_response(),
    }
}

async fn metrics(State(h): State<Http>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], h.metrics.render()).into_response()
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

/// Compares without an early exit, so response time says nothing about the token.
fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn run(State(h): State<Http>, Path(job): Path<String>, headers: HeaderMap) -> Response {
    let Some(token) = &h.token else {
        return error(StatusCode::FORBIDDEN, "triggering runs is disabled: no http.token_file configured");
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if !given.is_some_and(|g| same_token(g.as_bytes(), token.as_bytes())) {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], Json(json!({ "error": "missing or wrong bearer token" })))
            .into_response();
    }
    match h.ctx.trigger(&job, "http") {
        Ok(run) => (StatusCode::ACCEPTED, Json(json!({ "job": job, "run": run }))).into_response(),
        Err(TriggerError::UnknownJob) => error(StatusCode::NOT_FOUND, "no such job"),
        Err(TriggerError::AlreadyRunning) => error(StatusCode::CONFLICT, "the job is already running"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abc", b"abd"));
        assert!(!same_token(b"abc", b"abcd"));
    }
}
