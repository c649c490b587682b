//! TLS on the hub's own listener (`[server.tls]`): https and wss through rustls with the
//! `ring` provider (no aws-lc, no system library), ALPN `http/1.1`.
//!
//! The listener ([`crate::net::listener`]) runs the TLS handshake under the handshake
//! timeout and then serves the decrypted stream exactly as it serves plain TCP: hyper
//! and warp for HTTP, the hub's own handshake and codec for `/ws/...`. A failed or slow
//! TLS handshake is counted (`reason="tls_handshake"`) and logged at debug.
//!
//! The certificate is chosen per connection by a [`ResolvesServerCert`] that holds the
//! current [`CertifiedKey`] in an [`ArcSwap`], so SIGHUP ([`Tls::reload`]) swaps it
//! without a lock on the handshake path: new connections get the new certificate, open
//! ones keep the one they were opened with. A file that fails to load on reload is
//! logged and the old certificate stays.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{error, info};

use crate::config::TlsConfig;

const CERT_KEY: &str = "server.tls.cert_file";
const KEY_KEY: &str = "server.tls.key_file";

/// Reads `cert_file` and `key_file` and checks that the key is the first certificate's.
/// The error names the config key at fault and says what is wrong with its file.
pub(crate) fn load(cfg: &TlsConfig) -> Result<CertifiedKey, (&'static str, String)> {
    let cert_path = cfg.cert_file.display();
    let key_path = cfg.key_file.display();
    let pem = std::fs::read(&cfg.cert_file)
        .map_err(|e| (CERT_KEY, format!("cannot read {cert_path}: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (CERT_KEY, format!("{cert_path} is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err((CERT_KEY, format!("no certificate in {cert_path}")));
    }
    let pem = std::fs::read(&cfg.key_file)
        .map_err(|e| (KEY_KEY, format!("cannot read {key_path}: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => (
            KEY_KEY,
            format!("no private key (PKCS#8, RSA or SEC1 PEM) in {key_path}"),
        ),
        e => (KEY_KEY, format!("{key_path} is not a valid PEM key: {e}")),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| (KEY_KEY, format!("{key_path}: unusable key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err((
            KEY_KEY,
            format!("the key in {key_path} does not match the certificate in {cert_path}"),
        )),
        Err(e) => Err((CERT_KEY, format!("{cert_path}: {e}"))),
    }
}

/// The certificate every new TLS connection is offered, swapped whole on reload.
struct CurrentCert(ArcSwap<CertifiedKey>);

impl fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentCert")
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The listener's TLS: the acceptor and the certificate it offers.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<CurrentCert>,
    config: TlsConfig,
}

impl Tls {
    /// Loads the certificate and key and builds the rustls server configuration.
    pub(crate) fn new(cfg: &TlsConfig) -> Result<Tls, String> {
        let certified = load(cfg).map_err(|(key, message)| format!("{key}: {message}"))?;
        let current = Arc::new(CurrentCert(ArcSwap::from_pointee(certified)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            config: cfg.clone(),
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files again (SIGHUP). On success new connections get the new
    /// certificate; on failure the error is logged and the old one stays.
    pub(crate) fn reload(&self) -> bool {
        match load(&self.config) {
            Ok(certified) => {
                self.current.0.store(Arc::new(certified));
                info!(cert_file = %self.config.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err((key, message)) => {
                error!(%key, %message, "TLS reload failed; keeping the current certificate");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg(dir: &tempfile::TempDir, cert: &str, key: &str) -> TlsConfig {
        let write = |name: &str, text: &str| {
            let p: PathBuf = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        TlsConfig {
            cert_file: write("cert.pem", cert),
            key_file: write("key.pem", key),
        }
    }

    fn self_signed() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn a_good_pair_loads_and_builds_an_acceptor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed();
        let tls = Tls::new(&cfg(&dir, &cert, &key)).expect("loads");
        assert!(tls.reload());
    }

    #[test]
    fn each_bad_file_is_named_by_its_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let err = |c: &TlsConfig| match load(c) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        };
        let (k, m) = err(&cfg(&dir, "", &key));
        assert_eq!(k, CERT_KEY);
        assert!(m.contains("no certificate"), "{m}");
        let (k, m) = err(&cfg(&dir, &cert, ""));
        assert_eq!(k, KEY_KEY);
        assert!(m.contains("no private key"), "{m}");
        let (k, m) = err(&cfg(&dir, &cert, &other_key));
        assert_eq!(k, KEY_KEY);
        assert!(m.contains("does not match"), "{m}");
        let mut missing = cfg(&dir, &cert, &key);
        missing.cert_file = dir.path().join("nope.pem");
        let (k, m) = err(&missing);
        assert_eq!(k, CERT_KEY);
        assert!(m.contains("cannot read"), "{m}");
    }

    #[test]
    fn a_bad_reload_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed();
        let c = cfg(&dir, &cert, &key);
        let tls = Tls::new(&c).expect("loads");
        let before = tls.current.0.load_full();
        std::fs::write(&c.cert_file, "garbage").expect("write");
        assert!(!tls.reload());
        assert!(Arc::ptr_eq(&before, &tls.current.0.load_full()));
    }
}
