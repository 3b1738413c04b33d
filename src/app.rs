//! The composition root: builds every stage from the config, spawns every long-lived task on
//! one [`Tasks`] tracker, and shuts them down in pipeline order (stop accepting → commit
//! pending appends → finish the relay batch → flush Kafka → close RabbitMQ → close the store)
//! under `server.shutdown_timeout`, naming whatever is still running at the deadline.
//!
//! Nothing imports this module but `main` (docs/architecture.md).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::probe::{self, Probe};
use crate::admin::{self, AdminState};
use crate::config::{BrokersConfig, Config, ConfigError, MetricsListener};
use crate::event::now_ms;
use crate::ingest::{self, IngestState};
use crate::live::reload::reload_on_sighup;
use crate::live::{LiveConfig, Reloader, initial_status};
use crate::publish::Publishers;
use crate::publish::kafka::KafkaPublisher;
use crate::publish::rabbitmq::RabbitMqPublisher;
use crate::relay::Relay;
use crate::server::{self, ServerOptions, bind_listener, tls::TlsState};
use crate::store::{Store, StoreCloser, StoreError};
use crate::sync::{Fleet, SyncError};
use crate::systemd;
use crate::tasks::Tasks;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otlp::{CurrentSettings, Spans};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("store")]
    Store(#[from] StoreError),
    /// A broker's connection settings do not work (caught by the config check first).
    #[error("brokers: {0}")]
    Broker(String),
    #[error("http server")]
    Serve(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::server::tls::TlsError),
    #[error("fleet sync: {0}")]
    Sync(#[from] SyncError),
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

/// Runs the daemon on `listeners` until `shutdown` completes, then stops it in order.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    let mut app = App::start(config, listeners).await?;
    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        result = &mut app.ingest_server => {
            tracing::error!(?result, "http server stopped unexpectedly; shutting down");
        }
    }
    app.stop().await;
    Ok(())
}

/// A running daemon: its tasks, and the handles shutdown needs, in pipeline order.
struct App {
    tasks: Tasks,
    shutdown_timeout: Duration,
    /// Stops both listeners; requests in flight finish.
    http: CancellationToken,
    ingest_server: JoinHandle<()>,
    admin_server: Option<JoinHandle<()>>,
    relay_stop: CancellationToken,
    relay: JoinHandle<()>,
    brokers_stop: CancellationToken,
    publishers: Publishers,
    closer: StoreCloser,
    /// Watchers, the watchdog and gauge refreshes: stopped last.
    background: CancellationToken,
}

/// What the stages share once the store is open.
struct Core {
    store: Store,
    live: Arc<ArcSwap<LiveConfig>>,
    metrics: Arc<Metrics>,
    publishers: Publishers,
    tls: Option<Arc<TlsState>>,
    fleet: Option<Fleet>,
    spans: Spans,
}

impl App {
    /// Builds what can fail (config, TLS, store, Kafka producer), then spawns every task.
    async fn start(config: Config, listeners: Listeners) -> Result<App, AppError> {
        let tasks = Tasks::new();
        let live = Arc::new(ArcSwap::from_pointee(LiveConfig::build(&config)?));
        let metrics = Arc::new(Metrics::new());
        let tls = match &config.server.tls {
            Some(tls) => Some(TlsState::load(tls, Arc::clone(&metrics))?),
            None => None,
        };
        metrics.config_info.with_label_values(&[config.fingerprint.as_str()]).set(1);
        metrics.config_loaded.set((now_ms() / 1000) as i64);
        let (store, closer) = open_store(&config, &metrics).await?;
        store.start_housekeeping(&tasks, &config.dlq);
        let brokers_stop = CancellationToken::new();
        let publishers = start_publishers(&config.brokers, &tasks, &brokers_stop, &metrics)?;
        let relay_stop = CancellationToken::new();
        // Heartbeats end with the relay, before the store closes (they read its size). The
        // fleet starts first: the relay asks it which events it may publish.
        let fleet = match &config.sync {
            Some(sync) => {
                let stop = relay_stop.clone();
                Some(Fleet::start(sync, &store, &tasks, stop, Arc::clone(&metrics)).await?)
            }
            None => {
                // Sync was turned off: a feed kept from before would only grow, and events
                // held for the fleet's ruling on their key are published on local dedup.
                store.stop_change_feed().await?;
                let released = store.release_all_key_holds(now_ms()).await?;
                if released > 0 {
                    tracing::warn!(
                        events = released,
                        "fleet sync is off: events held for the fleet's ruling on their \
                         idempotency key are published on local dedup alone"
                    );
                }
                None
            }
        };
        // Stopped last, so that the relay's last spans still go out.
        let background = CancellationToken::new();
        let settings: CurrentSettings = {
            let live = Arc::clone(&live);
            Arc::new(move || live.load().otlp.clone())
        };
        let (spans, exporter) = Spans::start(settings, Arc::clone(&metrics), background.clone());
        tasks.spawn("span export", exporter);
        let relay = Relay::new(
            store.clone(),
            Arc::clone(&live),
            publishers.clone(),
            Arc::clone(&metrics),
            tasks.clone(),
        )
        .with_fleet(fleet.clone())
        .with_spans(spans.clone());
        let relay = tasks.spawn("relay", relay.run(relay_stop.clone()));
        let core = Core { store, live, metrics, publishers: publishers.clone(), tls, fleet, spans };
        let http = CancellationToken::new();
        let (ingest_server, admin_server) =
            serve(&config, listeners, &core, &tasks, &http, &background)?;
        systemd::ready("accepting webhooks");
        if let Some(watchdog) = systemd::watchdog(background.clone()) {
            tasks.spawn("systemd watchdog", watchdog);
        }
        Ok(App {
            tasks,
            shutdown_timeout: config.server.shutdown_timeout.get(),
            http,
            ingest_server,
            admin_server,
            relay_stop,
            relay,
            brokers_stop,
            publishers,
            closer,
            background,
        })
    }

