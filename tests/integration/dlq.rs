//! Dead-letter queue, admin API and CLI against the real RabbitMQ and a Kafka mock cluster.

use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use reqwest::Method;
use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, AMQP_URL, RabbitQueue, TestApp, unique, wait_dlq};

/// Runs the real binary with `args`, off the test's runtime thread (the daemon under test
/// runs on it and must keep answering).
async fn run(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_orchestron")).args(args).output().unwrap()
    })
    .await
    .unwrap()
}

/// Runs the real binary's CLI against `app`'s admin API.
async fn cli(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--admin-url".into(), app.admin_url(""), "--token".into(), ADMIN_TOKEN.into()]);
    let out = run(args).await;
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.success(), text(out.stdout), text(out.stderr))
}

fn rabbit_with_retries(exchange: &str, extra: &str) -> String {
    format!(
        "brokers:\n  rabbitmq:\n    url: \"{AMQP_URL}\"\n    declare:\n      exchanges: [ {{ name: {exchange}, type: topic }} ]\n\
         relay:\n  max_attempts: 3\n  backoff: {{ initial: 50ms, max: 100ms }}\n\
         default_route:\n  to:\n    - rabbitmq: {{ exchange: {exchange}, routing_key: \"{{type}}\" }}\n{extra}"
    )
}

