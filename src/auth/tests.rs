//! Key selection and token checks, without a hub.

use super::*;
use crate::config::{KeyAlgorithm, KeyConfig, Secret};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const LOOPBACK: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);
const SECRET_A: &str = "a-secret-of-at-least-thirty-two-bytes!!";
const SECRET_B: &str = "another-secret-of-at-least-32-bytes....";

fn hs(kid: &str, alg: KeyAlgorithm, secret: &str) -> KeyConfig {
    KeyConfig {
        kid: kid.into(),
        algorithm: alg,
        secret: Some(Secret::from(secret.to_string())),
        secret_file: None,
        public_key_file: None,
    }
}

fn authorizer(keys: Vec<KeyConfig>) -> Authorizer {
    let cfg = AuthConfig {
        mode: AuthMode::Token,
        keys,
        ..AuthConfig::default()
    };
    let counters = (0..Refusal::ALL.len())
        .map(|_| Counter::default())
        .collect();
    Authorizer::new(&cfg, LOOPBACK, counters).expect("keys load")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(alg: Algorithm, kid: Option<&str>, secret: &str, claims: serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    encode(&h, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

fn claims(exp: u64) -> serde_json::Value {
    serde_json::json!({"sub":"t1","exp":exp,"role":"device","rooms":["g-*"],"iss":"telehub","aud":"telehub"})
}

#[test]
fn kid_picks_the_key_and_rotation_accepts_both() {
    let a = authorizer(vec![
        hs("old", KeyAlgorithm::HS256, SECRET_A),
        hs("new", KeyAlgorithm::HS256, SECRET_B),
    ]);
    let exp = now() + 60;
    let old = token(Algorithm::HS256, Some("old"), SECRET_A, claims(exp));
    let new = token(Algorithm::HS256, Some("new"), SECRET_B, claims(exp));
    assert_eq!(a.verify(&old).map(|g| g.sub), Ok("t1".into()));
    assert_eq!(a.verify(&new).map(|g| g.sub), Ok("t1".into()));
    // The kid names one key: the other key's secret does not verify under it.
    let crossed = token(Algorithm::HS256, Some("old"), SECRET_B, claims(exp));
    assert_eq!(a.verify(&crossed), Err(Refusal::BadSignature));
    let unknown = token(Algorithm::HS256, Some("gone"), SECRET_A, claims(exp));
    assert_eq!(a.verify(&unknown), Err(Refusal::UnknownKey));
    // Without kid, every key of the algorithm is tried.
    let bare = token(Algorithm::HS256, None, SECRET_B, claims(exp));
    assert_eq!(a.verify(&bare).map(|g| g.exp), Ok(exp));
}

#[test]
fn a_token_alg_never_chooses_the_algorithm() {
    let a = authorizer(vec![hs("k", KeyAlgorithm::HS512, SECRET_A)]);
    let exp = now() + 60;
    // Same kid, same secret, but HS256 instead of the key's HS512.
    let t = token(Algorithm::HS256, Some("k"), SECRET_A, claims(exp));
    assert_eq!(a.verify(&t), Err(Refusal::BadSignature));
    // Without kid no key has HS256.
    let t = token(Algorithm::HS256, None, SECRET_A, claims(exp));
    assert_eq!(a.verify(&t), Err(Refusal::UnknownKey));
    let t = token(Algorithm::HS512, None, SECRET_A, claims(exp));
    assert!(a.verify(&t).is_ok());
    // alg "none" is not even a JWT to the library.
    let none = format!(
        "{}.{}.",
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0",
        "eyJzdWIiOiJ0MSIsImV4cCI6OTk5OTk5OTk5OSwicm9sZSI6ImFkbWluIn0"
    );
    assert!(a.verify(&none).is_err());
}

#[test]
fn expiry_issuer_audience_and_claims_are_checked() {
    let a = authorizer(vec![hs("k", KeyAlgorithm::HS256, SECRET_A)]);
    let sign = |c| token(Algorithm::HS256, Some("k"), SECRET_A, c);
    assert_eq!(
        a.verify(&sign(claims(now() - 1))),
        Err(Refusal::ExpiredToken)
    );
    let mut c = claims(now() + 60);
    c["iss"] = "someone-else".into();
    assert_eq!(a.verify(&sign(c)), Err(Refusal::InvalidClaims));
    let mut c = claims(now() + 60);
    c["aud"] = "other".into();
    assert_eq!(a.verify(&sign(c)), Err(Refusal::InvalidClaims));
    // RFC 7519 allows `aud` to be an array: it passes when it names the hub's audience.
    let mut c = claims(now() + 60);
    c["aud"] = serde_json::json!(["other", "telehub"]);
    assert!(a.verify(&sign(c)).is_ok(), "an aud array naming the hub");
    let mut c = claims(now() + 60);
    c["aud"] = serde_json::json!(["other", "another"]);
    assert_eq!(a.verify(&sign(c)), Err(Refusal::InvalidClaims));
    let mut c = claims(now() + 60);
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(a.verify(&sign(c)), Err(Refusal::InvalidClaims));
    let mut c = claims(now() + 60);
    c["role"] = "root".into();
    assert_eq!(a.verify(&sign(c)), Err(Refusal::InvalidClaims));
    assert_eq!(a.verify("not-a-jwt"), Err(Refusal::MalformedToken));
}

#[test]
fn bearer_headers_and_query_tokens() {
    let a = authorizer(vec![hs("k", KeyAlgorithm::HS256, SECRET_A)]);
    assert_eq!(a.bearer(None), Ok(None));
    assert_eq!(a.bearer(Some(b"Bearer abc")), Ok(Some("abc")));
    assert_eq!(a.bearer(Some(b"bearer  abc ")), Ok(Some("abc")));
    assert_eq!(a.bearer(Some(b"Basic abc")), Err(Refusal::MalformedToken));
    assert_eq!(a.bearer(Some(b"Bearer ")), Err(Refusal::MalformedToken));
    assert_eq!(
        a.check_query(Some("role=device&token=x")),
        Err(Refusal::TokenInQuery)
    );
    assert_eq!(a.check_query(Some("jwt=x")), Err(Refusal::TokenInQuery));
    assert_eq!(
        a.check_query(Some("access_token=x")),
        Err(Refusal::TokenInQuery)
    );
    assert_eq!(a.check_query(Some("role=device")), Ok(()));
}

#[test]
fn origins_match_exactly_or_the_host() {
    let same = authorizer(vec![hs("k", KeyAlgorithm::HS256, SECRET_A)]);
    let host = Some(&b"hub.local:8080"[..]);
    assert_eq!(same.check_origin(None, host), Ok(()));
    assert_eq!(
        same.check_origin(Some(b"http://hub.local:8080"), host),
        Ok(())
    );
    assert_eq!(
        same.check_origin(Some(b"https://hub.local:8080"), host),
        Ok(())
    );
    assert_eq!(
        same.check_origin(Some(b"http://evil.example"), host),
        Err(Refusal::OriginNotAllowed)
    );
    assert_eq!(
        same.check_origin(Some(b"http://hub.local:8080"), None),
        Err(Refusal::OriginNotAllowed)
    );
    let cfg = AuthConfig {
        allowed_origins: vec!["https://dash.example".into()],
        ..AuthConfig::default()
    };
    let listed = Authorizer::new(&cfg, LOOPBACK, Vec::new()).unwrap();
    assert_eq!(
        listed.check_origin(Some(b"https://dash.example"), host),
        Ok(())
    );
    assert_eq!(
        listed.check_origin(Some(b"https://dash.example.evil"), host),
        Err(Refusal::OriginNotAllowed)
    );
}

#[test]
fn hosts_are_checked_against_dns_rebinding() {
    let local = authorizer(vec![hs("k", KeyAlgorithm::HS256, SECRET_A)]);
    for ok in [
        &b"localhost:8080"[..],
        b"LOCALHOST",
        b"dash.localhost:8080",
        b"127.0.0.1:8080",
        b"[::1]:8080",
        b"10.0.0.5",
    ] {
        assert_eq!(local.check_host(Some(ok)), Ok(()), "{ok:?}");
    }
    assert_eq!(local.check_host(None), Ok(()));
    for bad in [
        &b"evil.example:8080"[..],
        b"localhost.evil.example",
        b"xlocalhost",
        b".localhost",
        b"\xff\xfe",
    ] {
        assert_eq!(
            local.check_host(Some(bad)),
            Err(Refusal::HostNotAllowed),
            "{bad:?}"
        );
    }
    let wide: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let open = Authorizer::new(&AuthConfig::default(), wide, Vec::new()).unwrap();
    assert_eq!(open.check_host(Some(b"hub.lan:8080")), Ok(()));
    let cfg = AuthConfig {
        allowed_hosts: vec!["Hub.Example".into()],
        ..AuthConfig::default()
    };
    let listed = Authorizer::new(&cfg, wide, Vec::new()).unwrap();
    assert_eq!(listed.check_host(Some(b"hub.example:443")), Ok(()));
    assert_eq!(listed.check_host(Some(b"hub.example.")), Ok(()));
    assert_eq!(
        listed.check_host(Some(b"localhost")),
        Err(Refusal::HostNotAllowed)
    );
    let cfg = AuthConfig {
        allowed_hosts: vec!["*".into()],
        ..AuthConfig::default()
    };
    let any = Authorizer::new(&cfg, LOOPBACK, Vec::new()).unwrap();
    assert_eq!(any.check_host(Some(b"evil.example")), Ok(()));
}

#[test]
fn minted_tokens_verify_and_need_an_hs_key() {
    let mut settings = Settings::default();
    settings.auth.mode = AuthMode::Token;
    settings.auth.keys = vec![hs("main", KeyAlgorithm::HS256, SECRET_A)];
    let t = mint_token(
        &settings,
        "t1",
        "device",
        vec!["g-*".into()],
        Duration::from_secs(3600),
    )
    .expect("minted");
    let a = authorizer(settings.auth.keys.clone());
    let g = a.verify(&t).expect("verifies");
    assert_eq!(
        (g.sub.as_str(), g.rooms.as_slice()),
        ("t1", &["g-*".to_string()][..])
    );
    assert!(mint_token(&settings, "t1", "root", vec![], Duration::from_secs(1)).is_err());
    settings.auth.keys.clear();
    assert!(mint_token(&settings, "t1", "device", vec![], Duration::from_secs(1)).is_err());
}

#[test]
fn bad_keys_are_named() {
    let short = keys::load(&[hs("k", KeyAlgorithm::HS256, "short")]).unwrap_err();
    assert_eq!(short.key, "auth.keys[0].secret");
    let dup = keys::load(&[
        hs("k", KeyAlgorithm::HS256, SECRET_A),
        hs("k", KeyAlgorithm::HS256, SECRET_B),
    ])
    .unwrap_err();
    assert_eq!(dup.key, "auth.keys[1].kid");
    let mut rs = hs("r", KeyAlgorithm::RS256, SECRET_A);
    assert_eq!(
        keys::load(&[rs.clone()]).unwrap_err().key,
        "auth.keys[0].secret"
    );
    rs.secret = None;
    rs.public_key_file = Some("/nonexistent/key.pem".into());
    assert_eq!(
        keys::load(&[rs]).unwrap_err().key,
        "auth.keys[0].public_key_file"
    );
}

/// Throwaway test keys (the `jsonwebtoken` crate's own test fixtures).
const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGrD/e7uKYqSY4twDEsRfMMuLSrODf14dpTiTK6K1YI0\n-----END PRIVATE KEY-----\n";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA2+Jj2UvNCvQiUPNYRgSi0cJSPiJI6Rs6D0UTeEpQVj8=\n-----END PUBLIC KEY-----\n";
const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgWTFfCGljY6aw3Hrt\nkHmPRiazukxPLb6ilpRAewjW8nihRANCAATDskChT+Altkm9X7MI69T3IUmrQU0L\n950IxEzvw/x5BMEINRMrXLBJhqzO9Bm+d6JbqA21YQmd1Kt4RzLJR1W+\n-----END PRIVATE KEY-----\n";
const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEw7JAoU/gJbZJvV+zCOvU9yFJq0FN\nC/edCMRM78P8eQTBCDUTK1ywSYaszvQZvneiW6gNtWEJndSreEcyyUdVvg==\n-----END PUBLIC KEY-----\n";

#[test]
fn public_keys_verify_their_own_algorithm_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, pem: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let public = |kid: &str, alg, path| KeyConfig {
        kid: kid.into(),
        algorithm: alg,
        secret: None,
        secret_file: None,
        public_key_file: Some(path),
    };
    let a = authorizer(vec![
        public("ed", KeyAlgorithm::EdDSA, file("ed.pem", ED_PUBLIC)),
        public("ec", KeyAlgorithm::ES256, file("ec.pem", EC_PUBLIC)),
    ]);
    let exp = now() + 60;
    let signed = |alg, kid: &str, key: EncodingKey| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        encode(&h, &claims(exp), &key).unwrap()
    };
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    assert!(a
        .verify(&signed(Algorithm::EdDSA, "ed", ed.clone()))
        .is_ok());
    assert!(a.verify(&signed(Algorithm::ES256, "ec", ec)).is_ok());
    // An EdDSA token under the ES256 key's kid is refused, not verified as EdDSA.
    assert_eq!(
        a.verify(&signed(Algorithm::EdDSA, "ec", ed)),
        Err(Refusal::BadSignature)
    );
    // HS256 "signed" with the public key's text as the secret: the classic confusion.
    let confused = token(Algorithm::HS256, Some("ed"), ED_PUBLIC, claims(exp));
    assert_eq!(a.verify(&confused), Err(Refusal::BadSignature));
    let bad = public("x", KeyAlgorithm::ES256, file("bad.pem", ED_PUBLIC));
    assert_eq!(
        keys::load(&[bad]).unwrap_err().key,
        "auth.keys[0].public_key_file"
    );
}
