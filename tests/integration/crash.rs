//! Crash loop: the real binary under load, `kill -9` at random moments, restarted each time.
//! A consumer on the real RabbitMQ (or on tansu, the Kafka-protocol broker) checks the promise
//! in RELIABILITY.md's vocabulary: lost = 0 and unexpected = 0; duplicated and recovered are
//! counted and printed.
//!
//! The default run does 25 cycles towards RabbitMQ and 10 towards Kafka. The long runs:
//! `ORCHESTRON_CRASH_CYCLES=1000 cargo test --release --test integration crash_loop_long -- --ignored --nocapture`
//! (`crash_loop_kafka_long` for Kafka).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{
    AMQP_URL, API_KEY, KAFKA, RabbitQueue, event_request, free_port, unique, write_binary_config,
};

pub(crate) fn start(config: &Path, log: &Path) -> crate::helpers::Reaped {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the daemon");
    crate::helpers::Reaped(child)
}

pub(crate) async fn wait_ready(client: &reqwest::Client, base: &str) -> Duration {
    let started = Instant::now();
    loop {
        let health = client.get(format!("{base}/health")).send().await;
        if health.is_ok_and(|r| r.status() == 200) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "daemon not ready after 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the load generator saw.
#[derive(Default)]
struct Ledger {
    /// Every body number a request was sent for (acknowledged or not).
    attempted: BTreeSet<u64>,
    /// Body numbers answered 202.
    acked: BTreeSet<u64>,
}

/// Where the crash loop's events go, and how it reads them back.
enum Sink {
    Rabbit { queue: Box<RabbitQueue>, exchange: String },
    Kafka { topic: String },
}

impl Sink {
    async fn rabbitmq() -> Sink {
        let exchange = unique("crash");
        Sink::Rabbit { queue: Box::new(RabbitQueue::bind(&exchange, "#").await), exchange }
    }

    async fn kafka() -> Sink {
        let topic = unique("crash");
        crate::kafka::create_topic(KAFKA, &topic, 1, &[]).await;
        Sink::Kafka { topic }
    }

    /// The daemon's config file in `dir`: every event to this sink.
    fn config(&self, dir: &Path, port: u16) -> std::path::PathBuf {
        let relay = "relay: { backoff: { initial: 100ms, max: 1s } }\n";
        match self {
            Sink::Rabbit { exchange, .. } => {
                write_binary_config(dir, port, AMQP_URL, exchange, relay)
            }
            Sink::Kafka { topic } => {
                let path = dir.join("config.yaml");
                let text = format!(
                    "server: {{ listen: \"127.0.0.1:{port}\", shutdown_timeout: 5s }}\n\
                     store: {{ path: {} }}\n\
                     brokers: {{ kafka: {{ bootstrap_servers: \"{KAFKA}\", message_timeout: 10s }} }}\n\
                     sources: {{ default: {{ api_keys: [\"{API_KEY}\"] }} }}\n\
                     default_route: {{ to: [ {{ kafka: {{ topic: {topic} }} }} ] }}\n{relay}",
                    dir.join("o.redb").display()
                );
                std::fs::write(&path, text).unwrap();
                path
            }
        }
    }

    /// How many times each body number arrived, waiting (at most a minute) until every one
    /// of `acked` has.
    async fn delivered(&mut self, acked: &BTreeSet<u64>) -> BTreeMap<u64, usize> {
        let number = |body: &[u8]| -> u64 {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            v["n"].as_u64().unwrap()
        };
        let mut delivered: BTreeMap<u64, usize> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        match self {
            Sink::Rabbit { queue, .. } => {
                while Instant::now() < deadline && !acked.iter().all(|n| delivered.contains_key(n))
                {
                    for m in queue.collect(usize::MAX, Duration::from_millis(500)).await {
                        *delivered.entry(number(&m.body)).or_default() += 1;
                    }
                }
                for m in queue.collect(usize::MAX, Duration::from_secs(1)).await {
                    *delivered.entry(number(&m.body)).or_default() += 1;
                }
            }
            Sink::Kafka { topic } => loop {
                // The whole topic read again from the start each time: a count, not a sum.
                let got =
                    crate::kafka::consume(KAFKA, topic, 1, usize::MAX, Duration::from_secs(3));
                delivered.clear();
                for m in got.await {
                    *delivered.entry(number(&m.body)).or_default() += 1;
                }
                if Instant::now() > deadline || acked.iter().all(|n| delivered.contains_key(n)) {
                    break;
                }
            },
        }
        delivered
    }
}

async fn crash_loop(cycles: usize, mut sink: Sink) {
    let seed = std::env::var("ORCHESTRON_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = sink.config(dir.path(), port);
    let log = dir.path().join("daemon.log");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();

    let mut child = start(&config, &log);
    wait_ready(&client, &base).await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (ledger, next, stop, client, base) =
                (ledger.clone(), next.clone(), stop.clone(), client.clone(), base.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    // std Mutex: held for an insert, never across an await.
                    ledger.lock().unwrap().attempted.insert(n);
                    let body = format!("{{\"n\":{n}}}");
                    let sent = event_request(&client, &base, "load.test", body).send().await;
                    match sent {
                        Ok(r) if r.status() == 202 => {
                            ledger.lock().unwrap().acked.insert(n);
                        }
                        _ => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            })
        })
        .collect();

    let mut ready_times = Vec::new();
    for _ in 0..cycles {
        tokio::time::sleep(Duration::from_millis(rng.u64(100..600))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        child = start(&config, &log);
        ready_times.push(wait_ready(&client, &base).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let (attempted, acked) = {
        let l = ledger.lock().unwrap();
        (l.attempted.clone(), l.acked.clone())
    };
    // Wait until every acknowledged event arrived (or give up after a minute).
    let delivered = sink.delivered(&acked).await;
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();

    let lost: Vec<_> = acked.iter().filter(|n| !delivered.contains_key(n)).collect();
    let unexpected: Vec<_> = delivered.keys().filter(|n| !attempted.contains(n)).collect();
    let duplicated: usize = delivered.values().map(|c| c - 1).sum();
    let recovered = delivered.keys().filter(|n| !acked.contains(n)).count();
    ready_times.sort();
    let broker = match sink {
        Sink::Rabbit { .. } => "rabbitmq",
        Sink::Kafka { .. } => "kafka",
    };
    println!(
        "crash loop ({broker}): seed={seed} cycles={cycles} attempted={} acked={} delivered={} lost={} \
         unexpected={} duplicated={duplicated} recovered={recovered} \
         restart-to-ready p50={:?} p99={:?} max={:?}",
        attempted.len(),
        acked.len(),
        delivered.len(),
        lost.len(),
        unexpected.len(),
        ready_times[ready_times.len() / 2],
        ready_times[(ready_times.len() * 99).div_ceil(100) - 1],
        ready_times.last().unwrap(),
    );
    assert!(acked.len() > cycles, "the load generator got events through");
    assert!(lost.is_empty(), "lost (acked, never delivered): {lost:?}; log: {}", log.display());
    assert!(unexpected.is_empty(), "unexpected: {unexpected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_kill_9_under_load_loses_nothing() {
    crash_loop(25, Sink::rabbitmq().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_towards_kafka_loses_nothing() {
    crash_loop(10, Sink::kafka().await).await;
}

fn long_cycles() -> usize {
    let cycles = std::env::var("ORCHESTRON_CRASH_CYCLES").ok().and_then(|s| s.parse().ok());
    cycles.unwrap_or(1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run; see the module docs"]
async fn crash_loop_long() {
    crash_loop(long_cycles(), Sink::rabbitmq().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run; see the module docs"]
async fn crash_loop_kafka_long() {
    crash_loop(long_cycles(), Sink::kafka().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_requests_in_flight_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let broker_down = "amqp://guest:guest@127.0.0.1:1/%2f";
    let config = write_binary_config(dir.path(), port, broker_down, "x", "");
    let log = dir.path().join("daemon.log");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut child = start(&config, &log);
    wait_ready(&client, &base).await;
    let posts: Vec<_> = (0..200)
        .map(|n| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                client
                    .post(format!("{base}/api/events/t"))
                    .header("X-API-Key", API_KEY)
                    .header("Content-Type", "application/json")
                    .body(format!("{{\"n\":{n}}}"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stopping = Instant::now();
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopped within the deadline");
    let mut accepted = 0;
    for p in posts {
        // Every request either got an answer before the exit or never got in: no 5xx.
        if let Ok(code) = p.await.unwrap() {
            assert!(code == 202, "answered {code} during shutdown");
            accepted += 1;
        }
    }
    // Every 202 is in the store after the stop.
    let store_config = orchestron::config::StoreConfig {
        path: dir.path().join("o.redb"),
        max_bytes: bytesize::ByteSize::gib(1),
        cache_bytes: bytesize::ByteSize::mib(4),
        commit_batch_max: 16,
        dedup_window: orchestron::config::HumanDuration::from_secs(3600),
        quick_repair: false,
        min_free_bytes: None,
        reserve_bytes: None,
    };
    let (store, closer) = orchestron::store::Store::open(&store_config).unwrap();
    assert_eq!(store.pending().await.unwrap(), accepted);
    closer.close().await;
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("panicked"), "{log}");
}
