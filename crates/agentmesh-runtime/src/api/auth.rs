//! Client authentication: bearer tokens on `TaskService` and
//! `ClusterService`, checked against a tokens file the node reloads when it
//! changes (`--token-file`). Health and reflection stay open.
//!
//! The file holds one token per line, as `<role> <subject> <sha256-hex>`:
//!
//! ```text
//! # role   subject  SHA-256 of the token, hex
//! submit   alice    9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! admin    ops      60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
//! ```
//!
//! Only the hash of a token is stored, so the file (and a leak of it)
//! grants nothing; a presented token is hashed and compared with every
//! stored hash in constant time. `agentmesh token new` makes a token and
//! prints its line. Roles and what they allow are
//! [`agentmesh_core::access`]'s.
//!
//! A follower coordinator forwards Submit and Cancel to the leader (see
//! [`super::forward`]). It passes the client's own bearer token along, and
//! nothing else about the client: the leader authenticates the client
//! itself, so a follower cannot vouch for anyone (and a client posing as
//! a follower gains nothing).
//!
//! Refusals never echo a token: a missing or unknown one is
//! `UNAUTHENTICATED`, a role that does not allow the call
//! `PERMISSION_DENIED` naming the subject and the role. Both are decided
//! here only ([`Authenticator::authenticate`], [`Caller::authorize`]), and
//! each is counted in `agentmesh_requests_refused_total{service,reason}`
//! and logged at WARN.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use agentmesh_core::ClientId;
use agentmesh_core::access::{self, Action, ClientRole, Denied, Principal};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use thiserror::Error;
use tonic::Request;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tracing::{info, warn};

use crate::metrics::{self, REQUEST_PERMISSION_DENIED, REQUEST_UNAUTHENTICATED};
use crate::support::background::Background;

/// gRPC metadata key of the bearer token (the HTTP `authorization` header).
pub const AUTHORIZATION: &str = "authorization";
/// Every token `agentmesh token new` makes starts with it, so a token is
/// told from a hash at a glance (and by secret scanners), and one pasted
/// into the tokens file in place of its hash is refused.
pub const TOKEN_PREFIX: &str = "amt_";
/// Random bytes in a new token: 256 bits, beyond guessing.
pub const TOKEN_BYTES: usize = 32;
/// Longest token a node hashes; a longer one is unknown without being
/// read, so a client cannot make the node hash megabytes per call.
pub const MAX_TOKEN_BYTES: usize = 512;
/// Largest tokens file read: thousands of lines, far below what would
/// make a reload costly.
pub const MAX_TOKENS_FILE_BYTES: u64 = 1024 * 1024;
/// How often the tokens file is checked for changes: a rotated or revoked
/// token takes effect within about this time, without a restart.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why a call was refused before it did anything.
#[derive(Debug, Error)]
pub enum AuthError {
    #[error(
        "missing bearer token: this node requires `authorization: Bearer <token>` \
         (the CLI sends AGENTMESH_TOKEN or the token in --token-file)"
    )]
    Missing,
    #[error("malformed authorization header: expected `Bearer <token>`")]
    Malformed,
    /// Says nothing of the token: not its value, nor how close it was.
    #[error("unknown or revoked bearer token")]
    Unknown,
    #[error(transparent)]
    Denied(#[from] Denied),
}

/// A line of a tokens file that was refused, and why. Never holds the
/// line's text: a token pasted where its hash belongs must not reach a log.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {reason}")]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// Why a tokens file was refused as a whole.
#[derive(Debug, Error)]
pub enum TokensFileError {
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("tokens file {path} is over the limit of {limit} bytes")]
    TooLarge { path: String, limit: u64 },
    #[error("tokens file {path}, {error}")]
    Line { path: String, error: LineError },
}

/// SHA-256 of a token, as stored in the tokens file.
type Digest = [u8; 32];

fn hash(token: &str) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn from_hex(text: &str) -> Option<Digest> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of `token` in hex: what its tokens-file line holds.
pub fn token_hash(token: &str) -> String {
    to_hex(&hash(token))
}

