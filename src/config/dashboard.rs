//! `[dashboard]`: what the browser dashboard asks the hub for beyond the rooms (today,
//! map tiles under GPS tracks). Served to the page by `GET /api/dashboard`
//! (`src/api/mod.rs`) and read by `dashboard/tiles.js`.

use serde::{Deserialize, Serialize};

/// Zoom levels a tile server may have at most (OpenStreetMap's go to 19).
pub(crate) const MAX_MAP_ZOOM: u8 = 22;

/// `[dashboard]`: the page's own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// A slippy-map tile URL template with `{z}`, `{x}` and `{y}`
    /// (`https://tile.example/{z}/{x}/{y}.png`), drawn under GPS tracks in Web Mercator.
    /// Empty (the default): tracks are drawn on their own, and no browser asks anyone
    /// but the hub for anything.
    pub map_tiles: String,
    /// The credit the tile server asks for, shown on the map (at most 200 characters).
    pub map_attribution: String,
    /// The deepest zoom the tile server has.
    pub map_max_zoom: u8,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            map_tiles: String::new(),
            map_attribution: String::new(),
            map_max_zoom: 19,
        }
    }
}

impl DashboardConfig {
    /// Checks what types alone cannot.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let t = &self.map_tiles;
        if !t.is_empty() {
            if !(t.starts_with("https://") || t.starts_with("http://") || t.starts_with('/')) {
                return Err((
                    "dashboard.map_tiles",
                    "must be an http(s) URL or a path on this host".into(),
                ));
            }
            for part in ["{z}", "{x}", "{y}"] {
                if !t.contains(part) {
                    return Err(("dashboard.map_tiles", format!("must contain {part}")));
                }
            }
            if t.len() > 2048 || t.chars().any(char::is_control) {
                return Err((
                    "dashboard.map_tiles",
                    "at most 2048 characters, none of them control characters".into(),
                ));
            }
        }
        if self.map_attribution.chars().count() > 200 {
            return Err((
                "dashboard.map_attribution",
                "must be at most 200 characters".into(),
            ));
        }
        if self.map_max_zoom > MAX_MAP_ZOOM {
            return Err((
                "dashboard.map_max_zoom",
                format!("must be at most {MAX_MAP_ZOOM}"),
            ));
        }
        Ok(())
    }

    /// What `GET /api/dashboard` says: `{"map": null}` without tiles.
    pub(crate) fn public(&self) -> serde_json::Value {
        let map = (!self.map_tiles.is_empty()).then(|| {
            serde_json::json!({
                "tiles": self.map_tiles,
                "attribution": self.map_attribution,
                "max_zoom": self.map_max_zoom,
            })
        });
        serde_json::json!({ "map": map })
    }
}

#[cfg(test)]
mod tests {
    use super::DashboardConfig;

    #[test]
    fn a_tile_template_needs_a_scheme_and_every_placeholder() {
        let mut d = DashboardConfig::default();
        assert!(d.validate().is_ok());
        assert_eq!(d.public()["map"], serde_json::Value::Null);
        d.map_tiles = "https://t.example/{z}/{x}/{y}.png".into();
        assert!(d.validate().is_ok());
        assert_eq!(d.public()["map"]["max_zoom"], 19);
        d.map_tiles = "https://t.example/{z}/{x}.png".into();
        assert!(d.validate().unwrap_err().1.contains("{y}"));
        d.map_tiles = "javascript:alert(1)/{z}/{x}/{y}".into();
        assert_eq!(d.validate().unwrap_err().0, "dashboard.map_tiles");
        d.map_tiles = String::new();
        d.map_max_zoom = 23;
        assert_eq!(d.validate().unwrap_err().0, "dashboard.map_max_zoom");
    }
}
