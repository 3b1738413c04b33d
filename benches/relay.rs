//! Relay benchmark: the daemon draining a backlog into RabbitMQ against bare lapin publishers,
//! in one run (PERFORMANCE.md, "relay to RabbitMQ").
//!
//! ```text
//! cargo bench --bench relay          # needs RabbitMQ on 127.0.0.1:5672 (guest/guest)
//! cargo bench --bench relay -- kafka # needs a Kafka-protocol broker on 127.0.0.1:9092 (tansu)
//! ```
//!
//! Kafka: `rdkafka` (a bare producer with the daemon's settings, all sends at once),
//! `rdkafka-windowed` (the same, at most 1,000 records awaiting a report), `relay` (the daemon,
//! as below) and `relay-tls` (the daemon over TLS: a tansu of the bench's own behind
//! `stunnel4`, which it advertises), each into a new one-partition topic, read back.
//!
//! Every arm sends the same N ~1 KiB messages, persistent and mandatory, to a durable queue
//! bound to a topic exchange, with at most W messages awaiting a publisher confirm:
//! * `lapin-one-channel`: bare lapin, all W unconfirmed messages pipelined on one channel (the
//!   usual publisher, and the ceiling PERFORMANCE.md measures against), minimal properties;
//! * `lapin-same-message`: the same, each message carrying what the daemon's carry (CloudEvents
//!   headers, message id, type, timestamp, app id), so the broker does the same work per message;
//! * `relay`: the release daemon. N events are accepted while the broker is unreachable, the
//!   daemon is stopped and started again with the broker's real address, and the arm times
//!   from the moment `/ready` reports the broker connected (the bare arms, too, start timing
//!   on an open connection) until the outbox is empty; the start-up is printed apart;
//! * `relay-tls`: the same over `amqps://`, through `stunnel4` terminating TLS in front of the
//!   same RabbitMQ (a certificate made for the run). Its ratio to `relay` is the cost of TLS
//!   plus the stunnel hop, an upper bound of what TLS itself costs.
//!
//! Arms interleave, three repeats, medians; each arm checks the queue holds N messages, then
//! purges it. `ORCHESTRON_BENCH_EVENTS` (N, default 20000), `ORCHESTRON_BENCH_WINDOW` (W,
//! default 256), `ORCHESTRON_BENCH_REPEATS` (3), `ORCHESTRON_BENCH_ARMS` (a comma-separated
//! subset), `ORCHESTRON_BENCH_RELAY_CONFIG` (YAML appended to the daemon's config),
//! `ORCHESTRON_BENCH_BINARY` (another build of the daemon, to compare two in one sitting),
//! `ORCHESTRON_BENCH_COMPACT_WAIT` (seconds to wait after the drain for the store file to be
//! compacted back within twice its empty size; each relay arm prints the sizes).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kafka::{kafka_count, kafka_topic};
use common::stunnel::{Stunnel, TlsTansu};
use common::{
    body, cpu_ticks, env_or, free_port, median, outbox_pending, post_event, start_daemon,
    stop_daemon, wait_ok, wait_ready,
};
use futures_util::future::join_all;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::Semaphore;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const KEY: &str = "bench-key";
/// The relay arm timed from its first settled events (a row of its own in the report).
const STEADY: &str = "relay, steady drain";
const ARMS: [&str; 4] = ["lapin-one-channel", "lapin-same-message", "relay", "relay-tls"];

/// A certificate for `localhost` and the CA that signed it, made for the run; the CA is
/// written to `ca.pem` for the daemon and the clients to trust.
struct RunCa {
    cert: String,
    key: String,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl RunCa {
    fn new() -> RunCa {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // OpenSSL (librdkafka) does not build a chain to a CA with an empty subject.
        params.distinguished_name.push(rcgen::DnType::CommonName, "Orchestron bench CA");
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, issuer.pem()).unwrap();
        let cert = format!("{}{}", leaf.pem(), issuer.pem());
        RunCa { cert, key: key.serialize_pem(), ca, _dir: dir }
    }
}

struct Broker {
    conn: Connection,
    exchange: String,
    queue: String,
}

