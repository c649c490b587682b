//! The stable codes of the protocol: [`ErrorCode`] for `{"type":"error"}` frames, and
//! [`close`] for the WebSocket close codes the hub sends. `docs/PROTOCOL.md` lists both
//! tables, and a test keeps it in step with this module.

/// The stable codes of `{"type":"error"}` frames. Their order is the order of
/// [`ErrorCode::ALL`], which the hub uses for its per-code counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not JSON, or not a JSON object.
    InvalidJson,
    /// `type` is missing or not one of `reading`, `readings`, `command`, `ack`.
    UnknownType,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or breaks its rule.
    InvalidField,
    /// `value` is NaN, an infinity, or outside the range of a 64-bit float.
    NonFiniteValue,
    /// A reading or ack from a dashboard, or a command from a device.
    WrongRole,
    /// A binary frame; telehub speaks JSON text frames.
    BinaryNotSupported,
    /// A `readings` batch over `limits.max_batch` items.
    BatchTooLarge,
    /// The client passed its rate limit.
    RateLimited,
    /// A command to a client that is not a device connected to the room.
    UnknownDevice,
    /// An ack whose `id` is not a pending command of the room.
    UnknownCommand,
    /// A command whose `id` is already pending in the room.
    DuplicateId,
    /// The room already has `limits.max_pending_commands` pending commands.
    TooManyPending,
    /// The reading would create a series past `history.max_series`.
    SeriesLimit,
    /// The readings listed in `seqs` were fanned out but are not stored (the history
    /// store's queue is full or its commits fail): keep them and resend later.
    StoreUnavailable,
    /// With `[cluster]`: a command for a device on another hub could not be routed
    /// (Redis unreachable or timed out). The device may be connected: try again.
    ClusterUnavailable,
}

impl ErrorCode {
    /// Every code, in [`ErrorCode::index`] order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::InvalidJson,
        ErrorCode::UnknownType,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::NonFiniteValue,
        ErrorCode::WrongRole,
        ErrorCode::BinaryNotSupported,
        ErrorCode::BatchTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::UnknownDevice,
        ErrorCode::UnknownCommand,
        ErrorCode::DuplicateId,
        ErrorCode::TooManyPending,
        ErrorCode::SeriesLimit,
        ErrorCode::StoreUnavailable,
        ErrorCode::ClusterUnavailable,
    ];

    /// The wire name, as in `"code":"invalid_json"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::NonFiniteValue => "non_finite_value",
            ErrorCode::WrongRole => "wrong_role",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnknownDevice => "unknown_device",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::DuplicateId => "duplicate_id",
            ErrorCode::TooManyPending => "too_many_pending",
            ErrorCode::SeriesLimit => "series_limit",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
        }
    }

    /// The code with wire name `s`, if any (for clients reading `error` frames).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Position in [`ErrorCode::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// WebSocket close codes (RFC 6455 section 7.4.1, plus telehub's own 4000 and 4001) that the hub
/// sends, and the reasons it sends with them.
pub mod close {
    /// Normal close, either side (also the echo of a client close without a code).
    pub const NORMAL: u16 = 1000;
    /// Going away: the hub is shutting down (`server shutting down`), or the client sent
    /// nothing for two ping intervals (`ping timeout`).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke RFC 6455 (unmasked client frame, reserved bits, bad control frame).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame or close reason that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame or message over `limits.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// Slow consumer: the client's outbound queue filled up; reconnect with `since`.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Policy violation: a token sent in an `auth` frame was refused (`unauthorized`,
    /// `forbidden`), or none came within 5 s of the upgrade (`unauthorized`).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A newer connection with the same (room, client) took over (telehub's own code).
    pub const REPLACED: u16 = 4000;
    /// The connection's token reached its `exp` without a fresh `auth` (telehub's own).
    pub const TOKEN_EXPIRED: u16 = 4001;

