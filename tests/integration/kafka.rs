//! Delivery to Kafka: rdkafka's MockCluster (fault injection) and the tansu broker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::helpers::{KAFKA, ProxiedTansu, Received, TestApp, unique};

fn kafka_config(bootstrap: &str, topic: &str, extra_props: &str) -> String {
    format!(
        "brokers:\n  kafka:\n    bootstrap_servers: \"{bootstrap}\"\n    message_timeout: 10s\n{extra_props}\
         relay:\n  backoff: {{ initial: 100ms, max: 1s }}\n\
         default_route:\n  to:\n    - kafka: {{ topic: {topic}, key: /customer }}\n"
    )
}

fn body(n: usize) -> String {
    format!("{{\"n\": {n}, \"customer\": \"c{}\"}}", n % 5)
}

/// Reads `n` records from every partition of `topic`, from the beginning.
pub(crate) async fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    n: usize,
    within: Duration,
) -> Vec<Received> {
    consume_with(bootstrap, topic, partitions, n, within, &[]).await
}

/// Creates `topic` with `partitions` on the broker at `bootstrap`, with client `settings`
/// (TLS, SASL).
pub(crate) async fn create_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("the Kafka-protocol broker answers");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
}

/// [`consume`] with more consumer settings (TLS, SASL).
pub(crate) async fn consume_with(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    n: usize,
    within: Duration,
    settings: &[(&str, &str)],
) -> Vec<Received> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("g"))
        .set("enable.auto.commit", "false");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let consumer: StreamConsumer = config.create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n {
        let Ok(next) = tokio::time::timeout_at(deadline, consumer.recv()).await else { break };
        let Ok(m) = next else { continue };
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Received {
            body: m.payload().unwrap_or_default().to_vec(),
            headers,
            key: m.key().map(<[u8]>::to_vec),
            routing_key: format!("{}", m.partition()),
            message_id: None,
            delivery_mode: None,
        });
    }
    out
}

fn check_delivered(sent: &BTreeMap<String, String>, got: &[Received]) {
    let ids: BTreeSet<_> = got.iter().map(|m| m.headers["ce_id"].clone()).collect();
    assert_eq!(ids.len(), got.len(), "no duplicates");
    assert_eq!(ids, sent.keys().cloned().collect(), "exactly the accepted events");
    let mut partition_of_customer = BTreeMap::new();
    for m in got {
        let body = &sent[&m.headers["ce_id"]];
        assert_eq!(m.body, body.as_bytes(), "body byte for byte");
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        let customer = value["customer"].as_str().unwrap();
        assert_eq!(m.key.as_deref(), Some(customer.as_bytes()), "key from the JSON pointer");
        for h in ["ce_specversion", "ce_type", "ce_source", "ce_time", "content-type"] {
            assert!(m.headers.contains_key(h), "header {h} missing");
        }
        assert_eq!(m.headers["ce_type"], "order.created");
        let partition =
            partition_of_customer.entry(customer.to_owned()).or_insert(m.routing_key.clone());
        assert_eq!(*partition, m.routing_key, "one customer's events share a partition");
    }
}

async fn post_all(app: &TestApp, range: std::ops::Range<usize>) -> BTreeMap<String, String> {
    let posts = range.map(|n| async move { (app.accept("order.created", body(n)).await, body(n)) });
    futures_util::future::join_all(posts).await.into_iter().collect()
}

#[tokio::test]
async fn mock_cluster_receives_every_event_with_key_and_headers_despite_request_errors() {
    let mock = MockCluster::new(3).unwrap();
    let topic = unique("t");
    mock.create_topic(&topic, 3, 3).unwrap();
    // The first produce requests fail with retriable errors: the idempotent producer retries
    // them without duplicating.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 4],
    );
    let bootstrap = mock.bootstrap_servers();
    let app = TestApp::spawn(&kafka_config(&bootstrap, &topic, "")).await;
    let sent = post_all(&app, 0..100).await;
    let got = consume(&bootstrap, &topic, 3, 100, Duration::from_secs(30)).await;
    check_delivered(&sent, &got);
    app.stop().await;
}

