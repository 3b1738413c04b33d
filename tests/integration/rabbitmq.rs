//! Delivery to the real RabbitMQ.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::helpers::{AMQP_URL, Proxy, RabbitQueue, TestApp, unique, wait_dlq};

fn rabbit_config(url: &str, exchange: &str) -> String {
    format!(
        "brokers:\n  rabbitmq:\n    url: \"{url}\"\n    confirm_timeout: 5s\n\
         relay:\n  backoff: {{ initial: 100ms, max: 1s }}\n\
         default_route:\n  to:\n    - rabbitmq: {{ exchange: {exchange}, routing_key: \"{{source}}.{{type}}\" }}\n"
    )
}

/// Bodies with odd spacing and unicode, so re-serialising them would show.
fn body(n: usize) -> String {
    format!("{{ \"n\" : {n},\"pad\":\"{}\" , \"é\": [1, 2.50, null]}}", "x".repeat(n % 7))
}

#[tokio::test]
async fn concurrent_posts_arrive_once_each_byte_identical_with_cloudevents_headers() {
    let exchange = unique("ex");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let app = TestApp::spawn(&rabbit_config(AMQP_URL, &exchange)).await;

    const N: usize = 200;
    let posts = (0..N).map(|n| {
        let app = &app;
        async move { (app.accept("order.created", body(n)).await, body(n)) }
    });
    let sent: BTreeMap<String, String> =
        futures_util::future::join_all(posts).await.into_iter().collect();
    assert_eq!(sent.len(), N, "event ids are unique");

    let got = queue.collect(N, Duration::from_secs(30)).await;
    assert_eq!(got.len(), N, "every accepted event arrives");
    for m in &got {
        let id = &m.headers["ce_id"];
        let expected = sent.get(id).unwrap_or_else(|| panic!("unexpected ce_id {id}"));
        assert_eq!(m.body, expected.as_bytes(), "body byte for byte");
        assert_eq!(m.headers["ce_type"], "order.created");
        assert_eq!(m.headers["ce_source"], "default");
        assert_eq!(m.headers["ce_specversion"], "1.0");
        assert_eq!(m.headers["content-type"], "application/json");
        assert!(m.headers["ce_time"].ends_with('Z'), "{}", m.headers["ce_time"]);
        assert_eq!(m.message_id.as_deref(), Some(id.as_str()));
        assert_eq!(m.delivery_mode, Some(2), "persistent");
        assert_eq!(m.routing_key, "default.order.created");
    }
    let ids: BTreeSet<_> = got.iter().map(|m| m.headers["ce_id"].clone()).collect();
    assert_eq!(ids.len(), N, "no duplicates");
    assert!(queue.collect(1, Duration::from_millis(500)).await.is_empty(), "nothing extra");
    app.stop().await;
}

#[tokio::test]
async fn broker_down_at_start_then_cut_under_load_loses_nothing() {
    let exchange = unique("ex");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let proxy = Proxy::start("127.0.0.1:5672", false).await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let app = TestApp::spawn(&rabbit_config(&url, &exchange)).await;

    // Down at start: everything is accepted and waits in the outbox.
    let mut sent = BTreeMap::new();
    for n in 0..50 {
        sent.insert(app.accept("a.b", body(n)).await, body(n));
    }
    assert!(queue.collect(1, Duration::from_secs(1)).await.is_empty(), "nothing while down");
    proxy.set_up(true);
    let mut got = queue.collect(50, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 50, "delivered after the broker came back");

    // Cut the connection while events stream in, then restore it.
    let load = {
        let app = &app;
        async move {
            let mut sent = BTreeMap::new();
            for n in 50..250 {
                sent.insert(app.accept("a.b", body(n)).await, body(n));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            sent
        }
    };
    let faults = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.set_up(false);
        tokio::time::sleep(Duration::from_millis(700)).await;
        proxy.set_up(true);
    };
    let (more, ()) = tokio::join!(load, faults);
    sent.extend(more);
    got.extend(queue.collect(200, Duration::from_secs(30)).await);
    got.extend(queue.collect(usize::MAX, Duration::from_secs(2)).await);

    let delivered: BTreeMap<String, usize> = got.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.headers["ce_id"].clone()).or_default() += 1;
        m
    });
    let lost: Vec<_> = sent.keys().filter(|id| !delivered.contains_key(*id)).collect();
    let unexpected: Vec<_> = delivered.keys().filter(|id| !sent.contains_key(*id)).collect();
    let duplicated: usize = delivered.values().map(|c| c - 1).sum();
    println!(
        "sent={} delivered={} lost={} unexpected={} duplicated={duplicated}",
        sent.len(),
        got.len(),
        lost.len(),
        unexpected.len()
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(unexpected.is_empty(), "unexpected: {unexpected:?}");
    // Only messages in flight when the connection was cut can be published twice.
    assert!(duplicated <= 1024, "duplicated {duplicated} > the unconfirmed window");
    for r in &got {
        assert_eq!(r.body, sent[&r.headers["ce_id"]].as_bytes());
    }
    app.stop().await;
}

