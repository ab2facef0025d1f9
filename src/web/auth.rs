//! Login sessions: a cookie naming a session held in memory, and its CSRF token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::Web;
use super::pages::{Page, html};

pub(crate) const COOKIE: &str = "backuphub_session";
/// A session ends this long after login.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions; a new login ends the oldest. Bounds memory whatever
/// a client does.
const MAX_SESSIONS: usize = 64;

#[derive(Clone)]
struct Session {
    csrf: String,
    expires: Instant,
}

/// The logged-in sessions, by the random id their cookie carries.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    fn create(&self) -> (String, String) {
        let id = crate::repo::random_hex();
        let csrf = crate::repo::random_hex();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + LIFETIME,
            },
        );
        (id, csrf)
    }

    fn get(&self, id: &str) -> Option<Session> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// The request's session, if its cookie names a live one.
pub(crate) struct LoggedIn {
    pub id: String,
    pub csrf: String,
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(crate) fn session(web: &Web, headers: &HeaderMap) -> Option<LoggedIn> {
    let id = cookie_value(headers, COOKIE)?;
    let s = web.sessions.get(id)?;
    Some(LoggedIn {
        id: id.to_string(),
        csrf: s.csrf,
    })
}

/// A POST's CSRF field must be the session's token.
pub(crate) fn csrf_ok(me: &LoggedIn, given: &str) -> bool {
    crate::repo::crypto::constant_time_eq(me.csrf.as_bytes(), given.as_bytes())
}

/// Where to go after login: only a path on this site (no `//host`, no scheme).
fn safe_next(next: Option<&str>) -> String {
    match next {
        // Visible ASCII only: browsers drop tabs and newlines from a URL, so `/\t/host`
        // would become `//host`.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

/// A redirect to the login page that comes back to `here` afterwards.
pub(crate) fn to_login(here: &str) -> Response {
    let next = super::pages::encode_path(here.as_bytes());
    Redirect::to(&format!("/login?next={next}")).into_response()
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    page: Page,
    next: &'a str,
    error: Option<&'a str>,
    enabled: bool,
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

pub(crate) async fn login_page(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    html(
        StatusCode::OK,
        LoginPage {
            page: Page::new(&web, &headers, "Log in"),
            next: &next,
            error: None,
            enabled: web.token.is_some(),
        },
    )
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    token: String,
    next: Option<String>,
}

pub(crate) async fn login(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    let ok = web.token.as_ref().is_some_and(|t| {
        crate::repo::crypto::constant_time_eq(f.token.trim().as_bytes(), t.as_bytes())
    });
    if !ok {
        // Slows down guessing; the token itself is long and random.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let error = if web.token.is_some() {
            "wrong token"
        } else {
            "logging in is disabled: no http.token_file is configured"
        };
        return html(
            StatusCode::UNAUTHORIZED,
            LoginPage {
                page: Page::new(&web, &headers, "Log in"),
                next: &next,
                error: Some(error),
                enabled: web.token.is_some(),
            },
        );
    }
    let (id, _) = web.sessions.create();
    // No `Secure`: the daemon serves plain HTTP on the LAN (put a TLS proxy in front to
    // use it across networks, see the README).
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LIFETIME.as_secs()
    );
    let mut r = Redirect::to(&next).into_response();
    // 303: the browser follows with a GET.
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("hex and ASCII"),
    );
    r
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub(crate) async fn logout(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(me) = session(&web, &headers) {
        if !csrf_ok(&me, &f.csrf) {
            return (StatusCode::FORBIDDEN, "bad or missing CSRF token").into_response();
        }
        web.sessions.remove(&me.id);
    }
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "backuphub_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/jobs/a")), "/jobs/a");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil",
            "jobs",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn sessions_are_bounded_and_removable() {
        let s = Sessions::default();
        let ids: Vec<String> = (0..MAX_SESSIONS + 5).map(|_| s.create().0).collect();
        assert!(s.0.lock().unwrap().len() <= MAX_SESSIONS);
        let last = ids.last().unwrap();
        assert!(s.get(last).is_some());
        s.remove(last);
        assert!(s.get(last).is_none());
        assert!(s.get("not-a-session").is_none());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; backuphub_session=abc; c=d"),
        );
        assert_eq!(cookie_value(&h, COOKIE), Some("abc"));
        assert_eq!(
            crate::web::pages::encode_path(b"/snapshots/ab?path=a b"),
            "/snapshots/ab%3Fpath%3Da%20b"
        );
    }
}
