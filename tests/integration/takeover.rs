//! Takeover of a dead peer's events, with fencing, between real daemon processes sharing the
//! real PostgreSQL (a fresh database per test) and publishing to the real RabbitMQ. Instance
//! A reaches RabbitMQ only through a TCP proxy the test keeps closed, so its events wait in
//! its outbox (and in PostgreSQL); instance B reaches RabbitMQ directly.
//!
//! - kill -9 A: B publishes every event A held, once each, with A's event ids, within
//!   `lease` + 10 s, including those a third instance had claimed and not finished;
//! - A stalls, a third instance claims A's rows and dies mid-takeover, A comes back and
//!   claims them back: A publishes them, once each;
//! - SIGSTOP A until B has taken over, then open A's path to RabbitMQ and SIGCONT it: A
//!   publishes none of them (it reconciles first);
//! - `ack: fleet`, kill -9 A and delete its store: B publishes every event A answered 202 for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::fleet::{FreshDb, POSTGRES};
use crate::helpers::{
    AMQP_URL, API_KEY, Proxy, RabbitQueue, Reaped, Received, free_port, unique, write_binary_config,
};

const LEASE_S: u64 = 3;

struct Daemon {
    child: Reaped,
    base: String,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(db: &FreshDb, id: &str, amqp: &str, exchange: &str, ack: &str) -> Daemon {
        Self::start_via(db, POSTGRES, id, amqp, exchange, ack)
    }

