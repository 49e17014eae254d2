//! How a node proves to etcd who it is, and checks that it talks to the
//! real etcd: TLS with a CA that etcd's certificate must chain to
//! (optionally with a client certificate, which etcd started with
//! `--client-cert-auth` takes as the user named by its CN), and an etcd
//! user with a password.
//!
//! The password is held by [`Password`], which neither prints nor formats
//! itself; errors built while connecting have it scrubbed out
//! ([`Password::redact`]) in case a server or a library ever echoed it.

use std::fmt;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use thiserror::Error;

/// A secret that never reaches a log, an error or a `Debug` print.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The password in a file's text: one trailing line break (as `echo`
    /// and editors leave one) is not part of it; anything else is.
    pub fn from_file_text(text: &str) -> Self {
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(text);
        Self(text.to_owned())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secret itself, for the one call that sends it to etcd.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the password replaced.
    pub fn redact(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_owned()
        } else {
            text.replace(&self.0, "<redacted>")
        }
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// An etcd user and its password.
#[derive(Debug, Clone)]
pub struct EtcdCredentials {
    pub user: String,
    pub password: Password,
}

impl EtcdCredentials {
    pub fn new(user: impl Into<String>, password: Password) -> Self {
        Self {
            user: user.into(),
            password,
        }
    }
}

/// TLS towards etcd: the CA (PEM) that etcd's certificate must chain to,
/// and optionally a client certificate and its key (PEM).
#[derive(Clone)]
pub struct EtcdTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdTls {
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca_pem: ca_pem.into(),
            identity: None,
        }
    }

    /// Presents `cert_pem` (with its private key `key_pem`) to etcd.
    pub fn with_client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    pub fn has_client_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// tonic's client TLS: only the configured CA is trusted (no system
    /// roots), so a certificate from any other authority is refused.
    fn tls_options(&self) -> TlsOptions {
        let tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
            None => tls,
        }
    }
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("client_identity", &self.identity.is_some())
            .finish()
    }
}

/// A combination of endpoints, TLS and credentials that cannot work.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AccessError {
    #[error(
        "etcd endpoint '{0}' is https:// but no CA was given to verify etcd's certificate \
         (--etcd-ca)"
    )]
    HttpsWithoutCa(String),
    #[error(
        "etcd endpoint '{0}' is plain http:// but TLS was configured (--etcd-ca): write \
         https://"
    )]
    TlsOverHttp(String),
    #[error("an etcd user needs a user name (--etcd-user)")]
    EmptyUser,
    #[error("etcd user '{0}' has an empty password (--etcd-password-file)")]
    EmptyPassword(String),
}

/// Checks that every endpoint's scheme agrees with `tls`: `https://`
/// needs a CA, `http://` refuses one (a node must not silently drop the TLS
/// it was configured with). An endpoint without a scheme takes TLS when it
/// is configured, as the etcd client does.
pub(super) fn check(
    endpoints: &[String],
    tls: Option<&EtcdTls>,
    credentials: Option<&EtcdCredentials>,
) -> Result<(), AccessError> {
    for endpoint in endpoints {
        let lower = endpoint.to_ascii_lowercase();
        if lower.starts_with("https://") && tls.is_none() {
            return Err(AccessError::HttpsWithoutCa(endpoint.clone()));
        }
        if lower.starts_with("http://") && tls.is_some() {
            return Err(AccessError::TlsOverHttp(endpoint.clone()));
        }
    }
    if let Some(credentials) = credentials {
        if credentials.user.is_empty() {
            return Err(AccessError::EmptyUser);
        }
        if credentials.password.is_empty() {
            return Err(AccessError::EmptyPassword(credentials.user.clone()));
        }
    }
    Ok(())
}

/// Adds TLS and the user to the client's options. With a user, the
/// client authenticates at connect and again whenever etcd answers that
/// the token expired (etcd's simple tokens expire after
/// `--auth-token-ttl`, 300 s by default, of disuse; JWTs after their
/// TTL), so a long-running node keeps its access.
pub(super) fn apply(
    options: ConnectOptions,
    tls: Option<&EtcdTls>,
    credentials: Option<&EtcdCredentials>,
) -> ConnectOptions {
    let options = match tls {
        Some(tls) => options.with_tls(tls.tls_options()),
        None => options,
    };
    match credentials {
        Some(c) => options
            .with_user(c.user.clone(), c.password.expose())
            .with_auto_token_refresh(true),
        None => options,
    }
}

