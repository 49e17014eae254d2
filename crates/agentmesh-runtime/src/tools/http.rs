//! `http.get`: fetches a plain `http://` URL from an allow-listed host.
//!
//! Off unless the node names hosts with `--http-allow`, because a tool that
//! reaches the network on behalf of any submitter is a server-side request
//! forgery hole. The client speaks HTTP/1.0 so responses are never chunked,
//! and it bounds time and body size.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Tool, ToolError, str_field};

/// Largest response read, headers included.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct HttpGet {
    allow: Vec<String>,
}

impl HttpGet {
    pub fn new(allow: Vec<String>) -> Self {
        Self { allow }
    }
}

/// Host, port and path of an `http://host[:port]/path` URL.
fn split_url(url: &str) -> Result<(String, u16, String), ToolError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        ToolError::InvalidInput(format!(
            "url '{url}' must start with http:// (https is not supported)"
        ))
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| ToolError::InvalidInput(format!("url '{url}' has a bad port")))?,
        ),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(ToolError::InvalidInput(format!("url '{url}' has no host")));
    }
    Ok((host.to_owned(), port, path.to_owned()))
}

#[async_trait]
impl Tool for HttpGet {
    fn name(&self) -> &str {
        "http.get"
    }

    async fn call(&self, input: Value) -> Result<Value, ToolError> {
        let url = str_field(&input, "url")?;
        let (host, port, path) = split_url(url)?;
        if !self.allow.iter().any(|h| h == &host) {
            return Err(ToolError::InvalidInput(format!(
                "host '{host}' is not in this node's http allow-list"
            )));
        }
        let raw = tokio::time::timeout(TIMEOUT, fetch(&host, port, &path))
            .await
            .map_err(|_| ToolError::Failed(format!("GET {url} timed out after {TIMEOUT:?}")))??;
        parse_response(&raw)
    }
}

async fn fetch(host: &str, port: u16, path: &str) -> Result<Vec<u8>, ToolError> {
    let failed =
        |e: std::io::Error| ToolError::Failed(format!("GET http://{host}:{port}{path}: {e}"));
    let mut stream = TcpStream::connect((host, port)).await.map_err(failed)?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: agentmesh\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(failed)?;
    let mut raw = Vec::new();
    let mut limited = stream.take(MAX_RESPONSE_BYTES as u64 + 1);
    limited.read_to_end(&mut raw).await.map_err(failed)?;
    if raw.len() > MAX_RESPONSE_BYTES {
        return Err(ToolError::Failed(format!(
            "response is larger than {MAX_RESPONSE_BYTES} bytes"
        )));
    }
    Ok(raw)
}

fn parse_response(raw: &[u8]) -> Result<Value, ToolError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| ToolError::Failed("malformed http response: no header end".into()))?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| ToolError::Failed("malformed http response: bad status line".into()))?;
    let json_body = serde_json::from_str::<Value>(body).ok();
    Ok(json!({ "status": status, "body": body, "json": json_body }))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn urls_split_into_host_port_path() {
        assert_eq!(
            split_url("http://a:8080/x?y").unwrap(),
            ("a".into(), 8080, "/x?y".into())
        );
        assert_eq!(split_url("http://a").unwrap(), ("a".into(), 80, "/".into()));
        assert!(split_url("https://a").is_err());
    }

    #[tokio::test]
    async fn fetches_from_allowed_hosts_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await.unwrap();
            socket
                .write_all(
                    b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"ok\":true}",
                )
                .await
                .unwrap();
        });
        let tool = HttpGet::new(vec!["127.0.0.1".into()]);
        let out = tool
            .call(json!({"url": format!("http://127.0.0.1:{port}/")}))
            .await
            .unwrap();
        assert_eq!(out["status"], json!(200));
        assert_eq!(out["json"], json!({"ok": true}));
        let err = tool
            .call(json!({"url": "http://example.com/"}))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid input: host 'example.com' is not in this node's http allow-list"
        );
    }
}
