//! `http.get` against servers on 127.0.0.1 started by each test: a bare
//! tokio listener, so a test controls every byte, and can answer with a
//! body that never ends or not at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// How the test server answers one request.
enum Answer {
    /// These bytes, then the connection closes.
    Raw(Vec<u8>),
    /// A 200 whose body never ends.
    Endless,
    /// Nothing; the connection stays open until the client leaves.
    Silent,
}

struct Server {
    port: u16,
    /// Connections accepted, to show a refused URL never reached it.
    connections: Arc<AtomicUsize>,
}

impl Server {
    async fn start(answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move { serve(socket, answer.as_ref()).await });
            }
        });
        Self { port, connections }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(mut socket: TcpStream, answer: &(dyn Fn(&str) -> Answer + Send + Sync)) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    match answer(&path) {
        Answer::Raw(bytes) => {
            let _ = socket.write_all(&bytes).await;
            let _ = socket.shutdown().await;
        }
        Answer::Endless => {
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .await;
            let chunk = vec![b'x'; 64 * 1024];
            while socket.write_all(&chunk).await.is_ok() {}
        }
        Answer::Silent => {
            let _ = socket.read(&mut buf).await;
        }
    }
}

fn respond(status: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut raw = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    Answer::Raw(raw.into_bytes())
}

fn redirect(to: &str) -> Answer {
    respond("302 Found", &[("Location", to)], "")
}

fn allowing(entries: &[&str]) -> HttpGet {
    HttpGet::new(entries.iter().map(|e| e.parse().unwrap()).collect())
}

async fn get(tool: &HttpGet, url: &str) -> Result<Value, ToolError> {
    tool.call(json!({ "url": url })).await
}

#[tokio::test]
async fn an_allowed_url_is_fetched() {
    let server = Server::start(|_| {
        respond(
            "200 OK",
            &[("Content-Type", "application/json")],
            r#"{"ok":true}"#,
        )
    })
    .await;
    let tool = allowing(&[&format!("127.0.0.1:{}", server.port)]);
    let out = get(&tool, &server.url("/x?y=1")).await.unwrap();
    assert_eq!(
        out,
        json!({
            "status": 200,
            "body": r#"{"ok":true}"#,
            "json": {"ok": true},
            "url": server.url("/x?y=1"),
        })
    );
}

