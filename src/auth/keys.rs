//! The verification keys of `[[auth.keys]]`, loaded once at start, and the choice of key
//! for a token: the header's `kid` picks one; without `kid`, every key of the token's
//! algorithm is tried. Whatever the token says, a key verifies only with its own
//! algorithm (`Validation.algorithms` holds that one), so `alg` can never downgrade a key
//! (`none`, or HS256 with an RSA public key as the secret).
//!
//! HMAC itself (and its constant-time comparison of the signature) is `jsonwebtoken`'s,
//! with its pure-Rust `rust_crypto` provider; the hub compares no secret itself.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::claims::{Claims, Grant, TokenRole};
use super::Refusal;
use crate::config::{KeyAlgorithm, KeyConfig};

/// Shortest HMAC secret accepted, in bytes (RFC 7518 3.2 asks for the hash's size).
const MIN_SECRET_BYTES: usize = 32;

/// A key that cannot be used, naming its config key (`auth.keys[1].secret_file`).
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {message}")]
pub(crate) struct KeyError {
    pub(crate) key: String,
    pub(crate) message: String,
}

/// One verification key (and, for HMAC, the signing key `telehub token` uses).
pub(crate) struct Key {
    pub(crate) kid: String,
    pub(crate) alg: Algorithm,
    decoding: DecodingKey,
    pub(crate) encoding: Option<EncodingKey>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn algorithm(a: KeyAlgorithm) -> Algorithm {
    match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// Loads every key, reading secret and PEM files; the first problem is named by key.
pub(crate) fn load(configs: &[KeyConfig]) -> Result<Vec<Key>, KeyError> {
    let mut keys: Vec<Key> = Vec::with_capacity(configs.len());
    for (i, c) in configs.iter().enumerate() {
        let err = |field: &str, message: String| KeyError {
            key: format!("auth.keys[{i}].{field}"),
            message,
        };
        if c.kid.is_empty() || c.kid.len() > 128 {
            return Err(err("kid", "must be 1 to 128 characters".into()));
        }
        if keys.iter().any(|k| k.kid == c.kid) {
            return Err(err("kid", format!("`{}` is used by another key", c.kid)));
        }
        let alg = algorithm(c.algorithm);
        let (decoding, encoding) = if c.algorithm.is_hmac() {
            if c.public_key_file.is_some() {
                return Err(err(
                    "public_key_file",
                    "an HS* key takes `secret` or `secret_file`".into(),
                ));
            }
            let secret: Vec<u8> = match (&c.secret, &c.secret_file) {
                (Some(s), None) => s.expose().to_vec(),
                (None, Some(path)) => {
                    let mut bytes = std::fs::read(path).map_err(|e| {
                        err(
                            "secret_file",
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        bytes.pop();
                    }
                    bytes
                }
                (Some(_), Some(_)) => {
                    return Err(err(
                        "secret",
                        "give `secret` or `secret_file`, not both".into(),
                    ))
                }
                (None, None) => {
                    return Err(err(
                        "secret",
                        "an HS* key needs `secret` or `secret_file`".into(),
                    ))
                }
            };
            if secret.len() < MIN_SECRET_BYTES {
                let field = if c.secret.is_some() {
                    "secret"
                } else {
                    "secret_file"
                };
                return Err(err(
                    field,
                    format!("must be at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
            (
                DecodingKey::from_secret(&secret),
                Some(EncodingKey::from_secret(&secret)),
            )
        } else {
            if c.secret.is_some() || c.secret_file.is_some() {
                return Err(err(
                    "secret",
                    "RS256, ES256 and EdDSA keys take `public_key_file`".into(),
                ));
            }
            let Some(path) = &c.public_key_file else {
                return Err(err(
                    "public_key_file",
                    "RS256, ES256 and EdDSA keys need a PEM public key file".into(),
                ));
            };
            let pem = std::fs::read(path).map_err(|e| {
                err(
                    "public_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let parsed = match c.algorithm {
                KeyAlgorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                KeyAlgorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                _ => DecodingKey::from_ed_pem(&pem),
            };
            let decoding = parsed.map_err(|e| {
                err(
                    "public_key_file",
                    format!(
                        "{} is not a {:?} public key in PEM: {e}",
                        path.display(),
                        alg
                    ),
                )
            })?;
            (decoding, None)
        };
        keys.push(Key {
            kid: c.kid.clone(),
            alg,
            decoding,
            encoding,
        });
    }
    Ok(keys)
}

/// What a token must carry beyond a good signature.
pub(crate) struct Expect<'a> {
    pub(crate) issuer: &'a str,
    pub(crate) audience: &'a str,
}

fn validation(alg: Algorithm, expect: &Expect) -> Validation {
    let mut v = Validation::new(alg);
    // The hub closes a connection at `exp` to the second: no leeway either way, and
    // (RFC 7519 4.1.4) a token is valid only before `exp`, not during its second.
    v.leeway = 0;
    v.reject_tokens_expiring_in_less_than = 1;
    // A token that is not valid yet is not valid (jsonwebtoken skips `nbf` by default).
    v.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if !expect.issuer.is_empty() {
        v.set_issuer(&[expect.issuer]);
        required.push("iss");
    }
    if expect.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&[expect.audience]);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// Verifies `token` with the key its header picks, or each key of its algorithm.
pub(crate) fn verify(keys: &[Key], expect: &Expect, token: &str) -> Result<Grant, Refusal> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::MalformedToken)?;
    let mut candidates = keys
        .iter()
        .filter(|k| match &header.kid {
            Some(kid) => k.kid == *kid,
            None => k.alg == header.alg,
        })
        .peekable();
    if candidates.peek().is_none() {
        return Err(Refusal::UnknownKey);
    }
    let mut refusal = Refusal::BadSignature;
    for key in candidates {
        let v = validation(key.alg, expect);
        match jsonwebtoken::decode::<Claims>(token, &key.decoding, &v) {
            Ok(data) => {
                let c = data.claims;
                // A dashboard connects as `sub` or `sub.TAB`: a dot in its `sub` would let
                // `john` connect as `john.doe`, another user's id.
                if c.sub.is_empty() || (c.role == TokenRole::Dashboard && c.sub.contains('.')) {
                    return Err(Refusal::InvalidClaims);
                }
                return Ok(Grant {
                    sub: c.sub,
                    role: c.role,
                    rooms: c.rooms,
                    exp: c.exp,
                });
            }
            Err(e) => match e.kind() {
                // The signature was good (it is checked first): no other key will do.
                ErrorKind::ExpiredSignature => return Err(Refusal::ExpiredToken),
                ErrorKind::InvalidIssuer
                | ErrorKind::InvalidAudience
                | ErrorKind::InvalidSubject
                | ErrorKind::ImmatureSignature
                | ErrorKind::MissingRequiredClaim(_)
                | ErrorKind::InvalidClaimFormat(_)
                | ErrorKind::Json(_) => return Err(Refusal::InvalidClaims),
                ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                    refusal = Refusal::MalformedToken
                }
                _ => {}
            },
        }
    }
    Err(refusal)
}

/// Signs `claims` with the first HMAC key (`telehub token`), its `kid` in the header.
pub(crate) fn sign(keys: &[Key], claims: &Claims) -> Result<String, String> {
    let key = keys
        .iter()
        .find(|k| k.encoding.is_some())
        .ok_or("no HS256/HS384/HS512 key in [[auth.keys]]: `telehub token` signs with one")?;
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    let enc = key.encoding.as_ref().ok_or("no signing key")?;
    jsonwebtoken::encode(&header, claims, enc).map_err(|e| e.to_string())
}
