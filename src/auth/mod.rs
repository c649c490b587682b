//! Identity and access: who may connect, publish, read and command (`[auth]`).
//!
//! Beside the data flow rather than a stage of it: [`crate::net::handshake`] asks it about
//! an upgrade (the `Origin`, the `Authorization: Bearer` token, the query), the
//! WebSocket session ([`crate::sources::ws_client`]) about a first-frame `auth` and each
//! refresh, and [`crate::api`] about every `/api` request and `/metrics`.
//!
//! - [`keys`]: the configured keys and the choice of key for a token.
//! - [`claims`]: what a verified token grants, and the room globs.
//!
//! With `mode = "none"` the [`Authorizer`] grants everything, and only the `Origin` check
//! applies. A token is never logged, and every refusal is counted in
//! `telehub_auth_refused_total{reason}`.

pub(crate) mod claims;
pub(crate) mod keys;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

pub(crate) use self::claims::Grant;
use self::claims::{Claims, TokenRole};
use self::keys::{Expect, Key, KeyError};
use crate::config::{AuthConfig, AuthMode, Settings};

/// Query parameters that look like a token: refused, since URLs end up in logs.
const QUERY_TOKEN_NAMES: [&str; 3] = ["token", "access_token", "jwt"];

/// Why a request or connection was refused; the metric label is [`Refusal::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("no token: send `Authorization: Bearer <token>` (or, in a browser, an auth frame)")]
    MissingToken,
    #[error("the token is not a well-formed JWT")]
    MalformedToken,
    #[error("the token has expired")]
    ExpiredToken,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token names a key (kid or algorithm) the hub does not have")]
    UnknownKey,
    #[error("the token's claims are missing or wrong (sub, exp, role, iss, aud)")]
    InvalidClaims,
    #[error("tokens in the query string are refused (URLs end up in logs); send `Authorization: Bearer <token>`")]
    TokenInQuery,
    #[error("no auth frame within 5 s of the upgrade")]
    AuthTimeout,
    #[error("the token does not grant this room")]
    ForbiddenRoom,
    #[error("the token does not grant this role")]
    ForbiddenRole,
    #[error("the token does not grant this client id")]
    ForbiddenClient,
    #[error("a refresh must keep the sub, the role and every room")]
    ForbiddenRefresh,
    #[error("this endpoint needs an admin token")]
    NotAdmin,
    #[error("this Origin may not open WebSockets on this hub")]
    OriginNotAllowed,
    #[error("this hub does not answer to that Host name (auth.allowed_hosts)")]
    HostNotAllowed,
}

/// The answer class of a [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// HTTP 401 `unauthorized`, close 1008 `unauthorized`.
    Unauthorized,
    /// HTTP 403 `forbidden`, close 1008 `forbidden`.
    Forbidden,
    /// HTTP 403 `origin_not_allowed`.
    OriginNotAllowed,
    /// HTTP 403 `host_not_allowed`.
    HostNotAllowed,
    /// HTTP 400 `token_in_query`.
    TokenInQuery,
}

impl Answer {
    /// The HTTP status.
    pub(crate) fn status(self) -> u16 {
        match self {
            Answer::Unauthorized => 401,
            Answer::Forbidden | Answer::OriginNotAllowed | Answer::HostNotAllowed => 403,
            Answer::TokenInQuery => 400,
        }
    }

