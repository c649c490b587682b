//! The subscription connection of a cluster hub: one Redis pub/sub connection carrying
//! one SUBSCRIBE per room with local dashboards, read by one task that hands each
//! message to the hub ([`RoomSink::deliver`], [`RoomSink::presence`]) in the order Redis
//! sent it.
//!
//! The task reconciles the subscriptions with the rooms' [`super::Seat`]s whenever one
//! is taken or dropped, and marks each confirmed once Redis has answered its SUBSCRIBE.
//! It pings every [`PING_INTERVAL`]; a connection that drops, or a ping unanswered
//! within [`PING_TIMEOUT`], is made again with backoff (100 ms doubling to 5 s, with
//! jitter) and every room subscribed again. Messages published meanwhile are not
//! redelivered: the hub sees the offset gap on the next one and closes the room's
//! dashboards with 1013 `cluster resync`, and they recover from the stream.
//!
//! The client's reader queues pushes without a bound of its own (redis-rs); this task
//! drains it without waiting on anything (`deliver` only pushes into bounded mailboxes).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tracing::{info, warn};

use super::commands::NodeMessage;
use super::{lock, Cluster, WireReading};
use crate::shutdown::{Completion, Shutdown};

/// How often an idle subscription connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(2);
/// A ping unanswered this long means the connection is gone.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the feed hands what other hubs (and this one) published.
pub(crate) trait RoomSink: Send + Sync + 'static {
    /// A reading of `room` stamped `offset` in `epoch` by Redis.
    fn deliver(&self, room: &str, offset: u64, epoch: &str, reading: &WireReading<'_>);
    /// A presence change of `room` (on any hub, this one included), numbered `version`
    /// in the room's presence order.
    fn presence(&self, room: &str, version: u64, event: &super::presence::Event<'_>);
    /// A frame for the dashboards of `room` (an `alert`), from the room's keeper.
    fn room_frame(&self, room: &str, frame: &[u8]);
    /// A message another hub sent this one ([`NodeMessage`]: a command for a local
    /// device, or the answer to a local dashboard's command).
    fn node_message(&self, message: NodeMessage<'_>);
}

/// `offset:epoch:payload` split, if it is that.
fn parse(payload: &[u8]) -> Option<(u64, &str, WireReading<'_>)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (offset, rest) = text.split_once(':')?;
    let (epoch, json) = rest.split_once(':')?;
    Some((
        offset.parse().ok()?,
        epoch,
        serde_json::from_str(json).ok()?,
    ))
}

impl Cluster {
    /// Runs the subscription connection until shutdown.
    pub(crate) fn start_feed(
        &self,
        sink: Arc<dyn RoomSink>,
        mut shutdown: Shutdown,
        done: Completion,
    ) {
        let cluster = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cluster.feed(sink) => {}
                _ = shutdown.recv() => {}
            }
            drop(done);
        });
    }

    fn set_down(&self, why: String) {
        let inner = &self.inner;
        if inner.up.swap(false, Ordering::AcqRel) {
            warn!(node = %inner.node_id, reason = %why, "redis subscription lost; reconnecting");
            inner.stats.reconnects.inc();
        }
        inner.stats.up.set(0);
        *lock(&inner.down_reason) = Some(why);
        for sub in lock(&inner.subs).values() {
            sub.confirmed.send_replace(false);
        }
    }

    async fn feed(&self, sink: Arc<dyn RoomSink>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let pubsub = match self.inner.client.get_async_pubsub().await {
                Ok(p) => p,
                Err(e) => {
                    self.set_down(format!("redis unreachable: {e}"));
                    let wait = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            backoff = BACKOFF_MIN;
            let (mut subscriber, mut stream) = pubsub.split();
            // This hub's own channel first: commands and answers from other hubs.
            let node_channel = self.node_channel();
            if let Err(e) = subscriber.subscribe(&node_channel).await {
                self.set_down(format!("redis subscribe failed: {e}"));
                tokio::time::sleep(backoff).await;
                continue;
            }
            let mut subscribed: HashSet<Arc<str>> = HashSet::new();
            let mut reconcile = true;
            let mut ping = tokio::time::interval(PING_INTERVAL);
            if !self.inner.up.swap(true, Ordering::AcqRel) {
                info!(node = %self.inner.node_id, "redis subscription connected");
            }
            self.inner.stats.up.set(1);
            *lock(&self.inner.down_reason) = None;
            // Redis may have restarted without its data: write this hub's members again.
            self.inner.presence_now.notify_one();
            let why = loop {
                // Reconcile: subscribe what has seats, unsubscribe what has none.
                let (add, remove) = if !std::mem::take(&mut reconcile) {
                    (Vec::new(), Vec::new())
                } else {
                    let subs = lock(&self.inner.subs);
                    let add: Vec<Arc<str>> = subs
                        .keys()
                        .filter(|r| !subscribed.contains(*r))
                        .cloned()
                        .collect();
                    let remove: Vec<Arc<str>> = subscribed
                        .iter()
                        .filter(|r| !subs.contains_key(*r))
                        .cloned()
                        .collect();
                    (add, remove)
                };
                if !add.is_empty() {
                    let channels: Vec<String> = add.iter().map(|r| self.channel(r)).collect();
                    if let Err(e) = subscriber.subscribe(&channels).await {
                        break format!("redis subscribe failed: {e}");
                    }
                    let subs = lock(&self.inner.subs);
                    for room in add {
                        if let Some(sub) = subs.get(&room) {
                            sub.confirmed.send_replace(true);
                        }
                        subscribed.insert(room);
                    }
                }
                if !remove.is_empty() {
                    let channels: Vec<String> = remove.iter().map(|r| self.channel(r)).collect();
                    if let Err(e) = subscriber.unsubscribe(&channels).await {
                        break format!("redis unsubscribe failed: {e}");
                    }
                    for room in remove {
                        subscribed.remove(&room);
                    }
                }
                tokio::select! {
                    msg = stream.next() => {
                        let Some(msg) = msg else {
                            break "redis connection closed".to_string();
                        };
                        if msg.get_channel_name() == node_channel {
                            match serde_json::from_slice(msg.get_payload_bytes()) {
                                Ok(m) => sink.node_message(m),
                                Err(e) => warn!(error = %e, "unreadable message on this hub's channel; ignored"),
                            }
                            continue;
                        }
                        let Some(room) = self.room_of(msg.get_channel_name()) else {
                            continue;
                        };
                        let payload = msg.get_payload_bytes();
                        if let Some(frame) = payload.strip_prefix(b"a:") {
                            sink.room_frame(room, frame);
                            continue;
                        }
                        if payload.starts_with(b"p:") {
                            match super::presence::parse(payload) {
                                Some((version, event)) => sink.presence(room, version, &event),
                                None => warn!(%room, "unreadable presence event; ignored"),
                            }
                            continue;
                        }
                        match parse(payload) {
                            Some((offset, epoch, reading)) => {
                                sink.deliver(room, offset, epoch, &reading)
                            }
                            None => warn!(%room, "unreadable message on a room channel; ignored"),
                        }
                    }
                    _ = self.inner.changed.notified() => reconcile = true,
                    _ = ping.tick() => {
                        let pong = subscriber.ping::<redis::Value>();
                        match tokio::time::timeout(PING_TIMEOUT, pong).await {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => break format!("redis ping failed: {e}"),
                            Err(_) => break format!("redis ping unanswered for {PING_TIMEOUT:?}"),
                        }
                    }
                }
            };
            self.set_down(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn payload_splits_into_offset_epoch_and_reading() {
        let (off, epoch, r) =
            parse(br#"12:Ab3d:{"device":"d","metric":"t","value":1.0,"ts":5}"#).expect("parses");
        assert_eq!((off, epoch, &*r.device, r.ts), (12, "Ab3d", "d", 5));
        assert!(parse(b"x:y:{}").is_none());
        assert!(parse(b"12").is_none());
    }
}
