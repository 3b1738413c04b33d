//! The systemd readiness protocol: READY=1 only once the store is open and the listener
//! accepts connections; STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{AMQP_URL, free_port, write_binary_config};

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_is_sent_after_the_listener_accepts_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let port = free_port();
    let config = write_binary_config(dir.path(), port, AMQP_URL, "amq.topic", "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestron"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let message = receive(&socket);
    assert!(message.lines().any(|l| l == "READY=1"), "{message:?}");
    // At READY the listener is there: a connection succeeds at once.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("listener bound before READY=1");
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    let message = receive(&socket);
    assert!(message.lines().any(|l| l == "STOPPING=1"), "{message:?}");
    assert!(child.wait().unwrap().success());
}
