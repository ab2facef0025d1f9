//! The HTTP server's bounds, over real sockets on 127.0.0.1: half-sent requests and idle
//! connections are closed, slow handlers are cut off, connections beyond the limit wait,
//! and shutdown finishes requests in flight but never waits on a client.
//!
//! Paused time cannot drive real sockets, so the limits are set short and the tests assert
//! outcomes. `GUARD` only turns a hang into a failure; it is never what passes a test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use backuphub::http::{OpenConnections, ServeLimits, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const GUARD: Duration = Duration::from_secs(30);
/// Long enough never to fire during a test.
const NEVER: Duration = Duration::from_secs(3600);

fn limits() -> ServeLimits {
    ServeLimits {
        header_read_timeout: NEVER,
        request_timeout: NEVER,
        max_connections: 8,
        shutdown_grace: NEVER,
    }
}

/// A handler that reports that it started, then waits for a permit from `release`.
#[derive(Clone)]
struct Hold {
    entered: mpsc::UnboundedSender<()>,
    release: Arc<Semaphore>,
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    open: OpenConnections,
    server: JoinHandle<()>,
    entered: mpsc::UnboundedReceiver<()>,
    release: Arc<Semaphore>,
}

async fn start(limits: ServeLimits) -> Running {
    let (tx, entered) = mpsc::unbounded_channel();
    let release = Arc::new(Semaphore::new(0));
    let hold = Hold {
        entered: tx,
        release: release.clone(),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/hold",
            get(
                |axum::extract::State(h): axum::extract::State<Hold>| async move {
                    let _ = h.entered.send(());
                    h.release.acquire().await.unwrap().forget();
                    "released\n"
                },
            ),
        )
        .route("/forever", get(std::future::pending::<&'static str>))
        .with_state(hold);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::new(listener, app, limits);
    let open = server.open_connections();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(server.run(shutdown.clone()));
    Running {
        addr,
        shutdown,
        open,
        server,
        entered,
        release,
    }
}

async fn guarded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {GUARD:?}"))
}

fn request(path: &str, close: bool) -> String {
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n{conn}\r\n")
}

/// Everything the server sends until it closes the connection.
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    match s.read_to_end(&mut out).await {
        Ok(_) => {}
        // A reset is also the server closing; what was read before it stays in `out`.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading: {e}"),
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until the server serves exactly `n` connections.
async fn until_open(open: &OpenConnections, n: usize) {
    guarded("open connections", async {
        while open.get() != n {
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test]
async fn a_half_sent_request_is_closed_by_the_server() {
    let r = start(ServeLimits {
        header_read_timeout: Duration::from_millis(200),
        ..limits()
    })
    .await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    let got = guarded("half-sent request", read_until_closed(&mut s)).await;
    assert!(
        !got.contains("200 OK"),
        "a half-sent request was answered: {got}"
    );
    until_open(&r.open, 0).await;

    // The same server still answers whole requests.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(request("/healthz", true).as_bytes())
        .await
        .unwrap();
    let got = guarded("whole request", read_until_closed(&mut s)).await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let r = start(ServeLimits {
        header_read_timeout: Duration::from_millis(200),
        ..limits()
    })
    .await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    // No `Connection: close`: the server would keep it open for a next request.
    s.write_all(request("/healthz", false).as_bytes())
        .await
        .unwrap();
    let got = guarded("idle keep-alive connection", read_until_closed(&mut s)).await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(got.ends_with("ok\n"), "{got}");
    until_open(&r.open, 0).await;
}

#[tokio::test]
async fn a_slow_handler_is_answered_503() {
    let r = start(ServeLimits {
        request_timeout: Duration::from_millis(100),
        ..limits()
    })
    .await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(request("/forever", true).as_bytes())
        .await
        .unwrap();
    let got = guarded("slow handler", read_until_closed(&mut s)).await;
    assert!(got.starts_with("HTTP/1.1 503"), "{got}");
    assert!(got.contains("took too long"), "{got}");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_ends() {
    const N: usize = 2;
    let mut r = start(ServeLimits {
        max_connections: N,
        ..limits()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..N {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(request("/hold", true).as_bytes())
            .await
            .unwrap();
        guarded("a held request starts", r.entered.recv()).await;
        held.push(s);
    }
    assert_eq!(r.open.get(), N);

    // The kernel completes the handshake (the backlog), but the server does not take it.
    let mut extra = TcpStream::connect(r.addr).await.unwrap();
    extra
        .write_all(request("/healthz", true).as_bytes())
        .await
        .unwrap();
    // A server that ignored the limit would answer within this window; one that keeps it
    // never does. A slow machine can only make a broken server pass, never a good one fail.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), extra.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "connection {} was served while {N} were held: {early:?}",
        N + 1
    );
    assert_eq!(r.open.get(), N);

    // One held request ends: its slot goes to the waiting connection.
    r.release.add_permits(1);
    let first = guarded("released request", read_until_closed(&mut held[0])).await;
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    let got = guarded("waiting connection", read_until_closed(&mut extra)).await;
    assert!(
        format!("{}{got}", byte[0] as char).contains("200 OK"),
        "{got}"
    );
    r.release.add_permits(N);
}

/// Connects until the listener is gone, so the server has seen the shutdown.
async fn until_refused(addr: SocketAddr) {
    guarded("listener closed", async {
        loop {
            match TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                // Queued in the backlog of the listener being closed.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => panic!("connecting: {e}"),
                Ok(s) => drop(s),
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let mut r = start(limits()).await;
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(request("/hold", false).as_bytes())
        .await
        .unwrap();
    guarded("held request starts", r.entered.recv()).await;

    r.shutdown.cancel();
    until_refused(r.addr).await;
    assert!(
        !r.server.is_finished(),
        "shutdown did not wait for the request"
    );
    r.release.add_permits(1);
    // Without `Connection: close`: the server itself must close after answering.
    let got = guarded("request in flight", read_until_closed(&mut s)).await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(got.ends_with("released\n"), "{got}");
    guarded("server stops", r.server).await.unwrap();
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_half_sent_request() {
    let mut r = start(ServeLimits {
        shutdown_grace: Duration::from_millis(200),
        ..limits()
    })
    .await;
    let mut half = TcpStream::connect(r.addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // And a handler that never ends, for good measure.
    let mut stuck = TcpStream::connect(r.addr).await.unwrap();
    stuck
        .write_all(request("/hold", true).as_bytes())
        .await
        .unwrap();
    guarded("held request starts", r.entered.recv()).await;
    until_open(&r.open, 2).await;

    r.shutdown.cancel();
    // Header and request timeouts are an hour: only the grace can end this.
    guarded("shutdown with a half-sent request open", r.server)
        .await
        .unwrap();
    let got = guarded("half-sent connection", read_until_closed(&mut half)).await;
    assert!(!got.contains("200 OK"), "{got}");
    let got = guarded("stuck connection", read_until_closed(&mut stuck)).await;
    assert!(!got.contains("200 OK"), "{got}");
    assert_eq!(r.open.get(), 0);
}

#[test]
fn the_shutdown_grace_never_exceeds_the_stop_timeout() {
    let l = ServeLimits::new(Duration::from_secs(2));
    assert_eq!(l.shutdown_grace, Duration::from_secs(2));
    assert!(ServeLimits::new(Duration::from_secs(600)).shutdown_grace <= Duration::from_secs(600));
    assert_eq!(
        ServeLimits::new(Duration::ZERO).shutdown_grace,
        Duration::ZERO
    );
}
