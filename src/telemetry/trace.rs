//! W3C Trace Context (`traceparent`, `tracestate`): carried from the sender, through the
//! store, into every message published for the event, so that a consumer continues the
//! sender's trace.
//!
//! At ingest a valid `traceparent` is kept with its trace id and flags and a new span id,
//! the ingest's own (the sender's span is its parent); a malformed one is ignored, as the
//! specification asks, and so is a `tracestate` without a valid `traceparent`. Without one,
//! ingest starts a new trace (`telemetry.new_traces`, on by default). Each publish carries
//! the same trace id with a span id of its own, so the message's parent is the publish.
//! Both are stored as the event's kept headers `traceparent` and `tracestate`, so the store
//! format does not change and the admin API shows them with the other headers.

use std::fmt;

/// The header names (W3C Trace Context; the CloudEvents distributed-tracing extension uses
/// the same).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Longest `tracestate` kept (the specification lets a vendor cut at 512 bytes).
const MAX_TRACESTATE: usize = 512;
/// Most list members in a `tracestate`.
const MAX_MEMBERS: usize = 32;

/// A parsed `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` for anything the specification says to ignore. A later
    /// version is read as version 00 where its first fields have 00's shape.
    pub fn parse(value: &str) -> Option<Self> {
        let b = value.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex_byte(&b[0..2])?;
        match version {
            0 if b.len() != 55 => return None,
            0xff => return None,
            v if v > 0 && b.len() > 55 && b[55] != b'-' => return None,
            _ => {}
        }
        let mut trace_id = [0u8; 16];
        for (i, out) in trace_id.iter_mut().enumerate() {
            *out = hex_byte(&b[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, out) in span_id.iter_mut().enumerate() {
            *out = hex_byte(&b[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&b[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self { trace_id, span_id, flags })
    }

    /// A new trace (random trace id), not sampled: nothing upstream recorded it.
    pub fn new_trace() -> Self {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&nonzero_u64().to_be_bytes());
        trace_id[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
        Self { trace_id, span_id: nonzero_u64().to_be_bytes(), flags: 0 }
    }

    /// The same trace and flags with a new span id: a span whose parent is this one. Only
    /// the flags version 00 defines (sampled, and Level 2's random trace id) are passed on.
    pub fn child(&self) -> Self {
        Self { span_id: nonzero_u64().to_be_bytes(), flags: self.flags & 0x03, ..*self }
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (trace, span) = (hex::encode(self.trace_id), hex::encode(self.span_id));
        write!(f, "00-{trace}-{span}-{:02x}", self.flags)
    }
}

/// A `tracestate` worth passing on: at most 512 bytes and 32 members, each `key=value` of
/// the specification's characters. Anything else is dropped whole.
pub fn valid_tracestate(value: &str) -> bool {
    if value.len() > MAX_TRACESTATE {
        return false;
    }
    let mut members = 0;
    for member in value.split(',') {
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue; // empty list members are allowed
        }
        members += 1;
        let Some((key, val)) = member.split_once('=') else { return false };
        if !valid_key(key) || !valid_value(val) {
            return false;
        }
    }
    members <= MAX_MEMBERS
}

/// `simple-key` or `tenant@system`: lowercase letters, digits, `_ - * /`, starting with a
/// letter (or a digit for the tenant part).
fn valid_key(key: &str) -> bool {
    let part = |s: &str, max: usize, digit_first: bool| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && (b[0].is_ascii_lowercase() || (digit_first && b[0].is_ascii_digit()))
            && b.iter().all(|&c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'-' | b'*' | b'/')
            })
    };
    match key.split_once('@') {
        None => part(key, 256, false),
        Some((tenant, system)) => part(tenant, 241, true) && part(system, 14, false),
    }
}

/// Printable ASCII except `,` and `=`, at most 256, not ending in a space.
fn valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b.last() != Some(&b' ')
        && b.iter().all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

/// The trace of one ingest request: the request's span (its context is stored with the
/// event), the sender's span (the parent, when the sender sent one) and the `tracestate`
/// passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestTrace {
    pub span: TraceParent,
    pub parent: Option<[u8; 8]>,
    pub state: Option<String>,
}

impl IngestTrace {
    /// From the request's `traceparent` and `tracestate` values: a span under the sender's,
    /// or a new trace when there is none and `new_traces` is on. With span export on
    /// (`recorder`), a trace the sender did not record is recorded when the ratio picks it,
    /// and its sampled flag is set so that consumers know.
    pub fn start(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        new_traces: bool,
        recorder: Option<&crate::telemetry::otlp::Settings>,
    ) -> Option<Self> {
        let mut trace = match traceparent.and_then(TraceParent::parse) {
            Some(parent) => Self {
                span: parent.child(),
                parent: Some(parent.span_id),
                state: tracestate.filter(|s| valid_tracestate(s)).map(str::to_owned),
            },
            None if new_traces => {
                Self { span: TraceParent::new_trace(), parent: None, state: None }
            }
            None => return None,
        };
        if recorder.is_some_and(|r| r.samples(&trace.span.trace_id)) {
            trace.span.flags |= SAMPLED;
        }
        Some(trace)
    }

    /// Whether this request's spans are recorded (its sampled flag).
    pub fn recorded(&self) -> bool {
        self.span.flags & SAMPLED != 0
    }

    /// The headers the event keeps for its trace.
    pub fn kept_headers(&self) -> Vec<(String, String)> {
        let mut kept = vec![(TRACEPARENT.to_owned(), self.span.to_string())];
        if let Some(state) = &self.state {
            kept.push((TRACESTATE.to_owned(), state.clone()));
        }
        kept
    }
}

