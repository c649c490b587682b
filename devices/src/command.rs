//! Commands from dashboards, and the acks that answer them.
//!
//! The shapes are the protocol's (docs/PROTOCOL.md): a device receives
//! `{"type":"command","id","from","name","args"}` (over MQTT the same object without
//! `type`, on `telehub/{room}/{device}/cmd`) and answers `{"type":"ack","id","ok","result"?}`.
//! This module parses commands and decides what they do; the device applies the effect.

use std::time::Duration;

use serde_json::{json, Value};
use telehub_protocol::inbound::{AckMsg, ToHub};

use crate::kinds::Sensor;

/// Shortest interval `set_interval` accepts: 20 ms (50 Hz), the scenario maximum rate.
pub const MIN_INTERVAL_MS: u64 = 20;
/// Longest interval `set_interval` accepts: a day.
pub const MAX_INTERVAL_MS: u64 = 86_400_000;
/// How long a `reboot` keeps the device offline when the command gives no `ms`.
pub const DEFAULT_REBOOT_MS: u64 = 2_000;
/// The longest reboot pause a command may ask for.
pub const MAX_REBOOT_MS: u64 = 60_000;

/// A command as it arrives: the protocol's own type (`telehub_protocol::outbound::Command`),
/// read from a hub frame or, without `type`, from an MQTT `cmd` payload.
pub use telehub_protocol::outbound::Command;

/// The answer to a command, before it goes on the wire (see [`Ack::to_ws_text`] and
/// [`Ack::to_mqtt_payload`] for the protocol's shapes).
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// The command's id.
    pub id: String,
    /// Whether the command was carried out.
    pub ok: bool,
    /// What changed, or `{"error": code, "message": text}` when `ok` is false.
    pub result: Option<Value>,
}

/// What the transport must do after sending the ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the ack.
    None,
    /// Change the sampling interval.
    SetInterval(Duration),
    /// Drop the connection, stay offline this long, then boot and reconnect.
    Reboot(Duration),
}

impl Ack {
    fn wire(&self) -> AckMsg<'_, Value> {
        AckMsg {
            id: &self.id,
            ok: self.ok,
            result: self.result.as_ref(),
        }
    }

    /// The `ack` message for the hub's WebSocket: `{"type":"ack","id","ok","result"?}`.
    pub fn to_ws_text(&self) -> String {
        ToHub::Ack(self.wire()).to_json()
    }

    /// The payload for `telehub/{room}/{device}/ack`: the same object without `type`.
    pub fn to_mqtt_payload(&self) -> Vec<u8> {
        // Strings, a bool and a JSON tree: serialising cannot fail.
        serde_json::to_vec(&self.wire()).unwrap_or_default()
    }

    fn ok(id: &str, result: Value) -> Self {
        Ack {
            id: id.to_string(),
            ok: true,
            result: Some(result),
        }
    }

    fn fail(id: &str, code: &str, message: impl Into<String>) -> Self {
        Ack {
            id: id.to_string(),
            ok: false,
            result: Some(json!({"error": code, "message": message.into()})),
        }
    }
}

