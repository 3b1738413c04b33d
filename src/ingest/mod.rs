//! The ingest listener: `POST /api/events/{event_type}` and `GET /health`.
//!
//! A request is checked in the order that costs least first: API key, content type, event
//! type, body size, JSON syntax, schema, routability. Only then is it handed to the store, and
//! `202 Accepted` is sent after the store's durable commit returned Ok, never before.

mod error;

use std::sync::Arc;

use arc_swap::ArcSwap;
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
use subtle::ConstantTimeEq;

pub use error::IngestError;

use crate::app::LiveConfig;
use crate::event::{EventId, EventType, SourceName, ValidatedEvent, now_ms};
use crate::routing::Body as EventBody;
use crate::store::{Store, StoreError};
use crate::telemetry::metrics::{Metrics, status_class};

/// Where accepted events go: the store in the daemon. The seam exists so that benchmarks can
/// measure the HTTP and validation path alone, with the same router.
pub trait EventSink: Send + Sync + 'static {
    /// Resolves once the event is durable (or refused).
    fn append(&self, event: ValidatedEvent) -> BoxFuture<'_, Result<EventId, StoreError>>;
}

impl EventSink for Store {
    fn append(&self, event: ValidatedEvent) -> BoxFuture<'_, Result<EventId, StoreError>> {
        Box::pin(Store::append(self, event))
    }
}

/// What the ingest handlers share: a cheap clone per request.
#[derive(Clone)]
pub struct IngestState {
    pub sink: Arc<dyn EventSink>,
    /// One snapshot is loaded per request and used from start to end.
    pub live: Arc<ArcSwap<LiveConfig>>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/api/events/{event_type}", post(accept_event))
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

async fn accept_event(
    State(state): State<IngestState>,
    Path(event_type): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const SOURCE: &str = "default";
    let started = std::time::Instant::now();
    let result = accept(&state, &event_type, &headers, body).await;
    let m = &state.metrics;
    let status = result.as_ref().map_or_else(|e| e.status(), |_| StatusCode::ACCEPTED);
    m.ingest_requests.with_label_values(&[SOURCE, status_class(status.as_u16())]).inc();
    m.ingest_duration.with_label_values(&[SOURCE]).observe(started.elapsed().as_secs_f64());
    match result {
        Ok((id, size)) => {
            m.ingest_accepted.with_label_values(&[SOURCE]).inc();
            m.ingest_body_bytes.with_label_values(&[SOURCE]).observe(size as f64);
            let answer = json!({ "event_id": id.to_string(), "status": "accepted" });
            (StatusCode::ACCEPTED, Json(answer)).into_response()
        }
        Err(error) => {
            m.ingest_rejected.with_label_values(&[SOURCE, error.metric_reason()]).inc();
            match &error {
                IngestError::Store(cause) => {
                    tracing::warn!(source = "default", %cause, "event refused: store cannot accept");
                }
                other => tracing::info!(
                    source = "default",
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
    event_type: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<(EventId, usize), IngestError> {
    let live = state.live.load_full();
    authenticate(&live, headers)?;
    if !is_json(headers) {
        return Err(IngestError::UnsupportedMediaType);
    }
    let event_type =
        EventType::parse(event_type).map_err(|e| IngestError::InvalidEventType(e.to_string()))?;
    let source = SourceName::parse("default").expect("a valid literal name");
    let bytes = read_body(headers, body, live.max_body_bytes).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| IngestError::InvalidJson(e.to_string()))?;
    if !value.is_object() {
        return Err(IngestError::NotAnObject);
    }
    live.schemas.validate(&event_type, &value).map_err(IngestError::SchemaViolation)?;
    if !live.routes.is_routable(&source, &event_type, &mut EventBody::parsed(value)) {
        return Err(IngestError::Unroutable);
    }
    let size = bytes.len();
    let event = ValidatedEvent::new(EventId::new(), source, event_type, now_ms(), bytes);
    let id = state.sink.append(event).await?;
    tracing::debug!(event_id = %id, source = "default", "event accepted");
    Ok((id, size))
}

fn authenticate(live: &LiveConfig, headers: &HeaderMap) -> Result<(), IngestError> {
    let presented = headers.get("x-api-key").map(|v| v.as_bytes()).unwrap_or_default();
    if presented.is_empty() {
        return Err(IngestError::Unauthorized);
    }
    // Every key is compared (no early exit) and each comparison is constant-time in content.
    let matched = live
        .api_keys
        .iter()
        .fold(0u8, |acc, key| acc | presented.ct_eq(key.expose().as_bytes()).unwrap_u8());
    if matched == 1 { Ok(()) } else { Err(IngestError::Unauthorized) }
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

async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(IngestError::PayloadTooLarge { limit });
    }
    match Limited::new(body, limit as usize).collect().await {
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
