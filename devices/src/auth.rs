//! Tokens for a hub with `[auth] mode = "token"` (docs/PROTOCOL.md, "Authentication").
//!
//! A [`TokenSource`] hands out the JWT a connection carries as `Authorization: Bearer`
//! on its upgrade, and the fresh one it answers `token_expiring` with:
//!
//! - [`TokenSource::fixed`] (`--token`): one token for every connection. It cannot be
//!   renewed, so a connection is closed with 4001 at its `exp`.
//! - [`TokenSource::file`] (`--token-file`): the file is read again for every connection
//!   and every refresh, so an operator rotates the token by rewriting the file.
//! - [`TokenSource::mint`] (`--auth-secret`): a token per connection signed with the
//!   hub's HS256 secret: `sub` = the client id, `role`, `rooms` = [its room].
//! - [`TokenSource::custom`]: any function (the hub's in-process demo signs with its
//!   own key).
//!
//! No token or secret is ever printed: `Debug` shows only the kind of source.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use telehub_protocol::role::Role;

/// The hub's shortest accepted HMAC secret, in bytes (it refuses to load a shorter key,
/// so a shorter secret could never sign a token it accepts).
pub const MIN_SECRET_BYTES: usize = 32;
/// Default lifetime of a minted token.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Shortest lifetime of a minted token: the hub warns 30 s before `exp` (at once for a
/// shorter token), so short tokens are refreshed about once a second.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// `--token-file` cannot be read, or is empty.
    #[error("token file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    #[error("the auth secret must be at least {MIN_SECRET_BYTES} bytes, as the hub requires")]
    ShortSecret,
    /// A token given on the command line is empty.
    #[error("the token is empty")]
    EmptyToken,
    /// Signing failed, or a custom source refused.
    #[error("cannot make a token: {0}")]
    Sign(String),
}

/// What a connection asks a token for.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    /// The client id (`sub` of a minted token).
    pub client: &'a str,
    /// The connection's role.
    pub role: Role,
    /// The room it joins.
    pub room: &'a str,
}

/// How to mint tokens from a shared HS256 secret.
#[derive(Clone)]
pub struct MintOptions {
    /// The secret of one of the hub's `[[auth.keys]]` (HS256).
    pub secret: Vec<u8>,
    /// That key's `kid`; `None` leaves it out (the hub then tries every HS256 key).
    pub kid: Option<String>,
    /// `iss`; empty leaves it out (for a hub with `auth.issuer = ""`).
    pub issuer: String,
    /// `aud`; empty leaves it out.
    pub audience: String,
    /// Lifetime of each token.
    pub ttl: Duration,
}

impl MintOptions {
    /// The hub's defaults (`iss` = `aud` = "telehub"), kid "main", 1 h.
    pub fn new(secret: impl Into<Vec<u8>>) -> MintOptions {
        MintOptions {
            secret: secret.into(),
            kid: Some("main".into()),
            issuer: "telehub".into(),
            audience: "telehub".into(),
            ttl: DEFAULT_TTL,
        }
    }
}

