//! Who submits a task: the name a coordinator counts it under for its
//! per-client limits and round-robin dispatch
//! (`agentmesh_core::fairness`).
//!
//! On a node with client tokens the client is the subject of the caller's
//! token (see [`super::auth`]) and this header is ignored. Without tokens,
//! a client names itself in the [`CLIENT_METADATA`] header (the CLI sends
//! `--client`, `USER@HOST` by default); a request without one is named by
//! the address it came from.
//! The name is checked like any other input from the network. A follower
//! that forwards a submit to the leader sends the name it resolved, so the
//! leader does not mistake the follower for the client.

use std::net::IpAddr;

use agentmesh_core::ClientId;
use tonic::Request;
use tonic::metadata::MetadataValue;

use super::error::ApiError;

/// gRPC metadata key of the client's name.
pub const CLIENT_METADATA: &str = "agentmesh-client";

/// The client a request comes from: its [`CLIENT_METADATA`] when present
/// (refused when malformed), else its peer's IP address, else
/// [`ClientId::unnamed`] (an in-process call has no peer).
pub fn identify<T>(request: &Request<T>) -> Result<ClientId, ApiError> {
    if let Some(value) = request.metadata().get(CLIENT_METADATA) {
        let name = value.to_str().map_err(|_| {
            ApiError::InvalidArgument(format!("{CLIENT_METADATA} must be printable ASCII"))
        })?;
        return ClientId::parse(name)
            .map_err(|e| ApiError::InvalidArgument(format!("{CLIENT_METADATA}: {e}")));
    }
    Ok(request
        .remote_addr()
        .map_or_else(ClientId::unnamed, |addr| by_address(addr.ip())))
}

fn by_address(ip: IpAddr) -> ClientId {
    ClientId::sanitized(&ip.to_canonical().to_string(), ClientId::unnamed().as_str())
}

/// Names `request`'s client; for the CLI and for forwarding.
pub fn name_request<T>(request: &mut Request<T>, client: &ClientId) {
    // A parsed name is ASCII, which a metadata value always takes.
    if let Ok(value) = MetadataValue::try_from(client.as_str()) {
        request.metadata_mut().insert(CLIENT_METADATA, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_names_the_client_and_is_checked() {
        let mut request = Request::new(());
        assert_eq!(identify(&request).unwrap(), ClientId::unnamed());
        name_request(&mut request, &ClientId::parse("alice@box").unwrap());
        assert_eq!(identify(&request).unwrap().as_str(), "alice@box");

        let mut hostile = Request::new(());
        hostile
            .metadata_mut()
            .insert(CLIENT_METADATA, MetadataValue::from_static("a/b"));
        let error = identify(&hostile).unwrap_err();
        assert!(error.to_string().contains("agentmesh-client"), "{error}");
        let long = "x".repeat(300);
        hostile.metadata_mut().insert(
            CLIENT_METADATA,
            MetadataValue::try_from(long.as_str()).unwrap(),
        );
        assert!(matches!(
            identify(&hostile),
            Err(ApiError::InvalidArgument(_))
        ));
    }

    #[test]
    fn an_address_names_a_client_without_a_header() {
        assert_eq!(by_address("10.1.2.3".parse().unwrap()).as_str(), "10.1.2.3");
        assert_eq!(
            by_address("::ffff:10.1.2.3".parse().unwrap()).as_str(),
            "10.1.2.3"
        );
        assert_eq!(by_address("fe80::1".parse().unwrap()).as_str(), "fe80::1");
    }
}
