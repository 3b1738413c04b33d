//! Reloading the config file on SIGHUP (`systemctl reload`): load → validate → swap → report.
//!
//! Everything a request or a relay pass reads from [`crate::app::LiveConfig`] is reloadable:
//! the API keys, routes, schemas, body limit and relay policy. Settings that shape the
//! running process (listen addresses, the store, broker connections, the admin API, the
//! metrics listener) need a restart; a change to them is logged as such and the rest still
//! applies. A file that does not load or validate changes nothing: the old configuration
//! keeps running, the error is logged with the file position, and the failure is counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Config;
use crate::app::LiveConfig;
use crate::event::now_ms;
use crate::telemetry::metrics::Metrics;

/// What running settings a reload compares against.
pub struct Reloader {
    path: PathBuf,
    /// The restart-only settings the process was started with, as text.
    started_with: Vec<(&'static str, String)>,
    /// Brokers with a running publisher: a reloaded route may only name these.
    running_brokers: Vec<crate::routing::BrokerKind>,
    live: Arc<ArcSwap<LiveConfig>>,
    metrics: Arc<Metrics>,
}

/// The settings that only a restart applies, rendered for comparison (secrets stay redacted,
/// so a changed password is not noticed; connection secrets need a restart anyway).
fn restart_only(c: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("server.listen", c.server.listen.to_string()),
        ("server.shutdown_timeout", format!("{:?}", c.server.shutdown_timeout)),
        ("store", format!("{:?}", c.store)),
        ("brokers", format!("{:?}", c.brokers)),
        ("admin", format!("{:?}", c.admin)),
        ("metrics", format!("{:?}", c.metrics)),
        ("log", format!("{:?}", c.log)),
        ("dlq", format!("{:?}", c.dlq)),
    ]
}

impl Reloader {
    pub fn new(
        path: &Path,
        config: &Config,
        running_brokers: Vec<crate::routing::BrokerKind>,
        live: Arc<ArcSwap<LiveConfig>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            path: path.to_owned(),
            started_with: restart_only(config),
            running_brokers,
            live,
            metrics,
        }
    }

    /// Reloads the file; on any error the running configuration is left as it was.
    pub fn reload(&self) -> Result<(), String> {
        let result = self.try_reload();
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics.config_reloads.with_label_values(&[outcome]).inc();
        match &result {
            Ok(()) => tracing::info!(path = %self.path.display(), "configuration reloaded"),
            Err(error) => tracing::error!(
                path = %self.path.display(), %error,
                "configuration reload failed; the previous configuration keeps running"
            ),
        }
        result
    }

    fn try_reload(&self) -> Result<(), String> {
        let config = super::load(&self.path).map_err(|e| e.to_string())?;
        let live = LiveConfig::build(&config).map_err(|e| e.to_string())?;
        let missing: Vec<&str> = live
            .routes
            .brokers_used()
            .into_iter()
            .filter(|b| !self.running_brokers.contains(b))
            .map(|b| b.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "routes name broker(s) {} that this process does not run; restart to add brokers",
                missing.join(", ")
            ));
        }
        let needs_restart: Vec<&str> = restart_only(&config)
            .into_iter()
            .zip(&self.started_with)
            .filter(|((_, new), (_, old))| new != old)
            .map(|((name, _), _)| name)
            .collect();
        if !needs_restart.is_empty() {
            tracing::warn!(
                settings = needs_restart.join(", "),
                "changed settings need a restart to apply; the rest of the file is applied"
            );
        }
        self.live.store(Arc::new(live));
        self.metrics.config_info.reset();
        self.metrics.config_info.with_label_values(&[config.fingerprint.as_str()]).set(1);
        self.metrics.config_loaded.set((now_ms() / 1000) as i64);
        Ok(())
    }
}
