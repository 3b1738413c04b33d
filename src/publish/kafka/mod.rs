//! Kafka output (rdkafka): idempotent producer, `acks=all`, delivery reports drive settling.
//!
//! The producer is idempotent, so librdkafka's own retries never duplicate or reorder within a
//! partition. A send resolves with the delivery report; a timed-out message is "possibly
//! persisted" and is retried by the relay (a duplicate that consumers drop by `ce_id`). After a
//! fatal producer error, or one that says the broker no longer accepts the producer's id or
//! epoch (`ProducerFenced` after an outage, say), the producer is replaced by a fresh one and
//! the events wait without an attempt counted; so it is replaced, too, after a reload
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
/// Between two failed probes (each waits up to PROBE_TIMEOUT for a broker): a broker back
/// from an outage is seen within about half a second (librdkafka's own reconnect backoff is
/// capped to match, see `client.rs`).
const PROBE_WHILE_DOWN: Duration = Duration::from_millis(250);
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
    /// Wakes the probe at once: the producer was replaced, or librdkafka found every broker
    /// down (so that the relay stops sending into a dead connection within moments, not at
    /// the next 10 s probe).
    wake_probe: Arc<Notify>,
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
        let wake_probe = Arc::new(Notify::new());
        let producer = create(&settings, &last_trouble, &wake_probe).map_err(|e| e.to_string())?;
        let publisher = Arc::new(Self {
            producer: ArcSwap::from_pointee(producer),
            settings: ArcSwap::from_pointee(settings),
            reachable: AtomicBool::new(false),
            connectivity: Connectivity::new(BrokerKind::Kafka, metrics),
            last_trouble,
            wake_probe,
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
                _ = self.wake_probe.notified() => {}
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
        let payload = message.payload();
        let record = || {
            let mut headers = OwnedHeaders::new_with_capacity(6);
            for (name, value) in message.headers() {
                headers = headers.insert(Header { key: name, value: Some(value.as_str()) });
            }
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
            record
        };
        let mut producer = self.producer.load_full();
        let mut replaced = false;
        loop {
            let Err((error, _)) = producer.send(record(), Timeout::After(QUEUE_TIMEOUT)).await
            else {
                return Ok(());
            };
            let code = error.rdkafka_error_code();
            // A fatal error, or the broker no longer accepts this producer's id or epoch (after
            // an outage, say): nothing about the message is wrong, only a fresh producer (a new
            // id) gets past it. The message goes once more on the fresh one, with no attempt
            // counted for the first failure; a second one counts.
            let lost = match producer.client().fatal_error() {
                Some((code, reason)) => Some((code, reason)),
                None => code
                    .filter(|&c| producer_state_lost(c))
                    .map(|c| (c, "the broker no longer accepts its producer id".to_owned())),
            };
            // Once per send: if the fresh producer fails the same way (a missing IdempotentWrite
            // ACL, a broker that keeps fencing), that is an attempt like any other, so a cause
            // that does not go away ends in the DLQ instead of a wait without end.
            if let (Some((code, reason)), false) = (lost, replaced) {
                self.recreate(&producer, code, &reason);
                let fresh = self.producer.load_full();
                if !Arc::ptr_eq(&fresh, &producer) {
                    (producer, replaced) = (fresh, true);
                    continue;
                }
            }
            if code == Some(RDKafkaErrorCode::MessageTimedOut)
                && !self.reachable.load(Ordering::Relaxed)
            {
                // Sent just before the cluster was found down: the outage, not the message.
                return Err(PublishError::deferred(format!("Kafka unreachable: {error}")));
            }
            return Err(classify(&error));
        }
    }

    /// Replaces a producer that hit a fatal error, or whose id the broker no longer accepts
    /// (only once, however many sends saw it).
    fn recreate(&self, failed: &Arc<Producer_>, code: RDKafkaErrorCode, reason: &str) {
        if !Arc::ptr_eq(&self.producer.load(), failed) {
            return;
        }
        tracing::error!(
            destination = "kafka",
            ?code,
            reason,
            "the Kafka producer cannot go on; recreating it (no attempt counted)"
        );
        match create(&self.settings.load(), &self.last_trouble, &self.wake_probe) {
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
fn create(
    settings: &ClientSettings,
    last_trouble: &LastTrouble,
    wake_probe: &Arc<Notify>,
) -> Result<Producer_, KafkaError> {
    let context =
        Context { last_trouble: Arc::clone(last_trouble), wake_probe: Arc::clone(wake_probe) };
    settings.config.create_with_context(context)
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
        let fresh = match create(&settings, &self.last_trouble, &self.wake_probe) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(destination = "kafka", %error, "cannot create the new producer");
                return;
            }
        };
        self.settings.store(Arc::new(settings));
        let retired = self.producer.swap(Arc::new(fresh));
        self.reachable.store(false, Ordering::Relaxed);
        self.wake_probe.notify_one();
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

/// Errors that say the producer's idempotence state (id, epoch, sequence) is no longer valid at
/// the broker: only a new producer gets past them.
fn producer_state_lost(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::ProducerFenced
            | C::Fenced
            | C::InvalidProducerEpoch
            | C::InvalidProducerIdMapping
            | C::UnknownProducerId
            | C::OutOfOrderSequenceNumber
    )
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
