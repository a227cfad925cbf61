//! `Stripe-Signature` verification: any header, secret and body; no panic, and a header we sign verifies.
//!
//! Input: `header \n secret \n body` (missing lines are empty).
#![no_main]

#[allow(dead_code)]
#[path = "../../src/domain/stripe_signature.rs"]
mod stripe_signature;

use libfuzzer_sys::fuzz_target;
use stripe_signature::{sign, verify, StripeSignatureError, VerifiedTimestamp};

const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let header = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let secret = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();

    // Any header: an answer, never a panic, whatever the clock and tolerance.
    for (now, tolerance) in [(NOW, 300), (i64::MAX, 0), (i64::MIN, i64::MAX), (0, -1)] {
        let _ = verify(&header, body, &[&secret, "whsec_other"], now, tolerance);
    }

    // A header we compute verifies at its own time, for any timestamp (including negative ones) and any secret
    // the verifier accepts; the same header refuses another body and a time past the tolerance.
    let t = NOW - i64::from(data.len() as u16) + i64::from(data.first().copied().unwrap_or(0)) * 1_000_003;
    let good = sign(body, &secret, t);
    if secret.trim().is_empty() {
        assert_eq!(verify(&good, body, &[&secret], t, 0), Err(StripeSignatureError::NoSecretConfigured));
        return;
    }
    assert_eq!(verify(&good, body, &["whsec_rotated", &secret], t, 0), Ok(VerifiedTimestamp(t)));
    assert_eq!(verify(&good, body, &[&secret], t + 300, 300), Ok(VerifiedTimestamp(t)));
    assert_eq!(verify(&good, body, &[&secret], t + 301, 300), Err(StripeSignatureError::TimestampOutsideTolerance));
    let mut other = body.to_vec();
    other.push(b'x');
    assert_eq!(verify(&good, &other, &[&secret], t, 0), Err(StripeSignatureError::NoMatchingSignature));
    // Our header followed by the fuzzed one's parts: the first `t` (ours) wins and the extra `v1`s are only
    // more candidates, so it verifies unless a part makes the header malformed.
    let combined = format!("{good},{header}");
    let r = verify(&combined, body, &[&secret], t, 0);
    assert!(
        matches!(r, Ok(VerifiedTimestamp(x)) if x == t) || r == Err(StripeSignatureError::Malformed),
        "{combined:?}: {r:?}"
    );
});