impl Broker {
    async fn setup() -> Broker {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672");
        let suffix = std::process::id();
        let (exchange, queue) = (format!("bench-relay-{suffix}"), format!("bench-relay-{suffix}"));
        let channel = conn.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        let kind = lapin::ExchangeKind::Topic;
        channel
            .exchange_declare(exchange.as_str().into(), kind, durable, FieldTable::default())
            .await
            .unwrap();
        let options = QueueDeclareOptions { durable: true, ..Default::default() };
        channel.queue_declare(queue.as_str().into(), options, FieldTable::default()).await.unwrap();
        let (q, e) = (queue.as_str().into(), exchange.as_str().into());
        let bind = QueueBindOptions::default();
        channel.queue_bind(q, e, "#".into(), bind, FieldTable::default()).await.unwrap();
        Broker { conn, exchange, queue }
    }

    /// Asserts the queue holds `n` messages, then empties it for the next arm.
    async fn check_and_purge(&self, n: u32) {
        let channel = self.conn.create_channel().await.unwrap();
        let purged = channel
            .queue_purge(self.queue.as_str().into(), QueuePurgeOptions::default())
            .await
            .unwrap();
        assert_eq!(purged, n, "messages on the queue after the arm");
        channel.close(200, "done".into()).await.unwrap();
    }

