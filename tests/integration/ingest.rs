//! What senders see at the edge: every status code, and no crash on hostile bodies.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{API_KEY, TestApp};

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["order_id"],
  "properties": { "order_id": { "type": "integer" }, "email": { "type": "string", "format": "email" } }
}"#;

/// A daemon with one schema, a 64 KiB body cap (set by the helper), routes only for `order.*` (no default route)
/// and a RabbitMQ broker configured but never needed for these answers.
async fn app() -> TestApp {
    let schemas = tempfile::tempdir().unwrap();
    std::fs::write(schemas.path().join("order.created.json"), SCHEMA).unwrap();
    let extra = format!(
        "brokers:\n  rabbitmq: {{ url: \"amqp://guest:guest@127.0.0.1:5672/%2f\" }}\n\
         schemas:\n  dir: {}\n\
         routes:\n  - match: {{ type: \"order.*\" }}\n    to: [ {{ rabbitmq: {{ exchange: amq.topic, routing_key: \"{{type}}\" }} }} ]\n",
        schemas.keep().display()
    );
    TestApp::spawn(&extra).await
}

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let ct = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(ct.as_deref(), Some("application/json"), "error bodies are JSON");
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn each_refusal_has_its_status_code_and_a_json_body() {
    let app = app().await;
    let url = app.url("/api/events/order.created");
    let c = &app.client;
    let post = |key: Option<&str>, ct: Option<&str>, body: Vec<u8>| {
        let mut r = c.post(&url).body(body);
        if let Some(k) = key {
            r = r.header("X-API-Key", k);
        }
        if let Some(ct) = ct {
            r = r.header("Content-Type", ct);
        }
        r.send()
    };
    let json = Some("application/json");
    let ok = br#"{"order_id": 1}"#.to_vec();

    let (s, b) = error_of(post(None, json, ok.clone()).await.unwrap()).await;
    assert_eq!((s, b["error"].as_str()), (401, Some("unauthorized")));
    let (s, _) = error_of(post(Some("wrong-key"), json, ok.clone()).await.unwrap()).await;
    assert_eq!(s, 401);
    let (s, _) = error_of(post(Some("test-ke"), json, ok.clone()).await.unwrap()).await;
    assert_eq!(s, 401, "a prefix of a key is not the key");
    let (s, b) = error_of(post(Some(API_KEY), Some("text/plain"), ok.clone()).await.unwrap()).await;
    assert_eq!((s, b["error"].as_str()), (415, Some("unsupported_media_type")));
    let (s, _) = error_of(post(Some(API_KEY), None, ok.clone()).await.unwrap()).await;
    assert_eq!(s, 415);
    let (s, b) = error_of(post(Some(API_KEY), json, vec![b' '; 100_000]).await.unwrap()).await;
    assert_eq!((s, b["error"].as_str()), (413, Some("payload_too_large")));
    for bad in [&b""[..], b"{", b"nul", b"{\"a\":1}garbage", b"\xff\xfe"] {
        let (s, b) = error_of(post(Some(API_KEY), json, bad.to_vec()).await.unwrap()).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid_json")), "{bad:?}");
    }
    for not_object in [&b"[1,2]"[..], b"\"text\"", b"42", b"null"] {
        let (s, b) = error_of(post(Some(API_KEY), json, not_object.to_vec()).await.unwrap()).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid_body")), "{not_object:?}");
    }
    let (s, b) =
        error_of(post(Some(API_KEY), json, br#"{"order_id":"one"}"#.to_vec()).await.unwrap()).await;
    assert_eq!((s, b["error"].as_str()), (422, Some("schema_violation")));
    assert_eq!(b["violations"][0]["pointer"], "/order_id");
    assert!(b["violations"][0]["message"].as_str().unwrap().contains("integer"));
    let (s, b) = error_of(post(Some(API_KEY), json, b"{}".to_vec()).await.unwrap()).await;
    assert_eq!(s, 422);
    assert_eq!(b["violations"][0]["pointer"], "");

    // No route and no default route: refused rather than accepted into a void.
    let (s, b) = error_of(app.post("user.created", "{}").await).await;
    assert_eq!((s, b["error"].as_str()), (422, Some("unroutable")));
    // Event types are a restricted alphabet (they name schema files).
    let (s, b) = error_of(app.post("..%2Fetc", "{}").await).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_event_type")));
    let (s, _) = error_of(c.get(app.url("/nope")).send().await.unwrap()).await;
    assert_eq!(s, 404);

    // And the happy path, with a charset parameter.
    let r = post(Some(API_KEY), Some("application/json; charset=utf-8"), ok).await.unwrap();
    assert_eq!(r.status(), 202);
    let b: Value = r.json().await.unwrap();
    let id = uuid::Uuid::parse_str(b["event_id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    app.stop().await;
}

#[tokio::test]
async fn hostile_bodies_get_400_and_the_daemon_stays_up() {
    let app = app().await;
    let deep_array = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let unclosed = "[".repeat(3_000);
    for body in [deep_array, deep_object, unclosed] {
        let response = app.post("order.created", body).await;
        assert_eq!(response.status(), 400);
    }
    // A Content-Length that claims more than the cap is refused before reading.
    let response = app
        .client
        .post(app.url("/api/events/order.created"))
        .header("X-API-Key", API_KEY)
        .header("Content-Type", "application/json")
        .body(vec![b'{'; 1_000_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn over_quota_answers_503_with_retry_after_never_2xx() {
    let app = TestApp::spawn(
        "brokers:\n  rabbitmq: { url: \"amqp://guest:guest@127.0.0.1:5672/%2f\" }\n\
         default_route:\n  to: [ { rabbitmq: { exchange: amq.topic, routing_key: x } } ]\n",
    )
    .await;
    let dir = app.stop().await;
    // The same store, now with a quota smaller than the file already is.
    let text = crate::helpers::config_text(dir.path(), "")
        .replace("  path:", "  max_bytes: 1KiB\n  path:");
    let extra = "brokers:\n  rabbitmq: { url: \"amqp://guest:guest@127.0.0.1:5672/%2f\" }\n\
                 default_route:\n  to: [ { rabbitmq: { exchange: amq.topic, routing_key: x } } ]\n";
    let config =
        orchestron::config::load_str("t.yaml".as_ref(), &format!("{text}{extra}"), &[]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let listeners = orchestron::app::Listeners { ingest: listener, admin };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(orchestron::app::run(config, listeners, async {
        let _ = rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/events/a"))
        .header("X-API-Key", API_KEY)
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let (_, b) = error_of(response).await;
    assert_eq!(b["error"], "store_full");
    assert!(!b["message"].as_str().unwrap().contains('/'), "no paths leak: {b}");
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Parser differentials (docs/security.md): a repeated member name is refused with its JSON
/// pointer unless the source allows it, and then the body published is the one sent, byte
/// for byte; a BOM, a lone surrogate and an out-of-range number are not JSON.
#[tokio::test]
async fn bodies_that_parsers_read_differently_are_refused_unless_the_source_allows_repeats() {
    let exchange = crate::helpers::unique("dup");
    let mut queue = crate::helpers::RabbitQueue::bind(&exchange, "#").await;
    let schemas = tempfile::tempdir().unwrap();
    std::fs::write(schemas.path().join("order.created.json"), SCHEMA).unwrap();
    let extra = format!(
        "sources:\n  lenient:\n    api_keys: [\"{API_KEY}\"]\n    allow_duplicate_keys: true\n    \
         event_type: {{ fixed: order.created }}\n\
         brokers:\n  rabbitmq: {{ url: \"amqp://guest:guest@127.0.0.1:5672/%2f\" }}\n\
         schemas:\n  dir: {}\n\
         default_route: {{ to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: \"{{type}}\" }} }} ] }}\n",
        schemas.path().display()
    );
    let app = TestApp::spawn(&extra).await;

    let repeated = r#"{"order_id":1,"order_id":1000000}"#;
    let (s, b) = error_of(app.post("order.created", repeated).await).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("duplicate_key")), "{b}");
    assert!(b["message"].as_str().unwrap().contains("/order_id"), "{b}");
    let nested = r#"{"order_id":1,"lines":[{"sku":"a"},{"sku":"b","sku":"c"}]}"#;
    let (s, b) = error_of(app.post("order.created", nested).await).await;
    assert_eq!((s, b["error"].as_str()), (400, Some("duplicate_key")), "{b}");
    assert!(b["message"].as_str().unwrap().contains("/lines/1/sku"), "{b}");
    for bad in [
        &b"\xef\xbb\xbf{\"order_id\":1}"[..],
        br#"{"order_id":1,"note":"\ud800"}"#,
        br#"{"order_id":1,"total":1e400}"#,
    ] {
        let (s, b) = error_of(app.post("order.created", bad.to_vec()).await).await;
        assert_eq!((s, b["error"].as_str()), (400, Some("invalid_json")), "{bad:?}: {b}");
    }
    let rejected = "orchestron_ingest_rejected_total{reason=\"invalid\",source=\"default\"}";
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.lines().any(|l| l == format!("{rejected} 5")), "{metrics}");
    assert!(
        queue.collect(1, Duration::from_millis(500)).await.is_empty(),
        "nothing refused was published"
    );

    // The lenient source takes the repeat: the last value is the one validated (a string
    // `order_id` first would fail the schema), and the bytes published are the bytes sent.
    let lenient = r#"{"order_id":"one","order_id":2}"#;
    let response = app
        .client
        .post(app.url("/hooks/lenient"))
        .header("X-API-Key", API_KEY)
        .header("Content-Type", "application/json")
        .body(lenient)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    let got = queue.collect(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, lenient.as_bytes());
    app.stop().await;
}
