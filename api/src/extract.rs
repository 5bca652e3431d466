//! Extractors whose rejections are problem+json, so malformed input never gets a plain-text
//! answer.

use axum::{
    extract::{FromRequest, FromRequestParts, Request, rejection::*},
    http::{StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// JSON body. Malformed JSON is 400, a body past the size limit 413, a wrong content type 415,
/// and well-formed JSON of the wrong shape 422, as is a control character (NUL, newline, …) in
/// any string of it, key or value: no text field of ours holds one, and the refusal names the
/// field instead of the database refusing the row.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(rejection) => return Err(json_rejection(rejection)),
        };
        // Every body is an object: serde would otherwise read a struct from an array of its
        // fields in order (`[null, null]`), which no client means.
        if !value.is_object() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "the body must be a JSON object",
            ));
        }
        if let Some(field) = control_character_at(&value, &mut String::new()) {
            return Err(ApiError::invalid(
                field.clone(),
                "invalid_characters",
                format!("`{field}` contains a control character"),
            ));
        }
        serde_path_to_error::deserialize(value)
            .map(Json)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("the body does not have the expected shape: {e}"),
                )
            })
    }
}

/// The path (`recipients[1]`, `labels.team`) of the first string, key or value, holding a
/// control character.
pub fn control_character_at(v: &serde_json::Value, path: &mut String) -> Option<String> {
    use serde_json::Value;
    let bad = |s: &str| s.chars().any(char::is_control);
    match v {
        Value::String(s) if bad(s) => Some(if path.is_empty() {
            "body".to_string()
        } else {
            path.clone()
        }),
        Value::Array(a) => a.iter().enumerate().find_map(|(i, x)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = control_character_at(x, path);
            path.truncate(len);
            found
        }),
        Value::Object(o) => o.iter().find_map(|(k, x)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            let shown: String = k.chars().filter(|c| !c.is_control()).take(64).collect();
            path.push_str(&shown);
            let found = if bad(k) {
                Some(path.clone())
            } else {
                control_character_at(x, path)
            };
            path.truncate(len);
            found
        }),
        _ => None,
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

/// Query string parameters; a bad one is a 400 that names it, as is a control character in
/// any of them.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let pairs = axum::extract::Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|r| ApiError::bad_request("invalid_query", r.body_text()))?;
        if let Some((k, _)) = pairs
            .0
            .iter()
            .find(|(k, v)| k.chars().any(char::is_control) || v.chars().any(char::is_control))
        {
            let shown: String = k.chars().filter(|c| !c.is_control()).take(64).collect();
            return Err(ApiError {
                field: Some(shown.clone()),
                ..ApiError::bad_request(
                    "invalid_query",
                    format!("query parameter `{shown}` contains a control character"),
                )
            });
        }
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

/// A trimmed text field: required or not, at most `max_chars`, no control characters.
pub fn text_field(
    value: Option<String>,
    field: &'static str,
    max_chars: usize,
    required: bool,
) -> Result<String, ApiError> {
    let v = value.map(|s| s.trim().to_string()).unwrap_or_default();
    if required && v.is_empty() {
        return Err(ApiError::invalid(
            field,
            "missing_field",
            format!("`{field}` is required"),
        ));
    }
    if v.chars().count() > max_chars {
        return Err(ApiError::invalid(
            field,
            "field_too_long",
            format!("`{field}` is longer than {max_chars} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "invalid_characters",
            format!("`{field}` contains control characters"),
        ));
    }
    Ok(v)
}
