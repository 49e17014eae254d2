//! The metrics endpoint (`--metrics-listen`): `GET /metrics` over plain
//! HTTP/1.1, and the node's probes: `/livez` (200 while the process
//! answers) and `/readyz` (200 while the node serves, 503 before, while
//! its store is down and while it leaves; the same verdict as its gRPC
//! health). Probes live here because the gRPC port speaks only TLS, which
//! Kubernetes' `grpc` probes cannot. Everything else is `404` (`405` for
//! another method).
//!
//! It is unauthenticated and shows counters only, no secret; bind it to a
//! loopback or pod-internal address. Whoever can reach it gets little
//! hold on the node:
//!
//! - at most [`MAX_CONNECTIONS`] connections at once; the next waits in the
//!   kernel's backlog until one ends;
//! - one request per connection (no keep-alive), and the whole connection
//!   within [`CONNECTION_TIMEOUT`], so a client that sends nothing holds a
//!   slot for that long at most;
//! - request heads up to [`MAX_HEAD_BYTES`]; a request body is never read.
//!
//! On a coordinator the port also serves the live dashboard at `/` (see
//! [`crate::dashboard`], which bounds its own answers and, when the node
//! has client tokens, requires one for its data); other nodes answer its
//! paths with a pointer to the coordinators.
//!
//! Routing is one function ([`respond`]), so further pages served on this
//! port are one match arm each.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ACCEPT, ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use tokio::sync::watch;

use super::{Format, Metrics};
use crate::dashboard::{self, Slot};
use crate::node::health::Readiness;
use crate::support::background::Background;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest a connection is held, from accept to the last byte of the
/// response: a scrape takes milliseconds.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) read; hyper's minimum.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Pause after a failed `accept` (out of file descriptors, say), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The path metrics are served at.
pub const METRICS_PATH: &str = "/metrics";
/// Liveness: answered while the process serves requests.
pub const LIVE_PATH: &str = "/livez";
/// Readiness: 200 while the node serves, 503 otherwise.
pub const READY_PATH: &str = "/readyz";

/// Binds `addr` for the metrics endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `metrics` on `listener` until `background` stops; returns the
/// bound address. Dashboard paths go to `dashboard`.
pub fn spawn(
    listener: TcpListener,
    metrics: &'static Metrics,
    ready: watch::Receiver<Readiness>,
    dashboard: Slot,
    background: &Background,
) -> std::io::Result<SocketAddr> {
    spawn_within(
        listener,
        metrics,
        ready,
        dashboard,
        background,
        CONNECTION_TIMEOUT,
    )
}

/// [`spawn`] with another connection timeout, for tests.
fn spawn_within(
    listener: TcpListener,
    metrics: &'static Metrics,
    ready: watch::Receiver<Readiness>,
    dashboard: Slot,
    background: &Background,
    timeout: Duration,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    info!(%addr, "metrics served at http://{addr}{METRICS_PATH}");
    let connections = background.clone();
    background.spawn("metrics server", async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            // The semaphore is never closed.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "metrics listener: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let ready = ready.clone();
            let dashboard = dashboard.clone();
            connections.spawn("metrics connection", async move {
                let _slot = slot;
                let connection = http1::Builder::new()
                    .keep_alive(false)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |request| {
                            let readiness = *ready.borrow();
                            let dashboard = dashboard.clone();
                            async move {
                                Ok::<_, Infallible>(
                                    respond(metrics, readiness, &dashboard, &request).await,
                                )
                            }
                        }),
                    );
                match tokio::time::timeout(timeout, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => debug!(%error, "metrics connection failed"),
                    Err(_) => debug!("metrics connection timed out"),
                }
            });
        }
    });
    Ok(addr)
}

