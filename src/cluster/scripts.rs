//! The Lua scripts every hub of a cluster runs in Redis, and the parsing of their
//! answers. Each runs atomically, so a room's offset order, stream order and PUBLISH
//! order are one order. Scripts go by SHA (`EVALSHA`); redis-rs loads one again when
//! Redis answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).
//!
//! Keys of a room, all with the room as hash tag (so Redis Cluster puts them in one
//! slot): `{prefix}:{room}:m` the meta hash (`e` epoch, `s` last offset), `:s` the stream
//! (entry id `<offset>-0`, field `d` the reading), `:lv` the last value per series,
//! `:dd:<device>:<seq>` a device's recent seqs, `:k` its keeper's lease (`keeper.rs`).
//! `{prefix}:{room}:c` is its channel.

use redis::Value;

/// One message of readings: creates the epoch if absent (a new epoch drops a stale
/// stream and last values), then for each reading drops a `(device, seq)` seen within
/// the dedup TTL (answer 0), refuses a new series past the room's cap (answer -1), or
/// takes the next offset, XADDs it with MAXLEN, updates the last value and PUBLISHes
/// `offset:epoch:payload`. Last it renews nothing but checks the room's keeper lease
/// (`keeper.rs`): absent or expired, this hub takes it. Answers `{epoch, 1 if this hub
/// is the room's keeper else 0, answer per reading}`.
///
/// KEYS: meta, stream, last values, keeper. ARGV: channel, epoch if new, MAXLEN, stream
/// TTL s, meta TTL s, dedup TTL s, dedup key prefix, max series, node, keeper lease ms,
/// n, then n × (seq or "", series field, payload).
pub(crate) const PUBLISH: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('DEL', KEYS[2], KEYS[3])
end
local out = {epoch}
local n = tonumber(ARGV[11])
for i = 0, n - 1 do
  local seq = ARGV[12 + i * 3]
  local field = ARGV[13 + i * 3]
  local payload = ARGV[14 + i * 3]
  local answer
  if seq ~= '' and not redis.call('SET', ARGV[7] .. seq, '1', 'NX', 'EX', ARGV[6]) then
    answer = 0
  elseif redis.call('HEXISTS', KEYS[3], field) == 0
      and redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[8]) then
    if seq ~= '' then redis.call('DEL', ARGV[7] .. seq) end
    answer = -1
  else
    answer = redis.call('HINCRBY', KEYS[1], 's', 1)
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], answer .. '-0', 'd', payload)
    redis.call('HSET', KEYS[3], field, answer .. ':' .. payload)
    redis.call('PUBLISH', ARGV[1], answer .. ':' .. epoch .. ':' .. payload)
  end
  out[#out + 1] = answer
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[5])
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local k = redis.call('HMGET', KEYS[4], 'n', 't', 'e')
local mine = 0
if k[1] == ARGV[9] and tonumber(k[2] or '0') >= now then
  mine = 1
elseif tonumber(k[2] or '0') < now then
  if k[3] ~= epoch then redis.call('HSET', KEYS[4], 'e', epoch, 'w', 0) end
  redis.call('HSET', KEYS[4], 'n', ARGV[9], 't', now + tonumber(ARGV[10]))
  mine = 1
end
redis.call('EXPIRE', KEYS[4], ARGV[5])
table.insert(out, 2, mine)
return out
"#;

/// What a dashboard's join reads: the room's epoch and last offset, the stream from
/// `since + 1` (when a `since` is given) and the last values, in one atomic call. A room
/// without an epoch gets one (and loses any stale stream and last values), as in
/// [`PUBLISH`].
///
/// It also reads the room's presence (see `presence.rs`): its version and the
/// unexpired members of every hub.
///
/// KEYS: meta, stream, last values, presence hash, presence expiries. ARGV: since (""
/// for none), COUNT, epoch if new, meta TTL s. Answers `{epoch, top, entries, last
/// values, presence version, {client, entry, ...}}`.
pub(crate) const FETCH: &str = r#"
local m = redis.call('HMGET', KEYS[1], 'e', 's', 'p')
if not m[1] then
  redis.call('HSET', KEYS[1], 'e', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('DEL', KEYS[2], KEYS[3])
  m = {ARGV[3], '0', m[3]}
end
local entries = {}
if ARGV[1] ~= '' and m[1] then
  entries = redis.call('XRANGE', KEYS[2], (tonumber(ARGV[1]) + 1) .. '-0', '+', 'COUNT', ARGV[2])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local members = {}
for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], now, '+inf')) do
  local e = redis.call('HGET', KEYS[4], c)
  if e then members[#members + 1] = c; members[#members + 1] = e end
end
return {m[1] or '', m[2] or '0', entries, redis.call('HGETALL', KEYS[3]), m[3] or '0', members}
"#;

/// The parsed answer of [`FETCH`].
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    /// The room's epoch.
    pub epoch: String,
    /// The room's last offset.
    pub top: u64,
    /// Stream entries from `since + 1` on, in offset order: (offset, reading JSON).
    pub entries: Vec<(u64, String)>,
    /// The last value of each series: (offset, reading JSON).
    pub last_values: Vec<(u64, String)>,
    /// The room's presence version: events up to it are in `members`.
    pub presence_version: u64,
    /// Every hub's unexpired members: (client, entry), sorted by client.
    pub members: Vec<(String, super::presence::Entry)>,
}