#[tokio::test]
async fn mock_cluster_down_then_up_delivers_the_backlog_once() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("t");
    mock.create_topic(&topic, 2, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    mock.broker_down(1).unwrap();
    let app = TestApp::spawn(&kafka_config(&bootstrap, &topic, "")).await;
    let sent = post_all(&app, 0..40).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    mock.broker_up(1).unwrap();
    let got = consume(&bootstrap, &topic, 2, 40, Duration::from_secs(30)).await;
    check_delivered(&sent, &got);
    app.stop().await;
}

#[tokio::test]
async fn mock_cluster_down_during_load_loses_nothing() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("t");
    mock.create_topic(&topic, 2, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let app = TestApp::spawn(&kafka_config(&bootstrap, &topic, "")).await;
    let mut sent = BTreeMap::new();
    for n in 0..200 {
        if n == 60 {
            mock.broker_down(1).unwrap();
        }
        if n == 160 {
            mock.broker_up(1).unwrap();
        }
        sent.insert(app.accept("order.created", body(n)).await, body(n));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = consume(&bootstrap, &topic, 2, usize::MAX, Duration::from_secs(25)).await;
    let ids: BTreeMap<String, usize> = got.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.headers["ce_id"].clone()).or_default() += 1;
        m
    });
    let lost = sent.keys().filter(|id| !ids.contains_key(*id)).count();
    let duplicated: usize = ids.values().map(|c| c - 1).sum();
    println!(
        "kafka outage under load: sent={} delivered={} lost={lost} duplicated={duplicated}",
        sent.len(),
        got.len()
    );
    assert_eq!(lost, 0);
    assert!(ids.keys().all(|id| sent.contains_key(id)), "nothing unexpected");
    app.stop().await;
}

#[tokio::test]
async fn fatal_producer_error_recreates_the_producer_and_delivery_continues() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("t");
    mock.create_topic(&topic, 1, 1).unwrap();
    // The idempotent producer's first InitProducerId is refused with an authorization error,
    // which librdkafka raises as a fatal error: that producer can never send again.
    mock.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED],
    );
    let bootstrap = mock.bootstrap_servers();
    let app = TestApp::spawn(&kafka_config(&bootstrap, &topic, "")).await;
    let sent = post_all(&app, 0..5).await;
    let got = consume(&bootstrap, &topic, 1, 5, Duration::from_secs(30)).await;
    check_delivered(&sent, &got);
    app.stop().await;
}

#[tokio::test]
async fn oversized_record_is_dead_lettered_as_rejected_and_the_rest_is_delivered() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("t");
    mock.create_topic(&topic, 1, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let props = "    properties:\n      message.max.bytes: \"4096\"\n";
    let app = TestApp::spawn(&kafka_config(&bootstrap, &topic, props)).await;
    let big = format!("{{\"customer\": \"big\", \"pad\": \"{}\"}}", "x".repeat(8000));
    let big_id = app.accept("order.created", big).await;
    let sent = post_all(&app, 0..10).await;
    let got = consume(&bootstrap, &topic, 1, 11, Duration::from_secs(5)).await;
    assert!(got.iter().all(|m| m.headers["ce_id"] != big_id), "too large: not delivered");
    check_delivered(&sent, &got);
    let dir = app.stop().await;

    // Not dropped either: it is in the dead-letter queue, as a permanent rejection.
    let config = orchestron::config::StoreConfig {
        path: dir.path().join("orchestron.redb"),
        max_bytes: bytesize::ByteSize::gib(1),
        cache_bytes: bytesize::ByteSize::mib(4),
        commit_batch_max: 16,
        dedup_window: orchestron::config::HumanDuration::from_secs(3600),
        quick_repair: false,
        min_free_bytes: None,
        reserve_bytes: None,
    };
    let (store, closer) = orchestron::store::Store::open(&config).unwrap();
    assert_eq!(store.pending().await.unwrap(), 0);
    let id = orchestron::event::EventId::parse(&big_id).unwrap();
    let entry = store.dlq_get(id).await.unwrap().expect("dead-lettered");
    assert_eq!(entry.record.reason, orchestron::delivery::Reason::Rejected);
    assert!(entry.record.destinations[0].state.last_error.as_ref().unwrap().contains("too large"));
    closer.close().await;
}

