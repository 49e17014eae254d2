//! The server side of every connection a node accepts: how many it holds,
//! when it lets one go, and what it does when the process runs out of file
//! descriptors.
//!
//! ```text
//! TcpListener ─ Incoming ─┬─ over --max-connections: RESOURCE_EXHAUSTED naming the limit, closed, counted
//!                         ├─ accept error (EMFILE, ENFILE, ...): backs off, one WARN per interval
//!                         └─ Conn ─ [TLS handshake] ─ hyper/h2 ─ TrackRequests (in-flight requests)
//!                              └─ EOF once no request has been in flight for --idle-timeout
//! ```
//!
//! With TLS ([`super::tls`]), each accepted connection's handshake runs in
//! a task of its own, bounded by [`HANDSHAKE_TIMEOUT`], so a client that
//! connects and sends nothing holds one connection slot for that long and
//! delays no one else. The client certificate's [`PeerIdentity`], if it
//! presented one that chains to the cluster CA, rides on the connection's
//! [`ConnInfo`] into every request.
//!
//! tonic's own `TcpIncoming` hands an accept error to the server loop,
//! which tries again at once: at the file-descriptor limit the pending
//! connection stays in the kernel's backlog, every `accept` fails, and the
//! loop burns a core while answering nothing. [`incoming`] never yields an
//! error; it waits, doubling the pause up to [`MAX_ACCEPT_BACKOFF`].
//!
//! Idleness is measured in requests, not bytes: HTTP/2 PINGs (the server's
//! keep-alive and their answers) keep the socket busy on a connection no
//! one uses, while a Watch that waits an hour for its next record is not
//! idle at all. [`TrackRequests`] counts the requests in flight on each
//! connection until their response bodies end; the connection's reader
//! reports end-of-stream once the count has stayed at zero for the idle
//! timeout, and hyper closes it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use http_body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

use super::tls::{NodeTls, PeerIdentity};
use crate::node::config::ConnectionConfig;

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections that finished their handshake and wait for the server to
/// take them.
const HANDSHAKEN_BUFFER: usize = 64;

/// The longest pause between two `accept` calls after an error.
pub const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// The first pause after an accept error.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// At most one WARN per kind of trouble (refusals, accept errors) per
/// interval, with the count since the last one.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Refused connections answered at once (see [`Acceptor::refuse`]); more
/// are closed at once, each answered one holding a descriptor for at most
/// [`LINGER`].
const MAX_LINGERING: usize = 64;
/// How long a refused connection is answered before it is closed.
const LINGER: Duration = Duration::from_secs(1);

/// Counts of what the accept loop did, for logs and tests.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections refused for the connection limit, ever.
    pub refused: AtomicU64,
    /// Connections closed after the idle timeout, ever.
    pub idle_closed: AtomicU64,
    /// `accept` calls that failed, ever.
    pub accept_errors: AtomicU64,
    /// TLS handshakes that failed or timed out, ever.
    pub handshake_failures: AtomicU64,
}

/// Connections accepted from `listener`, within `config`'s limits; see the
/// module documentation. The stream never yields an error.
pub fn incoming(
    listener: TcpListener,
    config: &ConnectionConfig,
    stats: Arc<ConnectionStats>,
    tls: Option<NodeTls>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let acceptor = Acceptor {
        tls: tls.clone(),
        listener,
        max_connections: config.max_connections,
        idle_timeout: config.idle_timeout,
        refusal: format!(
            "connection limit of {} reached (--max-connections); retry later",
            config.max_connections
        )
        .into(),
        stats,
        refusals: RateLimited::default(),
        errors: RateLimited::default(),
        lingering: Arc::new(Semaphore::new(MAX_LINGERING)),
    };
    match tls {
        None => futures::stream::unfold(acceptor, |mut acceptor| async move {
            let conn = acceptor.next().await;
            Some((Ok(conn), acceptor))
        })
        .left_stream(),
        Some(tls) => {
            let (handshaken, taken) = mpsc::channel(HANDSHAKEN_BUFFER);
            tokio::spawn(handshake_each(acceptor, tls, handshaken));
            tokio_stream::wrappers::ReceiverStream::new(taken)
                .map(Ok)
                .right_stream()
        }
    }
}

