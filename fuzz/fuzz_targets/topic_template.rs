//! MQTT topic templates (`src/sources/mqtt/template.rs`): parse a template, then match
//! and render topics with it.
//!
//! Input: the template, a NUL byte, then a topic (both skipped unless UTF-8).
//!
//! Checks: no panic; the filter has one level per template level and only `+`/`#` where
//! the template has segments; a topic that matches a renderable template renders back to
//! itself from its captures; a rendered topic matches and gives back the values rendered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telehub::fuzzing::TopicTemplate;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (source, topic) = text.split_once('\0').unwrap_or((text, ""));
    let Ok(tpl) = TopicTemplate::parse(source) else {
        return;
    };
    assert_eq!(tpl.as_str(), source);
    let filter = tpl.filter();
    assert_eq!(filter.split('/').count(), source.split('/').count());

    if let Some(c) = tpl.matches(topic) {
        assert_eq!(c.room.is_some(), tpl.has_room());
        assert_eq!(c.device.is_some(), tpl.has_device());
        assert_eq!(c.metric.is_some(), tpl.has_metric());
        if tpl.renderable() {
            let back = tpl.render(c.room.unwrap_or("r"), c.device.unwrap_or("d"), c.metric);
            assert_eq!(
                back.as_deref(),
                Some(topic),
                "render(matches(topic)) != topic"
            );
        }
    }

    // Values without `/` (ids and metric levels never hold one) round-trip.
    let mut parts = topic.split('/');
    let room = parts.next().unwrap_or("");
    let device = parts.next().unwrap_or("");
    let metric = parts.next();
    if let Some(rendered) = tpl.render(room, device, metric) {
        let c = tpl
            .matches(&rendered)
            .expect("a rendered topic matches its template");
        if tpl.has_room() {
            assert_eq!(c.room, Some(room));
        }
        if tpl.has_device() {
            assert_eq!(c.device, Some(device));
        }
        if tpl.has_metric() {
            assert_eq!(c.metric, metric);
        }
    }
});
