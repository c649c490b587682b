//! Who is on a connection: its [`Role`] (what it may send and receive) and [`Via`] (how
//! it reaches the hub). Both appear on the wire in `welcome` and `presence`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a connection may do: devices send readings and answer commands, dashboards
/// receive readings and send commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sends readings, receives commands and answers them with acks.
    Device,
    /// Receives readings, sends commands and receives their acks.
    Dashboard,
}

impl Role {
    /// The wire name: `device` or `dashboard`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Dashboard => "dashboard",
        }
    }

    /// The role named `s` (the `role` query parameter), if any.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "device" => Some(Role::Device),
            "dashboard" => Some(Role::Dashboard),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a member reaches the hub: its own WebSocket, bridged from an MQTT broker, or
/// HTTP requests (line protocol, HTTP ingest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Its own WebSocket connection.
    Ws,
    /// A device on an MQTT broker, bridged in by the hub.
    Mqtt,
    /// A device that posts over HTTP; present while it keeps posting
    /// (`limits.http_device_idle_ms`).
    Http,
}

impl Via {
    /// The wire name: `ws`, `mqtt` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Ws => "ws",
            Via::Mqtt => "mqtt",
            Via::Http => "http",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for role in [Role::Device, Role::Dashboard] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(
                serde_json::to_string(&role).ok(),
                Some(format!("\"{role}\""))
            );
        }
        assert_eq!(Role::parse("admin"), None);
        for via in [Via::Ws, Via::Mqtt, Via::Http] {
            let json = format!("\"{}\"", via.as_str());
            assert_eq!(serde_json::to_string(&via).ok().as_deref(), Some(&*json));
            assert_eq!(serde_json::from_str::<Via>(&json).ok(), Some(via));
        }
    }
}