/// The operating system gave no random bytes for a new token.
#[derive(Debug, Error)]
#[error("the system's random number generator failed; no token was made")]
pub struct NoRandom;

/// A new random token (`amt_` and 64 hex digits) and its hash.
pub fn new_token() -> Result<(String, String), NoRandom> {
    let mut bytes = [0u8; TOKEN_BYTES];
    SystemRandom::new().fill(&mut bytes).map_err(|_| NoRandom)?;
    let token = format!("{TOKEN_PREFIX}{}", to_hex(&bytes));
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// The tokens-file line granting `role` to `subject` for the token whose
/// hash is `hash`.
pub fn tokens_file_line(role: ClientRole, subject: &ClientId, hash: &str) -> String {
    format!("{role} {subject} {hash}")
}

struct Entry {
    digest: Digest,
    principal: Principal,
}

/// The tokens of one version of the tokens file.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish()
    }
}

impl Tokens {
    /// Parses a tokens file: `<role> <subject> <sha256-hex>` per line;
    /// blank lines and `#` comments are skipped. Refuses the whole file at
    /// its first bad line, naming the line.
    pub fn parse(text: &str) -> Result<Self, LineError> {
        let mut entries: Vec<(usize, Entry)> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let refuse = |reason: String| LineError { line, reason };
            let content = raw.split('#').next().unwrap_or_default();
            let fields: Vec<&str> = content.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            let [role, subject, hex] = fields[..] else {
                return Err(refuse(format!(
                    "expected `<role> <subject> <sha256-hex>`, found {} field(s)",
                    fields.len()
                )));
            };
            let role: ClientRole = role
                .parse()
                .map_err(|_| refuse("unknown role (submit, read or admin)".into()))?;
            let subject =
                ClientId::parse(subject).map_err(|e| refuse(format!("bad subject: {e}")))?;
            if hex.starts_with(TOKEN_PREFIX) {
                return Err(refuse(
                    "holds a token, not its hash: put the SHA-256 hex that `agentmesh token new` \
                     printed, and treat the token as leaked"
                        .into(),
                ));
            }
            let digest = from_hex(hex)
                .ok_or_else(|| refuse("the token hash must be 64 hex digits (SHA-256)".into()))?;
            if let Some((first, _)) = entries.iter().find(|(_, e)| e.digest == digest) {
                return Err(refuse(format!("the same token hash as line {first}")));
            }
            entries.push((
                line,
                Entry {
                    digest,
                    principal: Principal { subject, role },
                },
            ));
        }
        Ok(Self {
            entries: entries.into_iter().map(|(_, e)| e).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal `token` authenticates. The token's hash is compared
    /// with every stored hash, each in constant time, so the time taken
    /// says nothing of how much of a hash matched.
    pub fn find(&self, token: &str) -> Result<&Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Unknown);
        }
        let presented = hash(token);
        let mut found = None;
        for entry in &self.entries {
            let same: bool = entry.digest.ct_eq(&presented).into();
            if same && found.is_none() {
                found = Some(&entry.principal);
            }
        }
        found.ok_or(AuthError::Unknown)
    }
}

/// What identifies a version of the tokens file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    File {
        modified: Option<SystemTime>,
        len: u64,
    },
    Unreadable(std::io::ErrorKind),
}

/// The outcome of [`TokenStore::reload_if_changed`].
#[derive(Debug)]
pub enum Reload {
    Unchanged,
    Reloaded {
        tokens: usize,
    },
    /// The new file was refused; the tokens loaded before stay in force.
    Kept(TokensFileError),
}

struct State {
    tokens: Arc<Tokens>,
    seen: Seen,
}

/// The node's client tokens: loaded from a file at start, reloaded when
/// the file changes. Clones share them.
#[derive(Clone)]
pub struct TokenStore {
    path: Arc<PathBuf>,
    state: Arc<RwLock<State>>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.path)
            .field("tokens", &self.current().len())
            .finish()
    }
}