/// The response to one request. The body is never read.
async fn respond(
    metrics: &Metrics,
    readiness: Readiness,
    dashboard: &Slot,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let ours = [METRICS_PATH, LIVE_PATH, READY_PATH].contains(&path);
    if !ours && !dashboard::is_dashboard_path(path) {
        return text(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics, probes at /livez and /readyz, the dashboard \
             (on coordinators) at /\n",
        );
    }
    if request.method() != Method::GET {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: only GET\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    if !ours {
        let query = request.uri().query().unwrap_or_default();
        return dashboard.respond(path, query, request.headers()).await;
    }
    match path {
        LIVE_PATH => return text(StatusCode::OK, "live\n"),
        READY_PATH if readiness.is_ready() => return text(StatusCode::OK, "ready\n"),
        READY_PATH => {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                match readiness {
                    Readiness::Starting => "not ready: starting\n",
                    Readiness::StoreDown => {
                        "not ready: the registry's store is unreachable or full\n"
                    }
                    _ => "not ready: leaving the cluster\n",
                },
            );
        }
        _ => {}
    }
    let accept = request
        .headers()
        .get(ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = Format::negotiate(accept);
    let mut response = Response::new(Full::new(Bytes::from(metrics.encode(format))));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::metrics::RefusalReason;

    static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
        let metrics = Metrics::new();
        metrics.refused_envelope("collab.bid", RefusalReason::ForgedSender);
        metrics
    });

    async fn serve() -> (SocketAddr, Background) {
        serve_within(CONNECTION_TIMEOUT).await
    }

    async fn serve_within(timeout: Duration) -> (SocketAddr, Background) {
        let ready = watch::Sender::new(Readiness::Serving).subscribe();
        serve_ready(ready, timeout).await
    }

    async fn serve_ready(
        ready: watch::Receiver<Readiness>,
        timeout: Duration,
    ) -> (SocketAddr, Background) {
        let background = Background::new();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = spawn_within(
            listener,
            &METRICS,
            ready,
            Slot::new(false),
            &background,
            timeout,
        )
        .unwrap();
        (addr, background)
    }

    #[tokio::test]
    async fn probes_answer_live_always_and_ready_only_while_the_node_serves() {
        let ready = watch::Sender::new(Readiness::Starting);
        let (addr, background) = serve_ready(ready.subscribe(), CONNECTION_TIMEOUT).await;
        let get = |path: &'static str| async move {
            exchange(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")).await
        };
        for readiness in [
            Readiness::Starting,
            Readiness::Serving,
            Readiness::StoreDown,
            Readiness::Leaving,
        ] {
            ready.send_replace(readiness);
            let live = get(LIVE_PATH).await;
            assert!(live.starts_with("HTTP/1.1 200 OK\r\n"), "{live}");
            let probe = get(READY_PATH).await;
            let expected = if readiness == Readiness::Serving {
                "HTTP/1.1 200 OK\r\n"
            } else {
                "HTTP/1.1 503 Service Unavailable\r\n"
            };
            assert!(probe.starts_with(expected), "{readiness:?}: {probe}");
        }
        let leaving = get(READY_PATH).await;
        assert!(leaving.contains("leaving the cluster"), "{leaving}");
        background.stop(Duration::from_secs(5)).await;
    }

    /// Sends `request` raw and reads the whole response.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn get_metrics_answers_in_the_format_asked_for() {
        let (addr, background) = serve().await;
        let plain = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(plain.starts_with("HTTP/1.1 200 OK\r\n"), "{plain}");
        assert!(
            plain.contains("content-type: text/plain; version=0.0.4"),
            "{plain}"
        );
        assert!(
            plain.contains(
                "agentmesh_envelopes_refused_total{kind=\"collab.bid\",reason=\"forged_sender\"} 1\n"
            ),
            "{plain}"
        );
        let open = exchange(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
        )
        .await;
        assert!(
            open.contains("content-type: application/openmetrics-text"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
        background.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let (addr, background) = serve().await;
        let other = exchange(addr, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
        // No coordinator here: the dashboard's paths say where it is.
        let page = exchange(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            page.starts_with("HTTP/1.1 404 Not Found\r\n")
                && page.contains("served by coordinators"),
            "{page}"
        );
        let post = exchange(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && post.contains("allow: GET"),
            "{post}"
        );
        background.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused_without_being_read() {
        let (addr, background) = serve().await;
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(4 * MAX_HEAD_BYTES)
        );
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // The server may close before it has taken every byte.
        let _ = stream.write_all(huge.as_bytes()).await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.is_empty() || response.starts_with("HTTP/1.1 431"),
            "{response}"
        );
        // The endpoint still answers.
        let ok = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        background.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn idle_connections_are_closed_and_free_their_slot() {
        let (addr, background) = serve_within(Duration::from_millis(200)).await;
        // Every slot taken by a client that sends nothing.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Each is closed by the server once its time is up.
        for stream in &mut idle {
            let mut buf = [0u8; 1];
            assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        }
        let ok = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        background.stop(Duration::from_secs(5)).await;
    }
}
