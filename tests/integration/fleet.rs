//! Fleet sync against the real PostgreSQL on 127.0.0.1:5432, a fresh database per test:
//! migrations applied once by instances starting together, heartbeats and leases seen from a
//! peer, an instance id kept across restarts, the outbox and DLQ replicated (and settled
//! events removed), and ingest untouched while PostgreSQL is cut off (a TCP proxy the test
//! controls), with replication catching up when it returns.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::helpers::{Proxy, RabbitQueue, TestApp, good_and_unroutable_config, unique, wait_dlq};

pub const POSTGRES: &str = "127.0.0.1:5432";

/// A database of this test's own, dropped at the end.
pub struct FreshDb {
    name: String,
    /// Roles made for this test (cluster-wide), dropped after the database.
    roles: Vec<String>,
}

impl FreshDb {
    pub fn create() -> FreshDb {
        let name = format!("orchestron_test_{}", uuid::Uuid::now_v7().simple());
        psql("postgres", &format!("CREATE DATABASE {name}"));
        FreshDb { name, roles: Vec::new() }
    }

    /// A login role with no rights beyond connecting (PostgreSQL 15 and later grant PUBLIC
    /// no CREATE on databases or on the `public` schema).
    fn role(&mut self) -> String {
        let role = format!("{}_role{}", self.name, self.roles.len());
        psql("postgres", &format!("CREATE ROLE {role} LOGIN"));
        self.roles.push(role.clone());
        role
    }

    /// A `psql` session on this database that runs `sql` and stays open (its locks held)
    /// until the child is killed.
    pub fn session(&self, sql: &str) -> std::process::Child {
        use std::io::Write;
        let mut child = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &self.name, "-qAt"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("psql (PostgreSQL on 127.0.0.1:5432; scripts/test starts it)");
        writeln!(child.stdin.as_mut().unwrap(), "{sql}").unwrap();
        child
    }

    pub fn url(&self, addr: &str) -> String {
        format!("postgres://postgres@{addr}/{}", self.name)
    }

    /// One value from a query in this database.
    pub fn value(&self, sql: &str) -> String {
        psql(&self.name, sql).trim().to_owned()
    }

    /// The same, or why the query failed (a table not created yet, say).
    pub fn try_value(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &self.name, "-qAtc", sql])
            .output()
            .expect("psql (PostgreSQL on 127.0.0.1:5432; scripts/test starts it)");
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
        if out.status.success() { Ok(text(&out.stdout)) } else { Err(text(&out.stderr)) }
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qAtc"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .output();
        for role in &self.roles {
            let _ = Command::new("psql")
                .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qAtc"])
                .arg(format!("DROP ROLE IF EXISTS {role}"))
                .output();
        }
    }
}