impl TokenStore {
    /// Loads `path`, refusing a file that cannot be read or has a bad line:
    /// a node must not start with tokens other than those meant.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, TokensFileError> {
        let path = path.into();
        let seen = seen(&path);
        let tokens = read_tokens(&path)?;
        Ok(Self {
            path: Arc::new(path),
            state: Arc::new(RwLock::new(State {
                tokens: Arc::new(tokens),
                seen,
            })),
        })
    }

    /// Tokens made in memory, for in-process tests and embedding programs
    /// that keep their tokens elsewhere; never reloaded.
    pub fn from_tokens(tokens: Tokens) -> Self {
        Self {
            path: Arc::new(PathBuf::new()),
            state: Arc::new(RwLock::new(State {
                tokens: Arc::new(tokens),
                seen: Seen::Unreadable(std::io::ErrorKind::NotFound),
            })),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokens in force.
    pub fn current(&self) -> Arc<Tokens> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .tokens
            .clone()
    }

    pub fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        self.current().find(token).cloned()
    }

    /// Reads the file again if its modification time or size changed since
    /// it was last looked at. A file that cannot be read or has a bad line
    /// leaves the tokens in force as they were; that version of the file is
    /// not looked at again, so it is reported once.
    pub fn reload_if_changed(&self) -> Reload {
        if self.path.as_os_str().is_empty() {
            return Reload::Unchanged;
        }
        let now = seen(&self.path);
        {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            if state.seen == now {
                return Reload::Unchanged;
            }
        }
        let loaded = read_tokens(&self.path);
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.seen = now;
        match loaded {
            Ok(tokens) => {
                let count = tokens.len();
                state.tokens = Arc::new(tokens);
                Reload::Reloaded { tokens: count }
            }
            Err(error) => Reload::Kept(error),
        }
    }

    /// Checks the file every [`RELOAD_INTERVAL`] until the node stops.
    pub fn watch(&self, background: &Background) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        let store = self.clone();
        background.spawn("client token reload", async move {
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let checking = store.clone();
                let outcome = tokio::task::spawn_blocking(move || checking.reload_if_changed());
                match outcome.await {
                    Ok(Reload::Unchanged) => {}
                    Ok(Reload::Reloaded { tokens }) => {
                        info!(path = %store.path.display(), tokens, "client tokens reloaded");
                        if tokens == 0 {
                            warn!(path = %store.path.display(), "the tokens file holds no token: every client call is refused");
                        }
                    }
                    Ok(Reload::Kept(error)) => warn!(
                        %error,
                        "tokens file refused; the tokens loaded before stay in force"
                    ),
                    Err(error) => warn!(%error, "checking the tokens file failed"),
                }
            }
        });
    }
}

fn seen(path: &Path) -> Seen {
    match std::fs::metadata(path) {
        Ok(meta) => Seen::File {
            modified: meta.modified().ok(),
            len: meta.len(),
        },
        Err(error) => Seen::Unreadable(error.kind()),
    }
}

fn read_tokens(path: &Path) -> Result<Tokens, TokensFileError> {
    let shown = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| TokensFileError::Read {
        path: shown(),
        source,
    })?;
    let mut text = String::new();
    // One byte over the limit tells a file at the limit from a larger one.
    file.take(MAX_TOKENS_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|source| TokensFileError::Read {
            path: shown(),
            source,
        })?;
    if text.len() as u64 > MAX_TOKENS_FILE_BYTES {
        return Err(TokensFileError::TooLarge {
            path: shown(),
            limit: MAX_TOKENS_FILE_BYTES,
        });
    }
    Tokens::parse(&text).map_err(|error| TokensFileError::Line {
        path: shown(),
        error,
    })
}

/// Who a call comes from, as the services need it: the authenticated
/// principal (none when authentication is off) and, to pass along when
/// the call is forwarded to the leader, the client's own credential.
#[derive(Clone, Default)]
pub struct Caller {
    pub principal: Option<Principal>,
    credential: Option<AsciiMetadataValue>,
    /// The gRPC service called, for the refusal counter.
    service: &'static str,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Caller {
    /// A caller of a node without authentication: may do anything.
    pub fn open() -> Self {
        Self::default()
    }

