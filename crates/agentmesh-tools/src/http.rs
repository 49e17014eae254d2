//! `http.get`: fetches an `http://` or `https://` URL whose scheme, host
//! and port are on the node's allow-list.
//!
//! Off unless the node names hosts with `--http-allow`, because a tool that
//! reaches the network on behalf of any submitter is a server-side request
//! forgery hole. Hence:
//!
//! - An allow-list entry names a host and one port, and maybe a scheme
//!   ([`AllowedHost`]): `https://example.com` allows https on 443 only,
//!   `example.com` http on 80 and https on 443, `example.com:8080` port
//!   8080 only. A host alone never opens the other ports of that machine
//!   (an etcd or admin port beside the web server).
//! - A URL is parsed by `http`'s URI parser and refused before any
//!   connection when it is longer than [`MAX_URL_BYTES`], holds whitespace
//!   or control characters (CR/LF in a path would otherwise smuggle a
//!   second request), carries user info, or has a scheme other than
//!   `http`/`https`. Requests are built by hyper, never as raw text.
//! - A name is resolved by [`GuardedResolver`], which refuses it when any
//!   address it resolves to is loopback, private, link-local or otherwise
//!   not public ([`non_global`]), unless the node allows private addresses
//!   (`--http-allow-private`). The check sits in the connector, so the
//!   address checked is the address connected to: a name cannot be
//!   rebound between the two.
//! - Redirects are followed, up to [`HttpLimits::max_redirects`], and every
//!   target passes the same checks as the URL submitted, its name the same
//!   resolver; a redirect to a scheme, host or port off the list fails the
//!   call.
//! - The body is read up to [`HttpLimits::max_body_bytes`] and no further;
//!   the whole call, redirects included, ends after [`HttpLimits::timeout`].
//!
//! The client is hyper's, over rustls with the `ring` provider and
//! Mozilla's root certificates compiled in (`webpki-roots`), so a node
//! needs no system CA bundle.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use agentmesh_llm::error_chain;
use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use iri_string::types::{UriAbsoluteStr, UriReferenceStr};
use serde_json::{Value, json};
use thiserror::Error;

use crate::{Tool, ToolError, async_trait, str_field};

mod address;

pub use address::{AddressClass, AddressRefused, GuardedResolver, ResolveError, non_global};

/// Longest URL accepted, submitted or redirected to.
pub const MAX_URL_BYTES: usize = 8 * 1024;

/// Idle connections close after this long, so a node does not hold sockets
/// to hosts it fetched from once.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// The bounds of one `http.get` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// The whole call: connecting, every redirect and reading the body.
    pub timeout: Duration,
    /// Largest response body read; reading stops there.
    pub max_body_bytes: usize,
    /// Redirects followed before the call fails.
    pub max_redirects: usize,
}

impl Default for HttpLimits {
    /// 10 s, 1 MiB, 5 redirects.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_body_bytes: 1024 * 1024,
            max_redirects: 5,
        }
    }
}

impl HttpLimits {
    /// These limits with the body read no further than `max_output_bytes`:
    /// a larger body could never make an output within the worker's cap.
    pub fn within(self, max_output_bytes: usize) -> Self {
        Self {
            max_body_bytes: self.max_body_bytes.min(max_output_bytes),
            ..self
        }
    }
}

/// Why an `--http-allow` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("http allow-list entry '{entry}' {reason}")]
pub struct AllowedHostError {
    entry: String,
    reason: &'static str,
}

/// The two schemes `http.get` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WebScheme {
    Http,
    Https,
}

impl WebScheme {
    fn parse(text: &str) -> Option<Self> {
        if text.eq_ignore_ascii_case("http") {
            Some(WebScheme::Http)
        } else if text.eq_ignore_ascii_case("https") {
            Some(WebScheme::Https)
        } else {
            None
        }
    }

    fn default_port(self) -> u16 {
        match self {
            WebScheme::Http => 80,
            WebScheme::Https => 443,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            WebScheme::Http => "http",
            WebScheme::Https => "https",
        }
    }
}

