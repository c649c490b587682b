//! A small Chrome DevTools Protocol client for the browser tests: it launches the
//! system's headless Chromium on a free debugging port, attaches to a new page target
//! and speaks CDP JSON over one WebSocket (tokio-tungstenite). No test tool downloads a
//! browser: a missing Chromium is a test failure that says how to install it.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long Chromium may take to start and print its DevTools address.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CDP command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of Chromium's stderr kept to explain a failure.
const STDERR_LINES: usize = 200;

type Sink = SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>;
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;

/// The flags every headless Chromium here needs: no sandbox (we run as root), no GPU,
/// and none of the background traffic that a closed network refuses.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
];

/// A running Chromium and the CDP connection to it.
pub struct Browser {
    child: Child,
    user_data_dir: PathBuf,
    stderr: Arc<Mutex<VecDeque<String>>>,
    cdp: Arc<Cdp>,
}

/// One CDP connection; commands are matched to responses by id, events are kept per
/// session for the pages to inspect.
struct Cdp {
    sink: tokio::sync::Mutex<Sink>,
    pending: Pending,
    next_id: AtomicU64,
    events: Arc<Mutex<Vec<Value>>>,
}

/// Finds the Chromium binary: `$CHROMIUM`, else the first of the usual names on PATH.
pub fn chromium_path() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(
        "Chromium was not found (looked for $CHROMIUM, then chromium, chromium-browser, \
         google-chrome on PATH). The browser tests need it: install Debian's package with \
         `apt-get install -y chromium`."
            .to_string(),
    )
}

impl Browser {
    /// Starts headless Chromium with a fresh profile; panics with a clear message when
    /// it is missing or does not start.
    pub async fn launch() -> Browser {
        let bin = chromium_path().unwrap_or_else(|e| panic!("{e}"));
        let user_data_dir = std::env::temp_dir().join(format!(
            "telehub-chromium-{}-{}",
            std::process::id(),
            NEXT_PROFILE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&user_data_dir);
        std::fs::create_dir_all(&user_data_dir).expect("create the Chromium profile folder");
        let mut child = Command::new(&bin)
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", user_data_dir.display()))
            .arg("--window-size=1280,900")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start Chromium at {}: {e}. Install it with `apt-get install -y chromium`.",
                    bin.display()
                )
            });

        // Read stderr on a thread for the whole life of the browser: the DevTools line
        // first, then keep draining so Chromium never blocks on a full pipe.
        let stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let (url_tx, url_rx) = std::sync::mpsc::channel::<String>();
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut url_tx = Some(url_tx);
                for line in BufReader::new(stderr_pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.strip_prefix("DevTools listening on ") {
                        if let Some(tx) = url_tx.take() {
                            let _ = tx.send(rest.trim().to_string());
                        }
                    }
                    let mut buf = stderr.lock().unwrap();
                    if buf.len() == STDERR_LINES {
                        buf.pop_front();
                    }
                    buf.push_back(line);
                }
            });
        }
        let ws_url = match tokio::task::spawn_blocking(move || url_rx.recv_timeout(LAUNCH_TIMEOUT))
            .await
            .expect("join")
        {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let log: Vec<String> = stderr.lock().unwrap().iter().cloned().collect();
                panic!(
                    "Chromium ({}) did not print its DevTools address within {LAUNCH_TIMEOUT:?} \
                     (exit status {status:?}). Its stderr:\n{}",
                    bin.display(),
                    log.join("\n")
                );
            }
        };

        let ws = crate::helpers::Client::connect(ws_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to Chromium's DevTools at {ws_url}: {e}"))
            .ws;
        let (sink, mut stream) = ws.split();
        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let events = Arc::new(Mutex::new(Vec::new()));
        {
            let pending = pending.clone();
            let events = events.clone();
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if let Some(id) = v.get("id").and_then(Value::as_u64) {
                        if let Some(tx) = pending.lock().unwrap().remove(&id) {
                            let res = match v.get("error") {
                                Some(err) => Err(err.clone()),
                                None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                            };
                            let _ = tx.send(res);
                        }
                    } else if v.get("method").is_some() {
                        let mut ev = events.lock().unwrap();
                        // A trace's end is kept whatever came before it.
                        if ev.len() < 10_000 || v["method"] == "Tracing.tracingComplete" {
                            ev.push(v);
                        }
                    }
                }
                // The connection is gone: fail whatever still waits.
                pending.lock().unwrap().clear();
            });
        }
        Browser {
            child,
            user_data_dir,
            stderr,
            cdp: Arc::new(Cdp {
                sink: tokio::sync::Mutex::new(sink),
                pending,
                next_id: AtomicU64::new(1),
                events,
            }),
        }
    }

    /// Opens a new tab of `width` x `height` CSS pixels and attaches to it.
    pub async fn new_page(&self, width: u32, height: u32) -> Page {
        self.open_page(json!({"url": "about:blank"}), width, height)
            .await
    }

    /// Opens a tab in a new browser context (its own cookies and storage, like a second
    /// browser) and attaches to it.
    pub async fn new_context_page(&self, width: u32, height: u32) -> Page {
        let ctx = self
            .cdp
            .call(None, "Target.createBrowserContext", json!({}))
            .await
            .expect("Target.createBrowserContext");
        let id = ctx["browserContextId"].as_str().expect("browserContextId");
        self.open_page(
            json!({"url": "about:blank", "browserContextId": id}),
            width,
            height,
        )
        .await
    }

    async fn open_page(&self, params: Value, width: u32, height: u32) -> Page {
        let target = self
            .cdp
            .call(None, "Target.createTarget", params)
            .await
            .expect("Target.createTarget");
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = self
            .cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await
            .expect("Target.attachToTarget");
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        let page = Page {
            cdp: self.cdp.clone(),
            session,
            target_id,
        };
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        page.set_viewport(width, height, false).await;
        page
    }

    /// The last lines Chromium wrote to stderr (for failure messages).
    pub fn stderr_tail(&self) -> String {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

static NEXT_PROFILE: AtomicU64 = AtomicU64::new(0);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.user_data_dir);
    }
}

