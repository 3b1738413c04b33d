//! Ingest benchmark: durable group commit against its baselines, in one run.
//!
//! ```text
//! cargo bench --bench ingest                       # throughput arms (needs `wrk`)
//! cargo bench --bench ingest -- memory 1000000     # queue N events, report RSS, file, restarts
//! ORCHESTRON_BENCH_STORE=", quick_repair: true" cargo bench --bench ingest -- memory 1000000
//! ```
//!
//! Throughput arms, interleaved, three repeats, medians (PERFORMANCE.md):
//! * `fsync`: a loop appending 1 KiB + `fdatasync` to a file (the disk's floor, events/s);
//! * `validate-only`: the real ingest router with the store replaced by nothing;
//! * `one-commit`: the real router and store with `commit_batch_max: 1` (one fsync per event);
//! * `group-commit`: the real router and store as shipped;
//! * `group-commit-quick-repair`: the same with `store.quick_repair: true`;
//! * `daemon`: the release binary itself, broker unreachable, so events stay in the outbox;
//! * `daemon-tls`: the same over HTTPS (TLS 1.3, ECDSA P-256 certificate, keep-alive).
//!
//! `wrk` POSTs `benches/post.lua`'s ~1 KiB body that `config/schemas/order.created.json`
//! validates, from the same 2-core machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use orchestron::config::Config;
use orchestron::delivery::Delivery;
use orchestron::event::ValidatedEvent;
use orchestron::ingest::{EventSink, IngestState};
use orchestron::live::LiveConfig;
use orchestron::store::{Appended, Committed, IdempotencyKey, Store, StoreError};
use orchestron::telemetry::otlp::Spans;

mod common;

use common::{
    Sample, cpu_ticks, env_or, free_port, median, start_daemon, stop_daemon, wait_ready, wrk,
    wrk_url,
};

use common::KEY;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    match args.first().map(String::as_str) {
        Some("memory") => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
            runtime.block_on(memory(n));
        }
        _ => runtime.block_on(throughput()),
    }
}

/// A store that keeps nothing: the validate-only arm.
struct Discard;

impl EventSink for Discard {
    fn append(
        &self,
        event: ValidatedEvent,
        _key: Option<IdempotencyKey>,
        _delivery: Delivery,
    ) -> BoxFuture<'_, Result<Committed, StoreError>> {
        let appended = Appended::Accepted(event.id());
        Box::pin(async move { Ok(Committed { appended, batch_events: 1 }) })
    }
}

fn bench_config(dir: &Path, port: u16, commit_batch_max: usize) -> (PathBuf, Config) {
    bench_config_with(dir, port, commit_batch_max, "")
}

/// The bench config with HTTPS: a self-signed ECDSA certificate made for this run.
fn bench_config_tls(dir: &Path, port: u16) -> (PathBuf, Config) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let tls = format!(
        ", tls: {{ cert: {}, key: {} }}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    bench_config_with(dir, port, 1024, &tls)
}

fn bench_config_with(
    dir: &Path,
    port: u16,
    commit_batch_max: usize,
    server_extra: &str,
) -> (PathBuf, Config) {
    let schemas = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/schemas");
    let text = format!(
        "server: {{ listen: \"127.0.0.1:{port}\", max_body_bytes: 64KiB{server_extra} }}\n\
         store: {{ path: {}, commit_batch_max: {commit_batch_max}{} }}\n\
         brokers: {{ rabbitmq: {{ url: \"amqp://guest:guest@127.0.0.1:1/%2f\" }} }}\n\
         sources: {{ default: {{ api_keys: [\"{KEY}\"] }} }}\n\
         schemas: {{ dir: {} }}\n\
         default_route: {{ to: [ {{ rabbitmq: {{ exchange: events, routing_key: \"{{type}}\" }} }} ] }}\n",
        dir.join("bench.redb").display(),
        // e.g. ", quick_repair: true" (the `memory` run with quick repair)
        std::env::var("ORCHESTRON_BENCH_STORE").unwrap_or_default(),
        schemas.display()
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, &text).unwrap();
    let config = orchestron::config::load_str(&path, &text, &[]).unwrap();
    (path, config)
}

