//! Wiring: builds every stage from the config, runs them, and shuts them down in pipeline
//! order (stop accepting → commit pending appends → finish the relay batch → flush Kafka →
//! close RabbitMQ → close the store) under one deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::{
    BrokersConfig, Config, ConfigError, MetricsListener, Reloader, initial_status,
};
use crate::event::now_ms;
use crate::ingest::{self, IngestState, Sources};
use crate::publish::Publishers;
use crate::publish::kafka::KafkaPublisher;
use crate::publish::rabbitmq::RabbitMqPublisher;
use crate::relay::{Relay, RelayPolicy};
use crate::routing::RouteTable;
use crate::server::{self, ServerOptions, tls::TlsState};
use crate::store::{Store, StoreError};
use crate::telemetry::{self, http::Probe, metrics::Metrics};
use crate::validate::{SchemaError, SchemaRegistry};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("schemas")]
    Schemas(#[from] SchemaError),
    #[error("routes: {0}")]
    Routes(String),
    #[error("{0}")]
    Sources(String),
    #[error("store")]
    Store(#[from] StoreError),
    #[error("kafka producer")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("http server")]
    Serve(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::server::tls::TlsError),
}

/// The settings a request or a relay pass reads, as one immutable snapshot.
pub struct LiveConfig {
    pub routes: RouteTable,
    pub schemas: SchemaRegistry,
    pub sources: Sources,
    pub body_read_timeout: Duration,
    pub dedup_window: Duration,
    pub relay: RelayPolicy,
}

impl LiveConfig {
    /// Builds everything a config implies that can still fail after parsing (schemas compile,
    /// routes parse). `check-config` runs exactly this.
    pub fn build(config: &Config) -> Result<Self, AppError> {
        Ok(Self {
            routes: RouteTable::from_config(config).map_err(AppError::Routes)?,
            schemas: SchemaRegistry::load(config.schemas.dir.as_deref())?,
            sources: Sources::from_config(config).map_err(AppError::Sources)?,
            body_read_timeout: config.server.timeouts.body_read.get(),
            dedup_window: config.store.dedup_window.get(),
            relay: RelayPolicy::from_config(&config.relay),
        })
    }
}

/// The sockets the daemon serves; bound by the caller so that tests can use port 0.
pub struct Listeners {
    pub ingest: TcpListener,
    /// Needed when `admin.token` is set; ignored otherwise.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds `server.listen`, and `admin.listen` when the admin API is on.
    pub async fn bind(config: &Config) -> std::io::Result<Self> {
        let ingest = bind_listener(config.server.listen, config.server.listen_backlog)?;
        let admin = match config.admin.enabled_token() {
            Some(_) => Some(TcpListener::bind(config.admin.listen).await?),
            None => None,
        };
        Ok(Self { ingest, admin })
    }
}

/// Binds a listening socket that queues up to `backlog` connections for the accept loop
/// (the kernel caps it at `net.core.somaxconn`). `TcpListener::bind` queues 128, so a burst
/// of senders beyond that would have SYNs dropped and wait a second or more to retry.
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// How often DLQ retention (`dlq.max_entries`, `dlq.max_age`) is applied.
const RETENTION_INTERVAL: Duration = Duration::from_secs(30);

/// Runs the daemon on `listeners` until `shutdown` completes, then stops it in order.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    let Listeners { ingest: listener, admin: admin_listener } = listeners;
    let live = Arc::new(ArcSwap::from_pointee(LiveConfig::build(&config)?));
    let metrics = Arc::new(Metrics::new());
    let tls = match &config.server.tls {
        Some(tls) => Some(TlsState::load(tls, Arc::clone(&metrics))?),
        None => None,
    };
    let config_status = initial_status(&config);
    metrics.config_info.with_label_values(&[config.fingerprint.as_str()]).set(1);
    metrics.config_loaded.set((now_ms() / 1000) as i64);
    let store_config = config.store.clone();
    let store_metrics = Arc::clone(&metrics);
    let (store, closer) =
        tokio::task::spawn_blocking(move || Store::open_with_metrics(&store_config, store_metrics))
            .await
            .map_err(|e| StoreError::Unavailable(format!("open task failed: {e}")))??;

    let brokers_cancel = CancellationToken::new();
    let publishers = start_publishers(&config.brokers, &brokers_cancel, &metrics)?;

    let relay_cancel = CancellationToken::new();
    let relay =
        Relay::new(store.clone(), Arc::clone(&live), publishers.clone(), Arc::clone(&metrics));
    let relay_task = tokio::spawn(relay.run(relay_cancel.clone()));

    let http_cancel = CancellationToken::new();
    let probe = Probe {
        store: store.clone(),
        publishers: publishers.clone(),
        live: Arc::clone(&live),
        metrics: Arc::clone(&metrics),
        max_store_bytes: config.store.max_bytes.as_u64(),
    };
    let reloader = config.path.as_ref().map(|path| {
        Arc::new(Reloader::new(
            path,
            &config,
            publishers.clone(),
            Arc::clone(&live),
            Arc::clone(&metrics),
            Arc::clone(&config_status),
        ))
    });
    if let Some(reloader) = &reloader {
        spawn_reload_on_sighup(Arc::clone(reloader), tls.clone(), relay_cancel.clone())?;
        if let Err(error) =
            Arc::clone(reloader).watch(config.schemas.dir.clone(), relay_cancel.clone())
        {
            tracing::warn!(%error, "cannot watch the config files; reload with SIGHUP");
        }
    }
    let metrics_on_admin = config.metrics.listener == MetricsListener::Admin;
    if let Some(token) = config.admin.enabled_token() {
        let listener = admin_listener.ok_or_else(|| {
            std::io::Error::other("admin.token is set but no admin listener was bound")
        })?;
        let admin_state = AdminState {
            store: store.clone(),
            token: token.clone(),
            config_status: Arc::clone(&config_status),
            schemas: admin::schemas::SchemaAdmin {
                dir: config.schemas.dir.clone(),
                live: Arc::clone(&live),
                reloader: reloader.clone(),
            },
        };
        let admin = admin::router(admin_state)
            .merge(telemetry::http::router(probe.clone(), false))
            .merge(admin::metrics_router(probe.clone(), token.clone(), metrics_on_admin));
        let addr = listener.local_addr()?;
        let server = axum::serve(listener, admin)
            .with_graceful_shutdown(http_cancel.clone().cancelled_owned());
        tokio::spawn(async move {
            if let Err(error) = server.await {
                tracing::error!(%error, "admin listener failed");
            }
        });
        tracing::info!(%addr, "admin API listening");
    }
    spawn_retention(&config, store.clone(), Arc::clone(&metrics), relay_cancel.clone());
    spawn_dedup_expiry(store.clone(), Arc::clone(&metrics), relay_cancel.clone());
    if let Some(tls) = &tls
        && let Err(error) = tls.watch(relay_cancel.clone())
    {
        tracing::warn!(%error, "cannot watch the TLS files; reload them with SIGHUP");
    }
    telemetry::http::spawn_backlog_refresh(
        store.clone(),
        Arc::clone(&metrics),
        relay_cancel.clone(),
    );
    let ingest_state =
        IngestState { sink: Arc::new(store.clone()), live, metrics: Arc::clone(&metrics) };
    let router =
        ingest::router(ingest_state).merge(telemetry::http::router(probe, !metrics_on_admin));
    let addr = listener.local_addr()?;
    let options = ServerOptions {
        timeouts: config.server.timeouts,
        max_connections: config.server.max_connections,
        tls: tls.clone(),
    };
    let server =
        server::serve(listener, router, options, Arc::clone(&metrics), http_cancel.clone());
    let mut server_task = tokio::spawn(server);
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "accepting webhooks");
    // The store is open (any repair done) and every listener is bound: tell systemd.
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("accepting webhooks"),
    ]);
    spawn_watchdog(relay_cancel.clone());

    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        result = &mut server_task => {
            tracing::error!(?result, "http server stopped unexpectedly; shutting down");
        }
    }
    let deadline = Instant::now() + config.server.shutdown_timeout.get();
    notify_systemd(&[sd_notify::NotifyState::Stopping]);

    // 1. Stop accepting; requests in flight finish, so their appends commit and get answers.
    http_cancel.cancel();
    if !server_task.is_finished() && tokio::time::timeout_at(deadline, server_task).await.is_err() {
        tracing::warn!("requests still open at the shutdown deadline");
    }
    // 2. The relay finishes its batch (publishes have their own deadlines) and settles it.
    relay_cancel.cancel();
    if tokio::time::timeout_at(deadline, relay_task).await.is_err() {
        tracing::warn!(
            "relay batch still running at the shutdown deadline; it stays in the outbox"
        );
    }
    // 3. Flush Kafka, close RabbitMQ.
    brokers_cancel.cancel();
    for publisher in publishers.all() {
        publisher.close(remaining(deadline)).await;
    }
    // 4. Final durable commit and close of the store file.
    if tokio::time::timeout(remaining(deadline).max(Duration::from_secs(1)), closer.close())
        .await
        .is_err()
    {
        tracing::warn!("store did not close before the deadline");
    }
    drop(store);
    tracing::info!("stopped");
    Ok(())
}

