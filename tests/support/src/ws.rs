//! The WebSocket client every test, example and benchmark uses to play a device or a
//! dashboard against a hub: JSON in and out, and a timeout ([`WAIT`]) on every wait, so
//! a hub that stops answering fails the test instead of hanging it.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::WAIT;

/// The socket type under [`Client`], for callers that split it into halves.
pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket connection; `ws` is public for the few callers that split it.
pub struct Client {
    pub ws: Stream,
}

/// The HTTP status and body of a refused upgrade, if that is what `e` is.
pub fn refusal(e: &WsError) -> Option<(u16, String)> {
    match e {
        WsError::Http(resp) => Some((
            resp.status().as_u16(),
            resp.body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        )),
        _ => None,
    }
}

/// What [`Client::poll_json`] found.
#[derive(Debug)]
pub enum Polled {
    /// A text frame, parsed as JSON.
    Json(Value),
    /// Nothing but pings within the wait.
    Quiet,
    /// A close frame, an error, or the end of the stream.
    Closed,
}

impl Client {
    /// Opens `url` (`ws://ADDR/ws/{room}/{client}?…`).
    pub async fn connect(url: &str) -> Result<Client, WsError> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Client { ws })
    }

    /// Opens `url` with extra request headers (`Authorization`, `Origin`, ...).
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, WsError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut req = url.into_client_request()?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a header name");
            let value = HeaderValue::from_str(value).expect("a header value");
            req.headers_mut().insert(name, value);
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Client { ws })
    }

    /// Opens `wss://...` trusting only the CA certificate(s) in `ca_pem`, with extra
    /// request headers (`Authorization`, ...).
    pub async fn connect_tls(
        url: &str,
        ca_pem: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, WsError> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut req = url.into_client_request()?;
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a header name");
            let value = HeaderValue::from_str(value).expect("a header value");
            req.headers_mut().insert(name, value);
        }
        let connector = tokio_tungstenite::Connector::Rustls(crate::tls::client_config(ca_pem));
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
                .await?;
        Ok(Client { ws })
    }

    /// Opens `url` with `Authorization: Bearer {token}`.
    pub async fn connect_bearer(url: &str, token: &str) -> Result<Client, WsError> {
        Client::connect_with_headers(url, &[("authorization", &format!("Bearer {token}"))]).await
    }

    /// Connects with a tiny receive buffer, so that a client that stops reading fills
    /// its socket quickly (the stuck-dashboard tests).
    pub async fn connect_small_buffer(url: &str, addr: SocketAddr) -> Client {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let stream = socket.connect(addr).await.expect("connect");
        Client::handshake(url, stream).await.expect("handshake")
    }

    /// The WebSocket handshake on a connection that is already open (for example one
    /// that has carried an HTTP request before).
    pub async fn handshake(url: &str, stream: TcpStream) -> Result<Client, WsError> {
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)).await?;
        Ok(Client { ws })
    }

    /// Sends `v` as a text frame; panics if the connection is gone.
    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// Sends a text frame; panics if the connection is gone.
    pub async fn send_text(&mut self, s: &str) {
        self.try_send_text(s).await.expect("send");
    }

    /// Sends a text frame; an error means the connection is gone (reconnecting callers).
    pub async fn try_send_text(&mut self, s: &str) -> Result<(), WsError> {
        self.ws.send(Message::Text(s.to_string().into())).await
    }

    /// Sends a reading as a device.
    pub async fn reading(&mut self, metric: &str, value: f64, seq: u64) {
        self.send_json(
            serde_json::json!({"type":"reading","metric":metric,"value":value,"seq":seq}),
        )
        .await;
    }

    /// The next text frame as JSON within `within`, skipping pings and binary frames;
    /// never panics (a frame that is not JSON counts as [`Polled::Closed`]: the hub
    /// only sends JSON).
    pub async fn poll_json(&mut self, within: Duration) -> Polled {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Polled::Quiet,
                Ok(Some(Ok(Message::Text(t)))) => {
                    return match serde_json::from_str(t.as_str()) {
                        Ok(v) => Polled::Json(v),
                        Err(_) => Polled::Closed,
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                    return Polled::Closed
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next message as JSON, skipping pings; panics on close or after [`WAIT`].
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("stream open")
                .expect("no error");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Skips messages until one of type `kind` arrives.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv_json().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// The next error frame, as (code, message).
    pub async fn next_error(&mut self) -> (String, String) {
        let e = self.recv_type("error").await;
        (
            e["code"].as_str().unwrap_or_default().to_string(),
            e["message"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Skips messages until the close frame; returns its code and reason.
    pub async fn recv_close(&mut self) -> (CloseCode, String) {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a close in time");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return (f.code, f.reason.to_string()),
                Some(Ok(Message::Close(None))) => panic!("close without a code"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before the close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Asserts that nothing but pings arrives for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Sends a close frame (errors ignored: the peer may be gone already).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
