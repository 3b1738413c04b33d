//! The JSON shapes of the admin API, shared by the server, the CLI (which reads them back)
//! and the CLI's `--offline` mode (which builds them from the store file directly).

use serde::{Deserialize, Serialize};

use crate::event::from_ms;
use crate::store::{DlqEntry, OutboxStats};

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
            instance_id: None,
            body,
        }
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
