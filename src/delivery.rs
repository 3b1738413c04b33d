//! The shared nouns of delivery: where an event goes ([`Target`], on a [`BrokerKind`], filed
//! in a [`Lane`]), how it stands there ([`DestinationState`]), and why it was given up on
//! ([`Reason`], [`DlqRecord`]).
//!
//! They live below `config`, `routing`, `store` and `publish`, so that each of those can use
//! them without importing the others: routing resolves targets, the store keeps their states,
//! publishers send to them. Nothing here does I/O.

use serde::Deserialize;

use crate::event::ValidatedEvent;

/// Which broker a target lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BrokerKind {
    RabbitMq,
    Kafka,
}

impl BrokerKind {
    pub const ALL: [BrokerKind; 2] = [BrokerKind::RabbitMq, BrokerKind::Kafka];

    /// The lane of the store's due index that this broker's worker claims.
    pub fn lane(self) -> Lane {
        match self {
            BrokerKind::RabbitMq => Lane::RABBITMQ,
            BrokerKind::Kafka => Lane::KAFKA,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BrokerKind::RabbitMq => "rabbitmq",
            BrokerKind::Kafka => "kafka",
        }
    }
}

/// A lane of the store's due index: [`Lane::UNROUTED`] holds events not routed yet, and each
/// broker has its own, so one broker's backlog never stands in the way of another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane(u8);

impl Lane {
    pub const UNROUTED: Lane = Lane(0);
    pub const RABBITMQ: Lane = Lane(1);
    pub const KAFKA: Lane = Lane(2);
    /// Every lane, in the order of their numbers.
    pub const ALL: [Lane; 3] = [Lane::UNROUTED, Lane::RABBITMQ, Lane::KAFKA];
    /// How many lanes there are: the size of per-lane arrays.
    pub const COUNT: usize = Lane::ALL.len();

    /// The lane's number as the store's due index keeps it.
    pub fn number(self) -> u8 {
        self.0
    }

    /// A lane read back from the store's due index. Numbers this build does not know stay
    /// lanes of their own: no worker claims them, and nothing is lost.
    pub fn from_number(number: u8) -> Lane {
        Lane(number)
    }

    /// A position in per-lane arrays ([`Lane::COUNT`] long); unknown lanes share the last.
    pub fn index(self) -> usize {
        usize::from(self.0).min(Lane::COUNT - 1)
    }
}

/// How an event is laid out in a broker message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    /// CloudEvents binary mode: the body byte for byte, attributes as `ce_*` headers.
    #[default]
    Binary,
    /// CloudEvents structured mode: `application/cloudevents+json` with the body as `data`.
    Cloudevents,
}

/// A destination resolved for one event: everything a publisher needs, nothing left to render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    RabbitMq { exchange: String, routing_key: String, format: MessageFormat },
    Kafka { topic: String, key: Option<Vec<u8>>, partition: Option<i32>, format: MessageFormat },
}

impl Target {
    pub fn broker(&self) -> BrokerKind {
        match self {
            Target::RabbitMq { .. } => BrokerKind::RabbitMq,
            Target::Kafka { .. } => BrokerKind::Kafka,
        }
    }

    /// A short name for logs: `rabbitmq:orders/order.created`, `kafka:orders`.
    pub fn label(&self) -> String {
        match self {
            Target::RabbitMq { exchange, routing_key, .. } => {
                format!("rabbitmq:{exchange}/{routing_key}")
            }
            Target::Kafka { topic, .. } => format!("kafka:{topic}"),
        }
    }

    /// A name for metrics when the configured one is unknown: the broker and the exchange
    /// (never templated) or topic.
    pub fn config_name(&self) -> String {
        match self {
            Target::RabbitMq { exchange, .. } => format!("rabbitmq:{exchange}"),
            Target::Kafka { topic, .. } => format!("kafka:{topic}"),
        }
    }

    pub fn format(&self) -> MessageFormat {
        match self {
            Target::RabbitMq { format, .. } | Target::Kafka { format, .. } => *format,
        }
    }
}

