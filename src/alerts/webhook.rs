//! The webhook notification sink's HTTP client: one `POST` of a JSON body to a
//! configured `http://` or `https://` URL, signed with HMAC-SHA256 when the sink has a
//! `secret`.
//!
//! A leaf of [`super::notify`]: its worker calls [`Webhook::post`] for each batch and
//! decides about retries from the [`WebhookError`]. hyper's own HTTP/1 client connection
//! (already in the tree through warp) is used over a fresh TCP (or rustls) connection per
//! batch: notifications are rare, and a new connection needs no pool to go stale.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;

/// The signature header: `sha256=<hex HMAC-SHA256 of the body, keyed by the secret>`.
pub(crate) const SIGNATURE_HEADER: &str = "X-Telehub-Signature";

/// Why a webhook `POST` failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookError {
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("TLS with {authority}: {source}")]
    Tls {
        authority: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("the request cannot be built: {0}")]
    Request(String),
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("no answer within {0} ms")]
    Timeout(u64),
}

impl WebhookError {
    /// Whether trying again may help: a `4xx` other than 408 and 429 will not.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            WebhookError::Status(s) => !(400..500).contains(s) || *s == 408 || *s == 429,
            WebhookError::Request(_) => false,
            _ => true,
        }
    }
}

/// A checked webhook target.
#[derive(Clone)]
pub(crate) struct Webhook {
    host: String,
    port: u16,
    /// `host[:port]` as the `Host` header says it.
    authority: String,
    /// The path and query the request is for.
    target: String,
    /// The URL without its query, safe to show (a query may carry a token).
    shown: String,
    secret: Option<Arc<[u8]>>,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
}

impl Webhook {
    /// Checks `url` (`http://` or `https://`, a host, no `user:password@`) and, for
    /// `https://`, loads the system's root certificates.
    pub(crate) fn new(
        url: &str,
        secret: Option<&str>,
        timeout: Duration,
    ) -> Result<Webhook, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("url `{}`: {e}", redact(url)))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("url `{}` must be http:// or https://", redact(url))),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("url `{}` has no host", redact(url)))?;
        if authority.as_str().contains('@') {
            return Err(
                "url must not carry `user:password@`; sign with `secret` instead".to_string(),
            );
        }
        let host = authority.host().trim_matches(['[', ']']).to_string();
        if host.is_empty() {
            return Err(format!("url `{}` has no host", redact(url)));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target = uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string());
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err("https:// needs the system's root certificates; none found".into());
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Webhook {
            host,
            port,
            authority: authority.as_str().to_string(),
            target,
            shown: redact(url),
            secret: secret.map(|s| Arc::from(s.as_bytes())),
            tls,
            timeout,
        })
    }

    /// The URL as the API shows it (no query).
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    /// POSTs `body` (JSON); `Ok` on a `2xx` answer within the timeout.
    pub(crate) async fn post(&self, body: Vec<u8>) -> Result<(), WebhookError> {
        let timeout_ms = self.timeout.as_millis() as u64;
        tokio::time::timeout(self.timeout, self.exchange(body))
            .await
            .unwrap_or(Err(WebhookError::Timeout(timeout_ms)))
    }

    async fn exchange(&self, body: Vec<u8>) -> Result<(), WebhookError> {
        let mut req = Request::post(self.target.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "telehub");
        if let Some(secret) = &self.secret {
            req = req.header(SIGNATURE_HEADER, signature(secret, &body));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| WebhookError::Request(e.to_string()))?;
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| WebhookError::Connect {
                authority: self.authority.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let status = match &self.tls {
            None => send(TokioIo::new(tcp), req).await?,
            Some(tls) => {
                let name =
                    rustls_pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
                        WebhookError::Tls {
                            authority: self.authority.clone(),
                            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                        }
                    })?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|source| WebhookError::Tls {
                        authority: self.authority.clone(),
                        source,
                    })?;
                send(TokioIo::new(stream), req).await?
            }
        };
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(WebhookError::Status(status))
        }
    }
}

/// One request over a fresh HTTP/1 connection; its status.
async fn send<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<u16, WebhookError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let answer = sender.send_request(req).await;
    driver.abort();
    Ok(answer?.status().as_u16())
}

/// `sha256=<hex>` of `body` keyed by `secret`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// `url` without its query (which may carry a token) or a `user:password@`.
fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, _)) => (base, "?…"),
        None => (url, ""),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            match rest[..end].rfind('@') {
                Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
                None => base.to_string(),
            }
        }
        None => base.to_string(),
    };
    format!("{base}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2.
    #[test]
    fn the_signature_is_hmac_sha256_in_hex() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn urls_are_checked_and_shown_without_their_query() {
        let t = Duration::from_secs(1);
        let w = Webhook::new("http://127.0.0.1:9/hook?token=abc", None, t).expect("valid");
        assert_eq!((w.port, w.target.as_str()), (9, "/hook?token=abc"));
        assert_eq!(w.shown(), "http://127.0.0.1:9/hook?…");
        assert!(Webhook::new("ftp://x/", None, t).is_err());
        assert!(Webhook::new("http://u:p@x/", None, t)
            .err()
            .is_some_and(|e| !e.contains("u:p")));
        assert!(!WebhookError::Status(404).retryable());
        assert!(WebhookError::Status(429).retryable());
        assert!(WebhookError::Status(503).retryable());
    }
}
