//! Broker outage benchmark: how soon after a broker comes back the daemon delivers again, and
//! how fast it then drains what queued during the outage.
//!
//! ```text
//! cargo bench --bench outage                       # RabbitMQ and Kafka (tansu), 60 s outages
//! ORCHESTRON_BENCH_OUTAGE=300 cargo bench --bench outage -- rabbitmq
//! ```
//!
//! The daemon reaches the broker through a TCP proxy the bench controls (for Kafka, a tansu of
//! the bench's own that advertises the proxy, so every connection goes through it). Down, the
//! proxy cuts the connections it carries and refuses new ones, as a stopped broker does.
//!
//! Each sample: the daemon starts with the broker reachable and delivers a first event; the
//! proxy goes down; half of N events are posted at once and the other half just before the
//! broker returns; after `ORCHESTRON_BENCH_OUTAGE` seconds (default 60) the proxy comes back,
//! and the bench times, from that moment, the first event settled (the broker confirmed it)
//! and the empty outbox. It then checks that the queue or topic holds every event.
//!
//! Arms: this build, and with `ORCHESTRON_BENCH_BASELINE=<path to another orchestron>` that
//! build too, interleaved, `ORCHESTRON_BENCH_REPEATS` (3) times each; medians. N is
//! `ORCHESTRON_BENCH_EVENTS` (1000). `ORCHESTRON_BENCH_DAEMON_LOG=<file>` keeps the daemon's
//! log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kafka::{kafka_count, kafka_topic};
use common::proxy::{ProxiedTansu, Proxy};
use common::{KEY, env_or, free_port, median, outbox_pending, post_event, stop_daemon, wait_ok};
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Clone, Copy, PartialEq)]
enum Broker {
    RabbitMq,
    Kafka,
}

/// The broker end of one sample, behind the proxy the bench cuts.
enum Side {
    RabbitMq(Proxy),
    /// The broker, and the topic made for the sample.
    Kafka(ProxiedTansu, String),
}

/// What one sample measured, from the moment the broker came back.
struct Sample {
    first: Duration,
    drained: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let brokers: Vec<Broker> = match args.first().map(String::as_str) {
        Some("rabbitmq") => vec![Broker::RabbitMq],
        Some("kafka") => vec![Broker::Kafka],
        _ => vec![Broker::RabbitMq, Broker::Kafka],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(&brokers));
}

async fn run(brokers: &[Broker]) {
    let outage = Duration::from_secs(env_or("ORCHESTRON_BENCH_OUTAGE", 60));
    let n: usize = env_or("ORCHESTRON_BENCH_EVENTS", 1000);
    let repeats: usize = env_or("ORCHESTRON_BENCH_REPEATS", 3);
    let mut builds: Vec<(&str, PathBuf)> =
        vec![("this build", env!("CARGO_BIN_EXE_orchestron").into())];
    if let Some(baseline) = std::env::var_os("ORCHESTRON_BENCH_BASELINE") {
        builds.push(("baseline", baseline.into()));
    }
    for &broker in brokers {
        let name = if broker == Broker::RabbitMq { "RabbitMQ" } else { "Kafka (tansu)" };
        let mut results: Vec<Vec<Sample>> = builds.iter().map(|_| Vec::new()).collect();
        for repeat in 0..repeats {
            for ((build, binary), samples) in builds.iter().zip(&mut results) {
                let sample = sample(broker, binary, n, outage).await;
                eprintln!(
                    "{name} repeat {repeat} {build}: first delivery {:.3} s, drained {:.3} s",
                    sample.first.as_secs_f64(),
                    sample.drained.as_secs_f64()
                );
                samples.push(sample);
            }
        }
        println!(
            "\n{name}: {}-second outage, {n} events waiting; seconds after it returned",
            outage.as_secs()
        );
        println!(
            "| build | first delivery (per repeat) | median | outbox empty (per repeat) | median |"
        );
        println!("|---|---|---|---|---|");
        for ((build, _), samples) in builds.iter().zip(&results) {
            let first: Vec<f64> = samples.iter().map(|s| s.first.as_secs_f64()).collect();
            let drained: Vec<f64> = samples.iter().map(|s| s.drained.as_secs_f64()).collect();
            let list =
                |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" / ");
            println!(
                "| {build} | {} | {:.2} | {} | {:.2} |",
                list(&first),
                median(first.clone()),
                list(&drained),
                median(drained.clone())
            );
        }
    }
}