    /// The `error` code of the JSON body.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Answer::Unauthorized => "unauthorized",
            Answer::Forbidden => "forbidden",
            Answer::OriginNotAllowed => "origin_not_allowed",
            Answer::HostNotAllowed => "host_not_allowed",
            Answer::TokenInQuery => "token_in_query",
        }
    }
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 15] = [
        Refusal::MissingToken,
        Refusal::MalformedToken,
        Refusal::ExpiredToken,
        Refusal::BadSignature,
        Refusal::UnknownKey,
        Refusal::InvalidClaims,
        Refusal::TokenInQuery,
        Refusal::AuthTimeout,
        Refusal::ForbiddenRoom,
        Refusal::ForbiddenRole,
        Refusal::ForbiddenClient,
        Refusal::ForbiddenRefresh,
        Refusal::NotAdmin,
        Refusal::OriginNotAllowed,
        Refusal::HostNotAllowed,
    ];

    /// The metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::MissingToken => "missing_token",
            Refusal::MalformedToken => "malformed_token",
            Refusal::ExpiredToken => "expired_token",
            Refusal::BadSignature => "bad_signature",
            Refusal::UnknownKey => "unknown_key",
            Refusal::InvalidClaims => "invalid_claims",
            Refusal::TokenInQuery => "token_in_query",
            Refusal::AuthTimeout => "auth_timeout",
            Refusal::ForbiddenRoom => "forbidden_room",
            Refusal::ForbiddenRole => "forbidden_role",
            Refusal::ForbiddenClient => "forbidden_client",
            Refusal::ForbiddenRefresh => "forbidden_refresh",
            Refusal::NotAdmin => "not_admin",
            Refusal::OriginNotAllowed => "origin_not_allowed",
            Refusal::HostNotAllowed => "host_not_allowed",
        }
    }

    pub(crate) fn answer(self) -> Answer {
        match self {
            Refusal::MissingToken
            | Refusal::MalformedToken
            | Refusal::ExpiredToken
            | Refusal::BadSignature
            | Refusal::UnknownKey
            | Refusal::InvalidClaims
            | Refusal::AuthTimeout => Answer::Unauthorized,
            Refusal::ForbiddenRoom
            | Refusal::ForbiddenRole
            | Refusal::ForbiddenClient
            | Refusal::ForbiddenRefresh
            | Refusal::NotAdmin => Answer::Forbidden,
            Refusal::OriginNotAllowed => Answer::OriginNotAllowed,
            Refusal::HostNotAllowed => Answer::HostNotAllowed,
            Refusal::TokenInQuery => Answer::TokenInQuery,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The labels of `telehub_auth_refused_total`, in [`Refusal::ALL`] order.
pub(crate) fn refusal_labels() -> [&'static str; Refusal::ALL.len()] {
    Refusal::ALL.map(Refusal::as_str)
}

/// Decides every access question; cheap to clone.
#[derive(Clone)]
pub(crate) struct Authorizer {
    inner: Arc<Inner>,
}

struct Inner {
    mode: AuthMode,
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    allowed_origins: Vec<String>,
    hosts: HostRule,
    public_metrics: bool,
    /// By [`Refusal::index`].
    refused: Vec<Counter>,
}

/// What a request may see: everything (`mode = "none"`) or what its token grants.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    Open,
    Token(Grant),
}

impl Access {
    /// Open hub, or an admin token.
    pub(crate) fn is_admin(&self) -> bool {
        match self {
            Access::Open => true,
            Access::Token(g) => g.is_admin(),
        }
    }

    /// A device token (which may read, but not arrange the dashboard).
    pub(crate) fn is_device(&self) -> bool {
        matches!(self, Access::Token(g) if g.role == claims::TokenRole::Device)
    }

    pub(crate) fn may_read(&self, room: &str) -> bool {
        match self {
            Access::Open => true,
            Access::Token(g) => g.may_read(room),
        }
    }
}

impl Authorizer {
    /// Builds the authorizer from `[auth]` for a hub listening on `listen`, counting
    /// refusals into `refused` (one counter per [`refusal_labels`] entry, or none at all
    /// in tests).
    pub(crate) fn new(
        cfg: &AuthConfig,
        listen: SocketAddr,
        refused: Vec<Counter>,
    ) -> Result<Authorizer, KeyError> {
        let keys = keys::load(&cfg.keys)?;
        let hosts = if cfg.allowed_hosts.iter().any(|h| h == "*") {
            HostRule::Any
        } else if !cfg.allowed_hosts.is_empty() {
            HostRule::Listed(
                cfg.allowed_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            )
        } else if listen.ip().is_loopback() {
            HostRule::Localhost
        } else {
            HostRule::Any
        };
        Ok(Authorizer {
            inner: Arc::new(Inner {
                mode: cfg.mode,
                keys,
                issuer: cfg.issuer.clone(),
                audience: cfg.audience.clone(),
                allowed_origins: cfg.allowed_origins.clone(),
                hosts,
                public_metrics: cfg.public_metrics,
                refused,
            }),
        })
    }

    /// Whether tokens are asked for (`mode = "token"`).
    pub(crate) fn enabled(&self) -> bool {
        self.inner.mode == AuthMode::Token
    }

    /// Counts `r` and hands it back, for `return Err(auth.refuse(..))`.
    pub(crate) fn refuse(&self, r: Refusal) -> Refusal {
        if let Some(c) = self.inner.refused.get(r.index()) {
            c.inc();
        }
        r
    }

    /// Verifies a token (refusals counted).
    pub(crate) fn verify(&self, token: &str) -> Result<Grant, Refusal> {
        let expect = Expect {
            issuer: &self.inner.issuer,
            audience: &self.inner.audience,
        };
        keys::verify(&self.inner.keys, &expect, token).map_err(|r| self.refuse(r))
    }

    /// A token in the query string, in token mode (refusal counted).
    pub(crate) fn check_query(&self, query: Option<&str>) -> Result<(), Refusal> {
        if !self.enabled() {
            return Ok(());
        }
        let has_token = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .any(|(k, _)| QUERY_TOKEN_NAMES.contains(&k.as_ref()));
        if has_token {
            return Err(self.refuse(Refusal::TokenInQuery));
        }
        Ok(())
    }

    /// The bearer token of an `Authorization` header: `Ok(None)` without the header,
    /// `MalformedToken` for another scheme or an empty token (refusal counted).
    pub(crate) fn bearer<'h>(&self, header: Option<&'h [u8]>) -> Result<Option<&'h str>, Refusal> {
        let Some(raw) = header else {
            return Ok(None);
        };
        let value = std::str::from_utf8(raw).map_err(|_| self.refuse(Refusal::MalformedToken))?;
        let value = value.trim();
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => return Err(self.refuse(Refusal::MalformedToken)),
        };
        if token.is_empty() {
            return Err(self.refuse(Refusal::MalformedToken));
        }
        Ok(Some(token))
    }

    /// What an HTTP request with this `Authorization` header and query may see.
    pub(crate) fn access(
        &self,
        authorization: Option<&[u8]>,
        query: Option<&str>,
    ) -> Result<Access, Refusal> {
        if !self.enabled() {
            return Ok(Access::Open);
        }
        self.check_query(query)?;
        match self.bearer(authorization)? {
            Some(token) => self.verify(token).map(Access::Token),
            None => Err(self.refuse(Refusal::MissingToken)),
        }
    }

    /// `/metrics`: open with `public_metrics` or `mode = "none"`, else admin only.
    pub(crate) fn metrics_access(
        &self,
        authorization: Option<&[u8]>,
        query: Option<&str>,
    ) -> Result<(), Refusal> {
        if self.inner.public_metrics {
            return Ok(());
        }
        match self.access(authorization, query)? {
            Access::Open => Ok(()),
            Access::Token(g) if g.is_admin() => Ok(()),
            Access::Token(_) => Err(self.refuse(Refusal::NotAdmin)),
        }
    }

    /// The DNS rebinding check, in every mode, of every request and upgrade: the `Host`
    /// header must name the hub (`auth.allowed_hosts`). IP literals and requests without
    /// `Host` (HTTP/1.0 scripts; browsers always send one) pass.
    pub(crate) fn check_host(&self, host: Option<&[u8]>) -> Result<(), Refusal> {
        let Some(host) = host else {
            return Ok(());
        };
        let Ok(host) = std::str::from_utf8(host) else {
            return Err(self.refuse(Refusal::HostNotAllowed));
        };
        let name = host_name(host.trim()).trim_end_matches('.');
        if name.parse::<std::net::IpAddr>().is_ok() {
            return Ok(());
        }
        let allowed = match &self.inner.hosts {
            HostRule::Any => true,
            HostRule::Localhost => {
                let name = name.as_bytes();
                let suffix = b".localhost";
                name.eq_ignore_ascii_case(b"localhost")
                    || name.len() > suffix.len()
                        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
            HostRule::Listed(names) => names.iter().any(|n| n.eq_ignore_ascii_case(name)),
        };
        if allowed {
            Ok(())
        } else {
            Err(self.refuse(Refusal::HostNotAllowed))
        }
    }

    /// The cross-site WebSocket hijacking check, in every mode: an upgrade with an
    /// `Origin` must come from `allowed_origins` (exact match), or, when that is empty,
    /// from the hub's own origin (`http(s)://` + `Host`). No `Origin` (devices, scripts)
    /// passes.
    pub(crate) fn check_origin(
        &self,
        origin: Option<&[u8]>,
        host: Option<&[u8]>,
    ) -> Result<(), Refusal> {
        let Some(origin) = origin else {
            return Ok(());
        };
        let allowed = if self.inner.allowed_origins.is_empty() {
            host.is_some_and(|host| {
                [&b"http://"[..], &b"https://"[..]].iter().any(|scheme| {
                    origin.len() == scheme.len() + host.len()
                        && origin.starts_with(scheme)
                        && origin[scheme.len()..].eq_ignore_ascii_case(host)
                })
            })
        } else {
            self.inner
                .allowed_origins
                .iter()
                .any(|o| o.as_bytes() == origin)
        };
        if allowed {
            Ok(())
        } else {
            Err(self.refuse(Refusal::OriginNotAllowed))
        }
    }
}

