//! HTTP ingest: a device's readings posted as JSON, and the commands it fetches and
//! acknowledges by request (`/api/rooms/{room}/devices/{device}/...`).
//!
//! A source stage beside [`super::ws_client`]: the body is checked by the same
//! [`telehub_protocol::inbound::parse_readings_body`] as a WebSocket `readings` batch,
//! charged to the same rate (`limits.rate_per_sec`, one token per item, on the device's
//! bucket in [`HttpDevices`]), and published through the same [`crate::hub::Hub::publish`]
//! (series caps, `seq` deduplication, `max_future_ms`). What a WebSocket device is told
//! in `error` frames and `accepted`, an HTTP device is told in the answer
//! ([`Ingested`]); the HTTP side is [`crate::api::ingest`].

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Semaphore;

use super::http_devices::{DeviceError, HttpDevices};
use crate::hub::mailbox::CommandLetter;
use telehub_protocol::codes::ErrorCode;
use telehub_protocol::inbound::{parse_readings_body, AckIn, ProtoError};

/// Long polls for commands waiting at the same time at most, over all devices; one more
/// is answered 503 `too_many_waiters` (a waiter holds a connection and a task).
pub(crate) const MAX_COMMAND_WAITERS: usize = 1_024;

/// The longest a command poll waits (`wait=` above it is cut to it).
pub(crate) const MAX_COMMAND_WAIT: Duration = Duration::from_secs(60);

/// One refused item, or a count of refused items the hub does not name one by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ItemError {
    /// The item's place in the body (from 0); absent for a count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) index: Option<usize>,
    pub(crate) error: &'static str,
    pub(crate) message: String,
}

/// What a post did: `accepted` counts every reading the room has now, resends
/// (duplicates by `seq`) included, as the WebSocket `accepted` does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Ingested {
    pub(crate) accepted: usize,
    pub(crate) duplicates: usize,
    /// Room offsets of the first and last new reading.
    pub(crate) offsets: Option<(u64, u64)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) errors: Vec<ItemError>,
    /// Some items were over the rate: when they could be sent again.
    #[serde(skip)]
    pub(crate) retry_after: Option<Duration>,
    /// Readings were fanned out but are not kept (the store's queue is full, its commits
    /// fail, or the hub is stopping): why. The post is answered 503 `store_unavailable`
    /// and nothing of it acknowledged, as a WebSocket device gets no `accepted`.
    #[serde(skip)]
    pub(crate) unavailable: Option<String>,
}

/// A post refused whole.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum IngestError {
    /// The body is not readings (bad JSON, too many items).
    #[error("{}", .0.message)]
    Body(ProtoError),
    /// Over `limits.rate_per_sec` with nothing left to take.
    #[error("over {rate} readings per second (burst {burst}); retry later")]
    RateLimited {
        rate: f64,
        burst: f64,
        wait: Duration,
    },
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// [`MAX_COMMAND_WAITERS`] polls are already waiting.
    #[error("{MAX_COMMAND_WAITERS} command polls are already waiting; retry later")]
    TooManyWaiters,
}

/// A command as a device fetches it.
#[derive(Debug, Serialize)]
pub(crate) struct CommandOut {
    id: String,
    from: Arc<str>,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<Box<serde_json::value::RawValue>>,
}

impl From<CommandLetter> for CommandOut {
    fn from(c: CommandLetter) -> CommandOut {
        CommandOut {
            id: c.id,
            from: c.from,
            name: c.name,
            args: c.args,
        }
    }
}

/// HTTP ingest; cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpIngest {
    devices: HttpDevices,
    waiters: Arc<Semaphore>,
}

impl HttpIngest {
    pub(crate) fn new(devices: HttpDevices) -> HttpIngest {
        HttpIngest {
            devices,
            waiters: Arc::new(Semaphore::new(MAX_COMMAND_WAITERS)),
        }
    }

    /// The largest body a post may have: a WebSocket message's (`limits.max_frame_bytes`).
    pub(crate) fn max_body_bytes(&self) -> usize {
        self.devices.hub().limits().max_frame_bytes
    }