/// One allow-list entry: a host, the one port it opens, and maybe the one
/// scheme.
///
/// - `https://example.com` opens https on 443 only, `http://example.com:8080`
///   http on 8080 only: the entry names the scheme, the host and the port,
///   and a URL differing in any of them is refused.
/// - `example.com` (no scheme, no port) opens the two web ports, http on
///   80 and https on 443, and no other: what a browser would reach.
/// - `example.com:8080` (no scheme) opens port 8080 over http or https.
///
/// The bare forms are safe for what the list guards against, reaching
/// another service of that machine: the port is what chooses the service,
/// and only the named one (or the two web ports) is opened; the scheme only
/// decides whether TLS is spoken to it. Write the scheme to forbid plain
/// http, so a task cannot fetch over a connection anyone on the path could
/// read or change. IPv6 hosts are written in brackets (`[::1]:8080`); hosts
/// compare case-insensitively, as DNS names do.
///
/// A host that is an IP address is an explicit allowance of that address:
/// it is fetched whatever its class (a private service named by its
/// address). A host that is a name is fetched only while every address it
/// resolves to is public, unless the node allows private addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<WebScheme>,
    host: String,
    port: Option<u16>,
}

/// What one entry says of a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Allows,
    /// The entry names this host with another scheme.
    OtherScheme,
    /// The entry is about another host or port.
    Silent,
}

impl AllowedHost {
    /// What this entry says of a `scheme` URL on `host`:`port`.
    fn judge(&self, scheme: WebScheme, host: &str, port: u16) -> Verdict {
        if !self.host.eq_ignore_ascii_case(host) {
            return Verdict::Silent;
        }
        match self.scheme {
            Some(own) if own != scheme => Verdict::OtherScheme,
            Some(own) if self.port.unwrap_or(own.default_port()) == port => Verdict::Allows,
            None if self.port.unwrap_or(scheme.default_port()) == port => Verdict::Allows,
            _ => Verdict::Silent,
        }
    }
}

impl FromStr for AllowedHost {
    type Err = AllowedHostError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let refuse = |reason| AllowedHostError {
            entry: entry.to_owned(),
            reason,
        };
        const FORM: &str =
            "must be host, host:port, or scheme://host[:port] with scheme http or https";
        let trimmed = entry.trim();
        if trimmed.is_empty() {
            return Err(refuse("is empty"));
        }
        let (scheme, rest) = match trimmed.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = WebScheme::parse(scheme)
                    .ok_or(refuse("has a scheme other than http or https"))?;
                // One trailing slash is what people paste; a path is not.
                (Some(scheme), rest.strip_suffix('/').unwrap_or(rest))
            }
            None => (None, trimmed),
        };
        if rest.contains(['/', '?', '#']) {
            return Err(refuse(
                "names a path, query or fragment; entries name hosts",
            ));
        }
        if rest.contains('@') {
            return Err(refuse("must not carry user info"));
        }
        let authority = Authority::from_str(rest).map_err(|_| refuse(FORM))?;
        if authority.host().is_empty() {
            return Err(refuse("has no host"));
        }
        Ok(Self {
            scheme,
            host: authority.host().to_ascii_lowercase(),
            port: named_port(&authority).map_err(refuse)?,
        })
    }
}

/// The port `authority` names, `None` when it names none. `http`'s own
/// `Authority::port` reads a malformed port (`host:http`, `host:99999`) as
/// none, which would quietly mean the default port; this refuses them.
fn named_port(authority: &Authority) -> Result<Option<u16>, &'static str> {
    let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    match &host_port[authority.host().len()..] {
        "" => Ok(None),
        rest => rest
            .strip_prefix(':')
            .and_then(|digits| digits.parse::<u16>().ok())
            .map(Some)
            .ok_or("has a port that is not a number from 0 to 65535"),
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(scheme) = self.scheme {
            write!(f, "{}://", scheme.as_str())?;
        }
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.host),
            None => f.write_str(&self.host),
        }
    }
}

/// What `http.get` may reach: the allow-list, and whether names that
/// resolve to private addresses may be fetched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpAccess {
    /// The tool is off when empty.
    pub allow: Vec<AllowedHost>,
    /// Off by default: a name on the list that resolves to a loopback,
    /// private, link-local or otherwise non-public address is refused.
    pub allow_private: bool,
}

impl HttpAccess {
    /// The entries of `allow`, private addresses refused.
    pub fn new(allow: Vec<AllowedHost>) -> Self {
        Self {
            allow,
            allow_private: false,
        }
    }
}

type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;