impl Cdp {
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        self.sink
            .lock()
            .await
            .send(Message::Text(msg.to_string().into()))
            .await
            .map_err(|e| format!("{method}: send failed: {e}"))?;
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(format!("{method}: {e}")),
            Ok(Err(_)) => Err(format!("{method}: the DevTools connection closed")),
            Err(_) => Err(format!("{method}: no answer within {COMMAND_TIMEOUT:?}")),
        }
    }
}

/// One tab.
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
    target_id: String,
}

impl Page {
    /// Sends a CDP command to this page; panics on a protocol error.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.cdp
            .call(Some(&self.session), method, params)
            .await
            .unwrap_or_else(|e| panic!("CDP {e}"))
    }

    pub async fn set_viewport(&self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    /// Emulates `prefers-color-scheme` (`light` or `dark`).
    pub async fn set_color_scheme(&self, scheme: &str) {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        )
        .await;
    }

    /// Navigates and waits until the document has loaded.
    pub async fn goto(&self, url: &str) {
        let res = self.call("Page.navigate", json!({"url": url})).await;
        if let Some(err) = res.get("errorText") {
            panic!("navigating to {url} failed: {err}");
        }
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
            &format!("{url} to load"),
        )
        .await;
    }

    /// Evaluates `expr` (awaiting a promise) and returns its value; Err with the
    /// exception's text when it throws.
    pub async fn try_eval(&self, expr: &str) -> Result<Value, String> {
        let res = self
            .cdp
            .call(
                Some(&self.session),
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(ex) = res.get("exceptionDetails") {
            let text = ex["exception"]["description"]
                .as_str()
                .or(ex["text"].as_str())
                .unwrap_or("exception");
            return Err(text.to_string());
        }
        Ok(res["result"]["value"].clone())
    }

    /// Evaluates `expr`; panics when it throws.
    pub async fn eval(&self, expr: &str) -> Value {
        self.try_eval(expr)
            .await
            .unwrap_or_else(|e| panic!("evaluating `{expr}` threw: {e}"))
    }

    /// Polls `expr` every 100 ms until it is truthy and returns that value; panics after
    /// `timeout` naming `what` and the last value or exception.
    pub async fn wait_for(&self, expr: &str, timeout: Duration, what: &str) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let last = match self.try_eval(expr).await {
                Ok(v) if truthy(&v) => return v,
                other => other,
            };
            if tokio::time::Instant::now() >= deadline {
                let shot = self.screenshot_to_dir("failure").await;
                panic!(
                    "timed out after {timeout:?} waiting for {what}: `{expr}` was {last:?}; \
                     page errors: {:?}; screenshot: {}",
                    self.errors(),
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let res = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let data = base64::engine::general_purpose::STANDARD
            .decode(res["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the screenshot folder");
        }
        std::fs::write(path, data).expect("write the screenshot");
    }

    /// Saves a screenshot as `target/screenshots/{name}.png` and returns its path.
    pub async fn screenshot_to_dir(&self, name: &str) -> PathBuf {
        let path = screenshot_dir().join(format!("{name}.png"));
        self.screenshot(&path).await;
        path
    }

    /// Uncaught exceptions and console errors this page has reported so far.
    pub fn errors(&self) -> Vec<String> {
        let events = self.cdp.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e["sessionId"] == self.session.as_str())
            .filter_map(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => Some(format!(
                    "exception: {}",
                    e["params"]["exceptionDetails"]["exception"]["description"]
                        .as_str()
                        .or(e["params"]["exceptionDetails"]["text"].as_str())
                        .unwrap_or("?")
                )),
                Some("Runtime.consoleAPICalled") if e["params"]["type"] == "error" => {
                    Some(format!("console.error: {}", e["params"]["args"]))
                }
                _ => None,
            })
            .collect()
    }

    /// Starts recording a performance trace of the renderer (the timeline categories
    /// DevTools' Performance panel records); [`Page::stop_trace`] returns it.
    pub async fn start_trace(&self) {
        self.call(
            "Tracing.start",
            json!({
                "transferMode": "ReturnAsStream",
                "traceConfig": {
                    "recordMode": "recordAsMuchAsPossible",
                    "includedCategories": [
                        "toplevel",
                        "devtools.timeline",
                        "disabled-by-default-devtools.timeline",
                        "blink",
                        "cc",
                        "v8"
                    ]
                }
            }),
        )
        .await;
    }

    /// Ends the trace [`Page::start_trace`] began and returns its events.
    pub async fn stop_trace(&self) -> Vec<Value> {
        self.call("Tracing.end", json!({})).await;
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        let stream = loop {
            let done = self
                .cdp
                .events
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|e| {
                    e["sessionId"] == self.session.as_str()
                        && e["method"] == "Tracing.tracingComplete"
                })
                .map(|e| {
                    e["params"]["stream"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                });
            if let Some(stream) = done {
                break stream;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Chromium did not finish the trace within {COMMAND_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut data = Vec::new();
        loop {
            let chunk = self
                .call("IO.read", json!({"handle": stream, "size": 1 << 20}))
                .await;
            let text = chunk["data"].as_str().unwrap_or_default();
            if chunk["base64Encoded"] == true {
                data.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .expect("trace chunk is base64"),
                );
            } else {
                data.extend_from_slice(text.as_bytes());
            }
            if chunk["eof"] == true {
                break;
            }
        }
        self.call("IO.close", json!({"handle": stream})).await;
        let trace: Value = serde_json::from_slice(&data).expect("the trace is JSON");
        match trace {
            Value::Array(events) => events,
            mut v => v["traceEvents"]
                .take()
                .as_array()
                .cloned()
                .unwrap_or_default(),
        }
    }

    pub async fn close(self) {
        let _ = self
            .cdp
            .call(
                None,
                "Target.closeTarget",
                json!({"targetId": self.target_id}),
            )
            .await;
    }
}

/// `target/screenshots/`, next to the build output (CI keeps it in its log).
pub fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots")
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