/// Accepts connections and runs each one's TLS handshake in a task of its
/// own, handing over those that complete; ends once the server stops
/// taking connections.
async fn handshake_each(mut acceptor: Acceptor, tls: NodeTls, handshaken: mpsc::Sender<Conn>) {
    loop {
        let conn = tokio::select! {
            conn = acceptor.next() => conn,
            () = handshaken.closed() => return,
        };
        let config = tls.server_config();
        let handshaken = handshaken.clone();
        tokio::spawn(async move {
            let remote = conn.info.tcp.remote_addr;
            let stats = conn.stats.clone();
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.handshake(config)).await {
                Ok(Ok(conn)) => {
                    let _ = handshaken.send(conn).await;
                }
                Ok(Err(error)) => {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    debug!(?remote, %error, "TLS handshake failed");
                }
                Err(_) => {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    debug!(
                        ?remote,
                        timeout_ms = HANDSHAKE_TIMEOUT.as_millis() as u64,
                        "TLS handshake timed out"
                    );
                }
            }
        });
    }
}

struct Acceptor {
    listener: TcpListener,
    tls: Option<NodeTls>,
    max_connections: usize,
    idle_timeout: Duration,
    refusal: Arc<str>,
    stats: Arc<ConnectionStats>,
    refusals: RateLimited,
    errors: RateLimited,
    lingering: Arc<Semaphore>,
}

impl Acceptor {
    async fn next(&mut self) -> Conn {
        let mut backoff = MIN_ACCEPT_BACKOFF;
        loop {
            let (stream, remote) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) if per_connection(&error) => continue,
                Err(error) => {
                    self.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(failed) = self.errors.tick() {
                        warn!(
                            %error,
                            failed,
                            backoff_ms = backoff.as_millis() as u64,
                            "cannot accept connections (at the file-descriptor limit if the \
                             error says too many open files); backing off"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            };
            backoff = MIN_ACCEPT_BACKOFF;
            if self.stats.open.load(Ordering::Relaxed) >= self.max_connections {
                self.refuse(stream, remote);
                continue;
            }
            return Conn::new(stream, remote, self.idle_timeout, self.stats.clone());
        }
    }

    /// Answers every request the refused connection sends within
    /// [`LINGER`] with `RESOURCE_EXHAUSTED` naming the limit, then closes
    /// it: a gRPC client reads a status like any other instead of a reset
    /// or a bare GOAWAY, which some clients report only as "connection
    /// closed". At most [`MAX_LINGERING`] refused connections are answered
    /// at once; past that they are closed at once.
    fn refuse(&mut self, stream: TcpStream, remote: SocketAddr) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        if let Ok(permit) = self.lingering.clone().try_acquire_owned() {
            let refusal = self.refusal.clone();
            let tls = self.tls.as_ref().map(NodeTls::server_config);
            tokio::spawn(async move {
                let answered = async {
                    match tls {
                        None => answer_refused(stream, refusal).await,
                        Some(config) => {
                            if let Ok(stream) = TlsAcceptor::from(config).accept(stream).await {
                                answer_refused(stream, refusal).await;
                            }
                        }
                    }
                };
                let _ = tokio::time::timeout(LINGER, answered).await;
                drop(permit);
            });
        }
        if let Some(refused) = self.refusals.tick() {
            warn!(
                limit = self.max_connections,
                refused,
                %remote,
                "refused connections over the connection limit (--max-connections)"
            );
        }
    }
}

/// Serves HTTP/2 on a refused connection, answering each request with
/// `RESOURCE_EXHAUSTED` and `refusal` as its message.
async fn answer_refused<S>(stream: S, refusal: Arc<str>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |_request| {
        let status = tonic::Status::resource_exhausted(refusal.to_string());
        async move { Ok::<_, std::convert::Infallible>(status.into_http::<tonic::body::Body>()) }
    });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Accept errors that concern one connection only (it was reset before it
/// was taken); the next `accept` may well succeed.
fn per_connection(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Lets one event through per [`WARN_INTERVAL`] with the number of events
/// since the last one let through.
#[derive(Default)]
struct RateLimited {
    last: Option<Instant>,
    since: u64,
}

impl RateLimited {
    fn tick(&mut self) -> Option<u64> {
        self.since += 1;
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + WARN_INTERVAL) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

/// Requests in flight on one connection, and since when there were none.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// When the connection may be closed; `None` while a request is in
    /// flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(*self.idle_since.lock().unwrap_or_else(|e| e.into_inner()) + timeout)
    }
}

/// One request in flight, until its response body has been dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What each request learns of its connection: tonic's [`TcpConnectInfo`]
/// (added to the request too, so `Request::remote_addr` works), the
/// connection's request count, and the node on the other end if it
/// authenticated with a certificate.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    tcp: TcpConnectInfo,
    activity: Arc<Activity>,
    peer: Option<Arc<PeerIdentity>>,
}

