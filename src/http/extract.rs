//! Extractors that turn bad requests into the SPEC §7 error shape.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use tower_http::request_id::RequestId;

use crate::error::ApiError;

/// `Json<T>` whose rejections are JSON errors: 415 (content type), 413 (too large), 400 (syntax), 422 (shape).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // The bytes are read once (under the body limit) and kept for the NUL check.
        let headers = req.headers().clone();
        let ApiBytes(bytes) = ApiBytes::from_request(req, state).await?;
        let mut buffered = Request::new(axum::body::Body::from(bytes.clone()));
        *buffered.headers_mut() = headers;
        match axum::Json::<T>::from_request(buffered, state).await {
            Ok(axum::Json(v)) => {
                refuse_nul(&bytes)?;
                Ok(ApiJson(v))
            }
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

/// 422 when a string of a valid JSON body holds U+0000: PostgreSQL `text` cannot store it (the insert failed
/// with a 500), and no field of this API has a use for it. In valid JSON it can only be the escape `\u0000`
/// (raw control bytes are a syntax error), whose backslash is not itself escaped.
pub fn refuse_nul(json: &[u8]) -> Result<(), ApiError> {
    let nul = json
        .windows(6)
        .enumerate()
        .any(|(i, w)| w == b"\\u0000" && json[..i].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 0);
    if nul {
        return Err(ApiError::unprocessable(
            "invalid_body",
            "a text field holds the NUL character (\\u0000), which is not allowed; remove it",
        ));
    }
    Ok(())
}

fn json_rejection(r: JsonRejection) -> ApiError {
    let detail = r.body_text();
    let detail = detail.rsplit_once("target type: ").map(|(_, d)| d.to_owned()).unwrap_or(detail);
    match r {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {detail}"))
        }
        JsonRejection::JsonDataError(_) => ApiError::unprocessable(
            "invalid_body",
            format!("the JSON body does not have the expected fields: {detail}"),
        ),
        _ => body_rejection(r.status(), &detail),
    }
}

/// 413 when the body is over the limit, else 400.
fn body_rejection(status: StatusCode, detail: &str) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than the {} KiB limit", super::MAX_BODY_BYTES / 1024),
        )
    } else {
        ApiError::bad_request("unreadable_body", format!("the body could not be read: {detail}"))
    }
}

/// The raw body (`Bytes`) whose rejections are JSON errors: 413 (too large), 400 (unreadable).
pub struct ApiBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state).await.map(ApiBytes).map_err(|r| body_rejection(r.status(), &r.body_text()))
    }
}

/// `Query<T>` with JSON errors.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::bad_request("invalid_query", format!("the query string is not valid: {}", e.body_text())))
            }
            Err(e) => Err(ApiError::bad_request("invalid_query", e.body_text())),
        }
    }
}

/// The request id set by the request-id middleware (also echoed in `x-request-id`).
pub struct ReqId(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ReqId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ReqId(parts.extensions.get::<RequestId>().and_then(|id| id.header_value().to_str().ok()).map(str::to_owned)))
    }
}

#[cfg(test)]
mod tests {
    use super::refuse_nul;

    #[test]
    fn only_a_real_nul_escape_is_refused() {
        assert!(refuse_nul(br#"{"name": "a\u0000b"}"#).is_err());
        assert!(refuse_nul(br#"{"a\u0000": 1}"#).is_err());
        assert!(refuse_nul(br#"{"name": "\\\u0000"}"#).is_err());
        // An escaped backslash followed by the text `u0000`, and other escapes, are data.
        assert!(refuse_nul(br#"{"name": "\\u0000"}"#).is_ok());
        assert!(refuse_nul(br#"{"name": "\u0001 \u00000 u0000"}"#).is_err());
        assert!(refuse_nul(br#"{"name": "\u0001 u0000 %00"}"#).is_ok());
    }
}