/// Why an answer was not what the script returns.
#[derive(Debug, thiserror::Error)]
#[error("unexpected answer from Redis: {0}")]
pub(crate) struct BadAnswer(pub(super) &'static str);

pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// `N-0` as `N`.
fn stream_offset(id: &str) -> Option<u64> {
    id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()
}

/// `offset:payload` as stored in the last-value hash.
fn split_offset(v: &str) -> Option<(u64, String)> {
    let (off, json) = v.split_once(':')?;
    Some((off.parse().ok()?, json.to_string()))
}

/// Parses [`PUBLISH`]'s answer: the epoch, whether this hub keeps the room, and one
/// answer per reading.
pub(crate) fn published(v: &Value) -> Result<(String, bool, Vec<i64>), BadAnswer> {
    let all = items(v).ok_or(BadAnswer("publish: not an array"))?;
    let [first, mine, rest @ ..] = all else {
        return Err(BadAnswer("publish: too short"));
    };
    let epoch = text(first).ok_or(BadAnswer("publish: epoch"))?;
    let keeper = matches!(mine, Value::Int(1));
    let answers = rest
        .iter()
        .map(|a| match a {
            Value::Int(i) => Ok(*i),
            _ => Err(BadAnswer("publish: offset")),
        })
        .collect::<Result<_, _>>()?;
    Ok((epoch, keeper, answers))
}

/// Parses an `XRANGE` answer: (offset, reading JSON) in stream order.
pub(crate) fn stream_entries(v: &Value) -> Result<Vec<(u64, String)>, BadAnswer> {
    let mut out = Vec::new();
    for entry in items(v).ok_or(BadAnswer("stream: entries"))? {
        let (id, fields) = match items(entry) {
            Some([id, fields]) => (id, fields),
            _ => return Err(BadAnswer("stream: entry")),
        };
        let offset = text(id)
            .and_then(|id| stream_offset(&id))
            .ok_or(BadAnswer("stream: entry id"))?;
        let fields = items(fields).ok_or(BadAnswer("stream: entry fields"))?;
        // Fields come as name, value pairs; the reading is under `d`.
        let payload = fields
            .chunks(2)
            .find(|kv| kv.first().and_then(text).as_deref() == Some("d"))
            .and_then(|kv| kv.get(1).and_then(text))
            .ok_or(BadAnswer("stream: entry payload"))?;
        out.push((offset, payload));
    }
    Ok(out)
}

/// Parses [`FETCH`]'s answer.
pub(crate) fn fetched(v: &Value) -> Result<Fetched, BadAnswer> {
    let all = items(v).ok_or(BadAnswer("fetch: not an array"))?;
    let [epoch, top, entries, lv, version, members] = all else {
        return Err(BadAnswer("fetch: six parts"));
    };
    let mut out = Fetched {
        epoch: text(epoch).ok_or(BadAnswer("fetch: epoch"))?,
        top: text(top)
            .and_then(|t| t.parse().ok())
            .ok_or(BadAnswer("fetch: top"))?,
        presence_version: text(version)
            .and_then(|t| t.parse().ok())
            .ok_or(BadAnswer("fetch: presence version"))?,
        members: super::presence::entries(items(members).ok_or(BadAnswer("fetch: members"))?),
        ..Fetched::default()
    };
    out.entries = stream_entries(entries)?;
    match lv {
        Value::Map(pairs) => {
            for (_, v) in pairs {
                let v = text(v).and_then(|v| split_offset(&v));
                out.last_values
                    .push(v.ok_or(BadAnswer("fetch: last value"))?);
            }
        }
        other => {
            let flat = items(other).ok_or(BadAnswer("fetch: last values"))?;
            for kv in flat.chunks(2) {
                let v = kv.get(1).and_then(text).and_then(|v| split_offset(&v));
                out.last_values
                    .push(v.ok_or(BadAnswer("fetch: last value"))?);
            }
        }
    }
    out.last_values.sort_by_key(|(off, _)| *off);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn fetch_answer_parses() {
        let v = Value::Array(vec![
            bulk("abc"),
            bulk("7"),
            Value::Array(vec![Value::Array(vec![
                bulk("6-0"),
                Value::Array(vec![bulk("d"), bulk("{\"x\":1}")]),
            ])]),
            Value::Array(vec![bulk("d\nm"), bulk("7:{\"y\":2}")]),
            bulk("4"),
            Value::Array(vec![
                bulk("dev"),
                bulk(r#"{"node":"h1","conn":9,"role":"device","via":"ws"}"#),
            ]),
        ]);
        let f = fetched(&v).expect("parses");
        assert_eq!(f.epoch, "abc");
        assert_eq!(f.top, 7);
        assert_eq!(f.entries, vec![(6, "{\"x\":1}".to_string())]);
        assert_eq!(f.last_values, vec![(7, "{\"y\":2}".to_string())]);
        assert_eq!(f.presence_version, 4);
        assert_eq!(f.members.len(), 1);
        assert_eq!((f.members[0].0.as_str(), f.members[0].1.conn), ("dev", 9));
        assert_eq!(f.presence_version, 4);
        assert_eq!(f.members.len(), 1);
        assert_eq!((f.members[0].0.as_str(), f.members[0].1.conn), ("dev", 9));
    }

    #[test]
    fn bad_answers_are_errors_not_panics() {
        assert!(fetched(&Value::Nil).is_err());
        assert!(fetched(&Value::Array(vec![bulk("e")])).is_err());
        assert!(published(&Value::Array(vec![])).is_err());
        assert_eq!(
            published(&Value::Array(vec![
                bulk("e"),
                Value::Int(1),
                Value::Int(3),
                Value::Int(0)
            ]))
            .ok(),
            Some(("e".to_string(), true, vec![3, 0]))
        );
    }
}
