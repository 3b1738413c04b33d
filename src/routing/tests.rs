use super::*;
use crate::delivery::MessageFormat;
use crate::testing::{kafka, rabbit};

fn table(yaml_routes: &str) -> RouteTable {
    let text = format!(
        "server: {{ listen: \"127.0.0.1:0\" }}\nstore: {{ path: x }}\n\
         brokers:\n  rabbitmq: {{ url: \"amqp://x\" }}\n  kafka: {{ bootstrap_servers: x }}\n\
         sources: {{ default: {{ api_keys: [k] }} }}\n{yaml_routes}"
    );
    let config = crate::config::load_str("t.yaml".as_ref(), &text, &[]).unwrap();
    RouteTable::from_config(&config).unwrap()
}

fn event(ty: &str, body: &str) -> ValidatedEvent {
    crate::testing::event(ty, body, 0)
}

#[test]
fn first_match_wins_then_default() {
    let t = table(
        "routes:\n  - match: { type: \"order.*\" }\n    to:\n      - rabbitmq: { exchange: orders, routing_key: \"{source}.{type}\" }\n      - kafka: { topic: \"t-{type}\", key: /customer_id }\n  - match: { type: \"order.created\" }\n    to: [ { kafka: { topic: never } } ]\ndefault_route:\n  to: [ { rabbitmq: { exchange: events, routing_key: \"{type}\" } } ]\n",
    );
    let resolved = t.resolve(&event("order.created", r#"{"customer_id": 42}"#));
    let targets: Vec<Target> = resolved.iter().map(|r| r.target.clone()).collect();
    assert_eq!(resolved[1].name, "kafka:t-{type}");
    assert_eq!(
        targets,
        vec![
            rabbit("orders", "default.order.created"),
            kafka("t-order.created", Some(b"42".as_slice())),
        ]
    );
    let other: Vec<Target> =
        t.resolve(&event("user.deleted", "{}")).into_iter().map(|r| r.target).collect();
    assert_eq!(other, vec![rabbit("events", "user.deleted")]);
}

#[test]
fn continue_fans_out_and_body_values_select_routes() {
    let t = table(
        "routes:\n\
         \x20 - match: { type: \"order.*\" }\n    continue: true\n    to: [ { kafka: { topic: audit } } ]\n\
         \x20 - match: { body: [ { pointer: /tier, equals: gold } ] }\n    to: [ { rabbitmq: { exchange: vip } } ]\n\
         \x20 - match: { body: [ { pointer: /region, one_of: [eu, uk] }, { pointer: /test, exists: false } ] }\n    to: [ { rabbitmq: { exchange: europe } } ]\n\
         default_route:\n  to: [ { rabbitmq: { exchange: other } } ]\n",
    );
    let names = |ty: &str, body: &str| -> Vec<String> {
        t.resolve(&event(ty, body)).into_iter().map(|r| r.target.config_name()).collect()
    };
    assert_eq!(names("order.created", r#"{"tier":"gold"}"#), ["kafka:audit", "rabbitmq:vip"]);
    assert_eq!(names("order.created", r#"{"tier":"silver"}"#), ["kafka:audit"]);
    assert_eq!(names("user.created", r#"{"region":"uk"}"#), ["rabbitmq:europe"]);
    assert_eq!(names("user.created", r#"{"region":"uk","test":1}"#), ["rabbitmq:other"]);
    assert_eq!(names("user.created", "{}"), ["rabbitmq:other"]);
    let bad = "routes:\n  - match: { body: [ { pointer: /a, equals: 1, exists: true } ] }\n    to: [ { kafka: { topic: t } } ]\n";
    let text = format!(
        "server: {{ listen: \"127.0.0.1:0\" }}\nstore: {{ path: x }}\n\
         brokers:\n  kafka: {{ bootstrap_servers: x }}\n\
         sources: {{ default: {{ api_keys: [k] }} }}\n{bad}"
    );
    let config = crate::config::load_str("t.yaml".as_ref(), &text, &[]).unwrap();
    let problems = RouteTable::from_config(&config).unwrap_err();
    assert!(problems.iter().any(|p| p.message.contains("exactly one")), "{problems:?}");
}

#[test]
fn retry_overrides_merge_destination_over_route() {
    let t = table(
        "routes:\n  - match: { type: \"a\" }\n    max_attempts: 3\n    backoff: { initial: 1s, max: 2s }\n    to:\n      - kafka: { topic: a, max_attempts: 7 }\n      - rabbitmq: { exchange: e }\n",
    );
    let resolved = t.resolve(&event("a", "{}"));
    assert_eq!(resolved[0].retry.max_attempts, Some(7));
    assert_eq!(resolved[0].retry.backoff_ms, Some((1000, 2000)));
    assert_eq!(resolved[1].retry.max_attempts, Some(3));
}

#[test]
fn without_default_unmatched_is_unroutable() {
    let t = table(
        "routes:\n  - match: { type: \"a.*\" }\n    to: [ { kafka: { topic: a, key: /k } } ]\n",
    );
    // What ingest asks: the delivery record is empty when no route takes the event.
    let delivery = |ty| t.delivery_with(&event(ty, "{}"), &mut Body::raw(b"{}"));
    assert_eq!(delivery("a.b").destinations.len(), 1);
    assert!(delivery("b.a").destinations.is_empty());
    // A missing key is no key, not an error.
    let targets = |body| -> Vec<Target> {
        t.resolve(&event("a.b", body)).into_iter().map(|r| r.target).collect()
    };
    assert_eq!(targets("{}"), vec![kafka("a", None)]);
    assert_eq!(targets(r#"{"k":"abc"}"#), vec![kafka("a", Some(b"abc".as_slice()))]);
}

#[test]
fn headers_pointer_templates_formats_and_partitions() {
    let t = table(concat!(
        "routes:\n",
        "  - match: { headers: { X-Tenant: \"acme-*\" } }\n",
        "    to:\n",
        "      - kafka: { topic: \"t.{/region}\", key: \"{source}:{/customer}\", partition: 2, format: cloudevents }\n",
        "default_route:\n",
        "  to: [ { rabbitmq: { exchange: e, routing_key: \"{type}.{/region}\" } } ]\n",
    ));
    assert_eq!(t.matched_headers(), ["x-tenant"]);
    let body = r#"{"region":"eu/1","customer":"c-9"}"#;
    let kept = vec![("x-tenant".to_owned(), "acme-prod".to_owned())];
    let tenant = event("a.b", body).with_headers(kept);
    let resolved: Vec<Target> = t.resolve(&tenant).into_iter().map(|r| r.target).collect();
    assert_eq!(
        resolved,
        vec![Target::Kafka {
            topic: "t.eu_1".into(),
            key: Some(b"default:c-9".to_vec()),
            partition: Some(2),
            format: MessageFormat::Cloudevents,
        }]
    );
    let other = event("a.b", body).with_headers(vec![("x-tenant".into(), "beta".into())]);
    let resolved: Vec<Target> = t.resolve(&other).into_iter().map(|r| r.target).collect();
    assert_eq!(resolved, vec![rabbit("e", "a.b.eu_1")]);
    let none: Vec<Target> = t.resolve(&event("a.b", body)).into_iter().map(|r| r.target).collect();
    assert_eq!(none, vec![rabbit("e", "a.b.eu_1")], "no header: no match");
}