    /// Posts `body` as readings of `device` in `room`, and returns once they are kept
    /// (with `history.ack = "durable"`, committed to disk: the same
    /// [`crate::hub::receipt::Receipt`] a WebSocket `accepted` waits on).
    pub(crate) async fn readings(
        &self,
        room: &str,
        device: &str,
        body: &str,
    ) -> Result<Ingested, IngestError> {
        let hub = self.devices.hub();
        let metrics = hub.metrics();
        let limits = hub.limits();
        let items = parse_readings_body(body, limits.max_batch).map_err(|e| {
            metrics.error(e.code);
            IngestError::Body(e)
        })?;
        let d = self.devices.device(room, device)?;
        let (granted, wait) =
            d.charge_readings(items.len().max(1), limits.rate_per_sec, limits.rate_burst);
        if granted == 0 {
            metrics.error(ErrorCode::RateLimited);
            d.touch();
            return Err(IngestError::RateLimited {
                rate: limits.rate_per_sec,
                burst: limits.rate_burst,
                wait,
            });
        }
        let mut out = Ingested::default();
        let mut valid = Vec::with_capacity(granted.min(items.len()));
        for (index, item) in items.into_iter().enumerate() {
            let refused = if index >= granted {
                ProtoError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "over {} readings per second (burst {}); resend it later",
                        limits.rate_per_sec, limits.rate_burst
                    ),
                )
            } else {
                match item {
                    Ok(r) => {
                        valid.push(r);
                        continue;
                    }
                    Err(e) => e,
                }
            };
            if refused.code == ErrorCode::RateLimited {
                out.retry_after = Some(wait);
            }
            metrics.error(refused.code);
            out.errors.push(ItemError {
                index: Some(index),
                error: refused.code.as_str(),
                message: refused.message,
            });
        }
        if valid.is_empty() {
            d.touch();
            return Ok(out);
        }
        let count = valid.len();
        let published = d.publish_settled(hub, valid).await;
        if published.unstored_count > 0 {
            let why = match &published.why_unstored {
                Some(why) => why.as_str(),
                None if published.stopping => "the hub is shutting down",
                None => "the history store's queue is full",
            };
            out.unavailable = Some(format!(
                "{} of {count} reading(s) not stored: {why}; resend them later",
                published.unstored_count
            ));
        } else if let Err(why) = published.receipt.clone().wait().await {
            out.unavailable = Some(format!(
                "{count} reading(s) not stored: {why}; resend them later"
            ));
        }
        if out.unavailable.is_some() {
            metrics.error(ErrorCode::StoreUnavailable);
        }
        out.accepted = published.accepted + published.duplicates;
        out.duplicates = published.duplicates;
        out.offsets = published.offsets;
        if published.future_ts > 0 {
            metrics.error(ErrorCode::InvalidField);
            out.errors.push(ItemError {
                index: None,
                error: ErrorCode::InvalidField.as_str(),
                message: format!(
                    "{} reading(s) refused: field `ts` is more than {} ms ahead of the hub's clock (limits.max_future_ms)",
                    published.future_ts, limits.max_future_ms
                ),
            });
        }
        if let Some((key, max)) = published.series_limit {
            metrics.error(ErrorCode::SeriesLimit);
            out.errors.push(ItemError {
                index: None,
                error: ErrorCode::SeriesLimit.as_str(),
                message: format!(
                    "{} reading(s) refused: they would create series past {key} ({max})",
                    published.series_limited
                ),
            });
        }
        Ok(out)
    }

    /// The commands waiting for `device`, after up to `wait` for one to arrive.
    pub(crate) async fn commands(
        &self,
        room: &str,
        device: &str,
        wait: Duration,
    ) -> Result<Vec<CommandOut>, IngestError> {
        let d = self.devices.device(room, device)?;
        let _waiting = match self.waiters.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => return Err(IngestError::TooManyWaiters),
        };
        let commands = d.commands(wait.min(MAX_COMMAND_WAIT)).await;
        Ok(commands.into_iter().map(CommandOut::from).collect())
    }

    /// The device's answer to command `id`.
    pub(crate) fn ack(
        &self,
        room: &str,
        device: &str,
        ack: &AckIn,
    ) -> Result<Result<(), ProtoError>, IngestError> {
        let d = self.devices.device(room, device)?;
        Ok(d.ack(self.devices.hub(), ack))
    }
}
