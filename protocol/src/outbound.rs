//! Hub → client: every message the hub sends, as one [`ServerMessage`].
//!
//! The hub builds them from borrowed data (`Cow::Borrowed` everywhere, slices for lists)
//! and serialises each once into its frame: building one allocates nothing, and the bytes
//! are those `docs/PROTOCOL.md` shows (`type` first, then the fields in the documented
//! order, optional fields left out when absent). Clients deserialise the same types:
//! strings borrow from the frame unless they hold JSON escapes; command `args` and ack
//! `result` are copied out as raw JSON. A client that only routes frames by type (and must
//! not allocate per frame) reads a [`Peek`] instead.

use std::borrow::Cow;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::role::{Role, Via};
use crate::seqs::SeqRanges;

/// Any message the hub sends. Serialises as `{"type":"<variant>", ...fields}`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// The first frame of every connection.
    Welcome(Welcome<'a>),
    /// The last value of every series (dashboards, right after `welcome`).
    Snapshot(Snapshot<'a>),
    /// Another member joined or left the room.
    Presence(Presence<'a>),
    /// A reading, as dashboards receive it (live or replayed).
    Reading(Reading<'a>),
    /// A command, as the device receives it.
    Command(Command<'a>),
    /// A device's ack, as the commanding dashboard receives it.
    Ack(Ack<'a>),
    /// The readings of a device message up to `seq` are in (devices with `acks=true`).
    Accepted(Accepted),
    /// Something the client sent was refused; the connection stays open.
    Error(ErrorMsg<'a>),
    /// The connection's token expires at `exp` (sent 30 s before): send a fresh `auth`.
    TokenExpiring(TokenExpiring),
    /// A dashboard with `overflow=latest` fell behind: `count` readings between
    /// `from_offset` and `to_offset` were never sent to it (their series' latest were).
    Skipped(Skipped),
    /// An alert instance of the room changed state (pending, firing, resolved).
    Alert(Alert<'a>),
}

/// `alert`: one transition of one alert instance (rule, room, device, metric).
#[derive(Debug, Clone, Serialize)]
pub struct Alert<'a> {
    /// The rule's id.
    pub rule: Cow<'a, str>,
    /// The room of the series.
    pub room: Cow<'a, str>,
    /// The device of the series.
    pub device: Cow<'a, str>,
    /// The metric of the series.
    pub metric: Cow<'a, str>,
    /// `pending`, `firing` or `resolved`.
    pub state: Cow<'a, str>,
    /// The value that made the transition (the last one seen, for `stale`).
    pub value: f64,
    /// When the instance entered `state`, epoch milliseconds.
    pub since: i64,
    /// `info`, `warning` or `critical`.
    pub severity: Cow<'a, str>,
    /// Who acknowledged the instance (sent again, unchanged otherwise, when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked_by: Option<Cow<'a, str>>,
    /// When it was acknowledged, epoch milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked_at: Option<i64>,
}

/// `skipped`: what a coalescing dashboard did not see, sent right after the latest
/// readings that replaced them. The range can be fetched from the history API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The lowest offset of a reading not sent.
    pub from_offset: u64,
    /// The highest offset of a reading not sent.
    pub to_offset: u64,
    /// Readings not sent (readings of other series in the range were).
    pub count: u64,
}

/// `token_expiring`: the token's `exp` (seconds since the epoch, as in the JWT); without
/// a fresh `auth` the hub closes the connection then with 4001 `token expired`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenExpiring {
    /// The token's `exp` claim, in seconds since the epoch.
    pub exp: u64,
}

/// `welcome`.
#[derive(Debug, Clone, Serialize)]
pub struct Welcome<'a> {
    /// The room joined.
    pub room: Cow<'a, str>,
    /// The client's own id.
    pub client: Cow<'a, str>,
    /// The client's role.
    pub role: Role,
    /// The room's latest reading offset (0 when it has none yet).
    pub offset: u64,
    /// Names the offset sequence; a new epoch means the offsets started over.
    pub epoch: Cow<'a, str>,
    /// The other members whose presence this client receives: the devices, and with
    /// `?presence=all` the dashboards too.
    pub members: Cow<'a, [MemberInfo<'a>]>,
    /// How many other dashboards are in the room (listed in `members` only with
    /// `?presence=all`).
    pub dashboards: u64,
    /// With `since`: whether every reading after it is replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// One member as listed in `welcome` (and the hub's `/api/rooms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo<'a> {
    /// Its client id. Ids never need JSON escapes, so this always borrows.
    pub client: &'a str,
    /// Its role.
    pub role: Role,
    /// How it reaches the hub.
    pub via: Via,
}

/// `snapshot`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot<'a> {
    /// One entry per series, sorted by device, then metric.
    pub series: Cow<'a, [SnapshotEntry<'a>]>,
}

