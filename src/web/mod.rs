//! The web UI at `/`: server-rendered pages (askama templates in `src/web/templates`),
//! readable without JavaScript and on a phone.
//!
//! Read-only overview pages (jobs, repository, verification, a job's snapshots) are open,
//! like `/api/v1/status`. Anything that runs a job or returns backed-up data needs a
//! session: the login form takes the daemon's bearer token (`http.token_file`) and sets
//! an `HttpOnly`, `SameSite=Strict` cookie naming a session held in memory (a restart
//! logs everyone out). Every POST also carries the session's CSRF token, so a page on
//! another site can neither read nor forge them. HTTP only reads state: pages read the
//! shared status and the repository, and "run now" goes through the same trigger as the
//! API and the schedule.

mod auth;
mod download;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use crate::runner::Context;

pub use auth::Sessions;

/// What the UI's handlers share.
#[derive(Clone)]
pub(crate) struct Web {
    pub ctx: Arc<Context>,
    /// The login secret; `None`: no login, so no downloads and no "run now".
    pub token: Option<Arc<str>>,
    pub sessions: Arc<Sessions>,
}

/// The UI's routes, ready to merge into the daemon's router.
pub fn router(ctx: Arc<Context>, token: Option<Arc<str>>) -> Router {
    let web = Web {
        ctx,
        token,
        sessions: Arc::new(Sessions::default()),
    };
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/jobs/{job}", get(pages::job))
        .route("/jobs/{job}/run", post(pages::run_now))
        .route("/snapshots/{id}", get(pages::snapshot))
        .route("/snapshots/{id}/file", get(download::file))
        .route("/snapshots/{id}/tar", get(download::tar))
        .route("/style.css", get(pages::style))
        .with_state(web)
}
