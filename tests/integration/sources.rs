//! `POST /hooks/{source}`: signatures, API key hashes and rotation, idempotency, rate and
//! size limits, against the real daemon and the real RabbitMQ.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{AMQP_URL, API_KEY, RabbitQueue, TestApp, unique};

/// base64 of the key bytes; the config carries it with the `whsec_` prefix, as senders show it.
const SW_KEY: &str = "c2VjcmV0LWtleS1mb3ItdGhlLXRlc3RzLW9ubHktMzI=";

fn config(exchange: &str) -> String {
    let hashed = hex::encode(Sha256::digest(b"metered-key-1"));
    format!(
        "brokers:\n  rabbitmq:\n    url: \"{AMQP_URL}\"\n\
         relay:\n  backoff: {{ initial: 100ms, max: 1s }}\n\
         sources:\n\
         \x20 billing:\n\
         \x20   verify: {{ scheme: standard-webhooks, secret: \"whsec_{SW_KEY}\" }}\n\
         \x20   event_type: {{ pointer: /type }}\n\
         \x20   keep_headers: [webhook-id, x-tenant]\n\
         \x20 metered:\n\
         \x20   api_keys: [\"sha256:{hashed}\", \"metered-key-2\"]\n\
         \x20   event_type: {{ fixed: usage.recorded }}\n\
         \x20   rate_limit: {{ per_second: 1, burst: 2 }}\n\
         \x20   max_body_bytes: 1KiB\n\
         \x20 slack:\n\
         \x20   verify: {{ scheme: slack, secret: slack-signing-secret }}\n\
         \x20   event_type: {{ pointer: /event/type }}\n\
         default_route:\n  to:\n    - rabbitmq: {{ exchange: {exchange}, routing_key: \"{{source}}.{{type}}\" }}\n"
    )
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A Standard Webhooks signature header for `body`.
fn sw_sign(id: &str, ts: i64, body: &str) -> String {
    let key = BASE64.decode(SW_KEY).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

async fn hook(
    app: &TestApp,
    source: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, serde_json::Value) {
    let mut request = app
        .client
        .post(app.url(&format!("/hooks/{source}")))
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

fn signed(id: &str, ts: i64, body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", sw_sign(id, ts, body)),
        ("x-tenant", "acme".to_owned()),
    ]
}

#[tokio::test]
async fn a_signed_source_accepts_only_valid_signatures_and_publishes_a_redelivery_once() {
    let exchange = unique("ex");
    let mut queue = RabbitQueue::bind(&exchange, "billing.#").await;
    let app = TestApp::spawn(&config(&exchange)).await;
    let body = r#"{"type":"invoice.paid", "amount" : 12.50}"#;
    let t = now();

    let (status, first) = hook(&app, "billing", &signed("msg_1", t, body), body).await;
    assert_eq!(status, 202, "{first}");
    // The sender retries: same webhook-id, new timestamp and signature.
    let (status, again) = hook(&app, "billing", &signed("msg_1", t + 5, body), body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["event_id"], first["event_id"]);

    let mut wrong = signed("msg_2", t, body);
    wrong[2].1 = sw_sign("msg_2", t, r#"{"type":"invoice.paid","amount":1250}"#);
    let stale = signed("msg_3", t - 600, body);
    let mut empty = signed("msg_4", t, body);
    empty[2].1 = String::new();
    let missing: Vec<_> = signed("msg_5", t, body).into_iter().take(2).collect();
    for (what, headers) in
        [("wrong", wrong), ("stale", stale), ("empty", empty), ("missing", missing)]
    {
        let (status, answer) = hook(&app, "billing", &headers, body).await;
        assert_eq!(status, 401, "{what}: {answer}");
        assert_eq!(answer["error"], "invalid_signature", "{what}");
        assert!(!answer.to_string().contains(SW_KEY), "the secret is never echoed");
    }
    let (status, answer) = hook(&app, "nope", &signed("msg_6", t, body), body).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("unknown_source")));
    // The generic source is not a hook.
    let (status, _) = hook(&app, "default", &[("x-api-key", API_KEY.to_owned())], body).await;
    assert_eq!(status, 404);

    let got = queue.collect(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "published once: {got:?}");
    let m = &got[0];
    assert_eq!(m.body, body.as_bytes(), "the raw bytes, as signed");
    assert_eq!(m.routing_key, "billing.invoice.paid");
    assert_eq!(m.headers["ce_source"], "billing");
    assert_eq!(m.headers["ce_id"], first["event_id"].as_str().unwrap());
    assert_eq!(m.headers["webhook-id"], "msg_1", "kept header");
    assert_eq!(m.headers["x-tenant"], "acme", "kept header");
    assert!(!m.headers.contains_key("webhook-signature"), "not kept");

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"orchestron_ingest_duplicates_total{source="billing"} 1"#));
    assert!(
        metrics
            .contains(r#"orchestron_ingest_rejected_total{reason="signature",source="billing"} 4"#),
        "{metrics}"
    );
    assert!(!metrics.contains("nope"), "unknown names never become labels");
    assert!(!metrics.contains(SW_KEY) && !metrics.contains("c2VjcmV0"), "no secret in metrics");
    app.stop().await;
}

#[tokio::test]
async fn api_keys_may_be_hashes_and_each_key_has_its_own_rate_limit() {
    let exchange = unique("ex");
    let app = TestApp::spawn(&config(&exchange)).await;
    let with_key = |k: &str| vec![("x-api-key", k.to_owned())];
    for _ in 0..2 {
        let (status, answer) = hook(&app, "metered", &with_key("metered-key-1"), "{}").await;
        assert_eq!(status, 202, "the hashed key is accepted: {answer}");
    }
    let response = app
        .client
        .post(app.url("/hooks/metered"))
        .header("x-api-key", "metered-key-1")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // The other key's bucket is untouched; a wrong key is refused before any bucket.
    let (status, _) = hook(&app, "metered", &with_key("metered-key-2"), "{}").await;
    assert_eq!(status, 202);
    let (status, _) = hook(&app, "metered", &with_key("sha256:nope"), "{}").await;
    assert_eq!(status, 401);
    // After a second, the first key may send again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = hook(&app, "metered", &with_key("metered-key-1"), "{}").await;
    assert_eq!(status, 202);
    app.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_is_remembered_across_a_restart() {
    let exchange = unique("ex");
    let app = TestApp::spawn(&config(&exchange)).await;
    let send = |app: &TestApp| {
        app.client
            .post(app.url("/api/events/order.created"))
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .header("idempotency-key", "order-42")
            .body(r#"{"order_id":"42","customer_id":"c1","total":1}"#)
            .send()
    };
    let first: serde_json::Value = send(&app).await.unwrap().json().await.unwrap();
    assert_eq!(first["status"], "accepted");
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, &config(&exchange)).await;
    let response = send(&app).await.unwrap();
    assert_eq!(response.status(), 200);
    let again: serde_json::Value = response.json().await.unwrap();
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["event_id"], first["event_id"]);
    app.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_duplicates_publish_exactly_one_event() {
    let exchange = unique("ex");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let app = TestApp::spawn(&config(&exchange)).await;
    let body = r#"{"type":"invoice.created"}"#;
    let t = now();
    let sends = (0..50).map(|i| {
        let headers = signed("msg_same", t + i, body);
        let app = &app;
        async move { hook(app, "billing", &headers, body).await }
    });
    let answers = futures_util::future::join_all(sends).await;
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    let duplicates = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!((accepted, duplicates), (1, 49), "{answers:?}");
    let ids: std::collections::BTreeSet<_> =
        answers.iter().map(|(_, a)| a["event_id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "every answer names the one event");
    let got = queue.collect(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "one message on the queue");
    app.stop().await;
}

#[tokio::test]
async fn a_signed_slack_url_verification_is_echoed_and_not_stored() {
    let exchange = unique("ex");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let app = TestApp::spawn(&config(&exchange)).await;
    let slack = |body: &str, secret: &[u8]| {
        let ts = now().to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        let signature = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        vec![("x-slack-request-timestamp", ts), ("x-slack-signature", signature)]
    };
    let handshake = r#"{"token":"t","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let (status, answer) =
        hook(&app, "slack", &slack(handshake, b"slack-signing-secret"), handshake).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );
    let (status, _) = hook(&app, "slack", &slack(handshake, b"wrong"), handshake).await;
    assert_eq!(status, 401, "an unsigned handshake gets nothing");

    let event = r#"{"type":"event_callback","event":{"type":"app_mention","text":"hi"}}"#;
    let (status, _) = hook(&app, "slack", &slack(event, b"slack-signing-secret"), event).await;
    assert_eq!(status, 202);
    let got = queue.collect(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "only the event, not the handshake, is published");
    assert_eq!(got[0].routing_key, "slack.app_mention");
    app.stop().await;
}

/// Sends `head` and then `body` in pieces, stopping at the first write error (the server may
/// answer and close early); returns the status line the server sent.
async fn raw_exchange(addr: std::net::SocketAddr, head: &str, body: &[Vec<u8>]) -> (String, usize) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut sent = 0;
    for piece in body {
        if stream.write_all(piece).await.is_err() {
            break;
        }
        sent += piece.len();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    (text.lines().next().unwrap_or_default().to_owned(), sent)
}

#[tokio::test]
async fn oversize_bodies_are_refused_by_declared_length_and_cut_off_when_chunked() {
    let app = TestApp::spawn(&config(&unique("ex"))).await;
    let head = |framing: &str| {
        format!(
            "POST /hooks/metered HTTP/1.1\r\nhost: x\r\nx-api-key: metered-key-2\r\n\
             content-type: application/json\r\nconnection: close\r\n{framing}\r\n\r\n"
        )
    };
    // 10 MB announced, nothing sent: the answer comes without waiting for the body.
    let started = std::time::Instant::now();
    let (status, _) = raw_exchange(app.addr, &head("content-length: 10000000"), &[]).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Chunked, 1 KiB limit: 64 chunks of 100 bytes would be 6.4 KB.
    let chunk = |n: usize| format!("{:x}\r\n{}\r\n", n, "7".repeat(n)).into_bytes();
    let mut pieces: Vec<Vec<u8>> = (0..64).map(|_| chunk(100)).collect();
    pieces.push(b"0\r\n\r\n".to_vec());
    let (status, _) = raw_exchange(app.addr, &head("transfer-encoding: chunked"), &pieces).await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    app.stop().await;
}
