//! RabbitMQ output (lapin): publisher confirms, `mandatory`, persistent messages.
//!
//! A message counts as delivered only when the broker acked it *and* did not return it: a
//! mandatory message that reached no queue comes back as a return, which is a failure here.
//! Every confirm has a deadline, and a semaphore bounds how many wait at once. The connection
//! is kept by our own loop with backoff (lapin's auto-recovery is off); a broker that is down
//! at start is normal, and publishes meanwhile fail fast as "not connected".

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{Outgoing, PublishError, Publisher};
use crate::config::{ExchangeConfig, ExchangeType, RabbitMqConfig};
use crate::routing::{BrokerKind, Target};
use crate::telemetry::metrics::Metrics;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RECONNECT_MIN: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How often the connection loop checks that the connection and channel are still open.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

pub struct RabbitMqPublisher {
    /// The confirm-mode channel publishes go to; `None` while disconnected.
    channel: ArcSwapOption<Channel>,
    connection: ArcSwapOption<Connection>,
    /// Bounds unconfirmed messages: a permit is held from publish until confirm.
    window: Semaphore,
    confirm_timeout: Duration,
}

impl RabbitMqPublisher {
    /// Starts the connection loop and returns at once; the first connection comes later.
    pub fn start(
        config: &RabbitMqConfig,
        connected: Arc<Notify>,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let publisher = Arc::new(Self {
            channel: ArcSwapOption::empty(),
            connection: ArcSwapOption::empty(),
            window: Semaphore::new(config.max_unconfirmed),
            confirm_timeout: config.confirm_timeout.get(),
        });
        let url = config.url.expose().to_owned();
        let exchanges = config.declare.exchanges.clone();
        tokio::spawn(Arc::clone(&publisher).maintain(url, exchanges, connected, cancel, metrics));
        publisher
    }

    /// Connects, watches, and reconnects with exponential backoff until cancelled.
    async fn maintain(
        self: Arc<Self>,
        url: String,
        exchanges: Vec<ExchangeConfig>,
        connected: Arc<Notify>,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
    ) {
        let mut delay = RECONNECT_MIN;
        while !cancel.is_cancelled() {
            let attempt = tokio::select! {
                _ = cancel.cancelled() => break,
                r = tokio::time::timeout(CONNECT_TIMEOUT, connect(&url, &exchanges)) => r,
            };
            match attempt {
                Ok(Ok((conn, channel))) => {
                    tracing::info!(destination = "rabbitmq", "connected to RabbitMQ");
                    metrics.broker_reconnects.with_label_values(&["rabbitmq"]).inc();
                    delay = RECONNECT_MIN;
                    let conn = Arc::new(conn);
                    self.connection.store(Some(Arc::clone(&conn)));
                    self.channel.store(Some(Arc::new(channel)));
                    connected.notify_waiters();
                    self.watch(&conn, &cancel).await;
                    self.channel.store(None);
                    if cancel.is_cancelled() {
                        break;
                    }
                    tracing::warn!(
                        destination = "rabbitmq",
                        "lost the RabbitMQ connection; reconnecting"
                    );
                    self.connection.store(None);
                }
                Ok(Err(error)) => {
                    tracing::warn!(destination = "rabbitmq", %error, retry_in_ms = delay.as_millis() as u64, "cannot connect to RabbitMQ");
                }
                Err(_) => {
                    tracing::warn!(destination = "rabbitmq", "RabbitMQ connect timed out");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RECONNECT_MAX);
        }
    }

    /// Returns when the connection is gone (or on cancel). A channel closed by the broker
    /// (e.g. after publishing to a missing exchange) is replaced on the same connection.
    async fn watch(&self, conn: &Connection, cancel: &CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
            if !conn.status().connected() {
                return;
            }
            let channel_open = self.channel.load().as_ref().is_some_and(|c| c.status().connected());
            if !channel_open {
                match open_confirm_channel(conn).await {
                    Ok(channel) => {
                        tracing::info!(destination = "rabbitmq", "reopened RabbitMQ channel");
                        self.channel.store(Some(Arc::new(channel)));
                    }
                    Err(error) => {
                        tracing::warn!(destination = "rabbitmq", %error, "cannot reopen channel");
                        return;
                    }
                }
            }
        }
    }

    async fn publish_confirmed(
        &self,
        message: Outgoing<'_>,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), PublishError> {
        let Some(channel) = self.channel.load_full() else {
            return Err(PublishError::not_connected(BrokerKind::RabbitMq));
        };
        let _permit = self.window.acquire().await.expect("the window semaphore is never closed");
        let options = BasicPublishOptions { mandatory: true, immediate: false };
        let confirmed = tokio::time::timeout(self.confirm_timeout, async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    &message.payload(),
                    properties(&message),
                )
                .await?
                .await
        })
        .await;
        match confirmed {
            Err(_) => Err(PublishError::transient(format!(
                "no publisher confirm within {:?}",
                self.confirm_timeout
            ))),
            Ok(Err(error)) => Err(classify(&error)),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)))) => {
                Err(PublishError::unroutable(format!(
                    "unroutable: the broker returned the message ({} {}); no queue is bound \
                     for routing key {routing_key:?} on exchange {exchange:?}",
                    returned.reply_code, returned.reply_text
                )))
            }
            Ok(Ok(Confirmation::Nack(None))) => {
                Err(PublishError::transient("the broker nacked the message"))
            }
            Ok(Ok(Confirmation::NotRequested)) => {
                Err(PublishError::transient("channel is not in confirm mode"))
            }
        }
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

    fn is_connected(&self) -> bool {
        self.channel.load().as_ref().is_some_and(|c| c.status().connected())
    }

    fn close(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // The channel first: closing the connection under an open channel makes lapin log
            // an error for a normal shutdown.
            if let Some(channel) = self.channel.swap(None) {
                let closing = channel.close(200, "orchestron shutting down".into());
                let _ = tokio::time::timeout(deadline, closing).await;
            }
            if let Some(conn) = self.connection.swap(None) {
                let closing = conn.close(200, "orchestron shutting down".into());
                if tokio::time::timeout(deadline, closing).await.is_err() {
                    tracing::warn!(destination = "rabbitmq", "RabbitMQ close timed out");
                }
            }
        })
    }
}

async fn connect(url: &str, exchanges: &[ExchangeConfig]) -> lapin::Result<(Connection, Channel)> {
    let properties = ConnectionProperties::default().with_connection_name("orchestron".into());
    let conn = Connection::connect(url, properties).await?;
    let channel = open_confirm_channel(&conn).await?;
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
    Ok((conn, channel))
}

async fn open_confirm_channel(conn: &Connection) -> lapin::Result<Channel> {
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(channel)
}

/// AMQP properties: persistent, typed, with the CloudEvents attributes as headers.
fn properties(message: &Outgoing<'_>) -> BasicProperties {
    let event = message.event;
    let mut headers = FieldTable::default();
    for (name, value) in message.headers() {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    }
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(message.content_type().into())
        .with_message_id(event.id().to_string().into())
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
