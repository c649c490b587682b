//! HS256 tokens for the tests, and the `[auth]` settings that verify them: one shared
//! secret under key id `main`, issuer and audience `telehub` (the hub's defaults).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use telehub::{AuthMode, KeyAlgorithm, KeyConfig, Secret, Settings};

/// The secret of key `main`.
pub(crate) const SECRET: &str = "test-secret-main-at-least-32-bytes-long";

/// An HS256 verification key.
pub(crate) fn key(kid: &str, secret: &str) -> KeyConfig {
    KeyConfig {
        kid: kid.into(),
        algorithm: KeyAlgorithm::HS256,
        secret: Some(Secret::from(secret.to_string())),
        secret_file: None,
        public_key_file: None,
    }
}

/// `[auth] mode = "token"` with key `main` ([`SECRET`]) alone.
pub(crate) fn token_mode(s: &mut Settings) {
    s.auth.mode = AuthMode::Token;
    s.auth.keys = vec![key("main", SECRET)];
}

/// Seconds since the epoch, as `exp` counts them.
pub(crate) fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// The claims of a token for `sub` as `role` in `rooms`, expiring in `exp_in` seconds.
pub(crate) fn claims(sub: &str, role: &str, rooms: &[&str], exp_in: i64) -> Value {
    json!({"sub": sub, "role": role, "rooms": rooms, "exp": now_s() + exp_in,
           "iss": "telehub", "aud": "telehub"})
}

/// `claims` signed with `secret`, under key id `kid` when given.
pub(crate) fn sign(kid: Option<&str>, secret: &str, claims: &Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    encode(&h, claims, &EncodingKey::from_secret(secret.as_bytes())).expect("sign")
}

/// A token of key `main` for `sub` as `role` in `rooms`, valid for `ttl_s` seconds.
pub(crate) fn jwt(sub: &str, role: &str, rooms: &[&str], ttl_s: i64) -> String {
    sign(Some("main"), SECRET, &claims(sub, role, rooms, ttl_s))
}

/// [`jwt`] valid for an hour.
pub(crate) fn tok(sub: &str, role: &str, rooms: &[&str]) -> String {
    jwt(sub, role, rooms, 3600)
}

/// The `Authorization` header line for token `t`.
pub(crate) fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}\r\n")
}
