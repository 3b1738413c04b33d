//! Fleet sync benchmark: the release daemon with and without `sync`, against the real
//! PostgreSQL on 127.0.0.1:5432 (a fresh database per arm) and RabbitMQ on 127.0.0.1:5672.
//!
//! ```text
//! cargo bench --bench fleet                      # ingest arms, interleaved (needs `wrk`)
//! cargo bench --bench fleet -- catchup 1000000   # replication catch-up, then takeover
//! ```
//!
//! Ingest arms, the broker unreachable so events stay in the outbox, wrk POSTing
//! `benches/post.lua`'s ~1 KiB body at 64 connections, three repeats, arms next to each other:
//! * `sync-off`: no `sync` section;
//! * `sync-local`: `sync` on, `ack: local` (replication runs beside ingest);
//! * `sync-fleet`: `ack: fleet` (each 202 waits for the PostgreSQL commit).
//!
//! `catchup N`: instance A accepts events with `sync` off until it holds N, restarts with
//! `sync` on, and the bench times how long until PostgreSQL has all N (the feed's bootstrap
//! and catch-up); then instance B (broker reachable) starts, A is killed with SIGKILL, and
//! the bench times B publishing all N to a RabbitMQ queue (from the first message to the
//! last, so the lease wait is not counted).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

mod common;

use common::{
    KEY, Sample, cpu_ticks, cpu_ticks_named, env_or, free_port, median, start_daemon, stop_daemon,
    wait_ready,
};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const UNREACHABLE: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    match args.first().map(String::as_str) {
        Some("catchup") => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
            runtime.block_on(catchup(n));
        }
        _ => runtime.block_on(ingest()),
    }
}

/// A database of its own for one arm, dropped with it.
struct Db(String);