#[tokio::test]
async fn unroutable_return_is_not_delivery_and_is_retried_until_a_queue_is_bound() {
    let exchange = unique("ex");
    // The daemon declares the exchange; no queue is bound yet, so every publish comes back.
    let config = rabbit_config(AMQP_URL, &exchange).replace(
        "    confirm_timeout: 5s\n",
        &format!("    confirm_timeout: 5s\n    declare:\n      exchanges: [ {{ name: {exchange}, type: topic }} ]\n"),
    );
    let app = TestApp::spawn(&config).await;
    let id = app.accept("x.y", body(1)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let got = queue.collect(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "kept and retried after the mandatory return");
    assert_eq!(got[0].headers["ce_id"], id);
    app.stop().await;
}

/// Routable and unroutable messages published together on one exchange (so on the same
/// channels): each return must be charged to the message that came back. lapin gives a
/// returned message to whichever confirm it completes next, so trusting the confirm would
/// settle a message no queue took as delivered, and dead-letter a delivered one.
#[tokio::test]
async fn returns_are_charged_to_the_message_that_came_back_when_publishes_overlap() {
    let exchange = unique("ex");
    let mut queue = RabbitQueue::bind(&exchange, "bound").await;
    let config = format!(
        "brokers:\n  rabbitmq:\n    url: \"{AMQP_URL}\"\n\
         relay:\n  max_attempts: 1\n\
         routes:\n  - match: {{ type: \"bad.*\" }}\n    to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: unbound }} }} ]\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: bound }} }} ]\n"
    );
    let app = TestApp::spawn(&config).await;

    const N: usize = 300;
    let posts = (0..N).map(|n| {
        let app = &app;
        let ty = if n % 2 == 0 { "good.one" } else { "bad.one" };
        async move { (app.accept(ty, body(n)).await, n) }
    });
    let sent: BTreeMap<String, usize> =
        futures_util::future::join_all(posts).await.into_iter().collect();

    // One attempt each: a routable message charged with a return would be dead-lettered, an
    // unroutable one charged with a clean ack would be settled as delivered.
    let page = wait_dlq(&app, N / 2).await;
    let dead: BTreeSet<String> = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let got = queue.collect(N / 2, Duration::from_secs(30)).await;
    let delivered: BTreeSet<String> = got.iter().map(|m| m.headers["ce_id"].clone()).collect();
    let odd = |id: &String| sent[id] % 2 == 1;
    assert_eq!(delivered.len(), N / 2, "every routable event delivered once");
    assert!(!delivered.iter().any(odd), "an unroutable event on the queue");
    assert_eq!(dead.len(), N / 2, "exactly the unroutable events dead-lettered");
    assert!(dead.iter().all(odd), "a routable event was dead-lettered as returned");
    assert!(queue.collect(1, Duration::from_millis(500)).await.is_empty(), "nothing extra");
    app.stop().await;
}

/// A publish to an exchange that does not exist makes the broker close its channel. Those
/// events are dead-lettered as `rejected` at once, and events to a healthy exchange published
/// at the same time are neither lost nor repeated (channels are per exchange).
#[tokio::test]
async fn a_missing_exchange_rejects_only_its_own_events() {
    let exchange = unique("ex");
    let missing = unique("missing");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let config = format!(
        "brokers:\n  rabbitmq:\n    url: \"{AMQP_URL}\"\n\
         relay:\n  max_attempts: 3\n  backoff: {{ initial: 50ms, max: 100ms }}\n\
         routes:\n  - match: {{ type: \"lost.*\" }}\n    to: [ {{ rabbitmq: {{ exchange: {missing}, routing_key: x }} }} ]\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: x }} }} ]\n"
    );
    let app = TestApp::spawn(&config).await;
    const N: usize = 200;
    let posts = (0..N).map(|n| {
        let app = &app;
        let ty = if n % 2 == 0 { "kept.one" } else { "lost.one" };
        async move { (app.accept(ty, body(n)).await, n) }
    });
    let sent: BTreeMap<String, usize> =
        futures_util::future::join_all(posts).await.into_iter().collect();

    let page = wait_dlq(&app, N / 2).await;
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), N / 2);
    for entry in entries {
        assert_eq!(sent[entry["event_id"].as_str().unwrap()] % 2, 1, "{entry}");
        assert_eq!(entry["reason"], "rejected", "{entry}");
        assert_eq!(entry["destinations"][0]["attempts"], 1, "permanent: one attempt");
    }
    let got = queue.collect(N / 2, Duration::from_secs(30)).await;
    let ids: BTreeSet<String> = got.iter().map(|m| m.headers["ce_id"].clone()).collect();
    assert_eq!((got.len(), ids.len()), (N / 2, N / 2), "each healthy event once");
    assert!(ids.iter().all(|id| sent[id].is_multiple_of(2)));
    assert!(queue.collect(1, Duration::from_millis(500)).await.is_empty(), "nothing extra");
    app.stop().await;
}

#[tokio::test]
async fn accepted_events_survive_a_restart_before_the_broker_is_reachable() {
    let exchange = unique("ex");
    let proxy = Proxy::start("127.0.0.1:5672", false).await;
    let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
    let app = TestApp::spawn(&rabbit_config(&url, &exchange)).await;
    let mut ids = BTreeSet::new();
    for n in 0..20 {
        ids.insert(app.accept("r.s", body(n)).await);
    }
    let dir = app.stop().await;

    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    proxy.set_up(true);
    let app = TestApp::spawn_in(dir, &rabbit_config(&url, &exchange)).await;
    let got = queue.collect(20, Duration::from_secs(20)).await;
    let got_ids: BTreeSet<_> = got.iter().map(|m| m.headers["ce_id"].clone()).collect();
    assert_eq!(got_ids, ids);
    app.stop().await;
}