#[tokio::test]
async fn a_host_off_the_list_is_refused_before_connecting() {
    let server = Server::start(|_| respond("200 OK", &[], "")).await;
    let tool = allowing(&["example.com", &format!("localhost:{}", server.port)]);
    let err = get(&tool, &server.url("/")).await.unwrap_err();
    assert_eq!(
        err,
        ToolError::InvalidInput(format!(
            "http://127.0.0.1:{} is not in this node's http allow-list",
            server.port
        ))
    );
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn a_port_off_the_list_is_refused_before_connecting() {
    let server = Server::start(|_| respond("200 OK", &[], "")).await;
    // The host alone opens port 80 only; the other entry names another port.
    let other = server.port.wrapping_add(1).max(1);
    let tool = allowing(&["127.0.0.1", &format!("127.0.0.1:{other}")]);
    let err = get(&tool, &server.url("/")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "invalid input: http://127.0.0.1:{} is not in this node's http allow-list",
            server.port
        )
    );
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn redirects_within_the_list_are_followed() {
    let server = Server::start(|path| match path {
        "/start" => redirect("next"),
        "/next" => redirect("/dir/../final"),
        _ => respond("200 OK", &[], "done"),
    })
    .await;
    let tool = allowing(&[&format!("127.0.0.1:{}", server.port)]);
    let out = get(&tool, &server.url("/start")).await.unwrap();
    assert_eq!(out["status"], json!(200));
    assert_eq!(out["body"], json!("done"));
    assert_eq!(out["url"], json!(server.url("/final")));
    assert_eq!(server.connections(), 3);
}

#[tokio::test]
async fn a_redirect_off_the_list_is_refused() {
    let server = Server::start(|path| match path {
        "/elsewhere" => redirect("http://example.com/"),
        // Same host, another port: etcd's client port beside the server.
        _ => redirect("//127.0.0.1:2379/v3/kv/range"),
    })
    .await;
    let tool = allowing(&[&format!("127.0.0.1:{}", server.port)]);

    let err = get(&tool, &server.url("/elsewhere")).await.unwrap_err();
    assert_eq!(
        err,
        ToolError::Failed(format!(
            "GET {}: redirect (302 Found) refused: \
             http://example.com:80 is not in this node's http allow-list",
            server.url("/elsewhere")
        ))
    );
    let err = get(&tool, &server.url("/port")).await.unwrap_err();
    assert!(
        err.to_string()
            .ends_with("refused: http://127.0.0.1:2379 is not in this node's http allow-list"),
        "{err}"
    );
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn redirects_stop_at_the_limit() {
    let server = Server::start(|_| redirect("/again")).await;
    let tool = allowing(&[&format!("127.0.0.1:{}", server.port)]);
    let err = get(&tool, &server.url("/")).await.unwrap_err();
    assert_eq!(
        err,
        ToolError::Failed(format!(
            "GET {}: more than 5 redirects",
            server.url("/again")
        ))
    );
    assert_eq!(server.connections(), 6, "the first request and 5 redirects");
}

#[tokio::test]
async fn an_oversize_body_is_refused_naming_the_limit() {
    // The body never ends: the call returns only if reading stops at the limit.
    let server = Server::start(|path| match path {
        "/declared" => Answer::Raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1048577\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        _ => Answer::Endless,
    })
    .await;
    let tool = allowing(&[&format!("127.0.0.1:{}", server.port)]);
    let expected =
        ToolError::Failed("response body is larger than the limit of 1048576 bytes".into());
    assert_eq!(
        get(&tool, &server.url("/endless")).await,
        Err(expected.clone())
    );
    assert_eq!(get(&tool, &server.url("/declared")).await, Err(expected));
}

#[tokio::test]
async fn a_body_at_the_limit_is_read() {
    let body = "x".repeat(64);
    let served = body.clone();
    let server = Server::start(move |_| respond("200 OK", &[], &served)).await;
    let tool = allowing(&[&format!("127.0.0.1:{}", server.port)]).with_limits(HttpLimits {
        max_body_bytes: 64,
        ..HttpLimits::default()
    });
    let out = get(&tool, &server.url("/")).await.unwrap();
    assert_eq!(out["body"], json!(body));
}

#[tokio::test]
async fn control_characters_and_whitespace_are_refused_before_connecting() {
    let server = Server::start(|_| respond("200 OK", &[], "")).await;
    let tool = allowing(&[&format!("127.0.0.1:{}", server.port)]);
    let smuggled = server.url("/a HTTP/1.1\r\nHost: x\r\n\r\nGET /admin");
    let err = get(&tool, &smuggled).await.unwrap_err();
    assert!(
        matches!(&err, ToolError::InvalidInput(m) if m.starts_with("url must not contain whitespace or control characters")),
        "{err}"
    );
    for url in [
        server.url("/a\r\nb"),
        server.url("/a\nb"),
        server.url("/a\tb"),
        server.url("/a\u{0}b"),
        server.url("/a\u{85}b"),
    ] {
        assert!(get(&tool, &url).await.is_err(), "{url:?}");
    }
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn a_server_that_never_answers_hits_the_timeout() {
    let server = Server::start(|_| Answer::Silent).await;
    let tool = allowing(&[&format!("127.0.0.1:{}", server.port)]).with_limits(HttpLimits {
        timeout: Duration::from_millis(200),
        ..HttpLimits::default()
    });
    let started = Instant::now();
    let err = get(&tool, &server.url("/")).await.unwrap_err();
    assert_eq!(
        err,
        ToolError::Failed(format!("GET {} timed out after 200ms", server.url("/")))
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn allow_entries_name_a_host_and_maybe_a_port() {
    let entry = |s: &str| s.parse::<AllowedHost>();
    assert_eq!(
        entry(" Example.COM ").unwrap(),
        AllowedHost {
            scheme: None,
            host: "example.com".into(),
            port: None
        }
    );
    assert_eq!(
        entry("HTTPS://Example.com/").unwrap(),
        AllowedHost {
            scheme: Some(WebScheme::Https),
            host: "example.com".into(),
            port: None
        }
    );
    assert_eq!(
        entry("http://example.com:8080").unwrap().to_string(),
        "http://example.com:8080"
    );
    assert_eq!(
        entry("example.com:8080").unwrap().to_string(),
        "example.com:8080"
    );
    assert_eq!(entry("[::1]:8080").unwrap().to_string(), "[::1]:8080");
    for (bad, why) in [
        ("", "is empty"),
        ("ftp://example.com", "has a scheme other than http or https"),
        (
            "//example.com",
            "names a path, query or fragment; entries name hosts",
        ),
        (
            "https://example.com/path",
            "names a path, query or fragment; entries name hosts",
        ),
        (
            "example.com/path",
            "names a path, query or fragment; entries name hosts",
        ),
        (
            "example.com?x",
            "names a path, query or fragment; entries name hosts",
        ),
        ("user@example.com", "must not carry user info"),
        ("https://user@example.com", "must not carry user info"),
        (
            "https://",
            "must be host, host:port, or scheme://host[:port] with scheme http or https",
        ),
        (
            "example.com:",
            "has a port that is not a number from 0 to 65535",
        ),
        (
            "example.com:99999",
            "has a port that is not a number from 0 to 65535",
        ),
        (
            "example.com:http",
            "has a port that is not a number from 0 to 65535",
        ),
        (
            "[::1",
            "must be host, host:port, or scheme://host[:port] with scheme http or https",
        ),
    ] {
        assert_eq!(
            entry(bad).unwrap_err().to_string(),
            format!("http allow-list entry '{bad}' {why}"),
        );
    }
}

#[test]
fn urls_are_checked_for_scheme_user_info_host_and_port() {
    let tool = allowing(&["example.com", "api.example.com:8443"]);
    for ok in [
        "http://example.com/",
        "https://example.com/a?b",
        "HTTPS://EXAMPLE.com:443",
        "http://example.com:80",
        "https://api.example.com:8443/",
        "http://api.example.com:8443/",
    ] {
        assert!(tool.checked(ok).is_ok(), "{ok}");
    }
    for (bad, why) in [
        ("http://example.com:443/", "example.com:443 is not in"),
        ("https://example.com:80/", "example.com:80 is not in"),
        ("http://example.com:8080/", "example.com:8080 is not in"),
        ("https://api.example.com/", "api.example.com:443 is not in"),
        ("ftp://example.com/", "has scheme 'ftp'"),
        ("file:///etc/passwd", "has scheme 'file'"),
        ("example.com/x", "must start with http:// or https://"),
        ("/x", "must start with http:// or https://"),
        (
            "/x?next=http://example.com/",
            "must start with http:// or https://",
        ),
        ("gopher://example.com/", "has scheme 'gopher'"),
        ("http://user:pw@example.com/", "must not carry user info"),
        ("http://@example.com/", "must not carry user info"),
        (
            "http://example.com:http/",
            "has a port that is not a number",
        ),
        (
            "http://example.com:99999/",
            "has a port that is not a number",
        ),
    ] {
        let err = tool.checked(bad).unwrap_err().to_string();
        assert!(err.contains(why), "{bad}: {err}");
    }
    let long = format!("http://example.com/{}", "a".repeat(MAX_URL_BYTES));
    assert!(
        tool.checked(&long)
            .unwrap_err()
            .to_string()
            .contains("over the limit of 8192")
    );
}

#[test]
fn locations_resolve_against_the_url_that_answered() {
    let base: Uri = "http://a.example/b/c/d?q".parse().unwrap();
    assert_eq!(resolve(&base, "g").unwrap(), "http://a.example/b/c/g");
    assert_eq!(resolve(&base, "../g").unwrap(), "http://a.example/b/g");
    assert_eq!(resolve(&base, "/g?x").unwrap(), "http://a.example/g?x");
    assert_eq!(resolve(&base, "//other:81/").unwrap(), "http://other:81/");
    assert_eq!(
        resolve(&base, "https://c.example/").unwrap(),
        "https://c.example/"
    );
    assert!(resolve(&base, "a b").is_err());
}

#[test]
fn an_entry_with_a_scheme_allows_that_scheme_only() {
    let tool = allowing(&["https://example.com", "http://api.example.com:8080"]);
    for ok in [
        "https://example.com/",
        "https://example.com:443/a",
        "http://api.example.com:8080/",
    ] {
        assert!(tool.checked(ok).is_ok(), "{ok}");
    }
    for (bad, why) in [
        (
            "http://example.com/",
            "url 'http://example.com/' is http; \
             the http allow-list entry 'https://example.com' allows https only",
        ),
        (
            "http://example.com:443/",
            "the http allow-list entry 'https://example.com' allows https only",
        ),
        (
            "https://example.com:8443/",
            "https://example.com:8443 is not in this node's http allow-list",
        ),
        (
            "https://api.example.com:8080/",
            "the http allow-list entry 'http://api.example.com:8080' allows http only",
        ),
        (
            "http://api.example.com/",
            "http://api.example.com:80 is not in this node's http allow-list",
        ),
    ] {
        let err = tool.checked(bad).unwrap_err().to_string();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

#[tokio::test]
async fn a_name_that_resolves_to_loopback_is_refused_before_connecting() {
    let server = Server::start(|_| respond("200 OK", &[], "local")).await;
    let url = format!("http://localhost:{}/", server.port);
    let tool = allowing(&[&format!("localhost:{}", server.port)]);
    let err = get(&tool, &url).await.unwrap_err();
    let ToolError::InvalidInput(message) = &err else {
        panic!("expected invalid input, got {err}");
    };
    assert!(
        message.starts_with(&format!("GET {url} refused: localhost resolves to ")),
        "{message}"
    );
    assert!(
        message.ends_with(
            ", a loopback address; private addresses are refused unless --http-allow-private"
        ),
        "{message}"
    );
    assert_eq!(server.connections(), 0);

    let allowed = HttpGet::with_access(HttpAccess {
        allow: vec![format!("localhost:{}", server.port).parse().unwrap()],
        allow_private: true,
    });
    let out = get(&allowed, &url).await.unwrap();
    assert_eq!(out["body"], json!("local"));
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_numeric_host_the_resolver_reads_as_loopback_is_refused() {
    // 2130706433 is 127.0.0.1 to getaddrinfo, though no IP literal to the
    // URI parser: only a check of the resolved address catches it.
    let server = Server::start(|_| respond("200 OK", &[], "")).await;
    let tool = allowing(&[&format!("2130706433:{}", server.port)]);
    let err = get(&tool, &format!("http://2130706433:{}/", server.port))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("2130706433 resolves to 127.0.0.1, a loopback address"),
        "{err}"
    );
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn a_redirect_to_a_name_that_resolves_to_loopback_is_refused() {
    let server = Server::start(|_| respond("200 OK", &[], "inner")).await;
    let port = server.port;
    let redirecting =
        Server::start(move |_| redirect(&format!("http://localhost:{port}/inner"))).await;
    let tool = allowing(&[
        &format!("127.0.0.1:{}", redirecting.port),
        &format!("localhost:{port}"),
    ]);
    let err = get(&tool, &redirecting.url("/")).await.unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "GET http://localhost:{port}/inner refused: localhost resolves to"
        )),
        "{err}"
    );
    assert_eq!(redirecting.connections(), 1);
    assert_eq!(
        server.connections(),
        0,
        "the redirect target is never reached"
    );
}

#[tokio::test]
async fn an_entry_naming_an_ip_address_allows_that_address() {
    let server = Server::start(|_| respond("200 OK", &[], "by address")).await;
    let tool = allowing(&[&format!("http://127.0.0.1:{}", server.port)]);
    let out = get(&tool, &server.url("/")).await.unwrap();
    assert_eq!(out["body"], json!("by address"));
}
