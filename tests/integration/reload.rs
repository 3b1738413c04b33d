//! SIGHUP reloads the config file: new routes apply without a restart, a broken file keeps
//! the old configuration running, and both outcomes are counted.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{AMQP_URL, API_KEY, RabbitQueue, unique};

fn config(port: u16, store: &std::path::Path, exchange: &str) -> String {
    format!(
        "server: {{ listen: \"127.0.0.1:{port}\" }}\n\
         admin: {{ listen: \"127.0.0.1:{}\", token: t0ken }}\n\
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_routes_and_survives_a_broken_file() {
    let (first, second) = (unique("ex"), unique("ex"));
    let mut q1 = RabbitQueue::bind(&first, "#").await;
    let mut q2 = RabbitQueue::bind(&second, "#").await;
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
    std::fs::write(&path, config(port, &store, &first)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while post(&client, &base, "{\"n\":1}").await != 202 {
        assert!(started.elapsed() < Duration::from_secs(20), "daemon did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(q1.collect(1, Duration::from_secs(10)).await.len(), 1);

    // Edit the routes, reload: new events go to the new exchange, no restart.
    std::fs::write(&path, config(port, &store, &second)).unwrap();
    hangup(&child);
    let started = Instant::now();
    while metric(&client, &base, "orchestron_config_reloads_total{result=\"success\"}").await < 1.0
    {
        assert!(started.elapsed() < Duration::from_secs(10), "reload not applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post(&client, &base, "{\"n\":2}").await, 202);
    let got = q2.collect(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body, b"{\"n\":2}");

    // A broken file: counted, logged, and the running configuration stays.
    std::fs::write(&path, "server: [this is not the config\n").unwrap();
    hangup(&child);
    let started = Instant::now();
    while metric(&client, &base, "orchestron_config_reloads_total{result=\"failure\"}").await < 1.0
    {
        assert!(started.elapsed() < Duration::from_secs(10), "failure not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post(&client, &base, "{\"n\":3}").await, 202);
    assert_eq!(q2.collect(1, Duration::from_secs(10)).await.len(), 1, "old config still routes");
    let status: serde_json::Value = client
        .get(format!("http://127.0.0.1:{}/admin/config", port + 1))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(status["last_error"].as_str().unwrap().contains("line 1"), "{status}");
    assert!(q1.collect(1, Duration::from_millis(300)).await.is_empty());

    // No signal at all: saving the file (write a temp file, rename it over) is enough.
    let temp = dir.path().join("config.yaml.tmp");
    std::fs::write(&temp, config(port, &store, &first)).unwrap();
    std::fs::rename(&temp, &path).unwrap();
    let started = Instant::now();
    loop {
        assert_eq!(post(&client, &base, "{\"n\":4}").await, 202);
        if !q1.collect(1, Duration::from_millis(300)).await.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "file change not picked up");
    }
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP did not end the process");
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap()).await.unwrap();
    assert!(status.success());
}
