//! A real full disk (RELIABILITY.md, "Disk full"): the store on a small tmpfs this test
//! mounts, RabbitMQ behind a proxy the test cuts, the real binary, load until the disk is
//! full. What must hold:
//!
//! - every answer is 202, or 503 with `Retry-After`; the 503s come before a commit meets
//!   ENOSPC (no commit fails), `/ready` says `store_disk_space`, and the outbox gauge counts
//!   every event waiting;
//! - when the broker comes back, the backlog drains and ingest resumes by itself;
//! - killed (`kill -9`) with events queued, on a filesystem then filled to the last byte, the
//!   daemon starts, drains once the broker is back, and accepts again once space returns;
//! - lost 0 across the whole run.
//!
//! Mounting needs root (CI runs as root); `ORCHESTRON_SKIP_ROOT_TESTS=1` skips this test
//! where that is not possible, and says so.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{API_KEY, Proxy, RabbitQueue, free_port, unique, write_binary_config};

/// A tmpfs of `size` MiB mounted on a fresh directory; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Option<Tmpfs> {
        if std::env::var_os("ORCHESTRON_SKIP_ROOT_TESTS").is_some() {
            eprintln!("SKIPPED: ORCHESTRON_SKIP_ROOT_TESTS is set; the full-disk test needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m,mode=0755"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount(8)");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs as root); set ORCHESTRON_SKIP_ROOT_TESTS=1 \
             to skip this test"
        );
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn available(&self) -> u64 {
        fs4::available_space(self.path()).unwrap()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Writes a file until the filesystem refuses another byte.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let mut written = 0;
    for chunk in [1 << 20, 4096, 1] {
        let bytes = vec![7u8; chunk];
        while file.write_all(&bytes).and_then(|()| file.flush()).is_ok() {
            written += chunk as u64;
        }
    }
    let _ = file.sync_all();
    written
}

struct Daemon {
    child: crate::helpers::Reaped,
    base: String,
    log: PathBuf,
}

impl Daemon {
    async fn start(config: &Path, port: u16, log: &Path) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_orchestron"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,lapin=off")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
            .spawn()
            .unwrap();
        let child = crate::helpers::Reaped(child);
        let daemon = Daemon { child, base: format!("http://127.0.0.1:{port}"), log: log.into() };
        let started = Instant::now();
        let client = reqwest::Client::new();
        loop {
            let health = client.get(format!("{}/health", daemon.base)).send().await;
            if health.is_ok_and(|r| r.status() == 200) {
                return daemon;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "not up:\n{}", daemon.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The value of an unlabelled metric.
    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }
}

/// What the senders saw.
#[derive(Default)]
struct Ledger {
    attempted: BTreeSet<u64>,
    accepted: BTreeSet<u64>,
    refused: usize,
}

/// A ~1 KiB event body numbered `n`.
fn body(n: u64) -> String {
    format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(1000))
}

/// Posts events `from..` from eight senders until `stop` says so; each answer is 202 or 503
/// with Retry-After. Returns the next unused number.
async fn post_until(
    client: &reqwest::Client,
    base: &str,
    from: u64,
    ledger: &mut Ledger,
    stop: impl Fn(&Ledger, usize) -> bool,
) -> u64 {
    let mut next = from;
    let mut round = 0;
    while !stop(ledger, round) {
        round += 1;
        let numbers: Vec<u64> = (next..next + 64).collect();
        next += 64;
        let answers = futures_util::future::join_all(numbers.chunks(8).map(|chunk| async move {
            let mut seen = Vec::new();
            for &n in chunk {
                let r = client
                    .post(format!("{base}/api/events/disk.test"))
                    .header("X-API-Key", API_KEY)
                    .header("Content-Type", "application/json")
                    .body(body(n))
                    .send()
                    .await
                    .expect("the daemon answers while its disk is full");
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                let text = r.text().await.unwrap_or_default();
                assert!(
                    status == 202 || (status == 503 && retry_after),
                    "event {n}: {status} {text}; only 202 or 503 with Retry-After may answer"
                );
                seen.push((n, status == 202));
            }
            seen
        }))
        .await;
        for (n, accepted) in answers.into_iter().flatten() {
            ledger.attempted.insert(n);
            if accepted {
                ledger.accepted.insert(n);
            } else {
                ledger.refused += 1;
            }
        }
    }
    next
}

