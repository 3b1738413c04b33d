//! I/O errors injected into the unmodified binary with libfiu (`fiu-run -x`, from Debian's
//! `fiu-utils`; RELIABILITY.md). While `fdatasync` fails with EIO, or `pwrite` with ENOSPC,
//! at random, a request whose commit failed is answered 503 with `Retry-After`, never 202;
//! the store is dropped and reopened, not fsync'd again; nothing acknowledged is lost; and
//! once the disk behaves again ingest resumes without a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{AMQP_URL, API_KEY, RabbitQueue, free_port, unique, write_binary_config};

/// Sends a libfiu control command to the daemon through the pipes `fiu-run -f` made.
fn fiu_ctrl(pipes: &Path, pid: u32, command: &str) {
    let status = Command::new("fiu-ctrl")
        .arg("-f")
        .arg(pipes)
        .args(["-c", command, &pid.to_string()])
        .status()
        .expect("fiu-ctrl (Debian package fiu-utils; bash .ci/run installs it)");
    assert!(status.success(), "fiu-ctrl -c {command:?} failed");
}

/// What the senders saw, by body number.
#[derive(Default)]
struct Answers {
    attempted: BTreeSet<u64>,
    accepted: BTreeSet<u64>,
    refused: usize,
}

impl Answers {
    fn absorb(&mut self, other: Answers) {
        self.attempted.extend(other.attempted);
        self.accepted.extend(other.accepted);
        self.refused += other.refused;
    }
}

/// Posts events `numbers` from eight concurrent senders. Every answer must be 202, or 503
/// with `Retry-After`.
async fn post_all(client: &reqwest::Client, base: &str, numbers: std::ops::Range<u64>) -> Answers {
    let numbers: Vec<u64> = numbers.collect();
    let answers = futures_util::future::join_all(numbers.chunks(numbers.len().div_ceil(8)).map(
        |chunk| async move {
            let mut seen = Vec::new();
            for &n in chunk {
                let response = client
                    .post(format!("{base}/api/events/fault.test"))
                    .header("X-API-Key", API_KEY)
                    .header("Content-Type", "application/json")
                    .body(format!("{{\"n\":{n}}}"))
                    .send()
                    .await
                    .expect("the daemon answers while its disk fails");
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                assert!(
                    status == 202 || (status == 503 && retry_after),
                    "event {n}: {status} (retry-after: {retry_after}); only 202 or 503 with \
                     Retry-After may answer a write"
                );
                seen.push((n, status == 202));
            }
            seen
        },
    ))
    .await;
    let mut result = Answers::default();
    for (n, accepted) in answers.into_iter().flatten() {
        result.attempted.insert(n);
        if accepted {
            result.accepted.insert(n);
        } else {
            result.refused += 1;
        }
    }
    result
}

fn start(config: &Path, pipes: &Path, log: &Path) -> crate::helpers::Reaped {
    let child = Command::new("fiu-run")
        .arg("-x")
        .arg("-f")
        .arg(pipes)
        .arg(env!("CARGO_BIN_EXE_orchestron"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("fiu-run (Debian package fiu-utils; bash .ci/run installs it)");
    crate::helpers::Reaped(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_fsyncs_are_answered_503_and_lose_nothing_acknowledged() {
    inject("posix/io/sync/fdatasync", libc_errno::EIO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_answered_503_and_loses_nothing_acknowledged() {
    inject("posix/io/rw/pwrite", libc_errno::ENOSPC).await;
}

mod libc_errno {
    pub const EIO: u32 = 5;
    pub const ENOSPC: u32 = 28;
}

/// Healthy load, then load while one in five calls of the libfiu failure point `point` fails
/// with `errno`, then the disk heals; checks the answers and what reached the queue.
async fn inject(point: &str, errno: u32) {
    let exchange = unique("faults");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let relay = "relay: { backoff: { initial: 100ms, max: 1s } }\n";
    let config = write_binary_config(dir.path(), port, AMQP_URL, &exchange, relay);
    let (pipes, log) = (dir.path().join("fiu-ctrl"), dir.path().join("daemon.log"));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut child = start(&config, &pipes, &log);
    let pid = child.id(); // fiu-run execs the daemon: same process
    let started = Instant::now();
    while !client.get(format!("{base}/health")).send().await.is_ok_and(|r| r.status() == 200) {
        assert!(started.elapsed() < Duration::from_secs(30), "daemon not up; {}", log.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut all = post_all(&client, &base, 0..40).await;
    assert_eq!(all.accepted.len(), 40, "a healthy disk accepts everything");

    fiu_ctrl(&pipes, pid, &format!("enable_random name={point},probability=0.2,failinfo={errno}"));
    let failing = post_all(&client, &base, 40..240).await;
    let refused = failing.refused;
    assert!(refused > 0, "the injected fsync errors reached the commits");
    all.absorb(failing);

    fiu_ctrl(&pipes, pid, &format!("disable name={point}"));
    // The writer reopens the store by itself: no restart.
    let healed = Instant::now();
    let mut next = 240;
    loop {
        let answer = post_all(&client, &base, next..next + 1).await;
        next += 1;
        let resumed = !answer.accepted.is_empty();
        all.absorb(answer);
        if resumed {
            break;
        }
        assert!(healed.elapsed() < Duration::from_secs(15), "ingest did not resume");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let resumed_after = healed.elapsed();
    let after = post_all(&client, &base, next..next + 40).await;
    assert_eq!(after.accepted.len(), 40, "once the disk behaves, everything is accepted");
    all.absorb(after);

    let accepted = &all.accepted;
    let mut delivered: BTreeMap<u64, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !accepted.iter().all(|n| delivered.contains_key(n)) {
        for m in queue.collect(usize::MAX, Duration::from_millis(500)).await {
            let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
            *delivered.entry(v["n"].as_u64().unwrap()).or_default() += 1;
        }
    }
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    let _ = child.wait();

    let lost: Vec<_> = accepted.iter().filter(|n| !delivered.contains_key(n)).collect();
    let unexpected: Vec<_> = delivered.keys().filter(|n| !all.attempted.contains(n)).collect();
    let recovered = delivered.keys().filter(|n| !accepted.contains(n)).count();
    println!(
        "{point} failing with errno {errno}: attempted={} accepted={} refused={refused} \
         delivered={} lost={} \
         recovered={recovered} resumed {resumed_after:?} after the disk healed",
        all.attempted.len(),
        accepted.len(),
        delivered.len(),
        lost.len(),
    );
    assert!(lost.is_empty(), "acknowledged, never delivered: {lost:?}; log {}", log.display());
    assert!(unexpected.is_empty(), "delivered, never sent: {unexpected:?}");
}
