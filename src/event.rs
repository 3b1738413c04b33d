//! Identity and shape of an event as it moves through the pipeline.
//!
//! [`ValidatedEvent`] can only be built by [`crate::ingest`] after authentication, parsing and
//! schema validation (or by the store when it reads a record back), so the store never holds
//! something that did not pass the edge checks.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

/// A UUIDv7: unique, and sortable by the time the event was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }

    pub fn from_u128(v: u128) -> Self {
        Self(Uuid::from_u128(v))
    }

    /// Parses the hyphenated (or simple) text form.
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(Self)
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Longest event type or source name we accept; they become broker routing keys and headers.
const MAX_NAME_LEN: usize = 128;

/// Why a name taken from a URL was refused.
#[derive(Debug, thiserror::Error)]
#[error("must be 1 to 128 characters of A-Z a-z 0-9 . _ - :")]
pub struct InvalidName;

fn check_name(s: &str) -> Result<(), InvalidName> {
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok { Ok(()) } else { Err(InvalidName) }
}

/// The event type, e.g. `order.created`. Restricted to a safe alphabet because it names a
/// schema file and is rendered into routing keys and topics.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventType(String);

impl EventType {
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        check_name(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The configured source an event came in through (`default` for `/api/events/...`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceName(String);

impl SourceName {
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        check_name(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Milliseconds since the Unix epoch, from the wall clock: receive times (`ce_time`).
pub fn now_ms() -> u64 {
    to_ms(SystemTime::now())
}

/// The relay's clock, in the same unit: the wall clock read once at start plus tokio's
/// monotonic time since. A wall-clock step does not reorder retries, and under tokio's paused
/// test clock it advances with virtual time, so backoff schedules can be tested without sleeps.
pub fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<(u64, std::time::Instant)> = std::sync::OnceLock::new();
    let (wall, mono) = *START.get_or_init(|| (now_ms(), std::time::Instant::now()));
    let elapsed = tokio::time::Instant::now().into_std().saturating_duration_since(mono);
    wall + elapsed.as_millis() as u64
}

pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// An event that passed every edge check: the only thing [`crate::store::Store::append`] takes.
#[derive(Clone, Debug)]
pub struct ValidatedEvent {
    id: EventId,
    source: SourceName,
    event_type: EventType,
    received_at_ms: u64,
    body: Bytes,
    /// Request headers the source keeps (`keep_headers`): lowercase name, value as sent.
    headers: Vec<(String, String)>,
}

impl ValidatedEvent {
    /// Crate-private: only ingest (after validation) and the store (reading back what ingest
    /// wrote) construct events.
    pub(crate) fn new(
        id: EventId,
        source: SourceName,
        event_type: EventType,
        received_at_ms: u64,
        body: Bytes,
    ) -> Self {
        Self { id, source, event_type, received_at_ms, body, headers: Vec::new() }
    }

    /// The same event carrying these kept request headers.
    pub(crate) fn with_headers(mut self, headers: Vec<(String, String)>) -> Self {
        self.headers = headers;
        self
    }

    pub fn id(&self) -> EventId {
        self.id
    }

    pub fn source(&self) -> &SourceName {
        &self.source
    }

    pub fn event_type(&self) -> &EventType {
        &self.event_type
    }

    pub fn received_at_ms(&self) -> u64 {
        self.received_at_ms
    }

    /// The request body, byte for byte as the sender sent it.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The kept request headers, published with the event as metadata.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_reject_path_tricks_and_empty() {
        assert!(EventType::parse("order.created").is_ok());
        assert!(EventType::parse("a:b_c-d").is_ok());
        for bad in ["", "../etc/passwd", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(EventType::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn event_ids_are_v7_and_ordered() {
        let a = EventId::new();
        let b = EventId::new();
        assert!(a < b);
        assert_eq!(a.0.get_version_num(), 7);
    }
}
