//! Keeps `docs/openapi.yaml` true: every documented operation is called on a running daemon,
//! every answer's status must be documented for it, and JSON bodies must validate against
//! the documented schema. Every documented 2xx answer must be seen.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, AMQP_URL, API_KEY, TestApp, unique};

fn spec() -> Value {
    let text = std::fs::read_to_string("docs/openapi.yaml").unwrap();
    serde_saphyr::from_str(&text).expect("docs/openapi.yaml is YAML")
}

/// Follows a local `$ref` ("#/a/b") in the spec.
fn deref<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => deref(
            spec,
            spec.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("dangling {r}")),
        ),
        None => v,
    }
}

/// The schema with every `$ref` replaced by its target, so it validates standalone.
fn inline(spec: &Value, v: &Value) -> Value {
    match v {
        Value::Object(map) if map.contains_key("$ref") => inline(spec, deref(spec, v)),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), inline(spec, v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| inline(spec, v)).collect()),
        other => other.clone(),
    }
}

struct Case {
    method: Method,
    template: &'static str,
    path: String,
    auth: Auth,
    content_type: Option<&'static str>,
    body: Option<String>,
    headers: Vec<(&'static str, &'static str)>,
}

#[derive(Clone, Copy)]
enum Auth {
    None,
    ApiKey,
    Admin,
}

fn case(method: Method, template: &'static str, path: impl Into<String>, auth: Auth) -> Case {
    Case {
        method,
        template,
        path: path.into(),
        auth,
        content_type: None,
        body: None,
        headers: Vec::new(),
    }
}

impl Case {
    fn json(mut self, body: impl Into<String>) -> Self {
        self.content_type = Some("application/json");
        self.body = Some(body.into());
        self
    }

    fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    fn typed(mut self, content_type: &'static str, body: impl Into<String>) -> Self {
        self.content_type = Some(content_type);
        self.body = Some(body.into());
        self
    }
}

async fn call(
    app: &TestApp,
    spec: &Value,
    c: &Case,
    seen: &mut BTreeSet<(String, String, u16)>,
) -> Value {
    let on_admin =
        c.template.starts_with("/admin") || c.template == "/" || c.template.starts_with("/ui/");
    let url = if on_admin { app.admin_url(&c.path) } else { app.url(&c.path) };
    let mut request = app.client.request(c.method.clone(), url);
    match c.auth {
        Auth::None => {}
        Auth::ApiKey => request = request.header("X-API-Key", API_KEY),
        Auth::Admin => request = request.bearer_auth(ADMIN_TOKEN),
    }
    for (name, value) in &c.headers {
        request = request.header(*name, *value);
    }
    if let (Some(ct), Some(body)) = (c.content_type, &c.body) {
        request = request.header("Content-Type", ct).body(body.clone());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let method = c.method.as_str().to_lowercase();
    let operation = &spec["paths"][c.template][&method];
    assert!(operation.is_object(), "{} {} is not documented", c.method, c.template);
    let documented = &operation["responses"][status.to_string()];
    assert!(
        documented.is_object(),
        "{} {} answered {status}, which is not documented",
        c.method,
        c.path
    );
    let documented = deref(spec, documented);
    seen.insert((c.template.to_owned(), method, status));
    let is_json = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
    let body: Value = if is_json { response.json().await.unwrap() } else { Value::Null };
    if let Some(schema) = documented.pointer("/content/application~1json/schema") {
        assert!(is_json, "{} {}: documented JSON, got another type", c.method, c.path);
        let schema = inline(spec, schema);
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator.iter_errors(&body).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{} {} -> {status}: {body} does not match: {errors:?}",
            c.method,
            c.path
        );
    }
    body
}

