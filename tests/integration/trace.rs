//! W3C trace context from the sender into the broker message: the same trace id, a span id
//! of the publish; a new trace for a request without one (or with a malformed one), none
//! with `telemetry.new_traces: false`.

use std::time::Duration;

use crate::helpers::{
    API_KEY, KAFKA, RabbitQueue, Received, TestApp, good_and_unroutable_config, unique, wait_dlq,
};

const SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

async fn post(app: &TestApp, headers: &[(&str, &str)]) -> String {
    post_as(app, "trace.test", headers).await
}

async fn post_as(app: &TestApp, ty: &str, headers: &[(&str, &str)]) -> String {
    let mut request = app
        .client
        .post(app.url(&format!("/api/events/{ty}")))
        .header("X-API-Key", API_KEY)
        .header("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.body("{}").send().await.unwrap();
    assert_eq!(answer.status(), 202);
    answer.json::<serde_json::Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned()
}

/// `00-<trace id>-<span id>-<flags>` split into its fields.
fn fields(traceparent: &str) -> (String, String, String) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert!(parts[1].len() == 32 && parts[2].len() == 16 && parts[3].len() == 2);
    (parts[1].to_owned(), parts[2].to_owned(), parts[3].to_owned())
}

fn by_id(got: Vec<Received>, id: &str) -> Received {
    got.into_iter().find(|m| m.headers.get("ce_id").map(String::as_str) == Some(id)).unwrap()
}