    /// Whether the caller may do `action`; always, when authentication is
    /// off.
    pub fn authorize(&self, action: Action<'_>) -> Result<(), AuthError> {
        let Some(principal) = &self.principal else {
            return Ok(());
        };
        access::authorize(principal, action).map_err(|denied| {
            metrics::refused_request(self.service, REQUEST_PERMISSION_DENIED);
            warn!(
                service = self.service,
                subject = %principal.subject,
                role = %principal.role,
                %denied,
                "refused a client call"
            );
            AuthError::Denied(denied)
        })
    }

    /// Whether deciding a Get, Watch or Cancel needs the task's owner:
    /// only a submit token's reach depends on it.
    /// The owner a task listing is restricted to (see
    /// [`access::list_owner`]): `asked`, or the caller itself for a submit
    /// token; refused like [`Caller::authorize`].
    pub fn list_owner(&self, asked: Option<ClientId>) -> Result<Option<ClientId>, AuthError> {
        access::list_owner(self.principal.as_ref(), asked).map_err(|denied| {
            metrics::refused_request(self.service, REQUEST_PERMISSION_DENIED);
            warn!(service = self.service, %denied, "refused a client call");
            AuthError::Denied(denied)
        })
    }

    pub fn needs_owner(&self) -> bool {
        self.principal
            .as_ref()
            .is_some_and(|p| p.role == ClientRole::Submit)
    }

    /// Marks a request forwarded to the leader with this caller's own
    /// credential, so the leader authenticates the client itself.
    pub fn forward_with<T>(&self, request: &mut Request<T>) {
        if let Some(credential) = &self.credential {
            request
                .metadata_mut()
                .insert(AUTHORIZATION, credential.clone());
        }
    }
}

/// Authenticates the calls of the client-facing services: with tokens
/// when the node has them (`--token-file`), nobody otherwise.
#[derive(Debug, Clone, Default)]
pub struct Authenticator {
    tokens: Option<TokenStore>,
    /// The gRPC service whose calls these are (see [`Self::for_service`]).
    service: &'static str,
}

impl Authenticator {
    /// No authentication: every call is allowed (`agentmesh local`, a node
    /// without `--token-file`).
    pub fn open() -> Self {
        Self::default()
    }

    pub fn new(tokens: Option<TokenStore>) -> Self {
        Self {
            tokens,
            service: "",
        }
    }

    /// This authenticator for the calls of `service` (a gRPC service's
    /// full name), which its refusals are counted under.
    pub fn for_service(mut self, service: &'static str) -> Self {
        self.service = service;
        self
    }

    pub fn is_on(&self) -> bool {
        self.tokens.is_some()
    }

    /// Who sent `request`: its bearer token's principal when tokens are
    /// on; [`Caller::open`] when they are off.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, AuthError> {
        let Some(tokens) = &self.tokens else {
            return Ok(Caller::open());
        };
        let credential = request.metadata().get(AUTHORIZATION).cloned();
        let principal = bearer(credential.as_ref())
            .and_then(|token| tokens.authenticate(token))
            .inspect_err(|error| {
                metrics::refused_request(self.service, REQUEST_UNAUTHENTICATED);
                warn!(service = self.service, %error, "refused a client call");
            })?;
        Ok(Caller {
            principal: Some(principal),
            credential,
            service: self.service,
        })
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(header: Option<&AsciiMetadataValue>) -> Result<&str, AuthError> {
    let value = header
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// The [`AUTHORIZATION`] value carrying `token`; refused when the token
/// holds what a header cannot (control characters, non-ASCII).
pub fn bearer_value(token: &str) -> Result<AsciiMetadataValue, AuthError> {
    MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| AuthError::Malformed)
}

/// Sets `request`'s bearer token; for clients.
pub fn set_bearer<T>(request: &mut Request<T>, token: &str) -> Result<(), AuthError> {
    request
        .metadata_mut()
        .insert(AUTHORIZATION, bearer_value(token)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::api::forward;

    fn line(role: &str, subject: &str, token: &str) -> String {
        format!("{role} {subject} {}\n", token_hash(token))
    }

    fn principal(subject: &str, role: ClientRole) -> Principal {
        Principal {
            subject: ClientId::parse(subject).unwrap(),
            role,
        }
    }

    #[test]
    fn a_tokens_file_maps_each_token_hash_to_its_principal() {
        // Upper-case hex is taken too, and a comment after a line.
        let text = format!(
            "# who may call this cluster\n\n{}{}  admin ops {}  # on call\n",
            line("submit", "alice", "amt_alice"),
            line("read", "audit", "amt_audit"),
            token_hash("amt_ops").to_uppercase()
        );
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 3);
        assert_eq!(
            tokens.find("amt_alice").unwrap(),
            &principal("alice", ClientRole::Submit)
        );
        assert_eq!(
            tokens.find("amt_audit").unwrap(),
            &principal("audit", ClientRole::Read)
        );
        assert_eq!(
            tokens.find("amt_ops").unwrap(),
            &principal("ops", ClientRole::Admin)
        );
        assert!(matches!(tokens.find("amt_alic"), Err(AuthError::Unknown)));
        assert!(matches!(tokens.find(""), Err(AuthError::Unknown)));
        let huge = "x".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(tokens.find(&huge), Err(AuthError::Unknown)));
    }

