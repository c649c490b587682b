//! Topic templates: how an MQTT topic maps to a room, a device and a metric, and back.
//!
//! A template is a topic with some levels replaced by named segments:
//!
//! | segment    | matches one topic level and ...                         |
//! | ---------- | ------------------------------------------------------- |
//! | `{room}`   | takes it as the room id                                 |
//! | `{device}` | takes it as the device (client) id                      |
//! | `{metric}` | takes it as the metric name                             |
//! | `{_}`      | ignores it (any value)                                  |
//! | `#`        | last level only: ignores any number of remaining levels |
//! | `text`     | must equal `text`                                       |
//!
//! So `sensors/{room}/{device}/{metric}` reads `sensors/greenhouse/t1/temperature`, and
//! `home/{device}/{_}` reads `home/plug-3/state`. The subscription filter is the template
//! with every named segment turned into `+` (`sensors/+/+/+`). Rendering (for command
//! topics and mirrored readings) needs every named segment to have a value and no `{_}`
//! or `#`.

use std::fmt;

/// One level of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Room,
    Device,
    Metric,
    Ignore,
    /// `#`: the rest of the topic, ignored. Only as the last level.
    Rest,
}

/// The values a topic gave for the named segments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captures<'t> {
    pub room: Option<&'t str>,
    pub device: Option<&'t str>,
    pub metric: Option<&'t str>,
}

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    source: String,
    segments: Vec<Segment>,
}

/// Why a template was refused. The message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic template `{template}`: {message}")]
pub struct TemplateError {
    pub template: String,
    pub message: String,
}

impl TopicTemplate {
    /// Parses a template. Empty levels are allowed (MQTT allows them); `+` is not (write
    /// `{_}`), nor a `{`..`}` that is not one of the known segments, nor a segment mixed
    /// with text in one level, nor a named segment used twice.
    pub fn parse(source: &str) -> Result<TopicTemplate, TemplateError> {
        let err = |message: String| TemplateError {
            template: source.to_string(),
            message,
        };
        if source.is_empty() {
            return Err(err("is empty".into()));
        }
        if source.starts_with('$') {
            return Err(err(
                "starts with `$`: broker-internal topics are not bridged".into(),
            ));
        }
        let levels: Vec<&str> = source.split('/').collect();
        let mut segments = Vec::with_capacity(levels.len());
        for (i, level) in levels.iter().enumerate() {
            let seg = match *level {
                "{room}" => Segment::Room,
                "{device}" => Segment::Device,
                "{metric}" => Segment::Metric,
                "{_}" => Segment::Ignore,
                "#" if i + 1 == levels.len() => Segment::Rest,
                "#" => return Err(err("`#` may only be the last level".into())),
                "+" => return Err(err("use `{_}` instead of `+` for a level to ignore".into())),
                l if l.starts_with('{') && l.ends_with('}') => {
                    return Err(err(format!(
                        "unknown segment `{l}` (known: {{room}}, {{device}}, {{metric}}, {{_}})"
                    )))
                }
                l if l.contains(['{', '}', '+', '#']) => {
                    return Err(err(format!(
                        "level `{l}` mixes a segment or wildcard with text; a segment must be a whole level"
                    )))
                }
                l => Segment::Literal(l.to_string()),
            };
            if matches!(seg, Segment::Room | Segment::Device | Segment::Metric)
                && segments.contains(&seg)
            {
                return Err(err(format!("`{level}` appears twice")));
            }
            segments.push(seg);
        }
        Ok(TopicTemplate {
            source: source.to_string(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn has_room(&self) -> bool {
        self.segments.contains(&Segment::Room)
    }

    pub fn has_device(&self) -> bool {
        self.segments.contains(&Segment::Device)
    }

    pub fn has_metric(&self) -> bool {
        self.segments.contains(&Segment::Metric)
    }

    /// The MQTT subscription filter: named segments and `{_}` become `+`.
    pub fn filter(&self) -> String {
        let levels: Vec<&str> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::Rest => "#",
                _ => "+",
            })
            .collect();
        levels.join("/")
    }

    /// Matches a topic; `None` when it does not fit the template.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Captures<'t>> {
        let mut caps = Captures::default();
        let mut levels = topic.split('/');
        for seg in &self.segments {
            if *seg == Segment::Rest {
                return Some(caps);
            }
            let level = levels.next()?;
            match seg {
                Segment::Literal(l) if l == level => {}
                Segment::Literal(_) => return None,
                Segment::Room => caps.room = Some(level),
                Segment::Device => caps.device = Some(level),
                Segment::Metric => caps.metric = Some(level),
                Segment::Ignore | Segment::Rest => {}
            }
        }
        match levels.next() {
            None => Some(caps),
            Some(_) => None,
        }
    }

    /// Builds a topic from values for the named segments. Fails when the template needs a
    /// value that is missing, or has `{_}` or `#` (which name no single topic).
    pub fn render(&self, room: &str, device: &str, metric: Option<&str>) -> Option<String> {
        let mut out = String::with_capacity(self.source.len() + 32);
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            match seg {
                Segment::Literal(l) => out.push_str(l),
                Segment::Room => out.push_str(room),
                Segment::Device => out.push_str(device),
                Segment::Metric => out.push_str(metric?),
                Segment::Ignore | Segment::Rest => return None,
            }
        }
        Some(out)
    }

