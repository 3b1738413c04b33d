//! Test harness: `TestApp` runs the daemon in-process with a temp store; broker helpers.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const API_KEY: &str = "test-key";
pub const ADMIN_TOKEN: &str = "test-admin-token-7f3a9c2e5b8d1f4a6c0e";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const KAFKA: &str = "127.0.0.1:9092";

/// Writes `config.yaml` in `dir` for running the real binary: ingest on `port`, the store in
/// `dir`, RabbitMQ at `amqp_url`, every event to `exchange`; `extra` adds top-level keys.
pub fn write_binary_config(
    dir: &Path,
    port: u16,
    amqp_url: &str,
    exchange: &str,
    extra: &str,
) -> std::path::PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "server: {{ listen: \"127.0.0.1:{port}\", shutdown_timeout: 5s }}\n\
         store: {{ path: {} }}\n\
         brokers: {{ rabbitmq: {{ url: \"{amqp_url}\" }} }}\n\
         sources: {{ default: {{ api_keys: [\"{API_KEY}\"] }} }}\n\
         default_route: {{ to: [ {{ rabbitmq: {{ exchange: {exchange}, routing_key: k }} }} ] }}\n{extra}",
        dir.join("o.redb").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A POST of `body` as event type `ty` with the test API key, to the daemon at `base` (the
/// real binary; `TestApp::post` for the in-process one).
pub fn event_request(
    client: &reqwest::Client,
    base: &str,
    ty: &str,
    body: String,
) -> reqwest::RequestBuilder {
    client
        .post(format!("{base}/api/events/{ty}"))
        .header("X-API-Key", API_KEY)
        .header("Content-Type", "application/json")
        .body(body)
}

#[path = "../support/ports.rs"]
mod ports;
#[path = "../support/proxy.rs"]
mod proxy;
#[path = "../support/stunnel.rs"]
pub mod stunnel;
pub use ports::free_port;
pub use proxy::{ProxiedTansu, Proxy};

/// A daemon process killed and reaped when dropped, so a failing test leaves none behind.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A unique name for this test's exchange, queue or topic.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// Serves the admin API when the test config sets `admin.token` (see `ADMIN_TOKEN`).
    pub admin_addr: SocketAddr,
    pub dir: TempDir,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), orchestron::app::AppError>>>,
}

/// Config text for a test daemon: `extra` adds brokers, routes, schemas and so on. A
/// `sources:` or `server:` block in `extra` adds its (indented) lines to that section.
pub fn config_text(store_dir: &Path, extra: &str) -> String {
    let (sources, rest) = split_block(extra, "sources:");
    let (server, rest) = split_block(&rest, "server:");
    format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  shutdown_timeout: 10s\n  max_body_bytes: 64KiB\n{server}\
         store:\n  path: {}\n\
         sources:\n  default:\n    api_keys: [\"{API_KEY}\"]\n{sources}\
         admin:\n  listen: \"127.0.0.1:0\"\n  token: \"{ADMIN_TOKEN}\"\n{rest}",
        store_dir.join("orchestron.redb").display()
    )
}

/// Takes the block under the top-level line `key` (its indented lines) out of `extra`.
fn split_block(extra: &str, key: &str) -> (String, String) {
    let (mut sources, mut rest) = (String::new(), String::new());
    let mut inside = false;
    for line in extra.lines() {
        if line == key {
            inside = true;
            continue;
        }
        inside &= line.starts_with(' ');
        let out = if inside { &mut sources } else { &mut rest };
        out.push_str(line);
        out.push('\n');
    }
    (sources, rest)
}

impl TestApp {
    pub async fn spawn(extra: &str) -> TestApp {
        Self::spawn_in(tempfile::tempdir().unwrap(), extra).await
    }

    /// Starts a daemon on an existing store directory (to test restarts).
    pub async fn spawn_in(dir: TempDir, extra: &str) -> TestApp {
        let text = config_text(dir.path(), extra);
        let config = orchestron::config::load_str(Path::new("test.yaml"), &text, &[])
            .unwrap_or_else(|e| panic!("test config invalid: {e}\n{text}"));
        Self::start(dir, config).await
    }

