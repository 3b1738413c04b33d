//! Logging and the metrics registry, the leaves every stage writes to.
//!
//! Logging: `tracing` to stderr, human-readable for terminals or JSON lines for journald and
//! log shippers. The filter follows `RUST_LOG` syntax (default `info`). Metrics: [`metrics`],
//! every name in one place. Trace context: [`trace`]; span export: [`otlp`], which reads the
//! running configuration for its settings. Nothing else here imports the rest of the crate.

pub mod metrics;
pub mod otlp;
pub mod trace;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, for terminals.
    #[default]
    Text,
    /// One JSON object per line, for journald and log shippers.
    Json,
}

/// Installs the global subscriber; call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let wanted = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // lapin logs a returned message with its body at WARN; bodies never reach our logs
        // (the relay logs the return itself, without the body).
        .add_directive("lapin::returned_messages=off".parse().expect("a valid directive"));
    // lapin logs every failed connect and lost connection, often several lines each; the
    // publisher logs one line per change of the broker's state instead. `RUST_LOG=lapin=...`
    // brings them back.
    if !wanted.contains("lapin") {
        filter = filter.add_directive("lapin=off".parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