type CustomFn = dyn Fn(&TokenRequest<'_>) -> Result<String, String> + Send + Sync;

enum Kind {
    Fixed(String),
    File(PathBuf),
    Mint {
        key: EncodingKey,
        kid: Option<String>,
        issuer: String,
        audience: String,
        ttl: Duration,
    },
    Custom(Box<CustomFn>),
}

struct Inner {
    kind: Kind,
    /// A "this token cannot be renewed" warning was logged (once per run, not per device).
    warned_stale: AtomicBool,
    /// A refusal was logged at `warn` (the first of the run; later ones at `debug`).
    warned_refused: AtomicBool,
}

/// Where connections get their tokens; cheap to clone, shared by every device.
#[derive(Clone)]
pub struct TokenSource(Arc<Inner>);

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSource({})", self.describe())
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    role: &'a str,
    rooms: [&'a str; 1],
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    iss: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    aud: &'a str,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl TokenSource {
    fn new(kind: Kind) -> TokenSource {
        TokenSource(Arc::new(Inner {
            kind,
            warned_stale: AtomicBool::new(false),
            warned_refused: AtomicBool::new(false),
        }))
    }

    /// One token for every connection (`--token`).
    pub fn fixed(token: impl Into<String>) -> Result<TokenSource, AuthError> {
        let token = token.into().trim().to_string();
        if token.is_empty() {
            return Err(AuthError::EmptyToken);
        }
        Ok(TokenSource::new(Kind::Fixed(token)))
    }

    /// The token in `path`, read again for every connection and refresh
    /// (`--token-file`). Read once here, so a missing file is an error at start.
    pub fn file(path: impl Into<PathBuf>) -> Result<TokenSource, AuthError> {
        let path = path.into();
        read_token_file(&path)?;
        Ok(TokenSource::new(Kind::File(path)))
    }

    /// A fresh token per connection and refresh, signed with an HS256 secret
    /// (`--auth-secret`).
    pub fn mint(opts: MintOptions) -> Result<TokenSource, AuthError> {
        if opts.secret.len() < MIN_SECRET_BYTES {
            return Err(AuthError::ShortSecret);
        }
        Ok(TokenSource::new(Kind::Mint {
            key: EncodingKey::from_secret(&opts.secret),
            kid: opts.kid.filter(|k| !k.is_empty()),
            issuer: opts.issuer,
            audience: opts.audience,
            ttl: opts.ttl.max(MIN_TTL),
        }))
    }

    /// Tokens from a function of the request.
    pub fn custom(
        f: impl Fn(&TokenRequest<'_>) -> Result<String, String> + Send + Sync + 'static,
    ) -> TokenSource {
        TokenSource::new(Kind::Custom(Box::new(f)))
    }

    /// What kind of source this is, for messages (never the token).
    pub fn describe(&self) -> &'static str {
        match self.0.kind {
            Kind::Fixed(_) => "the --token token",
            Kind::File(_) => "the --token-file token",
            Kind::Mint { .. } => "a token minted from --auth-secret",
            Kind::Custom(_) => "a token from the caller",
        }
    }

    /// A token for this connection.
    pub fn token(&self, req: &TokenRequest<'_>) -> Result<String, AuthError> {
        match &self.0.kind {
            Kind::Fixed(t) => Ok(t.clone()),
            Kind::File(path) => read_token_file(path),
            Kind::Mint {
                key,
                kid,
                issuer,
                audience,
                ttl,
            } => {
                let now = now_secs();
                let claims = Claims {
                    sub: req.client,
                    role: req.role.as_str(),
                    rooms: [req.room],
                    exp: now + ttl.as_secs().max(1),
                    iat: now,
                    iss: issuer,
                    aud: audience,
                };
                let mut header = Header::new(Algorithm::HS256);
                header.kid = kid.clone();
                jsonwebtoken::encode(&header, &claims, key)
                    .map_err(|e| AuthError::Sign(e.to_string()))
            }
            Kind::Custom(f) => f(req).map_err(AuthError::Sign),
        }
    }

    /// True the first time in the run (then false): for warnings that would otherwise
    /// repeat once per device.
    pub(crate) fn first_stale_warning(&self) -> bool {
        !self.0.warned_stale.swap(true, Ordering::Relaxed)
    }

    /// True for the run's first refusal.
    pub(crate) fn first_refusal(&self) -> bool {
        !self.0.warned_refused.swap(true, Ordering::Relaxed)
    }

    /// Whether a refresh can bring a different token (not `--token`).
    pub fn renewable(&self) -> bool {
        !matches!(self.0.kind, Kind::Fixed(_))
    }

    /// Whether each token is made anew (minted or custom), rather than read as given.
    /// Two minted within the same second are the same (`exp` and `iat` are seconds).
    pub(crate) fn mints(&self) -> bool {
        matches!(self.0.kind, Kind::Mint { .. } | Kind::Custom(_))
    }
}

fn read_token_file(path: &Path) -> Result<String, AuthError> {
    let err = |message: String| AuthError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    const SECRET: &str = "unit-test-secret-at-least-32-bytes-long";

    #[derive(serde::Deserialize)]
    struct Got {
        sub: String,
        role: String,
        rooms: Vec<String>,
        exp: u64,
        iss: String,
        aud: String,
    }

    #[test]
    fn minted_tokens_name_the_device_its_role_and_its_room() {
        let src = TokenSource::mint(MintOptions::new(SECRET)).expect("source");
        let t = src
            .token(&TokenRequest {
                client: "t1",
                role: Role::Device,
                room: "greenhouse-1",
            })
            .expect("token");
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&["telehub"]);
        v.set_audience(&["telehub"]);
        let got = jsonwebtoken::decode::<Got>(&t, &DecodingKey::from_secret(SECRET.as_bytes()), &v)
            .expect("verifies");
        assert_eq!(got.header.kid.as_deref(), Some("main"));
        let c = got.claims;
        assert_eq!(
            (c.sub.as_str(), c.role.as_str(), c.rooms),
            ("t1", "device", vec!["greenhouse-1".to_string()])
        );
        assert_eq!((c.iss.as_str(), c.aud.as_str()), ("telehub", "telehub"));
        let left = c.exp - now_secs();
        assert!((3590..=3600).contains(&left), "{left}");
    }

    #[test]
    fn short_secrets_and_empty_tokens_are_refused_and_nothing_leaks_in_debug() {
        assert!(matches!(
            TokenSource::mint(MintOptions::new("short")),
            Err(AuthError::ShortSecret)
        ));
        assert!(matches!(
            TokenSource::fixed("  "),
            Err(AuthError::EmptyToken)
        ));
        let src = TokenSource::fixed("eyJhbGciOi.secret.part").expect("source");
        assert!(!format!("{src:?}").contains("secret"));
        assert!(!src.renewable());
    }

    #[test]
    fn a_token_file_is_read_again_each_time() {
        let dir = std::env::temp_dir().join(format!("telehub-sim-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        std::fs::write(&path, "first\n").expect("write");
        let src = TokenSource::file(&path).expect("source");
        let req = TokenRequest {
            client: "t1",
            role: Role::Device,
            room: "r",
        };
        assert_eq!(src.token(&req).expect("token"), "first");
        std::fs::write(&path, "second").expect("write");
        assert_eq!(src.token(&req).expect("token"), "second");
        assert!(TokenSource::file(dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