/// Consumes until every event of `wanted` arrived (or the deadline), counting arrivals.
async fn drain(queue: &mut RabbitQueue, got: &mut BTreeMap<u64, usize>, wanted: &BTreeSet<u64>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && !wanted.iter().all(|n| got.contains_key(n)) {
        for m in queue.collect(usize::MAX, Duration::from_millis(500)).await {
            let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
            *got.entry(v["n"].as_u64().unwrap()).or_default() += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_before_enospc_drains_and_recovers_without_help() {
    let Some(disk) = Tmpfs::mount(16) else { return };
    let exchange = unique("disk");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let broker = Proxy::start("127.0.0.1:5672", false).await;
    let url = format!("amqp://guest:guest@{}/%2f", broker.addr);
    let port = free_port();
    let relay = "relay: { backoff: { initial: 100ms, max: 1s } }\n";
    let config = write_binary_config(disk.path(), port, &url, &exchange, relay);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("daemon.log");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut ledger = Ledger::default();
    let mut got = BTreeMap::new();

    // 1. Broker down: load until the disk is full.
    let daemon = Daemon::start(&config, port, &log).await;
    let filled = Instant::now();
    let next = post_until(&client, &daemon.base, 0, &mut ledger, |l, _| l.refused >= 256).await;
    let (status, ready) = daemon.get("/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("store_disk_space"), "/ready says why: {ready}");
    let pending = daemon.metric("orchestron_outbox_pending_events").await;
    assert_eq!(pending as usize, ledger.accepted.len(), "the outbox gauge is true while full");
    let failures = daemon.metric("orchestron_store_commit_failures_total").await;
    assert_eq!(failures, 0.0, "refused before ENOSPC reached a commit:\n{}", daemon.log_text());
    let accepted_full = ledger.accepted.len();
    println!(
        "filled {}: accepted {accepted_full}, refused {}, {} bytes left, in {:?}",
        disk.path().display(),
        ledger.refused,
        disk.available(),
        filled.elapsed()
    );
    assert!(accepted_full > 1_000, "the disk held what it could: {accepted_full}");

    // 2. The broker returns: the backlog drains and ingest resumes by itself.
    broker.set_up(true);
    drain(&mut queue, &mut got, &ledger.accepted).await;
    assert!(ledger.accepted.iter().all(|n| got.contains_key(n)), "phase 1 drained");
    let resumed = Instant::now();
    let accepted_before = ledger.accepted.len();
    let next = post_until(&client, &daemon.base, next, &mut ledger, |l, round| {
        if resumed.elapsed() >= Duration::from_secs(120) {
            // What the daemon said besides the refusals, so a failure here can be diagnosed.
            let log = daemon.log_text();
            let said = log.lines().filter(|l| !l.contains("event refused"));
            let tail: Vec<&str> = said.rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "ingest did not resume within 120 s of the drain ({} bytes free on the disk); \
                 the daemon's last log lines:\n{}",
                disk.available(),
                tail.join("\n")
            );
        }
        l.accepted.len() > accepted_before || round > 10_000
    })
    .await;
    println!("ingest resumed {:?} after the backlog drained", resumed.elapsed());

    // 3. Broker down again, events queued, kill -9, the disk filled to the last byte by
    // someone else: the daemon starts, drains, and accepts once space returns.
    broker.set_up(false);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ledger.accepted.len();
    let next = post_until(&client, &daemon.base, next, &mut ledger, |l, _| {
        l.accepted.len() >= before + 500
    })
    .await;
    daemon.kill9();
    let filler = disk.path().join("someone-else.bin");
    let filled_with = fill(&filler);
    println!("filled the disk with {filled_with} more bytes; {} left", disk.available());
    let daemon = Daemon::start(&config, port, &log).await;
    // Opening the file after the kill may have given space back (redb's repair can trim a
    // free tail): someone else takes that too.
    let topped_up = disk.path().join("someone-else-2.bin");
    fill(&topped_up);
    let full_since = Instant::now();
    let (status, ready) = loop {
        let (status, ready) = daemon.get("/ready").await;
        if (status == 503 && ready.contains("store_disk_space"))
            || full_since.elapsed() > Duration::from_secs(10)
        {
            break (status, ready);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status == 503 && ready.contains("store_disk_space"), "{status} {ready}");
    let refused_before = ledger.refused;
    let next =
        post_until(&client, &daemon.base, next, &mut ledger, |l, _| l.refused > refused_before)
            .await;
    broker.set_up(true);
    drain(&mut queue, &mut got, &ledger.accepted).await;
    assert!(
        ledger.accepted.iter().all(|n| got.contains_key(n)),
        "drained on a full disk:\n{}",
        daemon.log_text()
    );
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&topped_up).unwrap();
    let freed = Instant::now();
    let accepted_before = ledger.accepted.len();
    post_until(&client, &daemon.base, next, &mut ledger, |l, _| {
        assert!(freed.elapsed() < Duration::from_secs(30), "ingest did not resume");
        l.accepted.len() > accepted_before
    })
    .await;
    drain(&mut queue, &mut got, &ledger.accepted).await;
    daemon.stop();

    let lost: Vec<_> = ledger.accepted.iter().filter(|n| !got.contains_key(n)).collect();
    let unexpected: Vec<_> = got.keys().filter(|n| !ledger.attempted.contains(n)).collect();
    let duplicated = got.values().filter(|&&c| c > 1).count();
    let recovered = got.keys().filter(|n| !ledger.accepted.contains(n)).count();
    println!(
        "attempted={} accepted={} refused={} delivered={} lost={} unexpected={} duplicated={} \
         recovered={recovered}",
        ledger.attempted.len(),
        ledger.accepted.len(),
        ledger.refused,
        got.len(),
        lost.len(),
        unexpected.len(),
        duplicated
    );
    assert!(
        lost.is_empty(),
        "acknowledged, never delivered: {} events; log {}",
        lost.len(),
        log.display()
    );
    assert!(unexpected.is_empty(), "delivered, never sent: {unexpected:?}");
}
