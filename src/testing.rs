//! Builders the unit tests share: events, targets, and a scripted publisher standing in for a
//! broker. Compiled for tests only.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::delivery::{BrokerKind, MessageFormat, Target};
use crate::event::{EventId, EventType, SourceName, ValidatedEvent, clock_ms};
use crate::publish::{ErrorClass, Outgoing, PublishError, Publisher};

/// An event of type `ty` from the `default` source, received at `at_ms`.
pub fn event(ty: &str, body: &str, at_ms: u64) -> ValidatedEvent {
    ValidatedEvent::new(
        EventId::new(),
        SourceName::parse("default").expect("a valid source name"),
        EventType::parse(ty).expect("a valid event type"),
        at_ms,
        body.to_owned().into(),
    )
}

/// A RabbitMQ target in binary mode.
pub fn rabbit(exchange: &str, routing_key: &str) -> Target {
    Target::RabbitMq {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        format: MessageFormat::Binary,
    }
}

/// A Kafka target in binary mode, partitioned by librdkafka.
pub fn kafka(topic: &str, key: Option<&[u8]>) -> Target {
    Target::Kafka {
        topic: topic.into(),
        key: key.map(<[u8]>::to_vec),
        partition: None,
        format: MessageFormat::Binary,
    }
}

/// A broker stand-in: connected or not, and failing with `error` (or confirming) every time.
pub struct Scripted {
    pub connected: AtomicBool,
    error: Option<ErrorClass>,
    /// Relay clock at each publish call.
    calls: Mutex<Vec<u64>>,
}

impl Scripted {
    pub fn new(connected: bool, error: Option<ErrorClass>) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            connected: AtomicBool::new(connected),
            error,
            calls: Mutex::new(Vec::new()),
        })
    }

    /// When each publish was attempted (relay clock, ms).
    pub fn calls(&self) -> Vec<u64> {
        // std Mutex: a copy, never held across an await.
        self.calls.lock().expect("calls lock").clone()
    }
}

impl Publisher for Scripted {
    fn publish<'a>(&'a self, _: Outgoing<'a>) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(async move {
            if !self.connected.load(Ordering::Relaxed) {
                return Err(PublishError::not_connected(BrokerKind::Kafka));
            }
            self.calls.lock().expect("calls lock").push(clock_ms());
            match self.error {
                None => Ok(()),
                Some(class) => Err(PublishError { class, message: "scripted failure".into() }),
            }
        })
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn close(&self, _: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}
