//! Wiring: builds every stage from the config, runs them, and shuts them down in pipeline
//! order (stop accepting → commit pending appends → finish the relay batch → flush Kafka →
//! close RabbitMQ → close the store) under one deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokersConfig, Config, ConfigError, Secret};
use crate::ingest::{self, IngestState};
use crate::publish::Publishers;
use crate::publish::kafka::KafkaPublisher;
use crate::publish::rabbitmq::RabbitMqPublisher;
use crate::relay::{Relay, RelayPolicy};
use crate::routing::RouteTable;
use crate::store::{Store, StoreError};
use crate::validate::{SchemaError, SchemaRegistry};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("schemas: {0}")]
    Schemas(#[from] SchemaError),
    #[error("routes: {0}")]
    Routes(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
}

/// The settings a request or a relay pass reads, as one immutable snapshot.
pub struct LiveConfig {
    pub routes: RouteTable,
    pub schemas: SchemaRegistry,
    pub api_keys: Vec<Secret>,
    pub max_body_bytes: u64,
    pub relay: RelayPolicy,
}

impl LiveConfig {
    /// Builds everything a config implies that can still fail after parsing (schemas compile,
    /// routes parse). `check-config` runs exactly this.
    pub fn build(config: &Config) -> Result<Self, AppError> {
        Ok(Self {
            routes: RouteTable::from_config(config).map_err(AppError::Routes)?,
            schemas: SchemaRegistry::load(config.schemas.dir.as_deref())?,
            api_keys: config.sources.default.api_keys.clone(),
            max_body_bytes: config.server.max_body_bytes.as_u64(),
            relay: RelayPolicy::from_config(&config.relay),
        })
    }
}

/// Runs the daemon on `listener` until `shutdown` completes, then stops it in order.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    let live = Arc::new(ArcSwap::from_pointee(LiveConfig::build(&config)?));
    let store_config = config.store.clone();
    let (store, closer) =
        tokio::task::spawn_blocking(move || Store::open(&store_config))
            .await
            .map_err(|e| StoreError::Unavailable(format!("open task failed: {e}")))??;

    let brokers_cancel = CancellationToken::new();
    let publishers = start_publishers(&config.brokers, &brokers_cancel)?;

    let relay_cancel = CancellationToken::new();
    let relay = Relay::new(store.clone(), Arc::clone(&live), publishers.clone());
    let relay_task = tokio::spawn(relay.run(relay_cancel.clone()));

    let http_cancel = CancellationToken::new();
    let router = ingest::router(IngestState { sink: Arc::new(store.clone()), live });
    let addr = listener.local_addr()?;
    let server =
        axum::serve(listener, router).with_graceful_shutdown(http_cancel.clone().cancelled_owned());
    let mut server_task = tokio::spawn(async move { server.await });
    tracing::info!(%addr, "accepting webhooks");

    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        result = &mut server_task => {
            tracing::error!(?result, "http server stopped unexpectedly; shutting down");
        }
    }
    let deadline = Instant::now() + config.server.shutdown_timeout.get();

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

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn start_publishers(
    brokers: &BrokersConfig,
    cancel: &CancellationToken,
) -> Result<Publishers, AppError> {
    let mut publishers = Publishers::default();
    if let Some(rabbitmq) = &brokers.rabbitmq {
        let connected = Arc::clone(&publishers.connected);
        publishers.rabbitmq = Some(RabbitMqPublisher::start(rabbitmq, connected, cancel.clone()));
    }
    if let Some(kafka) = &brokers.kafka {
        let connected = Arc::clone(&publishers.connected);
        publishers.kafka = Some(KafkaPublisher::start(kafka, connected, cancel.clone())?);
    }
    Ok(publishers)
}
