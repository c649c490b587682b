//! `[cluster]`: several hubs sharing rooms through one Redis (see `src/cluster/`). An empty
//! `redis_url` is a single hub, exactly as without the section.

use serde::{Deserialize, Serialize};

/// `[cluster]`: the Redis every hub of a deployment shares, and how rooms live in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://[user:password@]host:port[/db]` or `rediss://...` (TLS). Empty: a single
    /// hub, today's behaviour. It may hold a password, so it is never logged.
    pub redis_url: String,
    /// Every key and channel starts with `{key_prefix}:`, so two deployments can share
    /// one Redis.
    pub key_prefix: String,
    /// This hub's name in `/api/rooms`, `/metrics` and logs. Empty: the host name plus
    /// a random suffix.
    pub node_id: String,
    /// How long a dead hub's members stay in presence at most (see
    /// `src/cluster/presence.rs`); hubs refresh their entries every quarter of it.
    pub presence_ttl_ms: u64,
    /// Readings kept per room in its Redis stream (`XADD MAXLEN`): the recovery window
    /// of a dashboard that reconnects to any hub with `since`/`epoch`.
    pub stream_len: u64,
    /// A room's stream expires after it has been idle this long, in milliseconds.
    pub stream_ttl_ms: u64,
    /// A room's epoch and offset (and its last values) expire after it has been idle
    /// this long, in milliseconds: far longer than the stream, so a stale `since` meets
    /// a known epoch and a missing stream, and is told `recovered: false`.
    pub meta_ttl_ms: u64,
    /// How long a device's `(device, seq)` is remembered for dropping its resends.
    pub dedup_ttl_ms: u64,
    /// The lease of a room's keeper, the one hub that stores its readings in its history
    /// and SQLite and answers its history queries (see `src/cluster/keeper.rs`): renewed
    /// every quarter of it, so a dead keeper's rooms move to another hub after at most
    /// this long. Its stream must hold that long's readings (`stream_len`), or the
    /// new keeper cannot store what the stream trimmed meanwhile.
    pub keeper_lease_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis_url: String::new(),
            key_prefix: "telehub".to_string(),
            node_id: String::new(),
            presence_ttl_ms: 60_000,
            stream_len: 1_000,
            stream_ttl_ms: 600_000,
            meta_ttl_ms: 30 * 24 * 3_600_000,
            dedup_ttl_ms: 600_000,
            keeper_lease_ms: 5_000,
        }
    }
}

impl ClusterConfig {
    /// Whether this hub is one of several (a Redis URL is set).
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }

    /// Checks what types alone cannot. The URL's own syntax is checked by the Redis
    /// client at start-up (without echoing it: it may hold a password).
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled() {
            return Ok(());
        }
        if !(self.redis_url.starts_with("redis://") || self.redis_url.starts_with("rediss://")) {
            return Err((
                "cluster.redis_url",
                "must start with redis:// or rediss:// (or be empty for a single hub)".into(),
            ));
        }
        if redis::Client::open(self.redis_url.as_str()).is_err() {
            return Err(("cluster.redis_url", "is not a valid Redis URL".into()));
        }
        let id_ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if self.key_prefix.is_empty() || self.key_prefix.len() > 64 || !id_ok(&self.key_prefix) {
            return Err((
                "cluster.key_prefix",
                "must be 1 to 64 characters of A-Za-z0-9_.-".into(),
            ));
        }
        if self.node_id.len() > 64 || !id_ok(&self.node_id) {
            return Err((
                "cluster.node_id",
                "must be at most 64 characters of A-Za-z0-9_.-".into(),
            ));
        }
        if self.presence_ttl_ms < 1_000 {
            return Err(("cluster.presence_ttl_ms", "must be at least 1000".into()));
        }
        if !(1_000..=3_600_000).contains(&self.keeper_lease_ms) {
            return Err(("cluster.keeper_lease_ms", "must be 1000 to 3600000".into()));
        }
        if !(1..=1_000_000).contains(&self.stream_len) {
            return Err(("cluster.stream_len", "must be 1 to 1000000".into()));
        }
        for (key, v) in [
            ("cluster.stream_ttl_ms", self.stream_ttl_ms),
            ("cluster.meta_ttl_ms", self.meta_ttl_ms),
            ("cluster.dedup_ttl_ms", self.dedup_ttl_ms),
        ] {
            if v < 1_000 {
                return Err((key, "must be at least 1000".into()));
            }
        }
        if self.meta_ttl_ms < self.stream_ttl_ms {
            return Err((
                "cluster.meta_ttl_ms",
                "must be at least cluster.stream_ttl_ms (an epoch must outlive its stream)".into(),
            ));
        }
        Ok(())
    }
}
