//! The reader side of a WebSocket connection: each text frame the client sends, charged
//! to its one token bucket, parsed, and handed to the hub (readings, commands, acks, a
//! token refresh), with errors answered in bounded numbers.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::{Authorizer, Refusal};
use crate::hub::mailbox::{Close, Mailbox, Push};
use crate::hub::{ClusterPublished, ClusterPublishing, Hub, Membership};
use crate::net::ws::frames::{self, Frame};
use crate::sources::ws_acks::{self, PendingAcks};
use telehub_protocol::codes::ErrorCode;
use telehub_protocol::inbound::{ClientMessage, ProtoError, ReadingIn};
use telehub_protocol::rate::TokenBucket;
use telehub_protocol::role::Role;
use telehub_protocol::seqs::SeqRanges;

use super::auth::{TokenClock, CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED, REFRESH_MIN_INTERVAL};

/// How often a client over its rate limit is told so, at most.
const FLOOD_NOTICE_INTERVAL: Duration = Duration::from_secs(1);
/// Item errors sent for one `readings` batch at most; one summary stands for the rest.
const MAX_ITEM_ERRORS: usize = 3;

/// The reader side's state and its handling of one text frame.
pub(super) struct Reader<'a> {
    pub(super) bucket: TokenBucket,
    /// When this client was last told it floods with invalid messages.
    pub(super) last_flood_notice: Option<Instant>,
    pub(super) hub: &'a Hub,
    pub(super) membership: &'a Membership,
    pub(super) mailbox: &'a Arc<Mailbox>,
    pub(super) acks: bool,
    pub(super) auth: &'a Authorizer,
    /// The connection's token (token mode), replaced by each accepted refresh. Boxed:
    /// an open hub's idle connection pays one pointer for it, not the whole clock.
    pub(super) token: Option<Box<TokenClock>>,
    /// A refresh moved the token's moments: the loop re-arms its timer.
    pub(super) rearm: bool,
    /// Messages whose readings are kept once their receipt is: `accepted` then (durable
    /// acks), in the order they came.
    pub(super) pending: PendingAcks,
    /// A cluster publish just started, for the loop to wait on.
    pub(super) publishing: Option<ClusterPublishing>,
}

