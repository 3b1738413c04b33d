//! The JSON body path as ingest runs it, through the real router: the strict parser
//! (nesting limit, duplicate keys), the object check, the event type and idempotency key
//! taken by JSON pointer, schema validation (config/schemas/order.created.json) and routing
//! on body fields. Input: one byte choosing the endpoint, then the body. Any status below
//! 500; an event that reaches the store is routed (`orchestron_fuzz::Discard`).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use orchestron_fuzz::{BASE, KEY, post, router};

fn config() -> String {
    let schemas = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/schemas");
    format!(
        "{BASE}sources:\n  \
           default: {{ api_keys: [\"{KEY}\"] }}\n  \
           shop: {{ api_keys: [\"{KEY}\"], event_type: {{ pointer: /type }}, idempotency_key: {{ pointer: /id }} }}\n  \
           loose: {{ api_keys: [\"{KEY}\"], event_type: {{ pointer: /meta/kind }}, idempotency_key: {{ pointer: /meta/id }}, allow_duplicate_keys: true }}\n\
         schemas: {{ dir: \"{schemas}\" }}\n\
         routes:\n  \
           - match: {{ type: \"order.*\", body: [ {{ pointer: /total, exists: true }} ] }}\n    \
             to: [ {{ kafka: {{ topic: orders, key: /customer_id }} }} ]\n  \
           - match: {{ body: [ {{ pointer: /kind, one_of: [a, 1, null] }} ] }}\n    \
             to: [ {{ rabbitmq: {{ exchange: x, routing_key: \"{{type}}.{{source}}\" }} }} ]\n\
         default_route: {{ to: [ {{ rabbitmq: {{ exchange: events, routing_key: \"{{type}}\" }} }} ] }}\n"
    )
}

fuzz_target!(|data: &[u8]| {
    static ROUTER: OnceLock<axum::Router> = OnceLock::new();
    let router = ROUTER.get_or_init(|| router(&config()).expect("the fuzz config builds"));
    let Some((&choice, body)) = data.split_first() else { return };
    let key: &[(&str, &[u8])] = &[("idempotency-key", b"k-1")];
    match choice % 4 {
        0 => post(router, "/api/events/order.created", key, body),
        1 => post(router, "/api/events/misc.thing", &[], body),
        2 => post(router, "/hooks/shop", &[], body),
        _ => post(router, "/hooks/loose", &[], body),
    };
});
