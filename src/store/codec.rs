//! Byte layout of the records in the store, with a format version in the first byte of each.
//!
//! The layout is hand-written rather than derived so that it is stable across dependency
//! upgrades and a newer daemon can read every older version. Decoding checks every length
//! against the bytes that are there: a damaged record is an error, never a panic. This file
//! knows bytes only; the types it encodes are the pipeline's own ([`crate::delivery`],
//! [`crate::event`]).

use bytes::Bytes;

use crate::delivery::{
    DeadDestination, Delivery, DestinationState, DlqRecord, MessageFormat, Reason, RetryOverride,
    Status, Target,
};
use crate::event::{EventId, EventType, SourceName, ValidatedEvent};

const EVENT_V1: u8 = 1;
/// v2 adds the kept request headers; written only when there are some, so files without
/// them stay readable by builds that know v1 only.
const EVENT_V2: u8 = 2;
const DELIVERY_V1: u8 = 1;
/// v2 adds the dead state, attempt times and per-destination retry overrides.
const DELIVERY_V2: u8 = 2;
const DLQ_V1: u8 = 1;
/// Longest error text kept per destination; enough to explain, small enough to rewrite often.
const MAX_ERROR_LEN: usize = 512;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("damaged record: {0}")]
pub struct DecodeError(&'static str);

/// A reason's number on disk (never reuse one).
fn reason_code(reason: Reason) -> u8 {
    match reason {
        Reason::Unroutable => 1,
        Reason::Rejected => 2,
        Reason::MaxAttempts => 3,
        Reason::Expired => 4,
        Reason::NoRoute => 5,
    }
}

fn reason_from_code(code: u8) -> Result<Reason, DecodeError> {
    Reason::ALL.into_iter().find(|&r| reason_code(r) == code).ok_or(DecodeError("unknown reason"))
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
    let headers = e.headers();
    w.u8(if headers.is_empty() { EVENT_V1 } else { EVENT_V2 });
    w.0.extend_from_slice(e.id().as_bytes());
    w.u64(e.received_at_ms());
    w.bytes(e.source().as_str().as_bytes());
    w.bytes(e.event_type().as_str().as_bytes());
    w.bytes(e.body());
    if !headers.is_empty() {
        w.u32(headers.len() as u32);
        for (name, value) in headers {
            w.bytes(name.as_bytes());
            w.bytes(value.as_bytes());
        }
    }
    w.0
}

pub fn decode_event(bytes: &[u8]) -> Result<ValidatedEvent, DecodeError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != EVENT_V1 && version != EVENT_V2 {
        return Err(DecodeError("unknown event format version"));
    }
    let id = EventId::from_bytes(r.take(16)?.try_into().expect("took 16 bytes"));
    let received_at_ms = r.u64()?;
    let source = SourceName::parse(r.str()?).map_err(|_| DecodeError("bad source name"))?;
    let event_type = EventType::parse(r.str()?).map_err(|_| DecodeError("bad event type"))?;
    let body = Bytes::copy_from_slice(r.bytes()?);
    let mut headers = Vec::new();
    if version == EVENT_V2 {
        for _ in 0..r.u32()? {
            headers.push((r.str()?.to_owned(), r.str()?.to_owned()));
        }
    }
    r.finish()?;
    Ok(ValidatedEvent::new(id, source, event_type, received_at_ms, body).with_headers(headers))
}

const TARGET_RABBITMQ: u8 = 1;
const TARGET_KAFKA: u8 = 2;
/// The same followed by the message format (and for Kafka a fixed partition): written only
/// when they differ from the defaults, so most records stay readable by older builds.
const TARGET_RABBITMQ_EXT: u8 = 3;
const TARGET_KAFKA_EXT: u8 = 4;
const NO_LIMIT: u32 = u32::MAX;
const NO_PARTITION: u32 = u32::MAX;

fn encode_format(w: &mut Writer, format: MessageFormat) {
    w.u8(match format {
        MessageFormat::Binary => 0,
        MessageFormat::Cloudevents => 1,
    });
}

