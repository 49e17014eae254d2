//! How a node's advertised `host:port` becomes a gRPC URI.

/// `host:port` as registered becomes `http://host:port`; a value that
/// already names its scheme is kept as given.
pub fn uri(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bare_address_gets_the_http_scheme() {
        assert_eq!(super::uri("127.0.0.1:7700"), "http://127.0.0.1:7700");
        assert_eq!(super::uri("https://node:443"), "https://node:443");
    }
}