impl ConnInfo {
    /// The agents the peer's certificate names; `None` unless it presented
    /// one that chains to the cluster CA.
    pub fn peer(&self) -> Option<&Arc<PeerIdentity>> {
        self.peer.as_ref()
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Taken out for a handshake that failed; reads as closed.
    Gone,
}

macro_rules! with_io {
    ($io:expr, $s:ident => $body:expr, $gone:expr) => {
        match $io {
            Io::Plain($s) => $body,
            Io::Tls($s) => $body,
            Io::Gone => $gone,
        }
    };
}

/// An accepted connection: the socket, its share of the connection limit
/// and its idle timer.
pub struct Conn {
    stream: Io,
    info: ConnInfo,
    idle_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    closed: bool,
    stats: Arc<ConnectionStats>,
}

impl Conn {
    fn new(
        stream: TcpStream,
        remote: SocketAddr,
        idle_timeout: Duration,
        stats: Arc<ConnectionStats>,
    ) -> Self {
        // Multi-frame HTTP/2 writes otherwise stall on delayed ACKs.
        let _ = stream.set_nodelay(true);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        Self {
            info: ConnInfo {
                tcp: TcpConnectInfo {
                    local_addr: stream.local_addr().ok(),
                    remote_addr: Some(remote),
                },
                activity: Arc::new(Activity {
                    in_flight: AtomicUsize::new(0),
                    idle_since: Mutex::new(now),
                }),
                peer: None,
            },
            stream: Io::Plain(stream),
            idle_timeout,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            closed: false,
            stats,
        }
    }

    /// Runs the TLS handshake; the connection then carries the client
    /// certificate's identity, if any.
    async fn handshake(mut self, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let Io::Plain(tcp) = std::mem::replace(&mut self.stream, Io::Gone) else {
            return Err(io::Error::other(
                "handshake on a connection that is not plain TCP",
            ));
        };
        let tls = TlsAcceptor::from(config).accept(tcp).await?;
        self.info.peer = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(PeerIdentity::of_certificate)
            .map(Arc::new);
        self.stream = Io::Tls(Box::new(tls));
        Ok(self)
    }

    /// `true` once the connection has had no request in flight for the
    /// idle timeout; otherwise rearms the timer for the next check.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.info.activity.idle_deadline(self.idle_timeout) {
                Some(deadline) if deadline <= now => return true,
                Some(deadline) => self.idle.as_mut().reset(deadline),
                None => self.idle.as_mut().reset(now + self.idle_timeout),
            }
        }
        false
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        let read =
            with_io!(&mut this.stream, s => Pin::new(s).poll_read(cx, buf), Poll::Ready(Ok(())));
        match read {
            Poll::Pending => {}
            ready => return ready,
        }
        if this.idle_expired(cx) {
            // End of stream: hyper ends the connection and drops it.
            this.closed = true;
            this.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
            debug!(
                remote = ?this.info.tcp.remote_addr,
                idle_timeout_ms = this.idle_timeout.as_millis() as u64,
                "closing an idle connection"
            );
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        with_io!(&mut self.get_mut().stream, s => Pin::new(s).poll_write(cx, buf), Poll::Ready(Ok(0)))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        with_io!(
            &mut self.get_mut().stream,
            s => Pin::new(s).poll_write_vectored(cx, bufs),
            Poll::Ready(Ok(0))
        )
    }

    fn is_write_vectored(&self) -> bool {
        with_io!(&self.stream, s => s.is_write_vectored(), false)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_io!(&mut self.get_mut().stream, s => Pin::new(s).poll_flush(cx), Poll::Ready(Ok(())))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        with_io!(&mut self.get_mut().stream, s => Pin::new(s).poll_shutdown(cx), Poll::Ready(Ok(())))
    }
}

/// Counts every request on its connection (see [`Conn`]) until its
/// response body is dropped, so a long Watch keeps its connection open and
/// a connection without requests is let go.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackRequestsLayer;

impl<S> tower_layer::Layer<S> for TrackRequestsLayer {
    type Service = TrackRequests<S>;

