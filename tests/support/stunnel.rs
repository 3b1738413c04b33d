//! Debian's `stunnel4` terminating TLS in front of a plain broker, and a tansu advertised
//! behind it (tansu does not terminate TLS itself); shared by the integration tests and the
//! benchmarks.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::free_port;

/// `stunnel4` accepting TLS on a port of its own and forwarding in plain to `upstream`.
pub struct Stunnel {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Stunnel {
    /// TLS with the PEM certificate chain `cert` and its `key`; with `client_ca`, a client
    /// certificate that CA signed is required.
    pub fn start(upstream: &str, cert: &str, key: &str, client_ca: Option<&str>) -> Stunnel {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("cert.pem"), cert).unwrap();
        std::fs::write(path("key.pem"), key).unwrap();
        let port = free_port();
        let mut conf = format!(
            "foreground = yes\npid =\ndebug = warning\n[tls]\naccept = 127.0.0.1:{port}\n\
             connect = {upstream}\ncert = {}\nkey = {}\n",
            path("cert.pem").display(),
            path("key.pem").display()
        );
        if let Some(ca) = client_ca {
            std::fs::write(path("client-ca.pem"), ca).unwrap();
            let ca = path("client-ca.pem");
            conf.push_str(&format!(
                "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                ca.display()
            ));
        }
        std::fs::write(path("stunnel.conf"), conf).unwrap();
        let child = Command::new("stunnel4")
            .arg(path("stunnel.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 (Debian package stunnel4; scripts/test installs it)");
        wait_listening(port, "stunnel4");
        Stunnel { port, child, _dir: dir }
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tansu of its own (memory storage), listening in plain on a port only the tunnel uses
/// and advertising the tunnel's TLS port, so clients come back through it.
pub struct TlsTansu {
    pub tunnel: Stunnel,
    child: Child,
}

impl TlsTansu {
    pub fn start(cert: &str, key: &str) -> TlsTansu {
        let plain = free_port();
        let tunnel = Stunnel::start(&format!("127.0.0.1:{plain}"), cert, key, None);
        let child = Command::new("tansu")
            .args(["broker", "--storage-engine", &format!("memory://tansu-{plain}/")])
            .args(["--listener-url", &format!("tcp://127.0.0.1:{plain}")])
            .args(["--advertised-listener-url", &format!("tcp://localhost:{}", tunnel.port)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu (scripts/test installs it)");
        wait_listening(plain, "tansu");
        TlsTansu { tunnel, child }
    }

    /// Where clients connect (TLS; the certificate must be for `localhost`).
    pub fn bootstrap(&self) -> String {
        format!("localhost:{}", self.tunnel.port)
    }
}

impl Drop for TlsTansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_listening(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(20), "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
