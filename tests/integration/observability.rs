//! Metrics values after real traffic, `promtool check metrics`, and `/ready` following the
//! broker connection.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{AMQP_URL, Proxy, RabbitQueue, TestApp, good_and_unroutable_config, unique};

/// Parses the text exposition format into `name{label="v",...}` → value (labels sorted).
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("`series value` lines");
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        out.insert(key, value.parse().expect("numeric sample"));
    }
    out
}

async fn scrape(app: &TestApp) -> (String, BTreeMap<String, f64>) {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let ct = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = response.text().await.unwrap();
    let parsed = parse(&text);
    (text, parsed)
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no sample {key}"))
}

#[tokio::test]
async fn metrics_count_accepted_rejected_published_retried_and_dead_lettered() {
    let good = unique("ok");
    let bad = unique("noqueue");
    let mut queue = RabbitQueue::bind(&good, "#").await;
    let relay = "  max_attempts: 2\n  backoff: { initial: 50ms, max: 100ms }\n";
    let config = good_and_unroutable_config(&good, &bad, relay);
    let app = TestApp::spawn(&config).await;
    app.accept("order.created", r#"{"a":1}"#.into()).await;
    app.accept("order.created", r#"{"a":2}"#.into()).await;
    app.accept("bad.one", r#"{"a":3}"#.into()).await;
    let unauthorized = app
        .client
        .post(app.url("/api/events/x"))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(app.post("x", "{not json").await.status(), 400);
    assert_eq!(queue.collect(2, Duration::from_secs(10)).await.len(), 2);

    // Wait until the unroutable one has used its two attempts and reached the DLQ.
    let started = Instant::now();
    let (text, m) = loop {
        let (text, m) = scrape(&app).await;
        if m.get("orchestron_dlq_entries") == Some(&1.0) {
            break (text, m);
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no dead letter:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let src = "source=\"default\"";
    assert_eq!(value(&m, &format!("orchestron_ingest_accepted_total{{{src}}}")), 3.0);
    assert_eq!(
        value(&m, &format!("orchestron_ingest_requests_total{{{src},status=\"2xx\"}}")),
        3.0
    );
    assert_eq!(
        value(&m, &format!("orchestron_ingest_requests_total{{{src},status=\"4xx\"}}")),
        2.0
    );
    assert_eq!(
        value(&m, &format!("orchestron_ingest_rejected_total{{reason=\"auth\",{src}}}")),
        1.0
    );
    assert_eq!(
        value(&m, &format!("orchestron_ingest_rejected_total{{reason=\"invalid\",{src}}}")),
        1.0
    );
    let ok = format!("destination=\"rabbitmq:{good}\"");
    let nope = format!("destination=\"rabbitmq:{bad}\"");
    assert_eq!(value(&m, &format!("orchestron_relay_publish_total{{{ok},result=\"ok\"}}")), 2.0);
    assert_eq!(
        value(&m, &format!("orchestron_relay_publish_total{{{nope},result=\"unroutable\"}}")),
        2.0
    );
    assert_eq!(value(&m, &format!("orchestron_relay_retries_total{{{nope}}}")), 1.0);
    assert_eq!(value(&m, &format!("orchestron_relay_delivery_latency_seconds_count{{{ok}}}")), 2.0);
    assert_eq!(value(&m, "orchestron_dead_lettered_total{reason=\"unroutable\"}"), 1.0);
    assert_eq!(value(&m, "orchestron_dlq_entries"), 1.0);
    assert_eq!(value(&m, "orchestron_outbox_pending_events"), 0.0);
    assert_eq!(value(&m, "orchestron_broker_up{broker=\"rabbitmq\"}"), 1.0);
    assert!(value(&m, "orchestron_store_append_batch_events_sum") >= 3.0);
    assert!(value(&m, "orchestron_store_bytes") > 0.0);
    assert!(value(&m, "orchestron_store_disk_free_bytes") > 0.0);
    assert!(value(&m, "process_resident_memory_bytes") > 0.0);
    // Labels never carry ids or sender-chosen types.
    assert!(!text.contains("order.created") && !text.contains("bad.one"), "{text}");

    // promtool (Debian package `prometheus`) accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (bash .ci/run installs the prometheus package)");
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
}

async fn ready(app: &TestApp, admin: bool) -> (u16, Value) {
    let request = if admin {
        app.client.get(app.admin_url("/ready"))
    } else {
        app.client.get(app.url("/ready"))
    };
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn wait_ready(app: &TestApp, want: u16) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = ready(app, false).await;
        if status == want {
            return body;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "/ready stuck at {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ready_follows_the_rabbitmq_connection() {
    // The shared broker keeps running for the other tests; the proxy cuts this daemon off.
    let proxy = Proxy::start("127.0.0.1:5672", true).await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let config = format!(
        "brokers:\n  rabbitmq: {{ url: \"{url}\" }}\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: amq.topic, routing_key: x }} }} ]\n"
    );
    let app = TestApp::spawn(&config).await;
    let body = wait_ready(&app, 200).await;
    assert_eq!(body["status"], "ready");
    assert_eq!(ready(&app, true).await.0, 200, "mirrored on the admin listener");
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    proxy.set_up(false);
    let body = wait_ready(&app, 503).await;
    assert_eq!(body["failing"], serde_json::json!(["rabbitmq"]));
    assert_eq!(ready(&app, true).await.0, 503);
    // Still accepting: the outbox is the buffer.
    app.accept("a", "{}".into()).await;
    let m = parse(&app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap());
    assert_eq!(value(&m, "orchestron_broker_up{broker=\"rabbitmq\"}"), 0.0);

    proxy.set_up(true);
    wait_ready(&app, 200).await;
    let outbox: Value =
        app.admin(Method::GET, "/admin/outbox").send().await.unwrap().json().await.unwrap();
    assert!(outbox["pending"].as_u64().unwrap() <= 1);
    app.stop().await;
}

/// The metric names `src/telemetry/metrics.rs` defines (with the `orchestron_` prefix).
fn defined_metrics() -> BTreeSet<String> {
    let source = std::fs::read_to_string("src/telemetry/metrics.rs").unwrap();
    let mut names = BTreeSet::new();
    for chunk in source.split("opts(").skip(1) {
        let name = chunk.trim_start().trim_start_matches('\n').trim_start();
        if let Some(rest) = name.strip_prefix('"') {
            names.insert(format!("orchestron_{}", &rest[..rest.find('"').unwrap()]));
        }
    }
    names
}

/// `orchestron_*` names used in a document, with histogram suffixes removed.
fn used_metrics(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (i, _) in text.match_indices("orchestron_") {
        let name: String =
            text[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_owned();
        used.insert(base);
    }
    used
}

#[test]
fn dashboard_and_monitoring_docs_use_only_exported_metric_names() {
    let defined = defined_metrics();
    assert!(defined.contains("orchestron_dlq_expired_total"), "{defined:?}");
    for doc in ["docs/grafana-dashboard.json", "docs/monitoring.md"] {
        let text = std::fs::read_to_string(doc).unwrap();
        let used = used_metrics(&text);
        assert!(!used.is_empty(), "{doc} names no metric");
        let unknown: Vec<_> = used.difference(&defined).collect();
        assert!(unknown.is_empty(), "{doc} uses metrics that do not exist: {unknown:?}");
    }
    // The dashboard is valid JSON with panels.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string("docs/grafana-dashboard.json").unwrap())
            .unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
}

#[tokio::test]
async fn metrics_can_move_to_the_admin_listener_behind_the_token() {
    let app = TestApp::spawn(&format!(
        "brokers:\n  rabbitmq: {{ url: \"{AMQP_URL}\" }}\nmetrics: {{ listener: admin }}\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: amq.topic, routing_key: x }} }} ]\n"
    ))
    .await;
    assert_eq!(app.client.get(app.url("/metrics")).send().await.unwrap().status(), 404);
    assert_eq!(app.client.get(app.admin_url("/metrics")).send().await.unwrap().status(), 401);
    let scraped = app.admin(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    let m = parse(&scraped.text().await.unwrap());
    let info: Vec<_> = m.keys().filter(|k| k.starts_with("orchestron_config_info{hash=")).collect();
    assert_eq!(info.len(), 1, "one config fingerprint");
    assert!(value(&m, "orchestron_config_loaded_timestamp_seconds") > 1.7e9);
    // Health and readiness stay on both listeners, without a token.
    assert_eq!(app.client.get(app.admin_url("/health")).send().await.unwrap().status(), 200);
    assert_eq!(app.client.get(app.url("/health")).send().await.unwrap().status(), 200);
    app.stop().await;
}