#[tokio::test]
async fn tansu_broker_receives_every_event_with_its_key() {
    let topic = unique("t");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", KAFKA).create().unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("a Kafka-protocol broker on 127.0.0.1:9092 (bash .ci/run starts tansu)");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let app = TestApp::spawn(&kafka_config(KAFKA, &topic, "")).await;
    let sent = post_all(&app, 0..100).await;
    let got = consume(KAFKA, &topic, 3, 100, Duration::from_secs(30)).await;
    check_delivered(&sent, &got);
    app.stop().await;
}

/// A real broker (tansu) cut off behind a proxy while events are in flight, for longer than
/// the message timeout: librdkafka gives the in-flight records up and, when the broker is
/// back, its idempotent producer must start over (tansu answers `ProducerFenced`). The daemon
/// replaces the producer: every event is delivered, none is dead-lettered, and no attempt is
/// burned on the outage (nothing counted as a transient failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kafka_outage_longer_than_the_message_timeout_everything_is_delivered() {
    let tansu = ProxiedTansu::start().await;
    let bootstrap = tansu.bootstrap();
    let topic = unique("t");
    create_topic(&bootstrap, &topic, 1, &[]).await;
    let app = TestApp::spawn(&kafka_config(&bootstrap, &topic, "")).await;
    let mut sent = post_all(&app, 0..1).await;
    assert_eq!(consume(&bootstrap, &topic, 1, 1, Duration::from_secs(20)).await.len(), 1);

    tansu.proxy.set_up(false);
    sent.extend(post_all(&app, 1..40).await);
    // Past `message_timeout` (10 s): what librdkafka held is given up.
    tokio::time::sleep(Duration::from_secs(12)).await;
    sent.extend(post_all(&app, 40..60).await);
    tansu.proxy.set_up(true);

    let got = consume(&bootstrap, &topic, 1, usize::MAX, Duration::from_secs(20)).await;
    let ids: BTreeSet<_> = got.iter().map(|m| m.headers["ce_id"].clone()).collect();
    let missing: Vec<_> = sent.keys().filter(|id| !ids.contains(*id)).collect();
    assert!(missing.is_empty(), "{} of {} not delivered", missing.len(), sent.len());
    let metrics = reqwest::get(app.url("/metrics")).await.unwrap().text().await.unwrap();
    let burned: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("orchestron_relay_publish_total") && !l.contains("result=\"ok\""))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    assert!(burned.is_empty(), "attempts counted on the outage: {burned:?}");
    assert!(metrics.contains("orchestron_dlq_entries 0"), "nothing dead-lettered");
    app.stop().await;
}

#[tokio::test]
async fn a_slow_kafka_does_not_hold_up_rabbitmq() {
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("t");
    mock.create_topic(&topic, 1, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let exchange = unique("ex");
    let mut queue = crate::helpers::RabbitQueue::bind(&exchange, "#").await;
    let config = format!(
        "brokers:\n  rabbitmq: {{ url: \"{}\" }}\n  kafka: {{ bootstrap_servers: \"{bootstrap}\" }}\n\
         default_route:\n  to:\n    - kafka: {{ topic: {topic}, key: /customer }}\n    - rabbitmq: {{ exchange: {exchange}, routing_key: k }}\n",
        crate::helpers::AMQP_URL
    );
    let app = TestApp::spawn(&config).await;
    // Let the producer connect, then make every Kafka round trip take 2 seconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    mock.broker_round_trip_time(1, Duration::from_secs(2)).unwrap();
    let started = std::time::Instant::now();
    let sent = post_all(&app, 0..20).await;
    let got = queue.collect(20, Duration::from_secs(10)).await;
    let rabbit_time = started.elapsed();
    assert_eq!(got.len(), 20);
    assert!(
        rabbit_time < Duration::from_millis(1500),
        "RabbitMQ waited for Kafka: {rabbit_time:?}"
    );
    // Kafka gets them too, once it is fast again.
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
    let kafka = consume(&bootstrap, &topic, 1, 20, Duration::from_secs(30)).await;
    check_delivered(&sent, &kafka);
    app.stop().await;
}
