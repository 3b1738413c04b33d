//! The ingest listener: `POST /api/events/{event_type}`, `POST /hooks/{source}` and
//! `GET /health`.
//!
//! A request is checked in the order that costs least first: source, API key, content type,
//! body size, signature (over the raw bytes), rate limit, JSON syntax, event type, schema,
//! routes (an event no route takes is refused). Only then is it handed to the store, routed,
//! and `202 Accepted` is sent after the store's durable commit returned Ok, never before. A
//! repeated idempotency key is answered `200` with the first event's id, decided inside the
//! same commit.

mod error;
pub mod json;
mod spans;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use axum::Extension;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

pub use error::IngestError;
use json::BodyError;

use crate::delivery::Delivery;
use crate::event::{EventId, EventType, ValidatedEvent, now_ms};
use crate::live::LiveConfig;
use crate::routing::Body as EventBody;
use crate::server::client_cert::ClientSubject;
use crate::sources::Source;
use crate::store::{Appended, Committed, IdempotencyKey, Store, StoreError};
use crate::sync::{Fleet, KeyClaim, KeyOutcome};
use crate::telemetry::metrics::{Metrics, status_class};
use crate::telemetry::otlp::Spans;
use crate::telemetry::trace::{self, IngestTrace};

/// Where accepted events go: the store in the daemon. The seam exists so that benchmarks can
/// measure the HTTP and validation path alone, with the same router.
pub trait EventSink: Send + Sync + 'static {
    /// Resolves once the event is durable (or known to be a duplicate, or refused).
    /// `delivery` is where the event goes (routed at ingest).
    fn append(
        &self,
        event: ValidatedEvent,
        key: Option<IdempotencyKey>,
        delivery: Delivery,
    ) -> BoxFuture<'_, Result<Committed, StoreError>>;
}

impl EventSink for Store {
    fn append(
        &self,
        event: ValidatedEvent,
        key: Option<IdempotencyKey>,
        delivery: Delivery,
    ) -> BoxFuture<'_, Result<Committed, StoreError>> {
        Box::pin(Store::append_committed(self, event, key, delivery))
    }
}

/// What the ingest handlers share: a cheap clone per request.
#[derive(Clone)]
pub struct IngestState {
    pub sink: Arc<dyn EventSink>,
    /// One snapshot is loaded per request and used from start to end.
    pub live: Arc<ArcSwap<LiveConfig>>,
    pub metrics: Arc<Metrics>,
    /// With `sync`: idempotency keys are claimed fleet-wide, and with `ack: fleet` a 202
    /// also waits for PostgreSQL's commit.
    pub fleet: Option<Fleet>,
    /// Where the request and commit spans go (`telemetry.otlp`).
    pub spans: Spans,
}

pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/api/events/{event_type}", post(generic_event))
        .route("/hooks/{source}", post(hook_event))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(state)
}

async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, Json(json!({ "error": "not_found", "message": "no such endpoint" })))
}

/// What a request that passed every check gets.
enum Answer {
    /// Stored (or found to be a duplicate), with the body size.
    Stored(Appended, usize),
    /// A Slack `url_verification` handshake: echoed, not stored.
    Challenge(String),
}

/// Where the event type of a request comes from.
enum TypeFrom {
    /// The generic endpoint's path segment.
    Path(String),
    /// The source's `event_type` setting.
    Source,
}

/// What a request brings besides its path: headers, the mTLS client subject, the body.
struct Incoming {
    headers: HeaderMap,
    client: Option<ClientSubject>,
    body: Body,
}

/// What the spans of a request report, gathered on the way.
#[derive(Default)]
struct Facts {
    event_type: Option<EventType>,
    /// The group commit the event waited for: its start, end and events.
    commit: Option<(SystemTime, SystemTime, u32)>,
}

async fn generic_event(
    State(state): State<IngestState>,
    Path(event_type): Path<String>,
    client: Option<Extension<ClientSubject>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = state.live.load_full();
    let source = live.sources.generic().cloned();
    let request = Incoming { headers, client: client.map(|c| c.0), body };
    respond(&state, &live, source, TypeFrom::Path(event_type), request).await
}

async fn hook_event(
    State(state): State<IngestState>,
    Path(name): Path<String>,
    client: Option<Extension<ClientSubject>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let live = state.live.load_full();
    let source = live.sources.hook(&name).cloned();
    let request = Incoming { headers, client: client.map(|c| c.0), body };
    respond(&state, &live, source, TypeFrom::Source, request).await
}