impl Db {
    fn create() -> Db {
        let name = format!("orchestron_bench_{}", uuid::Uuid::now_v7().simple());
        psql("postgres", &format!("CREATE DATABASE {name}"));
        Db(name)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.0)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        psql("postgres", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

fn psql(database: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", database, "-qAtc", sql])
        .output()
        .expect("psql (PostgreSQL on 127.0.0.1:5432)");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A daemon config: ingest on `port`, the store in `dir`, RabbitMQ at `amqp` (events to the
/// exchange `exchange`), and `sync` as given (empty: none).
fn config(dir: &Path, port: u16, amqp: &str, exchange: &str, sync: &str) -> PathBuf {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schemas");
    let text = format!(
        "server: {{ listen: \"127.0.0.1:{port}\", max_body_bytes: 64KiB }}\n\
         store: {{ path: {} }}\n\
         brokers: {{ rabbitmq: {{ url: \"{amqp}\" }} }}\n\
         sources: {{ default: {{ api_keys: [\"{KEY}\"] }} }}\n\
         schemas: {{ dir: {} }}\n\
         default_route: {{ to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: k }} }} ] }}\n{sync}",
        dir.join("bench.redb").display(),
        schemas.display()
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn sync_section(db: &Db, id: &str, ack: &str) -> String {
    format!(
        "sync:\n  postgres:\n    url: \"{}\"\n  instance_id: {id}\n  lease: 5s\n  ack: {ack}\n",
        db.url()
    )
}

/// One arm: its sample and PostgreSQL's CPU per accepted event, in µs.
async fn arm(name: &str, connections: usize, seconds: u64) -> (Sample, f64) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::create();
    let sync = match name {
        "sync-off" => String::new(),
        "sync-local" => sync_section(&db, "bench", "local"),
        "sync-fleet" => sync_section(&db, "bench", "fleet"),
        other => unreachable!("arm {other}"),
    };
    let port = free_port();
    let path = config(dir.path(), port, UNREACHABLE, "events", &sync);
    let mut child = start_daemon(&path);
    wait_ready(port).await;
    if !sync.is_empty() {
        // The first heartbeat applies the schema; `ack: fleet` answers 503 until then.
        wait_metric(port, "orchestron_sync_up", |v| v == 1.0, Duration::from_secs(30)).await;
    }
    let cpu_before = cpu_ticks(child.id());
    // Every postgres process: the daemon's backends and the background writers.
    let pg_before = cpu_ticks_named("postgres");
    let mut s =
        tokio::task::spawn_blocking(move || common::wrk(port, connections, seconds)).await.unwrap();
    let cpu = cpu_ticks(child.id()) - cpu_before;
    let pg = cpu_ticks_named("postgres").saturating_sub(pg_before);
    let per_event = |ticks: u64| ticks as f64 * 10_000.0 / (s.rps * seconds as f64);
    s.cpu_us_per_event = Some(per_event(cpu));
    stop_daemon(&mut child);
    (s, per_event(pg))
}

async fn ingest() {
    let seconds: u64 = env_or("ORCHESTRON_BENCH_SECONDS", 10);
    let repeats: usize = env_or("ORCHESTRON_BENCH_REPEATS", 3);
    let connections = 64;
    let arms = ["sync-off", "sync-local", "sync-fleet"];
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); arms.len()];
    let mut pg_cpu: Vec<Vec<f64>> = vec![Vec::new(); arms.len()];
    for repeat in 0..repeats {
        for (i, name) in arms.iter().enumerate() {
            let (s, pg) = arm(name, connections, seconds).await;
            eprintln!("repeat {repeat} c={connections} {name}: {s:?}, PostgreSQL {pg:.1} µs/event");
            results[i].push(s);
            pg_cpu[i].push(pg);
        }
    }
    println!(
        "\n| arm | events/s | p50 ms | p99 ms | daemon CPU µs/event | PostgreSQL CPU µs/event |"
    );
    println!("|---|---|---|---|---|---|");
    for ((name, samples), pg) in arms.iter().zip(&results).zip(&pg_cpu) {
        let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} |",
            m(|s| s.rps),
            m(|s| s.p50_ms),
            m(|s| s.p99_ms),
            m(|s| s.cpu_us_per_event.unwrap_or(f64::NAN)),
            median(pg.clone())
        );
    }
    let ratio = |a: usize, b: usize| {
        let per: Vec<f64> =
            results[a].iter().zip(&results[b]).map(|(x, y)| x.rps / y.rps).collect();
        (median(per.clone()), per)
    };
    let (local, per) = ratio(1, 0);
    println!("\nack: local with sync on vs sync off: {local:.2}× events/s (per repeat {per:.2?})");
    let (fleet, per) = ratio(2, 1);
    println!("ack: fleet vs ack: local: {fleet:.2}× events/s (per repeat {per:.2?})");
}

async fn metric(port: u16, name: &str) -> Option<f64> {
    let text =
        reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn wait_metric(port: u16, name: &str, done: impl Fn(f64) -> bool, within: Duration) -> f64 {
    let started = Instant::now();
    loop {
        if let Some(v) = metric(port, name).await.filter(|&v| done(v)) {
            return v;
        }
        assert!(started.elapsed() < within, "{name} not there within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

async fn catchup(n: u64) {
    let db = Db::create();
    let dir_a = tempfile::tempdir().unwrap();
    let port_a = free_port();
    let exchange = format!("bench-fleet-{}", uuid::Uuid::now_v7().simple());

    // A, alone, fills its outbox to n.
    let path = config(dir_a.path(), port_a, UNREACHABLE, &exchange, "");
    let mut a = start_daemon(&path);
    wait_ready(port_a).await;
    loop {
        let _ = tokio::task::spawn_blocking(move || common::wrk(port_a, 64, 5)).await;
        let held = metric(port_a, "orchestron_outbox_pending_events").await.unwrap_or(0.0);
        eprintln!("outbox: {held:.0} of {n}");
        if held >= n as f64 {
            break;
        }
    }
    stop_daemon(&mut a);

    // A again, with sync: the feed's bootstrap replicates everything it holds.
    let path =
        config(dir_a.path(), port_a, UNREACHABLE, &exchange, &sync_section(&db, "a", "local"));
    let started = Instant::now();
    let mut a = start_daemon(&path);
    wait_ready(port_a).await;
    let held = wait_metric(
        port_a,
        "orchestron_outbox_pending_events",
        |v| v > 0.0,
        Duration::from_secs(60),
    )
    .await;
    // The first heartbeat applies the schema: before it, there is no table to count.
    wait_metric(port_a, "orchestron_sync_up", |v| v == 1.0, Duration::from_secs(30)).await;
    // The lag gauge reads 0 before the feed's bootstrap: count the rows instead.
    let rows = loop {
        let rows: f64 =
            psql(&db.0, "SELECT count(*) FROM orchestron.events").parse().unwrap_or(0.0);
        if rows >= held {
            break rows;
        }
        assert!(started.elapsed() < Duration::from_secs(3600), "catch-up stalled at {rows}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let caught_up = started.elapsed();
    println!(
        "\ncatch-up: {rows:.0} events (of {held:.0} held) replicated in {:.1} s from the start \
         with sync on: {:.0} events/s",
        caught_up.as_secs_f64(),
        rows / caught_up.as_secs_f64()
    );

    // B takes over once A is killed, and publishes everything to a queue.
    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let durable = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
    let queue = exchange.clone();
    let options = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.as_str().into(), options, FieldTable::default()).await.unwrap();
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let port_b = free_port();
    let path = config(dir_b.path(), port_b, AMQP, &exchange, &sync_section(&db, "b", "local"));
    let mut b = start_daemon(&path);
    wait_ready(port_b).await;
    wait_metric(port_b, "orchestron_sync_up", |v| v == 1.0, Duration::from_secs(30)).await;
    kill9(&mut a);
    let killed = Instant::now();
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let count = || async {
        channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    };
    let mut first = None;
    loop {
        let c = count().await;
        if c > 0 && first.is_none() {
            first = Some((Instant::now(), c));
        }
        if c as f64 >= rows {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(3600), "takeover stalled at {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (first_at, first_count) = first.unwrap();
    let publishing = first_at.elapsed().as_secs_f64();
    let taken = metric(port_b, "orchestron_fleet_taken_over_events_total").await.unwrap_or(0.0);
    println!(
        "takeover: {taken:.0} events taken over, all {rows:.0} in the queue {:.1} s after SIGKILL \
         (lease 5 s); from the first message to the last {publishing:.1} s: {:.0} events/s",
        killed.elapsed().as_secs_f64(),
        (rows - first_count as f64) / publishing.max(0.001)
    );
    stop_daemon(&mut b);
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
}