/// One series' last value in a `snapshot`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotEntry<'a> {
    /// The device.
    #[serde(borrow)]
    pub device: Cow<'a, str>,
    /// The metric.
    #[serde(borrow)]
    pub metric: Cow<'a, str>,
    /// Its last value.
    pub value: f64,
    /// Its unit, if the device gave one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unit: Option<Cow<'a, str>>,
    /// Timestamp of that value, epoch ms.
    pub ts: i64,
    /// Offset of that reading in the room.
    pub offset: u64,
}

/// `presence`.
#[derive(Debug, Clone, Serialize)]
pub struct Presence<'a> {
    /// `join` or `leave`.
    pub event: Cow<'a, str>,
    /// Who.
    pub client: Cow<'a, str>,
    /// Its role.
    pub role: Role,
    /// How it reaches the hub.
    pub via: Via,
}

/// `reading`, to dashboards.
#[derive(Debug, Clone, Serialize)]
pub struct Reading<'a> {
    /// The room.
    pub room: Cow<'a, str>,
    /// The sender's client id.
    pub device: Cow<'a, str>,
    /// The metric.
    pub metric: Cow<'a, str>,
    /// The value (always finite).
    pub value: f64,
    /// The unit, when the device gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<Cow<'a, str>>,
    /// Epoch milliseconds (the device's, or the hub's receive time).
    pub ts: i64,
    /// The device's seq, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Rises by one per reading in the room.
    pub offset: u64,
}

/// `command`, to a device. Over MQTT this object without `type` is the payload of
/// `telehub/{room}/{device}/cmd`, which is why it also deserialises on its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Command<'a> {
    /// The dashboard's id for it; echo it in the ack.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The dashboard that sent it.
    #[serde(borrow, default)]
    pub from: Cow<'a, str>,
    /// What to do.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// Arguments as the dashboard sent them (`{}` when it sent none).
    #[serde(default = "empty_args")]
    pub args: Cow<'a, RawValue>,
}

/// `ack`, to the commanding dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct Ack<'a> {
    /// The command's id.
    pub id: Cow<'a, str>,
    /// The device that answered.
    pub from: Cow<'a, str>,
    /// Whether it was carried out.
    pub ok: bool,
    /// What the device reported, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Cow<'a, RawValue>>,
}

/// `accepted`, to devices with `acks=true`: the hub keeps exactly the readings whose seq
/// `seqs` lists (committed to disk with `history.ack = "durable"`), and a device may
/// forget those and no others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The highest seq in `seqs` (kept for older devices; not a watermark: seqs below it
    /// that `seqs` does not list were not accepted).
    pub seq: u64,
    /// How many readings `seqs` covers.
    pub count: usize,
    /// The seqs accepted, as inclusive ranges (duplicates of kept readings included).
    pub seqs: SeqRanges,
}

/// `error`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorMsg<'a> {
    /// The stable code (`ErrorCode::as_str`).
    pub code: Cow<'a, str>,
    /// What was wrong.
    pub message: Cow<'a, str>,
    /// The command id the error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    /// The readings the error is about, by seq (`store_unavailable`: keep them, resend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seqs: Option<SeqRanges>,
}

fn empty_args() -> Cow<'static, RawValue> {
    Cow::Owned(RawValue::from_string("{}".to_string()).unwrap_or_else(|_| unreachable_args()))
}

#[cold]
fn unreachable_args() -> Box<RawValue> {
    // `{}` is valid JSON, so this is never called; `null` keeps it total anyway.
    serde_json::value::to_raw_value(&()).unwrap_or_default()
}