/// One outage, start to finish, with a daemon, a proxy and a queue or topic of its own.
async fn sample(broker: Broker, binary: &Path, n: usize, outage: Duration) -> Sample {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    // The broker side: RabbitMQ's exchange and queue, or a tansu and a topic.
    let side = match broker {
        Broker::RabbitMq => {
            declare_queue(&suffix).await;
            Side::RabbitMq(Proxy::start("127.0.0.1:5672", true).await)
        }
        Broker::Kafka => {
            let tansu = ProxiedTansu::start().await;
            let topic = kafka_topic(&tansu.bootstrap(), &[]).await;
            Side::Kafka(tansu, topic)
        }
    };
    let (proxy, brokers, destination) = match &side {
        Side::RabbitMq(proxy) => {
            let url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
            let brokers = format!("{{ rabbitmq: {{ url: \"{url}\" }} }}");
            (proxy, brokers, format!("{{ rabbitmq: {{ exchange: outage-{suffix} }} }}"))
        }
        Side::Kafka(tansu, topic) => {
            let brokers =
                format!("{{ kafka: {{ bootstrap_servers: \"{}\" }} }}", tansu.bootstrap());
            (&tansu.proxy, brokers, format!("{{ kafka: {{ topic: {topic} }} }}"))
        }
    };
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schemas");
    let config = dir.path().join("config.yaml");
    let text = format!(
        "server: {{ listen: \"127.0.0.1:{port}\" }}\n\
         store: {{ path: {} }}\n\
         brokers: {brokers}\n\
         sources: {{ default: {{ api_keys: [\"{KEY}\"] }} }}\n\
         schemas: {{ dir: {} }}\n\
         default_route: {{ to: [ {destination} ] }}\n",
        dir.path().join("outage.redb").display(),
        schemas.display(),
    );
    std::fs::write(&config, text).unwrap();
    // ORCHESTRON_BENCH_DAEMON_LOG=<file>: the daemon's log (info) goes there.
    let log = match std::env::var_os("ORCHESTRON_BENCH_DAEMON_LOG") {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    let mut daemon = Command::new(binary)
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the daemon");
    wait_ok(port, "/ready").await;
    let client = reqwest::Client::new();
    post(&client, port, 1).await;
    wait_pending(&client, port, |p| p == 0.0, Duration::from_secs(30)).await;

    proxy.set_up(false);
    post(&client, port, n / 2).await;
    tokio::time::sleep(outage.saturating_sub(Duration::from_secs(1))).await;
    post(&client, port, n - n / 2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Nothing got through while the broker was away (else the proxy did not cut it off).
    wait_pending(&client, port, |p| p == n as f64, Duration::from_secs(1)).await;
    let back = Instant::now();
    proxy.set_up(true);
    let limit = Duration::from_secs(120);
    wait_pending(&client, port, |p| p < n as f64, limit).await;
    let first = back.elapsed();
    wait_pending(&client, port, |p| p == 0.0, limit).await;
    let drained = back.elapsed();
    stop_daemon(&mut daemon);

    let held = match side {
        Side::RabbitMq(_) => delete_queue(&suffix).await,
        Side::Kafka(tansu, topic) => kafka_count(tansu.bootstrap(), Vec::new(), topic, n + 1).await,
    };
    assert!(held > n, "{held} of {} events on the broker", n + 1);
    Sample { first, drained }
}

async fn post(client: &reqwest::Client, port: u16, n: usize) {
    for _ in 0..n {
        post_event(client, port).await;
    }
}

/// Polls `orchestron_outbox_pending_events` every 5 ms until `done` holds.
async fn wait_pending(
    client: &reqwest::Client,
    port: u16,
    done: impl Fn(f64) -> bool,
    limit: Duration,
) {
    let started = Instant::now();
    loop {
        let pending = outbox_pending(client, port).await;
        if pending.is_some_and(&done) {
            return;
        }
        assert!(started.elapsed() < limit, "outbox still holds {pending:?} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn declare_queue(suffix: &str) {
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let name = format!("outage-{suffix}");
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    let kind = lapin::ExchangeKind::Fanout;
    channel
        .exchange_declare(name.as_str().into(), kind, durable, FieldTable::default())
        .await
        .unwrap();
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(name.as_str().into(), options, FieldTable::default()).await.unwrap();
    let bind = QueueBindOptions::default();
    let (q, e) = (name.as_str().into(), name.as_str().into());
    channel.queue_bind(q, e, "".into(), bind, FieldTable::default()).await.unwrap();
    let _ = conn.close(200, "done".into()).await;
}

/// Deletes the queue; returns how many messages it held.
async fn delete_queue(suffix: &str) -> usize {
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let name = format!("outage-{suffix}");
    let held =
        channel.queue_delete(name.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
    let _ = channel.exchange_delete(name.as_str().into(), Default::default()).await;
    let _ = conn.close(200, "done".into()).await;
    held as usize
}
