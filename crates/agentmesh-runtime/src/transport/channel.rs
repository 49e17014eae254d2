//! The one place that builds gRPC channels and servers.
//!
//! Every outgoing connection — mailbox links between nodes, forwarding to
//! the leader, the CLI client, the load generator — is made by [`lazy`] or
//! [`connect`], and every server starts from [`server`] and [`incoming`].
//! TLS, authentication and trace propagation are added here, once.
//!
//! Both ends send HTTP/2 keep-alive PINGs, so a peer that froze or vanished
//! is found out while a stream to it is open; the server also closes
//! connections with nothing in flight and holds a bounded number of them
//! (see [`super::accept`]).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use thiserror::Error;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint, Server};
use tower_layer::{Identity, Stack};

pub use super::accept::ConnectionStats;
use super::accept::{self, Conn, TrackRequestsLayer};
use crate::node::config::ConnectionConfig;

/// How long connecting may take when the caller does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Interval of a client channel's HTTP/2 PINGs while it has streams open.
/// Short enough that a client waiting on a frozen node gives up within
/// half a minute, long enough to cost nothing.
pub const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// How long a client waits for the answer to a PING before it drops the
/// connection and fails its streams.
pub const CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChannelError {
    #[error("bad endpoint '{endpoint}': {message}")]
    BadEndpoint { endpoint: String, message: String },
    /// An `https://` endpoint: refused rather than silently spoken to in
    /// plaintext.
    #[error(
        "endpoint '{0}' asks for TLS (https://), which this release does not speak yet; \
         use http://HOST:PORT or HOST:PORT"
    )]
    TlsUnsupported(String),
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
}

/// The URI of a node's advertised `host:port` (`http://host:port`); a
/// value that names its scheme keeps it.
pub fn uri(endpoint: &str) -> Result<String, ChannelError> {
    let uri = match endpoint.split_once("://") {
        None => format!("http://{endpoint}"),
        Some(("http", _)) => endpoint.to_owned(),
        Some(("https", _)) => return Err(ChannelError::TlsUnsupported(endpoint.to_owned())),
        Some((scheme, _)) => {
            return Err(ChannelError::BadEndpoint {
                endpoint: endpoint.to_owned(),
                message: format!("unknown scheme '{scheme}' (expected http or HOST:PORT)"),
            });
        }
    };
    Ok(uri)
}

/// The endpoint every channel is built from: TCP_NODELAY (multi-frame
/// HTTP/2 writes otherwise stall on delayed ACKs, ~40 ms), a connect
/// timeout, and keep-alive PINGs while streams are open (idle channels do
/// not ping: the server closes them after its idle timeout and they
/// reconnect on next use).
fn endpoint(address: &str, connect_timeout: Duration) -> Result<Endpoint, ChannelError> {
    let endpoint = Endpoint::from_shared(uri(address)?).map_err(|e| ChannelError::BadEndpoint {
        endpoint: address.to_owned(),
        message: e.to_string(),
    })?;
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(CLIENT_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(CLIENT_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(false))
}

/// A channel that connects on first use and reconnects after a failure.
pub fn lazy(address: &str, connect_timeout: Duration) -> Result<Channel, ChannelError> {
    Ok(endpoint(address, connect_timeout)?.connect_lazy())
}

/// A channel connected now; fails if `address` cannot be reached.
pub async fn connect(address: &str, connect_timeout: Duration) -> Result<Channel, ChannelError> {
    endpoint(address, connect_timeout)?
        .connect()
        .await
        .map_err(|e| ChannelError::Connect {
            endpoint: address.to_owned(),
            message: std::error::Error::source(&e)
                .map_or_else(|| e.to_string(), |source| format!("{e}: {source}")),
        })
}

/// The server every node serves its services on: HTTP/2 keep-alive PINGs
/// at `config`'s interval (a peer that does not answer within the timeout
/// is disconnected) and every request counted on its connection for the
/// idle timeout. Serve it on [`incoming`].
pub fn server(config: &ConnectionConfig) -> Server<Stack<TrackRequestsLayer, Identity>> {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(config.keepalive_interval))
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .layer(TrackRequestsLayer)
}

/// Connections accepted from `listener` within `config`'s connection limit
/// and idle timeout, with TCP_NODELAY; an accept loop that backs off at
/// the file-descriptor limit instead of spinning. `stats` counts what it
/// does.
pub fn incoming(
    listener: TcpListener,
    config: &ConnectionConfig,
    stats: Arc<ConnectionStats>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    accept::incoming(listener, config, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_address_gets_the_http_scheme() {
        assert_eq!(uri("127.0.0.1:7700").unwrap(), "http://127.0.0.1:7700");
        assert_eq!(uri("http://node:80").unwrap(), "http://node:80");
    }

    #[test]
    fn https_is_refused_rather_than_spoken_in_plaintext() {
        let error = lazy("https://node:443", DEFAULT_CONNECT_TIMEOUT).unwrap_err();
        assert_eq!(
            error,
            ChannelError::TlsUnsupported("https://node:443".into())
        );
        assert!(error.to_string().contains("does not speak yet"), "{error}");
        assert!(matches!(
            uri("ftp://node:21"),
            Err(ChannelError::BadEndpoint { .. })
        ));
    }
}
