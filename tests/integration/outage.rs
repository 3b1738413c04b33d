//! Long broker outage (RELIABILITY.md; issue #16 §4): the real binary under steady load while
//! its broker is unreachable. The outbox absorbs everything, resident memory stays flat (the
//! slope of RSS after the first minute), threads and open files stay bounded, no attempt is
//! burned while the broker is down, and once it is back the backlog drains: lost 0,
//! unexpected 0, duplicates counted.
//!
//! Four outages: RabbitMQ behind a proxy that stops listening (every connect refused, as from a
//! stopped broker), RabbitMQ behind a proxy that accepts and never answers (a firewall that
//! drops packets, a hung broker), tansu behind a proxy that stops listening, and a MockCluster
//! broker down. The default run holds each for 2 minutes at a lower rate; the
//! long run:
//! `ORCHESTRON_OUTAGE_SECS=1800 ORCHESTRON_OUTAGE_RATE=2000 cargo test --release --test integration outage_long -- --ignored --nocapture --test-threads 1`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};

use crate::crash::{start, wait_ready};
use crate::helpers::{
    AMQP_URL, API_KEY, ProxiedTansu, Proxy, RabbitQueue, event_request, free_port, unique,
};

/// Where the events go and how the test makes it unreachable.
enum Broker {
    Rabbit { proxy: Proxy, queue: Box<RabbitQueue>, exchange: String, silent: bool },
    Tansu { tansu: ProxiedTansu, topic: String },
    Mock { mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>, topic: String },
}

impl Broker {
    async fn rabbitmq(silent: bool) -> Broker {
        let exchange = unique("outage");
        let queue = Box::new(RabbitQueue::bind(&exchange, "#").await);
        let proxy =
            Proxy::start(AMQP_URL.split('@').nth(1).unwrap().split('/').next().unwrap(), true)
                .await;
        Broker::Rabbit { proxy, queue, exchange, silent }
    }

    async fn tansu() -> Broker {
        let tansu = ProxiedTansu::start().await;
        let topic = unique("outage");
        crate::kafka::create_topic(&tansu.bootstrap(), &topic, 1, &[]).await;
        Broker::Tansu { tansu, topic }
    }

    fn mock() -> Broker {
        let mock = MockCluster::new(1).unwrap();
        let topic = unique("outage");
        mock.create_topic(&topic, 1, 1).unwrap();
        Broker::Mock { mock, topic }
    }

