//! `[auth]`: who may connect, read and command (`mode = "token"`), and which browser
//! origins may open WebSockets (in every mode). The keys' material is loaded and checked
//! by [`crate::auth`]; here are the settings as written, with every secret redacted in
//! `Debug` and when serialised.

use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none`: anyone who reaches the port may do anything (a warning is logged when the
    /// hub listens beyond loopback). `token`: every WebSocket and `/api` request carries a
    /// JWT signed by one of `keys`.
    pub mode: AuthMode,
    /// The `iss` every token must carry; `""` checks none.
    pub issuer: String,
    /// The `aud` every token must carry; `""` checks none.
    pub audience: String,
    /// Browser `Origin`s allowed to open WebSockets, exact match (`https://dash.example`);
    /// empty: only the hub's own origin (the `Host` header's). Requests without `Origin`
    /// (devices, scripts) are not affected.
    pub allowed_origins: Vec<String>,
    /// Host names (the `Host` header without its port, any case) the hub answers to, in
    /// every mode, against DNS rebinding: a page on `evil.example` whose name is made to
    /// resolve to the hub would otherwise pass the same-origin check. `"*"`: any. IP
    /// literals always pass (rebinding needs a name). Empty: on a loopback listener only
    /// `localhost` and `*.localhost`; on any other listener every name.
    pub allowed_hosts: Vec<String>,
    /// Serve `/metrics` without a token (else it needs an `admin` token in token mode).
    pub public_metrics: bool,
    /// The keys tokens are verified with (several during a rotation).
    pub keys: Vec<KeyConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            issuer: "telehub".into(),
            audience: "telehub".into(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            public_metrics: false,
            keys: Vec::new(),
        }
    }
}

/// `auth.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Open: no token asked for.
    None,
    /// A JWT on every WebSocket and `/api` request.
    Token,
}

/// One `[[auth.keys]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// The `kid` a token's header names to pick this key.
    pub kid: String,
    /// The key's algorithm, the only one it verifies (a token's `alg` never chooses).
    pub algorithm: KeyAlgorithm,
    /// HS*: the shared secret itself (at least 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// HS*: a file holding the secret (trailing newline ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// RS256, ES256, EdDSA: the PEM public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
}

/// `auth.keys[].algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    ES256,
    EdDSA,
}

impl KeyAlgorithm {
    /// An HMAC algorithm (a shared secret rather than a public key).
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512
        )
    }
}

/// A secret from the configuration: never shown by `Debug`, never serialised.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret's bytes, for the key that needs them.
    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl AuthConfig {
    /// Checks the shape and loads every key (so a bad one stops start-up naming it).
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.contains('/')) {
                return Err((
                    format!("auth.allowed_origins[{i}]"),
                    "must be an origin such as `https://dash.example` (scheme and host, \
                     optional port, no path)"
                        .into(),
                ));
            }
        }
        if self.mode == AuthMode::Token && self.keys.is_empty() {
            return Err((
                "auth.keys".into(),
                "mode = \"token\" needs at least one [[auth.keys]]".into(),
            ));
        }
        crate::auth::keys::load(&self.keys)
            .map(|_| ())
            .map_err(|e| (e.key, e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_and_serialisation() {
        let key = KeyConfig {
            kid: "k".into(),
            algorithm: KeyAlgorithm::HS256,
            secret: Some(Secret("hunter2-hunter2-hunter2-hunter2-xx".into())),
            secret_file: None,
            public_key_file: None,
        };
        assert!(!format!("{key:?}").contains("hunter2"));
        let text = toml::to_string(&key).expect("serialise");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