    /// Stops every stage in pipeline order, all under one deadline.
    async fn stop(self) {
        let deadline = Instant::now() + self.shutdown_timeout;
        systemd::stopping();
        // 1. Stop accepting; requests in flight finish, so their appends commit and get answers.
        self.http.cancel();
        let servers = async {
            let _ = self.ingest_server.await;
            if let Some(admin) = self.admin_server {
                let _ = admin.await;
            }
        };
        if tokio::time::timeout_at(deadline, servers).await.is_err() {
            tracing::warn!("requests still open at the shutdown deadline");
        }
        // 2. The relay finishes its batch (publishes have their own deadlines) and settles it.
        self.relay_stop.cancel();
        if tokio::time::timeout_at(deadline, self.relay).await.is_err() {
            tracing::warn!(
                "relay batch still running at the shutdown deadline; it stays in the outbox"
            );
        }
        // 3. Flush Kafka, close RabbitMQ.
        self.brokers_stop.cancel();
        for publisher in self.publishers.all() {
            publisher.close(remaining(deadline)).await;
        }
        // 4. Final durable commit and close of the store file (which ends its housekeeping).
        let grace = remaining(deadline).max(Duration::from_secs(1));
        if tokio::time::timeout(grace, self.closer.close()).await.is_err() {
            tracing::warn!("store did not close before the deadline");
        }
        // 5. Everything else, then a word on what did not end in time.
        self.background.cancel();
        let late = self.tasks.wait_until(deadline.max(Instant::now())).await;
        if late.is_empty() {
            tracing::info!("stopped");
        } else {
            tracing::warn!(tasks = late.join(", "), "tasks still running at the shutdown deadline");
        }
    }
}

/// Opens the store off the async workers (a repair after a crash reads the whole file).
async fn open_store(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<(Store, StoreCloser), StoreError> {
    let store_config = config.store.clone();
    let metrics = Arc::clone(metrics);
    tokio::task::spawn_blocking(move || Store::open_with_metrics(&store_config, metrics))
        .await
        .map_err(|e| StoreError::Task(format!("open: {e}")))?
}

/// Spawns the listeners (and the reloader and gauges they report): the ingest server's and
/// the admin server's tasks.
fn serve(
    config: &Config,
    listeners: Listeners,
    core: &Core,
    tasks: &Tasks,
    http: &CancellationToken,
    background: &CancellationToken,
) -> Result<(JoinHandle<()>, Option<JoinHandle<()>>), AppError> {
    let Listeners { ingest: ingest_listener, admin: admin_listener } = listeners;
    let probe = Probe {
        store: core.store.clone(),
        publishers: core.publishers.clone(),
        live: Arc::clone(&core.live),
        metrics: Arc::clone(&core.metrics),
        max_store_bytes: config.store.max_bytes.as_u64(),
        fleet: core.fleet.clone(),
    };
    tasks.spawn("outbox backlog gauge", probe.clone().refresh_backlog(background.clone()));
    let reloader = start_reloading(config, core, tasks, background);
    let metrics_on_admin = config.metrics.listener == MetricsListener::Admin;
    let admin_server = match (config.admin.enabled_token(), admin_listener) {
        (None, _) => None,
        (Some(_), None) => {
            let message = "admin.token is set but no admin listener was bound";
            return Err(std::io::Error::other(message).into());
        }
        (Some(token), Some(listener)) => {
            let state = AdminState {
                store: core.store.clone(),
                token: token.clone(),
                config_status: reloader.status(),
                schemas: admin::schemas::SchemaAdmin {
                    dir: config.schemas.dir.clone(),
                    live: Arc::clone(&core.live),
                    reloader: reloader.file.clone(),
                },
                fleet: core.fleet.clone(),
            };
            let router = admin::router(state)
                .merge(probe::router(probe.clone(), false))
                .merge(admin::metrics_router(probe.clone(), token.clone(), metrics_on_admin))
                .merge(admin::console::router());
            Some(spawn_admin(listener, router, tasks, http)?)
        }
    };
    let state = IngestState {
        sink: Arc::new(core.store.clone()),
        live: Arc::clone(&core.live),
        metrics: Arc::clone(&core.metrics),
        fleet: core.fleet.clone(),
        spans: core.spans.clone(),
    };
    let router = ingest::router(state).merge(probe::router(probe, !metrics_on_admin));
    let addr = ingest_listener.local_addr()?;
    let options = ServerOptions {
        timeouts: config.server.timeouts,
        max_connections: config.server.max_connections,
        tls: core.tls.clone(),
    };
    let metrics = Arc::clone(&core.metrics);
    let server = server::serve(ingest_listener, router, options, metrics, http.clone());
    let ingest_server = tasks.spawn("ingest listener", server);
    let scheme = if core.tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "accepting webhooks");
    Ok((ingest_server, admin_server))
}