/// `auth.allowed_hosts` as the hub applies it.
enum HostRule {
    Any,
    /// `localhost` and `*.localhost` (the default on a loopback listener).
    Localhost,
    /// Lower-cased names.
    Listed(Vec<String>),
}

/// The name of a `Host` header: without its port, brackets kept off an IPv6 literal.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// How far a token's expiry is from now, or `None` if it has passed.
pub(crate) fn time_left(exp: u64) -> Option<Duration> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(exp).checked_sub(now)
}

/// Why `telehub token` could not make a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The configuration's keys cannot be used (the message names the key).
    #[error("{0}")]
    Key(String),
    /// `--role` is not device, dashboard or admin.
    #[error("role must be device, dashboard or admin, not `{0}`")]
    Role(String),
    /// No HMAC key to sign with, or signing failed.
    #[error("{0}")]
    Sign(String),
}

/// `telehub token`: a token for `sub` with `role` and `rooms`, valid for `ttl`, signed
/// with the first HS* key of `settings.auth.keys`, carrying the configured `iss`/`aud`.
pub fn mint_token(
    settings: &Settings,
    sub: &str,
    role: &str,
    rooms: Vec<String>,
    ttl: Duration,
) -> Result<String, TokenError> {
    let role = TokenRole::parse(role).ok_or_else(|| TokenError::Role(role.to_string()))?;
    let keys = keys::load(&settings.auth.keys).map_err(|e| TokenError::Key(e.to_string()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let claims = Claims {
        sub: sub.to_string(),
        exp: now.saturating_add(ttl.as_secs()),
        role,
        rooms,
        iat: Some(now),
        iss: non_empty(&settings.auth.issuer),
        aud: non_empty(&settings.auth.audience),
    };
    keys::sign(&keys, &claims).map_err(TokenError::Sign)
}

#[cfg(test)]
mod tests;