    #[test]
    fn bad_lines_are_refused_by_number_without_their_text() {
        let token = "amt_0123456789abcdef";
        let good = line("submit", "alice", "amt_a");
        let cases = [
            (format!("{good}submit alice\n"), 2, "found 2 field(s)"),
            (format!("root bob {}\n", token_hash("x")), 1, "unknown role"),
            (format!("{good}{good}"), 2, "the same token hash as line 1"),
            (
                format!("submit a/b {}\n", token_hash("x")),
                1,
                "bad subject",
            ),
            (
                format!("submit bob {token}\n"),
                1,
                "holds a token, not its hash",
            ),
            ("submit bob 12ab\n".to_owned(), 1, "64 hex digits"),
            (
                format!("submit bob {}\n", "g".repeat(64)),
                1,
                "64 hex digits",
            ),
        ];
        for (text, at, reason) in cases {
            let error = Tokens::parse(&text).unwrap_err();
            assert_eq!(error.line, at, "{text}");
            assert!(error.to_string().contains(reason), "{error} / {text}");
            assert!(!error.to_string().contains(token), "{error}");
        }
    }

    #[test]
    fn new_tokens_are_random_and_match_their_line() {
        let (token, hash) = new_token().unwrap();
        let (other, _) = new_token().unwrap();
        assert_ne!(token, other);
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 2 * TOKEN_BYTES);
        let subject = ClientId::parse("alice").unwrap();
        let tokens = Tokens::parse(&tokens_file_line(ClientRole::Submit, &subject, &hash)).unwrap();
        assert_eq!(tokens.find(&token).unwrap().subject, subject);
        // The well-known SHA-256 of "abc".
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn write(path: &Path, text: &str) {
        let mut file = std::fs::File::create(path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    /// Makes the next write visible to the mtime and size check even on
    /// file systems with coarse timestamps.
    fn touch_later(path: &Path, seconds: u64) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(seconds))
            .unwrap();
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_bad_one_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        write(&path, &line("submit", "alice", "amt_one"));
        let store = TokenStore::load(&path).unwrap();
        assert!(store.authenticate("amt_one").is_ok());
        assert!(matches!(store.reload_if_changed(), Reload::Unchanged));

        // Rotation: the new token works, the old one no longer does.
        write(&path, &line("submit", "alice", "amt_two"));
        touch_later(&path, 10);
        assert!(matches!(
            store.reload_if_changed(),
            Reload::Reloaded { tokens: 1 }
        ));
        assert!(store.authenticate("amt_two").is_ok());
        assert!(matches!(
            store.authenticate("amt_one"),
            Err(AuthError::Unknown)
        ));

        // A bad file is reported once and changes nothing.
        write(
            &path,
            &format!("{}submit bob amt_leaked\n", line("admin", "ops", "amt_x")),
        );
        touch_later(&path, 20);
        match store.reload_if_changed() {
            Reload::Kept(error) => {
                let shown = error.to_string();
                assert!(shown.contains("line 2: holds a token"), "{shown}");
                assert!(!shown.contains("amt_leaked"), "{shown}");
            }
            other => panic!("expected the file refused, got {other:?}"),
        }
        assert!(matches!(store.reload_if_changed(), Reload::Unchanged));
        assert!(store.authenticate("amt_two").is_ok());
        assert!(store.authenticate("amt_x").is_err());

        // So does a file that vanished mid-rotation.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(store.reload_if_changed(), Reload::Kept(_)));
        assert!(store.authenticate("amt_two").is_ok());

        write(&path, &line("admin", "ops", "amt_x"));
        touch_later(&path, 30);
        assert!(matches!(
            store.reload_if_changed(),
            Reload::Reloaded { tokens: 1 }
        ));
        assert!(store.authenticate("amt_x").is_ok());
    }

