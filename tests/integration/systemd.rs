//! The systemd readiness protocol: READY=1 only once the store is open and the listener
//! accepts connections; STOPPING=1 on SIGTERM, then every task ends before the deadline.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{AMQP_URL, free_port, write_binary_config};

/// The next notification the daemon sends. Waits up to a minute (a loaded CI machine can take
/// long to open a store), but fails at once with the daemon's log if it exits instead.
fn receive(socket: &UnixDatagram, child: &mut Child, log: &Path) -> String {
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 4096];
    let started = Instant::now();
    loop {
        // Checked before reading, so that a message sent just before exiting is still read.
        let exited = child.try_wait().unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => {}
            Err(e) => panic!("reading the notify socket: {e}"),
        }
        let log = || std::fs::read_to_string(log).unwrap_or_default();
        if let Some(status) = exited {
            panic!("the daemon exited ({status}) without notifying; its log:\n{}", log());
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no notification within 60 s; the daemon's log:\n{}",
            log()
        );
    }
}

#[test]
fn ready_is_sent_after_the_listener_accepts_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let port = free_port();
    let config = write_binary_config(dir.path(), port, AMQP_URL, "amq.topic", "");
    let log = dir.path().join("daemon.log");
    let mut child = crate::helpers::Reaped(
        Command::new(env!("CARGO_BIN_EXE_orchestron"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let message = receive(&socket, &mut child, &log);
    assert!(message.lines().any(|l| l == "READY=1"), "{message:?}");
    // At READY the listener is there: a connection succeeds at once.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("listener bound before READY=1");
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let message = receive(&socket, &mut child, &log);
    assert!(message.lines().any(|l| l == "STOPPING=1"), "{message:?}");
    assert!(child.wait().unwrap().success());
    // Every task (listeners, relay workers, housekeeping, watchers) ended before the deadline.
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("stopped") && !log.contains("still running"), "{log}");
}
