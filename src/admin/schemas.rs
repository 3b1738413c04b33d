//! `GET /admin/schemas`, `GET /admin/schemas/{event_type}` and
//! `PUT /admin/schemas/{event_type}`: schema registration through the admin API. The files in `schemas.dir` stay the source of truth: a PUT checks the
//! schema, writes its file atomically (temporary file, fsync, rename, fsync of the
//! directory), then reloads the configuration, exactly as an edit of the file would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::AdminState;
use super::extract::UrlParam;
use crate::event::EventType;

/// What the schema endpoints need from the running daemon.
#[derive(Clone)]
pub struct SchemaAdmin {
    /// `schemas.dir`; without it schemas cannot be registered.
    pub dir: Option<PathBuf>,
    pub live: Arc<arc_swap::ArcSwap<crate::live::LiveConfig>>,
    /// Applies the directory's new content (absent when the daemon runs without a file).
    pub reloader: Option<Arc<crate::live::Reloader>>,
}

#[derive(Serialize)]
struct SchemaList {
    dir: Option<String>,
    /// Event types with a schema in the running configuration.
    schemas: Vec<String>,
}

pub(super) async fn list(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let admin = &state.schemas;
    let mut schemas = admin.live.load().schemas.types();
    schemas.sort();
    let dir = admin.dir.as_ref().map(|d| d.display().to_string());
    Json(json!(SchemaList { dir, schemas }))
}

/// The running schema of one event type (as loaded: the file may have changed since, until
/// the reload that follows).
pub(super) async fn get(
    State(state): State<AdminState>,
    UrlParam(event_type): UrlParam<String>,
) -> Response {
    let live = state.schemas.live.load();
    match live.schemas.document(&event_type) {
        Some(document) => Json(document.clone()).into_response(),
        None => {
            let message =
                format!("no schema for event type {event_type:?} in the running configuration");
            (StatusCode::NOT_FOUND, Json(json!({ "error": "not_found", "message": message })))
                .into_response()
        }
    }
}

pub(super) async fn put(
    State(state): State<AdminState>,
    UrlParam(raw_type): UrlParam<String>,
    body: Bytes,
) -> Response {
    let refuse = |status: StatusCode, code: &str, message: String| {
        (status, Json(json!({ "error": code, "message": message }))).into_response()
    };
    let admin = state.schemas.clone();
    let Ok(event_type) = EventType::parse(&raw_type) else {
        let message = format!("{raw_type:?} is not an event type (A-Z a-z 0-9 . _ - :)");
        return refuse(StatusCode::BAD_REQUEST, "bad_request", message);
    };
    let Some(dir) = admin.dir.clone() else {
        let message = "schemas.dir is not set in the configuration".to_owned();
        return refuse(StatusCode::CONFLICT, "no_schema_dir", message);
    };
    let schema: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_request", format!("not JSON: {e}")),
    };
    if let Err(e) = jsonschema::validator_for(&schema) {
        let message = format!("not a valid JSON Schema: {e}");
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "invalid_schema", message);
    }
    let file = dir.join(format!("{}.json", event_type.as_str()));
    let written = tokio::task::spawn_blocking({
        let file = file.clone();
        move || write_atomically(&file, &body)
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    let existed = match written {
        Ok(existed) => existed,
        Err(e) => {
            tracing::error!(file = %file.display(), error = %e, "could not write the schema");
            let message = "could not write the schema file".to_owned();
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, "write_failed", message);
        }
    };
    tracing::info!(event_type = event_type.as_str(), file = %file.display(), "schema written");
    // Applied now rather than by the file watcher, so the answer says whether it is live.
    let reload = match admin.reloader {
        Some(reloader) => tokio::task::spawn_blocking(move || reloader.reload())
            .await
            .unwrap_or_else(|e| Err(e.to_string())),
        None => Err("the daemon runs without a config file; restart to apply".to_owned()),
    };
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    let answer = json!({
        "event_type": event_type.as_str(),
        "file": file.display().to_string(),
        "applied": reload.is_ok(),
        "reload_error": reload.err(),
    });
    (status, Json(answer)).into_response()
}

/// Writes `bytes` to `file` so that readers see the old or the new content, never a part;
/// returns whether the file existed before.
fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let existed = file.exists();
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("schema");
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::now_v7().simple()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| existed)
}