    fn layer(&self, inner: S) -> TrackRequests<S> {
        TrackRequests { inner }
    }
}

#[derive(Debug, Clone)]
pub struct TrackRequests<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for TrackRequests<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let in_flight = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| (info.tcp.clone(), info.activity.enter()));
        let in_flight = in_flight.map(|(tcp, in_flight)| {
            request.extensions_mut().insert(tcp);
            in_flight
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                inner: body,
                _in_flight: in_flight,
            }))
        })
    }
}

/// A response body that holds its request's [`InFlight`] until dropped.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: Option<InFlight>,
}

impl<B> http_body::Body for TrackedBody<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;
    use crate::transport::channel;

    /// A health server on a free port with `config`; its address and
    /// counters.
    async fn serve(config: ConnectionConfig) -> (SocketAddr, Arc<ConnectionStats>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ConnectionStats::default());
        let (_reporter, health) = tonic_health::server::health_reporter();
        let incoming = channel::incoming(listener, &config, stats.clone(), None);
        tokio::spawn(
            channel::server(&config)
                .add_service(health)
                .serve_with_incoming(incoming),
        );
        (addr, stats)
    }

    /// Everything `stream` sends until it closes, within `limit`.
    async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
        let mut received = Vec::new();
        tokio::time::timeout(limit, stream.read_to_end(&mut received))
            .await
            .expect("the server closed the connection in time")
            .unwrap_or_default();
        received
    }

    async fn until(what: &str, mut probe: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !probe() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn over_the_limit_a_connection_is_told_why_and_an_idle_one_is_let_go() {
        let idle_timeout = Duration::from_millis(300);
        let (addr, stats) = serve(ConnectionConfig {
            max_connections: 1,
            idle_timeout,
            ..ConnectionConfig::default()
        })
        .await;
        let opened = Instant::now();
        let mut first = TcpStream::connect(addr).await.unwrap();
        until("the first connection", || {
            stats.open.load(Ordering::Relaxed) == 1
        })
        .await;

        // A gRPC client learns why, as a status naming the limit.
        let channel = channel::connect(&addr.to_string(), DEFAULT_TIMEOUT, &Default::default())
            .await
            .unwrap();
        let refused = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        let mut chain = refused.message().to_owned();
        let mut source = std::error::Error::source(&refused);
        while let Some(error) = source {
            chain.push_str(&format!(": {error}"));
            source = error.source();
        }
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{chain}");
        assert!(
            chain.contains("connection limit of 1 reached (--max-connections)"),
            "{chain}"
        );
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);

        // The first connection sent nothing: closed after the idle timeout.
        read_to_close(&mut first, Duration::from_secs(5)).await;
        assert!(opened.elapsed() >= idle_timeout, "{:?}", opened.elapsed());
        assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);
        until("the slot to be free", || {
            stats.open.load(Ordering::Relaxed) == 0
        })
        .await;

        // The slot is free again, and a client is served.
        let channel = channel::connect(&addr.to_string(), DEFAULT_TIMEOUT, &Default::default())
            .await
            .unwrap();
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap();
    }

    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_connection_with_a_stream_open_is_not_idle() {
        let idle_timeout = Duration::from_millis(200);
        let (addr, stats) = serve(ConnectionConfig {
            idle_timeout,
            ..ConnectionConfig::default()
        })
        .await;
        let channel = channel::connect(&addr.to_string(), DEFAULT_TIMEOUT, &Default::default())
            .await
            .unwrap();
        let mut health = HealthClient::new(channel);
        let mut updates = health
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        updates.message().await.unwrap().expect("the first status");
        // Three idle timeouts with the stream open: the connection stays.
        tokio::time::sleep(idle_timeout * 3).await;
        assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 0);
        health
            .check(HealthCheckRequest::default())
            .await
            .expect("the connection still serves");
        // Once the stream ends, the connection is idle and let go.
        drop(updates);
        until("the idle connection to close", || {
            stats.idle_closed.load(Ordering::Relaxed) == 1
        })
        .await;
    }

    #[test]
    fn warnings_are_let_through_once_per_interval_with_a_count() {
        let mut limited = RateLimited::default();
        assert_eq!(limited.tick(), Some(1));
        assert_eq!(limited.tick(), None);
        assert_eq!(limited.tick(), None);
        limited.last = Some(Instant::now() - WARN_INTERVAL);
        assert_eq!(limited.tick(), Some(3));
    }
}
