//! SIGHUP reloads the config file: new routes apply without a restart, a broken file keeps
//! the old configuration running, and both outcomes are counted.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{ADMIN_TOKEN, AMQP_URL, API_KEY, RabbitQueue, unique};

fn config(port: u16, store: &std::path::Path, exchange: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:{port}\" }}\n\
         admin: {{ listen: \"127.0.0.1:{}\", token: {ADMIN_TOKEN} }}\n\
         store: {{ path: {} }}\n\
         brokers: {{ rabbitmq: {{ url: \"{AMQP_URL}\" }} }}\n\
         sources: {{ default: {{ api_keys: [\"{API_KEY}\"] }} }}\n\
         default_route: {{ to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: k }} }} ] }}\n",
        port + 1,
        store.display()
    )
}

fn hangup(child: &Child) {
    Command::new("kill").arg("-HUP").arg(child.id().to_string()).status().unwrap();
}

async fn post(client: &reqwest::Client, base: &str, body: &str) -> u16 {
    client
        .post(format!("{base}/api/events/t"))
        .header("X-API-Key", API_KEY)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn metric(client: &reqwest::Client, base: &str, series: &str) -> f64 {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

/// The real binary on a config file in a temp directory, ingest on `port`, admin on `port + 1`.
struct Daemon {
    child: crate::helpers::Reaped,
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: std::path::PathBuf,
    port: u16,
    base: String,
    admin: String,
    client: reqwest::Client,
}

impl Daemon {
    /// Starts it routing every event to `exchange`, and waits until it accepts one.
    async fn start(exchange: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        // Two adjacent free ports: ingest and admin.
        let port = loop {
            let p = crate::helpers::free_port();
            if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let path = dir.path().join("config.yaml");
        let store = dir.path().join("o.redb");
        std::fs::write(&path, config(port, &store, exchange)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_orchestron"))
            .args(["serve", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Idle connections are dropped before the daemon's keep-alive limit (docs/security.md).
        let client =
            reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(5)).build().unwrap();
        let (base, admin) =
            (format!("http://127.0.0.1:{port}"), format!("http://127.0.0.1:{}", port + 1));
        let started = Instant::now();
        while post(&client, &base, "{\"warmup\":true}").await != 202 {
            assert!(started.elapsed() < Duration::from_secs(20), "daemon did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Daemon { child: crate::helpers::Reaped(child), dir, path, store, port, base, admin, client }
    }

    /// The config text routing every event to `exchange`.
    fn routed_to(&self, exchange: &str) -> String {
        config(self.port, &self.store, exchange)
    }

    fn child_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// `GET /admin/config`.
    async fn status(&self) -> serde_json::Value {
        let request =
            self.client.get(format!("{}/admin/config", self.admin)).bearer_auth(ADMIN_TOKEN);
        request.send().await.unwrap().json().await.unwrap()
    }

    async fn metric(&self, series: &str) -> f64 {
        metric(&self.client, &self.base, series).await
    }

    /// Reloads so far, successful or not.
    async fn reload_count(&self) -> f64 {
        self.metric("orchestron_config_reloads_total{result=\"success\"}").await
            + self.metric("orchestron_config_reloads_total{result=\"failure\"}").await
    }

    /// Waits until the sum of reload outcomes reaches `n`.
    async fn reloads_reach(&self, n: f64) {
        let started = Instant::now();
        while self.reload_count().await < n {
            assert!(started.elapsed() < Duration::from_secs(10), "reload {n} not done within 10 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The running configuration's fingerprint.
    async fn version(&self) -> String {
        self.status().await["version"].as_str().unwrap().to_owned()
    }

    /// Waits (at most 2 s) until the running configuration's fingerprint is no longer `old`;
    /// returns the new one.
    async fn changed_from(&self, old: &str) -> String {
        let started = Instant::now();
        loop {
            let now = self.version().await;
            if now != old {
                return now;
            }
            assert!(started.elapsed() < Duration::from_secs(2), "change not applied within 2 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM, and a clean exit.
    async fn stop(mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "still running before the stop");
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        let status = tokio::task::spawn_blocking(move || self.child.wait().unwrap()).await.unwrap();
        assert!(status.success());
    }
}

/// Whether `exchange` exists on the broker (a passive declare; a missing one closes the
/// channel with 404).
async fn exchange_exists(conn: &lapin::Connection, exchange: &str) -> bool {
    let channel = conn.create_channel().await.unwrap();
    let passive = lapin::options::ExchangeDeclareOptions { passive: true, ..Default::default() };
    let kind = lapin::ExchangeKind::Topic;
    let table = lapin::types::FieldTable::default();
    channel.exchange_declare(exchange.into(), kind, passive, table).await.is_ok()
}

#[tokio::test]
async fn exchanges_declared_by_a_reload_are_created_at_once_without_a_restart() {
    let (first, second) = (unique("ex"), unique("ex"));
    let mut q1 = RabbitQueue::bind(&first, "#").await;
    let d = Daemon::start(&first).await;
    assert_eq!(q1.collect(1, Duration::from_secs(10)).await.len(), 1, "the warm-up event");
    let conn = lapin::Connection::connect(AMQP_URL, Default::default()).await.unwrap();
    assert!(!exchange_exists(&conn, &second).await, "{second} exists before the reload");

    let declared = format!(
        "url: \"{AMQP_URL}\", declare: {{ exchanges: [ {{ name: {second}, type: topic }} ] }}"
    );
    let text = d.routed_to(&second).replace(&format!("url: \"{AMQP_URL}\""), &declared);
    std::fs::write(&d.path, text).unwrap();
    hangup(&d.child);
    let started = Instant::now();
    while !exchange_exists(&conn, &second).await {
        assert!(started.elapsed() < Duration::from_secs(5), "{second} not declared within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = d.status().await;
    assert_eq!(status["needs_restart"], serde_json::json!([]), "{status}");

    // The declared exchange routes: bind a queue to it, and the next event arrives.
    let mut q2 = RabbitQueue::bind(&second, "#").await;
    assert_eq!(post(&d.client, &d.base, "{\"n\":1}").await, 202);
    let got = q2.collect(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the event went to the exchange the reload declared");
    assert_eq!(got[0].body, b"{\"n\":1}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_routes_and_survives_a_broken_file() {
    let (first, second) = (unique("ex"), unique("ex"));
    let mut q1 = RabbitQueue::bind(&first, "#").await;
    let mut q2 = RabbitQueue::bind(&second, "#").await;
    let d = Daemon::start(&first).await;
    let (client, base, path) = (&d.client, &d.base, &d.path);
    assert_eq!(q1.collect(1, Duration::from_secs(10)).await.len(), 1, "the warm-up event");

    // Edit the routes, reload: new events go to the new exchange, no restart.
    std::fs::write(path, d.routed_to(&second)).unwrap();
    hangup(&d.child);
    let started = Instant::now();
    while d.metric("orchestron_config_reloads_total{result=\"success\"}").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "reload not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post(client, base, "{\"n\":2}").await, 202);
    let got = q2.collect(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"{\"n\":2}");

    // A broken file: counted, logged, and the running configuration stays.
    std::fs::write(path, "server: [this is not the config\n").unwrap();
    hangup(&d.child);
    let started = Instant::now();
    while d.metric("orchestron_config_reloads_total{result=\"failure\"}").await < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(10), "failure not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post(client, base, "{\"n\":3}").await, 202);
    assert_eq!(q2.collect(1, Duration::from_secs(10)).await.len(), 1, "old config still routes");
    let status = d.status().await;
    assert!(status["last_error"].as_str().unwrap().contains("line 1"), "{status}");
    assert!(q1.collect(1, Duration::from_millis(300)).await.is_empty());

    // No signal at all: saving the file (write a temp file, rename it over) is enough.
    let temp = d.dir.path().join("config.yaml.tmp");
    std::fs::write(&temp, d.routed_to(&first)).unwrap();
    std::fs::rename(&temp, path).unwrap();
    let started = Instant::now();
    loop {
        assert_eq!(post(client, base, "{\"n\":4}").await, 202);
        if !q1.collect(1, Duration::from_millis(300)).await.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "file change not picked up");
    }
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_change_under_load_in_place_by_rename_and_by_symlink_without_loss() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (a, b) = (unique("ex"), unique("ex"));
    let mut qa = RabbitQueue::bind(&a, "#").await;
    let mut qb = RabbitQueue::bind(&b, "#").await;
    let d = Daemon::start(&a).await;
    let (path, dir) = (&d.path, d.dir.path());

    // Load: senders post events stamped with the time they were sent.
    let clock = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (client, base, stop) = (d.client.clone(), d.base.clone(), Arc::clone(&stop));
        senders.push(tokio::spawn(async move {
            let (mut accepted, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let at = clock.elapsed().as_millis();
                match post(&client, &base, &format!("{{\"at\":{at}}}")).await {
                    202 => accepted += 1,
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (accepted, failed)
        }));
    }
    let mut switches: Vec<(u128, String)> = vec![(0, a.clone())];
    let mut running = d.version().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1. Edited in place.
    std::fs::write(path, d.routed_to(&b)).unwrap();
    running = d.changed_from(&running).await;
    switches.push((clock.elapsed().as_millis(), b.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 2. Saved by rename, as editors do.
    let tmp = dir.join(".config.yaml.swp");
    std::fs::write(&tmp, d.routed_to(&a)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
    running = d.changed_from(&running).await;
    switches.push((clock.elapsed().as_millis(), a.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 3. A symlink swapped to a new release directory, as config management does.
    let release = dir.join("release-2");
    std::fs::create_dir(&release).unwrap();
    std::fs::write(release.join("config.yaml"), d.routed_to(&b)).unwrap();
    let link = dir.join(".config.yaml.link");
    std::os::unix::fs::symlink(release.join("config.yaml"), &link).unwrap();
    std::fs::rename(&link, path).unwrap();
    d.changed_from(&running).await;
    switches.push((clock.elapsed().as_millis(), b.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await; // late watcher events settle

    // 4. 200 reloads by SIGHUP, alternating a valid file and a broken one.
    let valid = d.routed_to(&b);
    let failures_before = d.metric("orchestron_config_reloads_total{result=\"failure\"}").await;
    let mut reloads = d.reload_count().await;
    for i in 0..200 {
        let text = if i % 2 == 0 { valid.as_str() } else { "routes: [oops\n" };
        std::fs::write(release.join("config.yaml"), text).unwrap();
        hangup(&d.child);
        reloads += 1.0;
        d.reloads_reach(reloads).await;
    }
    std::fs::write(release.join("config.yaml"), &valid).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut accepted, mut failed) = (1u64, 0u64); // the warm-up event
    for s in senders {
        let (ok, bad) = s.await.unwrap();
        accepted += ok;
        failed += bad;
    }
    let failures_after = d.metric("orchestron_config_reloads_total{result=\"failure\"}").await;
    // The file watcher may also have seen some of the writes; every broken one failed.
    assert_eq!(failures_after - failures_before, 100.0, "every broken file counted");
    let failures = d.metric("orchestron_config_reload_failures_total").await;
    assert_eq!(failures, failures_after, "orchestron_config_reload_failures_total agrees");
    assert_eq!(failed, 0, "no request failed during {reloads} reloads");

    // Every accepted event arrived; one sent after a reload was seen applied went to the new
    // route (routing happens at relay time, from the table current then).
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (got.len() as u64) < accepted && Instant::now() < deadline {
        for (queue, name) in [(&mut qa, &a), (&mut qb, &b)] {
            for m in queue.collect(usize::MAX, Duration::from_millis(200)).await {
                got.push((name.clone(), m));
            }
        }
    }
    let ids: std::collections::BTreeSet<_> =
        got.iter().map(|(_, m)| m.headers["ce_id"].clone()).collect();
    assert_eq!(
        ids.len() as u64,
        accepted,
        "every accepted event delivered ({} messages)",
        got.len()
    );
    eprintln!(
        "reload under load: accepted={accepted} failed={failed} delivered={} reloads={reloads}",
        got.len()
    );
    let mut checked = 0;
    for (exchange, m) in &got {
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        let Some(at) = body["at"].as_u64() else { continue };
        let at = u128::from(at);
        // Sent after a reload was seen applied, an event goes to that route, or to the route
        // of a later reload if it is routed after that one (routing happens at relay time,
        // within a second here). The margin: the stamp is taken just before the request, the
        // switch time just after the reload was observed.
        let latest = switches.iter().rev().find(|(t, _)| *t + 5 <= at).unwrap_or(&switches[0]);
        if latest.0 > 0 {
            let allowed: Vec<&String> = switches
                .iter()
                .filter(|(t, _)| *t >= latest.0 && *t <= at + 1000)
                .map(|(_, e)| e)
                .collect();
            let names: Vec<(u128, bool)> = switches.iter().map(|(t, e)| (*t, e == &a)).collect();
            assert!(
                allowed.contains(&exchange),
                "event sent at {at} ms went to an old route; switches (ms, to a?) {names:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} events were checked against their route");
    d.stop().await;
}

#[tokio::test]
async fn schemas_registered_through_the_admin_api_apply_at_once_and_stay_files() {
    let schema_dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "schemas:\n  dir: {}\n\
         brokers:\n  rabbitmq: {{ url: \"amqp://guest:guest@127.0.0.1:1/%2f\" }}\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: x, routing_key: k }} }} ]\n",
        schema_dir.path().display()
    );
    let app = crate::helpers::TestApp::spawn_from_file(&extra).await;
    let list = || async {
        let r = app.admin(reqwest::Method::GET, "/admin/schemas").send().await.unwrap();
        r.json::<serde_json::Value>().await.unwrap()
    };
    assert_eq!(list().await["schemas"], serde_json::json!([]));
    let put = |ty: &'static str, body: &'static str| {
        app.admin(reqwest::Method::PUT, &format!("/admin/schemas/{ty}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(put("order.created", r#"{"type": 12}"#).await.unwrap().status(), 422);
    assert_eq!(put("order.created", "not json").await.unwrap().status(), 400);
    assert_eq!(put("..%2Fescape", "{}").await.unwrap().status(), 400);
    assert!(std::fs::read_dir(schema_dir.path()).unwrap().next().is_none(), "nothing written");

    let schema = r#"{"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "required": ["order_id"]}"#;
    let created = put("order.created", schema).await.unwrap();
    assert_eq!(created.status(), 201);
    let answer: serde_json::Value = created.json().await.unwrap();
    assert_eq!(answer["applied"], true, "{answer}");
    let file = schema_dir.path().join("order.created.json");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), schema, "the file is the source of truth");
    assert_eq!(app.post("order.created", r#"{"no":"id"}"#).await.status(), 422, "applied at once");
    assert_eq!(app.post("order.created", r#"{"order_id":1}"#).await.status(), 202);

    let replaced = put("order.created", r#"{"type": "object"}"#).await.unwrap();
    assert_eq!(replaced.status(), 200);
    assert_eq!(app.post("order.created", r#"{"no":"id"}"#).await.status(), 202);
    assert_eq!(list().await["schemas"], serde_json::json!(["order.created"]));
    let unauthorized = app.client.get(app.admin_url("/admin/schemas")).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn a_schema_directory_replaced_by_rename_is_watched_again() {
    let root = tempfile::tempdir().unwrap();
    let schemas = root.path().join("schemas");
    std::fs::create_dir(&schemas).unwrap();
    let extra = format!(
        "schemas:\n  dir: {}\n\
         brokers:\n  rabbitmq: {{ url: \"amqp://guest:guest@127.0.0.1:1/%2f\" }}\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: x, routing_key: k }} }} ]\n",
        schemas.display()
    );
    let app = crate::helpers::TestApp::spawn_from_file(&extra).await;
    let status_within = |body: &'static str, want: u16| {
        let app = &app;
        async move {
            let started = Instant::now();
            loop {
                let got = app.post("user.created", body).await.status().as_u16();
                if got == want {
                    return;
                }
                assert!(started.elapsed() < Duration::from_secs(3), "still {got}, want {want}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    status_within("{}", 202).await;
    // A release tool builds the new directory beside the old one and renames it into place.
    let next = root.path().join("schemas.next");
    std::fs::create_dir(&next).unwrap();
    std::fs::write(next.join("user.created.json"), r#"{"type":"object","required":["id"]}"#)
        .unwrap();
    std::fs::rename(&schemas, root.path().join("schemas.old")).unwrap();
    std::fs::rename(&next, &schemas).unwrap();
    status_within("{}", 422).await;
    // An edit inside the new directory is seen too.
    std::fs::write(schemas.join("user.created.json"), r#"{"type":"object"}"#).unwrap();
    status_within("{}", 202).await;
    app.stop().await;
}

/// The five ways a reloaded file is refused in the storm, and a word of the error each gives.
const BROKEN: [(&str, &str); 5] = [
    ("YAML syntax", "line"),
    ("an unknown key", "unknown field"),
    ("a route to a broker brokers: does not configure", "does not configure"),
    ("a client key that does not match its certificate", "key"),
    ("a schema that is not valid JSON Schema", "schema"),
];

impl Daemon {
    /// The text of the storm's change `i`: even ones valid, routing to `exchanges[i / 2 % 2]`,
    /// odd ones broken in way `i / 2 % 5` of [`BROKEN`].
    fn storm_text(&self, i: usize, exchanges: &[String; 2]) -> String {
        let valid = self.routed_to(&exchanges[i / 2 % 2]);
        if i.is_multiple_of(2) {
            return valid;
        }
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        match i / 2 % 5 {
            0 => "routes: [oops\n".to_owned(),
            1 => format!("{valid}no_such_setting: 1\n"),
            2 => valid.replace(
                &format!("rabbitmq: {{ exchange: {}, routing_key: k }}", exchanges[i / 2 % 2]),
                "kafka: { topic: t }",
            ),
            3 => valid.replace(
                &format!("url: \"{AMQP_URL}\""),
                &format!(
                    "url: \"amqps://guest:guest@localhost:5671/%2f\", \
                     tls: {{ ca: {}, cert: {}, key: {} }}",
                    file("ca.pem"),
                    file("one.pem"),
                    file("two.key")
                ),
            ),
            _ => format!("{valid}schemas: {{ dir: {} }}\n", file("bad-schemas")),
        }
    }
}

/// Messages from the two exchanges the storm switches between, kept as they arrive.
struct Inbox {
    queues: [RabbitQueue; 2],
    got: Vec<(usize, crate::helpers::Received)>,
}

impl Inbox {
    /// Waits (at most 10 s) for the event whose body is `{"marker":i}`; returns the index
    /// of the exchange it arrived on.
    async fn marker(&mut self, i: usize) -> Option<usize> {
        let body = format!("{{\"marker\":{i}}}").into_bytes();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Some((on, _)) = self.got.iter().find(|(_, m)| m.body == body) {
                return Some(*on);
            }
            self.drain(Duration::from_millis(20)).await;
        }
        None
    }

    async fn drain(&mut self, within: Duration) {
        for (on, queue) in self.queues.iter_mut().enumerate() {
            for m in queue.collect(usize::MAX, within).await {
                self.got.push((on, m));
            }
        }
    }
}

/// RELIABILITY.md's reload storm (docs/reliability.md): `changes` reloads under load, a third each by rewriting
/// the file in place, by renaming a new file over it and by SIGHUP (the file a symlink into
/// an unwatched directory, so that only the signal reloads it), every other one broken in
/// one of five ways. No request fails, every broken one is counted as a failure and names
/// what is wrong, every valid one applies (its route is seen on the broker), and every
/// accepted event is delivered.
async fn reload_storm(changes: usize) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let exchanges = [unique("ex"), unique("ex")];
    let mut inbox = Inbox {
        queues: [
            RabbitQueue::bind(&exchanges[0], "#").await,
            RabbitQueue::bind(&exchanges[1], "#").await,
        ],
        got: Vec::new(),
    };
    let mut d = Daemon::start(&exchanges[1]).await;
    let dir = d.dir.path().to_owned();
    let ca = crate::certs::TestCa::new();
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let (one, two) = (ca.leaf(alg, "one", true), ca.leaf(alg, "two", true));
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("one.pem"), &one.cert).unwrap();
    std::fs::write(dir.join("two.key"), &two.key).unwrap();
    std::fs::create_dir(dir.join("bad-schemas")).unwrap();
    std::fs::write(dir.join("bad-schemas/t.json"), r#"{"type": 12}"#).unwrap();

    // Load: senders post all through the storm and keep the ids of the accepted events.
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for s in 0..4 {
        let (client, base, stop) = (d.client.clone(), d.base.clone(), Arc::clone(&stop));
        senders.push(tokio::spawn(async move {
            let (mut accepted, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let answer = client
                    .post(format!("{base}/api/events/t"))
                    .header("X-API-Key", API_KEY)
                    .header("Content-Type", "application/json")
                    .body(format!("{{\"sender\":{s},\"n\":{n}}}"))
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == 202 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        accepted.push(body["event_id"].as_str().unwrap().to_owned());
                    }
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (accepted, failed)
        }));
    }

    let path = d.path.clone();
    let release = dir.join("release");
    std::fs::create_dir(&release).unwrap();
    let success = "orchestron_config_reloads_total{result=\"success\"}";
    let failure = "orchestron_config_reloads_total{result=\"failure\"}";
    let (mut successes, mut failures) = (d.metric(success).await, d.metric(failure).await);
    let mut reloads = successes + failures;
    let mut markers = 0;
    let third = changes / 3;
    for i in 0..changes {
        let text = d.storm_text(i, &exchanges);
        if i < third {
            std::fs::write(&path, text).unwrap();
        } else if i < 2 * third {
            let temp = dir.join(".config.yaml.new");
            std::fs::write(&temp, text).unwrap();
            std::fs::rename(&temp, &path).unwrap();
        } else {
            if i == 2 * third {
                // From here on the config file is a symlink into `release`, which is not
                // watched: swapping it in is one more (valid) reload.
                std::fs::write(release.join("config.yaml"), d.routed_to(&exchanges[1])).unwrap();
                let link = dir.join(".config.yaml.link");
                std::os::unix::fs::symlink(release.join("config.yaml"), &link).unwrap();
                std::fs::rename(&link, &path).unwrap();
                reloads += 1.0;
                successes += 1.0;
                d.reloads_reach(reloads).await;
            }
            std::fs::write(release.join("config.yaml"), text).unwrap();
            hangup(&d.child);
        }
        reloads += 1.0;
        d.reloads_reach(reloads).await;
        let status = d.status().await;
        if i.is_multiple_of(2) {
            successes += 1.0;
            assert_eq!(status["last_error"], serde_json::Value::Null, "change {i}: {status}");
            // Applied: an event sent now goes to the new route.
            let marker = format!("{{\"marker\":{i}}}");
            assert_eq!(post(&d.client, &d.base, &marker).await, 202);
            let on = inbox.marker(i).await;
            assert_eq!(on, Some(i / 2 % 2), "change {i}: the marker went to the wrong exchange");
            markers += 1;
        } else {
            failures += 1.0;
            let (what, word) = BROKEN[i / 2 % 5];
            let error = status["last_error"].as_str().unwrap_or_default();
            assert!(error.contains(word), "change {i} ({what}): last_error {error:?}");
        }
        assert!(d.child_running(), "the daemon exited at change {i}");
    }
    assert_eq!(d.metric(failure).await, failures, "every broken file counted, once");
    assert_eq!(d.metric(success).await, successes, "every valid file counted, once");

    stop.store(true, Ordering::Relaxed);
    let (mut accepted, mut failed) = (Vec::new(), Vec::new());
    for s in senders {
        let (ok, bad) = s.await.unwrap();
        accepted.extend(ok);
        failed.extend(bad);
    }
    assert!(
        failed.is_empty(),
        "{} requests failed during the storm: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // Lost 0: every accepted event arrives (on one exchange or the other).
    let wanted: std::collections::BTreeSet<String> = accepted.iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = |got: &[(usize, crate::helpers::Received)]| {
        got.iter()
            .filter_map(|(_, m)| m.headers.get("ce_id").cloned())
            .collect::<std::collections::BTreeSet<_>>()
    };
    while !wanted.is_subset(&delivered(&inbox.got)) && Instant::now() < deadline {
        inbox.drain(Duration::from_millis(200)).await;
    }
    let got = delivered(&inbox.got);
    let lost = wanted.difference(&got).count();
    eprintln!(
        "reload storm: changes={changes} successes={successes} failures={failures} \
         accepted={} failed={} delivered={} lost={lost} markers={markers}",
        accepted.len(),
        failed.len(),
        inbox.got.len()
    );
    assert_eq!(lost, 0, "accepted events not delivered");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_storm_short() {
    reload_storm(60).await;
}

/// `cargo test --release --test integration reload_storm_long -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: 1,000 reloads (docs/reliability.md)"]
async fn reload_storm_long() {
    reload_storm(1000).await;
}