    /// As [`Daemon::start`], reaching PostgreSQL at `postgres` (a proxy, say).
    fn start_via(
        db: &FreshDb,
        postgres: &str,
        id: &str,
        amqp: &str,
        exchange: &str,
        ack: &str,
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let extra = format!(
            "relay: {{ backoff: {{ initial: 100ms, max: 500ms }} }}\n\
             sync:\n  postgres:\n    url: \"{}\"\n  instance_id: {id}\n  lease: {LEASE_S}s\n  ack: {ack}\n",
            db.url(postgres)
        );
        let config = write_binary_config(dir.path(), port, amqp, exchange, &extra);
        let child = spawn(&config, &dir.path().join("daemon.log"));
        Daemon { child, base: format!("http://127.0.0.1:{port}"), dir }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    async fn ready(&self, client: &reqwest::Client) {
        let started = Instant::now();
        while !client
            .get(format!("{}/health", self.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(started.elapsed() < Duration::from_secs(30), "{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = client.get(format!("{}/metrics", self.base)).send().await.unwrap();
        let text = text.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

fn spawn(config: &Path, log: &Path) -> Reaped {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Reaped(
        Command::new(env!("CARGO_BIN_EXE_orchestron"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,lapin=off")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the daemon"),
    )
}

fn signal(pid: &str, sig: &str) {
    let status = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// Posts `n` events (`{"n": i}`) with 16 concurrent senders; returns event id by number for
/// those answered 202, and how many were answered 503.
async fn post_many(
    client: &reqwest::Client,
    base: &str,
    n: usize,
) -> (BTreeMap<usize, String>, usize) {
    let mut accepted = BTreeMap::new();
    let mut refused = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
        let posts = chunk.iter().map(|&i| {
            let request = client
                .post(format!("{base}/api/events/fleet.takeover"))
                .header("x-api-key", API_KEY)
                .header("content-type", "application/json")
                .body(format!("{{\"n\":{i}}}"));
            async move { (i, request.send().await.unwrap()) }
        });
        for (i, response) in futures_util::future::join_all(posts).await {
            match response.status().as_u16() {
                202 => {
                    let answer: serde_json::Value = response.json().await.unwrap();
                    accepted.insert(i, answer["event_id"].as_str().unwrap().to_owned());
                }
                503 => refused += 1,
                other => panic!("unexpected {other}"),
            }
        }
    }
    (accepted, refused)
}

/// Bodies' numbers and message ids of what arrived, and how many arrived more than once.
fn tally(received: &[Received]) -> (BTreeMap<usize, String>, usize) {
    let mut seen = BTreeMap::new();
    let mut duplicates = 0;
    for m in received {
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        let n = body["n"].as_u64().unwrap() as usize;
        if seen.insert(n, m.message_id.clone().unwrap_or_default()).is_some() {
            duplicates += 1;
        }
    }
    (seen, duplicates)
}

async fn wait_value(db: &FreshDb, sql: &str, want: &str, within: Duration) {
    let started = Instant::now();
    loop {
        let got = db.try_value(sql);
        if got.as_deref() == Ok(want) {
            return;
        }
        assert!(started.elapsed() < within, "{sql}: {got:?}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// The setting of every test here: A (acknowledging with `a_ack`) reaches RabbitMQ only
/// through `a_broker`, closed at first, and PostgreSQL through `a_postgres`, open; B reaches
/// both directly; both publish to one exchange, which `queue` consumes.
struct Pair {
    db: FreshDb,
    queue: RabbitQueue,
    a_broker: Proxy,
    a_postgres: Proxy,
    client: reqwest::Client,
    a: Daemon,
    b: Daemon,
}

impl Pair {
    async fn start(name: &str, a_ack: &str) -> Pair {
        let db = FreshDb::create();
        let exchange = unique(name);
        let queue = RabbitQueue::bind(&exchange, "#").await;
        let a_broker = Proxy::start("127.0.0.1:5672", false).await;
        let a_postgres = Proxy::start(POSTGRES, true).await;
        let client = client();
        let amqp = format!("amqp://guest:guest@{}/%2f", a_broker.addr);
        let pg = a_postgres.addr.to_string();
        let a = Daemon::start_via(&db, &pg, "edge-a", &amqp, &exchange, a_ack);
        let b = Daemon::start(&db, "edge-b", AMQP_URL, &exchange, "local");
        a.ready(&client).await;
        b.ready(&client).await;
        Pair { db, queue, a_broker, a_postgres, client, a, b }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_events_are_published_by_a_peer_once_with_their_ids() {
    // Every part is bound: one left out would be dropped here (its daemon killed, its
    // database dropped, its proxy closed).
    let fleet = Pair::start("takeover", "local").await;
    let Pair { db, mut queue, a_broker: _closed, a_postgres: _pg, client, a, b } = fleet;
    let (accepted, refused) = post_many(&client, &a.base, 1000).await;
    assert_eq!((accepted.len(), refused), (1000, 0));
    // `ack: local`: what A accepted reaches PostgreSQL asynchronously; the takeover covers
    // what is there when A dies.
    let sql = "SELECT count(*) FROM orchestron.events WHERE origin = 'edge-a'";
    wait_value(&db, sql, "1000", Duration::from_secs(20)).await;
    assert!(collect_quiet(&mut queue, Duration::from_millis(500)).await.is_empty(), "A is cut off");

    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let killed = Instant::now();
    let received = queue.collect(1000, Duration::from_secs(LEASE_S + 10)).await;
    let took = killed.elapsed();
    let extra = collect_quiet(&mut queue, Duration::from_secs(2)).await;
    let (seen, duplicates) = tally(&[received, extra].concat());
    let lost: Vec<_> = accepted.keys().filter(|n| !seen.contains_key(n)).collect();
    println!(
        "takeover: {} of 1000 published by B in {took:?}, duplicates {duplicates}",
        seen.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} (first {:?}); B's log:\n{}",
        lost.len(),
        lost.first(),
        b.log()
    );
    assert_eq!(duplicates, 0);
    assert!(took < Duration::from_secs(LEASE_S + 10));
    for (n, id) in &accepted {
        assert_eq!(&seen[n], id, "published with the event id A gave it");
    }
    assert_eq!(b.metric(&client, "orchestron_fleet_taken_over_events_total").await, 1000.0);
    wait_value(&db, "SELECT count(*) FROM orchestron.events", "0", Duration::from_secs(10)).await;
    assert_eq!(
        db.value("SELECT epoch > 0 FROM orchestron.instances WHERE instance_id = 'edge-a'"),
        "t"
    );
    // B analyzed the table before claiming: planned without statistics (autovacuum had not
    // looked yet, or is off), the claims read the whole table for each batch.
    let analyzed = "SELECT coalesce(last_analyze, last_autoanalyze) IS NOT NULL \
                    FROM pg_stat_user_tables WHERE relid = 'orchestron.events'::regclass";
    assert_eq!(db.value(analyzed), "t");
}

/// An analyze that cannot get its lock (a vacuum, another instance's analyze) does not stop
/// the takeover: B gives up on it after 1 s, says so, and claims anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_locked_against_analyze_is_taken_over_anyway() {
    let fleet = Pair::start("takeover-locked", "local").await;
    let Pair { db, mut queue, a_broker: _closed, a_postgres: _pg, client, a, b } = fleet;
    let (accepted, _) = post_many(&client, &a.base, 200).await;
    assert_eq!(accepted.len(), 200);
    let sql = "SELECT count(*) FROM orchestron.events WHERE origin = 'edge-a'";
    wait_value(&db, sql, "200", Duration::from_secs(20)).await;
    // The lock a VACUUM or ANALYZE takes; row updates and deletes do not conflict with it.
    let mut holder =
        db.session("BEGIN; LOCK TABLE orchestron.events IN SHARE UPDATE EXCLUSIVE MODE;");
    let held = "SELECT count(*) FROM pg_locks WHERE relation = 'orchestron.events'::regclass \
                AND mode = 'ShareUpdateExclusiveLock' AND granted";
    wait_value(&db, held, "1", Duration::from_secs(10)).await;
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let received = queue.collect(200, Duration::from_secs(LEASE_S + 15)).await;
    let (seen, duplicates) = tally(&received);
    let _ = holder.kill();
    let _ = holder.wait();
    let lost = accepted.keys().filter(|n| !seen.contains_key(n)).count();
    assert_eq!((lost, duplicates), (0, 0), "B's log:\n{}", b.log());
    assert!(b.log().contains("could not analyze the events table"), "{}", b.log());
}

/// A peer that died in the middle of a takeover leaves rows it had claimed (owner C, origin
/// A) and not finished: they are taken over with C, by the partial index of claimed rows,
/// while A's own rows are walked by the primary key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_left_by_a_peer_that_died_mid_takeover_are_taken_over_too() {
    let fleet = Pair::start("takeover-chain", "local").await;
    let Pair { db, mut queue, a_broker: _closed, a_postgres: _pg, client, a, b } = fleet;
    let (accepted, _) = post_many(&client, &a.base, 300).await;
    assert_eq!(accepted.len(), 300);
    let sql = "SELECT count(*) FROM orchestron.events WHERE origin = 'edge-a'";
    wait_value(&db, sql, "300", Duration::from_secs(20)).await;
    db.value(
        "INSERT INTO orchestron.instances (instance_id, lease_expires_at, heartbeat_at, \
         started_at, version) VALUES ('edge-c', now() - interval '1 minute', \
         now() - interval '2 minutes', now() - interval '1 hour', 'test')",
    );
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    // edge-c claimed every other row of A's and died before finishing (in one statement:
    // B may claim them from edge-c as soon as they are there).
    let claimed_by_c = db.value(
        "WITH c AS (UPDATE orchestron.events SET owner = 'edge-c', owner_epoch = 0, claimed = true \
         WHERE seq % 2 = 0 RETURNING 1) SELECT count(*) FROM c",
    );
    assert_eq!(claimed_by_c, "150");
    published_once_each(&mut queue, &accepted, Duration::from_secs(LEASE_S + 10), || b.log()).await;
    assert_eq!(b.metric(&client, "orchestron_fleet_taken_over_events_total").await, 300.0);
    wait_value(&db, "SELECT count(*) FROM orchestron.events", "0", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_claimed_back_from_a_peer_that_died_mid_takeover_are_published_by_their_origin() {
    // A stalls past its lease; edge-c claims all of A's rows and dies before finishing them;
    // A comes back, reconciles (dropping them from its store as edge-c's), then takes edge-c
    // over: the rows are A's own again, and A must publish them from PostgreSQL.
    let fleet = Pair::start("takeover-back", "local").await;
    let Pair { db, mut queue, a_broker: path, a_postgres: _pg, client, a, b } = fleet;
    let mut b = b;
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let (accepted, _) = post_many(&client, &a.base, 200).await;
    assert_eq!(accepted.len(), 200);
    let sql = "SELECT count(*) FROM orchestron.events WHERE origin = 'edge-a'";
    wait_value(&db, sql, "200", Duration::from_secs(20)).await;
    signal(&a.pid(), "-STOP");
    let lapsed = "SELECT lease_expires_at < now() FROM orchestron.instances \
                  WHERE instance_id = 'edge-a'";
    wait_value(&db, lapsed, "t", Duration::from_secs(LEASE_S + 5)).await;
    // A claim that does not set the flag (a build from before migration 8) is refused.
    let unflagged =
        db.try_value("UPDATE orchestron.events SET owner = 'edge-c' WHERE origin = 'edge-a'");
    assert!(unflagged.as_ref().is_err_and(|e| e.contains("events_claim_flagged")), "{unflagged:?}");
    // What edge-c's claim did, in one transaction: A's epoch bumped, its rows claimed.
    let claimed_by_c = db.value(
        "WITH c AS (INSERT INTO orchestron.instances (instance_id, lease_expires_at, \
             heartbeat_at, started_at, version) VALUES ('edge-c', now() - interval '1 minute', \
             now() - interval '2 minutes', now() - interval '1 hour', 'test') RETURNING 1), \
         bump AS (UPDATE orchestron.instances SET epoch = epoch + 1 \
             WHERE instance_id = 'edge-a' RETURNING 1), \
         claimed AS (UPDATE orchestron.events SET owner = 'edge-c', owner_epoch = 0, \
             claimed = true WHERE origin = 'edge-a' RETURNING 1) \
         SELECT count(*) FROM claimed, (SELECT count(*) FROM c) x, (SELECT count(*) FROM bump) y",
    );
    assert_eq!(claimed_by_c, "200");
    path.set_up(true);
    signal(&a.pid(), "-CONT");
    published_once_each(&mut queue, &accepted, Duration::from_secs(LEASE_S + 15), || a.log()).await;
    assert_eq!(a.metric(&client, "orchestron_fleet_reconciled_events_total").await, 200.0);
    wait_value(&db, "SELECT count(*) FROM orchestron.events", "0", Duration::from_secs(10)).await;
    // No tombstone for its own events: there is no one else to tell.
    assert_eq!(db.value("SELECT count(*) FROM orchestron.takeovers"), "0");
}

/// Asserts that every event in `accepted` arrives on `queue` within `within`, once (2 s more
/// are given to duplicates), with the event id it was accepted with; `log` is shown if not.
async fn published_once_each(
    queue: &mut RabbitQueue,
    accepted: &BTreeMap<usize, String>,
    within: Duration,
    log: impl Fn() -> String,
) {
    let received = queue.collect(accepted.len(), within).await;
    let extra = collect_quiet(queue, Duration::from_secs(2)).await;
    let (seen, duplicates) = tally(&[received, extra].concat());
    let lost = accepted.keys().filter(|n| !seen.contains_key(n)).count();
    assert_eq!((lost, duplicates), (0, 0), "log:\n{}", log());
    for (n, id) in accepted {
        assert_eq!(&seen[n], id, "published with the event id its origin gave it");
    }
}

/// Messages that arrive within `quiet`.
async fn collect_quiet(queue: &mut RabbitQueue, quiet: Duration) -> Vec<Received> {
    queue.collect(usize::MAX, quiet).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_instance_that_was_taken_over_publishes_none_of_those_events() {
    let fleet = Pair::start("fencing", "local").await;
    let Pair { db, mut queue, a_broker: path, a_postgres: pg, client, a, b: _b } = fleet;
    let (accepted, _) = post_many(&client, &a.base, 200).await;
    assert_eq!(accepted.len(), 200);
    let sql = "SELECT count(*) FROM orchestron.events WHERE origin = 'edge-a'";
    wait_value(&db, sql, "200", Duration::from_secs(20)).await;

    signal(&a.pid(), "-STOP");
    let received = queue.collect(200, Duration::from_secs(LEASE_S + 10)).await;
    let (seen, duplicates) = tally(&received);
    assert_eq!((seen.len(), duplicates), (200, 0), "B took over while A was paused");
    wait_value(&db, "SELECT count(*) FROM orchestron.takeovers", "200", Duration::from_secs(10))
        .await;

    // A wakes with a working path to RabbitMQ and 200 events in its outbox, but cannot reach
    // PostgreSQL yet: its lease has lapsed, so it publishes none of the replicated events.
    pg.set_up(false);
    path.set_up(true);
    signal(&a.pid(), "-CONT");
    let after = collect_quiet(&mut queue, Duration::from_secs(5)).await;
    assert!(
        after.is_empty(),
        "A published {} events with its lease lapsed:\n{}",
        after.len(),
        a.log()
    );
    // Back in touch, it finds its epoch moved, reconciles and drops them.
    pg.set_up(true);
    let after = collect_quiet(&mut queue, Duration::from_secs(5)).await;
    assert!(
        after.is_empty(),
        "A published {} taken-over events; its log:\n{}",
        after.len(),
        a.log()
    );
    let started = Instant::now();
    while a.metric(&client, "orchestron_outbox_pending_events").await != 0.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "A kept them: {}", a.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.metric(&client, "orchestron_fleet_reconciled_events_total").await, 200.0);
    wait_value(&db, "SELECT count(*) FROM orchestron.takeovers", "0", Duration::from_secs(10))
        .await;
    // A publishes its new events as usual.
    let (more, _) = post_many(&client, &a.base, 5).await;
    assert_eq!(more.len(), 5);
    assert_eq!(queue.collect(5, Duration::from_secs(10)).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ack_fleet_a_lost_host_loses_nothing_it_answered_202_for() {
    let fleet = Pair::start("hostloss", "fleet").await;
    let Pair { db: _db, mut queue, a_broker: _closed, a_postgres: _pg, client, a, b: _b } = fleet;
    // Until A's first heartbeat it cannot confirm: wait for its 202s.
    let started = Instant::now();
    while post_many(&client, &a.base, 1).await.0.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "no 202 from A: {}", a.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (accepted, _) = post_many(&client, &a.base, 300).await;
    // No waiting for replication here: the 202 said it was done. The host and its disk go.
    let Daemon { mut child, dir, .. } = a;
    child.kill().unwrap();
    child.wait().unwrap();
    drop(dir);
    let received = queue.collect(accepted.len(), Duration::from_secs(LEASE_S + 10)).await;
    let extra = collect_quiet(&mut queue, Duration::from_secs(2)).await;
    let (seen, _) = tally(&[received, extra].concat());
    let lost: BTreeSet<_> = accepted.keys().filter(|n| !seen.contains_key(n)).collect();
    assert!(lost.is_empty(), "lost {} of {} acknowledged: {lost:?}", lost.len(), accepted.len());
}
