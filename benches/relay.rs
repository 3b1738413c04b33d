//! Relay benchmark: the daemon draining a backlog into RabbitMQ against bare lapin publishers,
//! in one run (PERFORMANCE.md, "relay to RabbitMQ").
//!
//! ```text
//! cargo bench --bench relay        # needs RabbitMQ on 127.0.0.1:5672 (guest/guest)
//! ```
//!
//! Every arm sends the same N ~1 KiB messages, persistent and mandatory, to a durable queue
//! bound to a topic exchange, with at most W messages awaiting a publisher confirm:
//! * `lapin-one-channel`: bare lapin, all W unconfirmed messages pipelined on one channel (the
//!   usual publisher, and the ceiling PERFORMANCE.md measures against);
//! * `relay`: the release daemon. N events are accepted while the broker is unreachable, the
//!   daemon is stopped and started again with the broker's real address, and the arm times
//!   from that start until the outbox is empty.
//!
//! Arms interleave, three repeats, medians; each arm checks the queue holds N messages, then
//! purges it. `ORCHESTRON_BENCH_EVENTS` (N, default 20000), `ORCHESTRON_BENCH_WINDOW` (W,
//! default 256), `ORCHESTRON_BENCH_REPEATS` (3), `ORCHESTRON_BENCH_ARMS` (a comma-separated
//! subset), `ORCHESTRON_BENCH_RELAY_CONFIG` (YAML appended to the daemon's config).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cpu_ticks, env_or, free_port, median, start_daemon, stop_daemon, wait_ready};
use futures_util::future::join_all;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const KEY: &str = "bench-key";
const ARMS: [&str; 2] = ["lapin-one-channel", "relay"];

/// The ~1 KiB body `benches/post.lua` sends, valid for `config/schemas/order.created.json`.
fn body() -> String {
    let items: Vec<String> = (1..=12)
        .map(|i| format!(r#"{{"sku":"SKU-{:04}","qty":{i},"price":{}.99}}"#, i * 37, i * 3))
        .collect();
    format!(
        r#"{{"order_id":123456,"customer_id":"cust-4242","total":999.50,"items":[{}],"note":"{}"}}"#,
        items.join(","),
        "n".repeat(340)
    )
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
async fn publish(channel: &Channel, exchange: &str, payload: &[u8]) {
    let options = BasicPublishOptions { mandatory: true, immediate: false };
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let confirm = channel
        .basic_publish(exchange.into(), "order.created".into(), options, payload, properties)
        .await
        .unwrap();
    assert!(matches!(confirm.await.unwrap(), Confirmation::Ack(None)), "not a clean ack");
}

/// Bare lapin: `n` messages on one channel, at most `window` unconfirmed.
async fn bare_lapin(broker: &Broker, n: usize, window: usize) -> f64 {
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await.unwrap();
    let payload = body().into_bytes();
    let channel = confirm_channel(&conn).await;
    let permits = Arc::new(Semaphore::new(window));
    let started = Instant::now();
    join_all((0..n).map(|_| async {
        let _permit = permits.acquire().await.unwrap();
        publish(&channel, &broker.exchange, &payload).await;
    }))
    .await;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = conn.close(200, "done".into()).await;
    rate
}

fn daemon_config(dir: &Path, port: u16, amqp_url: &str, exchange: &str, window: usize) {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schemas");
    let text = format!(
        "server: {{ listen: \"127.0.0.1:{port}\" }}\n\
         store: {{ path: {} }}\n\
         brokers: {{ rabbitmq: {{ url: \"{amqp_url}\", max_unconfirmed: {window} }} }}\n\
         sources: {{ default: {{ api_keys: [\"{KEY}\"] }} }}\n\
         schemas: {{ dir: {} }}\n\
         default_route: {{ to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: \"{{type}}\" }} }} ] }}\n\
         {}",
        dir.join("relay.redb").display(),
        schemas.display(),
        std::env::var("ORCHESTRON_BENCH_RELAY_CONFIG").unwrap_or_default()
    );
    std::fs::write(dir.join("config.yaml"), text).unwrap();
}

async fn outbox_pending(client: &reqwest::Client, port: u16) -> Option<f64> {
    let text = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let line = text.lines().find(|l| l.starts_with("orchestron_outbox_pending_events "))?;
    line.rsplit_once(' ')?.1.parse().ok()
}

/// The daemon: queue `n` events with the broker unreachable, restart it pointed at the broker,
/// and time the drain from that start.
async fn relay(broker: &Broker, n: usize, window: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.yaml");
    let unreachable = "amqp://guest:guest@127.0.0.1:1/%2f";
    daemon_config(dir.path(), port, unreachable, &broker.exchange, window);
    let mut child = start_daemon(&config);
    wait_ready(port).await;
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/events/order.created");
    let next = std::sync::atomic::AtomicUsize::new(0);
    join_all((0..64).map(|_| async {
        while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
            let response = client
                .post(&url)
                .header("Content-Type", "application/json")
                .header("X-API-Key", KEY)
                .body(body())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
        }
    }))
    .await;
    stop_daemon(&mut child);

    daemon_config(dir.path(), port, AMQP_URL, &broker.exchange, window);
    let started = Instant::now();
    let mut child = start_daemon(&config);
    loop {
        if outbox_pending(&client, port).await == Some(0.0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let ticks = cpu_ticks(child.id());
    stop_daemon(&mut child);
    // Clock ticks are 10 ms (USER_HZ 100).
    eprintln!("relay: daemon CPU {:.1} µs per message", ticks as f64 * 10_000.0 / n as f64);
    rate
}

async fn run() {
    let n: usize = env_or("ORCHESTRON_BENCH_EVENTS", 20_000);
    let window: usize = env_or("ORCHESTRON_BENCH_WINDOW", 256);
    let repeats: usize = env_or("ORCHESTRON_BENCH_REPEATS", 3);
    let broker = Broker::setup().await;
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); ARMS.len()];
    // ORCHESTRON_BENCH_ARMS=relay runs a subset (e.g. under a profiler).
    let chosen = std::env::var("ORCHESTRON_BENCH_ARMS").unwrap_or_default();
    let wanted = |arm: &str| chosen.is_empty() || chosen.split(',').any(|c| c == arm);
    for repeat in 0..repeats {
        for (arm, samples) in ARMS.iter().zip(&mut results) {
            if !wanted(arm) {
                continue;
            }
            let rate = match *arm {
                "lapin-one-channel" => bare_lapin(&broker, n, window).await,
                _ => relay(&broker, n, window).await,
            };
            broker.check_and_purge(n as u32).await;
            eprintln!("repeat {repeat} {arm}: {rate:.0} msg/s");
            samples.push(rate);
        }
    }
    broker.teardown().await;
    if results.iter().any(Vec::is_empty) {
        return; // ratios need every arm
    }
    let baseline = results[0].clone();
    println!("\n{n} messages of ~1 KiB, persistent, mandatory, {window} unconfirmed at most\n");
    println!("| arm | msg/s (median) | vs lapin-one-channel (median of per-repeat ratios) |");
    println!("|---|---|---|");
    for (arm, samples) in ARMS.iter().zip(&results) {
        let ratios: Vec<f64> = samples.iter().zip(&baseline).map(|(s, b)| s / b).collect();
        println!(
            "| {arm} | {:.0} | {:.2}× (per repeat {ratios:.2?}) |",
            median(samples.clone()),
            median(ratios.clone())
        );
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}
