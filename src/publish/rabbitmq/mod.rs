//! RabbitMQ output (lapin): publisher confirms, `mandatory`, persistent messages.
//!
//! A message counts as delivered only when the broker acked it *and* did not return it: a
//! mandatory message that reached no queue comes back as a return, which is a failure here.
//! Every confirm has a deadline, and a semaphore bounds how many wait at once. The connection
//! is kept by our own loop with backoff (lapin's auto-recovery is off), going through the
//! cluster's nodes in turn ([`connect`]); a broker that is down at start is normal, and
//! publishes meanwhile fail fast as "not connected". A reload that changes the URLs, the
//! credentials or the TLS files reconnects with the new ones.
//!
//! Many messages are in flight on one channel; which of them a return belongs to is decided
//! by the message itself, not by the confirm lapin attached it to (see [`confirms`]).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ErrorKind, ExchangeKind};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

mod confirms;
mod connect;

use super::health::{Connectivity, Health, Trouble};
use super::{Outgoing, PublishError, Publisher};
use crate::config::{ExchangeConfig, ExchangeType, RabbitMqConfig};
use crate::delivery::{BrokerKind, Target};
use crate::tasks::Tasks;
use crate::telemetry::metrics::Metrics;
use confirms::{Confirmed, Pool, open_confirm_channel};
use connect::Settings;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// Kept short so that a broker back from an outage of any length is found within half a
/// second (a refused connect costs next to nothing; one that hangs has CONNECT_TIMEOUT).
const RECONNECT_MAX: Duration = Duration::from_millis(500);
/// How often the connection loop checks that the connection is still open.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

pub struct RabbitMqPublisher {
    /// The current connection and its idle channels; `None` while disconnected.
    link: ArcSwapOption<Link>,
    /// Exchanges declared on every connect, and again when a reload changes them.
    exchanges: ArcSwap<Vec<ExchangeConfig>>,
    runtime: tokio::runtime::Handle,
    /// Bounds unconfirmed messages: a permit is held from publish until confirm.
    window: Semaphore,
    /// Most messages in one epoch of a channel (see [`super::confirms`]).
    epoch_cap: usize,
    confirm_timeout: Duration,
    /// Where and how to connect; swapped by a reload.
    settings: ArcSwap<Settings>,
    /// Woken when `settings` changed: the connection loop reconnects with the new ones.
    reconfigured: Notify,
    connectivity: Arc<Connectivity>,
}

/// Why the connection loop stopped watching a connection.
enum Ended {
    Lost,
    Reconfigured,
    Cancelled,
}

/// One connection and its confirm-mode channels.
struct Link {
    connection: Connection,
    pool: Arc<Pool>,
}

impl RabbitMqPublisher {
    /// Checks the connection settings a config gives (URLs, TLS files, auth), connecting
    /// nowhere: what `check-config` and a reload refuse.
    pub fn check(config: &RabbitMqConfig) -> Result<(), String> {
        Settings::from_config(config).map(drop)
    }