#[tokio::test]
async fn the_senders_trace_continues_in_the_rabbitmq_message_with_a_span_of_the_publish() {
    let (exchange, unroutable) = (unique("trace"), unique("bad"));
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let relay = "  max_attempts: 1\n";
    let app = TestApp::spawn(&good_and_unroutable_config(&exchange, &unroutable, relay)).await;
    let traced =
        post(&app, &[("traceparent", SENT), ("tracestate", "rojo=00f067aa0ba902b7")]).await;
    let fresh = post(&app, &[]).await;
    let malformed =
        post(&app, &[("traceparent", "00-not-a-trace-01"), ("tracestate", "a=b")]).await;
    let got = queue.collect(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);

    let m = by_id(got.clone(), &traced);
    let (trace, span, flags) = fields(&m.headers["traceparent"]);
    assert_eq!(trace, TRACE_ID, "the sender's trace");
    assert_ne!(span, "00f067aa0ba902b7", "a span id of its own");
    assert_eq!(flags, "01", "the sender's flags");
    assert_eq!(m.headers["tracestate"], "rojo=00f067aa0ba902b7");

    for id in [&fresh, &malformed] {
        let m = by_id(got.clone(), id);
        let (trace, _, _) = fields(&m.headers["traceparent"]);
        assert_ne!(trace, TRACE_ID);
        assert_ne!(trace, "0".repeat(32));
        assert!(!m.headers.contains_key("tracestate"), "no tracestate without a traceparent");
    }
    let (a, _, _) = fields(&by_id(got.clone(), &fresh).headers["traceparent"]);
    let (b, _, _) = fields(&by_id(got, &malformed).headers["traceparent"]);
    assert_ne!(a, b, "a new trace each");

    // The admin API shows the trace id of a dead-lettered event, and its stored context.
    let dead = post_as(&app, "bad.trace", &[("traceparent", SENT)]).await;
    wait_dlq(&app, 1).await;
    let get = |path: String| {
        let request = app.admin(reqwest::Method::GET, &path);
        async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let entry = get(format!("/admin/dlq/{dead}")).await;
    assert_eq!(entry["trace_id"], TRACE_ID, "{entry}");
    let stored = entry["headers"]["traceparent"].as_str().unwrap().to_owned();
    assert_eq!(fields(&stored).0, TRACE_ID);
    let lookup = get(format!("/admin/events/{dead}")).await;
    assert_eq!(lookup["trace_id"], TRACE_ID, "{lookup}");
    app.stop().await;
}

#[tokio::test]
async fn kafka_records_carry_the_trace_and_new_traces_can_be_turned_off() {
    let topic = unique("trace");
    crate::kafka::create_topic(KAFKA, &topic, 1, &[]).await;
    let app = TestApp::spawn(&format!(
        "brokers:\n  kafka: {{ bootstrap_servers: \"{KAFKA}\" }}\n\
         telemetry: {{ new_traces: false }}\n\
         default_route:\n  to: [ {{ kafka: {{ topic: {topic} }} }} ]\n"
    ))
    .await;
    let traced = post(&app, &[("traceparent", SENT)]).await;
    let untraced = post(&app, &[]).await;
    let got = crate::kafka::consume(KAFKA, &topic, 1, 2, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 2);
    let (trace, span, _) = fields(&by_id(got.clone(), &traced).headers["traceparent"]);
    assert_eq!(trace, TRACE_ID);
    assert_ne!(span, "00f067aa0ba902b7");
    assert!(!by_id(got, &untraced).headers.contains_key("traceparent"), "new_traces: false");
    app.stop().await;
}

/// An OTLP/HTTP receiver on a port of its own: every span it is sent, decoded with the
/// `opentelemetry-proto` types.
struct Collector {
    endpoint: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<Span>>>,
}

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

impl Collector {
    async fn start() -> Collector {
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = std::sync::Arc::clone(&spans);
        let router = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: bytes::Bytes| {
                let kept = std::sync::Arc::clone(&kept);
                async move {
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    assert_eq!(headers["x-collector-key"], "k-123", "configured headers are sent");
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    for resource in request.resource_spans {
                        let attrs = resource.resource.unwrap().attributes;
                        assert!(attrs.iter().any(|a| a.key == "service.name"));
                        for scope in resource.scope_spans {
                            kept.lock().unwrap().extend(scope.spans);
                        }
                    }
                    ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Collector { endpoint, spans }
    }

    fn config(&self) -> String {
        format!(
            "telemetry:\n  otlp:\n    endpoint: \"{}\"\n    headers: {{ x-collector-key: k-123 }}\n",
            self.endpoint
        )
    }

    /// Waits until a span named `name` of trace `trace` arrived.
    async fn wait(&self, trace: &str, name: &str) -> Span {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let found = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| hex(&s.trace_id) == trace && s.name == name)
                .cloned();
            if let Some(span) = found {
                return span;
            }
            let seen: Vec<String> =
                self.spans.lock().unwrap().iter().map(|s| s.name.clone()).collect();
            assert!(
                std::time::Instant::now() < deadline,
                "no {name:?} span of {trace}; saw {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|a| a.key == key)?.value.clone()?.value?;
    Some(match value {
        Value::StringValue(s) => s,
        Value::IntValue(i) => i.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test]
async fn ingest_commit_and_publish_spans_reach_an_otlp_collector_in_the_senders_trace() {
    let collector = Collector::start().await;
    let exchange = unique("spans");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    // First run: the broker unreachable, so the event is published only after the restart.
    let down = format!(
        "brokers:\n  rabbitmq:\n    url: \"amqp://guest:guest@127.0.0.1:1/%2f\"\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: x }} }} ]\n{}",
        collector.config()
    );
    let app = TestApp::spawn(&down).await;
    // The sender does not record this trace (flags 00): the ratio (1 by default) picks it.
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let id = post(&app, &[("traceparent", unsampled), ("tracestate", "rojo=1")]).await;

    let ingest = collector.wait(TRACE_ID, "POST /api/events/{event_type}").await;
    assert_eq!(ingest.kind, SpanKind::Server as i32);
    assert_eq!(hex(&ingest.parent_span_id), "00f067aa0ba902b7", "under the sender's span");
    assert_eq!(ingest.flags & 0x300, 0x300, "the sender's span is a remote parent");
    assert_eq!(ingest.trace_state, "rojo=1");
    assert_eq!(attr(&ingest, "http.response.status_code").as_deref(), Some("202"));
    assert_eq!(attr(&ingest, "orchestron.source").as_deref(), Some("default"));
    assert_eq!(attr(&ingest, "orchestron.event_type").as_deref(), Some("trace.test"));
    assert_eq!(attr(&ingest, "orchestron.event_id").as_deref(), Some(id.as_str()));
    assert!(ingest.end_time_unix_nano >= ingest.start_time_unix_nano);
    let commit = collector.wait(TRACE_ID, "store commit").await;
    assert_eq!(commit.parent_span_id, ingest.span_id, "the commit is the request's child");
    assert_eq!(commit.flags & 0x300, 0x100, "a local parent");
    let batch: u64 = attr(&commit, "orchestron.batch.events").unwrap().parse().unwrap();
    assert!(batch >= 1);
    // A refused request is traced too, as a refusal, not an error.
    let refused = app
        .client
        .post(app.url("/api/events/trace.test"))
        .header("X-API-Key", "wrong")
        .header("Content-Type", "application/json")
        .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let span =
        collector.wait("0af7651916cd43dd8448eb211c80319c", "POST /api/events/{event_type}").await;
    assert_eq!(attr(&span, "http.response.status_code").as_deref(), Some("401"));
    assert_eq!(attr(&span, "orchestron.result").as_deref(), Some("refused"));
    let dir = app.stop().await;

    // Second run, the broker reachable: the publish span of the stored event, hours or a
    // restart later, is still the ingest span's child, and its id is the message's.
    let up = down.replace("127.0.0.1:1/", "127.0.0.1:5672/");
    let app = TestApp::spawn_in(dir, &up).await;
    let got = queue.collect(1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "published after the restart");
    let (trace, span_id, flags) = fields(&got[0].headers["traceparent"]);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE_ID, "01"), "sampled: it is recorded");
    let publish = collector.wait(TRACE_ID, &format!("publish {exchange}")).await;
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(hex(&publish.span_id), span_id, "the message's span is the publish span");
    assert_eq!(publish.parent_span_id, ingest.span_id, "linked to the ingest before the restart");
    assert_eq!(attr(&publish, "messaging.system").as_deref(), Some("rabbitmq"));
    assert_eq!(attr(&publish, "messaging.message.id").as_deref(), Some(id.as_str()));
    assert_eq!(attr(&publish, "orchestron.attempt").as_deref(), Some("1"));
    assert_eq!(attr(&publish, "orchestron.result").as_deref(), Some("confirmed"));
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("orchestron_trace_spans_exported_total ")),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_collector_that_is_down_costs_spans_not_webhooks() {
    // Nothing listens on port 1: every export fails, and is counted.
    let app = TestApp::spawn(
        "telemetry:\n  otlp: { endpoint: \"http://127.0.0.1:1\", timeout: 1s }\n\
         brokers:\n  rabbitmq: { url: \"amqp://guest:guest@127.0.0.1:1/%2f\" }\n\
         default_route:\n  to: [ { rabbitmq: { exchange: spans-unused, routing_key: k } } ]\n",
    )
    .await;
    let started = std::time::Instant::now();
    for _ in 0..20 {
        post(&app, &[("traceparent", SENT)]).await;
    }
    assert!(started.elapsed() < Duration::from_secs(5), "ingest does not wait for the export");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let failed: f64 = text
            .lines()
            .find(|l| {
                l.starts_with("orchestron_trace_spans_dropped_total{reason=\"export_failed\"}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0);
        if failed >= 40.0 {
            break; // 20 requests, 20 commits
        }
        assert!(std::time::Instant::now() < deadline, "spans dropped: {failed}\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}