/// Whether etcd refused the credentials themselves (a wrong user or
/// password, or auth off on etcd) rather than being out of reach: etcd
/// answers `InvalidArgument` ("authentication failed, invalid user ID or
/// password"), `FailedPrecondition` ("authentication is not enabled") or
/// `Unauthenticated`/`PermissionDenied`.
pub(super) fn is_refusal(error: &etcd_client::Error) -> bool {
    matches!(
        error,
        etcd_client::Error::GRpcStatus(status) if matches!(
            status.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::FailedPrecondition
                | tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
        )
    )
}

/// Whether etcd refused a request because the token was issued before
/// its users, roles or permissions last changed ("revision of auth store
/// is old", `InvalidArgument`): authenticating again fixes it.
pub(super) fn is_stale_token(error: &etcd_client::Error) -> bool {
    matches!(
        error,
        etcd_client::Error::GRpcStatus(status)
            if status.message().contains("revision of auth store is old")
    )
}

/// Whether the connection failed in its TLS handshake (etcd's certificate
/// does not chain to the CA given, names another host, or etcd wants a
/// client certificate): tokio-rustls reports these as `InvalidData`, with
/// rustls's message, and trying again fails the same way.
pub(super) fn is_tls_failure(error: &etcd_client::Error) -> bool {
    // rustls's own words, for where the chain keeps only the text.
    const TLS: [&str; 4] = [
        "invalid peer certificate",
        "received fatal alert",
        "peer is incompatible",
        "peer misbehaved",
    ];
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return true;
        }
        let text = cause.to_string();
        if TLS.iter().any(|marker| text.contains(marker)) {
            return true;
        }
        source = cause.source();
    }
    false
}

/// An error with its sources, on one line: tonic's transport errors say
/// only "transport error" at the top, and the reason (an unknown issuer,
/// a refused connection) below. An etcd gRPC status shows its message and
/// causes, not the status's debug dump.
pub(super) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let (mut text, mut source) = match error.downcast_ref::<etcd_client::Error>() {
        Some(etcd_client::Error::GRpcStatus(status)) => {
            let message = match status.message() {
                "" => format!("{:?}", status.code()),
                message => message.to_owned(),
            };
            (message, std::error::Error::source(status))
        }
        _ => (error.to_string(), error.source()),
    };
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if cause_text != "transport error" && !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| (*u).to_owned()).collect()
    }

    #[test]
    fn passwords_never_print() {
        let password = Password::new("hunter2");
        let credentials = EtcdCredentials::new("worker-1", password.clone());
        let printed = format!("{credentials:?} {password:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert_eq!(
            password.redact("user worker-1 password hunter2 refused"),
            "user worker-1 password <redacted> refused"
        );
    }

    #[test]
    fn a_password_file_loses_one_trailing_line_break_only() {
        assert_eq!(Password::from_file_text("s3cret\n").expose(), "s3cret");
        assert_eq!(Password::from_file_text("s3cret\r\n").expose(), "s3cret");
        assert_eq!(Password::from_file_text("s3cret").expose(), "s3cret");
        assert_eq!(Password::from_file_text(" s3 \n\n").expose(), " s3 \n");
        assert!(Password::from_file_text("\n").is_empty());
    }

    #[test]
    fn schemes_must_agree_with_tls() {
        let tls = EtcdTls::new(b"ca".to_vec());
        assert_eq!(
            check(&urls(&["https://a:2379"]), None, None),
            Err(AccessError::HttpsWithoutCa("https://a:2379".into()))
        );
        assert_eq!(
            check(
                &urls(&["https://a:2379", "http://b:2379"]),
                Some(&tls),
                None
            ),
            Err(AccessError::TlsOverHttp("http://b:2379".into()))
        );
        assert!(check(&urls(&["https://a:2379", "b:2379"]), Some(&tls), None).is_ok());
        assert!(check(&urls(&["http://a:2379", "b:2379"]), None, None).is_ok());
    }

    #[test]
    fn credentials_need_a_user_and_a_password() {
        let empty = EtcdCredentials::new("w", Password::new(""));
        assert_eq!(
            check(&urls(&["http://a:1"]), None, Some(&empty)),
            Err(AccessError::EmptyPassword("w".into()))
        );
        let nameless = EtcdCredentials::new("", Password::new("p"));
        assert_eq!(
            check(&urls(&["http://a:1"]), None, Some(&nameless)),
            Err(AccessError::EmptyUser)
        );
    }
}