/// Retry settings a route or destination overrides; `None` takes the `relay:` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOverride {
    pub max_attempts: Option<u32>,
    /// (initial, max) in milliseconds.
    pub backoff_ms: Option<(u64, u64)>,
}

/// Where one event stands with one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    /// The broker confirmed it.
    Done,
    /// Given up on: the event is in the dead-letter queue for this destination.
    Dead,
}

/// Why an event was dead-lettered. The names are part of the admin API and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// RabbitMQ returned it (`mandatory`, no queue bound) on every attempt.
    Unroutable,
    /// The broker refused it for good: no such exchange or topic, too large, not allowed.
    Rejected,
    /// Transient failures used up `max_attempts`.
    MaxAttempts,
    /// Older than `relay.max_age`.
    Expired,
    /// No route matches the event any more.
    NoRoute,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::Unroutable,
        Reason::Rejected,
        Reason::MaxAttempts,
        Reason::Expired,
        Reason::NoRoute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unroutable => "unroutable",
            Reason::Rejected => "rejected",
            Reason::MaxAttempts => "max_attempts",
            Reason::Expired => "expired",
            Reason::NoRoute => "no_route",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// One event's state with one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationState {
    pub target: Target,
    pub status: Status,
    pub attempts: u32,
    /// 0 until the first attempt.
    pub first_attempt_ms: u64,
    pub last_attempt_ms: u64,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
    pub retry: RetryOverride,
    /// The destination as configured (`rabbitmq:orders`, `kafka:events.{type}`): a metric
    /// label that senders cannot multiply.
    pub name: String,
}

impl DestinationState {
    pub fn new(target: Target, retry: RetryOverride) -> Self {
        Self {
            name: target.config_name(),
            target,
            status: Status::Pending,
            attempts: 0,
            first_attempt_ms: 0,
            last_attempt_ms: 0,
            next_attempt_ms: 0,
            last_error: None,
            retry,
        }
    }

    pub fn is_pending(&self) -> bool {
        self.status == Status::Pending
    }
}

/// The mutable half of an outbox entry: written when the relay first routes an event and
/// rewritten as destinations confirm or fail. The event itself is never rewritten.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Delivery {
    pub destinations: Vec<DestinationState>,
}

impl Delivery {
    /// The lanes of the brokers this event still waits for, each once, in lane order.
    pub fn pending_lanes(&self) -> Vec<Lane> {
        let mut lanes: Vec<Lane> = self
            .destinations
            .iter()
            .filter(|d| d.is_pending())
            .map(|d| d.target.broker().lane())
            .collect();
        lanes.sort_unstable();
        lanes.dedup();
        lanes
    }
}

/// A destination given up on, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadDestination {
    pub state: DestinationState,
    pub reason: Reason,
}

/// A dead-letter-queue entry: the whole event and every destination that gave up on it.
#[derive(Debug, Clone)]
pub struct DlqRecord {
    pub event: ValidatedEvent,
    pub dead_lettered_at_ms: u64,
    /// Why it was first dead-lettered (`no_route` entries have no destinations).
    pub reason: Reason,
    pub destinations: Vec<DeadDestination>,
}

impl DlqRecord {
    /// The delivery state a replay starts from: pending, afresh, for each destination that
    /// had failed (`None` for a `no_route` entry, which is routed again).
    pub fn replay_delivery(&self) -> Option<Delivery> {
        if self.destinations.is_empty() {
            return None;
        }
        let destinations = self
            .destinations
            .iter()
            .map(|d| DestinationState {
                name: d.state.name.clone(),
                ..DestinationState::new(d.state.target.clone(), d.state.retry)
            })
            .collect();
        Some(Delivery { destinations })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_of_brokers_are_distinct_and_fit_the_arrays() {
        assert_ne!(BrokerKind::RabbitMq.lane(), BrokerKind::Kafka.lane());
        for broker in BrokerKind::ALL {
            assert_ne!(broker.lane(), Lane::UNROUTED);
            assert!(broker.lane().index() < Lane::COUNT);
        }
        assert_eq!(Lane::from_number(200).index(), Lane::COUNT - 1);
    }

    #[test]
    fn reasons_parse_back_from_their_names() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(Reason::parse("bogus"), None);
    }
}