impl<'a> ServerMessage<'a> {
    /// Parses one frame's JSON text.
    pub fn from_json(text: &'a str) -> Result<ServerMessage<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The JSON text (the hub writes straight into its frame buffer instead).
    pub fn to_json(&self) -> String {
        // Strings, integers, raw JSON and finite floats: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The `type` of this message.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Welcome(_) => "welcome",
            ServerMessage::Snapshot(_) => "snapshot",
            ServerMessage::Presence(_) => "presence",
            ServerMessage::Reading(_) => "reading",
            ServerMessage::Command(_) => "command",
            ServerMessage::Ack(_) => "ack",
            ServerMessage::Accepted(_) => "accepted",
            ServerMessage::Error(_) => "error",
            ServerMessage::TokenExpiring(_) => "token_expiring",
            ServerMessage::Skipped(_) => "skipped",
            ServerMessage::Alert(_) => "alert",
        }
    }
}

const KINDS: &[&str] = &[
    "welcome",
    "snapshot",
    "presence",
    "reading",
    "command",
    "ack",
    "accepted",
    "error",
    "token_expiring",
    "skipped",
    "alert",
];

/// A string that borrows from the input unless it holds escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// Every field any server message carries. A plain struct, not serde's internally tagged
/// enum: that one buffers the object first, and raw JSON (`args`, `result`) cannot be
/// read back from such a buffer.
#[derive(Deserialize)]
struct Any<'a> {
    #[serde(rename = "type", borrow)]
    kind: Text<'a>,
    #[serde(borrow, default)]
    room: Option<Text<'a>>,
    #[serde(borrow, default)]
    client: Option<Text<'a>>,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    via: Option<Via>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<Text<'a>>,
    #[serde(borrow, default)]
    members: Option<Vec<MemberInfo<'a>>>,
    #[serde(default)]
    dashboards: Option<u64>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(borrow, default)]
    series: Option<Vec<SnapshotEntry<'a>>>,
    #[serde(borrow, default)]
    event: Option<Text<'a>>,
    #[serde(borrow, default)]
    device: Option<Text<'a>>,
    #[serde(borrow, default)]
    metric: Option<Text<'a>>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(borrow, default)]
    unit: Option<Text<'a>>,
    #[serde(default)]
    ts: Option<i64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    id: Option<Text<'a>>,
    #[serde(borrow, default)]
    from: Option<Text<'a>>,
    #[serde(borrow, default)]
    name: Option<Text<'a>>,
    #[serde(default)]
    args: Option<Box<RawValue>>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    count: Option<usize>,
    #[serde(default)]
    seqs: Option<SeqRanges>,
    #[serde(borrow, default)]
    code: Option<Text<'a>>,
    #[serde(borrow, default)]
    message: Option<Text<'a>>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    from_offset: Option<u64>,
    #[serde(default)]
    to_offset: Option<u64>,
    #[serde(borrow, default)]
    rule: Option<Text<'a>>,
    #[serde(borrow, default)]
    state: Option<Text<'a>>,
    #[serde(default)]
    since: Option<i64>,
    #[serde(borrow, default)]
    severity: Option<Text<'a>>,
    #[serde(borrow, default)]
    acked_by: Option<Text<'a>>,
    #[serde(default)]
    acked_at: Option<i64>,
}

fn need<T, E: de::Error>(v: Option<T>, field: &'static str) -> Result<T, E> {
    v.ok_or_else(|| E::missing_field(field))
}

fn text<'a, E: de::Error>(v: Option<Text<'a>>, field: &'static str) -> Result<Cow<'a, str>, E> {
    need(v, field).map(|t| t.0)
}

