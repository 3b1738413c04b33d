//! The admin listener (`admin.listen`, loopback by default): dead-letter queue, outbox,
//! configuration status and schemas; and [`probe`], the `/ready` and `/metrics` endpoints
//! both listeners serve.
//!
//! Every request needs `Authorization: Bearer <admin.token>` (compared in constant time);
//! without a configured token the listener is not started at all. It serves only admin
//! routes, and the ingest listener serves none of them.

pub mod console;
mod extract;
pub mod probe;
pub mod schemas;
pub mod view;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::event::{EventId, clock_ms, now_ms};
use crate::store::{DlqFilter, DlqSelector, Store, StoreError};
use extract::{OptionalJson, Params, UrlParam};
use view::{CountView, DlqEntryView, DlqPageView, OutboxView};

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1000;

#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    pub token: Secret,
    pub config_status: crate::live::SharedStatus,
    pub schemas: schemas::SchemaAdmin,
    /// This instance in the fleet, with `sync` configured.
    pub fleet: Option<crate::sync::Fleet>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/admin/dlq", get(list).delete(purge))
        .route("/admin/dlq/replay", post(replay_matching))
        .route("/admin/dlq/{event_id}", get(show).delete(delete_one))
        .route("/admin/dlq/{event_id}/replay", post(replay_one))
        .route("/admin/events/{event_id}", get(event))
        .route("/admin/outbox", get(outbox))
        .route("/admin/config", get(config_status))
        .route("/admin/fleet", get(fleet))
        .route("/admin/schemas", get(schemas::list))
        .route("/admin/schemas/{event_type}", get(schemas::get).put(schemas::put))
        .fallback(|| async { AdminError::NotFound })
        .route_layer(middleware::from_fn_with_state(state.token.clone(), authorize))
        .with_state(state)
}

/// `/metrics` on the admin listener, behind the token, when `metrics.listener: admin`;
/// `/admin/metrics` (the same text, behind the token, always: the console reads it); and
/// `/health` (no token: a liveness probe must not need the secret).
pub fn metrics_router(probe: probe::Probe, token: Secret, metrics: bool) -> Router {
    let health = Router::new().route("/health", get(|| async { Json(json!({ "status": "ok" })) }));
    let mut scrape = Router::new().route("/admin/metrics", get(probe::metrics));
    if metrics {
        scrape = scrape.route("/metrics", get(probe::metrics));
    }
    let scrape =
        scrape.route_layer(middleware::from_fn_with_state(token, authorize)).with_state(probe);
    health.merge(scrape)
}