/// The `http.get` tool: `{"url": "https://host/path"}` →
/// `{"status", "body", "json", "url"}`, where `url` is the one that
/// answered after redirects and `json` is the body parsed, or null.
#[derive(Clone)]
pub struct HttpGet {
    access: HttpAccess,
    limits: HttpLimits,
    client: Client<Connector, Empty<Bytes>>,
}

impl fmt::Debug for HttpGet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpGet")
            .field("access", &self.access)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl HttpGet {
    /// A client for the hosts of `allow`, private addresses refused, with
    /// [`HttpLimits::default`].
    pub fn new(allow: Vec<AllowedHost>) -> Self {
        Self::with_access(HttpAccess::new(allow))
    }

    /// A client for what `access` allows, with [`HttpLimits::default`].
    ///
    /// Names are resolved by [`GuardedResolver`], so the addresses checked
    /// are the ones connected to; plain TCP first, then TLS for `https`.
    pub fn with_access(access: HttpAccess) -> Self {
        let mut tcp = HttpConnector::new_with_resolver(GuardedResolver::new(access.allow_private));
        // The TLS layer above takes https URLs; this one must let them by.
        tcp.enforce_http(false);
        let provider = rustls::crypto::ring::default_provider();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(provider)
            .expect("ring supports rustls's default protocol versions")
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Self {
            access,
            limits: HttpLimits::default(),
            client,
        }
    }

    pub fn with_limits(mut self, limits: HttpLimits) -> Self {
        self.limits = limits;
        self
    }

    /// `url` parsed, if this node may fetch it.
    fn checked(&self, url: &str) -> Result<Uri, ToolError> {
        let refuse = |why: String| Err(ToolError::InvalidInput(why));
        if url.len() > MAX_URL_BYTES {
            return refuse(format!(
                "url is {} bytes, over the limit of {MAX_URL_BYTES}",
                url.len()
            ));
        }
        if let Some((at, c)) = url
            .char_indices()
            .find(|(_, c)| c.is_control() || c.is_whitespace())
        {
            return refuse(format!(
                "url must not contain whitespace or control characters: {c:?} at byte {at}"
            ));
        }
        let written = url.split_once("://").map(|(scheme, _)| scheme).filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        });
        match written {
            None => return refuse(format!("url '{url}' must start with http:// or https://")),
            Some(s) if !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https") => {
                return refuse(format!(
                    "url '{url}' has scheme '{s}'; only http and https are fetched"
                ));
            }
            Some(_) => {}
        }
        let uri = match Uri::from_str(url) {
            Ok(uri) => uri,
            Err(e) => return refuse(format!("url '{url}' is not a valid URI: {e}")),
        };
        let Some(scheme) = uri.scheme_str().and_then(WebScheme::parse) else {
            return refuse(format!("url '{url}' must start with http:// or https://"));
        };
        let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
            return refuse(format!("url '{url}' has no host"));
        };
        if authority.as_str().contains('@') {
            return refuse(format!("url '{url}' must not carry user info"));
        }
        let port = match named_port(authority) {
            Ok(port) => port.unwrap_or(scheme.default_port()),
            Err(why) => return refuse(format!("url '{url}' {why}")),
        };
        let host = authority.host();
        let verdicts = self
            .access
            .allow
            .iter()
            .map(|a| (a, a.judge(scheme, host, port)));
        let mut other_scheme = None;
        for (entry, verdict) in verdicts {
            match verdict {
                Verdict::Allows => return Ok(uri),
                Verdict::OtherScheme => other_scheme = other_scheme.or(Some(entry)),
                Verdict::Silent => {}
            }
        }
        match other_scheme {
            Some(entry) => refuse(format!(
                "url '{url}' is {}; the http allow-list entry '{entry}' allows {} only",
                scheme.as_str(),
                entry.scheme.map_or("", WebScheme::as_str),
            )),
            None => refuse(format!(
                "{}://{host}:{port} is not in this node's http allow-list",
                scheme.as_str()
            )),
        }
    }

    /// GETs `uri`, following allowed redirects, and reads the body.
    async fn fetch(&self, mut uri: Uri) -> Result<(Uri, StatusCode, Bytes), ToolError> {
        let mut redirects = 0;
        loop {
            let response = self.get(&uri).await?;
            let Some(location) = redirect_target(&response) else {
                let status = response.status();
                return Ok((uri, status, self.read_body(response).await?));
            };
            if redirects == self.limits.max_redirects {
                return Err(ToolError::Failed(format!(
                    "GET {uri}: more than {} redirects",
                    self.limits.max_redirects
                )));
            }
            redirects += 1;
            let next = location
                .and_then(|location| resolve(&uri, location))
                .and_then(|target| {
                    self.checked(&target).map_err(|e| match e {
                        ToolError::InvalidInput(why) | ToolError::Failed(why) => why,
                        other => other.to_string(),
                    })
                })
                .map_err(|why| {
                    ToolError::Failed(format!(
                        "GET {uri}: redirect ({}) refused: {why}",
                        response.status()
                    ))
                })?;
            uri = next;
        }
    }

    async fn get(&self, uri: &Uri) -> Result<Response<hyper::body::Incoming>, ToolError> {
        let request = Request::get(uri.clone())
            .header(
                header::USER_AGENT,
                concat!("agentmesh/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| ToolError::InvalidInput(format!("GET {uri}: {e}")))?;
        self.client.request(request).await.map_err(|e| {
            match refusal(&e) {
                // The URL's own fault, found once its name was resolved.
                Some(refused) => ToolError::InvalidInput(format!("GET {uri} refused: {refused}")),
                None => ToolError::Failed(format!("GET {uri}: {}", error_chain(&e))),
            }
        })
    }

    /// The body, read until `max_body_bytes` and not a byte further.
    async fn read_body(
        &self,
        response: Response<hyper::body::Incoming>,
    ) -> Result<Bytes, ToolError> {
        let limit = self.limits.max_body_bytes;
        let too_large = || {
            ToolError::Failed(format!(
                "response body is larger than the limit of {limit} bytes"
            ))
        };
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        match Limited::new(response.into_body(), limit).collect().await {
            Ok(body) => Ok(body.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
            Err(e) => Err(ToolError::Failed(format!(
                "reading the response body: {}",
                error_chain(e.as_ref())
            ))),
        }
    }
}

/// The `Location` of a redirect: `None` when the response is no redirect
/// (a 3xx without `Location` included), `Some(Err)` when it cannot be read.
fn redirect_target<B>(response: &Response<B>) -> Option<Result<&str, String>> {
    let redirect = matches!(
        response.status(),
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    );
    let location = response.headers().get(header::LOCATION)?;
    redirect.then(|| {
        location
            .to_str()
            .map_err(|_| "its Location is not visible ASCII".to_owned())
    })
}

/// `location` resolved against the URL that answered (RFC 3986, section 5).
fn resolve(base: &Uri, location: &str) -> Result<String, String> {
    if location.len() > MAX_URL_BYTES {
        return Err(format!(
            "its Location is {} bytes, over the limit of {MAX_URL_BYTES}",
            location.len()
        ));
    }
    let base = base.to_string();
    let base = UriAbsoluteStr::new(&base).map_err(|e| format!("bad base url '{base}': {e}"))?;
    let reference = UriReferenceStr::new(location)
        .map_err(|e| format!("Location '{location}' is not a URI reference: {e}"))?;
    let resolved = reference.resolve_against(base);
    resolved
        .ensure_rfc3986_normalizable()
        .map_err(|e| format!("Location '{location}' cannot be resolved: {e}"))?;
    Ok(resolved.to_string())
}

/// The resolver's refusal of a private address, wherever hyper wrapped it.
fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a AddressRefused> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(refused) = e.downcast_ref::<AddressRefused>() {
            return Some(refused);
        }
        if let Some(ResolveError::Refused(refused)) = e.downcast_ref::<ResolveError>() {
            return Some(refused);
        }
        cause = e.source();
    }
    None
}

#[async_trait]
impl Tool for HttpGet {
    fn name(&self) -> &str {
        "http.get"
    }

    async fn call(&self, input: Value) -> Result<Value, ToolError> {
        let url = str_field(&input, "url")?;
        let uri = self.checked(url)?;
        let timeout = self.limits.timeout;
        let (answered, status, body) = tokio::time::timeout(timeout, self.fetch(uri))
            .await
            .map_err(|_| ToolError::Failed(format!("GET {url} timed out after {timeout:?}")))??;
        let json_body = serde_json::from_slice::<Value>(&body).ok();
        Ok(json!({
            "status": status.as_u16(),
            "body": String::from_utf8_lossy(&body),
            "json": json_body,
            "url": answered.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests;
