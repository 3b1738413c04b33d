//! Ports for daemons started as separate processes (the real binary binds its own), shared by
//! the integration tests and the benchmarks.

/// A free port on loopback (for the real binary, which binds its own).
///
/// Chosen below the kernel's ephemeral range: a port the kernel handed out (`bind` to port 0)
/// and released may be taken again by any outgoing connection of a test running alongside
/// before the daemon binds it. Below that range only another `free_port` could take it, and
/// the random pick makes that unlikely.
pub fn free_port() -> u16 {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = ephemeral_start.saturating_sub(12_000).max(1024);
    for _ in 0..1000 {
        let port = fastrand::u16(low..ephemeral_start);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {low}..{ephemeral_start}")
}