fn decode_format(r: &mut Reader<'_>) -> Result<MessageFormat, DecodeError> {
    match r.u8()? {
        0 => Ok(MessageFormat::Binary),
        1 => Ok(MessageFormat::Cloudevents),
        _ => Err(DecodeError("unknown message format")),
    }
}

fn encode_destination(w: &mut Writer, dest: &DestinationState) {
    match &dest.target {
        Target::RabbitMq { exchange, routing_key, format } => {
            let plain = *format == MessageFormat::Binary;
            w.u8(if plain { TARGET_RABBITMQ } else { TARGET_RABBITMQ_EXT });
            w.bytes(exchange.as_bytes());
            w.bytes(routing_key.as_bytes());
            if !plain {
                encode_format(w, *format);
            }
        }
        Target::Kafka { topic, key, partition, format } => {
            let plain = *format == MessageFormat::Binary && partition.is_none();
            w.u8(if plain { TARGET_KAFKA } else { TARGET_KAFKA_EXT });
            w.bytes(topic.as_bytes());
            w.opt_bytes(key.as_deref());
            if !plain {
                encode_format(w, *format);
                w.u32(partition.map_or(NO_PARTITION, |p| p as u32));
            }
        }
    }
    w.u8(match dest.status {
        Status::Pending => 0,
        Status::Done => 1,
        Status::Dead => 2,
    });
    w.u32(dest.attempts);
    w.u64(dest.first_attempt_ms);
    w.u64(dest.last_attempt_ms);
    w.u64(dest.next_attempt_ms);
    let error = dest.last_error.as_deref().map(|e| truncate(e, MAX_ERROR_LEN).as_bytes());
    w.opt_bytes(error);
    w.u32(dest.retry.max_attempts.unwrap_or(NO_LIMIT));
    let (initial, max) = dest.retry.backoff_ms.unwrap_or((u64::MAX, u64::MAX));
    w.u64(initial);
    w.u64(max);
    w.bytes(dest.name.as_bytes());
}

fn decode_target(r: &mut Reader<'_>) -> Result<Target, DecodeError> {
    match r.u8()? {
        tag @ (TARGET_RABBITMQ | TARGET_RABBITMQ_EXT) => {
            let (exchange, routing_key) = (r.str()?.to_owned(), r.str()?.to_owned());
            let format =
                if tag == TARGET_RABBITMQ_EXT { decode_format(r)? } else { MessageFormat::Binary };
            Ok(Target::RabbitMq { exchange, routing_key, format })
        }
        tag @ (TARGET_KAFKA | TARGET_KAFKA_EXT) => {
            let (topic, key) = (r.str()?.to_owned(), r.opt_bytes()?.map(<[u8]>::to_vec));
            let (format, partition) = if tag == TARGET_KAFKA_EXT {
                let format = decode_format(r)?;
                let partition = Some(r.u32()?).filter(|&p| p != NO_PARTITION).map(|p| p as i32);
                (format, partition)
            } else {
                (MessageFormat::Binary, None)
            };
            Ok(Target::Kafka { topic, key, partition, format })
        }
        _ => Err(DecodeError("unknown target kind")),
    }
}

fn decode_error_text(r: &mut Reader<'_>) -> Result<Option<String>, DecodeError> {
    r.opt_bytes()?
        .map(|b| String::from_utf8(b.to_vec()).map_err(|_| DecodeError("invalid utf-8")))
        .transpose()
}