    /// Starts a daemon whose config is a file (`config.yaml` in its directory), so that it
    /// watches and reloads it as the real daemon does.
    pub async fn spawn_from_file(extra: &str) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config_text(dir.path(), extra)).unwrap();
        let config = orchestron::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        Self::start(dir, config).await
    }

    async fn start(dir: TempDir, config: orchestron::config::Config) -> TestApp {
        // Bound as the daemon binds its own listener, with the configured backlog.
        let loopback = "127.0.0.1:0".parse().unwrap();
        let listener =
            orchestron::server::bind_listener(loopback, config.server.listen_backlog).unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let listeners = orchestron::app::Listeners { ingest: listener, admin: Some(admin) };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(orchestron::app::run(config, listeners, async {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            admin_addr,
            dir,
            // Below the daemon's keep-alive limit (header_read, 10 s by default), so the client
            // never reuses a connection the daemon is closing (see docs/security.md).
            client: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// An authorized admin request.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.admin_url(path)).bearer_auth(ADMIN_TOKEN)
    }

    /// POSTs `body` as event type `ty` with the test API key.
    pub async fn post(&self, ty: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(&format!("/api/events/{ty}")))
            .header("X-API-Key", API_KEY)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request reaches the daemon")
    }

    /// POSTs and expects 202; returns the event id.
    pub async fn accept(&self, ty: &str, body: String) -> String {
        let response = self.post(ty, body).await;
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "accepted");
        answer["event_id"].as_str().unwrap().to_owned()
    }

    /// Graceful shutdown; returns the store directory for a restart.
    pub async fn stop(mut self) -> TempDir {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        self.dir
    }
}

/// A message as a consumer saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: Vec<u8>,
    pub headers: std::collections::BTreeMap<String, String>,
    pub key: Option<Vec<u8>>,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub delivery_mode: Option<u8>,
}

/// A durable queue bound to `exchange` (declared here as topic) with `binding`.
pub struct RabbitQueue {
    rx: tokio::sync::mpsc::UnboundedReceiver<Received>,
    _conn: Connection,
}

impl RabbitQueue {
    pub async fn bind(exchange: &str, binding: &str) -> RabbitQueue {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672 (bash .ci/run starts it)");
        let channel = conn.create_channel().await.unwrap();
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        channel
            .exchange_declare(exchange.into(), ExchangeKind::Topic, durable, FieldTable::default())
            .await
            .unwrap();
        let queue = unique("q");
        let options =
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        channel.queue_declare(queue.as_str().into(), options, FieldTable::default()).await.unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.into(),
                binding.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let props = &delivery.properties;
                let headers = props
                    .headers()
                    .as_ref()
                    .map(|t| t.inner().iter().map(|(k, v)| (k.to_string(), amqp_text(v))).collect())
                    .unwrap_or_default();
                let received = Received {
                    body: delivery.data.clone(),
                    headers,
                    key: None,
                    routing_key: delivery.routing_key.to_string(),
                    message_id: props.message_id().as_ref().map(|s| s.to_string()),
                    delivery_mode: *props.delivery_mode(),
                };
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                if tx.send(received).is_err() {
                    break;
                }
            }
        });
        RabbitQueue { rx, _conn: conn }
    }

    /// Collects messages until `n` arrived or `within` passed.
    pub async fn collect(&mut self, n: usize, within: Duration) -> Vec<Received> {
        collect(&mut self.rx, n, within).await
    }
}

pub async fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Received>,
    n: usize,
    within: Duration,
) -> Vec<Received> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(m)) => out.push(m),
            _ => break,
        }
    }
    out
}

fn amqp_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.to_string(),
        other => format!("{other:?}"),
    }
}

/// Routes `bad.*` to the exchange `bad`, which the daemon declares and no queue is bound to
/// (every publish comes back), and everything else to `good`; `relay` is the relay block.
pub fn good_and_unroutable_config(good: &str, bad: &str, relay: &str) -> String {
    format!(
        "brokers:\n  rabbitmq:\n    url: \"{AMQP_URL}\"\n    declare:\n      exchanges: [ {{ name: {bad} }} ]\n\
         relay:\n{relay}\
         routes:\n  - match: {{ type: \"bad.*\" }}\n    to: [ {{ rabbitmq: {{ exchange: {bad}, routing_key: x }} }} ]\n\
         default_route:\n  to: [ {{ rabbitmq: {{ exchange: {good}, routing_key: x }} }} ]\n"
    )
}

/// Polls the admin API until the DLQ holds `n` entries; returns that page.
pub async fn wait_dlq(app: &TestApp, n: usize) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let page: serde_json::Value = app
            .admin(reqwest::Method::GET, "/admin/dlq?limit=1000")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["entries"].as_array().unwrap().len() >= n {
            return page;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "DLQ has {page} after 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