    fn name(&self) -> &'static str {
        match self {
            Broker::Rabbit { silent: false, .. } => "rabbitmq, connections refused",
            Broker::Rabbit { silent: true, .. } => "rabbitmq, connections never answered",
            Broker::Tansu { .. } => "tansu, connections refused",
            Broker::Mock { .. } => "MockCluster broker down",
        }
    }

    fn config(&self, dir: &Path, port: u16, cache: &str) -> std::path::PathBuf {
        let to = match self {
            Broker::Rabbit { proxy, exchange, .. } => format!(
                "brokers: {{ rabbitmq: {{ url: \"amqp://guest:guest@{}/%2f\" }} }}\n\
                 default_route: {{ to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: k }} }} ] }}\n",
                proxy.addr
            ),
            Broker::Tansu { tansu, topic } => kafka_to(&tansu.bootstrap(), topic),
            Broker::Mock { mock, topic } => kafka_to(&mock.bootstrap_servers(), topic),
        };
        let path = dir.join("config.yaml");
        let text = format!(
            "server: {{ listen: \"127.0.0.1:{port}\", shutdown_timeout: 5s }}\n\
             store: {{ path: {}, cache_bytes: {cache} }}\n\
             sources: {{ default: {{ api_keys: [\"{API_KEY}\"] }} }}\n\
             relay: {{ backoff: {{ initial: 100ms, max: 1s }} }}\n{to}",
            dir.join("o.redb").display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    fn cut(&self) {
        match self {
            Broker::Rabbit { proxy, silent: true, .. } => proxy.set_silent(),
            Broker::Rabbit { proxy, .. } => proxy.set_refusing(),
            Broker::Tansu { tansu, .. } => tansu.proxy.set_refusing(),
            Broker::Mock { mock, .. } => mock.broker_down(1).unwrap(),
        }
    }

    fn restore(&self) {
        match self {
            Broker::Rabbit { proxy, .. } => proxy.set_up(true),
            Broker::Tansu { tansu, .. } => tansu.proxy.set_up(true),
            Broker::Mock { mock, .. } => mock.broker_up(1).unwrap(),
        }
    }

    /// How many times each body number arrived, reading until every one of `acked` has and
    /// nothing more came for two seconds, or `within` passed.
    async fn delivered(&mut self, acked: &[u64], within: Duration) -> BTreeMap<u64, usize> {
        let mut delivered: BTreeMap<u64, usize> = BTreeMap::new();
        let deadline = Instant::now() + within;
        let all = |d: &BTreeMap<u64, usize>| acked.iter().all(|n| d.contains_key(n));
        match self {
            Broker::Rabbit { queue, .. } => loop {
                let got = queue.collect(usize::MAX, Duration::from_secs(2)).await;
                let quiet = got.is_empty();
                for m in got {
                    *delivered.entry(number(&m.body)).or_default() += 1;
                }
                if Instant::now() > deadline || (quiet && all(&delivered)) {
                    break;
                }
            },
            Broker::Tansu { tansu, topic } => {
                read_topic(&tansu.bootstrap(), topic, &mut delivered, acked, deadline).await
            }
            Broker::Mock { mock, topic } => {
                read_topic(&mock.bootstrap_servers(), topic, &mut delivered, acked, deadline).await
            }
        }
        delivered
    }
}

fn kafka_to(bootstrap: &str, topic: &str) -> String {
    format!(
        "brokers: {{ kafka: {{ bootstrap_servers: \"{bootstrap}\", message_timeout: 10s }} }}\n\
         default_route: {{ to: [ {{ kafka: {{ topic: {topic} }} }} ] }}\n"
    )
}

fn number(body: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["n"].as_u64().unwrap()
}

async fn read_topic(
    bootstrap: &str,
    topic: &str,
    delivered: &mut BTreeMap<u64, usize>,
    acked: &[u64],
    deadline: Instant,
) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("g"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, Offset::Beginning).unwrap();
    consumer.assign(&partitions).unwrap();
    let mut stream = consumer.stream();
    let mut missing = acked.len();
    loop {
        let quiet = if missing == 0 { Duration::from_secs(2) } else { Duration::from_secs(10) };
        let next = tokio::time::timeout(quiet, stream.next()).await;
        match next {
            Ok(Some(Ok(m))) => {
                let count = delivered.entry(number(m.payload().unwrap_or_default())).or_default();
                *count += 1;
                if *count == 1 {
                    missing = missing.saturating_sub(1);
                }
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) if missing == 0 => break,
            Err(_) => {}
        }
        if Instant::now() > deadline {
            break;
        }
    }
}

/// The body number of the event sent before the cut.
const WARM: u64 = u64::MAX >> 12;

/// One reading of the daemon's process.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    anon_kib: u64,
    threads: u64,
    fds: u64,
}

fn sample(pid: u32, at: Duration) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count() as u64;
    Sample {
        at,
        rss_kib: field("VmRSS:"),
        anon_kib: field("RssAnon:"),
        threads: field("Threads:"),
        fds,
    }
}

/// Least-squares slope of `kib` over the samples, in MB per 10 minutes, and its standard error
/// (the resident set swings by tens of megabytes between two trims of the allocator, so a
/// slope means something only next to its error).
fn slope_mb_per_10_min(samples: &[Sample], kib: impl Fn(&Sample) -> u64) -> (f64, f64) {
    let n = samples.len() as f64;
    let xs: Vec<f64> = samples.iter().map(|s| s.at.as_secs_f64() / 600.0).collect();
    let ys: Vec<f64> = samples.iter().map(|s| kib(s) as f64 * 1024.0 / 1e6).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let slope = cov / var;
    let residuals: f64 = xs.iter().zip(&ys).map(|(x, y)| (y - my - slope * (x - mx)).powi(2)).sum();
    (slope, (residuals / (n - 2.0) / var).sqrt())
}

