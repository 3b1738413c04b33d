//! Reloading the config file on SIGHUP (`systemctl reload`) or when the file or the schema
//! directory changes: load → validate → swap → report.
//!
//! Everything a request or a relay pass reads from [`super::LiveConfig`] is reloadable:
//! the API keys, routes, schemas, body limit and relay policy; the publishers apply broker
//! addresses, credentials, TLS files and RabbitMQ exchange declarations (reconnecting when
//! they changed). Settings that shape the running process (listen addresses,
//! the store, broker connections, the admin API, the metrics listener) need a restart; a
//! change to them is logged as such and the rest still applies. A file that does not load or
//! validate changes nothing: the old configuration keeps running, the error is logged with
//! the file position, and the failure is counted.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::LiveConfig;
use crate::config::Config;
use crate::event::now_ms;
use crate::publish::Publishers;
use crate::server::tls::TlsState;
use crate::telemetry::metrics::Metrics;
use crate::watch::{parent_dir, watch_paths};

/// What `GET /admin/config` reports: which configuration runs and how the last reload went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigStatus {
    /// Fingerprint of the running configuration (also `orchestron_config_info{hash}`).
    pub version: String,
    pub loaded_at: String,
    pub last_reload_at: Option<String>,
    /// The error of the last reload if it failed; cleared by a successful one.
    pub last_error: Option<String>,
    /// Settings changed in the file that only a restart applies.
    pub needs_restart: Vec<String>,
}

/// Shared between the reloader and the admin API.
pub type SharedStatus = Arc<Mutex<ConfigStatus>>;

fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The status of a configuration just loaded at start.
pub fn initial_status(config: &Config) -> SharedStatus {
    Arc::new(Mutex::new(ConfigStatus {
        version: config.fingerprint.clone(),
        loaded_at: rfc3339_now(),
        ..ConfigStatus::default()
    }))
}

/// What running settings a reload compares against.
pub struct Reloader {
    status: SharedStatus,
    path: PathBuf,
    /// The restart-only settings the process was started with, as text.
    started_with: Vec<(&'static str, String)>,
    /// The running publishers: a reloaded route may only name their brokers, and they apply
    /// the broker settings that reload.
    publishers: Publishers,
    live: Arc<ArcSwap<LiveConfig>>,
    metrics: Arc<Metrics>,
    /// The brokers' TLS files, watched like the config file.
    broker_tls_files: Vec<PathBuf>,
}

/// The settings that only a restart applies, rendered for comparison (secrets stay redacted,
/// so a changed password is not noticed; connection secrets need a restart anyway).
fn restart_only(c: &Config) -> Vec<(&'static str, String)> {
    vec![
        ("server.listen", c.server.listen.to_string()),
        ("server.shutdown_timeout", format!("{:?}", c.server.shutdown_timeout)),
        // The certificate files' contents reload by themselves; their paths need a restart.
        ("server.tls", format!("{:?}", c.server.tls)),
        ("server.max_connections", c.server.max_connections.to_string()),
        ("server.listen_backlog", c.server.listen_backlog.to_string()),
        (
            "server.timeouts",
            format!(
                "{:?}",
                (
                    c.server.timeouts.tls_handshake,
                    c.server.timeouts.header_read,
                    c.server.timeouts.idle
                )
            ),
        ),
        ("store", format!("{:?}", c.store)),
        // Addresses, credentials, TLS files and exchange declarations reload (the publishers
        // reconnect or declare at once); which brokers run, and RabbitMQ's window, do not.
        (
            "brokers",
            format!(
                "{:?}",
                (
                    c.brokers.rabbitmq.as_ref().map(|r| (r.confirm_timeout, r.max_unconfirmed)),
                    c.brokers.kafka.is_some()
                )
            ),
        ),
        ("admin", format!("{:?}", c.admin)),
        ("metrics", format!("{:?}", c.metrics)),
        ("log", format!("{:?}", c.log)),
        ("dlq", format!("{:?}", c.dlq)),
        ("sync", format!("{:?}", c.sync)),
    ]
}

impl Reloader {
    pub fn new(
        path: &Path,
        config: &Config,
        publishers: Publishers,
        live: Arc<ArcSwap<LiveConfig>>,
        metrics: Arc<Metrics>,
        status: SharedStatus,
    ) -> Self {
        Self {
            status,
            path: path.to_owned(),
            started_with: restart_only(config),
            publishers,
            live,
            metrics,
            broker_tls_files: broker_tls_files(config),
        }
    }

