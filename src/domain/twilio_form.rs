//! Decoding of Twilio webhook bodies (`application/x-www-form-urlencoded`), kept pure so that it can be
//! fuzzed with the signature check (`fuzz/fuzz_targets/twilio_form.rs`).
//!
//! Self-contained: only `std`, `serde_urlencoded` and `thiserror`.

/// Whether a `Content-Type` value announces a form body (parameters such as `; charset=utf-8` allowed).
pub fn is_form(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| c.trim().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"))
}

/// The body is not a form encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the body is not a valid form encoding")]
pub struct MalformedForm;

/// The fields of a form body, in order, repeated names kept. Decoding is lenient as in browsers and in
/// Twilio's SDKs: `+` is a space, invalid percent escapes stay as they are and invalid UTF-8 becomes U+FFFD.
pub fn decode(body: &[u8]) -> Result<Vec<(String, String)>, MalformedForm> {
    serde_urlencoded::from_bytes(body).map_err(|_| MalformedForm)
}
