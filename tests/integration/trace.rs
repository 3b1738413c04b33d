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