/// Runs [`accept`] and turns its result into the answer, the metrics and the log line.
async fn respond(
    state: &IngestState,
    live: &LiveConfig,
    source: Option<Arc<Source>>,
    type_from: TypeFrom,
    request: Incoming,
) -> Response {
    let started = std::time::Instant::now();
    let wall_started = SystemTime::now();
    // Unknown names are counted under one label: metric labels never come from senders.
    let label = source.as_ref().map_or("unknown", |s| s.name.as_str()).to_owned();
    let trace = request_trace(&request.headers, live);
    let route = match &type_from {
        TypeFrom::Path(_) => "/api/events/{event_type}",
        TypeFrom::Source => "/hooks/{source}",
    };
    let mut facts = Facts::default();
    let result = match &source {
        Some(source) => {
            accept(state, live, source, type_from, request, trace.as_ref(), &mut facts).await
        }
        None => Err(IngestError::UnknownSource),
    };
    let m = &state.metrics;
    let status = match &result {
        Ok(Answer::Stored(Appended::Accepted(_), _)) => StatusCode::ACCEPTED,
        Ok(Answer::Stored(Appended::Duplicate(_), _) | Answer::Challenge(_)) => StatusCode::OK,
        Err(e) => e.status(),
    };
    m.ingest_requests.with_label_values(&[&label, status_class(status.as_u16())]).inc();
    m.ingest_duration.with_label_values(&[&label]).observe(started.elapsed().as_secs_f64());
    if let Some(trace) = trace.filter(|t| t.recorded() && live.otlp.is_some()) {
        let span = spans::request(&trace, route, wall_started, &label, status, &result, &facts);
        state.spans.record(span);
        if let Some(commit) = facts.commit {
            state.spans.record(spans::commit(&trace, commit));
        }
    }
    match result {
        Ok(Answer::Challenge(challenge)) => {
            tracing::info!(source = %label, "answered a Slack url_verification challenge");
            (StatusCode::OK, Json(json!({ "challenge": challenge }))).into_response()
        }
        Ok(Answer::Stored(Appended::Accepted(id), size)) => {
            m.ingest_accepted.with_label_values(&[&label]).inc();
            m.ingest_body_bytes.with_label_values(&[&label]).observe(size as f64);
            let answer = json!({ "event_id": id.to_string(), "status": "accepted" });
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
        Ok(Answer::Stored(Appended::Duplicate(id), _)) => {
            m.ingest_duplicates.with_label_values(&[&label]).inc();
            tracing::debug!(event_id = %id, source = %label, "duplicate delivery answered");
            let answer = json!({ "event_id": id.to_string(), "status": "duplicate" });
            (StatusCode::OK, Json(answer)).into_response()
        }
        Err(error) => {
            m.ingest_rejected.with_label_values(&[&label, error.metric_reason()]).inc();
            match &error {
                IngestError::Store(cause) => {
                    tracing::warn!(source = %label, %cause, "event refused: store cannot accept");
                }
                IngestError::NotReplicated(cause) => {
                    tracing::warn!(source = %label, %cause, "event answered 503 (ack: fleet)");
                }
                other => tracing::info!(
                    source = %label,
                    status = other.status().as_u16(),
                    reason = other.code(),
                    "event refused"
                ),
            }
            error.into_response()
        }
    }
}

async fn accept(
    state: &IngestState,
    live: &LiveConfig,
    source: &Source,
    type_from: TypeFrom,
    request: Incoming,
    trace: Option<&IngestTrace>,
    facts: &mut Facts,
) -> Result<Answer, IngestError> {
    let Incoming { headers, client, body } = request;
    let headers = &headers;
    source.check_client(client.as_ref())?;
    // API keys are checked before the body is read; signatures need the body.
    let credential = source.check_key(headers)?;
    if source.uses_api_keys() {
        source.admit(credential)?;
    }
    if !is_json(headers) {
        return Err(IngestError::UnsupportedMediaType);
    }
    let path_type = match type_from {
        TypeFrom::Path(t) => {
            Some(EventType::parse(&t).map_err(|e| IngestError::InvalidEventType(e.to_string()))?)
        }
        TypeFrom::Source => None,
    };
    let bytes = read_body(headers, body, source.max_body_bytes, live.body_read_timeout).await?;
    source.check_signature(headers, &bytes)?;
    if !source.uses_api_keys() {
        source.admit(credential)?;
    }
    let value = json::parse(&bytes, source.allow_duplicate_keys).map_err(|e| match e {
        BodyError::Invalid(message) => IngestError::InvalidJson(message),
        BodyError::DuplicateKey(pointer) => IngestError::DuplicateKey(pointer),
    })?;
    if !value.is_object() {
        return Err(IngestError::NotAnObject);
    }
    if let Some(challenge) = source.challenge(&value) {
        return Ok(Answer::Challenge(challenge));
    }
    let event_type = match path_type {
        Some(t) => t,
        None => source.event_type(headers, &value)?,
    };
    if trace.is_some_and(IngestTrace::recorded) {
        facts.event_type = Some(event_type.clone());
    }
    let mut key = source.idempotency_key(headers, &value)?.map(|key| IdempotencyKey {
        key,
        expires_at_ms: now_ms().saturating_add(live.dedup_window.as_millis() as u64),
        hold: false,
    });
    live.schemas.validate(&event_type, &value).map_err(IngestError::SchemaViolation)?;
    let mut kept = source.kept_headers(headers);
    // Headers a route matches on are kept too: the relay routes from the stored event.
    for name in live.routes.matched_headers() {
        if !kept.iter().any(|(n, _)| n == name)
            && let Some(value) = headers.get(name.as_str()).and_then(|v| v.to_str().ok())
        {
            kept.push((name.to_owned(), value.to_owned()));
        }
    }
    // Trace context: the sender's trace carried on (or a new one), never a kept copy of the
    // sender's own header.
    kept.retain(|(name, _)| name != trace::TRACEPARENT && name != trace::TRACESTATE);
    if let Some(trace) = trace {
        kept.extend(trace.kept_headers());
    }
    let size = bytes.len();
    let event =
        ValidatedEvent::new(EventId::new(), source.name.clone(), event_type, now_ms(), bytes)
            .with_headers(kept);
    // Routed here, with the snapshot that validated it, and stored routed: the relay's
    // brokers pick it up from the append's own commit.
    let mut view = EventBody::parsed(value).with_headers(event.headers());
    let delivery = live.routes.delivery_with(&event, &mut view);
    drop(view);
    if delivery.destinations.is_empty() {
        return Err(IngestError::Unroutable);
    }
    // Fleet-wide idempotency: claim the key before storing (sync/dedup.rs).
    let claimed = match (&state.fleet, &mut key) {
        (Some(fleet), Some(k)) => {
            let id = event.id();
            let source = source.name.as_str();
            match fleet.claim_key(source, &k.key, id, k.expires_at_ms).await {
                KeyClaim::Duplicate(first) => {
                    state.metrics.fleet_dedup.with_label_values(&["duplicate"]).inc();
                    return Ok(Answer::Stored(Appended::Duplicate(first), size));
                }
                KeyClaim::Claimed => {
                    state.metrics.fleet_dedup.with_label_values(&["claimed"]).inc();
                    Some((fleet, k.key.clone(), id))
                }
                KeyClaim::Unknown => {
                    // Stored, but held from the relay until PostgreSQL rules on the key.
                    state.metrics.fleet_dedup.with_label_values(&["unknown"]).inc();
                    k.hold = fleet.holds_unknown_keys();
                    None
                }
            }
        }
        _ => None,
    };
    let held = key.as_ref().is_some_and(|k| k.hold);
    let commit_started = SystemTime::now();
    let appended = state.sink.append(event, key, delivery).await.map(|committed| {
        facts.commit = Some((commit_started, SystemTime::now(), committed.batch_events));
        committed.appended
    });
    if held
        && matches!(appended, Ok(Appended::Accepted(_)))
        && let Some(fleet) = &state.fleet
    {
        fleet.key_held();
    }
    if let Some((fleet, key, id)) = claimed {
        let source = source.name.as_str();
        match &appended {
            Ok(Appended::Accepted(_)) => fleet.settle_key(source, &key, id, KeyOutcome::Durable),
            Ok(Appended::Duplicate(first)) => {
                fleet.settle_key(source, &key, *first, KeyOutcome::Earlier)
            }
            Err(_) => fleet.settle_key(source, &key, id, KeyOutcome::Failed),
        }
    }
    let appended = appended?;
    if let Appended::Accepted(id) = appended {
        if let Some(fleet) = state.fleet.as_ref().filter(|f| f.acks_with_fleet()) {
            // Durable here, not yet in PostgreSQL: the sender must not take it as fleet-safe.
            // The event stays in the outbox and is delivered all the same.
            fleet.replicated().await.map_err(|e| IngestError::NotReplicated(e.to_string()))?;
        }
        tracing::debug!(event_id = %id, source = %source.name.as_str(), "event accepted");
    }
    Ok(Answer::Stored(appended, size))
}

/// The request's trace (docs/monitoring.md, "Traces"). Two `traceparent` headers are no
/// valid one; several `tracestate` lines are one list.
fn request_trace(headers: &HeaderMap, live: &LiveConfig) -> Option<IngestTrace> {
    let mut parents = headers.get_all(trace::TRACEPARENT).iter();
    let parent = match (parents.next(), parents.next()) {
        (Some(one), None) => one.to_str().ok(),
        _ => None,
    };
    let states: Vec<&str> =
        headers.get_all(trace::TRACESTATE).iter().filter_map(|v| v.to_str().ok()).collect();
    let trace_state = (!states.is_empty()).then(|| states.join(","));
    IngestTrace::start(parent, trace_state.as_deref(), live.new_traces, live.otlp.as_deref())
}

/// `application/json` or any `application/*+json`, parameters (charset) ignored.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads the whole body, refusing it as soon as it is known to exceed `limit`: from the
/// declared `Content-Length` before reading anything, or at the limit while reading a
/// chunked body. A body that does not arrive within `timeout` is a 408.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(IngestError::PayloadTooLarge { limit });
    }
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit as usize).collect())
        .await
        .map_err(|_| IngestError::BodyTimeout)?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(IngestError::PayloadTooLarge { limit })
        }
        Err(_) => Err(IngestError::BodyRead),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (ct, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/cloudevents+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert_eq!(is_json(&h), ok, "{ct}");
        }
    }
}