    async fn teardown(self) {
        let channel = self.conn.create_channel().await.unwrap();
        let _ = channel.queue_delete(self.queue.as_str().into(), Default::default()).await;
        let _ = channel.exchange_delete(self.exchange.as_str().into(), Default::default()).await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}

async fn confirm_channel(conn: &Connection) -> Channel {
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    channel
}

/// Publishes on `channel` and waits for a clean ack (not returned, not nacked).
/// What a message carries besides its body.
#[derive(Clone, Copy, PartialEq)]
enum Properties {
    /// Persistent and typed, nothing else.
    Minimal,
    /// What the daemon sends: CloudEvents binary-mode headers, message id, type, timestamp
    /// and app id (written out here, not taken from the daemon's code).
    SameAsRelay,
}

fn properties(kind: Properties) -> BasicProperties {
    let minimal = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if kind == Properties::Minimal {
        return minimal;
    }
    let id = uuid::Uuid::now_v7().to_string();
    let now = std::time::SystemTime::now();
    let mut headers = FieldTable::default();
    let time = humantime::format_rfc3339_millis(now).to_string();
    for (name, value) in [
        ("ce_specversion", "1.0"),
        ("ce_id", id.as_str()),
        ("ce_type", "order.created"),
        ("ce_source", "default"),
        ("ce_time", time.as_str()),
        ("content-type", "application/json"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    let seconds = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    minimal
        .with_message_id(id.as_str().into())
        .with_type("order.created".into())
        .with_timestamp(seconds)
        .with_app_id("orchestron".into())
        .with_headers(headers)
}

async fn publish(channel: &Channel, exchange: &str, payload: &[u8], kind: Properties) {
    let options = BasicPublishOptions { mandatory: true, immediate: false };
    let properties = properties(kind);
    let confirm = channel
        .basic_publish(exchange.into(), "order.created".into(), options, payload, properties)
        .await
        .unwrap();
    assert!(matches!(confirm.await.unwrap(), Confirmation::Ack(None)), "not a clean ack");
}

/// Bare lapin: `n` messages on one channel, at most `window` unconfirmed.
async fn bare_lapin(broker: &Broker, n: usize, window: usize, kind: Properties) -> f64 {
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await.unwrap();
    let payload = body().into_bytes();
    let channel = confirm_channel(&conn).await;
    let permits = Arc::new(Semaphore::new(window));
    let started = Instant::now();
    join_all((0..n).map(|_| async {
        let _permit = permits.acquire().await.unwrap();
        publish(&channel, &broker.exchange, &payload, kind).await;
    }))
    .await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    rate
}

/// The daemon's config: `brokers` and the default route's destination as YAML flow maps.
fn daemon_config(dir: &Path, port: u16, brokers: &str, destination: &str) {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schemas");
    let text = format!(
        "server: {{ listen: \"127.0.0.1:{port}\" }}\n\
         store: {{ path: {} }}\n\
         brokers: {brokers}\n\
         sources: {{ default: {{ api_keys: [\"{KEY}\"] }} }}\n\
         schemas: {{ dir: {} }}\n\
         default_route: {{ to: [ {destination} ] }}\n\
         {}",
        dir.join("relay.redb").display(),
        schemas.display(),
        std::env::var("ORCHESTRON_BENCH_RELAY_CONFIG").unwrap_or_default()
    );
    std::fs::write(dir.join("config.yaml"), text).unwrap();
}

fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The daemon: queue `n` events with the broker `down`, restart it with the broker `up`, and
/// time the drain from that start.
/// The relay arm: (msg/s from the broker connection, msg/s from the first settled events).
async fn relay(n: usize, down: &str, up: &str, destination: &str) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.yaml");
    daemon_config(dir.path(), port, down, destination);
    let mut child = start_daemon(&config);
    wait_ready(port).await;
    let store_file = dir.path().join("relay.redb");
    let empty_bytes = file_bytes(&store_file);
    let client = reqwest::Client::new();
    let next = std::sync::atomic::AtomicUsize::new(0);
    join_all((0..64).map(|_| async {
        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
            post_event(&client, port).await;
        }
    }))
    .await;
    stop_daemon(&mut child);
    let full_bytes = file_bytes(&store_file);

    daemon_config(dir.path(), port, up, destination);
    // Timed from the moment the broker is connected, as the bare arms are: the store's open
    // (a repair-free reopen) and the connection handshake are start-up, reported apart.
    let spawned = Instant::now();
    let mut child = start_daemon(&config);
    wait_ok(port, "/ready").await;
    let started = Instant::now();
    eprintln!("relay: connected {:?} after the daemon started", started - spawned);
    // (time since connecting, events still pending) when the first settled events showed.
    let mut first_settled: Option<(Duration, f64)> = None;
    loop {
        let pending = outbox_pending(&client, port).await;
        if pending == Some(0.0) {
            break;
        }
        if let Some(pending) = pending.filter(|&p| p < n as f64 && first_settled.is_none()) {
            first_settled = Some((started.elapsed(), pending));
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = started.elapsed();
    let rate = n as f64 / total.as_secs_f64();
    // The steady drain: from the first settled events to an empty outbox. The bare arms warm
    // up before timing; this leaves out the relay's own first round trips.
    let (first, pending) = first_settled.unwrap_or((Duration::ZERO, n as f64));
    let steady = pending / (total - first).as_secs_f64();
    eprintln!(
        "relay: first events settled {first:?} after connecting; {steady:.0} msg/s from then"
    );
    let ticks = cpu_ticks(child.id());
    // What the drained backlog leaves behind in the file, with the daemon still running (a
    // few seconds for the last settles to be flushed and any shrinking done).
    tokio::time::sleep(Duration::from_secs(3)).await;
    // ORCHESTRON_BENCH_COMPACT_WAIT=<s>: wait that long for the quiet-moment compaction to
    // bring the file back within twice its empty size, and say when it did.
    let wait = Duration::from_secs(env_or("ORCHESTRON_BENCH_COMPACT_WAIT", 0));
    let drained_at = Instant::now();
    let drained_bytes = file_bytes(&store_file);
    while file_bytes(&store_file) > 2 * empty_bytes && drained_at.elapsed() < wait {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !wait.is_zero() {
        eprintln!(
            "relay: {:.1} MiB after the drain; {:.1} MiB {:.1} s later",
            drained_bytes as f64 / 1048576.0,
            file_bytes(&store_file) as f64 / 1048576.0,
            drained_at.elapsed().as_secs_f64() + 3.0
        );
    }
    eprintln!(
        "relay: store file {:.1} MiB with the backlog, {:.1} MiB after the drain; \
         {:.1} MiB empty ({:.2}x)",
        full_bytes as f64 / 1048576.0,
        file_bytes(&store_file) as f64 / 1048576.0,
        empty_bytes as f64 / 1048576.0,
        file_bytes(&store_file) as f64 / empty_bytes.max(1) as f64
    );
    stop_daemon(&mut child);
    // Clock ticks are 10 ms (USER_HZ 100).
    eprintln!("relay: daemon CPU {:.1} µs per message", ticks as f64 * 10_000.0 / n as f64);
    (rate, steady)
}

async fn run() {
    let n: usize = env_or("ORCHESTRON_BENCH_EVENTS", 20_000);
    let window: usize = env_or("ORCHESTRON_BENCH_WINDOW", 256);
    let repeats: usize = env_or("ORCHESTRON_BENCH_REPEATS", 3);
    let broker = Broker::setup().await;
    let certs = RunCa::new();
    let tunnel = Stunnel::start("127.0.0.1:5672", &certs.cert, &certs.key, None);
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); ARMS.len()];
    let mut steady = Vec::new();
    // ORCHESTRON_BENCH_ARMS=relay runs a subset (e.g. under a profiler).
    let chosen = std::env::var("ORCHESTRON_BENCH_ARMS").unwrap_or_default();
    let wanted = |arm: &str| chosen.is_empty() || chosen.split(',').any(|c| c == arm);
    for repeat in 0..repeats {
        for (arm, samples) in ARMS.iter().zip(&mut results) {
            if !wanted(arm) {
                continue;
            }
            let rate = match *arm {
                "lapin-one-channel" => bare_lapin(&broker, n, window, Properties::Minimal).await,
                "lapin-same-message" => {
                    bare_lapin(&broker, n, window, Properties::SameAsRelay).await
                }
                arm => {
                    let rabbitmq = |url: &str| {
                        format!("{{ rabbitmq: {{ url: \"{url}\", max_unconfirmed: {window} }} }}")
                    };
                    let down = rabbitmq("amqp://guest:guest@127.0.0.1:1/%2f");
                    let up = if arm == "relay-tls" {
                        let url = format!("amqps://guest:guest@localhost:{}/%2f", tunnel.port);
                        format!(
                            "{{ rabbitmq: {{ url: \"{url}\", max_unconfirmed: {window}, \
                             tls: {{ ca: {} }} }} }}",
                            certs.ca.display()
                        )
                    } else {
                        rabbitmq(AMQP_URL)
                    };
                    let destination = format!(
                        "{{ rabbitmq: {{ exchange: {}, routing_key: \"{{type}}\" }} }}",
                        broker.exchange
                    );
                    let (rate, from_first) = relay(n, &down, &up, &destination).await;
                    steady.push(from_first);
                    rate
                }
            };
            broker.check_and_purge(n as u32).await;
            eprintln!("repeat {repeat} {arm}: {rate:.0} msg/s");
            samples.push(rate);
        }
    }
    broker.teardown().await;
    let title =
        format!("{n} messages of ~1 KiB, persistent, mandatory, {window} unconfirmed at most");
    results.push(steady);
    report(&title, &[&ARMS[..], &[STEADY]].concat(), &results, 2);
    ratio("relay-tls ÷ relay", &results[3], &results[2]);
}

/// One arm against another, per repeat, and the median.
fn ratio(title: &str, arm: &[f64], baseline: &[f64]) {
    let ratios: Vec<f64> = arm.iter().zip(baseline).map(|(a, b)| a / b).collect();
    if !ratios.is_empty() {
        println!("\n{title}: {:.2}× (per repeat {ratios:.2?})", median(ratios.clone()));
    }
}

/// The table: each arm's median, and its per-repeat ratio to each of the first `baselines`
/// arms (median of the per-repeat ratios).
fn report(title: &str, arms: &[&str], results: &[Vec<f64>], baselines: usize) {
    if results.iter().any(Vec::is_empty) {
        return; // ratios need every arm
    }
    println!("\n{title}\n");
    let columns: Vec<String> = arms[..baselines].iter().map(|b| format!(" vs {b} |")).collect();
    println!("| arm | msg/s (median) |{}", columns.concat());
    println!("|---|---|{}", "---|".repeat(baselines));
    for (arm, samples) in arms.iter().zip(results) {
        let mut row = format!("| {arm} | {:.0} |", median(samples.clone()));
        for baseline in &results[..baselines] {
            let ratios: Vec<f64> = samples.iter().zip(baseline).map(|(s, b)| s / b).collect();
            row += &format!(" {:.2}× {ratios:.2?} |", median(ratios.clone()));
        }
        println!("{row}");
    }
}

const KAFKA: &str = "127.0.0.1:9092";

/// A new one-partition topic on the Kafka-protocol broker at `bootstrap`, reached with the
/// client `settings` (TLS).
/// Bare rdkafka with the daemon's producer settings: idempotent, `acks=all`, `linger.ms` 5.
/// A bare producer with the daemon's settings; `window`: at most that many records awaiting
/// their delivery report (None: all sent at once).
async fn bare_rdkafka(topic: &str, n: usize, window: Option<usize>) -> f64 {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let payload = body();
    // One record first, outside the timing: connection, metadata and the idempotent producer
    // id, as the relay arm starts timing only once its producer reached the broker.
    let warm_up = FutureRecord::to(topic).payload(&payload).key("cust-4242");
    producer.send(warm_up, Timeout::Never).await.expect("delivered");
    let permits = Semaphore::new(window.unwrap_or(n));
    let started = Instant::now();
    let sends = (0..n).map(|_| async {
        let _permit = permits.acquire().await.unwrap();
        let record = FutureRecord::to(topic).payload(&payload).key("cust-4242");
        producer.send(record, Timeout::Never).await
    });
    for delivery in join_all(sends).await {
        delivery.expect("delivered");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// Kafka: the relay against a bare rdkafka producer, same broker, same run.
async fn run_kafka() {
    let n: usize = env_or("ORCHESTRON_BENCH_EVENTS", 20_000);
    let repeats: usize = env_or("ORCHESTRON_BENCH_REPEATS", 3);
    let arms = ["rdkafka", "rdkafka-windowed", "relay", "relay-tls"];
    let certs = RunCa::new();
    let tls = TlsTansu::start(&certs.cert, &certs.key);
    let tls_settings = vec![
        ("security.protocol".to_owned(), "SSL".to_owned()),
        ("ssl.ca.location".to_owned(), certs.ca.display().to_string()),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); arms.len()];
    let mut steady = Vec::new();
    let chosen = std::env::var("ORCHESTRON_BENCH_ARMS").unwrap_or_default();
    let wanted = |arm: &str| chosen.is_empty() || chosen.split(',').any(|c| c == arm);
    for repeat in 0..repeats {
        for (arm, samples) in arms.iter().zip(&mut results) {
            if !wanted(arm) {
                continue;
            }
            let (bootstrap, settings) = if *arm == "relay-tls" {
                (tls.bootstrap(), tls_settings.clone())
            } else {
                (KAFKA.to_owned(), Vec::new())
            };
            let topic = kafka_topic(&bootstrap, &settings).await;
            let rate = if *arm == "rdkafka" {
                bare_rdkafka(&topic, n, None).await
            } else if *arm == "rdkafka-windowed" {
                // As many in flight as the relay's two passes of `relay.batch_size` (500).
                bare_rdkafka(&topic, n, Some(1000)).await
            } else {
                let kafka =
                    |servers: &str| format!("{{ kafka: {{ bootstrap_servers: \"{servers}\" }} }}");
                let destination = format!("{{ kafka: {{ topic: {topic}, key: /customer_id }} }}");
                let up = if *arm == "relay-tls" {
                    format!(
                        "{{ kafka: {{ bootstrap_servers: \"{bootstrap}\", tls: {{ ca: {} }} }} }}",
                        certs.ca.display()
                    )
                } else {
                    kafka(KAFKA)
                };
                let (rate, from_first) = relay(n, &kafka("127.0.0.1:1"), &up, &destination).await;
                steady.push(from_first);
                rate
            };
            // The bare arms send one warm-up record more.
            let expected = if arm.starts_with("relay") { n } else { n + 1 };
            let count = kafka_count(bootstrap, settings, topic, expected).await;
            assert_eq!(count, expected, "records read back from the topic after {arm}");
            eprintln!("repeat {repeat} {arm}: {rate:.0} msg/s");
            samples.push(rate);
        }
    }
    results.push(steady);
    let title = format!("{n} records of ~1 KiB, idempotent producer, acks=all");
    report(&title, &[&arms[..], &[STEADY]].concat(), &results, 2);
    ratio("relay-tls ÷ relay", &results[3], &results[2]);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    if std::env::args().skip(1).any(|a| a == "kafka") {
        runtime.block_on(run_kafka());
    } else {
        runtime.block_on(run());
    }
}