impl<'de: 'a, 'a> Deserialize<'de> for ServerMessage<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = Any::deserialize(d)?;
        Ok(match f.kind.0.as_ref() {
            "welcome" => ServerMessage::Welcome(Welcome {
                room: text(f.room, "room")?,
                client: text(f.client, "client")?,
                role: need(f.role, "role")?,
                offset: need(f.offset, "offset")?,
                epoch: text(f.epoch, "epoch")?,
                members: Cow::Owned(need(f.members, "members")?),
                // Hubs before the count sent every member instead.
                dashboards: f.dashboards.unwrap_or(0),
                recovered: f.recovered,
            }),
            "snapshot" => ServerMessage::Snapshot(Snapshot {
                series: Cow::Owned(need(f.series, "series")?),
            }),
            "presence" => ServerMessage::Presence(Presence {
                event: text(f.event, "event")?,
                client: text(f.client, "client")?,
                role: need(f.role, "role")?,
                via: need(f.via, "via")?,
            }),
            "reading" => ServerMessage::Reading(Reading {
                room: text(f.room, "room")?,
                device: text(f.device, "device")?,
                metric: text(f.metric, "metric")?,
                value: need(f.value, "value")?,
                unit: f.unit.map(|t| t.0),
                ts: need(f.ts, "ts")?,
                seq: f.seq,
                offset: need(f.offset, "offset")?,
            }),
            "command" => ServerMessage::Command(Command {
                id: text(f.id, "id")?,
                from: f.from.map(|t| t.0).unwrap_or_default(),
                name: text(f.name, "name")?,
                args: f.args.map(Cow::Owned).unwrap_or_else(empty_args),
            }),
            "ack" => ServerMessage::Ack(Ack {
                id: text(f.id, "id")?,
                from: text(f.from, "from")?,
                ok: need(f.ok, "ok")?,
                result: f.result.map(Cow::Owned),
            }),
            "accepted" => ServerMessage::Accepted(Accepted {
                seq: need(f.seq, "seq")?,
                count: need(f.count, "count")?,
                seqs: need(f.seqs, "seqs")?,
            }),
            "error" => ServerMessage::Error(ErrorMsg {
                code: text(f.code, "code")?,
                message: text(f.message, "message")?,
                id: f.id.map(|t| t.0),
                seqs: f.seqs,
            }),
            "token_expiring" => ServerMessage::TokenExpiring(TokenExpiring {
                exp: need(f.exp, "exp")?,
            }),
            "skipped" => ServerMessage::Skipped(Skipped {
                from_offset: need(f.from_offset, "from_offset")?,
                to_offset: need(f.to_offset, "to_offset")?,
                count: need(f.count, "count")? as u64,
            }),
            "alert" => ServerMessage::Alert(Alert {
                rule: text(f.rule, "rule")?,
                room: text(f.room, "room")?,
                device: text(f.device, "device")?,
                metric: text(f.metric, "metric")?,
                state: text(f.state, "state")?,
                value: need(f.value, "value")?,
                since: need(f.since, "since")?,
                severity: text(f.severity, "severity")?,
                acked_by: f.acked_by.map(|t| t.0),
                acked_at: f.acked_at,
            }),
            other => return Err(de::Error::unknown_variant(other, KINDS)),
        })
    }
}

/// The few fields of a hub frame a client needs to route it, read without allocating:
/// every other field is skipped unparsed. Frames whose `type`, `device` or `code` hold
/// JSON escapes fail to parse (the hub never sends such: they are fixed names and ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Peek<'a> {
    /// `type`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// `device` (readings).
    #[serde(default)]
    pub device: Option<&'a str>,
    /// `seq` (readings, `accepted`).
    #[serde(default)]
    pub seq: Option<u64>,
    /// `code` (errors).
    #[serde(default)]
    pub code: Option<&'a str>,
}

