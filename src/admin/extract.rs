//! The admin API's extractors: axum's, with their refusals answered as the API's JSON error
//! (`{"error": "bad_request", "message": ...}`, as docs/openapi.yaml says) rather than
//! axum's plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::AdminError;

/// The query string as `T`; unknown parameters are refused (a misspelt filter must not
/// purge everything).
pub(super) struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Params(value)),
            Err(rejection) => Err(AdminError::BadRequest(rejection.body_text())),
        }
    }
}

/// A path parameter as `T` (a segment that is not UTF-8 once decoded is refused).
pub(super) struct UrlParam<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for UrlParam<T> {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(UrlParam(value)),
            Err(rejection) => Err(AdminError::BadRequest(rejection.body_text())),
        }
    }
}

/// An optional JSON body: `None` when the body is empty, else it must parse as `T`.
pub(super) struct OptionalJson<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = AdminError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| AdminError::BadRequest(rejection.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        serde_json::from_slice(&bytes)
            .map(|value| OptionalJson(Some(value)))
            .map_err(|e| AdminError::BadRequest(format!("the body is not a filter: {e}")))
    }
}