/// Posts `{"n": k}` at `rate` per second from a few workers until stopped; keeps the numbers
/// answered 202.
struct Load {
    next: Arc<AtomicU64>,
    acked: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(base: &str, rate: u64) -> Load {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let (next, acked, stop) = (Arc::default(), Arc::default(), Arc::default());
        let started = tokio::time::Instant::now();
        let workers = (0..16)
            .map(|_| {
                let (next, acked, stop): (Arc<AtomicU64>, Arc<Mutex<Vec<u64>>>, Arc<AtomicBool>) =
                    (Arc::clone(&next), Arc::clone(&acked), Arc::clone(&stop));
                let (client, base) = (client.clone(), base.to_owned());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        // Paced: request n is due n/rate seconds after the start.
                        tokio::time::sleep_until(
                            started + Duration::from_secs_f64(n as f64 / rate as f64),
                        )
                        .await;
                        let body = format!("{{\"n\":{n},\"pad\":\"{:0256}\"}}", n);
                        let sent = event_request(&client, &base, "outage.test", body).send().await;
                        if sent.is_ok_and(|r| r.status() == 202) {
                            acked.lock().unwrap().push(n);
                        }
                    }
                })
            })
            .collect();
        Load { next, acked, stop, workers }
    }

    async fn stop(self) -> (u64, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.unwrap();
        }
        let mut acked = std::mem::take(&mut *self.acked.lock().unwrap());
        acked.sort_unstable();
        (self.next.load(Ordering::Relaxed), acked)
    }
}

/// What one outage run measured.
struct Report {
    slope: f64,
    /// The slope's standard error.
    error: f64,
    threads: (u64, u64),
    fds: (u64, u64),
}

/// Holds `broker` unreachable for `secs` under `rate` events/s, with a redb page cache of
/// `cache` (a small one is full within seconds, so what grows after it is not the cache
/// filling); the slope is taken after the first `settle` seconds.
async fn outage(mut broker: Broker, secs: u64, rate: u64, cache: &str, settle: u64) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = broker.config(dir.path(), port, cache);
    let log = dir.path().join("daemon.log");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let child = start(&config, &log);
    wait_ready(&client, &base).await;
    // One event through before the cut: the connection is up and warm.
    let warm = event_request(&client, &base, "outage.test", format!("{{\"n\":{WARM}}}"));
    let warm = warm.send().await.unwrap();
    assert_eq!(warm.status(), 202);
    let early = broker.delivered(&[WARM], Duration::from_secs(30)).await;
    assert!(early.contains_key(&WARM), "the first event was delivered before the cut");

    broker.cut();
    let began = Instant::now();
    let load = Load::start(&base, rate);
    let mut samples = Vec::new();
    while began.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        samples.push(sample(child.id(), began.elapsed()));
        if std::env::var_os("ORCHESTRON_OUTAGE_TRACE").is_some() {
            println!("{:?}", samples.last().unwrap());
        }
    }
    let (attempted, acked) = load.stop().await;
    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let burned: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("orchestron_relay_publish_total") && !l.contains("result=\"ok\""))
        .filter(|l| !l.ends_with(" 0"))
        .map(str::to_owned)
        .collect();

    broker.restore();
    let drain = Instant::now();
    let within = Duration::from_secs(120 + acked.len() as u64 / 500);
    let mut delivered = broker.delivered(&acked, within).await;
    let drained = drain.elapsed();
    delivered.remove(&WARM);
    drop(child);

    let lost = acked.iter().filter(|n| !delivered.contains_key(n)).count();
    let unexpected = delivered.keys().filter(|n| **n >= attempted).count();
    let duplicated: usize = delivered.values().map(|c| c - 1).sum();
    let settled: Vec<_> =
        samples.iter().copied().filter(|s| s.at >= Duration::from_secs(settle)).collect();
    let (slope, error) = slope_mb_per_10_min(&settled, |s| s.rss_kib);
    let (anon_slope, _) = slope_mb_per_10_min(&settled, |s| s.anon_kib);
    let low = settled.iter().map(|s| s.rss_kib).min().unwrap() as f64 * 1024.0 / 1e6;
    let high = settled.iter().map(|s| s.rss_kib).max().unwrap() as f64 * 1024.0 / 1e6;
    let first = settled.first().unwrap();
    let last = samples.last().unwrap();
    let report = Report {
        slope,
        error,
        threads: (first.threads, samples.iter().map(|s| s.threads).max().unwrap()),
        fds: (first.fds, samples.iter().map(|s| s.fds).max().unwrap()),
    };
    println!(
        "outage ({}): {secs} s at {rate}/s: attempted={attempted} acked={} ({:.0}/s) \
         rss {:.1} MB after {settle} s -> {:.1} MB at end, slope {slope:.2} ± {error:.2} MB/10 min, \
         between {low:.1} and {high:.1} MB \
         (anonymous {:.1} -> {:.1} MB, {anon_slope:.2} MB/10 min); \
         threads {:?}, fds {:?}; drained in {drained:.1?}; lost={lost} unexpected={unexpected} \
         duplicated={duplicated}",
        broker.name(),
        acked.len(),
        acked.len() as f64 / secs as f64,
        first.rss_kib as f64 * 1024.0 / 1e6,
        last.rss_kib as f64 * 1024.0 / 1e6,
        first.anon_kib as f64 * 1024.0 / 1e6,
        last.anon_kib as f64 * 1024.0 / 1e6,
        report.threads,
        report.fds,
    );
    assert!(acked.len() as u64 > secs * rate / 2, "the load got through: {}", acked.len());
    assert!(burned.is_empty(), "attempts burned on the outage: {burned:?}");
    assert_eq!(lost, 0, "lost (acked, never delivered); log: {}", log.display());
    assert_eq!(unexpected, 0, "unexpected");
    report
}