fn decode_destination(r: &mut Reader<'_>, version: u8) -> Result<DestinationState, DecodeError> {
    let target = decode_target(r)?;
    let status = match r.u8()? {
        0 => Status::Pending,
        1 => Status::Done,
        2 if version >= DELIVERY_V2 => Status::Dead,
        _ => return Err(DecodeError("bad status")),
    };
    let attempts = r.u32()?;
    let (first_attempt_ms, last_attempt_ms) =
        if version >= DELIVERY_V2 { (r.u64()?, r.u64()?) } else { (0, 0) };
    let next_attempt_ms = r.u64()?;
    let last_error = decode_error_text(r)?;
    let retry = if version >= DELIVERY_V2 {
        let max_attempts = Some(r.u32()?).filter(|&n| n != NO_LIMIT);
        let (initial, max) = (r.u64()?, r.u64()?);
        let backoff_ms = Some((initial, max)).filter(|&(i, _)| i != u64::MAX);
        RetryOverride { max_attempts, backoff_ms }
    } else {
        RetryOverride::default()
    };
    let name = if version >= DELIVERY_V2 { r.str()?.to_owned() } else { target.config_name() };
    Ok(DestinationState {
        name,
        target,
        status,
        attempts,
        first_attempt_ms,
        last_attempt_ms,
        next_attempt_ms,
        last_error,
        retry,
    })
}

pub fn encode_delivery(d: &Delivery) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(128));
    w.u8(DELIVERY_V2);
    w.u32(d.destinations.len() as u32);
    for dest in &d.destinations {
        encode_destination(&mut w, dest);
    }
    w.0
}

/// Reads every delivery format this build has written (v1 and v2).
pub fn decode_delivery(bytes: &[u8]) -> Result<Delivery, DecodeError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != DELIVERY_V1 && version != DELIVERY_V2 {
        return Err(DecodeError("unknown delivery format version"));
    }
    let n = r.u32()? as usize;
    // Each destination takes at least 19 bytes: refuse counts the record cannot hold.
    if n > r.0.len() / 19 {
        return Err(DecodeError("destination count exceeds record"));
    }
    let destinations =
        (0..n).map(|_| decode_destination(&mut r, version)).collect::<Result<_, _>>()?;
    r.finish()?;
    Ok(Delivery { destinations })
}

pub fn encode_dlq(record: &DlqRecord) -> Vec<u8> {
    let event = encode_event(&record.event);
    let mut w = Writer(Vec::with_capacity(event.len() + 128));
    w.u8(DLQ_V1);
    w.u64(record.dead_lettered_at_ms);
    w.u8(reason_code(record.reason));
    w.bytes(&event);
    w.u32(record.destinations.len() as u32);
    for dead in &record.destinations {
        w.u8(reason_code(dead.reason));
        encode_destination(&mut w, &dead.state);
    }
    w.0
}

