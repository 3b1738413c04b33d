//! Helpers the benchmarks share: the release daemon as a child process, ports, medians.

#![allow(dead_code)] // each bench uses its own subset

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The API key of the bench configs (benches/post.lua sends it).
pub const KEY: &str = "bench-key";

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[path = "../../tests/support/ports.rs"]
mod ports;
#[path = "../../tests/support/proxy.rs"]
pub mod proxy;
#[path = "../../tests/support/stunnel.rs"]
pub mod stunnel;
pub use ports::free_port;

/// The daemon binary: this build's, or `ORCHESTRON_BENCH_BINARY` (to compare two builds in
/// one sitting).
pub fn daemon_binary() -> std::path::PathBuf {
    std::env::var_os("ORCHESTRON_BENCH_BINARY")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_orchestron").into())
}

pub fn start_daemon(config: &Path) -> Child {
    Command::new(daemon_binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon")
}

pub fn stop_daemon(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// Waits until the daemon answers `/health` (listening); returns how long that took.
pub async fn wait_ready(port: u16) -> Duration {
    wait_ok(port, "/health").await
}

/// Waits until `path` answers 200 (`/ready`: every configured broker connected).
pub async fn wait_ok(port: u16, path: &str) -> Duration {
    let started = Instant::now();
    let client = reqwest::Client::new();
    loop {
        let r = client.get(format!("http://127.0.0.1:{port}{path}")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "daemon not ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat_ticks(&stat).expect("a /proc/<pid>/stat line")
}

/// CPU time (user + system, in clock ticks) of every process named `name` on this machine.
/// A process that exits between two readings takes its share with it.
pub fn cpu_ticks_named(name: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let ticks = |pid: &str| -> Option<u64> {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        if comm.trim_end() != name {
            return None;
        }
        stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    };
    dir.filter_map(|entry| ticks(entry.ok()?.file_name().to_str()?)).sum()
}

/// User + system time from the text of a `/proc/<pid>/stat`.
fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub events_per_fsync: Option<f64>,
    /// Daemon arms: CPU time (user + system) the daemon spent per accepted event, in µs. A
    /// steadier comparison than events/s on a shared machine, where wrk competes for the cores.
    pub cpu_us_per_event: Option<f64>,
}

pub fn wrk(port: u16, connections: usize, seconds: u64) -> Sample {
    wrk_url(&format!("http://127.0.0.1:{port}/api/events/order.created"), connections, seconds)
}

pub fn wrk_url(url: &str, connections: usize, seconds: u64) -> Sample {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/post.lua");
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .env("ORCHESTRON_BENCH_KEY", KEY)
        .output()
        .expect("wrk on PATH (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "some requests were not accepted:\n{text}");
    let field = |label: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} in wrk output:\n{text}"));
        parse_value(line.trim_start()[label.len()..].trim())
    };
    Sample {
        rps: field("Requests/sec:"),
        p50_ms: field("50%"),
        p99_ms: field("99%"),
        events_per_fsync: None,
        cpu_us_per_event: None,
    }
}

/// wrk values: `1.23ms`, `850.00us`, `1.02s`, or plain numbers.
pub fn parse_value(v: &str) -> f64 {
    let num = |s: &str| s.parse::<f64>().unwrap_or_else(|_| panic!("number in {v:?}"));
    if let Some(x) = v.strip_suffix("us") {
        num(x) / 1000.0
    } else if let Some(x) = v.strip_suffix("ms") {
        num(x)
    } else if let Some(x) = v.strip_suffix('s') {
        num(x) * 1000.0
    } else {
        num(v)
    }
}

/// The ~1 KiB body `benches/post.lua` sends, valid for `config/schemas/order.created.json`.
pub fn body() -> String {
    let items: Vec<String> = (1..=12)
        .map(|i| format!(r#"{{"sku":"SKU-{:04}","qty":{i},"price":{}.99}}"#, i * 37, i * 3))
        .collect();
    format!(
        r#"{{"order_id":123456,"customer_id":"cust-4242","total":999.50,"items":[{}],"note":"{}"}}"#,
        items.join(","),
        "n".repeat(340)
    )
}

/// Posts one `body()` as `order.created` and asserts the daemon accepted it (202).
pub async fn post_event(client: &reqwest::Client, port: u16) {
    let response = client
        .post(format!("http://127.0.0.1:{port}/api/events/order.created"))
        .header("Content-Type", "application/json")
        .header("X-API-Key", KEY)
        .body(body())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

/// `orchestron_outbox_pending_events` from the daemon's `/metrics` (None if unreadable).
pub async fn outbox_pending(client: &reqwest::Client, port: u16) -> Option<f64> {
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

/// Kafka helpers: a topic of the bench's own, and counting what it holds.
pub mod kafka {
    use std::time::{Duration, Instant};

    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    pub async fn kafka_topic(bootstrap: &str, settings: &[(String, String)]) -> String {
        let topic = format!("bench-relay-{}", uuid::Uuid::now_v7().simple());
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        for (k, v) in settings {
            config.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> = config.create().unwrap();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let created = admin
            .create_topics(&[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &options)
            .await
            .expect("a Kafka-protocol broker");
        assert!(created.iter().all(Result::is_ok), "{created:?}");
        topic
    }

    /// Records in the topic's only partition, read back from the start (tansu's high watermark
    /// does not count every record of an idempotent producer's batches).
    pub async fn kafka_count(
        bootstrap: String,
        settings: Vec<(String, String)>,
        topic: String,
        expected: usize,
    ) -> usize {
        tokio::task::spawn_blocking(move || {
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", bootstrap)
                .set("group.id", format!("{topic}-count"))
                .set("enable.auto.commit", "false");
            for (k, v) in &settings {
                config.set(k, v);
            }
            let consumer: BaseConsumer = config.create().unwrap();
            let mut partitions = TopicPartitionList::new();
            partitions.add_partition_offset(&topic, 0, Offset::Beginning).unwrap();
            consumer.assign(&partitions).unwrap();
            let (mut count, deadline) = (0, Instant::now() + Duration::from_secs(30));
            while count < expected && Instant::now() < deadline {
                if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                    message.expect("a record");
                    count += 1;
                }
            }
            count
        })
        .await
        .unwrap()
    }
}