    /// Reason sent with [`GOING_AWAY`] when the hub stops.
    pub const REASON_SHUTTING_DOWN: &str = "server shutting down";
    /// Reason sent with [`GOING_AWAY`] when the client stopped answering pings.
    pub const REASON_PING_TIMEOUT: &str = "ping timeout";
    /// Reason sent with [`PROTOCOL_ERROR`].
    pub const REASON_PROTOCOL_ERROR: &str = "protocol error";
    /// Reason sent with [`INVALID_PAYLOAD`].
    pub const REASON_INVALID_UTF8: &str = "invalid utf-8";
    /// Reason sent with [`TOO_BIG`].
    pub const REASON_TOO_BIG: &str = "frame too large";
    /// Reason sent with [`TRY_AGAIN_LATER`].
    pub const REASON_SLOW_CONSUMER: &str = "slow consumer";
    /// Reason sent with [`REPLACED`].
    pub const REASON_REPLACED: &str = "replaced";
    /// Reason sent with [`POLICY_VIOLATION`]: no token, or a bad one.
    pub const REASON_UNAUTHORIZED: &str = "unauthorized";
    /// Reason sent with [`POLICY_VIOLATION`]: a valid token without this room, role or id.
    pub const REASON_FORBIDDEN: &str = "forbidden";
    /// Reason sent with [`TRY_AGAIN_LATER`] when a join after a first-frame `auth` finds
    /// the room at `limits.max_members_per_room`.
    pub const REASON_ROOM_FULL: &str = "room full";
    /// Reason sent with [`TRY_AGAIN_LATER`] when a join after a first-frame `auth` would
    /// pass `limits.max_rooms`.
    pub const REASON_TOO_MANY_ROOMS: &str = "too many rooms";
    /// Reason sent with [`TRY_AGAIN_LATER`] by a cluster hub that saw a gap in a room's
    /// offsets, or a new epoch: reconnect with `since` and `epoch`.
    pub const REASON_CLUSTER_RESYNC: &str = "cluster resync";
    /// Reason sent with [`TRY_AGAIN_LATER`] by a cluster hub that cannot reach Redis to
    /// complete a dashboard's join.
    pub const REASON_CLUSTER_UNAVAILABLE: &str = "cluster unavailable";
    /// Reason sent with [`TOKEN_EXPIRED`].
    pub const REASON_TOKEN_EXPIRED: &str = "token expired";

    /// Whether a peer may send `code` in a close frame (RFC 6455 section 7.4): 1000 to
    /// 1003 and 1007 to 1011, 1012 to 1014 registered with IANA since, and the registered
    /// and private range 3000 to 4999. 1005, 1006 and 1015 are for reporting only and
    /// never go on the wire; a close frame with any other code is a protocol error (the
    /// hub answers 1002).
    pub const fn valid_to_receive(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// Every (code, reason) the hub sends; [`NORMAL`] goes without a reason.
    pub const ALL: [(u16, &str); 15] = [
        (NORMAL, ""),
        (GOING_AWAY, REASON_SHUTTING_DOWN),
        (GOING_AWAY, REASON_PING_TIMEOUT),
        (PROTOCOL_ERROR, REASON_PROTOCOL_ERROR),
        (INVALID_PAYLOAD, REASON_INVALID_UTF8),
        (TOO_BIG, REASON_TOO_BIG),
        (POLICY_VIOLATION, REASON_UNAUTHORIZED),
        (POLICY_VIOLATION, REASON_FORBIDDEN),
        (TRY_AGAIN_LATER, REASON_SLOW_CONSUMER),
        (TRY_AGAIN_LATER, REASON_ROOM_FULL),
        (TRY_AGAIN_LATER, REASON_TOO_MANY_ROOMS),
        (TRY_AGAIN_LATER, REASON_CLUSTER_RESYNC),
        (TRY_AGAIN_LATER, REASON_CLUSTER_UNAVAILABLE),
        (REPLACED, REASON_REPLACED),
        (TOKEN_EXPIRED, REASON_TOKEN_EXPIRED),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_the_position_in_all_and_names_parse_back() {
        for (i, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(code.index(), i);
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("internal"), None);
    }
}