async fn wait_dlq(app: &TestApp, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let page: Value =
            app.admin(Method::GET, "/admin/dlq").send().await.unwrap().json().await.unwrap();
        let entries = page["entries"].as_array().unwrap().clone();
        if entries.len() >= n {
            return entries;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "DLQ: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let spec = spec();
    let schemas = tempfile::tempdir().unwrap();
    std::fs::write(
        schemas.path().join("order.created.json"),
        json!({"type": "object", "required": ["order_id"]}).to_string(),
    )
    .unwrap();
    let nowhere = unique("noqueue");
    let config = format!(
        "brokers:\n  rabbitmq:\n    url: \"{AMQP_URL}\"\n    declare:\n      exchanges: [ {{ name: {nowhere} }} ]\n\
         schemas:\n  dir: {}\n\
         relay:\n  max_attempts: 1\n\
         sources:\n  shop:\n    api_keys: [\"{API_KEY}\"]\n    event_type: {{ header: x-shop-topic }}\n\
         \x20   rate_limit: {{ per_second: 1, burst: 4 }}\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: {nowhere}, routing_key: x }} }} ]\n",
        schemas.path().display()
    );
    let app = TestApp::spawn(&config).await;
    let started = Instant::now();
    while app.client.get(app.url("/ready")).send().await.unwrap().status() != 200 {
        assert!(started.elapsed() < Duration::from_secs(15), "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut seen = BTreeSet::new();
    const EVENTS: &str = "/api/events/{event_type}";
    let post = |auth| case(Method::POST, EVENTS, "/api/events/order.created", auth);
    let ingest = [
        post(Auth::ApiKey).json(r#"{"order_id": 1}"#),
        post(Auth::None).json(r#"{"order_id": 1}"#),
        post(Auth::ApiKey).typed("text/plain", "hello"),
        post(Auth::ApiKey).json("[1, 2]"),
        post(Auth::ApiKey).json(format!("{{\"pad\": \"{}\"}}", "x".repeat(100_000))),
        post(Auth::ApiKey).json(r#"{"no_order_id": true}"#),
        post(Auth::ApiKey).json(r#"{"order_id": 2}"#).header("idempotency-key", "k-1"),
        post(Auth::ApiKey).json(r#"{"order_id": 2}"#).header("idempotency-key", "k-1"),
        case(Method::GET, "/health", "/health", Auth::None),
        case(Method::GET, "/ready", "/ready", Auth::None),
        case(Method::GET, "/metrics", "/metrics", Auth::None),
    ];
    for c in &ingest {
        call(&app, &spec, c, &mut seen).await;
    }
    const HOOKS: &str = "/hooks/{source}";
    let hook = |auth| case(Method::POST, HOOKS, "/hooks/shop", auth);
    let hooks = [
        hook(Auth::ApiKey).json(r#"{"order_id": 3}"#).header("x-shop-topic", "order.created"),
        hook(Auth::ApiKey).json(r#"{"order_id": 3}"#),
        hook(Auth::None).json(r#"{"order_id": 3}"#).header("x-shop-topic", "order.created"),
        case(Method::POST, HOOKS, "/hooks/nope", Auth::ApiKey).json("{}"),
        hook(Auth::ApiKey)
            .json(r#"{"order_id": 4}"#)
            .header("x-shop-topic", "order.created")
            .header("idempotency-key", "shop-1"),
        hook(Auth::ApiKey)
            .json(r#"{"order_id": 4}"#)
            .header("x-shop-topic", "order.created")
            .header("idempotency-key", "shop-1"),
        // The fifth request with this key that passed the key check: over its burst of 4.
        hook(Auth::ApiKey).json("{}").header("x-shop-topic", "order.created"),
    ];
    for c in &hooks {
        call(&app, &spec, c, &mut seen).await;
    }
    // On a slow machine a token may have refilled meanwhile: a few more reach the limit.
    let more = hook(Auth::ApiKey).json("{}").header("x-shop-topic", "order.created");
    for _ in 0..10 {
        if seen.contains(&(HOOKS.to_owned(), "post".to_owned(), 429)) {
            break;
        }
        call(&app, &spec, &more, &mut seen).await;
    }
    assert!(seen.contains(&(HOOKS.to_owned(), "post".to_owned(), 429)), "{seen:?}");
    // That accepted event reaches no queue: with one attempt it is dead-lettered at once.
    let id = wait_dlq(&app, 1).await[0]["event_id"].as_str().unwrap().to_owned();
    let unknown = uuid::Uuid::now_v7().to_string();
    const ONE: &str = "/admin/dlq/{event_id}";
    const REPLAY_ONE: &str = "/admin/dlq/{event_id}/replay";
    const EVENT: &str = "/admin/events/{event_id}";
    const SCHEMA: &str = "/admin/schemas/{event_type}";
    let admin = [
        case(Method::GET, "/admin/dlq", "/admin/dlq", Auth::Admin),
        case(Method::GET, "/admin/dlq", "/admin/dlq", Auth::None),
        case(Method::GET, "/admin/dlq", "/admin/dlq?reason=bogus", Auth::Admin),
        // An unknown filter is refused with the documented JSON error (a misspelt filter
        // must not match everything), as is a bad scope.
        case(Method::GET, "/admin/dlq", "/admin/dlq?typo=x", Auth::Admin),
        case(Method::DELETE, "/admin/dlq", "/admin/dlq?typo=x", Auth::Admin),
        case(Method::GET, ONE, format!("/admin/dlq/{id}"), Auth::Admin),
        case(Method::GET, ONE, format!("/admin/dlq/{unknown}"), Auth::Admin),
        case(Method::GET, ONE, "/admin/dlq/not-an-id", Auth::Admin),
        case(Method::GET, ONE, format!("/admin/dlq/{id}"), Auth::None),
        case(Method::GET, EVENT, format!("/admin/events/{id}"), Auth::Admin),
        case(Method::GET, EVENT, format!("/admin/events/{unknown}"), Auth::Admin),
        case(Method::GET, EVENT, "/admin/events/not-an-id", Auth::Admin),
        case(Method::GET, EVENT, format!("/admin/events/{id}"), Auth::None),
        case(Method::GET, "/admin/outbox", "/admin/outbox", Auth::Admin),
        case(Method::GET, "/admin/config", "/admin/config", Auth::Admin),
        case(Method::GET, "/admin/config", "/admin/config", Auth::None),
        case(Method::GET, "/admin/schemas", "/admin/schemas", Auth::Admin),
        case(Method::GET, "/admin/schemas", "/admin/schemas", Auth::None),
        case(Method::PUT, SCHEMA, "/admin/schemas/user.created", Auth::Admin)
            .json(r#"{"type": "object"}"#),
        case(Method::PUT, SCHEMA, "/admin/schemas/user.created", Auth::Admin)
            .json(r#"{"type": "object", "required": ["id"]}"#),
        case(Method::PUT, SCHEMA, "/admin/schemas/user.created", Auth::Admin)
            .json(r#"{"type": 12}"#),
        case(Method::PUT, SCHEMA, "/admin/schemas/a%20b", Auth::Admin).json("{}"),
        case(Method::PUT, SCHEMA, "/admin/schemas/user.created", Auth::None).json("{}"),
        case(Method::GET, SCHEMA, "/admin/schemas/order.created", Auth::Admin),
        case(Method::GET, SCHEMA, "/admin/schemas/no.such.type", Auth::Admin),
        case(Method::GET, SCHEMA, "/admin/schemas/user.created", Auth::None),
        case(Method::GET, "/admin/metrics", "/admin/metrics", Auth::Admin),
        case(Method::GET, "/admin/metrics", "/admin/metrics", Auth::None),
        case(Method::GET, "/", "/", Auth::None),
        case(Method::GET, "/ui/", "/ui/", Auth::None),
        case(Method::GET, "/ui/app.js", "/ui/app.js", Auth::None),
        case(Method::GET, "/ui/app.css", "/ui/app.css", Auth::None),
        case(Method::GET, "/admin/outbox", "/admin/outbox", Auth::None),
        case(Method::POST, REPLAY_ONE, format!("/admin/dlq/{unknown}/replay"), Auth::Admin),
        case(Method::POST, REPLAY_ONE, "/admin/dlq/x/replay", Auth::Admin),
        case(Method::POST, REPLAY_ONE, format!("/admin/dlq/{id}/replay?scope=AAA"), Auth::Admin),
        case(Method::POST, REPLAY_ONE, format!("/admin/dlq/{id}/replay"), Auth::None),
        case(Method::POST, REPLAY_ONE, format!("/admin/dlq/{id}/replay"), Auth::Admin),
    ];
    for c in &admin {
        call(&app, &spec, c, &mut seen).await;
    }
    // The replayed event fails again and is back in the DLQ.
    wait_dlq(&app, 1).await;
    let more = [
        case(Method::POST, "/admin/dlq/replay", "/admin/dlq/replay", Auth::Admin)
            .json(r#"{"type": "order.created"}"#),
        case(Method::POST, "/admin/dlq/replay", "/admin/dlq/replay?reason=bogus", Auth::Admin),
        case(Method::POST, "/admin/dlq/replay", "/admin/dlq/replay", Auth::None),
    ];
    for c in &more {
        call(&app, &spec, c, &mut seen).await;
    }
    wait_dlq(&app, 1).await;
    let last = [
        case(Method::DELETE, ONE, format!("/admin/dlq/{id}"), Auth::Admin),
        case(Method::DELETE, ONE, format!("/admin/dlq/{unknown}"), Auth::Admin),
        case(Method::DELETE, ONE, "/admin/dlq/nope", Auth::Admin),
        case(Method::DELETE, ONE, format!("/admin/dlq/{id}"), Auth::None),
        case(Method::DELETE, "/admin/dlq", "/admin/dlq", Auth::Admin),
        case(Method::DELETE, "/admin/dlq", "/admin/dlq?all=true", Auth::Admin),
        case(Method::DELETE, "/admin/dlq", "/admin/dlq?reason=bogus", Auth::Admin),
        case(Method::DELETE, "/admin/dlq", "/admin/dlq?all=true", Auth::None),
    ];
    for c in &last {
        call(&app, &spec, c, &mut seen).await;
    }
    // The fleet view: 404 without `sync`; from a daemon with it (on its own database), the
    // fleet and `/ready`'s sync state as documented.
    let fleet = [
        case(Method::GET, "/admin/fleet", "/admin/fleet", Auth::Admin),
        case(Method::GET, "/admin/fleet", "/admin/fleet", Auth::None),
        case(Method::GET, "/admin/dlq", "/admin/dlq?scope=fleet", Auth::Admin),
        case(
            Method::POST,
            REPLAY_ONE,
            format!("/admin/dlq/{unknown}/replay?scope=fleet"),
            Auth::Admin,
        ),
    ];
    for c in &fleet {
        call(&app, &spec, c, &mut seen).await;
    }
    let db = crate::fleet::FreshDb::create();
    let url = db.url(crate::fleet::POSTGRES);
    let synced =
        TestApp::spawn(&format!("sync:\n  postgres:\n    url: \"{url}\"\n  lease: 3s\n")).await;
    let started = Instant::now();
    loop {
        let view = call(&synced, &spec, &fleet[0], &mut seen).await;
        if view["instances"].as_array().is_some_and(|i| !i.is_empty()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no fleet view: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in &fleet[2..] {
        call(&synced, &spec, c, &mut seen).await;
    }
    let ready = case(Method::GET, "/ready", "/ready", Auth::None);
    assert_eq!(call(&synced, &spec, &ready, &mut seen).await["sync"]["connected"], true);
    synced.stop().await;

    // Every documented operation was called, and every documented success was seen.
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if !operation.is_object() || method == "servers" {
                continue;
            }
            assert!(
                seen.iter().any(|(p, m, _)| p == path && m == method),
                "{method} {path} is documented but not exercised"
            );
            for status in operation["responses"].as_object().unwrap().keys() {
                if status.starts_with('2') {
                    let code: u16 = status.parse().unwrap();
                    assert!(
                        seen.contains(&(path.clone(), method.clone(), code)),
                        "{method} {path} never answered its documented {status}"
                    );
                }
            }
        }
    }
    app.stop().await;
}
