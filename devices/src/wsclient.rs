//! Opening WebSocket client connections to a hub, shared by the devices and the bench.
//!
//! We dial the TCP connection ourselves (optionally from a chosen 127.0.0.x source
//! address, so `bench --idle` can open more connections than one address has ephemeral
//! ports), turn off Nagle (readings are small and latency matters), and size tungstenite's
//! buffers for the job instead of its 128 KiB default.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self};
use tokio_tungstenite::WebSocketStream;

/// A WebSocket client connection.
pub type WsStream = WebSocketStream<TcpStream>;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The hub URL is not `ws://host:port`.
    #[error("invalid hub url {url:?}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {error}")]
    Resolve {
        /// Host name.
        host: String,
        /// Resolver error.
        error: std::io::Error,
    },
    /// TCP connect failed.
    #[error("connect to {addr}: {error}")]
    Tcp {
        /// Address dialled.
        addr: SocketAddr,
        /// OS error.
        error: std::io::Error,
    },
    /// The hub refused the token: HTTP 401 (missing, malformed, expired or badly signed)
    /// or 403 (valid, but not for this room, role or client id).
    #[error("the hub at {addr} refused the token: HTTP {status} {code}")]
    Refused {
        /// Address dialled.
        addr: SocketAddr,
        /// 401 or 403.
        status: u16,
        /// The JSON body's `error` (`unauthorized`, `forbidden`, `origin_not_allowed`).
        code: String,
    },
    /// The token has characters an HTTP header cannot carry (a JWT never has).
    #[error("the token is not a JWT: it has characters an HTTP header cannot carry")]
    BadToken,
    /// The WebSocket handshake failed (includes the hub refusing with 400/503).
    #[error("websocket handshake with {addr}: {error}")]
    Handshake {
        /// Address dialled.
        addr: SocketAddr,
        /// tungstenite's error; for an HTTP refusal it carries the status.
        error: Box<tokio_tungstenite::tungstenite::Error>,
    },
}

impl ConnectError {
    /// The hub refused the credentials (401/403): retrying soon will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ConnectError::Refused { .. })
    }
}

/// Where a hub listens, parsed from `ws://host:port` (also `http://`; a trailing path is
/// ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubUrl {
    host: String,
    port: u16,
}

impl HubUrl {
    /// Parse a hub base URL.
    pub fn parse(url: &str) -> Result<HubUrl, ConnectError> {
        let bad = |reason| ConnectError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| bad("expected ws://host:port (wss is not supported)"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(bad("missing host"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            // [::1]:8080 or host:8080
            Some((h, p)) if !h.ends_with(':') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().map_err(|_| bad("bad port"))?,
            ),
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(HubUrl {
            host: host.to_string(),
            port,
        })
    }

    /// `host:port`, bracketing IPv6 literals.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolve to one socket address (the first, preferring IPv4 when bind is IPv4).
    pub async fn resolve(&self) -> Result<SocketAddr, ConnectError> {
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|error| ConnectError::Resolve {
                host: self.host.clone(),
                error,
            })?;
        let addrs: Vec<SocketAddr> = addrs.collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| ConnectError::Resolve {
                host: self.host.clone(),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
            })
    }
}

/// Buffer sizes for a device or dashboard connection: messages here are a few hundred
/// bytes, so small buffers cost nothing and keep thousands of connections cheap.
pub fn small_config(read_buffer: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Open `ws://{hub}{path_and_query}` to the already-resolved `addr`, from `bind` if given,
/// with `Authorization: Bearer {bearer}` if given (marked sensitive, never logged), and
/// the socket's kernel receive buffer set to `recv_buffer` bytes if given: a small one
/// makes a slow reader's backlog reach the hub within seconds instead of after megabytes
/// (the bench's `--slow-viewers`).
pub async fn connect(
    hub: &HubUrl,
    addr: SocketAddr,
    path_and_query: &str,
    bind: Option<IpAddr>,
    config: WebSocketConfig,
    bearer: Option<&str>,
    recv_buffer: Option<u32>,
) -> Result<WsStream, ConnectError> {
    let tcp_err = |error| ConnectError::Tcp { addr, error };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(tcp_err)?;
    if let Some(ip) = bind {
        socket.bind(SocketAddr::new(ip, 0)).map_err(tcp_err)?;
    }
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes).map_err(tcp_err)?;
    }
    let stream = socket.connect(addr).await.map_err(tcp_err)?;
    stream.set_nodelay(true).map_err(tcp_err)?;
    let url = format!("ws://{}{}", hub.authority(), path_and_query);
    let handshake = |e: tungstenite::Error| ConnectError::Handshake {
        addr,
        error: Box::new(e),
    };
    let mut request = url.into_client_request().map_err(handshake)?;
    if let Some(token) = bearer {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ConnectError::BadToken)?;
        value.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| refusal(addr, &e).unwrap_or_else(|| handshake(e)))?;
    Ok(ws)
}

/// A 401/403 answer to the upgrade, with the JSON body's `error` code.
fn refusal(addr: SocketAddr, e: &tungstenite::Error) -> Option<ConnectError> {
    let tungstenite::Error::Http(resp) = e else {
        return None;
    };
    let status = resp.status().as_u16();
    if status != 401 && status != 403 {
        return None;
    }
    let code = resp
        .body()
        .as_deref()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| {
            if status == 401 {
                "unauthorized"
            } else {
                "forbidden"
            }
            .into()
        });
    Some(ConnectError::Refused { addr, status, code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_urls() {
        let u = HubUrl::parse("ws://127.0.0.1:8080").expect("valid");
        assert_eq!(u.authority(), "127.0.0.1:8080");
        let u = HubUrl::parse("http://localhost:9/ignored").expect("valid");
        assert_eq!(u.authority(), "localhost:9");
        let u = HubUrl::parse("ws://[::1]:8080/").expect("valid");
        assert_eq!(u.authority(), "[::1]:8080");
        assert!(HubUrl::parse("wss://x:1").is_err());
        assert!(HubUrl::parse("ws://:1").is_err());
        assert!(HubUrl::parse("ws://h:notaport").is_err());
    }
}