impl Reader<'_> {
    /// Every message costs from the one bucket: a `readings` batch one token per item,
    /// anything else (a command, an ack, a ping, a binary or unparsable frame) one. What
    /// a client over its limit gets back is bounded too: no answer, only a `rate_limited`
    /// notice a second ([`Reader::throttled`]).
    pub(super) fn handle_text(&mut self, text: &str) {
        let limits = self.hub.limits();
        let parsed = telehub_protocol::inbound::parse(text, limits.max_batch);
        let cost = match &parsed {
            Ok(ClientMessage::Readings(items)) => items.len().max(1),
            _ => 1,
        };
        let granted = self.bucket.take(cost);
        let msg = match parsed {
            Ok(msg) => msg,
            Err(e) => {
                // Past the limit a flood of garbage gets no detailed errors (answering
                // each would do the flooder's work for it), only a notice now and then.
                if granted == 0 {
                    return self.throttled(e.code, None);
                }
                return self.reply_error(e);
            }
        };
        let role = self.membership.role();
        match msg {
            ClientMessage::Readings(items) => {
                if granted == 0 {
                    let code = if role == Role::Device {
                        ErrorCode::RateLimited
                    } else {
                        ErrorCode::WrongRole
                    };
                    return self.throttled(code, None);
                }
                if role != Role::Device {
                    return self.reply_error(ProtoError::new(
                        ErrorCode::WrongRole,
                        "only devices send readings; connect with ?role=device",
                    ));
                }
                self.readings(items, granted);
            }
            ClientMessage::Command(cmd) => {
                let code = if role == Role::Dashboard {
                    ErrorCode::RateLimited
                } else {
                    ErrorCode::WrongRole
                };
                if granted == 0 {
                    return self.throttled(code, Some(&cmd.id));
                }
                if role != Role::Dashboard {
                    return self.reply_error(
                        ProtoError::new(
                            ErrorCode::WrongRole,
                            "only dashboards send commands; devices answer them with ack",
                        )
                        .with_id(&cmd.id),
                    );
                }
                if let Err(e) = self.hub.command(self.membership, &cmd) {
                    self.reply_error(e);
                }
            }
            ClientMessage::Ack(ack) => {
                if granted == 0 {
                    let code = if role == Role::Device {
                        ErrorCode::RateLimited
                    } else {
                        ErrorCode::WrongRole
                    };
                    return self.throttled(code, Some(&ack.id));
                }
                if role != Role::Device {
                    return self.reply_error(
                        ProtoError::new(ErrorCode::WrongRole, "only devices send acks")
                            .with_id(&ack.id),
                    );
                }
                if let Err(e) = self.hub.ack(self.membership, &ack) {
                    self.reply_error(e);
                }
            }
            ClientMessage::Auth(a) => {
                // Without `[auth] mode = "token"` a token has nothing to unlock: ignored,
                // so a dashboard that always signs in works against an open hub too.
                let Some(current) = &self.token else {
                    return;
                };
                // A signature check costs far more than a reading: past the rate limit,
                // or within a second of the last refresh, the frame is dropped unverified.
                let now = Instant::now();
                let too_soon = current
                    .renewed
                    .is_some_and(|t| now.duration_since(t) < REFRESH_MIN_INTERVAL);
                if granted == 0 || too_soon {
                    return self.throttled(ErrorCode::RateLimited, None);
                }
                let m = self.membership;
                match self.auth.verify(&a.token) {
                    Err(_) => self.mailbox.close(CLOSE_UNAUTHORIZED),
                    Ok(fresh) => {
                        let fits = current.grant.renewed_by(&fresh)
                            && fresh.may_join(&m.room().name, m.client(), m.role()).is_ok();
                        if fits {
                            let mut clock = TokenClock::new(fresh);
                            clock.renewed = Some(now);
                            self.token = Some(Box::new(clock));
                            self.rearm = true;
                        } else {
                            self.auth.refuse(Refusal::ForbiddenRefresh);
                            self.mailbox.close(CLOSE_FORBIDDEN);
                        }
                    }
                }
            }
        }
    }

    /// A device's batch of which the first `granted` items were paid for: those are
    /// validated and published, the rest refused with one `rate_limited`. At most
    /// [`MAX_ITEM_ERRORS`] item errors are sent, then one summary for the others.
    fn readings(&mut self, items: Vec<Result<ReadingIn, ProtoError>>, granted: usize) {
        let limits = self.hub.limits();
        let refused = items.len().saturating_sub(granted);
        let mut valid = Vec::with_capacity(granted.min(items.len()));
        let mut item_errors = 0usize;
        let mut omitted: Option<(ErrorCode, usize)> = None;
        for item in items.into_iter().take(granted) {
            match item {
                Ok(r) => valid.push(r),
                Err(e) if item_errors < MAX_ITEM_ERRORS => {
                    item_errors += 1;
                    self.reply_error(e);
                }
                Err(e) => {
                    self.hub.metrics().error_suppressed(e.code);
                    omitted.get_or_insert((e.code, 0)).1 += 1;
                }
            }
        }
        if let Some((code, n)) = omitted {
            self.reply_error(ProtoError::new(
                code,
                format!(
                    "{n} more invalid item(s) in this batch were refused; only the first {MAX_ITEM_ERRORS} errors are reported"
                ),
            ));
        }
        if refused > 0 {
            self.reply_error(ProtoError::new(
                ErrorCode::RateLimited,
                format!(
                    "{refused} reading(s) refused: over {} per second (burst {}); resend them later",
                    limits.rate_per_sec, limits.rate_burst
                ),
            ));
        }
        if valid.is_empty() {
            return;
        }
        if let Some(cluster) = self.hub.cluster() {
            let (future_ts, publishing) = self.hub.publish_cluster(cluster, self.membership, valid);
            if future_ts > 0 {
                self.future_ts_error(future_ts);
            }
            self.publishing = Some(publishing);
            return;
        }
        let count = valid.len();
        let published = self.hub.publish(self.membership, valid);
        if published.future_ts > 0 {
            self.future_ts_error(published.future_ts);
        }
        if let Some((key, max)) = published.series_limit {
            self.reply_error(ProtoError::new(
                ErrorCode::SeriesLimit,
                format!(
                    "{} reading(s) refused: they would create series past {key} ({max})",
                    published.series_limited
                ),
            ));
        }
        if published.unstored_count > 0 {
            let why = if published.stopping {
                "the hub is shutting down"
            } else {
                "the history store's queue is full"
            };
            self.unavailable(
                &format!(
                    "{} of {count} reading(s) fanned out but not stored: {why}; resend them later",
                    published.unstored_count
                ),
                &published.unstored,
            );
        }
        if !self.acks || published.seqs.is_empty() {
            return;
        }
        if let Some(answer) = self.pending.admit(published.receipt, published.seqs) {
            self.answer(answer);
        }
    }

    fn future_ts_error(&self, n: usize) {
        self.reply_error(ProtoError::new(
            ErrorCode::InvalidField,
            format!(
                "{n} reading(s) refused: field `ts` is more than {} ms ahead of the hub's clock (limits.max_future_ms)",
                self.hub.limits().max_future_ms
            ),
        ));
    }

    /// Answers a cluster publish once Redis has: `accepted` for what it keeps (with
    /// `acks=true`), `series_limit` and `store_unavailable` for what it does not.
    pub(super) fn cluster_published(&mut self, done: ClusterPublished) {
        if done.series_limited > 0 {
            let max = self.hub.limits().max_series_per_room;
            self.reply_error(ProtoError::new(
                ErrorCode::SeriesLimit,
                format!(
                    "{} reading(s) refused: they would create series past limits.max_series_per_room ({max})",
                    done.series_limited
                ),
            ));
        }
        if let Some(why) = &done.why_unstored {
            self.unavailable(
                &format!(
                    "{} reading(s) not taken: {why}; resend them later",
                    done.unstored_count
                ),
                &done.unstored,
            );
        }
        if self.acks && !done.seqs.is_empty() {
            self.send(frames::accepted_frame(&done.seqs));
        }
    }

    /// Answers the messages whose receipt is decided (the store has `stopped`: all).
    pub(super) fn resolve_acks(&mut self, stopped: bool) {
        for answer in self.pending.resolve(stopped) {
            self.answer(answer);
        }
    }

    fn answer(&self, answer: ws_acks::Answer) {
        match answer {
            ws_acks::Answer::Accepted(seqs) => self.send(frames::accepted_frame(&seqs)),
            ws_acks::Answer::Unavailable(message, seqs) => self.unavailable(&message, &seqs),
        }
    }

    /// `store_unavailable` for `seqs` (counted like every error sent).
    fn unavailable(&self, message: &str, seqs: &SeqRanges) {
        let code = ErrorCode::StoreUnavailable;
        self.hub.metrics().error(code);
        self.send(frames::readings_error_frame(code, message, seqs));
    }

    /// Takes one token for a message that is not a batch of readings; without one, the
    /// message is dropped (it would have been answered with `code`) and false returned.
    pub(super) fn charge_one(&mut self, code: ErrorCode, id: Option<&str>) -> bool {
        if self.bucket.take(1) == 1 {
            return true;
        }
        self.throttled(code, id);
        false
    }

    /// One `rate_limited` notice a second at most for a client over its rate limit. The
    /// message itself (whose answer would have had `code`) gets nothing either way: it
    /// counts as suppressed, and `errors_total` counts only the notices actually sent.
    fn throttled(&mut self, code: ErrorCode, id: Option<&str>) {
        self.hub.metrics().error_suppressed(code);
        let now = Instant::now();
        if self
            .last_flood_notice
            .is_some_and(|t| now.duration_since(t) < FLOOD_NOTICE_INTERVAL)
        {
            return;
        }
        self.last_flood_notice = Some(now);
        let notice = ProtoError::new(
            ErrorCode::RateLimited,
            "messages over the rate limit are dropped without further answers",
        );
        self.reply_error(match id {
            Some(id) => notice.with_id(id),
            None => notice,
        });
    }

    pub(super) fn reply_error(&self, e: ProtoError) {
        self.hub.metrics().error(e.code);
        self.send(frames::error_frame(&e));
    }

    /// Queues a frame for this client; a client that does not read its own replies is
    /// as slow a consumer as any other.
    pub(super) fn send(&self, frame: Frame) {
        if self.mailbox.push(frame) == Push::Full {
            self.mailbox.close(Close::SLOW_CONSUMER);
            self.hub.metrics().slow_consumer();
        }
    }
}