    /// Starts the connection loop and returns at once; the first connection comes later.
    /// Fails only on settings that cannot work (a URL that does not parse, TLS files that do
    /// not load); an unreachable broker is not an error.
    pub fn start(
        config: &RabbitMqConfig,
        connected: Arc<Notify>,
        tasks: &Tasks,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, String> {
        let publisher = Arc::new(Self {
            link: ArcSwapOption::empty(),
            exchanges: ArcSwap::from_pointee(config.declare.exchanges.clone()),
            runtime: tokio::runtime::Handle::current(),
            window: Semaphore::new(config.max_unconfirmed),
            epoch_cap: config.max_unconfirmed,
            confirm_timeout: config.confirm_timeout.get(),
            settings: ArcSwap::from_pointee(Settings::from_config(config)?),
            reconfigured: Notify::new(),
            connectivity: Connectivity::new(BrokerKind::RabbitMq, metrics),
        });
        let connection = Arc::clone(&publisher).maintain(connected, cancel);
        tasks.spawn("rabbitmq: connection", connection);
        Ok(publisher)
    }

    /// Connects, watches, and reconnects until cancelled: each failed connect moves on to the
    /// next node, and once every node failed the loop waits (exponential backoff).
    async fn maintain(self: Arc<Self>, connected: Arc<Notify>, cancel: CancellationToken) {
        let mut delay = RECONNECT_MIN;
        let mut node = 0;
        while !cancel.is_cancelled() {
            let settings = self.settings.load_full();
            let nodes = settings.nodes();
            let current = &nodes[node % nodes.len()];
            let exchanges = self.exchanges.load_full();
            let attempt = tokio::select! {
                _ = cancel.cancelled() => break,
                r = tokio::time::timeout(CONNECT_TIMEOUT, connect(&settings, current, &exchanges)) => r,
            };
            let attempt =
                attempt.unwrap_or_else(|_| Err((Trouble::Network, "connect timed out".into())));
            let link = match attempt {
                Ok(link) => Arc::new(link),
                Err((trouble, error)) => {
                    self.connectivity.down(trouble, &format!("{}: {error}", current.label));
                    node += 1;
                    if node % nodes.len() == 0 && !self.pause(&mut delay, &cancel).await {
                        break;
                    }
                    continue;
                }
            };
            self.connectivity.up(&current.label);
            delay = RECONNECT_MIN;
            self.link.store(Some(Arc::clone(&link)));
            connected.notify_waiters();
            let lost = match watch(&link.connection, &cancel, &self.reconfigured).await {
                Ended::Cancelled => break, // the link stays for `close`, which ends it cleanly
                Ended::Lost => true,
                Ended::Reconfigured => false,
            };
            self.link.store(None);
            if lost {
                let error = format!("{}: connection lost", current.label);
                self.connectivity.down(Trouble::Network, &error);
            } else {
                tracing::info!(
                    destination = "rabbitmq",
                    "connection settings changed; reconnecting with the new ones"
                );
                node = 0;
                // Publishes in flight on the old connection keep it until they are confirmed
                // (or time out and are retried); then it is closed.
                let grace = self.confirm_timeout;
                self.runtime.spawn(async move {
                    tokio::time::sleep(grace).await;
                    close_link(&link, grace).await;
                });
            }
        }
    }

    /// Waits `delay` (doubling it for next time) or until the settings change; false on
    /// cancel.
    async fn pause(&self, delay: &mut Duration, cancel: &CancellationToken) -> bool {
        let wait = *delay;
        *delay = (*delay * 2).min(RECONNECT_MAX);
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = self.reconfigured.notified() => true,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    async fn publish_confirmed(
        &self,
        message: Outgoing<'_>,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), PublishError> {
        let Some(link) = self.link.load_full() else {
            return Err(PublishError::not_connected(BrokerKind::RabbitMq));
        };
        let permit = self.window.acquire().await.expect("the window semaphore is never closed");
        let joining = link.pool.join(&link.connection, exchange, self.epoch_cap);
        let reservation = match tokio::time::timeout(self.confirm_timeout, joining).await {
            Ok(Ok(reservation)) => reservation,
            Ok(Err(error)) => return Err(classify(&error)),
            Err(_) => return Err(PublishError::transient("no channel opened in time")),
        };
        let options = BasicPublishOptions { mandatory: true, immediate: false };
        let id = message.event.id().to_string();
        let confirmed = tokio::time::timeout(self.confirm_timeout, async {
            reservation
                .channel()
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    &message.payload(),
                    properties(&message, &id),
                )
                .await?
                .await
        })
        .await;
        drop(permit);
        let (confirmed, carried) = match confirmed {
            Err(_) => {
                let waited = self.confirm_timeout;
                let error =
                    PublishError::transient(format!("no publisher confirm within {waited:?}"));
                (Confirmed::Failed(error), None)
            }
            Ok(Err(error)) => (Confirmed::Failed(classify(&error)), None),
            Ok(Ok(Confirmation::Ack(carried))) => (Confirmed::Ack, carried),
            Ok(Ok(Confirmation::Nack(carried))) => (Confirmed::Nack, carried),
            Ok(Ok(Confirmation::NotRequested)) => {
                let error = PublishError::transient("channel is not in confirm mode");
                (Confirmed::Failed(error), None)
            }
        };
        let own = (exchange.to_owned(), routing_key.to_owned(), id);
        let verdict = reservation.record(own, confirmed, carried.as_ref().map(confirms::returned));
        verdict.await.unwrap_or_else(|_| Err(PublishError::transient("the confirm epoch ended")))
    }
}

/// Returns when the connection is gone, the settings changed, or on cancel. Channels the
/// broker closed (e.g. after a publish to a missing exchange) are dropped as they are found
/// and replaced on demand.
async fn watch(conn: &Connection, cancel: &CancellationToken, reconfigured: &Notify) -> Ended {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ended::Cancelled,
            _ = reconfigured.notified() => return Ended::Reconfigured,
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
        if !conn.status().connected() {
            return Ended::Lost;
        }
    }
}

/// Closes a connection's channels, then the connection (closing the connection under open
/// channels makes lapin log an error for a normal close).
async fn close_link(link: &Link, deadline: Duration) {
    let channels = link.pool.drain();
    let closing = futures_util::future::join_all(
        channels.iter().map(|c| c.close(200, "orchestron closing".into())),
    );
    let _ = tokio::time::timeout(deadline, closing).await;
    let closing = link.connection.close(200, "orchestron closing".into());
    if tokio::time::timeout(deadline, closing).await.is_err() {
        tracing::warn!(destination = "rabbitmq", "RabbitMQ close timed out");
    }
}

