//! The JSON shapes of the admin API, shared by the server, the CLI (which reads them back)
//! and the CLI's `--offline` mode (which builds them from the store file directly).

use serde::{Deserialize, Serialize};

use crate::event::from_ms;
use crate::store::{DlqEntry, OutboxEntry, OutboxStats};

fn rfc3339(ms: u64) -> Option<String> {
    (ms > 0).then(|| humantime::format_rfc3339_millis(from_ms(ms)).to_string())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadDestinationView {
    pub destination: String,
    pub broker: String,
    pub reason: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub first_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DlqEntryView {
    pub event_id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub received_at: Option<String>,
    pub dead_lettered_at: Option<String>,
    pub reason: String,
    pub destinations: Vec<DeadDestinationView>,
    pub body_bytes: usize,
    /// The request headers the source keeps (`keep_headers`), and the trace context.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The W3C trace id the event carries (`traceparent`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// With `scope=fleet`: the instance that holds the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The body as JSON (bodies are validated JSON); only in single-entry answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

impl DlqEntryView {
    pub fn new(entry: &DlqEntry, with_body: bool) -> Self {
        let r = &entry.record;
        let body = with_body.then(|| {
            serde_json::from_slice(r.event.body()).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(r.event.body()).into_owned())
            })
        });
        Self {
            event_id: r.event.id().to_string(),
            source: r.event.source().as_str().to_owned(),
            event_type: r.event.event_type().as_str().to_owned(),
            received_at: rfc3339(r.event.received_at_ms()),
            dead_lettered_at: rfc3339(r.dead_lettered_at_ms),
            reason: r.reason.as_str().to_owned(),
            destinations: r
                .destinations
                .iter()
                .map(|d| DeadDestinationView {
                    destination: d.state.target.label(),
                    broker: d.state.target.broker().as_str().to_owned(),
                    reason: d.reason.as_str().to_owned(),
                    attempts: d.state.attempts,
                    last_error: d.state.last_error.clone(),
                    first_attempt_at: rfc3339(d.state.first_attempt_ms),
                    last_attempt_at: rfc3339(d.state.last_attempt_ms),
                })
                .collect(),
            body_bytes: r.event.body().len(),
            headers: r.event.headers().iter().cloned().collect(),
            trace_id: crate::telemetry::trace::trace_id(r.event.headers()),
            instance_id: None,
            body,
        }
    }
}

/// `GET /admin/events/{event_id}`: where one event is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    pub event_id: String,
    /// `pending` (in the outbox for at least one destination) or `dead_lettered`.
    pub status: String,
    /// The W3C trace id the event carries (`traceparent`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// In the outbox: every destination of its route and its state there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingView>,
    /// In the DLQ (for the destinations given up on; others may still be pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<DlqEntryView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingView {
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub received_at: Option<String>,
    pub body_bytes: usize,
    /// Not routed yet (an event from an older store file, or replayed): no destinations yet.
    pub routed: bool,
    /// Accepted while the fleet's PostgreSQL could not rule on its idempotency key: not
    /// published until it does (docs/fleet.md).
    #[serde(default)]
    pub held_for_key: bool,
    pub destinations: Vec<DestinationStateView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DestinationStateView {
    pub destination: String,
    pub broker: String,
    /// `pending`, `done` (confirmed by the broker) or `dead` (given up on: in the DLQ).
    pub status: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub first_attempt_at: Option<String>,
    pub last_attempt_at: Option<String>,
    /// When it is tried next (pending only).
    pub next_attempt_at: Option<String>,
}

impl EventView {
    /// `None` when the event is in neither: delivered everywhere (and removed), or unknown.
    /// `pending` holds its outbox entries oldest first (a partial DLQ replay makes a second
    /// one); each destination is shown as the newest entry has it.
    pub fn new(
        id: crate::event::EventId,
        pending: &[(OutboxEntry, bool)],
        dead: Option<&DlqEntry>,
    ) -> Option<Self> {
        let status = match (pending.first(), dead) {
            (Some(_), _) => "pending",
            (None, Some(_)) => "dead_lettered",
            (None, None) => return None,
        };
        let headers = match (pending.first(), dead) {
            (Some((entry, _)), _) => entry.event.headers(),
            (None, Some(d)) => d.record.event.headers(),
            (None, None) => &[],
        };
        let trace_id = crate::telemetry::trace::trace_id(headers);
        let held_for_key = pending.iter().any(|(_, held)| *held);
        let routed = pending.iter().any(|(entry, _)| entry.delivery.is_some());
        let pending = pending.first().map(|(first, _)| {
            let e = &first.event;
            let mut destinations: Vec<DestinationStateView> = Vec::new();
            let states = pending
                .iter()
                .filter_map(|(entry, _)| entry.delivery.as_ref())
                .flat_map(|d| d.destinations.iter());
            for view in states.map(|d| DestinationStateView {
                destination: d.target.label(),
                broker: d.target.broker().as_str().to_owned(),
                status: match d.status {
                    crate::delivery::Status::Pending => "pending",
                    crate::delivery::Status::Done => "done",
                    crate::delivery::Status::Dead => "dead",
                }
                .to_owned(),
                attempts: d.attempts,
                last_error: d.last_error.clone(),
                first_attempt_at: rfc3339(d.first_attempt_ms),
                last_attempt_at: rfc3339(d.last_attempt_ms),
                next_attempt_at: d.is_pending().then(|| rfc3339(d.next_attempt_ms)).flatten(),
            }) {
                match destinations.iter_mut().find(|d| d.destination == view.destination) {
                    Some(older) => *older = view,
                    None => destinations.push(view),
                }
            }
            PendingView {
                source: e.source().as_str().to_owned(),
                event_type: e.event_type().as_str().to_owned(),
                received_at: rfc3339(e.received_at_ms()),
                body_bytes: e.body().len(),
                routed,
                held_for_key,
                destinations,
            }
        });
        Some(Self {
            event_id: id.to_string(),
            status: status.to_owned(),
            trace_id,
            pending,
            dead_lettered: dead.map(|d| DlqEntryView::new(d, false)),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DlqPageView {
    pub entries: Vec<DlqEntryView>,
    /// Pass back as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BacklogView {
    pub destination: String,
    pub broker: String,
    pub pending: u64,
    pub retrying: u64,
    pub failed_attempts: u64,
    /// How long the oldest event still pending there has waited.
    pub oldest_pending_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxView {
    pub pending: u64,
    pub unrouted: u64,
    pub oldest_pending_age_seconds: Option<f64>,
    pub dlq_entries: u64,
    pub destinations: Vec<BacklogView>,
}

impl From<OutboxStats> for OutboxView {
    fn from(s: OutboxStats) -> Self {
        Self {
            pending: s.pending,
            unrouted: s.unrouted,
            oldest_pending_age_seconds: s.oldest_pending_age_ms.map(|ms| ms as f64 / 1000.0),
            dlq_entries: s.dlq_entries,
            destinations: s
                .destinations
                .into_iter()
                .map(|d| BacklogView {
                    destination: d.destination,
                    broker: d.broker.to_owned(),
                    pending: d.pending,
                    retrying: d.retrying,
                    failed_attempts: d.failed_attempts,
                    oldest_pending_age_seconds: d
                        .oldest_pending_age_ms
                        .map(|ms| ms as f64 / 1000.0),
                })
                .collect(),
        }
    }
}

/// `GET /admin/fleet`: this instance's sync, and every instance the database knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    pub instance_id: String,
    pub sync: crate::sync::SyncStatus,
    pub instances: Vec<crate::sync::Member>,
}

/// Answer of bulk operations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CountView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
}