/// Serves the real ingest router on `sink` until the returned sender is dropped.
async fn serve(
    config: &Config,
    sink: Arc<dyn EventSink>,
) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let live = Arc::new(ArcSwap::from_pointee(LiveConfig::build(config).unwrap()));
    let metrics = Arc::new(orchestron::telemetry::metrics::Metrics::new());
    let router = orchestron::ingest::router(IngestState {
        sink,
        live,
        metrics,
        fleet: None,
        spans: Spans::off(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (port, tx)
}

async fn arm(name: &str, connections: usize, seconds: u64) -> Sample {
    let dir = tempfile::tempdir().unwrap();
    match name {
        "validate-only" => {
            let (_, config) = bench_config(dir.path(), 0, 1024);
            let (port, stop) = serve(&config, Arc::new(Discard)).await;
            let s =
                tokio::task::spawn_blocking(move || wrk(port, connections, seconds)).await.unwrap();
            drop(stop);
            s
        }
        "one-commit" | "group-commit" | "group-commit-quick-repair" => {
            let batch = if name == "one-commit" { 1 } else { 1024 };
            let (_, mut config) = bench_config(dir.path(), 0, batch);
            config.store.quick_repair = name == "group-commit-quick-repair";
            let (store, closer) = Store::open(&config.store).unwrap();
            let (port, stop) = serve(&config, Arc::new(store.clone())).await;
            let mut s =
                tokio::task::spawn_blocking(move || wrk(port, connections, seconds)).await.unwrap();
            drop(stop);
            let stats = store.stats();
            s.events_per_fsync =
                Some(stats.appended_events as f64 / stats.durable_commits.max(1) as f64);
            closer.close().await;
            s
        }
        "daemon" | "daemon-tls" => {
            let port = free_port();
            let tls = name == "daemon-tls";
            let (path, _) = if tls {
                bench_config_tls(dir.path(), port)
            } else {
                bench_config(dir.path(), port, 1024)
            };
            let mut child = start_daemon(&path);
            if tls {
                wait_listening(port).await;
            } else {
                wait_ready(port).await;
            }
            let scheme = if tls { "https" } else { "http" };
            let url = format!("{scheme}://127.0.0.1:{port}/api/events/order.created");
            let cpu_before = cpu_ticks(child.id());
            let mut s = tokio::task::spawn_blocking(move || wrk_url(&url, connections, seconds))
                .await
                .unwrap();
            let cpu = cpu_ticks(child.id()) - cpu_before;
            // Clock ticks are 10 ms (USER_HZ 100 on Linux).
            s.cpu_us_per_event = Some(cpu as f64 * 10_000.0 / (s.rps * seconds as f64));
            stop_daemon(&mut child);
            s
        }
        other => unreachable!("arm {other}"),
    }
}

fn fsync_baseline(seconds: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("fsync.bin")).unwrap();
    let block = [b'x'; 1024];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn throughput() {
    let seconds: u64 = env_or("ORCHESTRON_BENCH_SECONDS", 10);
    let repeats: usize = env_or("ORCHESTRON_BENCH_REPEATS", 3);
    let all = [
        "validate-only",
        "one-commit",
        "group-commit",
        "group-commit-quick-repair",
        "daemon",
        "daemon-tls",
    ];
    // ORCHESTRON_BENCH_ARMS=daemon,daemon-tls runs a subset (ratios need both sides present).
    let chosen = std::env::var("ORCHESTRON_BENCH_ARMS").unwrap_or_default();
    let arms: Vec<&str> = all
        .into_iter()
        .filter(|a| chosen.is_empty() || chosen.split(',').any(|c| c == *a))
        .collect();
    let mut fsync = Vec::new();
    let mut results: Vec<(usize, &str, Vec<Sample>)> = Vec::new();
    for connections in [64, 256] {
        for &a in &arms {
            results.push((connections, a, Vec::new()));
        }
    }
    for repeat in 0..repeats {
        fsync.push(tokio::task::spawn_blocking(|| fsync_baseline(3)).await.unwrap());
        for (connections, name, samples) in results.iter_mut() {
            let s = arm(name, *connections, seconds).await;
            eprintln!("repeat {repeat} c={connections} {name}: {s:?}");
            samples.push(s);
        }
    }
    let fsync = median(fsync);
    println!("\nfsync baseline (1 KiB append + fdatasync, serial): {fsync:.0} events/s\n");
    println!(
        "| connections | arm | events/s | p50 ms | p99 ms | events/fsync | daemon CPU µs/event | vs one-commit | vs validate-only |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for connections in [64, 256] {
        let rps_of = |arm: &str| {
            let found = results.iter().find(|(c, a, _)| *c == connections && *a == arm);
            found.map_or(f64::NAN, |(_, _, s)| median(s.iter().map(|s| s.rps).collect()))
        };
        for (c, name, samples) in results.iter().filter(|(c, _, _)| *c == connections) {
            let rps = median(samples.iter().map(|s| s.rps).collect());
            let p50 = median(samples.iter().map(|s| s.p50_ms).collect());
            let p99 = median(samples.iter().map(|s| s.p99_ms).collect());
            let epf = samples.iter().filter_map(|s| s.events_per_fsync).collect::<Vec<_>>();
            let epf = if epf.is_empty() { "-".to_owned() } else { format!("{:.0}", median(epf)) };
            let cpu = samples.iter().filter_map(|s| s.cpu_us_per_event).collect::<Vec<_>>();
            let cpu = if cpu.is_empty() { "-".to_owned() } else { format!("{:.1}", median(cpu)) };
            println!(
                "| {c} | {name} | {rps:.0} | {p50:.2} | {p99:.2} | {epf} | {cpu} | {:.1}× | {:.2}× |",
                rps / rps_of("one-commit"),
                rps / rps_of("validate-only")
            );
        }
    }
    for connections in [64, 256] {
        // Per repeat (the two arms ran next to each other), then the median of those ratios.
        let per_repeat = |arm: &str| {
            let found = results.iter().find(|(c, a, _)| *c == connections && *a == arm);
            found.map(|(_, _, s)| s.clone()).unwrap_or_default()
        };
        let (plain, tls) = (per_repeat("daemon"), per_repeat("daemon-tls"));
        let ratios: Vec<f64> = plain.iter().zip(&tls).map(|(p, t)| t.rps / p.rps).collect();
        let cpu: Vec<f64> = plain
            .iter()
            .zip(&tls)
            .filter_map(|(p, t)| Some(p.cpu_us_per_event? / t.cpu_us_per_event?))
            .collect();
        if !ratios.is_empty() {
            println!(
                "\nHTTPS vs plain HTTP, daemon, {connections} keep-alive connections: {:.2}× events/s \
                 (per repeat {ratios:.2?}); daemon CPU per event plain/TLS {:.2}×",
                median(ratios.clone()),
                median(cpu)
            );
        }
    }
}

/// For the HTTPS arm: the listener accepts connections (it is bound after the store opened).
async fn wait_listening(port: u16) {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "daemon not listening");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Queues `n` events in the daemon (broker unreachable), then reports memory, disk and
/// restart times with that backlog.
async fn memory(n: u64) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (path, config) = bench_config(dir.path(), port, 1024);
    let mut child = start_daemon(&path);
    wait_ready(port).await;
    let idle_rss = proc_status_kib(child.id(), "VmRSS:");
    let started = Instant::now();
    let mut queued = 0u64;
    while queued < n {
        // wrk runs for a duration; rerun short bursts until `n` events are in.
        let s = tokio::task::spawn_blocking(move || wrk(port, 64, 10)).await.unwrap();
        queued += (s.rps * 10.0) as u64;
        eprintln!("~{queued} queued");
    }
    let rss = proc_status_kib(child.id(), "VmRSS:");
    let hwm = proc_status_kib(child.id(), "VmHWM:");
    let file = std::fs::metadata(&config.store.path).unwrap().len();
    stop_daemon(&mut child);
    let (store, closer) = Store::open(&config.store).unwrap();
    let pending = store.pending().await.unwrap();
    closer.close().await;
    let mut child = start_daemon(&path);
    let clean_restart = wait_ready(port).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut child = start_daemon(&path);
    let crash_restart = wait_ready(port).await;
    stop_daemon(&mut child);
    println!(
        "\nqueued {pending} events in {:.0} s (broker unreachable)\n\
         | figure | value |\n|---|---|\n\
         | RSS idle | {:.1} MB |\n| RSS with backlog | {:.1} MB |\n| VmHWM | {:.1} MB |\n\
         | store file | {:.2} GB ({:.0} bytes/event) |\n\
         | restart to ready, clean | {:?} |\n| restart to ready, after kill -9 | {:?} |",
        started.elapsed().as_secs_f64(),
        idle_rss as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        file as f64 / 1e9,
        file as f64 / pending.max(1) as f64,
        clean_restart,
        crash_restart,
    );
}
