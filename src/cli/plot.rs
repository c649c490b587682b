//! The HTTP client behind `telehub plot`: fetches a chart from a running hub's
//! `/api/rooms/{room}/plot.png` (or `.svg`) and returns its bytes.
//!
//! Outside the hub's data flow: a small operator tool. It speaks plain `http://` with
//! hyper-util's client (no TLS, so no system libraries), follows no redirects, and bounds
//! both the time it waits and the size of the answer it accepts.

use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use telehub::PlotFormat as Format;

/// The longest a whole fetch may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest image accepted (a 4000x4000 PNG of noise is about 48 MB).
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// What can go wrong fetching a plot.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad URL `{0}`: {1}")]
    Url(String, String),
    #[error("request to {0} failed: {1}")]
    Request(String, String),
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("no answer from {0} within {FETCH_TIMEOUT:?}")]
    Timeout(String),
}

/// What to plot.
#[derive(Debug, Clone)]
pub struct PlotRequest {
    /// Base URL of the hub, such as `http://127.0.0.1:8080`.
    pub base: String,
    pub room: String,
    pub metric: String,
    pub device: Option<String>,
    pub window: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub theme: Option<String>,
    pub format: Format,
}

impl PlotRequest {
    /// The full URL of the plot endpoint, with the query string encoded.
    pub fn url(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("metric", &self.metric);
        q.append_pair("window", &self.window);
        if let Some(d) = &self.device {
            q.append_pair("device", d);
        }
        if let Some(w) = self.width {
            q.append_pair("width", &w.to_string());
        }
        if let Some(h) = self.height {
            q.append_pair("height", &h.to_string());
        }
        if let Some(t) = &self.theme {
            q.append_pair("theme", t);
        }
        let file = match self.format {
            Format::Svg => "plot.svg",
            Format::Png => "plot.png",
        };
        let room: String = form_urlencoded::byte_serialize(self.room.as_bytes()).collect();
        format!(
            "{}/api/rooms/{room}/{file}?{}",
            self.base.trim_end_matches('/'),
            q.finish()
        )
    }
}

/// Fetches the plot and returns the image bytes; a non-200 answer is an error carrying
/// the hub's JSON message.
pub async fn fetch_plot(req: &PlotRequest) -> Result<Vec<u8>, FetchError> {
    let url = req.url();
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| FetchError::Url(url.clone(), e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(FetchError::Url(
            url,
            "only http:// URLs are supported".into(),
        ));
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let work = async {
        let resp = client
            .get(uri)
            .await
            .map_err(|e| FetchError::Request(url.clone(), e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Request(url.clone(), e.to_string()))?
            .to_bytes();
        if status != 200 {
            return Err(FetchError::Status {
                url: url.clone(),
                status,
                body: String::from_utf8_lossy(&body).chars().take(500).collect(),
            });
        }
        Ok(body.to_vec())
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| FetchError::Timeout(url.clone()))?
}
