//! Publishing to brokers: one [`Publisher`] trait, one file per backend.
//!
//! A publisher confirms a message only when the broker has taken responsibility for it
//! (RabbitMQ publisher confirm of a routed message; Kafka delivery report with `acks=all`).
//! Every failure says whether a retry can help ([`ErrorClass`]); that decides the backoff.
//! Publishers keep their own connections alive and tell the relay when they (re)connect.

pub mod health;
pub mod kafka;
pub mod rabbitmq;
pub mod tls;

use std::borrow::Cow;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

use crate::delivery::{BrokerKind, MessageFormat, Target};
use crate::event::{ValidatedEvent, from_ms};
use crate::telemetry::otlp;
use crate::telemetry::trace::{PublishTrace, TRACEPARENT};

/// How a failed publish should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The broker is not connected: nothing was sent, no attempt is counted.
    NotConnected,
    /// Could succeed later (timeout, nack, connection lost mid-way).
    Transient,
    /// RabbitMQ returned the message: no queue is bound for it. Retried like a transient
    /// error (an operator may add the binding), dead-lettered as `unroutable` at the end.
    Unroutable,
    /// Will fail the same way every time (message too large, no such exchange, not allowed).
    Permanent,
}

impl ErrorClass {
    /// The name metrics and spans use.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::NotConnected => "deferred",
            ErrorClass::Transient => "transient",
            ErrorClass::Unroutable => "unroutable",
            ErrorClass::Permanent => "permanent",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    pub class: ErrorClass,
    pub message: String,
}

impl PublishError {
    pub fn not_connected(broker: BrokerKind) -> Self {
        Self {
            class: ErrorClass::NotConnected,
            message: format!("{} not connected", broker.as_str()),
        }
    }
    /// Not attempted for a reason of the connection, not of the message (the same class as
    /// [`PublishError::not_connected`]): the event waits, no attempt is counted.
    pub fn deferred(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::NotConnected, message: message.into() }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Transient, message: message.into() }
    }
    pub fn unroutable(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Unroutable, message: message.into() }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        Self { class: ErrorClass::Permanent, message: message.into() }
    }
}

/// What to publish: the event, where, and any headers beyond the CloudEvents ones.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub event: &'a ValidatedEvent,
    pub target: &'a Target,
    /// Extra headers, e.g. the reason on a dead-letter copy.
    pub extra_headers: &'a [(&'static str, String)],
    /// This publish's span in the event's trace: the message's `traceparent`.
    pub trace: Option<PublishTrace>,
}

impl<'a> Outgoing<'a> {
    pub fn new(event: &'a ValidatedEvent, target: &'a Target) -> Self {
        let trace = PublishTrace::of(event.headers());
        Self { event, target, extra_headers: &[], trace }
    }

    /// The same message with `headers` added.
    pub fn with_extra_headers(self, headers: &'a [(&'static str, String)]) -> Self {
        Self { extra_headers: headers, ..self }
    }

    fn structured(&self) -> bool {
        self.target.format() == MessageFormat::Cloudevents
    }

    /// The message body: the event's bytes as received (binary mode), or a CloudEvents JSON
    /// envelope with those bytes, unchanged, as `data` (structured mode).
    pub fn payload(&self) -> Cow<'a, [u8]> {
        if !self.structured() {
            return Cow::Borrowed(self.event.body().as_ref());
        }
        let e = self.event;
        let text = |s: &str| serde_json::Value::from(s).to_string();
        let mut out = Vec::with_capacity(e.body().len() + 256);
        out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
        out.extend_from_slice(text(&e.id().to_string()).as_bytes());
        out.extend_from_slice(b",\"source\":");
        out.extend_from_slice(text(e.source().as_str()).as_bytes());
        out.extend_from_slice(b",\"type\":");
        out.extend_from_slice(text(e.event_type().as_str()).as_bytes());
        out.extend_from_slice(b",\"time\":");
        out.extend_from_slice(text(&rfc3339(e.received_at_ms())).as_bytes());
        out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"data\":");
        out.extend_from_slice(e.body());
        out.push(b'}');
        Cow::Owned(out)
    }

    /// The message's content type.
    pub fn content_type(&self) -> &'static str {
        if self.structured() { STRUCTURED_CONTENT_TYPE } else { CONTENT_TYPE }
    }

    /// Binary mode: the CloudEvents headers; structured mode: only `content-type`. Then the
    /// event's kept request headers and the extra ones.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, String)> + 'a {
        // The stored trace context goes with the span id of this publish (a stored value
        // that does not parse goes as it is).
        let trace = self.trace;
        let kept =
            self.event.headers().iter().map(move |(name, value)| match (name.as_str(), trace) {
                (TRACEPARENT, Some(trace)) => (name.as_str(), trace.span.to_string()),
                _ => (name.as_str(), value.clone()),
            });
        let structured = self.structured();
        let binary = (!structured).then(|| cloudevent_headers(self.event)).into_iter().flatten();
        let envelope = structured.then(|| ("content-type", STRUCTURED_CONTENT_TYPE.to_owned()));
        binary.chain(envelope).chain(kept).chain(self.extra_headers.iter().cloned())
    }
}

