//! The one place that picks status codes: every error leaves the API as an RFC 9457 problem
//! document with a stable `code`.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub code: String,
    pub detail: String,
}

pub fn problem(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
    ApiError(Problem {
        type_uri: format!("https://cogward.dev/problems/{code}"),
        title: status.canonical_reason().unwrap_or("error").to_string(),
        status: status.as_u16(),
        code: code.to_string(),
        detail: detail.into(),
    })
}

#[derive(Debug)]
pub struct ApiError(pub Problem);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.0).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

/// A storage failure (full disk, database gone) is a 503 `storage_unavailable`: retrying later
/// can succeed. Anything else unexpected is a 500 with the cause logged, not leaked.
impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        if crate::db::is_storage_unavailable(&e) {
            tracing::error!(error = %format!("{e:#}"), "storage unavailable");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the database cannot take this now (full, or unreachable); retry later",
            );
        }
        tracing::error!(error = %format!("{e:#}"), "internal error");
        problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the engine log",
        )
    }
}

/// `Json<T>` whose rejections are problem documents.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        JsonRejection::JsonDataError(_) => {
            problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail)
        }
        JsonRejection::JsonSyntaxError(_) => {
            problem(StatusCode::BAD_REQUEST, "malformed_json", detail)
        }
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body exceeds this endpoint's limit (see docs/api.md)",
        ),
        _ => problem(StatusCode::BAD_REQUEST, "bad_request", detail),
    }
}

/// `Query<T>` whose rejections are problem documents.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => Err(problem(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                e.body_text(),
            )),
            Err(e) => Err(problem(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                e.body_text(),
            )),
        }
    }
}

/// An optional JSON body: empty means `T::default()`; anything else must parse.
pub fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            problem(StatusCode::BAD_REQUEST, "malformed_json", e.to_string())
        } else {
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                e.to_string(),
            )
        }
    })
}
