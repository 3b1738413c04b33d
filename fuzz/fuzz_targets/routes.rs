//! Route templates and globs: a routes section built from the input (type and source globs,
//! a routing-key template, a Kafka key pointer, a body-match pointer) either builds or is
//! refused with a message; when it builds, an event with the input's type and body is routed
//! through the real ingest router (any status below 500). Input: newline-separated fields
//! `type glob, source glob, template, key pointer, match pointer, event type`, then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orchestron_fuzz::{BASE, KEY, post, router, yaml_string};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut fields = text.splitn(7, '\n');
    let mut next = || fields.next().unwrap_or_default();
    let (type_glob, source_glob, template) = (next(), next(), next());
    let (key_pointer, match_pointer, event_type) = (next(), next(), next());
    let body = next();
    let [type_glob, source_glob, template, key_pointer, match_pointer] =
        [type_glob, source_glob, template, key_pointer, match_pointer].map(yaml_string);
    let config = format!(
        "{BASE}sources: {{ default: {{ api_keys: [\"{KEY}\"] }} }}\n\
         routes:\n  \
           - match: {{ type: {type_glob}, source: {source_glob}, body: [ {{ pointer: {match_pointer}, exists: true }} ] }}\n    \
             to: [ {{ rabbitmq: {{ exchange: x, routing_key: {template} }} }}, {{ kafka: {{ topic: t, key: {key_pointer} }} }} ]\n    \
             continue: true\n  \
           - match: {{ type: {type_glob} }}\n    \
             to: [ {{ kafka: {{ topic: {template}, key: {key_pointer} }} }} ]\n\
         default_route: {{ to: [ {{ rabbitmq: {{ exchange: events, routing_key: {template} }} }} ] }}\n"
    );
    let Some(router) = router(&config) else { return };
    post(&router, &format!("/api/events/{event_type}"), &[], body.as_bytes());
});
