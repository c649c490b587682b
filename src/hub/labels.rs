//! What a series is called where its source names it: a friendly `name`, a
//! `device_class` and the device's own name, as Home Assistant discovery announces them.
//!
//! Kept beside the rooms, apart from history: a label is set and removed by the source
//! that knows it (the MQTT bridge's discovery), and read by `GET /api/rooms/{room}/series`.
//! Bounded by [`MAX_LABELS`]: a label past it is not kept (the series still is); the
//! source is told (the bridge counts it in `rejected` and says so at `/api/bridges`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;

/// Series labels the hub holds at most, over all rooms.
pub(crate) const MAX_LABELS: usize = 10_000;

/// One series' label.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Label {
    /// The series' friendly name (`Temperature`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it measures, in Home Assistant's words (`temperature`, `door`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// The device's friendly name (`Living room sensor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

type Key = (Arc<str>, Arc<str>, Arc<str>);

/// Every series label; cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Labels {
    map: Arc<RwLock<HashMap<Key, Label>>>,
}

impl Labels {
    /// Sets (or with `None` removes) the label of `device`/`metric` in `room`; false when
    /// [`MAX_LABELS`] are held already and this series has none.
    pub(crate) fn set(&self, room: &str, device: &str, metric: &str, label: Option<Label>) -> bool {
        let key: Key = (room.into(), device.into(), metric.into());
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        match label {
            None => {
                map.remove(&key);
                true
            }
            Some(l) if map.len() < MAX_LABELS || map.contains_key(&key) => {
                map.insert(key, l);
                true
            }
            Some(_) => false,
        }
    }

    /// The label of one series, if it has one.
    pub(crate) fn get(&self, room: &str, device: &str, metric: &str) -> Option<Label> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(&(room.into(), device.into(), metric.into()))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_set_replaced_removed_and_bounded() {
        let l = Labels::default();
        let label = |n: &str| Label {
            name: Some(n.into()),
            ..Label::default()
        };
        assert!(l.set("r", "d", "t", Some(label("a"))));
        assert!(l.set("r", "d", "t", Some(label("b"))));
        assert_eq!(l.get("r", "d", "t"), Some(label("b")));
        assert!(l.set("r", "d", "t", None));
        assert_eq!(l.get("r", "d", "t"), None);
        for i in 0..MAX_LABELS {
            assert!(l.set("r", &format!("d{i}"), "t", Some(label("x"))));
        }
        assert!(!l.set("r", "one-more", "t", Some(label("x"))));
        assert!(
            l.set("r", "d0", "t", Some(label("y"))),
            "a held one is replaced"
        );
    }
}
