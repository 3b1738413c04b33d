//! Brokers across networks that are not trusted: RabbitMQ and Kafka over TLS, behind Debian's
//! `stunnel4` terminating TLS in front of the real brokers (RabbitMQ on 127.0.0.1:5672, a
//! tansu started by the test); certificates made in the test. A wrong CA or a certificate for
//! another name is refused and reported as `tls` on `/ready`, nothing is dead-lettered and
//! no attempt is spent; a reload with the right files delivers the backlog. Also: client
//! certificates (mTLS at the TLS endpoint), failover across `url` + `urls`, and a change of
//! endpoint and trust anchors by reload under load (lost 0).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs::{Leaf, TestCa};
use crate::helpers::stunnel::{Stunnel, TlsTansu};
use crate::helpers::{AMQP_URL, RabbitQueue, TestApp, free_port, unique};

/// [`Stunnel::start`] with a [`Leaf`].
fn tunnel(upstream: &str, server: &Leaf, client_ca: Option<&str>) -> Stunnel {
    Stunnel::start(upstream, &server.cert, &server.key, client_ca)
}

/// Writes `text` to `path` by a rename, as certificate tooling does.
fn install(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The daemon's `/ready` body.
async fn ready(app: &TestApp) -> serde_json::Value {
    reqwest::get(app.url("/ready")).await.unwrap().json().await.unwrap()
}

/// Waits until `broker`'s state on `/ready` satisfies `check`.
async fn wait_state(app: &TestApp, broker: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let started = Instant::now();
    loop {
        let body = ready(app).await;
        if check(&body["brokers"][broker]) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{broker} state: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dlq_len(app: &TestApp) -> usize {
    let page: serde_json::Value =
        app.admin(reqwest::Method::GET, "/admin/dlq").send().await.unwrap().json().await.unwrap();
    page["entries"].as_array().unwrap().len()
}

/// Posts `n` events numbered from `from`; returns their bodies.
async fn post_events(app: &TestApp, from: usize, n: usize) -> BTreeSet<String> {
    let mut bodies = BTreeSet::new();
    for i in from..from + n {
        let body = format!("{{\"n\":{i},\"tls\":true}}");
        app.accept("tls.test", body.clone()).await;
        bodies.insert(body);
    }
    bodies
}

/// Config for RabbitMQ at `url` (with `tls` lines), every event to `exchange`.
fn rabbit_config(url: &str, tls: &str, exchange: &str) -> String {
    format!(
        "brokers:\n  rabbitmq:\n    url: \"{url}\"\n{tls}\
         relay:\n  backoff: {{ initial: 100ms, max: 1s }}\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: k }} }} ]\n"
    )
}

fn tls_lines(ca: &Path, extra: &str) -> String {
    format!("    tls:\n      ca: {}\n{extra}", ca.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_tls_refuses_a_wrong_ca_then_delivers_after_a_reload() {
    let (ca, other_ca) = (TestCa::new(), TestCa::new());
    let tunnel =
        tunnel("127.0.0.1:5672", &ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "rabbit", false), None);
    let exchange = unique("tls");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("broker-ca.pem");
    install(&ca_file, &other_ca.pem());
    let url = format!("amqps://guest:guest@localhost:{}/%2f", tunnel.port);
    let app =
        TestApp::spawn_from_file(&rabbit_config(&url, &tls_lines(&ca_file, ""), &exchange)).await;

    // The broker's certificate is not signed by the CA the daemon trusts: tls, and waiting.
    wait_state(&app, "rabbitmq", |b| b["reason"] == "tls").await;
    let sent = post_events(&app, 0, 20).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body = ready(&app).await;
    assert_eq!(body["status"], "not_ready", "{body}");
    assert!(
        body["brokers"]["rabbitmq"]["error"].as_str().unwrap().contains("certificate"),
        "{body}"
    );
    assert_eq!(dlq_len(&app).await, 0, "a TLS failure dead-letters nothing");
    let metrics = reqwest::get(app.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(
            "orchestron_broker_connect_failures_total{broker=\"rabbitmq\",reason=\"tls\"}"
        ),
        "counted"
    );
    assert!(!metrics.contains("orchestron_publish_total{"), "no attempt was spent: {metrics}");

    // The right CA, by a file change: the daemon reconnects and delivers the backlog.
    install(&ca_file, &ca.pem());
    let got = queue.collect(sent.len(), Duration::from_secs(30)).await;
    let got: BTreeSet<String> =
        got.iter().map(|m| String::from_utf8(m.body.clone()).unwrap()).collect();
    assert_eq!(got, sent, "byte-identical, each once");
    wait_state(&app, "rabbitmq", |b| {
        b["connected"] == true && b["node"] == format!("localhost:{}", tunnel.port)
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_verifies_the_broker_name_and_takes_a_server_name_override() {
    let ca = TestCa::new();
    let leaf = ca.leaf_for(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        "rabbit",
        vec!["rabbit.internal".into()],
        false,
    );
    let tunnel = tunnel("127.0.0.1:5672", &leaf, None);
    let exchange = unique("tls-name");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("ca.pem");
    install(&ca_file, &ca.pem());
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", tunnel.port);
    let app =
        TestApp::spawn_from_file(&rabbit_config(&url, &tls_lines(&ca_file, ""), &exchange)).await;
    // A certificate for rabbit.internal does not prove 127.0.0.1.
    wait_state(&app, "rabbitmq", |b| b["reason"] == "tls").await;
    let sent = post_events(&app, 0, 5).await;
    // server_name says which name the certificate must carry.
    let text = crate::helpers::config_text(
        app.dir.path(),
        &rabbit_config(
            &url,
            &tls_lines(&ca_file, "      server_name: rabbit.internal\n"),
            &exchange,
        ),
    );
    install(&app.dir.path().join("config.yaml"), &text);
    let got = queue.collect(sent.len(), Duration::from_secs(30)).await;
    assert_eq!(got.len(), sent.len(), "delivered once the name matched");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_client_certificates_are_presented_for_mutual_tls() {
    let (server_ca, client_ca) = (TestCa::new(), TestCa::new());
    let server = server_ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "rabbit", false);
    let tunnel = tunnel("127.0.0.1:5672", &server, Some(&client_ca.pem()));
    let exchange = unique("mtls");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("ca.pem");
    install(&ca_file, &server_ca.pem());
    let url = format!("amqps://guest:guest@localhost:{}/%2f", tunnel.port);
    // No client certificate: the endpoint refuses the connection.
    let app =
        TestApp::spawn_from_file(&rabbit_config(&url, &tls_lines(&ca_file, ""), &exchange)).await;
    wait_state(&app, "rabbitmq", |b| b["connected"] == false && !b["reason"].is_null()).await;
    let sent = post_events(&app, 0, 5).await;
    assert_eq!(dlq_len(&app).await, 0);
    // With one: delivered.
    let client = client_ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "orchestron", true);
    let (cert, key) = (files.path().join("client.pem"), files.path().join("client.key"));
    install(&cert, &client.cert);
    install(&key, &client.key);
    let lines = tls_lines(
        &ca_file,
        &format!("      cert: {}\n      key: {}\n", cert.display(), key.display()),
    );
    let text = crate::helpers::config_text(app.dir.path(), &rabbit_config(&url, &lines, &exchange));
    install(&app.dir.path().join("config.yaml"), &text);
    let got = queue.collect(sent.len(), Duration::from_secs(30)).await;
    assert_eq!(got.len(), sent.len(), "delivered with the client certificate");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_fails_over_to_the_next_node() {
    let exchange = unique("failover");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let closed = free_port();
    let text = format!(
        "brokers:\n  rabbitmq:\n    url: \"amqp://guest:guest@127.0.0.1:{closed}/%2f\"\n    urls: [\"{AMQP_URL}\"]\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: k }} }} ]\n"
    );
    let app = TestApp::spawn(&text).await;
    wait_state(&app, "rabbitmq", |b| b["node"] == "127.0.0.1:5672").await;
    let sent = post_events(&app, 0, 10).await;
    let got = queue.collect(sent.len(), Duration::from_secs(20)).await;
    assert_eq!(got.len(), sent.len());
    let metrics = reqwest::get(app.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .contains("orchestron_broker_node_info{broker=\"rabbitmq\",node=\"127.0.0.1:5672\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

/// Changing the endpoint and its trust anchors by a reload while events flow loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_endpoint_and_ca_change_by_reload_under_load_loses_nothing() {
    let (ca_a, ca_b) = (TestCa::new(), TestCa::new());
    let a = tunnel("127.0.0.1:5672", &ca_a.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "a", false), None);
    let b = tunnel("127.0.0.1:5672", &ca_b.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "b", false), None);
    let exchange = unique("rotate");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let files = tempfile::tempdir().unwrap();
    let ca_file = files.path().join("ca.pem");
    install(&ca_file, &ca_a.pem());
    let config = |port: u16| {
        let url = format!("amqps://guest:guest@localhost:{port}/%2f");
        rabbit_config(&url, &tls_lines(&ca_file, ""), &exchange)
    };
    let app = TestApp::spawn_from_file(&config(a.port)).await;
    wait_state(&app, "rabbitmq", |s| s["connected"] == true).await;
    let mut sent = BTreeSet::new();
    let mut next = 0;
    let started = Instant::now();
    let mut switched = false;
    while started.elapsed() < Duration::from_secs(6) {
        sent.extend(post_events(&app, next, 20).await);
        next += 20;
        if !switched && started.elapsed() > Duration::from_secs(2) {
            // New endpoint and new CA in one change (the old CA would not trust B).
            install(&ca_file, &ca_b.pem());
            let text = crate::helpers::config_text(app.dir.path(), &config(b.port));
            install(&app.dir.path().join("config.yaml"), &text);
            switched = true;
        }
    }
    let mut got: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && got.iter().collect::<BTreeSet<_>>().len() < sent.len() {
        let more = queue.collect(usize::MAX, Duration::from_millis(500)).await;
        got.extend(more.iter().map(|m| String::from_utf8(m.body.clone()).unwrap()));
    }
    let distinct: BTreeSet<String> = got.iter().cloned().collect();
    let lost = sent.difference(&distinct).count();
    let unexpected = distinct.difference(&sent).count();
    println!(
        "sent={} delivered={} lost={lost} unexpected={unexpected} duplicated={}",
        sent.len(),
        distinct.len(),
        got.len() - distinct.len()
    );
    assert_eq!((lost, unexpected), (0, 0));
    wait_state(&app, "rabbitmq", |s| s["node"] == format!("localhost:{}", b.port)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_refuses_a_wrong_ca_then_delivers_after_a_reload() {
    let (ca, other_ca) = (TestCa::new(), TestCa::new());
    let leaf = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "kafka", false);
    let broker = TlsTansu::start(&leaf.cert, &leaf.key);
    let topic = unique("tls-topic");
    let files = tempfile::tempdir().unwrap();
    let right_ca = files.path().join("right-ca.pem");
    install(&right_ca, &ca.pem());
    let right_ca = right_ca.display().to_string();
    let security = [("security.protocol", "SSL"), ("ssl.ca.location", right_ca.as_str())];
    crate::kafka::create_topic(&broker.bootstrap(), &topic, 1, &security).await;
    let ca_file = files.path().join("kafka-ca.pem");
    install(&ca_file, &other_ca.pem());
    let text = format!(
        "brokers:\n  kafka:\n    bootstrap_servers: \"{}\"\n    message_timeout: 10s\n    tls:\n      ca: {}\n\
         relay:\n  backoff: {{ initial: 100ms, max: 1s }}\n\
         default_route:\n  to: [ {{ kafka: {{ topic: {topic} }} }} ]\n",
        broker.bootstrap(),
        ca_file.display()
    );
    let app = TestApp::spawn_from_file(&text).await;
    wait_state(&app, "kafka", |b| b["reason"] == "tls").await;
    let sent = post_events(&app, 0, 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(dlq_len(&app).await, 0, "a TLS failure dead-letters nothing");

    install(&ca_file, &ca.pem());
    wait_state(&app, "kafka", |b| b["connected"] == true).await;
    let got = crate::kafka::consume_with(
        &broker.bootstrap(),
        &topic,
        1,
        sent.len(),
        Duration::from_secs(30),
        &security,
    )
    .await;
    let got: BTreeSet<String> =
        got.iter().map(|m| String::from_utf8(m.body.clone()).unwrap()).collect();
    assert_eq!(got, sent, "the records read back over TLS");
    app.stop().await;
}

/// `check-config` loads the broker TLS files and refuses a key that does not match its
/// certificate, naming the key path.
#[test]
fn check_config_refuses_a_client_key_that_does_not_match_its_certificate() {
    let ca = TestCa::new();
    let (one, two) = (
        ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "one", true),
        ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "two", true),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| -> PathBuf { dir.path().join(name) };
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("cert.pem"), &one.cert).unwrap();
    std::fs::write(path("key.pem"), &two.key).unwrap();
    let config = path("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ listen: \"127.0.0.1:0\" }}\nstore: {{ path: {} }}\n\
             brokers:\n  rabbitmq:\n    url: \"amqps://guest:guest@localhost:5671/%2f\"\n    tls:\n      ca: {}\n      cert: {}\n      key: {}\n\
             sources: {{ default: {{ api_keys: [k] }} }}\n\
             default_route: {{ to: [ {{ rabbitmq: {{ exchange: x }} }} ] }}\n",
            path("o.redb").display(),
            path("ca.pem").display(),
            path("cert.pem").display(),
            path("key.pem").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(stderr.contains("brokers.rabbitmq") && stderr.contains("key"), "{stderr}");
    std::fs::write(path("key.pem"), &one.key).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Refused credentials are an `auth` state (not a failure of the events), the password shows
/// nowhere, and a reload with the right one (the `password` key, overriding the URL's)
/// delivers what waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_are_auth_never_shown_and_fixed_by_a_reload() {
    let exchange = unique("auth");
    let mut queue = RabbitQueue::bind(&exchange, "#").await;
    let wrong = "wrong-Pa55word-42";
    let url = format!("amqp://guest:{wrong}@127.0.0.1:5672/%2f");
    let app = TestApp::spawn_from_file(&rabbit_config(&url, "", &exchange)).await;
    wait_state(&app, "rabbitmq", |b| b["reason"] == "auth").await;
    let sent = post_events(&app, 0, 5).await;
    let body = ready(&app).await.to_string();
    let metrics = reqwest::get(app.url("/metrics")).await.unwrap().text().await.unwrap();
    let admin_config = app.admin(reqwest::Method::GET, "/admin/config").send().await.unwrap();
    let admin_config = admin_config.text().await.unwrap();
    for (what, text) in
        [("/ready", &body), ("/metrics", &metrics), ("/admin/config", &admin_config)]
    {
        assert!(!text.contains(wrong), "{what} shows the password: {text}");
    }
    assert!(metrics.contains("reason=\"auth\""), "{metrics}");
    assert_eq!(dlq_len(&app).await, 0, "refused credentials dead-letter nothing");
    let lines = "    password: guest\n";
    let text = crate::helpers::config_text(app.dir.path(), &rabbit_config(&url, lines, &exchange));
    install(&app.dir.path().join("config.yaml"), &text);
    let got = queue.collect(sent.len(), Duration::from_secs(30)).await;
    assert_eq!(got.len(), sent.len(), "delivered with the right password");
    app.stop().await;
}

/// A tansu broker that checks SCRAM passwords: users are created on an open broker over a
/// SQLite store (tansu's `user create`), then the store is served by a broker with
/// `--authentication`. (tansu accepts any PLAIN password, so PLAIN is not tested against it.)
struct ScramTansu {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl ScramTansu {
    fn start(users: &[(&str, &str, &str)], topic: &str) -> ScramTansu {
        let dir = tempfile::tempdir().unwrap();
        // tansu takes the SQLite path relative to its working directory.
        let storage = "sqlite://tansu.db";
        let run = |port: u16, auth: bool| {
            let mut command = Command::new("tansu");
            command
                .args(["broker", "--storage-engine", storage])
                .current_dir(dir.path())
                .args(["--listener-url", &format!("tcp://127.0.0.1:{port}")])
                .args(["--advertised-listener-url", &format!("tcp://127.0.0.1:{port}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if auth {
                command.arg("--authentication");
            }
            let child = command.spawn().expect("tansu (scripts/test installs it)");
            let started = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(started.elapsed() < Duration::from_secs(20), "tansu did not listen");
                std::thread::sleep(Duration::from_millis(50));
            }
            child
        };
        let open = free_port();
        let mut setup = run(open, false);
        for (user, password, mechanism) in users {
            let status = Command::new("tansu")
                .args(["user", "create", user, password, "--mechanism", mechanism])
                .args(["--broker", &format!("tcp://127.0.0.1:{open}")])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "tansu user create {user}");
        }
        let status = Command::new("tansu")
            .args(["topic", "create", topic, "--partitions", "1"])
            .args(["--broker", &format!("tcp://127.0.0.1:{open}")])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tansu topic create");
        let _ = setup.kill();
        let _ = setup.wait();
        let port = free_port();
        let child = run(port, true);
        ScramTansu { port, child, _dir: dir }
    }
}

impl Drop for ScramTansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SCRAM against a broker that checks the password: a wrong one is `auth` on `/ready` and
/// dead-letters nothing; the right one (by reload) delivers, for SHA-256 and SHA-512.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_scram_refuses_a_wrong_password_and_delivers_with_the_right_one() {
    let topic = unique("scram");
    let broker = ScramTansu::start(
        &[("orchestron", "right-256", "scram256"), ("orchestron5", "right-512", "scram512")],
        &topic,
    );
    let bootstrap = format!("127.0.0.1:{}", broker.port);
    let config = |mechanism: &str, user: &str, password: &str| {
        format!(
            "brokers:\n  kafka:\n    bootstrap_servers: \"{bootstrap}\"\n    message_timeout: 10s\n\
             \x20   sasl: {{ mechanism: {mechanism}, username: {user}, password: {password} }}\n\
             relay:\n  backoff: {{ initial: 100ms, max: 1s }}\n\
             default_route:\n  to: [ {{ kafka: {{ topic: {topic} }} }} ]\n"
        )
    };
    let app = TestApp::spawn_from_file(&config("SCRAM-SHA-256", "orchestron", "wrong-pw-77")).await;
    wait_state(&app, "kafka", |b| b["reason"] == "auth").await;
    let sent = post_events(&app, 0, 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let body = ready(&app).await.to_string();
    assert!(!body.contains("wrong-pw-77"), "{body}");
    assert_eq!(dlq_len(&app).await, 0, "a refused password dead-letters nothing");
    let write = |text: String| {
        let full = crate::helpers::config_text(app.dir.path(), &text);
        install(&app.dir.path().join("config.yaml"), &full);
    };
    write(config("SCRAM-SHA-256", "orchestron", "right-256"));
    wait_state(&app, "kafka", |b| b["connected"] == true).await;
    let sent_512 = {
        // The other mechanism and user, by another reload.
        write(config("SCRAM-SHA-512", "orchestron5", "right-512"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        wait_state(&app, "kafka", |b| b["connected"] == true).await;
        post_events(&app, 5, 5).await
    };
    let security = [
        ("security.protocol", "SASL_PLAINTEXT"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", "orchestron5"),
        ("sasl.password", "right-512"),
    ];
    let all: BTreeSet<String> = sent.union(&sent_512).cloned().collect();
    let got = crate::kafka::consume_with(
        &bootstrap,
        &topic,
        1,
        all.len(),
        Duration::from_secs(30),
        &security,
    )
    .await;
    let got: BTreeSet<String> =
        got.iter().map(|m| String::from_utf8(m.body.clone()).unwrap()).collect();
    assert_eq!(got, all, "the records read back with SCRAM");
    app.stop().await;
}

/// A broker that stays down is one line in the log when it goes down (per broker), not a
/// line per reconnect attempt (librdkafka alone printed three ERROR lines per attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_that_stay_down_log_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let closed = free_port();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ listen: \"127.0.0.1:{port}\" }}\nstore: {{ path: {} }}\n\
             brokers:\n  rabbitmq: {{ url: \"amqp://guest:guest@127.0.0.1:{closed}/%2f\" }}\n\
             \x20 kafka: {{ bootstrap_servers: \"127.0.0.1:{}\" }}\n\
             sources: {{ default: {{ api_keys: [k] }} }}\n\
             default_route: {{ to: [ {{ rabbitmq: {{ exchange: x }} }}, {{ kafka: {{ topic: t }} }} ] }}\n",
            dir.path().join("o.redb").display(),
            free_port()
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut child = crate::helpers::Reaped(
        Command::new(env!("CARGO_BIN_EXE_orchestron"))
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let loud: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["level"] == "ERROR" || l["level"] == "WARN")
        .collect();
    for broker in ["rabbitmq", "kafka"] {
        let about = loud.iter().filter(|l| l["destination"] == broker).count();
        assert_eq!(about, 1, "{broker}: one line, not one per attempt:\n{text}");
    }
    assert_eq!(loud.len(), 2, "nothing else is loud:\n{text}");
}