#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    #[error(
        "not in the outbox or the dead-letter queue: delivered to every destination (and \
         removed), or never accepted by this instance"
    )]
    EventGone,
    #[error("{0}")]
    BadRequest(String),
    #[error("store unavailable")]
    Store(#[from] StoreError),
    #[error("fleet sync is not configured (no sync: section)")]
    NoFleet,
    #[error("the fleet database is unavailable")]
    Fleet(#[from] crate::sync::SyncError),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            AdminError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AdminError::NotFound | AdminError::EventGone => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AdminError::Store(e) => {
                tracing::error!(error = %e, "admin request failed in the store");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
            AdminError::NoFleet => (StatusCode::NOT_FOUND, "not_found"),
            AdminError::Fleet(e) => {
                tracing::warn!(error = %e, "fleet view: PostgreSQL unavailable");
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
            }
        };
        let mut response =
            (status, Json(json!({ "error": code, "message": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The bearer-token check in front of every admin route (and `/metrics` when it moved there).
async fn authorize(State(token): State<Secret>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
        next.run(request).await
    } else {
        AdminError::Unauthorized.into_response()
    }
}

/// Filters, from the query string or a JSON body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterParams {
    source: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    destination: Option<String>,
    reason: Option<String>,
    limit: Option<usize>,
    cursor: Option<u64>,
    /// `DELETE /admin/dlq` without a filter needs `all=true`.
    all: Option<bool>,
    /// `fleet`: every instance's entries (listing, and replaying one by id); `local` (the
    /// default): this instance's.
    scope: Option<Scope>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scope {
    #[default]
    Local,
    Fleet,
}

impl FilterParams {
    fn filter(&self) -> Result<DlqFilter, AdminError> {
        DlqFilter::parse(
            self.source.clone(),
            self.event_type.clone(),
            self.destination.clone(),
            self.reason.as_deref(),
        )
        .map_err(AdminError::BadRequest)
    }
}

fn event_id(raw: &str) -> Result<EventId, AdminError> {
    EventId::parse(raw).ok_or_else(|| AdminError::BadRequest(format!("{raw:?} is not an event id")))
}

async fn list(
    State(state): State<AdminState>,
    Params(params): Params<FilterParams>,
) -> Result<Json<DlqPageView>, AdminError> {
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    if params.scope == Some(Scope::Fleet) {
        let fleet = state.fleet.as_ref().ok_or(AdminError::NoFleet)?;
        let offset = params.cursor.unwrap_or(0);
        let (entries, next_cursor) = fleet.dlq_list(&params.filter()?, offset, limit).await?;
        let entries = entries
            .iter()
            .map(|e| DlqEntryView {
                instance_id: Some(e.instance_id.clone()),
                ..DlqEntryView::new(&e.entry, false)
            })
            .collect();
        return Ok(Json(DlqPageView { entries, next_cursor }));
    }
    let page = state.store.dlq_list(params.filter()?, params.cursor, limit).await?;
    Ok(Json(DlqPageView {
        entries: page.entries.iter().map(|e| DlqEntryView::new(e, false)).collect(),
        next_cursor: page.next_cursor,
    }))
}

async fn show(
    State(state): State<AdminState>,
    UrlParam(id): UrlParam<String>,
) -> Result<Json<DlqEntryView>, AdminError> {
    let entry = state.store.dlq_get(event_id(&id)?).await?.ok_or(AdminError::NotFound)?;
    Ok(Json(DlqEntryView::new(&entry, true)))
}

async fn replay_one(
    State(state): State<AdminState>,
    UrlParam(id): UrlParam<String>,
    Params(params): Params<FilterParams>,
) -> Result<Json<CountView>, AdminError> {
    let id = event_id(&id)?;
    let n = if params.scope == Some(Scope::Fleet) {
        let fleet = state.fleet.as_ref().ok_or(AdminError::NoFleet)?;
        fleet.dlq_replay(&state.store, id).await?
    } else {
        state.store.dlq_replay(DlqSelector::Id(id), clock_ms()).await?
    };
    if n == 0 {
        return Err(AdminError::NotFound);
    }
    tracing::info!(event_id = %id, "replayed from the DLQ");
    Ok(Json(CountView { replayed: Some(n), deleted: None }))
}

async fn replay_matching(
    State(state): State<AdminState>,
    Params(query): Params<FilterParams>,
    OptionalJson(body): OptionalJson<FilterParams>,
) -> Result<Json<CountView>, AdminError> {
    let params = body.unwrap_or(query);
    let filter = params.filter()?;
    let n = state.store.dlq_replay(DlqSelector::Matching(filter.clone()), clock_ms()).await?;
    tracing::info!(replayed = n, ?filter, "replayed from the DLQ");
    Ok(Json(CountView { replayed: Some(n), deleted: None }))
}

async fn delete_one(
    State(state): State<AdminState>,
    UrlParam(id): UrlParam<String>,
) -> Result<Json<CountView>, AdminError> {
    let n = state.store.dlq_delete(DlqSelector::Id(event_id(&id)?)).await?;
    if n == 0 {
        return Err(AdminError::NotFound);
    }
    Ok(Json(CountView { replayed: None, deleted: Some(n) }))
}

async fn purge(
    State(state): State<AdminState>,
    Params(params): Params<FilterParams>,
) -> Result<Json<CountView>, AdminError> {
    let filter = params.filter()?;
    if filter.is_empty() && params.all != Some(true) {
        return Err(AdminError::BadRequest(
            "purging the whole DLQ needs all=true; or filter by source, type, destination, reason"
                .into(),
        ));
    }
    let n = state.store.dlq_delete(DlqSelector::Matching(filter.clone())).await?;
    tracing::info!(deleted = n, ?filter, "purged from the DLQ");
    Ok(Json(CountView { replayed: None, deleted: Some(n) }))
}

async fn config_status(State(state): State<AdminState>) -> Json<crate::live::ConfigStatus> {
    Json(state.config_status.lock().expect("config status lock").clone())
}

async fn fleet(State(state): State<AdminState>) -> Result<Json<view::FleetView>, AdminError> {
    let fleet = state.fleet.as_ref().ok_or(AdminError::NoFleet)?;
    let instances = fleet.members().await?;
    Ok(Json(view::FleetView {
        instance_id: fleet.instance_id().to_owned(),
        sync: fleet.status(),
        instances,
    }))
}

/// Where one event is: pending (for which destinations), dead-lettered, or in neither (404:
/// delivered everywhere and removed, or never accepted here).
async fn event(
    State(state): State<AdminState>,
    UrlParam(id): UrlParam<String>,
) -> Result<Json<view::EventView>, AdminError> {
    let id = event_id(&id)?;
    let (pending, dead) = tokio::try_join!(state.store.find_pending(id), state.store.dlq_get(id))?;
    let view = view::EventView::new(id, &pending, dead.as_ref());
    Ok(Json(view.ok_or(AdminError::EventGone)?))
}

async fn outbox(State(state): State<AdminState>) -> Result<Json<OutboxView>, AdminError> {
    Ok(Json(state.store.outbox_stats(now_ms()).await?.into()))
}
