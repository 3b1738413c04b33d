//! Kafka output (rdkafka): idempotent producer, `acks=all`, delivery reports drive settling.
//!
//! The producer is idempotent, so librdkafka's own retries never duplicate or reorder within a
//! partition. A send resolves with the delivery report; a timed-out message is "possibly
//! persisted" and is retried by the relay (a duplicate that consumers drop by `ce_id`). After a
//! fatal producer error the producer is replaced by a fresh one. A background probe fetches
//! cluster metadata to know whether the cluster is reachable, so that while it is down the
//! relay defers Kafka events instead of burning attempts on timeouts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Outgoing, PublishError, Publisher};
use crate::config::KafkaConfig;
use crate::delivery::{BrokerKind, Target};
use crate::tasks::Tasks;
use crate::telemetry::metrics::Metrics;

/// How long a send may wait for room in librdkafka's local queue before failing (transient).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const PROBE_WHILE_DOWN: Duration = Duration::from_secs(1);
const PROBE_WHILE_UP: Duration = Duration::from_secs(10);

pub struct KafkaPublisher {
    producer: ArcSwap<FutureProducer>,
    config: ClientConfig,
    reachable: AtomicBool,
}

impl KafkaPublisher {
    /// Creates the producer and starts the reachability probe. Fails only on a bad config
    /// (e.g. an unknown librdkafka property); an unreachable cluster is not an error.
    pub fn start(
        config: &KafkaConfig,
        connected: Arc<Notify>,
        tasks: &Tasks,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, KafkaError> {
        let client_config = client_config(config);
        let producer: FutureProducer = client_config.create()?;
        let publisher = Arc::new(Self {
            producer: ArcSwap::from_pointee(producer),
            config: client_config,
            reachable: AtomicBool::new(false),
        });
        tasks.spawn(
            "kafka: reachability probe",
            Arc::clone(&publisher).probe(connected, cancel, metrics),
        );
        Ok(publisher)
    }

    async fn probe(
        self: Arc<Self>,
        connected: Arc<Notify>,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
    ) {
        loop {
            let producer = self.producer.load_full();
            let reachable = tokio::task::spawn_blocking(move || {
                producer.client().fetch_metadata(None, PROBE_TIMEOUT).is_ok()
            })
            .await
            .unwrap_or(false);
            let was = self.reachable.swap(reachable, Ordering::Relaxed);
            if reachable && !was {
                tracing::info!(destination = "kafka", "Kafka cluster reachable");
                metrics.broker_reconnects.with_label_values(&["kafka"]).inc();
                connected.notify_waiters();
            } else if !reachable && was {
                tracing::warn!(destination = "kafka", "Kafka cluster unreachable");
            }
            let wait = if reachable { PROBE_WHILE_UP } else { PROBE_WHILE_DOWN };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn send(
        &self,
        message: Outgoing<'_>,
        topic: &str,
        key: Option<&[u8]>,
        partition: Option<i32>,
    ) -> Result<(), PublishError> {
        let event = message.event;
        if !self.reachable.load(Ordering::Relaxed) {
            return Err(PublishError::not_connected(BrokerKind::Kafka));
        }
        let producer = self.producer.load_full();
        let mut headers = OwnedHeaders::new_with_capacity(6);
        for (name, value) in message.headers() {
            headers = headers.insert(Header { key: name, value: Some(value.as_str()) });
        }
        let payload = message.payload();
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload.as_ref())
            .headers(headers)
            .timestamp(event.received_at_ms() as i64);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        match producer.send(record, Timeout::After(QUEUE_TIMEOUT)).await {
            Ok(_) => Ok(()),
            Err((error, _)) => {
                if let Some((code, reason)) = producer.client().fatal_error() {
                    self.recreate(&producer, code, &reason);
                }
                Err(classify(&error))
            }
        }
    }

    /// Replaces a producer that hit a fatal error (only once, however many sends saw it).
    fn recreate(&self, failed: &Arc<FutureProducer>, code: RDKafkaErrorCode, reason: &str) {
        if !Arc::ptr_eq(&self.producer.load(), failed) {
            return;
        }
        tracing::error!(
            destination = "kafka",
            ?code,
            reason,
            "fatal Kafka producer error; recreating the producer"
        );
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                self.producer.compare_and_swap(failed, Arc::new(fresh));
            }
            Err(error) => {
                tracing::error!(destination = "kafka", %error, "cannot recreate producer")
            }
        }
    }
}

impl Publisher for KafkaPublisher {
    fn publish<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            match message.target {
                Target::Kafka { topic, key, partition, .. } => {
                    self.send(message, topic, key.as_deref(), *partition).await
                }
                other => Err(PublishError::permanent(format!(
                    "Kafka publisher cannot publish to {}",
                    other.label()
                ))),
            }
        })
    }

    fn is_connected(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    fn close(&self, deadline: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let producer = self.producer.load_full();
            let flushed = tokio::task::spawn_blocking(move || producer.flush(deadline)).await;
            if !matches!(flushed, Ok(Ok(()))) {
                tracing::warn!(
                    destination = "kafka",
                    "Kafka flush did not finish before the deadline"
                );
            }
        })
    }
}

fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers);
    c.set("client.id", "orchestron");
    c.set("linger.ms", "5");
    for (key, value) in &config.properties {
        c.set(key, value);
    }
    // Set last: the delivery guarantee does not depend on what the file says.
    c.set("enable.idempotence", "true");
    c.set("acks", "all");
    c.set("message.timeout.ms", config.message_timeout.get().as_millis().to_string());
    c
}

fn classify(error: &KafkaError) -> PublishError {
    use RDKafkaErrorCode as C;
    let permanent = matches!(
        error.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::InvalidMessage
                | C::InvalidRecord
                | C::UnknownTopic
                | C::UnknownTopicOrPartition
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
        )
    );
    if permanent {
        PublishError::permanent(format!("Kafka refused the message: {error}"))
    } else {
        PublishError::transient(format!("Kafka publish failed: {error}"))
    }
}