    /// True when [`render`](Self::render) can build a topic (no `{_}`, no `#`).
    pub fn renderable(&self) -> bool {
        !self
            .segments
            .iter()
            .any(|s| matches!(s, Segment::Ignore | Segment::Rest))
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TopicTemplate {
        TopicTemplate::parse(s).expect("valid template")
    }

    #[test]
    fn default_layout_matches_and_renders() {
        let tpl = t("telehub/{room}/{device}/{metric}");
        assert_eq!(tpl.filter(), "telehub/+/+/+");
        let c = tpl
            .matches("telehub/greenhouse/t1/temperature")
            .expect("match");
        assert_eq!(c.room, Some("greenhouse"));
        assert_eq!(c.device, Some("t1"));
        assert_eq!(c.metric, Some("temperature"));
        assert_eq!(
            tpl.render("greenhouse", "t1", Some("temperature"))
                .as_deref(),
            Some("telehub/greenhouse/t1/temperature")
        );
        assert!(tpl.matches("telehub/greenhouse/t1").is_none());
        assert!(tpl.matches("telehub/greenhouse/t1/temperature/x").is_none());
        assert!(tpl.matches("other/greenhouse/t1/temperature").is_none());
    }

    #[test]
    fn ignored_segment_and_missing_names() {
        let tpl = t("home/{device}/{_}");
        assert_eq!(tpl.filter(), "home/+/+");
        let c = tpl.matches("home/plug-3/state").expect("match");
        assert_eq!(c.device, Some("plug-3"));
        assert_eq!(c.room, None);
        assert_eq!(c.metric, None);
        assert!(!tpl.has_room() && tpl.has_device() && !tpl.has_metric());
        assert!(!tpl.renderable());
        assert_eq!(tpl.render("r", "d", None), None);
    }

    #[test]
    fn trailing_hash_takes_any_rest() {
        let tpl = t("zigbee2mqtt/{device}/#");
        assert_eq!(tpl.filter(), "zigbee2mqtt/+/#");
        assert_eq!(
            tpl.matches("zigbee2mqtt/lamp/a/b/c").and_then(|c| c.device),
            Some("lamp")
        );
        // MQTT: `a/#` also matches `a` itself.
        assert_eq!(
            tpl.matches("zigbee2mqtt/lamp").and_then(|c| c.device),
            Some("lamp")
        );
    }

    #[test]
    fn bad_templates_are_named() {
        for (src, needle) in [
            ("", "empty"),
            ("a/+/b", "{_}"),
            ("a/#/b", "last level"),
            ("a/{rooms}", "unknown segment"),
            ("a/x{room}", "whole level"),
            ("{room}/{room}", "twice"),
            ("$SYS/{device}", "broker-internal"),
        ] {
            let e = TopicTemplate::parse(src).expect_err(src).to_string();
            assert!(e.contains(needle), "{src}: {e}");
        }
    }

    #[test]
    fn command_template_renders_without_metric() {
        let tpl = t("telehub/{room}/{device}/cmd");
        assert_eq!(
            tpl.render("r1", "d1", None).as_deref(),
            Some("telehub/r1/d1/cmd")
        );
        let c = t("telehub/{room}/{device}/ack")
            .matches("telehub/r1/d1/ack")
            .expect("match");
        assert_eq!((c.room, c.device), (Some("r1"), Some("d1")));
    }
}