impl Publisher for RabbitMqPublisher {
    fn publish<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            match message.target {
                Target::RabbitMq { exchange, routing_key, .. } => {
                    self.publish_confirmed(message, exchange, routing_key).await
                }
                other => Err(PublishError::permanent(format!(
                    "RabbitMQ publisher cannot publish to {}",
                    other.label()
                ))),
            }
        })
    }

    fn reload(&self, brokers: &crate::config::BrokersConfig) {
        let Some(config) = &brokers.rabbitmq else { return };
        match Settings::from_config(config) {
            Ok(settings) if settings.fingerprint != self.settings.load().fingerprint => {
                self.settings.store(Arc::new(settings));
                self.reconfigured.notify_one();
            }
            Ok(_) => {}
            Err(error) => tracing::error!(
                destination = "rabbitmq", %error,
                "the reloaded connection settings do not load; keeping the previous ones"
            ),
        }
        let wanted = &config.declare.exchanges;
        if **self.exchanges.load() == *wanted {
            return;
        }
        self.exchanges.store(Arc::new(wanted.clone()));
        let Some(link) = self.link.load_full() else { return };
        let exchanges = wanted.clone();
        self.runtime.spawn(async move {
            let declared = async {
                let channel = link.connection.create_channel().await?;
                let result = declare(&channel, &exchanges).await;
                let _ = channel.close(200, "declared".into()).await;
                result
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, declared).await {
                Ok(Ok(())) => tracing::info!(
                    destination = "rabbitmq",
                    exchanges = exchanges.len(),
                    "declared the reloaded exchanges"
                ),
                Ok(Err(error)) => tracing::error!(
                    destination = "rabbitmq", %error,
                    "cannot declare the reloaded exchanges"
                ),
                Err(_) => tracing::error!(
                    destination = "rabbitmq",
                    "declaring the reloaded exchanges timed out"
                ),
            }
        });
    }

    fn is_connected(&self) -> bool {
        self.link.load().as_ref().is_some_and(|l| l.connection.status().connected())
    }

    fn health(&self) -> Health {
        let mut health = self.connectivity.health();
        health.connected &= self.is_connected();
        health
    }

    fn close(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(link) = self.link.swap(None) {
                close_link(&link, deadline).await;
            }
        })
    }
}

/// Connects to `node`, declares the exchanges and keeps the first confirm channel.
async fn connect(
    settings: &Settings,
    node: &connect::Node,
    exchanges: &[ExchangeConfig],
) -> Result<Link, (Trouble, String)> {
    let (conn, handshake) = settings.connect(node, "orchestron").await?;
    let ready = async {
        let channel = open_confirm_channel(&conn).await?;
        declare(&channel, exchanges).await?;
        lapin::Result::Ok(channel)
    };
    match ready.await {
        Ok(channel) => {
            handshake.finished();
            let pool = Arc::new(Pool::default());
            pool.give_back(channel);
            Ok(Link { connection: conn, pool })
        }
        Err(error) => Err(connect::classify(&error, "")),
    }
}

async fn declare(channel: &Channel, exchanges: &[ExchangeConfig]) -> lapin::Result<()> {
    for exchange in exchanges {
        let kind = match exchange.kind {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Headers => ExchangeKind::Headers,
        };
        let options = ExchangeDeclareOptions { durable: exchange.durable, ..Default::default() };
        channel
            .exchange_declare(exchange.name.as_str().into(), kind, options, FieldTable::default())
            .await?;
    }
    Ok(())
}

/// AMQP properties: persistent, typed, with the CloudEvents attributes as headers.
fn properties(message: &Outgoing<'_>, id: &str) -> BasicProperties {
    let event = message.event;
    let mut headers = FieldTable::default();
    for (name, value) in message.headers() {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(message.content_type().into())
        .with_message_id(id.into())
        .with_type(event.event_type().as_str().into())
        .with_timestamp(event.received_at_ms() / 1000)
        .with_app_id("orchestron".into())
        .with_headers(headers)
}

/// Broker refusals that no retry fixes are permanent; connection trouble is transient.
fn classify(error: &lapin::Error) -> PublishError {
    let permanent = match error.kind() {
        ErrorKind::ProtocolError(amqp) => matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(
                AMQPSoftError::NOTFOUND
                    | AMQPSoftError::ACCESSREFUSED
                    | AMQPSoftError::CONTENTTOOLARGE
            )
        ),
        _ => false,
    };
    if permanent {
        PublishError::permanent(format!("RabbitMQ refused the message: {error}"))
    } else {
        PublishError::transient(format!("RabbitMQ publish failed: {error}"))
    }
}
