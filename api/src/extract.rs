//! Extractors whose rejections are problem+json, so malformed input never gets a plain-text
//! answer.

use axum::{
    extract::{FromRequest, FromRequestParts, Request, rejection::*},
    http::{StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// JSON body. Malformed JSON is 400, a body past the size limit 413, a wrong content type 415,
/// and well-formed JSON of the wrong shape 422.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let detail = r.body_text();
    match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", detail)
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send a JSON body with `Content-Type: application/json`",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail)
        }
        _ => ApiError::bad_request("malformed_json", detail),
    }
}

/// Path parameters; an unparsable one (say, an org id that is not a UUID) is a 404.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(r) => Err(ApiError::not_found("not_found", r.body_text())),
        }
    }
}

/// Query string parameters; a bad one is a 400 that names it.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(r) => Err(ApiError::bad_request("invalid_query", r.body_text())),
        }
    }
}

/// A JSON number as decimal text: integers exactly, others as [`billing::credits::json_float_text`]
/// gives them, so a value with more digits than a field's scale (or than a float holds exactly)
/// is refused by that field's check rather than rounded.
pub fn decimal_text(n: &serde_json::Number) -> String {
    match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => i.to_string(),
        (_, Some(u), _) => u.to_string(),
        (_, _, Some(f)) => billing::credits::json_float_text(f),
        _ => n.to_string(),
    }
}
