//! Kafka output (rdkafka): idempotent producer, `acks=all`, delivery reports drive settling.
//!
//! The producer is idempotent, so librdkafka's own retries never duplicate or reorder within a
//! partition. A send resolves with the delivery report; a timed-out message is "possibly
//! persisted" and is retried by the relay (a duplicate that consumers drop by `ce_id`). After a
//! fatal producer error the producer is replaced by a fresh one, and so it is after a reload
//! that changed the settings ([`client`]: addresses, TLS files, SASL credentials, options); the
//! old one is flushed first, so what it holds is delivered. A background probe fetches cluster
//! metadata to know whether the cluster is reachable (and if not, why), so that while it is
//! down the relay defers Kafka events instead of burning attempts on timeouts.

mod client;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::health::{Connectivity, Health, Trouble};
use super::{Outgoing, PublishError, Publisher};
use crate::config::KafkaConfig;
use crate::delivery::{BrokerKind, Target};
use crate::tasks::Tasks;
use crate::telemetry::metrics::Metrics;
use client::{ClientSettings, Context, LastTrouble};

/// How long a send may wait for room in librdkafka's local queue before failing (transient).
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const PROBE_WHILE_DOWN: Duration = Duration::from_secs(1);
const PROBE_WHILE_UP: Duration = Duration::from_secs(10);
/// How long a producer replaced by a reload gets to deliver what it holds.
const RETIRE_FLUSH: Duration = Duration::from_secs(30);

type Producer_ = FutureProducer<Context>;

/// Why the Kafka settings cannot be used, by key path under `brokers.kafka`.
pub type SettingsProblems = Vec<(String, String)>;

pub struct KafkaPublisher {
    producer: ArcSwap<Producer_>,
    settings: ArcSwap<ClientSettings>,
    reachable: AtomicBool,
    connectivity: Arc<Connectivity>,
    /// The last error librdkafka reported (shared with every producer's context).
    last_trouble: LastTrouble,
    /// Wakes the probe at once after the producer was replaced.
    replaced: Notify,
    label: String,
}

impl KafkaPublisher {
    /// Checks the settings a config gives, without creating anything: what `check-config`
    /// and a reload refuse.
    pub fn check(config: &KafkaConfig) -> Result<(), SettingsProblems> {
        ClientSettings::from_config(config).map(drop)
    }

    /// Creates the producer and starts the reachability probe. Fails only on a bad config;
    /// an unreachable cluster is not an error.
    pub fn start(
        config: &KafkaConfig,
        connected: Arc<Notify>,
        tasks: &Tasks,
        cancel: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, String> {
        let settings = ClientSettings::from_config(config).map_err(|problems| {
            let all: Vec<String> = problems.iter().map(|(at, m)| format!("{at}: {m}")).collect();
            all.join("; ")
        })?;
        let last_trouble = Arc::new(Mutex::new(None));
        let producer = create(&settings, &last_trouble).map_err(|e| e.to_string())?;
        let publisher = Arc::new(Self {
            producer: ArcSwap::from_pointee(producer),
            settings: ArcSwap::from_pointee(settings),
            reachable: AtomicBool::new(false),
            connectivity: Connectivity::new(BrokerKind::Kafka, metrics),
            last_trouble,
            replaced: Notify::new(),
            label: config.bootstrap_servers.clone(),
        });
        tasks.spawn("kafka: reachability probe", Arc::clone(&publisher).probe(connected, cancel));
        Ok(publisher)
    }

    async fn probe(self: Arc<Self>, connected: Arc<Notify>, cancel: CancellationToken) {
        loop {
            let producer = self.producer.load_full();
            let reached = tokio::task::spawn_blocking(move || {
                producer.client().fetch_metadata(None, PROBE_TIMEOUT).map(drop)
            })
            .await
            .unwrap_or(Err(KafkaError::Canceled));
            let was = self.reachable.swap(reached.is_ok(), Ordering::Relaxed);
            match &reached {
                Ok(()) => {
                    self.last_trouble.lock().expect("trouble lock").take();
                    self.connectivity.up(&self.label);
                    if !was {
                        connected.notify_waiters();
                    }
                }
                Err(error) => {
                    // The context saw why (a TLS or SASL failure); the probe only that it
                    // timed out.
                    let seen = self.last_trouble.lock().expect("trouble lock").clone();
                    let (trouble, reason) = seen
                        .map(|(trouble, reason, _)| (trouble, reason))
                        .unwrap_or_else(|| (Trouble::Network, error.to_string()));
                    self.connectivity.down(trouble, &reason);
                }
            }
            let wait = if reached.is_ok() { PROBE_WHILE_UP } else { PROBE_WHILE_DOWN };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.replaced.notified() => {}
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
    fn recreate(&self, failed: &Arc<Producer_>, code: RDKafkaErrorCode, reason: &str) {
        if !Arc::ptr_eq(&self.producer.load(), failed) {
            return;
        }
        tracing::error!(
            destination = "kafka",
            ?code,
            reason,
            "fatal Kafka producer error; recreating the producer"
        );
        match create(&self.settings.load(), &self.last_trouble) {
            Ok(fresh) => {
                self.producer.compare_and_swap(failed, Arc::new(fresh));
            }
            Err(error) => {
                tracing::error!(destination = "kafka", %error, "cannot recreate producer")
            }
        }
    }
}

/// A producer with these settings, reporting into `last_trouble`.
fn create(settings: &ClientSettings, last_trouble: &LastTrouble) -> Result<Producer_, KafkaError> {
    settings.config.create_with_context(Context { last_trouble: Arc::clone(last_trouble) })
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

    fn health(&self) -> Health {
        self.connectivity.health()
    }

    /// A changed address, TLS file, credential or option: a new producer takes over at once,
    /// and the old one delivers what it holds before it is dropped.
    fn reload(&self, brokers: &crate::config::BrokersConfig) {
        let Some(config) = &brokers.kafka else { return };
        let settings = match ClientSettings::from_config(config) {
            Ok(s) if s.fingerprint == self.settings.load().fingerprint => return,
            Ok(s) => s,
            Err(problems) => {
                tracing::error!(
                    destination = "kafka",
                    problems = problems.len(),
                    "the reloaded Kafka settings do not load; keeping the previous ones"
                );
                return;
            }
        };
        let fresh = match create(&settings, &self.last_trouble) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(destination = "kafka", %error, "cannot create the new producer");
                return;
            }
        };
        self.settings.store(Arc::new(settings));
        let retired = self.producer.swap(Arc::new(fresh));
        self.reachable.store(false, Ordering::Relaxed);
        self.replaced.notify_one();
        tracing::info!(destination = "kafka", "Kafka settings changed; a new producer took over");
        std::thread::spawn(move || {
            if retired.flush(RETIRE_FLUSH).is_err() {
                tracing::warn!(
                    destination = "kafka",
                    "the replaced producer did not flush in time"
                );
            }
        });
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