impl Outgoing<'_> {
    /// The span of this publish, when its trace is recorded: attempt `attempt` (from 1),
    /// from `started` to now, with its result. A publish deferred because the broker is not
    /// connected was no attempt and has no span.
    pub fn span(
        &self,
        attempt: u32,
        started: std::time::SystemTime,
        result: &Result<(), PublishError>,
    ) -> Option<otlp::Span> {
        let trace = self.trace.filter(|t| t.recorded())?;
        if matches!(result, Err(e) if e.class == ErrorClass::NotConnected) {
            return None;
        }
        let (system, destination) = match self.target {
            Target::RabbitMq { exchange, .. } => ("rabbitmq", exchange),
            Target::Kafka { topic, .. } => ("kafka", topic),
        };
        let name = format!("publish {destination}");
        let now = std::time::SystemTime::now();
        let mut span = otlp::span(
            &trace.span,
            Some(trace.parent),
            name,
            otlp::SpanKind::Producer,
            started,
            now,
        );
        if let Some(state) = PublishTrace::state(self.event.headers()) {
            span.trace_state = state.to_owned();
        }
        otlp::text(&mut span, "messaging.system", system);
        otlp::text(&mut span, "messaging.operation.type", "send");
        otlp::text(&mut span, "messaging.operation.name", "publish");
        otlp::text(&mut span, "messaging.destination.name", destination.as_str());
        if let Target::RabbitMq { routing_key, .. } = self.target {
            otlp::text(
                &mut span,
                "messaging.rabbitmq.destination.routing_key",
                routing_key.as_str(),
            );
        }
        otlp::text(&mut span, "messaging.message.id", self.event.id().to_string());
        otlp::text(&mut span, "orchestron.source", self.event.source().as_str());
        otlp::text(&mut span, "orchestron.event_type", self.event.event_type().as_str());
        otlp::int(&mut span, "orchestron.attempt", i64::from(attempt));
        match result {
            Ok(()) => {
                otlp::text(&mut span, "orchestron.result", "confirmed");
                otlp::ok(&mut span);
            }
            Err(error) => {
                otlp::text(&mut span, "orchestron.result", "failed");
                otlp::text(&mut span, "error.type", error.class.as_str());
                otlp::failed(&mut span, error.message.clone());
            }
        }
        Some(span)
    }
}

/// One broker output.
pub trait Publisher: Send + Sync {
    /// Publishes and resolves once the broker confirmed the message.
    fn publish<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<(), PublishError>>;

    /// Whether a publish now would reach the broker.
    fn is_connected(&self) -> bool;

    /// The connection's state, and why it is down: what `/ready` shows.
    fn health(&self) -> health::Health {
        health::Health { connected: self.is_connected(), ..health::Health::default() }
    }

    /// Flushes what is in flight (within the deadline) and closes the connection.
    fn close(&self, deadline: std::time::Duration) -> BoxFuture<'_, ()>;

    /// Applies the broker settings of a reload: exchange declarations, addresses,
    /// credentials and TLS files (the publisher reconnects when they changed). Adding or
    /// removing a broker needs a restart.
    fn reload(&self, _brokers: &crate::config::BrokersConfig) {}
}

/// The configured publishers, by broker.
#[derive(Clone, Default)]
pub struct Publishers {
    pub rabbitmq: Option<Arc<dyn Publisher>>,
    pub kafka: Option<Arc<dyn Publisher>>,
    /// Notified when any publisher (re)connects, so the relay retries deferred events at once.
    pub connected: Arc<Notify>,
}

impl Publishers {
    pub fn get(&self, broker: BrokerKind) -> Option<&Arc<dyn Publisher>> {
        match broker {
            BrokerKind::RabbitMq => self.rabbitmq.as_ref(),
            BrokerKind::Kafka => self.kafka.as_ref(),
        }
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Publisher>> {
        self.rabbitmq.iter().chain(self.kafka.iter())
    }
}

/// CloudEvents 1.0 binary-mode attributes, as header name and value.
pub fn cloudevent_headers(event: &ValidatedEvent) -> [(&'static str, String); 6] {
    [
        ("ce_specversion", "1.0".to_owned()),
        ("ce_id", event.id().to_string()),
        ("ce_type", event.event_type().as_str().to_owned()),
        ("ce_source", event.source().as_str().to_owned()),
        ("ce_time", rfc3339(event.received_at_ms())),
        ("content-type", CONTENT_TYPE.to_owned()),
    ]
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(from_ms(ms)).to_string()
}

/// Bodies are accepted only as JSON, and relayed byte for byte.
pub const CONTENT_TYPE: &str = "application/json";
/// CloudEvents structured mode (JSON event format).
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
