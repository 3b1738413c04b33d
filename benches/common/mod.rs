//! Helpers the benchmarks share: the release daemon as a child process, ports, medians.

#![allow(dead_code)] // each bench uses its own subset

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[path = "../../tests/support/ports.rs"]
mod ports;
#[path = "../../tests/support/stunnel.rs"]
pub mod stunnel;
pub use ports::free_port;

/// The daemon binary: this build's, or `ORCHESTRON_BENCH_BINARY` (to compare two builds in
/// one sitting).
pub fn daemon_binary() -> std::path::PathBuf {
    std::env::var_os("ORCHESTRON_BENCH_BINARY")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_orchestron").into())
}

pub fn start_daemon(config: &Path) -> Child {
    Command::new(daemon_binary())
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon")
}

pub fn stop_daemon(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let _ = child.wait();
}

/// Waits until the daemon answers `/health` (listening); returns how long that took.
pub async fn wait_ready(port: u16) -> Duration {
    wait_ok(port, "/health").await
}

/// Waits until `path` answers 200 (`/ready`: every configured broker connected).
pub async fn wait_ok(port: u16, path: &str) -> Duration {
    let started = Instant::now();
    let client = reqwest::Client::new();
    loop {
        let r = client.get(format!("http://127.0.0.1:{port}{path}")).send().await;
        if r.is_ok_and(|r| r.status() == 200) {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "daemon not ready");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}
