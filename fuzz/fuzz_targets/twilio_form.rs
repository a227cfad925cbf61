//! The Twilio webhook path: decode a form body as the server does, verify a signature over it; no panic,
//! a signature we compute verifies (for the primary or the secondary token), and decoded fields survive a
//! re-encoding unchanged.
//!
//! Input: `url \n token \n body` (missing lines are empty).
#![no_main]

#[allow(dead_code)]
#[path = "../../src/domain/twilio_form.rs"]
mod twilio_form;
#[allow(dead_code)]
#[path = "../../src/domain/twilio_signature.rs"]
mod twilio_signature;

use libfuzzer_sys::fuzz_target;
use twilio_signature::{compute, verify, TwilioSignatureError};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let url = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let token = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();

    let _ = twilio_form::is_form(Some(&url));
    let Ok(params) = twilio_form::decode(body) else { return };
    // Whatever the header: an answer, never a panic.
    let _ = verify(&url, &params, &token, &[&token, "secondary"]);
    let _ = verify(&url, &params, &url, &[]);

    let again = twilio_form::decode(serde_urlencoded::to_string(&params).unwrap().as_bytes()).unwrap();
    assert_eq!(again, params, "decode(encode(fields)) changes nothing");

    if token.is_empty() {
        return;
    }
    let signature = compute(&url, &params, &token);
    assert_eq!(verify(&url, &params, &signature, &["primary-token", &token]), Ok(()));
    // The order of the fields does not matter to Twilio's scheme.
    let mut reversed = params.clone();
    reversed.reverse();
    assert_eq!(verify(&url, &reversed, &signature, &[&token]), Ok(()));
    // One more field changes the signed data.
    let mut added = params.clone();
    added.push(("Extra".into(), format!("{}x", params.len())));
    assert_eq!(verify(&url, &added, &signature, &[&token]), Err(TwilioSignatureError::Mismatch));
});