impl<'a> Peek<'a> {
    /// Reads the routing fields of one frame's JSON text.
    pub fn from_json(text: &'a str) -> Result<Peek<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Cow<'_, str> {
        Cow::Borrowed(s)
    }

    #[test]
    fn serialises_the_documented_json() {
        let members = [MemberInfo {
            client: "t1",
            role: Role::Device,
            via: Via::Ws,
        }];
        let welcome = ServerMessage::Welcome(Welcome {
            room: b("greenhouse"),
            client: b("dash-1"),
            role: Role::Dashboard,
            offset: 1042,
            epoch: b("k3f9a2"),
            members: Cow::Borrowed(&members),
            dashboards: 2,
            recovered: Some(true),
        });
        assert_eq!(
            welcome.to_json(),
            r#"{"type":"welcome","room":"greenhouse","client":"dash-1","role":"dashboard","offset":1042,"epoch":"k3f9a2","members":[{"client":"t1","role":"device","via":"ws"}],"dashboards":2,"recovered":true}"#
        );
        let accepted = ServerMessage::Accepted(Accepted {
            seq: 17,
            count: 3,
            seqs: SeqRanges(vec![[14, 15], [17, 17]]),
        });
        assert_eq!(
            accepted.to_json(),
            r#"{"type":"accepted","seq":17,"count":3,"seqs":[[14,15],[17,17]]}"#
        );
    }

    #[test]
    fn every_message_round_trips() {
        let texts = [
            r#"{"type":"welcome","room":"greenhouse","client":"dash-1","role":"dashboard","offset":1042,"epoch":"k3f9a2","members":[{"client":"t1","role":"device","via":"ws"},{"client":"m","role":"device","via":"mqtt"}],"dashboards":1,"recovered":true}"#,
            r#"{"type":"welcome","room":"g","client":"d","role":"device","offset":0,"epoch":"e","members":[],"dashboards":0}"#,
            r#"{"type":"snapshot","series":[{"device":"t1","metric":"temperature","value":21.5,"unit":"°C","ts":1764000000000,"offset":1042},{"device":"t2","metric":"h","value":40.0,"ts":1,"offset":2}]}"#,
            r#"{"type":"presence","event":"join","client":"t1","role":"device","via":"ws"}"#,
            r#"{"type":"reading","room":"r","device":"d","metric":"m","value":1e+300,"unit":"a\\b\n","ts":5,"seq":18446744073709551615,"offset":18446744073709551615}"#,
            r#"{"type":"reading","room":"r","device":"d","metric":"m/x","value":-0.000123,"ts":-5,"offset":0}"#,
            r#"{"type":"command","id":"c-17","from":"dash-1","name":"set_interval","args":{"ms":500}}"#,
            r#"{"type":"ack","id":"c-17","from":"t1","ok":true,"result":{"ms":[1,2]}}"#,
            r#"{"type":"ack","id":"c-18","from":"t1","ok":false}"#,
            r#"{"type":"accepted","seq":17,"count":1,"seqs":[[17,17]]}"#,
            r#"{"type":"error","code":"rate_limited","message":"3 \"readings\" refused","id":"c-1"}"#,
            r#"{"type":"error","code":"store_unavailable","message":"not stored","seqs":[[3,9]]}"#,
            r#"{"type":"token_expiring","exp":1764000030}"#,
        ];
        for text in texts {
            let msg = ServerMessage::from_json(text).expect(text);
            assert_eq!(msg.to_json(), text);
            assert_eq!(Peek::from_json(text).map(|p| p.kind).ok(), Some(msg.kind()));
        }
    }

    #[test]
    fn unescaped_strings_borrow() {
        let text = r#"{"type":"reading","room":"r","device":"d","metric":"m","value":1,"unit":"a\"b","ts":5,"offset":0}"#;
        let Ok(ServerMessage::Reading(r)) = ServerMessage::from_json(text) else {
            panic!("not a reading")
        };
        assert!(matches!(r.device, Cow::Borrowed("d")));
        assert_eq!(r.unit.as_deref(), Some("a\"b"));
    }

    #[test]
    fn a_command_reads_without_type_and_without_args() {
        let c: Command = serde_json::from_str(
            r#"{"id":"c-17","from":"dash-1","name":"set_interval","args":{"ms":500}}"#,
        )
        .expect("mqtt shape");
        assert_eq!((c.id.as_ref(), c.args.get()), ("c-17", r#"{"ms":500}"#));
        let c: Command = serde_json::from_str(r#"{"id":"x","name":"reboot"}"#).expect("parses");
        assert_eq!((c.from.as_ref(), c.args.get()), ("", "{}"));
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for text in [
            "",
            "[]",
            r#"{"type":"dance"}"#,
            r#"{"type":"accepted","seq":1}"#,
            r#"{"type":"reading","room":"r"}"#,
            r#"{"type":7}"#,
            r#"{"type":"welcome","room":"g","client":"d","role":"admin","offset":0,"epoch":"e","members":[]}"#,
        ] {
            assert!(ServerMessage::from_json(text).is_err(), "{text}");
        }
        let peek = Peek::from_json(r#"{"type":"error","code":"rate_limited","message":"x"}"#)
            .expect("peek");
        assert_eq!(
            (peek.kind, peek.code, peek.seq),
            ("error", Some("rate_limited"), None)
        );
    }
}