#[tokio::test]
async fn unroutable_events_are_dead_lettered_then_replayed_once_by_the_cli() {
    let exchange = unique("ex");
    let dl_exchange = unique("dlx");
    let mut dl_queue = RabbitQueue::bind(&dl_exchange, "#").await;
    let copy = format!(
        "dlq:\n  publish_to:\n    rabbitmq: {{ exchange: {dl_exchange}, routing_key: \"dead.{{type}}\" }}\n"
    );
    let app = TestApp::spawn(&rabbit_with_retries(&exchange, &copy)).await;
    let id = app.accept("order.created", r#"{"order_id": 7}"#.into()).await;

    let page = wait_dlq(&app, 1).await;
    let entry = &page["entries"][0];
    assert_eq!(entry["event_id"], id);
    assert_eq!(entry["reason"], "unroutable");
    assert_eq!(entry["destinations"][0]["attempts"], 3);
    assert!(entry["destinations"][0]["last_error"].as_str().unwrap().contains("NO_ROUTE"));

    // The best-effort copy reached the dead-letter exchange, reason in its headers.
    let copies = dl_queue.collect(1, Duration::from_secs(10)).await;
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].headers["x-orchestron-dlq-reason"], "unroutable");
    assert_eq!(copies[0].headers["ce_id"], id);
    assert_eq!(copies[0].routing_key, "dead.order.created");

    // The CLI sees it, as a table and as JSON.
    let (ok, out, err) = cli(&app, &["dlq", "list"]).await;
    assert!(ok, "{err}");
    assert!(out.contains(&id) && out.contains("unroutable") && out.contains("EVENT ID"), "{out}");
    let (ok, out, _) = cli(&app, &["dlq", "show", &id, "--json"]).await;
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["body"]["order_id"], 7);

    // An operator binds a queue and replays everything: delivered once, same ce_id.
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let (ok, out, err) = cli(&app, &["dlq", "replay", "--all"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "replayed 1 event(s)");
    let got = queue.collect(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "exactly once");
    assert_eq!(got[0].headers["ce_id"], id);
    let page: Value =
        app.admin(Method::GET, "/admin/dlq").send().await.unwrap().json().await.unwrap();
    assert!(page["entries"].as_array().unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn fan_out_dead_letters_only_the_failed_destination_and_replay_spares_the_healthy_one() {
    let exchange = unique("ex");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("t");
    mock.create_topic(&topic, 1, 1).unwrap();
    let config = format!(
        "brokers:\n  rabbitmq: {{ url: \"{AMQP_URL}\" }}\n\
         \x20 kafka: {{ bootstrap_servers: \"{}\", properties: {{ message.max.bytes: \"2000\" }} }}\n\
         relay:\n  backoff: {{ initial: 50ms, max: 100ms }}\n\
         default_route:\n  to:\n    - rabbitmq: {{ exchange: {exchange}, routing_key: k }}\n    - kafka: {{ topic: {topic} }}\n",
        mock.bootstrap_servers()
    );
    let app = TestApp::spawn(&config).await;
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(5000));
    let id = app.accept("big.one", big).await;
    let page = wait_dlq(&app, 1).await;
    let entry = &page["entries"][0];
    assert_eq!(entry["reason"], "rejected");
    let failed = entry["destinations"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "only Kafka failed: {entry}");
    assert_eq!(failed[0]["broker"], "kafka");
    assert_eq!(queue.collect(2, Duration::from_secs(3)).await.len(), 1, "RabbitMQ got it once");

    // Replay: back for Kafka only (it fails again), never again to RabbitMQ.
    let replayed: Value = app
        .admin(Method::POST, &format!("/admin/dlq/{id}/replay"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], 1);
    wait_dlq(&app, 1).await;
    assert!(queue.collect(1, Duration::from_secs(2)).await.is_empty(), "no second RabbitMQ copy");
    let outbox: Value =
        app.admin(Method::GET, "/admin/outbox").send().await.unwrap().json().await.unwrap();
    assert_eq!((outbox["pending"].as_u64(), outbox["dlq_entries"].as_u64()), (Some(0), Some(1)));
    app.stop().await;
}

#[tokio::test]
async fn admin_api_needs_the_token_and_listeners_do_not_share_routes() {
    let app = TestApp::spawn(&rabbit_with_retries(&unique("ex"), "")).await;
    let c = &app.client;
    let no_token = c.get(app.admin_url("/admin/dlq")).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    assert_eq!(no_token.headers()["www-authenticate"], "Bearer");
    let wrong = c.get(app.admin_url("/admin/outbox")).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let prefix =
        c.get(app.admin_url("/admin/outbox")).bearer_auth(&ADMIN_TOKEN[..5]).send().await.unwrap();
    assert_eq!(prefix.status(), 401);
    // No ingest on the admin listener, no admin on the ingest listener.
    let ingest_on_admin = app.admin(Method::POST, "/api/events/a").body("{}").send().await.unwrap();
    assert_eq!(ingest_on_admin.status(), 404);
    let admin_on_ingest =
        c.get(app.url("/admin/dlq")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(admin_on_ingest.status(), 404);
    // Bad input is a 400, unknown ids a 404, an unfiltered purge needs all=true.
    let bad = app.admin(Method::GET, "/admin/dlq?reason=bogus").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let missing = app
        .admin(Method::GET, &format!("/admin/dlq/{}", uuid::Uuid::now_v7()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let purge_all = app.admin(Method::DELETE, "/admin/dlq").send().await.unwrap();
    assert_eq!(purge_all.status(), 400);
    let purge_all = app.admin(Method::DELETE, "/admin/dlq?all=true").send().await.unwrap();
    assert_eq!(purge_all.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn cli_reports_errors_clearly_and_reads_a_stopped_store_offline() {
    let exchange = unique("ex");
    let app = TestApp::spawn(&rabbit_with_retries(&exchange, "")).await;
    for n in 0..3 {
        app.accept("order.created", format!("{{\"order_id\": {n}}}")).await;
    }
    wait_dlq(&app, 3).await;

    let args = ["dlq", "list", "--admin-url", &app.admin_url(""), "--token", "wrong"];
    let out = run(args.iter().map(|a| a.to_string()).collect()).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the token"));
    let (ok, _, err) = cli(&app, &["dlq", "replay"]).await;
    assert!(!ok && err.contains("--all"), "{err}");
    let (ok, out, _) = cli(&app, &["outbox", "stats"]).await;
    assert!(ok && out.contains("dead-lettered: 3"), "{out}");
    let (ok, out, _) = cli(&app, &["dlq", "list", "--limit", "2", "--json"]).await;
    assert!(ok);
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_u64().unwrap().to_string();
    let (_, out, _) =
        cli(&app, &["dlq", "list", "--limit", "2", "--cursor", &cursor, "--json"]).await;
    let rest: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rest["entries"].as_array().unwrap().len(), 1);
    let (ok, out, _) = cli(&app, &["dlq", "purge", "--type", "nothing.like.this"]).await;
    assert!(ok && out.contains("deleted 0"), "{out}");

    let admin_url = app.admin_url("");
    let dir = app.stop().await;
    // The daemon is gone: a clear error online, the same listing offline.
    let out = Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .args(["dlq", "list", "--admin-url", &admin_url, "--token", ADMIN_TOKEN])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        crate::helpers::config_text(dir.path(), &rabbit_with_retries(&exchange, "")),
    )
    .unwrap();
    let offline = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_orchestron"))
            .args(args)
            .args(["--offline", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = offline(&["dlq", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), 3);
    let out = offline(&["outbox", "stats"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("dead-lettered: 3"));
    let out = offline(&["dlq", "replay", "--all"]);
    assert!(!out.status.success(), "writes need the daemon");
}

#[tokio::test]
async fn retention_keeps_the_newest_entries() {
    let exchange = unique("ex");
    let app = TestApp::spawn(&rabbit_with_retries(&exchange, "")).await;
    for n in 0..4 {
        app.accept("order.created", format!("{{\"order_id\": {n}}}")).await;
    }
    wait_dlq(&app, 4).await;
    let newest = wait_dlq(&app, 4).await["entries"][0]["event_id"].clone();
    let dir = app.stop().await;
    let app =
        TestApp::spawn_in(dir, &rabbit_with_retries(&exchange, "dlq: { max_entries: 2 }\n")).await;
    let started = Instant::now();
    loop {
        let page: Value =
            app.admin(Method::GET, "/admin/dlq").send().await.unwrap().json().await.unwrap();
        let entries = page["entries"].as_array().unwrap();
        if entries.len() == 2 {
            assert_eq!(entries[0]["event_id"], newest, "the oldest went first");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "retention did not run: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

/// `GET /admin/events/{id}` and `orchestron event show`: an event waiting for a broker that
/// is down is pending there (with its attempts), a dead-lettered one is found in the DLQ with
/// its reason, a delivered one is in neither (404, and the CLI says why), over the API and
/// `--offline` alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_found_pending_dead_lettered_or_gone_by_its_id() {
    let good = unique("lookup_good");
    let bad = unique("lookup_bad");
    let mut queue = RabbitQueue::bind(&good, "#").await;
    // wait.*: a Kafka nobody listens on (pending); bad.*: an exchange with no queue bound
    // (unroutable: dead-lettered at the first attempt); the rest: delivered.
    let config = format!(
        "brokers:\n  rabbitmq: {{ url: \"{AMQP_URL}\", declare: {{ exchanges: [ {{ name: {bad} }} ] }} }}\n  \
           kafka: {{ bootstrap_servers: \"127.0.0.1:1\" }}\n\
         relay: {{ backoff: {{ initial: 50ms, max: 200ms }}, max_attempts: 1 }}\n\
         routes:\n  \
           - match: {{ type: \"wait.*\" }}\n    to: [ {{ kafka: {{ topic: nowhere }} }} ]\n  \
           - match: {{ type: \"bad.*\" }}\n    to: [ {{ rabbitmq: {{ exchange: {bad}, routing_key: x }} }} ]\n\
         default_route: {{ to: [ {{ rabbitmq: {{ exchange: {good}, routing_key: x }} }} ] }}\n"
    );
    let app = TestApp::spawn(&config).await;
    let waiting = app.accept("wait.order", r#"{"w": 1}"#.into()).await;
    let dead = app.accept("bad.order", r#"{"dead": true}"#.into()).await;
    let delivered = app.accept("good.order", r#"{"ok": true}"#.into()).await;
    wait_dlq(&app, 1).await;
    assert_eq!(queue.collect(1, Duration::from_secs(10)).await.len(), 1);

    let lookup = |id: String| {
        let app = &app;
        async move {
            let response =
                app.admin(Method::GET, &format!("/admin/events/{id}")).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let (status, view) = lookup(waiting.clone()).await;
    assert_eq!((status, view["status"].as_str()), (200, Some("pending")), "{view}");
    let dest = &view["pending"]["destinations"][0];
    assert_eq!(dest["destination"], "kafka:nowhere", "{view}");
    assert_eq!(dest["status"], "pending", "{view}");
    assert_eq!(view["pending"]["type"], "wait.order");

    let (status, view) = lookup(dead.clone()).await;
    assert_eq!((status, view["status"].as_str()), (200, Some("dead_lettered")), "{view}");
    assert_eq!(view["dead_lettered"]["reason"], "unroutable", "{view}");

    let started = Instant::now();
    loop {
        let (status, view) = lookup(delivered.clone()).await;
        if status == 404 {
            assert!(view["message"].as_str().unwrap().contains("delivered"), "{view}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still there: {view}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (ok, out, err) = cli(&app, &["event", "show", &waiting]).await;
    assert!(ok, "{err}");
    assert!(out.contains("pending") && out.contains("kafka:nowhere"), "{out}");
    let (ok, out, err) = cli(&app, &["event", "show", &dead, "--json"]).await;
    assert!(ok, "{err}");
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["dead_lettered"]["event_id"], dead.as_str());
    let (ok, _, err) = cli(&app, &["event", "show", &delivered]).await;
    assert!(!ok && err.contains("delivered to every destination"), "{err}");

    // The same from the store file of the stopped daemon.
    let dir = app.stop().await;
    let config_path = dir.path().join("offline.yaml");
    std::fs::write(
        &config_path,
        format!(
            "server: {{ listen: \"127.0.0.1:1\" }}\nstore: {{ path: {} }}\nsources: {{ default: {{ api_keys: [k] }} }}\n",
            dir.path().join("orchestron.redb").display()
        ),
    )
    .unwrap();
    let args = ["event", "show", &waiting, "--offline", "--config", config_path.to_str().unwrap()];
    let out = run(args.iter().map(|a| a.to_string()).collect()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("pending") && stdout.contains("kafka:nowhere"), "{stdout}");
}