/// The short runs' page cache: full long before the first minute is over at 500 events/s.
const SHORT_CACHE: &str = "4MiB";

fn seconds(default: u64) -> u64 {
    std::env::var("ORCHESTRON_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn rate(default: u64) -> u64 {
    std::env::var("ORCHESTRON_OUTAGE_RATE").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The bounds of a short run, loose enough for a 90-second window (the allocator's trims move
/// the resident set by a megabyte or two either way): the ~86 MB per 10 minutes the issue
/// measured is far above them, and a thread or a socket kept per connect attempt (what lapin
/// did with a broker that never answers) breaks the other two.
fn check_short(report: &Report) {
    assert!(report.slope < 30.0, "RSS slope {:.1} MB/10 min", report.slope);
    assert!(report.threads.1 <= report.threads.0 + 4, "threads grew: {:?}", report.threads);
    assert!(report.fds.1 <= report.fds.0 + 16, "open files grew: {:?}", report.fds);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_refusing_for_two_minutes_under_load_memory_is_flat_and_nothing_is_lost() {
    check_short(&outage(Broker::rabbitmq(false).await, 120, 500, SHORT_CACHE, 30).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_silent_for_two_minutes_under_load_memory_is_flat_and_nothing_is_lost() {
    check_short(&outage(Broker::rabbitmq(true).await, 120, 500, SHORT_CACHE, 30).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_refusing_for_two_minutes_under_load_memory_is_flat_and_nothing_is_lost() {
    check_short(&outage(Broker::tansu().await, 120, 500, SHORT_CACHE, 30).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_kafka_down_for_two_minutes_under_load_memory_is_flat_and_nothing_is_lost() {
    check_short(&outage(Broker::mock(), 120, 500, SHORT_CACHE, 30).await);
}

/// The long run: 30 minutes at 2,000 events/s by default, each broker in turn, RSS slope
/// after the first minute not above 1 MB per 10 minutes by more than twice its standard error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "30 minutes per broker; see the module doc for the command"]
async fn outage_long() {
    let (secs, rate) = (seconds(1800), rate(2000));
    let only = std::env::var("ORCHESTRON_OUTAGE_BROKER").unwrap_or_default();
    for name in ["rabbitmq", "rabbitmq-silent", "tansu", "mock"] {
        if !only.is_empty() && only != name {
            continue;
        }
        let broker = match name {
            "rabbitmq" => Broker::rabbitmq(false).await,
            "rabbitmq-silent" => Broker::rabbitmq(true).await,
            "tansu" => Broker::tansu().await,
            _ => Broker::mock(),
        };
        let cache = std::env::var("ORCHESTRON_OUTAGE_CACHE").unwrap_or("32MiB".into());
        let report = outage(broker, secs, rate, &cache, 60).await;
        let (slope, error) = (report.slope, report.error);
        assert!(slope <= 1.0 + 2.0 * error, "{name}: RSS slope {slope:.2} ± {error:.2} MB/10 min");
        check_short(&report);
    }
}
