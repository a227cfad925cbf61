//! Twilio webhooks: the request is accepted only with a valid `X-Twilio-Signature` computed over the URL
//! rebuilt from `APP_URL` + path + query and the form fields, with the primary or secondary auth token.
//! No token configured → every request is refused (fail closed).

use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::domain::twilio_form;
use crate::domain::twilio_signature::{self, TwilioSignatureError};
use crate::error::ApiError;
use crate::state::AppState;

/// The verified form fields of a Twilio webhook.
pub struct TwilioForm(pub Vec<(String, String)>);

impl TwilioForm {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A required field, or a 400 naming it.
    pub fn require(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::bad_request("missing_field", format!("the Twilio request has no {name}")))
    }
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "invalid_signature", message)
}

/// Verify a Twilio signature for `path_and_query` of this service with the primary or secondary token.
pub fn verify(
    state: &AppState,
    path_and_query: &str,
    params: &[(String, String)],
    signature: &str,
) -> Result<(), ApiError> {
    let tw = &state.settings.twilio;
    let tokens: Vec<&str> =
        [&tw.auth_token, &tw.auth_token_secondary].into_iter().flatten().map(|t| t.expose()).collect();
    let url = state.settings.absolute_url(path_and_query);
    twilio_signature::verify(&url, params, signature, &tokens).map_err(|e| match e {
        TwilioSignatureError::NoTokenConfigured => ApiError::new(
            StatusCode::FORBIDDEN,
            "twilio_not_configured",
            "TWILIO_AUTH_TOKEN is not configured, so no Twilio webhook can be verified; every one is refused",
        ),
        TwilioSignatureError::MissingSignature => {
            forbidden("the X-Twilio-Signature header is missing; only Twilio may call this endpoint")
        }
        TwilioSignatureError::Mismatch => {
            forbidden("the X-Twilio-Signature header does not match this request (check APP_URL and the auth token)")
        }
    })
}

impl FromRequest<AppState> for TwilioForm {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let signature =
            req.headers().get("x-twilio-signature").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let is_form = twilio_form::is_form(req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()));
        let path_and_query = req.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
        let body = axum::body::Bytes::from_request(req, state).await.map_err(|_| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is too large")
        })?;
        let params: Vec<(String, String)> = if is_form {
            twilio_form::decode(&body).map_err(|e| ApiError::bad_request("malformed_form", e.to_string()))?
        } else {
            Vec::new()
        };
        // The signature first: an unsigned request learns nothing else about the endpoint.
        verify(state, &path_and_query, &params, &signature)?;
        // Signed by Twilio: the handler works in the Twilio system context (row-level security).
        crate::db::scope::enter(crate::db::scope::Scope::System("twilio-webhook"));
        if !is_form {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Twilio webhooks are form-encoded (application/x-www-form-urlencoded)",
            ));
        }
        // Twilio never sends U+0000, and PostgreSQL `text` cannot store it (a signed request failed with a 500).
        if params.iter().any(|(k, v)| k.contains('\0') || v.contains('\0')) {
            return Err(ApiError::bad_request("malformed_form", "a form field holds the NUL character"));
        }
        Ok(TwilioForm(params))
    }
}

/// A TwiML answer.
pub struct TwiMl(pub axum::body::Bytes);

impl IntoResponse for TwiMl {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], self.0).into_response()
    }
}
