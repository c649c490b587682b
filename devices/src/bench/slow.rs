//! `--slow-viewers N`: dashboards on a slow link, beside the measured ones.
//!
//! Each joins its room with `?overflow=latest`, a 4 KiB socket receive buffer
//! (`--slow-recv-buffer`) and reads
//! one frame every `--slow-read-every` (100 ms by default: 10 frames a second, a phone
//! on a train). The hub's queue for it fills within seconds and the hub coalesces it to
//! the latest value per series plus `skipped` frames, which it reads at full speed once
//! the devices stop. The viewer counts what it got; the
//! measured dashboards' loss and latency in the same report are what the slow viewers
//! cost their neighbours (run once with `--slow-viewers 0` to compare).

use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use telehub_protocol::outbound::Peek;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::wsclient::WsStream;

/// The slow viewer's read buffer: small, so it reads little more than a frame at a time.
pub(super) const READ_BUFFER: usize = 4 * 1024;

/// What the slow viewers received, summed over all of them.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SlowCounts {
    /// Slow viewers that ran.
    pub viewers: u64,
    /// `reading` frames they read.
    pub readings: u64,
    /// `skipped` frames they read.
    pub skipped_frames: u64,
    /// The `count`s of those `skipped` frames: readings the hub coalesced away.
    pub skipped_readings: u64,
    /// Slow viewers whose connection closed before the end (1013 would mean the hub
    /// gave up on one instead of coalescing).
    pub closed: u64,
}

impl SlowCounts {
    pub(super) fn add(&mut self, other: &SlowCounts) {
        self.viewers += other.viewers;
        self.readings += other.readings;
        self.skipped_frames += other.skipped_frames;
        self.skipped_readings += other.skipped_readings;
        self.closed += other.closed;
    }
}

/// Read one frame every `every` while the devices send, then at full speed (the hub
/// sends what it coalesced and the `skipped` frames once the socket drains) until `stop`.
pub(super) async fn viewer(
    mut ws: WsStream,
    every: Duration,
    devices_stopped: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> SlowCounts {
    let mut c = SlowCounts {
        viewers: 1,
        ..SlowCounts::default()
    };
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => break,
            msg = ws.next() => msg,
        };
        match msg {
            Some(Ok(Message::Text(t))) => count(&mut c, t.as_str()),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                c.closed = 1;
                break;
            }
            Some(Ok(_)) => {}
        }
        if *devices_stopped.borrow() {
            continue;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
    c
}

fn count(c: &mut SlowCounts, text: &str) {
    let Ok(p) = Peek::from_json(text) else {
        return;
    };
    match p.kind {
        "reading" => c.readings += 1,
        "skipped" => {
            c.skipped_frames += 1;
            let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            c.skipped_readings += v["count"].as_u64().unwrap_or(0);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_readings_and_what_was_skipped() {
        let mut c = SlowCounts::default();
        count(
            &mut c,
            r#"{"type":"reading","device":"dev-1","seq":4,"value":1}"#,
        );
        count(
            &mut c,
            r#"{"type":"skipped","from_offset":3,"to_offset":90,"count":80}"#,
        );
        count(&mut c, r#"{"type":"presence"}"#);
        count(&mut c, "not json");
        assert_eq!(
            (c.readings, c.skipped_frames, c.skipped_readings),
            (1, 1, 80)
        );
    }
}
