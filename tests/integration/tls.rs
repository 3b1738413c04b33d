//! HTTPS on the ingest listener: real handshakes from rustls (reqwest) and OpenSSL clients,
//! trust through a CA made in the test, mTLS, and certificate rotation under load.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::certs::{Leaf, TestCa};
use crate::helpers::{API_KEY, TestApp};

/// Writes the pair as `cert.pem` / `key.pem` in `dir`, each replaced by a rename (as
/// certificate tooling does).
fn install(dir: &Path, leaf: &Leaf) {
    for (name, text) in [("key.pem", &leaf.key), ("cert.pem", &leaf.cert)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn tls_config(dir: &Path, extra: &str) -> String {
    format!(
        "server:\n  tls:\n    cert: {}\n    key: {}\n{extra}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

fn client(ca: &str, builder: reqwest::ClientBuilder) -> reqwest::Client {
    builder
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .tls_info(true)
        .build()
        .unwrap()
}

async fn post(client: &reqwest::Client, app: &TestApp) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("https://127.0.0.1:{}/api/events/tls.test", app.addr.port()))
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body(r#"{"over":"tls"}"#)
        .send()
        .await
}

fn peer_cert(response: &reqwest::Response) -> Vec<u8> {
    let info = response.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
    info.peer_certificate().expect("a server certificate").to_vec()
}

fn first_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next().unwrap().unwrap().to_vec()
}

/// `openssl s_client` against the daemon with extra arguments; (exit ok, output).
fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-brief"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && !text.contains("alert"), text)
}

const EVENTS: &str = "default_route:\n  to:\n    - rabbitmq: { exchange: tls-unused, routing_key: k }\n\
                      brokers:\n  rabbitmq: { url: \"amqp://guest:guest@127.0.0.1:1/%2f\" }\n\
                      metrics:\n  listener: admin\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_h2_and_http1_for_ecdsa_ed25519_and_rsa_keys_and_refuses_tls_1_1() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    for (alg, label) in
        [(&rcgen::PKCS_ECDSA_P256_SHA256, "ecdsa"), (&rcgen::PKCS_ED25519, "ed25519")]
    {
        install(dir.path(), &ca.leaf(alg, label, false));
        let app = TestApp::spawn(&tls_config(dir.path(), EVENTS)).await;
        let h2 = client(&ca.pem(), reqwest::Client::builder());
        let response = post(&h2, &app).await.unwrap();
        assert_eq!(response.status(), 202, "{label}");
        assert_eq!(response.version(), reqwest::Version::HTTP_2, "{label}: ALPN h2");
        let h1 = client(&ca.pem(), reqwest::Client::builder().http1_only());
        let response = post(&h1, &app).await.unwrap();
        assert_eq!(
            (response.status().as_u16(), response.version()),
            (202, reqwest::Version::HTTP_11)
        );
        // Plain HTTP to the TLS port is not served.
        assert!(reqwest::get(format!("http://{}/health", app.addr)).await.is_err());
        app.stop().await;
    }

    // RSA, made by OpenSSL (a self-signed certificate the client trusts directly).
    let rsa = tempfile::tempdir().unwrap();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(rsa.path().join("key.pem"))
        .arg("-out")
        .arg(rsa.path().join("cert.pem"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let app = TestApp::spawn(&tls_config(rsa.path(), EVENTS)).await;
    let ca_pem = std::fs::read_to_string(rsa.path().join("cert.pem")).unwrap();
    let response = post(&client(&ca_pem, reqwest::Client::builder()), &app).await.unwrap();
    assert_eq!(response.status(), 202, "rsa");

    let port = app.addr.port();
    let (ok, out) = s_client(port, &["-tls1_2"]);
    assert!(ok && out.contains("TLSv1.2"), "TLS 1.2 is offered: {out}");
    let (ok, out) = s_client(port, &["-tls1_3"]);
    assert!(ok && out.contains("TLSv1.3"), "TLS 1.3 is offered: {out}");
    // The client is allowed TLS 1.1 (security level 0), so the refusal is the server's.
    let (ok, out) = s_client(port, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    // rustls answers a hello that offers no version it speaks with a handshake_failure alert.
    assert!(!ok && out.contains("alert"), "TLS 1.1 refused by the server: {out}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_1_3_refuses_tls_1_2() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    install(dir.path(), &ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "server", false));
    let extra = format!("    min_version: \"1.3\"\n{EVENTS}");
    let app = TestApp::spawn(&tls_config(dir.path(), &extra)).await;
    let port = app.addr.port();
    let (ok, out) = s_client(port, &["-tls1_2"]);
    assert!(!ok, "TLS 1.2 refused: {out}");
    let (ok, out) = s_client(port, &["-tls1_3"]);
    assert!(ok && out.contains("TLSv1.3"), "{out}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_with_a_certificate_it_signed_get_in() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let server = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "server", false);
    install(dir.path(), &server);
    std::fs::write(dir.path().join("clients.pem"), ca.pem()).unwrap();
    let extra = format!(
        "    client_ca: {}\n{EVENTS}\
         sources:\n  partner:\n    api_keys: [\"{API_KEY}\"]\n    event_type: {{ fixed: p.t }}\n\
         \x20   client_subjects: [\"CN=sender,O=Partner\"]\n",
        dir.path().join("clients.pem").display()
    );
    let app = TestApp::spawn(&tls_config(dir.path(), &extra)).await;

    let anonymous = client(&ca.pem(), reqwest::Client::builder());
    assert!(post(&anonymous, &app).await.is_err(), "no client certificate: no handshake");

    let with_identity = |issuer: &TestCa, name: &str, org: &str| {
        let mut leaf = issuer.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, name, true);
        if !org.is_empty() {
            leaf = issuer.leaf_in_org(name, org);
        }
        let identity = reqwest::Identity::from_pem(format!("{}{}", leaf.cert, leaf.key).as_bytes());
        client(&ca.pem(), reqwest::Client::builder().identity(identity.unwrap()))
    };
    let other_ca = TestCa::new();
    assert!(
        post(&with_identity(&other_ca, "sender", ""), &app).await.is_err(),
        "another CA's cert"
    );
    assert_eq!(post(&with_identity(&ca, "anyone", ""), &app).await.unwrap().status(), 202);

    // The partner source also wants the subject CN=sender, O=Partner.
    let to_partner = |c: reqwest::Client| {
        let url = format!("https://127.0.0.1:{}/hooks/partner", app.addr.port());
        async move {
            let r =
                c.post(url).header("x-api-key", API_KEY).header("content-type", "application/json");
            r.body("{}").send().await.unwrap()
        }
    };
    let allowed = to_partner(with_identity(&ca, "sender", "Partner")).await;
    assert_eq!(allowed.status(), 202);
    let refused = to_partner(with_identity(&ca, "sender", "Elsewhere")).await;
    assert_eq!(refused.status(), 403);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "client_certificate_refused");

    let text = admin_metrics(&app).await;
    assert!(text.contains("orchestron_tls_handshake_failures_total{reason=\"error\"}"), "{text}");
    let expiry: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("orchestron_tls_cert_expiry_timestamp_seconds "))
        .expect("the expiry gauge")
        .parse()
        .unwrap();
    let der = first_der(&server.cert);
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(expiry, parsed.validity().not_after.timestamp());
    app.stop().await;
}

async fn admin_metrics(app: &TestApp) -> String {
    reqwest::Client::new()
        .get(format!("http://{}/metrics", app.admin_addr))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request_and_bad_pairs_are_refused() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let old = ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "old", false);
    install(dir.path(), &old);
    let app = Arc::new(TestApp::spawn(&tls_config(dir.path(), EVENTS)).await);

    // Load: four keep-alive clients and one that opens a new connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for fresh in [false, false, false, false, true] {
        let (app, stop, ok, failed, ca) =
            (app.clone(), stop.clone(), ok.clone(), failed.clone(), ca.pem());
        load.push(tokio::spawn(async move {
            let mut keep = client(&ca, reqwest::Client::builder());
            while !stop.load(Ordering::Relaxed) {
                if fresh {
                    keep = client(&ca, reqwest::Client::builder().pool_max_idle_per_host(0));
                }
                match post(&keep, &app).await {
                    Ok(r) if r.status() == 202 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed request: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let new = ca.leaf(&rcgen::PKCS_ED25519, "new", false);
    install(dir.path(), &new);
    let fresh_cert = || async {
        let c = client(&ca.pem(), reqwest::Client::builder().pool_max_idle_per_host(0));
        peer_cert(&post(&c, &app).await.unwrap())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while fresh_cert().await != first_der(&new.cert) {
        assert!(tokio::time::Instant::now() < deadline, "the new certificate is served within 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A key that does not match the certificate: refused, the new pair stays.
    let mismatched = Leaf {
        cert: ca.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "x", false).cert,
        key: old.key.clone(),
    };
    install(dir.path(), &mismatched);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fresh_cert().await, first_der(&new.cert), "the broken pair is not used");

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("certificate rotation under load: ok={ok} failed={failed}");
    assert_eq!(failed, 0, "{ok} requests succeeded");
    assert!(ok > 50, "the load ran: {ok} requests");
    let metrics = admin_metrics(&app).await;
    assert!(metrics.contains("orchestron_tls_cert_reloads_total{result=\"failure\"}"), "{metrics}");
    assert!(metrics.contains("orchestron_tls_cert_reloads_total{result=\"success\"}"));
    Arc::try_unwrap(app).ok().expect("load tasks ended").stop().await;
}
