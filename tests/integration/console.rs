//! The web console in a real browser: Debian's headless Chromium driven through chromedriver
//! (WebDriver, with fantoccini), against the real daemon and RabbitMQ. Screenshots of each
//! page are saved under `target/tmp/console-screenshots/` for a reviewer to look at.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

use crate::helpers::{
    ADMIN_TOKEN, RabbitQueue, TestApp, free_port, good_and_unroutable_config, unique, wait_dlq,
};

/// chromedriver on a port of its own, stopped when dropped.
struct Driver {
    _process: crate::helpers::Reaped,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; scripts/test installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver { _process: crate::helpers::Reaped(child), port }
    }

    /// A headless Chromium session with a 1280×800 window.
    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800"]
            }),
        );
        let http = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(http)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a browser session")
    }
}

/// Saves a screenshot of the page as `name`.png.
async fn screenshot(browser: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = browser.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The text of `css` once it satisfies `ok` (at most 15 s).
async fn text_when(browser: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if ok(&text) {
                return text;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "{css} still says {text:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{css} not on the page");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_in(browser: &Client, token: &str) {
    let field = browser.wait().for_element(Locator::Css("#token")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
    browser.find(Locator::Css("#signin")).await.unwrap().click().await.unwrap();
}

/// The sum of a counter's series in `/metrics`.
async fn metric_sum(app: &TestApp, name: &str) -> f64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const XSS_SCRIPT: &str = "<script>window.pwned=1</script>";
const XSS_IMG: &str = "<img src=x onerror=\"window.pwned=1\">";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_signs_in_shows_the_counts_and_replays_a_dead_letter_shown_as_text() {
    let (good, bad) = (unique("good"), unique("bad"));
    let relay = "  max_attempts: 1\n  backoff: { initial: 10ms, max: 10ms }\n";
    let extra = format!(
        "sources:\n    keep_headers: [\"X-Note\"]\n{}",
        good_and_unroutable_config(&good, &bad, relay)
    );
    let app = TestApp::spawn(&extra).await;
    let mut good_queue = RabbitQueue::bind(&good, "#").await;
    for n in 0..3 {
        app.accept("order.created", format!("{{\"n\":{n}}}")).await;
    }
    assert_eq!(good_queue.collect(3, Duration::from_secs(10)).await.len(), 3);
    // A dead letter whose body and kept header carry markup that would run if inserted as
    // HTML.
    let body = serde_json::json!({ "note": XSS_SCRIPT, "img": XSS_IMG }).to_string();
    let answer = app
        .client
        .post(app.url("/api/events/bad.order"))
        .header("X-API-Key", crate::helpers::API_KEY)
        .header("Content-Type", "application/json")
        .header("X-Note", format!("{XSS_SCRIPT}{XSS_IMG}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let id =
        answer.json::<serde_json::Value>().await.unwrap()["event_id"].as_str().unwrap().to_owned();
    wait_dlq(&app, 1).await;

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    // The assets themselves carry the policy that forbids inline script.
    let index = app.client.get(app.admin_url("/")).send().await.unwrap();
    let policy = index.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.starts_with("default-src 'self'"), "{policy}");

    // A wrong token: an error, and no data.
    browser.goto(&app.admin_url("/")).await.unwrap();
    sign_in(&browser, "not-the-token-at-all-0000000000000000").await;
    let error = text_when(&browser, "#signin-error", |t| !t.is_empty()).await;
    assert!(error.to_lowercase().contains("refused"), "{error}");
    assert!(browser.find(Locator::Css("#accepted-total")).await.is_err(), "no data shown");
    screenshot(&browser, "01-sign-in-refused").await;

    // The right token: the overview shows the accepted count /metrics shows.
    sign_in(&browser, ADMIN_TOKEN).await;
    let accepted = metric_sum(&app, "orchestron_ingest_accepted_total").await;
    assert_eq!(accepted, 4.0);
    text_when(&browser, "#accepted-total", |t| t.trim() == "4").await;
    screenshot(&browser, "02-overview").await;

    // The dead letter, found by filter and opened: the markup is shown as text and runs no
    // script.
    browser.goto(&app.admin_url("/#/dlq")).await.unwrap();
    let field = browser.wait().for_element(Locator::Css("#f-type")).await.unwrap();
    field.send_keys("bad.order").await.unwrap();
    browser.find(Locator::Css("#f-apply")).await.unwrap().click().await.unwrap();
    let row = format!("tr.dlq-row[data-event-id=\"{id}\"]");
    browser.wait().for_element(Locator::Css(&row)).await.unwrap();
    screenshot(&browser, "03-dead-letters").await;
    let link = browser.find(Locator::Css(&format!("{row} a"))).await.unwrap();
    link.click().await.unwrap();
    let shown = text_when(&browser, "#entry-body", |t| t.contains("window.pwned")).await;
    assert!(shown.contains(XSS_SCRIPT), "the body shown literally: {shown}");
    let page = browser.find(Locator::Css("#dlq-entry")).await.unwrap().text().await.unwrap();
    assert!(page.contains(&format!("{XSS_SCRIPT}{XSS_IMG}")), "the header shown literally");
    let pwned = browser.execute("return typeof window.pwned;", vec![]).await.unwrap();
    assert_eq!(pwned, "undefined", "the payload ran");
    screenshot(&browser, "04-dead-letter-entry").await;

    // Replayed from the page once the cause is gone: it arrives once, with the same ce_id.
    let mut bad_queue = RabbitQueue::bind(&bad, "#").await;
    browser.find(Locator::Css("#entry-replay")).await.unwrap().click().await.unwrap();
    text_when(&browser, "#entry-message", |t| t.to_lowercase().contains("replayed")).await;
    let got = bad_queue.collect(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "delivered once");
    assert_eq!(got[0].headers["ce_id"], id);
    let pwned = browser.execute("return typeof window.pwned;", vec![]).await.unwrap();
    assert_eq!(pwned, "undefined");

    // The other pages render, at desktop and at phone width.
    for (name, hash) in [("outbox", "#/outbox"), ("events", "#/events"), ("schemas", "#/schemas")] {
        browser.goto(&app.admin_url(&format!("/{hash}"))).await.unwrap();
        browser.wait().for_element(Locator::Css(&format!("#{name}"))).await.unwrap();
        screenshot(&browser, &format!("05-{name}")).await;
    }
    browser.goto(&app.admin_url(&format!("/#/events/{id}"))).await.unwrap();
    text_when(&browser, "#event-result", |t| !t.is_empty()).await;
    screenshot(&browser, "06-event-lookup").await;
    browser.set_window_size(375, 800).await.unwrap();
    browser.goto(&app.admin_url("/#/overview")).await.unwrap();
    text_when(&browser, "#accepted-total", |t| t.trim() == "4").await;
    screenshot(&browser, "07-overview-phone").await;

    browser.close().await.unwrap();
    drop(driver);
    app.stop().await;
}
