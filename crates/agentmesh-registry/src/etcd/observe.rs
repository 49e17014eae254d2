//! A seam for watching every etcd request: an [`EtcdObserver`] given in
//! [`EtcdOptions::observer`](super::EtcdOptions::observer) hears of each
//! request as it ends, with its gRPC method, how long etcd took to start
//! answering and whether it failed.
//!
//! The seam sits under etcd-client, on the channel every request of the
//! node's client goes through (a boxed tower service around tonic's
//! balanced channel), rather than at each of this crate's dozens of call
//! sites: nothing can be missed, the keep-alive and watch streams
//! included, and the backend stays free of any metrics library. The
//! runtime installs an observer that feeds Prometheus; without one the
//! client uses etcd-client's plain channel and pays nothing.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use etcd_client::{BalancedChannelBuilder, Channel};
use tonic::body::Body;
use tonic::transport::Endpoint;
use tonic::transport::channel::Change;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service};

/// Told of every etcd request this node makes.
pub trait EtcdObserver: Send + Sync + 'static {
    /// One request ended: `method` as [`etcd_method`] names it, the time
    /// until etcd's answer began (for a stream, until it opened), and
    /// whether it failed (no answer, or an error status).
    fn observe(&self, method: &'static str, elapsed: Duration, failed: bool);
}

/// A shared [`EtcdObserver`], as [`EtcdOptions`](super::EtcdOptions)
/// holds it.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn EtcdObserver>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}

/// The etcd gRPC methods an agentmesh node calls, named without their
/// package (`/etcdserverpb.KV/Txn` is `KV/Txn`).
pub const ETCD_METHODS: [&str; 18] = [
    "KV/Range",
    "KV/Put",
    "KV/DeleteRange",
    "KV/Txn",
    "KV/Compact",
    "Watch/Watch",
    "Lease/LeaseGrant",
    "Lease/LeaseRevoke",
    "Lease/LeaseKeepAlive",
    "Lease/LeaseTimeToLive",
    "Lease/LeaseLeases",
    "Maintenance/Alarm",
    "Maintenance/Status",
    "Auth/Authenticate",
    "Auth/AuthStatus",
    "Auth/UserAdd",
    "Auth/RoleAdd",
    "Auth/RoleGrantPermission",
];

/// The method of a request path, one of [`ETCD_METHODS`] or `other`: a
/// small fixed set, whatever the path.
pub fn etcd_method(path: &str) -> &'static str {
    let method = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('.'))
        .map_or("", |(_, m)| m);
    ETCD_METHODS
        .iter()
        .find(|known| **known == method)
        .copied()
        .unwrap_or("other")
}

/// Builds etcd-client's balanced channel wrapped in [`Observed`].
pub(crate) struct ObservedChannel(pub Observer);

impl BalancedChannelBuilder for ObservedChannel {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<
        (
            Channel,
            tokio::sync::mpsc::Sender<Change<http::Uri, Endpoint>>,
        ),
        Self::Error,
    > {
        let (inner, updates) = tonic::transport::Channel::balance_channel(buffer_size);
        let observed = Observed {
            inner,
            observer: self.0.0,
        };
        Ok((Channel::Custom(BoxCloneSyncService::new(observed)), updates))
    }
}

/// Times each request through `inner` and tells the observer.
#[derive(Clone)]
struct Observed {
    inner: tonic::transport::Channel,
    observer: Arc<dyn EtcdObserver>,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send + 'static>>;

impl Service<http::Request<Body>> for Observed {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = etcd_method(request.uri().path());
        let observer = self.observer.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await.map_err(BoxError::from);
            let failed = match &response {
                // An error answer without a message comes as headers only
                // ("trailers-only"), so its status is here; one after
                // streamed messages is not, and is not counted.
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .is_some_and(|status| status.as_bytes() != b"0"),
                Err(_) => true,
            };
            observer.observe(method, started.elapsed(), failed);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_a_fixed_set() {
        assert_eq!(etcd_method("/etcdserverpb.KV/Txn"), "KV/Txn");
        assert_eq!(
            etcd_method("/etcdserverpb.Lease/LeaseKeepAlive"),
            "Lease/LeaseKeepAlive"
        );
        assert_eq!(etcd_method("/v3electionpb.Election/Campaign"), "other");
        for hostile in ["", "/", "KV/Txn", "/etcdserverpb.KV/Txn/x", "/x.\"}"] {
            assert_eq!(etcd_method(hostile), "other", "{hostile:?}");
        }
    }
}