/// Decide what `cmd` does to a device with `sensor`. Setpoint changes are applied to the
/// sensor here; interval changes and reboots are returned for the transport to carry out.
pub fn apply(cmd: &Command, sensor: &mut dyn Sensor) -> (Ack, Effect) {
    // `args` arrives as raw JSON; anything unreadable counts as no args.
    let args: Value = serde_json::from_str(cmd.args.get()).unwrap_or(Value::Null);
    match cmd.name.as_ref() {
        "set_interval" => match args.get("ms").and_then(Value::as_u64) {
            Some(ms) if (MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&ms) => (
                Ack::ok(&cmd.id, json!({"interval_ms": ms})),
                Effect::SetInterval(Duration::from_millis(ms)),
            ),
            _ => (
                Ack::fail(
                    &cmd.id,
                    "invalid_args",
                    format!(
                        "set_interval needs args {{\"ms\": N}} with N in \
                         {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS}"
                    ),
                ),
                Effect::None,
            ),
        },
        "set_setpoint" => match args.get("value").and_then(Value::as_f64) {
            Some(v) => match sensor.set_setpoint(v) {
                Ok(v) => (Ack::ok(&cmd.id, json!({"setpoint": v})), Effect::None),
                Err(e) => (Ack::fail(&cmd.id, "rejected", e.to_string()), Effect::None),
            },
            None => (
                Ack::fail(
                    &cmd.id,
                    "invalid_args",
                    "set_setpoint needs args {\"value\": X}",
                ),
                Effect::None,
            ),
        },
        "reboot" => {
            let ms = match args.get("ms") {
                None | Some(Value::Null) => Some(DEFAULT_REBOOT_MS),
                Some(v) => v.as_u64().filter(|ms| *ms <= MAX_REBOOT_MS),
            };
            match ms {
                Some(ms) => (
                    Ack::ok(&cmd.id, json!({"rebooting_ms": ms})),
                    Effect::Reboot(Duration::from_millis(ms)),
                ),
                None => (
                    Ack::fail(
                        &cmd.id,
                        "invalid_args",
                        format!("reboot takes optional args {{\"ms\": N}}, N ≤ {MAX_REBOOT_MS}"),
                    ),
                    Effect::None,
                ),
            }
        }
        other => (
            Ack::fail(
                &cmd.id,
                "unknown_command",
                format!(
                    "unknown command {other:?}; this device knows set_interval, \
                     set_setpoint, reboot"
                ),
            ),
            Effect::None,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{build, Kind, Params};
    use crate::rng::SimRng;

    fn cmd(name: &str, args: Value) -> Command<'static> {
        Command {
            id: "c-1".into(),
            from: "dash".into(),
            name: name.to_string().into(),
            args: std::borrow::Cow::Owned(
                serde_json::value::to_raw_value(&args).expect("json args"),
            ),
        }
    }

    fn sensor(kind: Kind) -> Box<dyn Sensor> {
        build(kind, &Params::default(), &mut SimRng::new(1, 1))
    }

    #[test]
    fn set_interval() {
        let mut s = sensor(Kind::Power);
        let (ack, effect) = apply(&cmd("set_interval", json!({"ms": 500})), s.as_mut());
        assert!(ack.ok);
        assert_eq!(ack.result, Some(json!({"interval_ms": 500})));
        assert_eq!(effect, Effect::SetInterval(Duration::from_millis(500)));
        let (ack, effect) = apply(&cmd("set_interval", json!({"ms": 1})), s.as_mut());
        assert!(!ack.ok);
        assert_eq!(effect, Effect::None);
        let (ack, _) = apply(&cmd("set_interval", json!({"ms": "fast"})), s.as_mut());
        assert!(!ack.ok);
    }

    #[test]
    fn set_setpoint_on_climate_only() {
        let mut c = sensor(Kind::Climate);
        let (ack, _) = apply(&cmd("set_setpoint", json!({"value": 23.5})), c.as_mut());
        assert!(ack.ok);
        assert_eq!(ack.result, Some(json!({"setpoint": 23.5})));
        let mut p = sensor(Kind::Power);
        let (ack, _) = apply(&cmd("set_setpoint", json!({"value": 23.5})), p.as_mut());
        assert!(!ack.ok);
        assert_eq!(
            ack.result.as_ref().and_then(|r| r.get("error")),
            Some(&json!("rejected"))
        );
    }

    #[test]
    fn reboot_and_unknown() {
        let mut s = sensor(Kind::Door);
        let (ack, effect) = apply(&cmd("reboot", Value::Null), s.as_mut());
        assert!(ack.ok);
        assert_eq!(
            effect,
            Effect::Reboot(Duration::from_millis(DEFAULT_REBOOT_MS))
        );
        let (ack, effect) = apply(&cmd("self_destruct", json!({})), s.as_mut());
        assert!(!ack.ok);
        assert_eq!(effect, Effect::None);
        let wire: Value = serde_json::from_str(&ack.to_ws_text()).expect("json");
        assert_eq!(wire["type"], "ack");
        assert_eq!(wire["result"]["error"], "unknown_command");
        let mqtt: Value = serde_json::from_slice(&ack.to_mqtt_payload()).expect("json");
        assert_eq!(mqtt.get("type"), None);
        assert_eq!(mqtt["id"], "c-1");
    }

    #[test]
    fn parses_the_wire_shape() {
        let c: Command = serde_json::from_str(
            r#"{"type":"command","id":"c-17","from":"dash-1","name":"set_interval","args":{"ms":500}}"#,
        )
        .expect("parses");
        assert_eq!(c.name, "set_interval");
        let c: Command =
            serde_json::from_str(r#"{"id":"x","name":"reboot"}"#).expect("args optional");
        assert_eq!(c.args.get(), "{}");
    }
}
