//! Routing features against the real brokers: header matches, `{/pointer}` templates,
//! CloudEvents structured mode, fixed Kafka partitions.

use std::time::Duration;

use rdkafka::mocking::MockCluster;

use crate::helpers::{AMQP_URL, API_KEY, RabbitQueue, TestApp, unique};

async fn post(app: &TestApp, tenant: Option<&str>, body: &str) -> String {
    let mut request = app
        .client
        .post(app.url("/api/events/order.created"))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(tenant) = tenant {
        request = request.header("x-tenant", tenant);
    }
    let answer: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
    assert_eq!(answer["status"], "accepted", "{answer}");
    answer["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn header_routes_pointer_keys_and_structured_cloudevents_on_rabbitmq() {
    let exchange = unique("ex");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let config = format!(
        "brokers:\n  rabbitmq: {{ url: \"{AMQP_URL}\" }}\n\
         routes:\n\
         \x20 - match: {{ headers: {{ X-Tenant: \"acme-*\" }} }}\n\
         \x20   to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: \"tenant.{{/region}}\", format: cloudevents }} }} ]\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: \"plain.{{type}}\" }} }} ]\n"
    );
    let app = TestApp::spawn(&config).await;
    let body = r#"{ "region" : "eu", "n": 1.50 }"#;
    let structured_id = post(&app, Some("acme-7"), body).await;
    let binary_id = post(&app, None, body).await;
    let other_tenant_id = post(&app, Some("globex"), body).await;

    let mut got = queue.collect(3, Duration::from_secs(10)).await;
    got.sort_by(|a, b| a.routing_key.cmp(&b.routing_key));
    let keys: Vec<&str> = got.iter().map(|m| m.routing_key.as_str()).collect();
    assert_eq!(keys, ["plain.order.created", "plain.order.created", "tenant.eu"]);

    let structured = &got[2];
    assert_eq!(structured.headers["content-type"], "application/cloudevents+json");
    assert_eq!(structured.headers["x-tenant"], "acme-7", "a matched header is kept");
    assert!(!structured.headers.contains_key("ce_id"), "attributes are in the body");
    let envelope: serde_json::Value = serde_json::from_slice(&structured.body).unwrap();
    assert_eq!(envelope["specversion"], "1.0");
    assert_eq!(envelope["id"], structured_id.as_str());
    assert_eq!(envelope["type"], "order.created");
    assert_eq!(envelope["source"], "default");
    assert_eq!(envelope["datacontenttype"], "application/json");
    assert!(envelope["time"].as_str().unwrap().ends_with('Z'));
    let raw = String::from_utf8(structured.body.clone()).unwrap();
    assert!(raw.ends_with(&format!("\"data\":{body}}}")), "data is the body, byte for byte: {raw}");

    let ids: Vec<&str> = got[..2].iter().map(|m| m.headers["ce_id"].as_str()).collect();
    assert!(ids.contains(&binary_id.as_str()) && ids.contains(&other_tenant_id.as_str()));
    for m in &got[..2] {
        assert_eq!(m.body, body.as_bytes(), "binary mode: the body as sent");
    }
    app.stop().await;
}

#[tokio::test]
async fn kafka_destinations_can_fix_the_partition_and_use_structured_mode() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("t");
    mock.create_topic(&topic, 3, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let config = format!(
        "brokers:\n  kafka: {{ bootstrap_servers: \"{bootstrap}\", message_timeout: 10s }}\n\
         default_route:\n  to: [ {{ kafka: {{ topic: {topic}, key: \"{{source}}-{{/c}}\", partition: 2, format: cloudevents }} }} ]\n"
    );
    let app = TestApp::spawn(&config).await;
    let mut ids = Vec::new();
    for c in ["a", "b", "c", "d"] {
        ids.push(post(&app, None, &format!(r#"{{"c":"{c}"}}"#)).await);
    }
    let got = crate::kafka::consume(&bootstrap, &topic, 3, 4, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 4);
    for m in &got {
        assert_eq!(m.routing_key, "2", "every record in partition 2");
        assert_eq!(m.headers["content-type"], "application/cloudevents+json");
        let envelope: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        let c = envelope["data"]["c"].as_str().unwrap();
        assert_eq!(m.key.as_deref(), Some(format!("default-{c}").as_bytes()));
        assert!(ids.contains(&envelope["id"].as_str().unwrap().to_owned()));
    }
    app.stop().await;
}

#[tokio::test]
async fn events_stranded_on_a_removed_broker_follow_the_current_routes_or_dead_letter() {
    // Before: everything to a Kafka that is down, so the events wait in its lane.
    let before = "brokers:\n  kafka: { bootstrap_servers: \"127.0.0.1:1\", message_timeout: 5s }\n\
                  default_route:\n  to: [ { kafka: { topic: stranded } } ]\n";
    let app = TestApp::spawn(before).await;
    let mut kept = Vec::new();
    for n in 0..3 {
        kept.push(app.accept("keep.it", format!("{{\"n\":{n}}}")).await);
    }
    let mut dropped = Vec::new();
    for n in 0..2 {
        dropped.push(app.accept("drop.it", format!("{{\"n\":{n}}}")).await);
    }
    // Let the routing worker file them into the Kafka lane.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = app.stop().await;

    // After: Kafka removed from the config; only keep.* has a route (to RabbitMQ).
    let exchange = unique("ex");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let after = format!(
        "brokers:\n  rabbitmq: {{ url: \"{AMQP_URL}\" }}\n\
         routes:\n  - match: {{ type: \"keep.*\" }}\n    to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: k }} }} ]\n"
    );
    let app = TestApp::spawn_in(dir, &after).await;
    let got = queue.collect(4, Duration::from_secs(10)).await;
    let mut ids: Vec<String> = got.iter().map(|m| m.headers["ce_id"].clone()).collect();
    ids.sort();
    kept.sort();
    assert_eq!(ids, kept, "the stranded keep.* events went to the current route, once each");

    let page: serde_json::Value =
        app.admin(reqwest::Method::GET, "/admin/dlq").send().await.unwrap().json().await.unwrap();
    let entries = page["entries"].as_array().unwrap();
    let mut dead: Vec<String> =
        entries.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
    dead.sort();
    dropped.sort();
    assert_eq!(dead, dropped, "{page}");
    assert!(entries.iter().all(|e| e["reason"] == "no_route"), "{page}");
    app.stop().await;
}