    /// Reloads the file; on any error the running configuration is left as it was.
    pub fn reload(&self) -> Result<(), String> {
        let result = self.try_reload();
        {
            // std Mutex: a short update, no await while held.
            let mut status = self.status.lock().expect("config status lock");
            status.last_reload_at = Some(rfc3339_now());
            match &result {
                Ok((version, needs_restart)) => {
                    status.version = version.clone();
                    status.loaded_at = rfc3339_now();
                    status.last_error = None;
                    status.needs_restart = needs_restart.clone();
                }
                Err(error) => status.last_error = Some(error.clone()),
            }
        }
        let result = result.map(drop);
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics.config_reloads.with_label_values(&[outcome]).inc();
        if result.is_err() {
            self.metrics.config_reload_failures.inc();
        }
        match &result {
            Ok(()) => tracing::info!(path = %self.path.display(), "configuration reloaded"),
            Err(error) => tracing::error!(
                path = %self.path.display(), %error,
                "configuration reload failed; the previous configuration keeps running"
            ),
        }
        result
    }

    /// Returns the new fingerprint and the restart-only settings that changed.
    fn try_reload(&self) -> Result<(String, Vec<String>), String> {
        let config = crate::config::load(&self.path).map_err(|e| e.to_string())?;
        let live = LiveConfig::build(&config).map_err(|e| e.to_string())?;
        let missing: Vec<&str> = live
            .routes
            .brokers_used()
            .into_iter()
            .filter(|&b| self.publishers.get(b).is_none())
            .map(|b| b.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "routes name broker(s) {} that this process does not run; restart to add brokers",
                missing.join(", ")
            ));
        }
        let needs_restart: Vec<String> = restart_only(&config)
            .into_iter()
            .zip(&self.started_with)
            .filter(|((_, new), (_, old))| new != old)
            .map(|((name, _), _)| name.to_owned())
            .collect();
        if !needs_restart.is_empty() {
            tracing::warn!(
                settings = needs_restart.join(", "),
                "changed settings need a restart to apply; the rest of the file is applied"
            );
        }
        self.live.store(Arc::new(live));
        for publisher in self.publishers.all() {
            publisher.reload(&config.brokers);
        }
        self.metrics.config_info.reset();
        self.metrics.config_info.with_label_values(&[config.fingerprint.as_str()]).set(1);
        self.metrics.config_loaded.set((now_ms() / 1000) as i64);
        Ok((config.fingerprint, needs_restart))
    }

    /// Watches the config file and the schema directory; the returned future reloads on a
    /// change until `cancel`.
    pub fn watch(
        self: Arc<Self>,
        schema_dir: Option<PathBuf>,
        cancel: CancellationToken,
    ) -> notify::Result<impl Future<Output = ()> + Send + 'static> {
        let config_file = self.path.clone();
        let schema_dir_abs = schema_dir.as_ref().and_then(|d| std::fs::canonicalize(d).ok());
        let mut dirs = vec![parent_dir(&self.path)];
        // Broker TLS files (as the config named them at start; SIGHUP reads whatever the
        // config names now): a rotated certificate or CA reconnects the publisher.
        let tls_files = self.broker_tls_files.clone();
        dirs.extend(tls_files.iter().map(|f| parent_dir(f)));
        // The schema directory itself, and its parent: a directory replaced by a rename is
        // seen there (and watched again after each change, see `watch_paths`).
        match (&schema_dir_abs, schema_dir) {
            (Some(abs), _) => dirs.extend([parent_dir(abs), abs.clone()]),
            (None, Some(dir)) => dirs.push(dir),
            (None, None) => {}
        }
        let relevant = move |p: &Path| {
            p.file_name() == config_file.file_name()
                || schema_dir_abs.as_ref().is_some_and(|d| p.starts_with(d))
                || tls_files.iter().any(|f| f.file_name() == p.file_name())
        };
        watch_paths(dirs, relevant, cancel, move || {
            let _ = self.reload();
        })
    }
}

/// `systemctl reload` and `kill -HUP`: reloads the config file and the TLS files on every
/// SIGHUP until `cancel` (instead of SIGHUP's default action, which would end the process).
pub fn reload_on_sighup(
    reloader: Arc<Reloader>,
    tls: Option<Arc<TlsState>>,
    cancel: CancellationToken,
) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                signal = hangups.recv() => {
                    if signal.is_none() {
                        return;
                    }
                    // Blocking file reads and schema compilation: off the async workers.
                    let r = Arc::clone(&reloader);
                    let tls = tls.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let _ = r.reload();
                        if let Some(tls) = tls {
                            tls.reload();
                        }
                    })
                    .await;
                }
            }
        }
    })
}

/// The files of the brokers' `tls:` sections.
fn broker_tls_files(config: &Config) -> Vec<PathBuf> {
    let rabbitmq = config.brokers.rabbitmq.iter().flat_map(|r| r.tls.iter());
    let kafka = config.brokers.kafka.iter().flat_map(|k| k.tls.iter());
    rabbitmq.chain(kafka).flat_map(|t| t.files()).cloned().collect()
}