/// Serves the admin API on `listener` until `http` is cancelled.
fn spawn_admin(
    listener: TcpListener,
    router: axum::Router,
    tasks: &Tasks,
    http: &CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    let addr = listener.local_addr()?;
    let server =
        axum::serve(listener, router).with_graceful_shutdown(http.clone().cancelled_owned());
    tracing::info!(%addr, "admin API listening");
    Ok(tasks.spawn("admin listener", async move {
        if let Err(error) = server.await {
            tracing::error!(%error, "admin listener failed");
        }
    }))
}

/// The reloader (when the config came from a file) and how its status is shared.
struct Reloading {
    file: Option<Arc<Reloader>>,
    status: crate::live::SharedStatus,
}

impl Reloading {
    fn status(&self) -> crate::live::SharedStatus {
        Arc::clone(&self.status)
    }
}

/// Reload on SIGHUP and on changes to the config file, the schema directory and the TLS
/// files.
fn start_reloading(
    config: &Config,
    core: &Core,
    tasks: &Tasks,
    stop: &CancellationToken,
) -> Reloading {
    let status = initial_status(config);
    let file = config.path.as_ref().map(|path| {
        Arc::new(Reloader::new(
            path,
            config,
            core.publishers.clone(),
            Arc::clone(&core.live),
            Arc::clone(&core.metrics),
            Arc::clone(&status),
        ))
    });
    if let Some(reloader) = &file {
        match reload_on_sighup(Arc::clone(reloader), core.tls.clone(), stop.clone()) {
            Ok(hangups) => drop(tasks.spawn("reload on SIGHUP", hangups)),
            Err(error) => tracing::warn!(%error, "cannot handle SIGHUP; reload by file change"),
        }
        match Arc::clone(reloader).watch(config.schemas.dir.clone(), stop.clone()) {
            Ok(watch) => drop(tasks.spawn("config file watcher", watch)),
            Err(error) => {
                tracing::warn!(%error, "cannot watch the config files; reload with SIGHUP")
            }
        }
    }
    if let Some(tls) = &core.tls {
        match tls.watch(stop.clone()) {
            Ok(watch) => drop(tasks.spawn("TLS file watcher", watch)),
            Err(error) => {
                tracing::warn!(%error, "cannot watch the TLS files; reload them with SIGHUP")
            }
        }
    }
    Reloading { file, status }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn start_publishers(
    brokers: &BrokersConfig,
    tasks: &Tasks,
    stop: &CancellationToken,
    metrics: &Arc<Metrics>,
) -> Result<Publishers, AppError> {
    let mut publishers = Publishers::default();
    if let Some(rabbitmq) = &brokers.rabbitmq {
        let connected = Arc::clone(&publishers.connected);
        let p =
            RabbitMqPublisher::start(rabbitmq, connected, tasks, stop.clone(), Arc::clone(metrics))
                .map_err(AppError::Broker)?;
        publishers.rabbitmq = Some(p);
    }
    if let Some(kafka) = &brokers.kafka {
        let connected = Arc::clone(&publishers.connected);
        let p = KafkaPublisher::start(kafka, connected, tasks, stop.clone(), Arc::clone(metrics))
            .map_err(AppError::Broker)?;
        publishers.kafka = Some(p);
    }
    Ok(publishers)
}