/// The `sampled` trace flag.
const SAMPLED: u8 = 0x01;

/// A publish's span: a child of the ingest span stored with the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishTrace {
    pub span: TraceParent,
    /// The ingest span's id.
    pub parent: [u8; 8],
}

impl PublishTrace {
    /// For a stored event's kept headers; `None` without a `traceparent` written by this
    /// version (one that does not parse is published as it is).
    pub fn of(headers: &[(String, String)]) -> Option<Self> {
        let stored = headers.iter().find(|(name, _)| name == TRACEPARENT)?;
        let ingest = TraceParent::parse(&stored.1)?;
        Some(Self { span: ingest.child(), parent: ingest.span_id })
    }

    /// Whether the publish's span is recorded.
    pub fn recorded(&self) -> bool {
        self.span.flags & SAMPLED != 0
    }

    /// The `tracestate` stored with the event, if any.
    pub fn state(headers: &[(String, String)]) -> Option<&str> {
        headers.iter().find(|(name, _)| name == TRACESTATE).map(|(_, v)| v.as_str())
    }
}

/// The trace id of a stored event's kept headers, if it has one.
pub fn trace_id(headers: &[(String, String)]) -> Option<String> {
    headers
        .iter()
        .find(|(name, _)| name == TRACEPARENT)
        .and_then(|(_, value)| TraceParent::parse(value))
        .map(|t| t.trace_id_hex())
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

/// Two lowercase hex digits (the specification allows no uppercase).
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses_and_prints_back() {
        let t = TraceParent::parse(SENT).unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, 1);
        assert_eq!(t.to_string(), SENT);
    }

    #[test]
    fn what_the_specification_says_to_ignore_is_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // uppercase
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero span id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x", // 00 with more
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version's first fields are read.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert!(TraceParent::parse(later).is_some());
    }

    fn ingest_headers(
        traceparent: Option<&str>,
        tracestate: Option<&str>,
        new_traces: bool,
    ) -> Vec<(String, String)> {
        IngestTrace::start(traceparent, tracestate, new_traces, None)
            .map(|t| t.kept_headers())
            .unwrap_or_default()
    }

    #[test]
    fn ingest_keeps_the_senders_trace_under_a_span_of_its_own() {
        let kept =
            ingest_headers(Some(SENT), Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"), true);
        assert_eq!(kept.len(), 2);
        let stored = TraceParent::parse(&kept[0].1).unwrap();
        let sent = TraceParent::parse(SENT).unwrap();
        assert_eq!((stored.trace_id, stored.flags), (sent.trace_id, sent.flags));
        assert_ne!(stored.span_id, sent.span_id);
        assert_eq!(
            kept[1],
            (TRACESTATE.to_owned(), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".to_owned())
        );
        // Publishing: same trace, another span, whose parent is the ingest's.
        let published = PublishTrace::of(&kept).unwrap();
        assert_eq!(published.span.trace_id, sent.trace_id);
        assert_ne!(published.span.span_id, stored.span_id);
        assert_eq!(published.parent, stored.span_id);
        assert_eq!(trace_id(&kept).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn a_malformed_header_starts_a_new_trace_or_nothing() {
        let kept = ingest_headers(Some("garbage"), Some("a=b"), true);
        assert_eq!(kept.len(), 1, "no tracestate without a valid traceparent");
        let new = TraceParent::parse(&kept[0].1).unwrap();
        assert_eq!(new.flags, 0);
        assert_ne!(new.trace_id, TraceParent::parse(SENT).unwrap().trace_id);
        assert!(ingest_headers(None, None, false).is_empty());
        assert!(ingest_headers(Some("garbage"), None, false).is_empty());
    }

    #[test]
    fn span_export_sets_the_sampled_flag_of_what_it_records() {
        let config = |sample_ratio: f64| {
            let options = crate::telemetry::otlp::Options {
                endpoint: "http://127.0.0.1:4318",
                sample_ratio,
                headers: vec![],
                timeout: std::time::Duration::from_secs(1),
            };
            crate::telemetry::otlp::Settings::new(&options).unwrap()
        };
        let (all, none) = (config(1.0), config(0.0));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let t = IngestTrace::start(Some(unsampled), None, true, Some(&all)).unwrap();
        assert!(t.recorded(), "picked by the ratio");
        assert_eq!(t.parent, Some(TraceParent::parse(unsampled).unwrap().span_id));
        let t = IngestTrace::start(Some(unsampled), None, true, Some(&none)).unwrap();
        assert!(!t.recorded());
        let t = IngestTrace::start(Some(SENT), None, true, Some(&none)).unwrap();
        assert!(t.recorded(), "the sender records it: so do we");
        let t = IngestTrace::start(None, None, true, Some(&all)).unwrap();
        assert!(t.recorded() && t.parent.is_none());
        assert!(!IngestTrace::start(None, None, true, None).unwrap().recorded());
        let stored = t.kept_headers();
        assert!(PublishTrace::of(&stored).unwrap().recorded(), "the decision is stored");
    }

    #[test]
    fn tracestate_is_passed_on_only_when_valid() {
        assert!(valid_tracestate("rojo=00f067aa0ba902b7"));
        assert!(valid_tracestate("fw529a3039@dt=htec, , rojo=1"));
        assert!(!valid_tracestate("Upper=1"));
        assert!(!valid_tracestate("novalue"));
        assert!(!valid_tracestate("a=b=c"));
        assert!(!valid_tracestate(&"a=b,".repeat(33)));
        assert!(!valid_tracestate(&format!("a={}", "x".repeat(600))));
        let kept = ingest_headers(Some(SENT), Some("Bad State"), true);
        assert_eq!(kept.len(), 1);
    }
}