pub fn decode_dlq(bytes: &[u8]) -> Result<DlqRecord, DecodeError> {
    let mut r = Reader(bytes);
    if r.u8()? != DLQ_V1 {
        return Err(DecodeError("unknown dead-letter format version"));
    }
    let dead_lettered_at_ms = r.u64()?;
    let reason = reason_from_code(r.u8()?)?;
    let event = decode_event(r.bytes()?)?;
    let n = r.u32()? as usize;
    if n > r.0.len() / 20 {
        return Err(DecodeError("destination count exceeds record"));
    }
    let mut destinations = Vec::with_capacity(n);
    for _ in 0..n {
        let reason = reason_from_code(r.u8()?)?;
        let state = decode_destination(&mut r, DELIVERY_V2)?;
        destinations.push(DeadDestination { state, reason });
    }
    r.finish()?;
    Ok(DlqRecord { event, dead_lettered_at_ms, reason, destinations })
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
        crate::testing::event("order.created", "{\"order_id\":1}", 1_700_000_000_123)
    }

    #[test]
    fn event_round_trips_byte_for_byte() {
        let e = sample_event();
        let back = decode_event(&encode_event(&e)).unwrap();
        assert_eq!(back.id(), e.id());
        assert_eq!(back.body(), e.body());
        assert_eq!(back.event_type(), e.event_type());
        assert_eq!(back.received_at_ms(), e.received_at_ms());
        assert_eq!(encode_event(&e)[0], EVENT_V1, "no kept headers: still written as v1");

        let kept = vec![("x-github-event".to_owned(), "push".to_owned())];
        let e = sample_event().with_headers(kept.clone());
        let encoded = encode_event(&e);
        assert_eq!(encoded[0], EVENT_V2);
        let back = decode_event(&encoded).unwrap();
        assert_eq!(back.headers(), kept.as_slice());
        assert_eq!(back.body(), e.body());
        for cut in 0..encoded.len() {
            assert!(decode_event(&encoded[..cut]).is_err(), "truncated at {cut}");
        }
    }

    fn states() -> Vec<DestinationState> {
        let mut a = DestinationState::new(
            Target::RabbitMq {
                exchange: "x".into(),
                routing_key: "k".into(),
                format: MessageFormat::Binary,
            },
            RetryOverride::default(),
        );
        a.status = Status::Done;
        a.attempts = 1;
        let mut b = DestinationState::new(
            Target::Kafka {
                topic: "t".into(),
                key: Some(b"42".to_vec()),
                partition: None,
                format: MessageFormat::Binary,
            },
            RetryOverride { max_attempts: Some(3), backoff_ms: Some((10, 20)) },
        );
        b.attempts = 3;
        b.first_attempt_ms = 7;
        b.last_attempt_ms = 8;
        b.next_attempt_ms = 9;
        b.last_error = Some("é".repeat(400));
        let c = DestinationState::new(
            Target::RabbitMq {
                exchange: "x".into(),
                routing_key: "k".into(),
                format: MessageFormat::Cloudevents,
            },
            RetryOverride::default(),
        );
        let d = DestinationState::new(
            Target::Kafka {
                topic: "t".into(),
                key: None,
                partition: Some(3),
                format: MessageFormat::Binary,
            },
            RetryOverride::default(),
        );
        vec![a, b, c, d]
    }

    #[test]
    fn delivery_round_trips() {
        let d = Delivery { destinations: states() };
        let encoded = encode_delivery(&d);
        let back = decode_delivery(&encoded).unwrap();
        assert_eq!(back.destinations[0], d.destinations[0]);
        assert_eq!(back.destinations[2], d.destinations[2], "structured format kept");
        assert_eq!(back.destinations[3], d.destinations[3], "partition kept");
        for cut in 0..encoded.len() {
            assert!(decode_delivery(&encoded[..cut]).is_err(), "truncated at {cut}");
        }
        assert_eq!(back.destinations[1].retry, d.destinations[1].retry);
        assert!(back.destinations[1].last_error.as_ref().unwrap().len() <= MAX_ERROR_LEN);
    }

    #[test]
    fn version_1_delivery_records_still_read() {
        // Layout of format 1: target, done flag, attempts, next attempt, error.
        let mut w = Writer(Vec::new());
        w.u8(DELIVERY_V1);
        w.u32(1);
        w.u8(TARGET_KAFKA);
        w.bytes(b"orders");
        w.opt_bytes(None);
        w.u8(0);
        w.u32(2);
        w.u64(1234);
        w.opt_bytes(Some(b"timeout"));
        let d = decode_delivery(&w.0).unwrap();
        let s = &d.destinations[0];
        let expected = Target::Kafka {
            topic: "orders".into(),
            key: None,
            partition: None,
            format: MessageFormat::Binary,
        };
        assert_eq!(s.target, expected);
        assert_eq!((s.status, s.attempts, s.next_attempt_ms), (Status::Pending, 2, 1234));
        assert_eq!(s.retry, RetryOverride::default());
    }

    #[test]
    fn dlq_record_round_trips() {
        let record = DlqRecord {
            event: sample_event(),
            dead_lettered_at_ms: 99,
            reason: Reason::Unroutable,
            destinations: states()
                .into_iter()
                .map(|state| DeadDestination { state, reason: Reason::Rejected })
                .collect(),
        };
        let back = decode_dlq(&encode_dlq(&record)).unwrap();
        assert_eq!(back.event.body(), record.event.body());
        assert_eq!(back.reason, Reason::Unroutable);
        assert_eq!(back.destinations[0], record.destinations[0]);
        assert_eq!(Reason::parse("max_attempts"), Some(Reason::MaxAttempts));
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
