//! Token mode on a WebSocket connection: the wait for a browser's first-frame `auth`
//! before it joins its room ([`await_auth`]), and the token's clock that the session's one
//! timer watches (`token_expiring`, close 4001 at `exp`, refreshes at most once per
//! [`REFRESH_MIN_INTERVAL`]).

use std::time::Duration;

use tokio::time::Instant;

use crate::auth::{time_left, Answer, Authorizer, Grant, Refusal};
use crate::hub::mailbox::Close;
use crate::hub::room::Since;
use crate::hub::{Hub, JoinError, Membership};
use crate::net::transport::{WsRead, WsWrite};
use crate::net::ws::codec::{Decoder, Message};
use crate::shutdown::Shutdown;
use crate::sinks::ws_writer::{send_close, Unsent};
use telehub_protocol::codes::close;
use telehub_protocol::inbound::ClientMessage;
use telehub_protocol::role::Via;

use super::{PendingJoin, CLOSE_ECHO_TIMEOUT};

/// How long a connection without `Authorization` (token mode) has to send its `auth`.
pub(crate) const AUTH_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long before its token's `exp` a connection is sent `token_expiring`.
const EXPIRY_WARNING: Duration = Duration::from_secs(30);
/// Refreshes (`auth` frames on a live connection) verified at most this often.
pub(super) const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The furthest a token's expiry is armed; a later `exp` (up to `u64::MAX` seconds) would
/// overflow the clock.
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// A first-frame `auth` or a refresh was refused: no token, or a bad one.
pub(super) const CLOSE_UNAUTHORIZED: Close = Close {
    code: close::POLICY_VIOLATION,
    reason: close::REASON_UNAUTHORIZED,
    flush_first: false,
};
/// A valid token without this room, role or client id (or a narrower refresh).
pub(super) const CLOSE_FORBIDDEN: Close = Close {
    code: close::POLICY_VIOLATION,
    reason: close::REASON_FORBIDDEN,
    flush_first: false,
};
/// The token reached `exp` without a refresh.
pub(super) const CLOSE_TOKEN_EXPIRED: Close = Close {
    code: close::TOKEN_EXPIRED,
    reason: close::REASON_TOKEN_EXPIRED,
    flush_first: false,
};

/// A connection's token and the two moments the timer watches for it.
pub(super) struct TokenClock {
    pub(super) grant: Grant,
    /// When `token_expiring` is due; `None` once sent.
    pub(super) warn_at: Option<Instant>,
    pub(super) expires_at: Instant,
    /// When this token replaced the one before (refreshes are verified at most once per
    /// [`REFRESH_MIN_INTERVAL`]).
    pub(super) renewed: Option<Instant>,
}

impl TokenClock {
    pub(super) fn new(grant: Grant) -> TokenClock {
        let now = Instant::now();
        let left = time_left(grant.exp).unwrap_or_default().min(MAX_TOKEN_LIFE);
        let expires_at = now + left;
        let warn_at = expires_at
            .checked_sub(EXPIRY_WARNING)
            .map_or(now, |t| t.max(now));
        TokenClock {
            grant,
            warn_at: Some(warn_at),
            expires_at,
            renewed: None,
        }
    }
}

/// When the one timer must next wake: the next ping, or a token's moment if sooner.
pub(super) fn wake_at(next_ping: Instant, token: Option<&TokenClock>) -> Instant {
    match token {
        Some(t) => next_ping.min(t.warn_at.unwrap_or(t.expires_at).min(t.expires_at)),
        None => next_ping,
    }
}

/// The socket's read and write halves and its decoder, as the auth phase borrows them.
pub(super) type Io<'a, R, W> = (&'a mut R, &'a mut W, &'a mut Decoder);

/// Token mode, no `Authorization` header: waits for the first frame's `auth`, sending
/// nothing, and joins the room once its token grants it. Any other first frame, a bad
/// token or none within [`AUTH_FRAME_TIMEOUT`] closes with 1008; `None` means the
/// connection is over.
pub(super) async fn await_auth<R: WsRead, W: WsWrite>(
    (read, write, decoder): Io<'_, R, W>,
    pending: PendingJoin,
    hub: &Hub,
    auth: &Authorizer,
    shutdown: &mut Shutdown,
) -> Option<(Membership, Grant)> {
    let deadline = Instant::now() + AUTH_FRAME_TIMEOUT;
    let decided: Result<Grant, Refusal> = loop {
        tokio::select! {
            msg = decoder.next(read) => match msg {
                Ok(Message::Text(text)) => {
                    break match telehub_protocol::inbound::parse(&text, 1) {
                        Ok(ClientMessage::Auth(a)) => auth.verify(&a.token).and_then(|g| {
                            let p = &pending;
                            g.may_join(&p.room, &p.client, p.role)
                                .and_then(|()| {
                                    let taken = !g.is_admin()
                                        && hub.held_by_other_role(&p.room, &p.client, p.role);
                                    if taken { Err(Refusal::ForbiddenClient) } else { Ok(()) }
                                })
                                .map_err(|r| auth.refuse(r))
                                .map(|()| g)
                        }),
                        _ => Err(auth.refuse(Refusal::MissingToken)),
                    }
                }
                // Control frames get no answer either: nothing leaves before the token.
                Ok(Message::Ping(_) | Message::Pong) => continue,
                Ok(Message::Binary(_)) => break Err(auth.refuse(Refusal::MissingToken)),
                Ok(Message::Close(code)) => {
                    send_close(write, &mut Unsent::default(), Close::answer(code)).await;
                    return None;
                }
                Err(e) => {
                    if let Some(code) = e.close_code() {
                        send_close(write, &mut Unsent::default(), Close::refuse(code)).await;
                    }
                    return None;
                }
            },
            _ = tokio::time::sleep_until(deadline) => break Err(auth.refuse(Refusal::AuthTimeout)),
            _ = shutdown.recv() => {
                send_close(write, &mut Unsent::default(), Close::GOING_AWAY).await;
                return None;
            }
        }
    };
    let refused = match decided {
        Ok(grant) => {
            let since = pending.since.map(|offset| Since {
                offset,
                epoch: pending.epoch.as_deref(),
            });
            match hub.join(
                &pending.room,
                &pending.client,
                pending.role,
                Via::Ws,
                pending.presence,
                pending.overflow,
                since,
            ) {
                Ok(membership) => return Some((membership, grant)),
                Err(e) => {
                    hub.metrics().rejected(e.rejection());
                    let reason = match e {
                        JoinError::RoomFull => close::REASON_ROOM_FULL,
                        JoinError::TooManyRooms => close::REASON_TOO_MANY_ROOMS,
                    };
                    Close {
                        code: close::TRY_AGAIN_LATER,
                        reason,
                        flush_first: false,
                    }
                }
            }
        }
        Err(r) if r.answer() == Answer::Unauthorized => CLOSE_UNAUTHORIZED,
        Err(_) => CLOSE_FORBIDDEN,
    };
    send_close(write, &mut Unsent::default(), refused).await;
    // Let the peer's answering close arrive before the socket goes, so it sees our
    // close frame rather than a reset.
    let _ = tokio::time::timeout(CLOSE_ECHO_TIMEOUT, decoder.next(read)).await;
    None
}