/// `systemctl reload` and `kill -HUP`: reload the config file (instead of SIGHUP's default,
/// which would end the process).
fn spawn_reload_on_sighup(
    reloader: Arc<Reloader>,
    tls: Option<Arc<TlsState>>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
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
    });
    Ok(())
}

/// Applies `dlq.max_entries` / `dlq.max_age` now and every `RETENTION_INTERVAL`.
fn spawn_retention(
    config: &Config,
    store: Store,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let max_entries = config.dlq.max_entries;
    let max_age = config.dlq.max_age.map(|d| d.get());
    if max_entries.is_none() && max_age.is_none() {
        return;
    }
    tokio::spawn(async move {
        loop {
            let older_than = max_age.map(|age| now_ms().saturating_sub(age.as_millis() as u64));
            match store.dlq_expire(max_entries, older_than).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics.dlq_expired.inc_by(n);
                    tracing::info!(expired = n, "DLQ retention removed entries");
                }
                Err(error) => tracing::warn!(%error, "DLQ retention failed; will retry"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RETENTION_INTERVAL) => {}
            }
        }
    });
}

/// How often expired idempotency keys are collected, and how many per commit.
const DEDUP_EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
const DEDUP_EXPIRY_BATCH: usize = 10_000;

/// Removes idempotency keys older than `store.dedup_window`, in bounded commits.
fn spawn_dedup_expiry(store: Store, metrics: Arc<Metrics>, cancel: CancellationToken) {
    tokio::spawn(async move {
        loop {
            loop {
                match store.dedup_expire(now_ms(), DEDUP_EXPIRY_BATCH).await {
                    Ok(n) => {
                        metrics.dedup_expired.inc_by(n);
                        if n < DEDUP_EXPIRY_BATCH as u64 {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "expiring idempotency keys failed; will retry");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(DEDUP_EXPIRY_INTERVAL) => {}
            }
        }
    });
}

/// sd_notify(3); does nothing when not started by systemd (`NOTIFY_SOCKET` unset).
fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        tracing::warn!(%error, "could not notify systemd");
    }
}

/// With `WatchdogSec=` set, pings systemd at half the interval while the runtime is alive, so
/// a wedged daemon is restarted.
fn spawn_watchdog(cancel: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    tokio::spawn(async move {
        loop {
            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval / 2) => {}
            }
        }
    });
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn start_publishers(
    brokers: &BrokersConfig,
    cancel: &CancellationToken,
    metrics: &Arc<Metrics>,
) -> Result<Publishers, AppError> {
    let mut publishers = Publishers::default();
    if let Some(rabbitmq) = &brokers.rabbitmq {
        let connected = Arc::clone(&publishers.connected);
        let p = RabbitMqPublisher::start(rabbitmq, connected, cancel.clone(), Arc::clone(metrics));
        publishers.rabbitmq = Some(p);
    }
    if let Some(kafka) = &brokers.kafka {
        let connected = Arc::clone(&publishers.connected);
        let p = KafkaPublisher::start(kafka, connected, cancel.clone(), Arc::clone(metrics))?;
        publishers.kafka = Some(p);
    }
    Ok(publishers)
}
