//! rustls clients (ring provider) that trust only a test's own CA, for a hub serving
//! `[server.tls]`: a TLS connection that reports the certificate it was shown, and an
//! https GET on top of [`crate::http::exchange`].

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::http::Response;
use crate::WAIT;

/// A client configuration trusting the certificates in `ca_pem`, offering ALPN
/// `http/1.1`. Panics on a PEM without a certificate (a broken test).
pub fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    assert!(!roots.is_empty(), "no certificate in the CA PEM");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Opens a TLS connection to `addr` for server name `localhost`, within [`WAIT`].
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    let tls = tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp)).await??;
    Ok(tls)
}

/// The DER of the certificate the server presented on `stream`.
pub fn peer_certificate(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    let (_, conn) = stream.get_ref();
    conn.peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
}

/// `GET https://localhost:PORT{path}`, trusting `ca_pem`.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    extra_headers: &str,
    ca_pem: &str,
) -> anyhow::Result<Response> {
    let tls = connect(addr, client_config(ca_pem)).await?;
    crate::http::exchange(tls, addr, path, extra_headers).await
}