    #[test]
    fn a_node_does_not_start_on_a_bad_or_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        assert!(matches!(
            TokenStore::load(&path),
            Err(TokensFileError::Read { .. })
        ));
        write(&path, "admin ops\n");
        let error = TokenStore::load(&path).unwrap_err().to_string();
        assert!(
            error.ends_with("line 1: expected `<role> <subject> <sha256-hex>`, found 2 field(s)"),
            "{error}"
        );
        write(&path, &"#".repeat(MAX_TOKENS_FILE_BYTES as usize + 1));
        assert!(matches!(
            TokenStore::load(&path),
            Err(TokensFileError::TooLarge { .. })
        ));
    }

    fn authenticator(text: &str) -> Authenticator {
        Authenticator::new(Some(TokenStore::from_tokens(Tokens::parse(text).unwrap())))
    }

    #[test]
    fn requests_are_authenticated_by_their_bearer_token() {
        let auth = authenticator(&line("submit", "alice", "amt_a"));
        let mut request = Request::new(());
        assert!(matches!(
            auth.authenticate(&request),
            Err(AuthError::Missing)
        ));
        request
            .metadata_mut()
            .insert(AUTHORIZATION, MetadataValue::from_static("Basic amt_a"));
        assert!(matches!(
            auth.authenticate(&request),
            Err(AuthError::Malformed)
        ));
        set_bearer(&mut request, "amt_b").unwrap();
        let unknown = auth.authenticate(&request).unwrap_err();
        assert!(matches!(unknown, AuthError::Unknown));
        assert!(!unknown.to_string().contains("amt_b"));
        set_bearer(&mut request, "amt_a").unwrap();
        let caller = auth.authenticate(&request).unwrap();
        assert_eq!(
            caller.principal,
            Some(principal("alice", ClientRole::Submit))
        );
        assert!(caller.needs_owner());
        assert!(!format!("{caller:?}").contains("amt_a"));

        // Without tokens every request is let through, unnamed.
        let open = Authenticator::open()
            .authenticate(&Request::new(()))
            .unwrap();
        assert_eq!(open.principal, None);
        assert!(open.authorize(Action::Submit).is_ok());
    }

    #[test]
    fn a_forwarded_request_carries_the_clients_own_token_and_nothing_else() {
        let auth = authenticator(&line("submit", "alice", "amt_a"));
        // A client posing as a follower forwarding for alice, with no
        // token of alice's, is nobody.
        let alice = Caller {
            principal: Some(principal("alice", ClientRole::Submit)),
            ..Caller::default()
        };
        let mut forged = Request::new(());
        forged.metadata_mut().insert(
            forward::FORWARDED_BY,
            MetadataValue::from_static("follower"),
        );
        alice.forward_with(&mut forged);
        assert!(matches!(
            auth.authenticate(&forged),
            Err(AuthError::Missing)
        ));

        // A follower passes the client's own token along, which the leader
        // checks whatever the channel.
        let mut request = Request::new(());
        set_bearer(&mut request, "amt_a").unwrap();
        let caller = auth.authenticate(&request).unwrap();
        let mut forwarded = Request::new(());
        caller.forward_with(&mut forwarded);
        assert_eq!(
            auth.authenticate(&forwarded).unwrap().principal,
            caller.principal
        );
    }
}