/// Runs `sql` with psql (the PostgreSQL client) and returns what it printed.
fn psql(database: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", database, "-qAtc", sql])
        .output()
        .expect("psql (PostgreSQL on 127.0.0.1:5432; scripts/test starts it)");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A RabbitMQ broker nobody listens for: events wait in the outbox.
const UNREACHABLE_BROKER: &str = "brokers:\n  rabbitmq:\n    url: \"amqp://guest:guest@127.0.0.1:1/%2f\"\n\
     default_route:\n  to: [ { rabbitmq: { exchange: nowhere, routing_key: k } } ]\n";

/// Polls `sql` in `db` until it prints `want` (a failing query, before the migrations have
/// run, counts as not yet).
async fn wait_value(db: &FreshDb, sql: &str, want: &str) {
    let started = Instant::now();
    loop {
        let got = db.try_value(sql);
        if got.as_deref() == Ok(want) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{sql}: {got:?}, not {want}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn metrics(app: &TestApp) -> String {
    reqwest::get(app.url("/metrics")).await.unwrap().text().await.unwrap()
}

/// RabbitMQ, and every event to `exchange` (routing key `k`).
fn rabbit_route(exchange: &str) -> String {
    format!(
        "brokers:\n  rabbitmq:\n    url: \"{}\"\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: k }} }} ]\n",
        crate::helpers::AMQP_URL
    )
}

fn sync_config(url: &str, instance: Option<&str>, lease: &str) -> String {
    let id = instance.map(|i| format!("  instance_id: {i}\n")).unwrap_or_default();
    format!("sync:\n  postgres:\n    url: \"{url}\"\n{id}  lease: {lease}\n")
}

/// Waits until the fleet view of `app` satisfies `check`.
async fn wait_fleet(
    app: &TestApp,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let response = app.admin(reqwest::Method::GET, "/admin/fleet").send().await.unwrap();
        if response.status() == 200 {
            let view: serde_json::Value = response.json().await.unwrap();
            if check(&view) {
                return view;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "fleet view: {view}");
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no fleet view");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn live(view: &serde_json::Value) -> Vec<String> {
    view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["live"] == true)
        .map(|m| m["instance_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_starting_at_once_apply_the_migrations_once_and_see_each_other() {
    let db = FreshDb::create();
    let url = db.url(POSTGRES);
    let configs = ["edge-a", "edge-b", "edge-c"]
        .map(|id| format!("{UNREACHABLE_BROKER}{}", sync_config(&url, Some(id), "3s")));
    let (a, b, c) = tokio::join!(
        TestApp::spawn(&configs[0]),
        TestApp::spawn(&configs[1]),
        TestApp::spawn(&configs[2]),
    );
    let view = wait_fleet(&a, |v| live(v).len() == 3).await;
    assert_eq!(live(&view), ["edge-a", "edge-b", "edge-c"]);
    assert_eq!(view["instance_id"], "edge-a");
    assert_eq!(view["sync"]["connected"], true, "{view}");
    assert_eq!(db.value("SELECT count(*) FROM orchestron.migrations"), "8", "applied once");
    assert_eq!(db.value("SELECT count(*) FROM orchestron.instances"), "3");
    // Each heartbeat carries the outbox size: an event waiting on an unconfigured broker...
    a.accept("fleet.test", "{}".into()).await;
    wait_fleet(&b, |v| {
        v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["instance_id"] == "edge-a" && m["pending_events"] == 1)
    })
    .await;
    let metrics = reqwest::get(a.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("orchestron_fleet_live_peers 2"), "{metrics}");
    assert!(metrics.contains("orchestron_sync_up 1"), "{metrics}");

    // `orchestron fleet status`, as an operator runs it against the admin API.
    let out = Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .args(["fleet", "status", "--admin-url", &format!("http://{}", a.admin_addr)])
        .args(["--token", crate::helpers::ADMIN_TOKEN])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status}{}", String::from_utf8_lossy(&out.stderr));
    assert!(status.starts_with("this instance: edge-a (epoch 0, connected;"), "{status}");
    for id in ["edge-a", "edge-b", "edge-c"] {
        assert!(status.lines().any(|l| l.starts_with(id) && l.contains(" live ")), "{status}");
    }

    // A stopped instance's lease runs out; its peers see it expired.
    c.stop().await;
    let view = wait_fleet(&a, |v| live(v).len() == 2).await;
    assert_eq!(live(&view), ["edge-a", "edge-b"]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_instance_id_is_kept_in_the_store_across_restarts() {
    let db = FreshDb::create();
    let app = TestApp::spawn(&sync_config(&db.url(POSTGRES), None, "3s")).await;
    let first = wait_fleet(&app, |v| live(v).len() == 1).await["instance_id"].clone();
    let dir = app.stop().await;
    let app = TestApp::spawn_in(dir, &sync_config(&db.url(POSTGRES), None, "3s")).await;
    let again = wait_fleet(&app, |v| live(v).len() == 1).await["instance_id"].clone();
    assert_eq!(first, again, "the same instance after a restart");
    assert_eq!(db.value("SELECT count(*) FROM orchestron.instances"), "1");
    app.stop().await;
}

/// PostgreSQL cut off: senders see only 202, `/ready` stays 200 and reports the sync state,
/// and the heartbeat resumes by itself when the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_leaves_ingest_alone_and_heartbeats_resume() {
    let db = FreshDb::create();
    let proxy = Proxy::start(POSTGRES, true).await;
    let sync = sync_config(&db.url(&proxy.addr.to_string()), Some("edge-x"), "3s");
    let app = TestApp::spawn(&format!("{UNREACHABLE_BROKER}{sync}")).await;
    wait_fleet(&app, |v| live(v).len() == 1).await;
    proxy.set_up(false);
    let started = Instant::now();
    loop {
        let ready: serde_json::Value =
            reqwest::get(app.url("/ready")).await.unwrap().json().await.unwrap();
        if ready["sync"]["connected"] == false {
            assert_eq!(ready["sync"]["instance_id"], "edge-x");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{ready}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..20 {
        let response = app.post("fleet.down", format!("{{\"i\":{i}}}")).await;
        assert_eq!(response.status(), 202, "ingest does not wait for PostgreSQL");
    }
    // Not ready only for the broker this test leaves unreachable: PostgreSQL being down is
    // not a readiness failure with `ack: local`.
    let body: serde_json::Value =
        reqwest::get(app.url("/ready")).await.unwrap().json().await.unwrap();
    assert_eq!(body["failing"], serde_json::json!(["rabbitmq"]), "{body}");
    assert_eq!(body["sync"]["connected"], false, "{body}");
    // A keyed event: PostgreSQL cannot say whose the key is, so it is stored and held.
    let (status, answer) = post_keyed(&app, "while-cut", "{}".into()).await;
    assert_eq!(status, 202, "{answer}");
    let text = metrics(&app).await;
    assert!(text.contains("orchestron_fleet_dedup_held_events 1"), "{text}");
    assert!(text.contains("orchestron_fleet_dedup_fallbacks_total 0"), "{text}");
    assert!(text.contains("orchestron_sync_up 0"), "{text}");
    assert!(!text.contains("orchestron_sync_lag_events 0\n"), "the changes wait: {text}");
    assert_eq!(db.value("SELECT count(*) FROM orchestron.events"), "0");
    proxy.set_up(true);
    wait_fleet(&app, |v| v["sync"]["connected"] == true).await;
    // Replication catches up by itself: every event accepted meanwhile (20, and the keyed
    // one) is in PostgreSQL.
    wait_value(&db, "SELECT count(*) FROM orchestron.events WHERE origin = 'edge-x'", "21").await;
    // The held key is claimed for its event, which goes to the relay.
    let view = wait_fleet(&app, |v| v["sync"]["key_holds"]["claimed"] == 1).await;
    assert_eq!(view["sync"]["key_holds"]["waiting"], 0, "{view}");
    assert_eq!(
        db.value(
            "SELECT origin || ' ' || confirmed FROM orchestron.dedup_keys WHERE key = 'while-cut'"
        ),
        "edge-x true"
    );
    let started = Instant::now();
    while !metrics(&app).await.contains("orchestron_sync_lag_events 0\n") {
        assert!(started.elapsed() < Duration::from_secs(10), "lag stays above 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}

/// PostgreSQL cut off under a steady load, the broker reachable: every request is answered
/// 202 (`ack: local`), every event is published exactly once (no takeover happens, so
/// nothing may be published twice), and once PostgreSQL is back the lag returns to 0 and
/// PostgreSQL holds nothing pending (every event settled, replicated and removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_under_load_loses_nothing_and_publishes_each_event_once() {
    let db = FreshDb::create();
    let proxy = Proxy::start(POSTGRES, true).await;
    let exchange = unique("fleet_cut");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let route = rabbit_route(&exchange);
    let sync = sync_config(&db.url(&proxy.addr.to_string()), Some("edge-cut"), "3s");
    let app = TestApp::spawn(&format!("{route}{sync}")).await;
    wait_fleet(&app, |v| live(v).len() == 1).await;

    // Eight senders post for the whole run; the cut lasts through its middle part.
    let stop = tokio_util::sync::CancellationToken::new();
    let next = std::sync::atomic::AtomicU64::new(0);
    let senders = futures_util::future::join_all((0..8).map(|_| async {
        let mut statuses = Vec::new();
        while !stop.is_cancelled() {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let response = app.post("fleet.cut", format!("{{\"n\":{n}}}")).await;
            statuses.push((n, response.status().as_u16()));
        }
        statuses
    }));
    let script = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        proxy.set_up(false);
        tokio::time::sleep(Duration::from_secs(4)).await;
        proxy.set_up(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
    };
    let (statuses, ()) = tokio::join!(senders, script);
    let statuses: Vec<(u64, u16)> = statuses.into_iter().flatten().collect();
    assert!(statuses.iter().all(|&(_, s)| s == 202), "every answer 202 with ack: local");
    let sent = statuses.len();
    assert!(sent >= 100, "only {sent} requests in 6 s");

    let received = queue.collect(sent, Duration::from_secs(30)).await;
    let mut count = std::collections::BTreeMap::new();
    for m in &received {
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        *count.entry(body["n"].as_u64().unwrap()).or_insert(0u32) += 1;
    }
    let lost = statuses.iter().filter(|(n, _)| !count.contains_key(n)).count();
    let twice = count.values().filter(|&&c| c > 1).count();
    assert_eq!((lost, twice), (0, 0), "lost, published twice (of {sent})");
    // Replication caught up: no change waits, and PostgreSQL holds no pending event of this
    // instance (all were settled; settled events are removed).
    let started = Instant::now();
    while !metrics(&app).await.contains("orchestron_sync_lag_events 0\n") {
        assert!(started.elapsed() < Duration::from_secs(20), "lag stays above 0");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_value(&db, "SELECT count(*) FROM orchestron.events WHERE origin = 'edge-cut'", "0").await;
    app.stop().await;
}

/// Runs `orchestron sync migrate` on a config with `sync` as given.
fn sync_migrate(sync: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, crate::helpers::config_text(dir.path(), sync)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .args(["sync", "migrate", "--config"])
        .arg(&config)
        .output()
        .unwrap()
}

/// Runs `orchestron check-config --postgres` on a config with `sync` as given.
fn check_postgres(sync: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, crate::helpers::config_text(dir.path(), sync)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .args(["check-config", "--postgres", "--config"])
        .arg(&config)
        .output()
        .unwrap()
}

#[test]
fn sync_migrate_applies_the_schema_once() {
    let db = FreshDb::create();
    let sync = sync_config(&db.url(POSTGRES), None, "30s");
    let before = check_postgres(&sync);
    let stdout = String::from_utf8_lossy(&before.stdout);
    assert!(before.status.success(), "{stdout}{}", String::from_utf8_lossy(&before.stderr));
    assert!(
        stdout.contains("PostgreSQL: reachable; schema orchestron at version 0 (this build: 8)"),
        "{stdout}"
    );
    let nowhere = check_postgres(&sync_config("postgres://postgres@127.0.0.1:1/x", None, "30s"));
    assert!(!nowhere.status.success(), "an unreachable PostgreSQL fails --postgres");
    let run = || {
        let out = sync_migrate(&sync_config(&db.url(POSTGRES), None, "30s"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run().contains("applied [1, 2, 3, 4, 5, 6, 7, 8]"));
    assert!(run().contains("is current"));
    let after = String::from_utf8(check_postgres(&sync).stdout).unwrap();
    assert!(after.contains("at version 8 (this build: 8)"), "{after}");
    assert_eq!(db.value("SELECT count(*) FROM orchestron.migrations"), "8");
}

/// The role needs rights on its own schema only: a DBA creates the schema and hands it over,
/// and the role may not create anything in the database itself.
#[test]
fn a_role_with_rights_on_its_schema_only_applies_the_migrations() {
    let mut db = FreshDb::create();
    let role = db.role();
    psql(&db.name, &format!("CREATE SCHEMA fleet AUTHORIZATION {role}"));
    let url = format!("postgres://{role}@{POSTGRES}/{}", db.name);
    let sync = format!("sync:\n  postgres:\n    url: \"{url}\"\n    schema: fleet\n");
    let out = sync_migrate(&sync);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(db.value("SELECT count(*) FROM fleet.migrations"), "8");
    assert_eq!(db.value("SELECT tableowner FROM pg_tables WHERE tablename = 'instances'"), role);
    // Without its schema, the same role is refused, and says why.
    let other = format!("sync:\n  postgres:\n    url: \"{url}\"\n    schema: elsewhere\n");
    let out = sync_migrate(&other);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
}

/// Events waiting for a broker are in PostgreSQL byte for byte; turning sync on for a store
/// that already holds events replicates those too (the feed's bootstrap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_are_replicated_byte_for_byte_including_those_from_before_sync() {
    let db = FreshDb::create();
    let alone = TestApp::spawn(UNREACHABLE_BROKER).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(alone.accept("fleet.before", format!("{{ \"i\" : {i}, \"é\": true }}")).await);
    }
    let dir = alone.stop().await;
    let sync = sync_config(&db.url(POSTGRES), Some("edge-p"), "3s");
    let app = TestApp::spawn_in(dir, &format!("{UNREACHABLE_BROKER}{sync}")).await;
    wait_value(&db, "SELECT count(*) FROM orchestron.events", "10").await;
    for i in 10..15 {
        ids.push(app.accept("fleet.after", format!("{{ \"i\" : {i}, \"é\": true }}")).await);
    }
    wait_value(&db, "SELECT count(*) FROM orchestron.events WHERE owner = 'edge-p'", "15").await;
    let in_pg =
        db.value("SELECT string_agg(event_id::text, ',' ORDER BY seq) FROM orchestron.events");
    assert_eq!(in_pg, ids.join(","), "the same ids, in order of acceptance");
    assert_eq!(
        db.value("SELECT convert_from(body, 'UTF8') FROM orchestron.events ORDER BY seq LIMIT 1"),
        "{ \"i\" : 0, \"é\": true }",
        "the body as sent"
    );
    assert_eq!(
        db.value(
            "SELECT string_agg(DISTINCT source || '/' || event_type, ',') FROM orchestron.events"
        ),
        "default/fleet.after,default/fleet.before"
    );
    // The relay routed them (to a broker that is down): their destinations are pending.
    wait_value(
        &db,
        "SELECT count(*) FROM orchestron.events WHERE destinations->0->>'status' = 'pending'",
        "15",
    )
    .await;
    app.stop().await;
}

/// Published events leave PostgreSQL; dead-lettered ones move to its `dlq` table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_events_leave_postgres_and_dead_letters_are_replicated() {
    let db = FreshDb::create();
    let good = unique("fleet_good");
    let bad = unique("fleet_bad");
    let mut queue = RabbitQueue::bind(&good, "#").await;
    let relay = "  backoff: { initial: 50ms, max: 200ms }\n  max_attempts: 2\n";
    let sync = sync_config(&db.url(POSTGRES), Some("edge-s"), "3s");
    let app =
        TestApp::spawn(&format!("{}{sync}", good_and_unroutable_config(&good, &bad, relay))).await;
    for i in 0..30 {
        app.accept("fleet.good", format!("{{\"i\":{i}}}")).await;
    }
    let mut dead = Vec::new();
    for i in 0..3 {
        dead.push(app.accept("bad.one", format!("{{\"dead\":{i}}}")).await);
    }
    assert_eq!(queue.collect(30, Duration::from_secs(20)).await.len(), 30);
    wait_dlq(&app, 3).await;
    wait_value(&db, "SELECT count(*) FROM orchestron.events", "0").await;
    wait_value(&db, "SELECT count(*) FROM orchestron.dlq WHERE origin = 'edge-s'", "3").await;
    dead.sort();
    assert_eq!(
        db.value("SELECT string_agg(event_id::text, ',' ORDER BY event_id) FROM orchestron.dlq"),
        dead.join(",")
    );
    assert_eq!(db.value("SELECT DISTINCT reason FROM orchestron.dlq"), "unroutable");
    // Deleting the entries here deletes them there.
    let response =
        app.admin(reqwest::Method::DELETE, "/admin/dlq?type=bad.one").send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    wait_value(&db, "SELECT count(*) FROM orchestron.dlq", "0").await;
    let text = metrics(&app).await;
    assert!(text.contains("orchestron_sync_lag_events 0\n"), "{text}");
    assert!(
        text.contains("orchestron_sync_replicated_total{op=\"delete\",table=\"dlq\"} 3"),
        "{text}"
    );
    app.stop().await;
}

/// `ack: fleet`: a 202 means PostgreSQL has the event; while it cannot be reached the
/// answer is 503 with Retry-After (and `/ready` says so), and 202s resume by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_fleet_answers_202_only_once_postgres_has_the_event() {
    let db = FreshDb::create();
    let proxy = Proxy::start(POSTGRES, true).await;
    let url = db.url(&proxy.addr.to_string());
    let sync = format!(
        "sync:\n  postgres:\n    url: \"{url}\"\n  instance_id: edge-f\n  lease: 3s\n  ack: fleet\n  ack_timeout: 500ms\n"
    );
    let app = TestApp::spawn(&format!("{UNREACHABLE_BROKER}{sync}")).await;
    wait_fleet(&app, |v| v["sync"]["connected"] == true).await;
    for i in 0..10 {
        let id = app.accept("fleet.acked", format!("{{\"i\":{i}}}")).await;
        let sql = format!("SELECT count(*) FROM orchestron.events WHERE event_id = '{id}'");
        assert_eq!(db.value(&sql), "1", "answered 202 before PostgreSQL had {id}");
    }
    // Concurrent requests share PostgreSQL transactions, and all get their 202.
    let posts = (0..50).map(|i| app.post("fleet.burst", format!("{{\"i\":{i}}}")));
    for response in futures_util::future::join_all(posts).await {
        assert_eq!(response.status(), 202);
    }
    proxy.set_up(false);
    let started = Instant::now();
    let refused = loop {
        let response = app.post("fleet.cut", "{}".to_owned()).await;
        if response.status() == 503 {
            break response;
        }
        assert_eq!(response.status(), 202);
        assert!(started.elapsed() < Duration::from_secs(10), "still 202 with PostgreSQL cut");
    };
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "sync_unavailable", "{body}");
    for _ in 0..3 {
        assert_eq!(app.post("fleet.cut", "{}".to_owned()).await.status(), 503);
    }
    let started = Instant::now();
    loop {
        let ready = reqwest::get(app.url("/ready")).await.unwrap();
        if ready.status() == 503 {
            let body: serde_json::Value = ready.json().await.unwrap();
            assert!(body["failing"].as_array().unwrap().iter().any(|f| f == "sync"), "{body}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "/ready stays 200");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.set_up(true);
    let started = Instant::now();
    while app.post("fleet.back", "{}".to_owned()).await.status() != 202 {
        assert!(started.elapsed() < Duration::from_secs(20), "no 202 after PostgreSQL returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The 503'd events were kept locally all the same, and reach PostgreSQL too.
    let total = metrics(&app).await;
    assert!(
        total.contains("orchestron_ingest_rejected_total{reason=\"sync_unavailable\""),
        "{total}"
    );
    wait_value(&db, "SELECT count(*) FROM orchestron.events WHERE event_type = 'fleet.cut'", "4")
        .await;
    app.stop().await;
}

/// Posts `body` to `app` with an idempotency key; returns the status and the answer.
async fn post_keyed(app: &TestApp, key: &str, body: String) -> (u16, serde_json::Value) {
    let response = app
        .client
        .post(app.url("/api/events/fleet.keyed"))
        .header("X-API-Key", crate::helpers::API_KEY)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// An idempotency key accepted by one instance is a duplicate on every other, and two first
/// arrivals at the same moment on two instances are published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_published_once_across_the_fleet() {
    let db = FreshDb::create();
    let exchange = unique("fleet_dedup");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let route = rabbit_route(&exchange);
    let url = db.url(POSTGRES);
    // A generous deadline: the assertions below are about the fleet's answer, not about
    // how fast a loaded CI machine's PostgreSQL gives it.
    let deadline = "  dedup_timeout: 5s\n";
    let a_config = format!("{route}{}{deadline}", sync_config(&url, Some("edge-a"), "3s"));
    let b_config = format!("{route}{}{deadline}", sync_config(&url, Some("edge-b"), "3s"));
    let (a, b) = tokio::join!(TestApp::spawn(&a_config), TestApp::spawn(&b_config));
    wait_fleet(&b, |v| live(v).len() == 2).await;

    let mut first = Vec::new();
    for i in 0..200 {
        let (status, answer) = post_keyed(&a, &format!("k-{i}"), format!("{{\"n\":{i}}}")).await;
        assert_eq!(status, 202, "{answer}");
        first.push(answer["event_id"].as_str().unwrap().to_owned());
    }
    for (i, id) in first.iter().enumerate() {
        let (status, answer) = post_keyed(&b, &format!("k-{i}"), format!("{{\"n\":{i}}}")).await;
        assert_eq!((status, answer["status"].as_str()), (200, Some("duplicate")), "{answer}");
        assert_eq!(answer["event_id"].as_str(), Some(id.as_str()), "the first event's id");
    }

    // The same 50 keys to both instances at once.
    let both = (0..50).map(|i| {
        let (a, b) = (&a, &b);
        async move {
            let body = format!("{{\"n\":{}}}", 1000 + i);
            let key = format!("c-{i}");
            tokio::join!(post_keyed(a, &key, body.clone()), post_keyed(b, &key, body))
        }
    });
    for ((sa, _), (sb, _)) in futures_util::future::join_all(both).await {
        assert!([sa, sb].iter().all(|s| [200, 202].contains(s)), "{sa} {sb}");
    }
    let received = queue.collect(usize::MAX, Duration::from_secs(10)).await;
    let mut count = std::collections::BTreeMap::new();
    for m in &received {
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        *count.entry(body["n"].as_u64().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(count.len(), 250, "every key published");
    assert!(count.values().all(|&n| n == 1), "a key published twice: {count:?}");
    a.stop().await;
    b.stop().await;
}

/// The fleet DLQ: an entry dead-lettered on A is listed from B (`dlq list --fleet`) and
/// replayed from B (`dlq replay --fleet`): delivered once, with its id, and gone from A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_of_one_instance_is_listed_and_replayed_from_another() {
    let db = FreshDb::create();
    let good = unique("fleet_dlq_good");
    let bad = unique("fleet_dlq_bad");
    let relay = "  backoff: { initial: 50ms, max: 200ms }\n  max_attempts: 1\n";
    let routes = good_and_unroutable_config(&good, &bad, relay);
    let url = db.url(POSTGRES);
    let a_config = format!("{routes}{}", sync_config(&url, Some("edge-a"), "3s"));
    let b_config = format!("{routes}{}", sync_config(&url, Some("edge-b"), "3s"));
    let (a, b) = tokio::join!(TestApp::spawn(&a_config), TestApp::spawn(&b_config));
    let id = a.accept("bad.order", r#"{"dead": true}"#.into()).await;
    wait_dlq(&a, 1).await;
    wait_value(&db, "SELECT count(*) FROM orchestron.dlq", "1").await;

    let cli = |app: &TestApp, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_orchestron"))
            .args(args)
            .args(["--admin-url", &format!("http://{}", app.admin_addr)])
            .args(["--token", crate::helpers::ADMIN_TOKEN])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let listed = cli(&b, &["dlq", "list", "--fleet"]);
    assert!(listed.starts_with("INSTANCE"), "{listed}");
    let line = listed.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.starts_with("edge-a") && line.contains("unroutable"), "{listed}");
    assert!(cli(&b, &["dlq", "list"]).lines().all(|l| !l.contains(&id)), "not in B's own DLQ");

    // The destination works now; B replays A's entry.
    let mut queue = RabbitQueue::bind(&bad, "#").await;
    assert_eq!(cli(&b, &["dlq", "replay", &id, "--fleet"]).trim(), "replayed 1 event(s)");
    let received = queue.collect(1, Duration::from_secs(10)).await;
    assert_eq!(received.len(), 1, "delivered by B");
    assert_eq!(received[0].message_id.as_deref(), Some(id.as_str()), "with its id");
    assert_eq!(received[0].body, br#"{"dead": true}"#);
    // A drops its copy at its next heartbeat; the fleet lists it no more.
    let started = Instant::now();
    while !a
        .admin(reqwest::Method::GET, "/admin/dlq")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["entries"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(started.elapsed() < Duration::from_secs(15), "A keeps the replayed entry");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_value(&db, "SELECT count(*) FROM orchestron.dlq", "0").await;
    assert!(!cli(&b, &["dlq", "list", "--fleet"]).contains(&id));
    // A second replay finds nothing, and nothing more arrives.
    let again = b
        .admin(reqwest::Method::POST, &format!("/admin/dlq/{id}/replay?scope=fleet"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    assert!(queue.collect(1, Duration::from_secs(3)).await.is_empty(), "published once");
    a.stop().await;
    b.stop().await;
}

/// A key another instance has claimed but not confirmed (its event is not durable yet, and
/// its append may fail) is no reason to answer `duplicate`: the request waits for the claim
/// within `dedup_timeout`, then local dedup decides and the event is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_claimed_but_not_confirmed_elsewhere_is_not_answered_duplicate() {
    let db = FreshDb::create();
    let sync =
        format!("{}  dedup_timeout: 300ms\n", sync_config(&db.url(POSTGRES), Some("edge-u"), "3s"));
    let app = TestApp::spawn(&format!("{UNREACHABLE_BROKER}{sync}")).await;
    wait_fleet(&app, |v| live(v).len() == 1).await;
    // A peer's claim, as it stands between its PostgreSQL statement and its local commit.
    let other = uuid::Uuid::now_v7();
    db.value(&format!(
        "INSERT INTO orchestron.dedup_keys (source, key, event_id, origin, expires_at)
         VALUES ('default', 'pending-key', '{other}', 'edge-gone', now() + interval '1 hour')"
    ));
    let (status, answer) = post_keyed(&app, "pending-key", "{}".into()).await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("accepted")), "{answer}");
    // A confirmed claim is a duplicate at once.
    db.value(&format!(
        "INSERT INTO orchestron.dedup_keys (source, key, event_id, origin, expires_at, confirmed)
         VALUES ('default', 'done-key', '{other}', 'edge-gone', now() + interval '1 hour', true)"
    ));
    let (status, answer) = post_keyed(&app, "done-key", "{}".into()).await;
    assert_eq!((status, answer["event_id"].as_str()), (200, Some(other.to_string().as_str())));
    app.stop().await;
}

/// Keyed events accepted while PostgreSQL is cut off are held from the relay: two instances
/// that each accepted the same key publish it once when PostgreSQL returns (the other is
/// settled as a duplicate, unpublished and counted), and a key only one of them saw is
/// published then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_accepted_while_postgres_is_cut_are_held_then_published_once_across_the_fleet() {
    let db = FreshDb::create();
    let proxy = Proxy::start(POSTGRES, true).await;
    let exchange = unique("fleet_hold");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let route = rabbit_route(&exchange);
    let url = db.url(&proxy.addr.to_string());
    // A lease far longer than the cut: no instance takes the other over.
    let deadline = "  dedup_timeout: 300ms\n";
    let a_config = format!("{route}{}{deadline}", sync_config(&url, Some("edge-a"), "60s"));
    let b_config = format!("{route}{}{deadline}", sync_config(&url, Some("edge-b"), "60s"));
    let (a, b) = tokio::join!(TestApp::spawn(&a_config), TestApp::spawn(&b_config));
    wait_fleet(&b, |v| live(v).len() == 2).await;

    proxy.set_up(false);
    let (status, first) = post_keyed(&a, "held-both", r#"{"n":1}"#.into()).await;
    assert_eq!(status, 202, "{first}");
    let (status, second) = post_keyed(&b, "held-both", r#"{"n":2}"#.into()).await;
    assert_eq!(status, 202, "{second}");
    let (status, only) = post_keyed(&a, "held-one", r#"{"n":3}"#.into()).await;
    assert_eq!(status, 202, "{only}");
    assert!(
        queue.collect(1, Duration::from_secs(3)).await.is_empty(),
        "nothing keyed is published while PostgreSQL cannot rule on the keys"
    );
    assert!(metrics(&a).await.contains("orchestron_fleet_dedup_held_events 2"));
    assert!(metrics(&b).await.contains("orchestron_fleet_dedup_held_events 1"));

    proxy.set_up(true);
    let received = queue.collect(3, Duration::from_secs(20)).await;
    let mut bodies: Vec<&[u8]> = received.iter().map(|m| m.body.as_slice()).collect();
    bodies.sort();
    let once = bodies == [br#"{"n":1}"#.as_slice(), br#"{"n":3}"#]
        || bodies == [br#"{"n":2}"#.as_slice(), br#"{"n":3}"#];
    assert!(once, "each key published once: {:?}", String::from_utf8_lossy(&bodies.concat()));
    // The loser was settled as a duplicate, and says so in the fleet view.
    let holds = |v: &serde_json::Value, what: &str| v["sync"]["key_holds"][what].as_u64().unwrap();
    let started = Instant::now();
    let (va, vb) = loop {
        let (va, vb) = (wait_fleet(&a, |_| true).await, wait_fleet(&b, |_| true).await);
        if holds(&va, "waiting") + holds(&vb, "waiting") == 0 {
            break (va, vb);
        }
        assert!(started.elapsed() < Duration::from_secs(10), "holds stay: {va} {vb}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(holds(&va, "duplicate") + holds(&vb, "duplicate"), 1, "{va} {vb}");
    assert_eq!(holds(&va, "claimed") + holds(&vb, "claimed"), 2, "{va} {vb}");
    assert!(queue.collect(1, Duration::from_secs(2)).await.is_empty(), "and nothing more");
    a.stop().await;
    b.stop().await;
}

/// A held key that PostgreSQL does not rule on within `sync.dedup_hold_max` is published on
/// local dedup alone, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_key_is_published_after_dedup_hold_max_without_postgres() {
    let db = FreshDb::create();
    let proxy = Proxy::start(POSTGRES, true).await;
    let exchange = unique("fleet_hold_max");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let route = rabbit_route(&exchange);
    let sync = sync_config(&db.url(&proxy.addr.to_string()), Some("edge-h"), "60s");
    let config = format!("{route}{sync}  dedup_timeout: 300ms\n  dedup_hold_max: 2s\n");
    let app = TestApp::spawn(&config).await;
    wait_fleet(&app, |v| live(v).len() == 1).await;
    proxy.set_up(false);
    let started = Instant::now();
    let (status, answer) = post_keyed(&app, "never-ruled", r#"{"n":7}"#.into()).await;
    assert_eq!(status, 202, "{answer}");
    let received = queue.collect(1, Duration::from_secs(15)).await;
    assert_eq!(received.len(), 1, "published once the hold ran out");
    assert!(started.elapsed() >= Duration::from_secs(2), "not before dedup_hold_max");
    assert_eq!(received[0].message_id.as_deref(), answer["event_id"].as_str());
    let text = metrics(&app).await;
    assert!(text.contains("orchestron_fleet_dedup_fallbacks_total 1"), "{text}");
    assert!(
        text.contains(r#"orchestron_fleet_dedup_holds_ended_total{outcome="expired"} 1"#),
        "{text}"
    );
    proxy.set_up(true);
    app.stop().await;
}
