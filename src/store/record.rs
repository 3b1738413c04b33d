//! Byte layout of the records in the store, with a format version in the first byte of each.
//!
//! The layout is hand-written rather than derived so that it is stable across dependency
//! upgrades and a newer daemon can read every older version. Decoding checks every length
//! against the bytes that are there: a damaged record is an error, never a panic.

use bytes::Bytes;

use crate::event::{EventId, EventType, SourceName, ValidatedEvent};
use crate::routing::Target;

const EVENT_V1: u8 = 1;
const DELIVERY_V1: u8 = 1;
/// Longest error text kept per destination; enough to explain, small enough to rewrite often.
const MAX_ERROR_LEN: usize = 512;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("damaged record: {0}")]
pub struct DecodeError(&'static str);

/// Where one event stands with one destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationState {
    pub target: Target,
    pub done: bool,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    pub last_error: Option<String>,
}

/// The mutable half of an outbox entry: written when the relay first routes an event and
/// rewritten as destinations confirm or fail. The event itself is never rewritten.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Delivery {
    pub destinations: Vec<DestinationState>,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    fn opt_bytes(&mut self, v: Option<&[u8]>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.bytes(v);
            }
            None => self.u8(0),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("took 4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("took 8 bytes")))
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError("invalid utf-8"))
    }
    fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.bytes().map(Some),
            _ => Err(DecodeError("bad option tag")),
        }
    }
    fn finish(self) -> Result<(), DecodeError> {
        if self.0.is_empty() { Ok(()) } else { Err(DecodeError("trailing bytes")) }
    }
}

pub fn encode_event(e: &ValidatedEvent) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(64 + e.body().len()));
    w.u8(EVENT_V1);
    w.0.extend_from_slice(e.id().as_bytes());
    w.u64(e.received_at_ms());
    w.bytes(e.source().as_str().as_bytes());
    w.bytes(e.event_type().as_str().as_bytes());
    w.bytes(e.body());
    w.0
}

pub fn decode_event(bytes: &[u8]) -> Result<ValidatedEvent, DecodeError> {
    let mut r = Reader(bytes);
    if r.u8()? != EVENT_V1 {
        return Err(DecodeError("unknown event format version"));
    }
    let id = EventId::from_bytes(r.take(16)?.try_into().expect("took 16 bytes"));
    let received_at_ms = r.u64()?;
    let source = SourceName::parse(r.str()?).map_err(|_| DecodeError("bad source name"))?;
    let event_type = EventType::parse(r.str()?).map_err(|_| DecodeError("bad event type"))?;
    let body = Bytes::copy_from_slice(r.bytes()?);
    r.finish()?;
    Ok(ValidatedEvent::new(id, source, event_type, received_at_ms, body))
}

const TARGET_RABBITMQ: u8 = 1;
const TARGET_KAFKA: u8 = 2;

pub fn encode_delivery(d: &Delivery) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(128));
    w.u8(DELIVERY_V1);
    w.u32(d.destinations.len() as u32);
    for dest in &d.destinations {
        match &dest.target {
            Target::RabbitMq { exchange, routing_key } => {
                w.u8(TARGET_RABBITMQ);
                w.bytes(exchange.as_bytes());
                w.bytes(routing_key.as_bytes());
            }
            Target::Kafka { topic, key } => {
                w.u8(TARGET_KAFKA);
                w.bytes(topic.as_bytes());
                w.opt_bytes(key.as_deref());
            }
        }
        w.u8(u8::from(dest.done));
        w.u32(dest.attempts);
        w.u64(dest.next_attempt_ms);
        let error = dest.last_error.as_deref().map(|e| truncate(e, MAX_ERROR_LEN).as_bytes());
        w.opt_bytes(error);
    }
    w.0
}

pub fn decode_delivery(bytes: &[u8]) -> Result<Delivery, DecodeError> {
    let mut r = Reader(bytes);
    if r.u8()? != DELIVERY_V1 {
        return Err(DecodeError("unknown delivery format version"));
    }
    let n = r.u32()? as usize;
    // Each destination takes at least 19 bytes: refuse counts the record cannot hold.
    if n > r.0.len() / 19 {
        return Err(DecodeError("destination count exceeds record"));
    }
    let mut destinations = Vec::with_capacity(n);
    for _ in 0..n {
        let target = match r.u8()? {
            TARGET_RABBITMQ => {
                Target::RabbitMq { exchange: r.str()?.to_owned(), routing_key: r.str()?.to_owned() }
            }
            TARGET_KAFKA => Target::Kafka {
                topic: r.str()?.to_owned(),
                key: r.opt_bytes()?.map(<[u8]>::to_vec),
            },
            _ => return Err(DecodeError("unknown target kind")),
        };
        let done = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError("bad done flag")),
        };
        let attempts = r.u32()?;
        let next_attempt_ms = r.u64()?;
        let last_error = r
            .opt_bytes()?
            .map(|b| String::from_utf8(b.to_vec()).map_err(|_| DecodeError("invalid utf-8")))
            .transpose()?;
        destinations.push(DestinationState { target, done, attempts, next_attempt_ms, last_error });
    }
    r.finish()?;
    Ok(Delivery { destinations })
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_event() -> ValidatedEvent {
        ValidatedEvent::new(
            EventId::new(),
            SourceName::parse("default").unwrap(),
            EventType::parse("order.created").unwrap(),
            1_700_000_000_123,
            Bytes::from_static(b"{\"order_id\":1}"),
        )
    }

    #[test]
    fn event_round_trips_byte_for_byte() {
        let e = sample_event();
        let back = decode_event(&encode_event(&e)).unwrap();
        assert_eq!(back.id(), e.id());
        assert_eq!(back.body(), e.body());
        assert_eq!(back.event_type(), e.event_type());
        assert_eq!(back.received_at_ms(), e.received_at_ms());
    }

    #[test]
    fn delivery_round_trips() {
        let d = Delivery {
            destinations: vec![
                DestinationState {
                    target: Target::RabbitMq { exchange: "x".into(), routing_key: "k".into() },
                    done: true,
                    attempts: 1,
                    next_attempt_ms: 5,
                    last_error: None,
                },
                DestinationState {
                    target: Target::Kafka { topic: "t".into(), key: Some(b"42".to_vec()) },
                    done: false,
                    attempts: 3,
                    next_attempt_ms: 9,
                    last_error: Some("é".repeat(400)),
                },
            ],
        };
        let back = decode_delivery(&encode_delivery(&d)).unwrap();
        assert_eq!(back.destinations[0], d.destinations[0]);
        assert!(back.destinations[1].last_error.as_ref().unwrap().len() <= MAX_ERROR_LEN);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = encode_event(&sample_event());
        for n in 0..bytes.len() {
            assert!(decode_event(&bytes[..n]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_event(&longer).is_err());
        assert!(decode_delivery(&[DELIVERY_V1, 255, 255, 255, 255]).is_err());
    }
}
