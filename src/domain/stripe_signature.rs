//! Verification of Stripe's `Stripe-Signature` webhook header.
//!
//! Self-contained: only `std`, `hmac`, `sha2`, `subtle`, `hex` and `thiserror`.
//!
//! What Stripe signs (mirrors the official `stripe` Python SDK,
//! `stripe/_webhook.py`, `WebhookSignature`):
//!
//! * header `t=<unix seconds>,v1=<hex>,v1=<hex>,v0=<hex>...`, split on `,`
//!   and each part on `=`, with no trimming of whitespace: a part `" v1=.."`
//!   has the key `" v1"` and is ignored;
//! * the first `t=` wins; a part `t` or `v1` without `=` makes the header
//!   malformed (the SDK raises there too);
//! * like Python's `str.split("=", 2)`, a value stops at a second `=`;
//! * signed payload = `"{t}.{raw body}"`, where `t` is the parsed integer
//!   written back in decimal (the SDK uses `"%d.%s"`);
//! * HMAC-SHA256 keyed with the UTF-8 bytes of the **whole** secret string,
//!   `whsec_` prefix included (the part after `whsec_` is *not* decoded),
//!   lower-case hex; a `v1` value is compared as a string with the expected
//!   hex, so an upper-case signature does not match (as in the SDK).
//!
//! Differences from the SDK, all stricter or explicit:
//! * the age check is two-sided (a timestamp more than `tolerance_secs` in
//!   the future is refused too) and the clock is a parameter;
//! * `t` must be an optional sign followed by ASCII digits fitting an `i64`,
//!   with optional ASCII whitespace around it (Python's `int()` also takes
//!   `1_000` and non-ASCII digits);
//! * several secrets may be given (rotation), every `v1` is checked against
//!   every secret, in constant time per comparison.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

type HmacSha256 = Hmac<Sha256>;

/// Stripe's default tolerance, in seconds.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// The scheme Stripe uses for live signatures.
const EXPECTED_SCHEME: &str = "v1";

/// The `t=` of a header whose signature was verified (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VerifiedTimestamp(pub i64);

/// Why a `Stripe-Signature` header was refused. The messages never contain a
/// secret, the header, or an expected signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StripeSignatureError {
    #[error("the Stripe-Signature header is missing or empty")]
    MissingHeader,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("the Stripe-Signature timestamp is outside the tolerance window")]
    TimestampOutsideTolerance,
    #[error("no signature in the Stripe-Signature header matches a configured secret")]
    NoMatchingSignature,
    #[error("no Stripe webhook secret is configured")]
    NoSecretConfigured,
}

/// Verifies `header` (the value of `Stripe-Signature`) over the raw request
/// `body` with any of `secrets`, at time `now_unix`, accepting timestamps at
/// most `tolerance_secs` away from `now_unix` in either direction.
///
/// Order of checks, as in the SDK: empty header, secrets, parse, signature,
/// then age (so the age of a request is only reported for genuine ones).
pub fn verify(
    header: &str,
    body: &[u8],
    secrets: &[&str],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<VerifiedTimestamp, StripeSignatureError> {
    if header.trim().is_empty() {
        return Err(StripeSignatureError::MissingHeader);
    }
    // The SDK refuses a missing or whitespace-only secret.
    let secrets: Vec<&str> = secrets.iter().copied().filter(|s| !s.trim().is_empty()).collect();
    if secrets.is_empty() {
        return Err(StripeSignatureError::NoSecretConfigured);
    }

    let (timestamp, signatures) = parse_header(header)?;
    if signatures.is_empty() {
        return Err(StripeSignatureError::Malformed);
    }

    let mut matched = Choice::from(0u8);
    for secret in &secrets {
        let expected = compute_signature(timestamp, body, secret);
        for candidate in &signatures {
            // `ct_eq` on slices of different lengths is false.
            matched |= expected.as_bytes().ct_eq(candidate.as_bytes());
        }
    }
    if !bool::from(matched) {
        return Err(StripeSignatureError::NoMatchingSignature);
    }

    // i128 so that no pair of i64 values can overflow.
    let age = i128::from(now_unix) - i128::from(timestamp);
    if age.abs() > i128::from(tolerance_secs) {
        return Err(StripeSignatureError::TimestampOutsideTolerance);
    }
    Ok(VerifiedTimestamp(timestamp))
}

/// Builds a `Stripe-Signature` header `t={t},v1={hex}` for `body`, as
/// `stripe.WebhookSignature.generate_signature_header` does.
pub fn sign(body: &[u8], secret: &str, t: i64) -> String {
    format!("t={t},{EXPECTED_SCHEME}={}", compute_signature(t, body, secret))
}

/// Lower-case hex HMAC-SHA256 of `"{t}.{body}"` keyed with the secret's bytes.
fn compute_signature(t: i64, body: &[u8], secret: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Splits the header like the SDK's `_get_timestamp_and_signatures`:
/// first `t`, all `v1`s.
fn parse_header(header: &str) -> Result<(i64, Vec<&str>), StripeSignatureError> {
    let mut timestamp: Option<&str> = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let mut pieces = part.splitn(3, '=');
        let key = pieces.next().unwrap_or("");
        if key != "t" && key != EXPECTED_SCHEME {
            continue;
        }
        // `i[1]` on a part without `=` raises IndexError in the SDK.
        let value = pieces.next().ok_or(StripeSignatureError::Malformed)?;
        if key == "t" {
            timestamp.get_or_insert(value);
        } else {
            signatures.push(value);
        }
    }
    let timestamp = timestamp.ok_or(StripeSignatureError::Malformed)?;
    Ok((parse_timestamp(timestamp)?, signatures))
}

fn parse_timestamp(raw: &str) -> Result<i64, StripeSignatureError> {
    let trimmed = raw.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(StripeSignatureError::Malformed);
    }
    trimmed.parse::<i64>().map_err(|_| StripeSignatureError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const OTHER: &str = "whsec_other_secret";
    const T: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;

    fn ok(header: &str, body: &[u8], secrets: &[&str], now: i64) -> bool {
        verify(header, body, secrets, now, DEFAULT_TOLERANCE_SECS).is_ok()
    }

    // ---- fixed vectors from the official SDK (stripe==16.1.0, CPython 3.11) ----

    #[test]
    fn an_ascii_body_matches_the_official_sdk_vector() {
        // stripe.WebhookSignature.generate_signature_header(
        //     '{"id":"evt_1","object":"event"}', "whsec_test_secret", timestamp=1700000000)
        let sdk = "t=1700000000,v1=0c8670ed117751cc551a20e35839447075c42800ea3cf3e8a2fbda99cd1e6edd";
        assert_eq!(sign(BODY, SECRET, T), sdk);
        assert_eq!(verify(sdk, BODY, &[SECRET], T, 300), Ok(VerifiedTimestamp(T)));
    }

    #[test]
    fn a_french_and_emoji_body_matches_the_official_sdk_vector() {
        // stripe.WebhookSignature.generate_signature_header(
        //     '{"description":"Café crème à Noël 🎄🔒"}', "whsec_test_secret", timestamp=1700000000)
        let body = "{\"description\":\"Café crème à Noël 🎄🔒\"}".as_bytes();
        let sdk = "t=1700000000,v1=b73921c0369d839b94cff7f263eec612acb4a849ae14a3f82e6d11ac25b2c347";
        assert_eq!(sign(body, SECRET, T), sdk);
        assert!(ok(sdk, body, &[SECRET], T));
    }

    #[test]
    fn the_whole_whsec_string_is_the_key_as_in_the_sdk() {
        // stripe.WebhookSignature.generate_signature_header(
        //     "", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", timestamp=1492774577)
        let sdk = "t=1492774577,v1=31a4ab455e1d44ff1f46f4ee0b776e8feab5b345bf637769a1b2649f9d9a1ca1";
        assert_eq!(sign(b"", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1_492_774_577), sdk);
        // Keying with only the part after `whsec_` gives something else.
        assert_ne!(sign(b"", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", 1_492_774_577), sdk);
    }

    // ---- good cases ----

    #[test]
    fn a_freshly_signed_body_is_accepted_and_its_timestamp_returned() {
        let header = sign(BODY, SECRET, T);
        assert_eq!(verify(&header, BODY, &[SECRET], T + 10, 300), Ok(VerifiedTimestamp(T)));
    }

    #[test]
    fn the_second_secret_matches_during_rotation() {
        let header = sign(BODY, OTHER, T);
        assert!(ok(&header, BODY, &[SECRET, OTHER], T));
        assert!(ok(&header, BODY, &[OTHER, SECRET], T));
    }

    #[test]
    fn any_of_several_v1_signatures_may_match() {
        let good = compute_signature(T, BODY, SECRET);
        let bad = "0".repeat(64);
        let header = format!("t={T},v1={bad},v1={good},v0={bad}");
        assert!(ok(&header, BODY, &[SECRET], T));
        let header = format!("t={T},v1={good},v1={bad}");
        assert!(ok(&header, BODY, &[SECRET], T));
    }

    #[test]
    fn a_header_signed_by_each_of_two_secrets_passes_with_either() {
        let a = compute_signature(T, BODY, SECRET);
        let b = compute_signature(T, BODY, OTHER);
        let header = format!("t={T},v1={a},v1={b}");
        assert!(ok(&header, BODY, &[SECRET], T));
        assert!(ok(&header, BODY, &[OTHER], T));
    }

    #[test]
    fn unknown_schemes_and_extra_parts_are_ignored() {
        let good = compute_signature(T, BODY, SECRET);
        let header = format!("v0=abc,t={T},foo=bar,v1={good},zzz");
        assert!(ok(&header, BODY, &[SECRET], T));
    }

    #[test]
    fn blank_secrets_are_skipped_when_another_is_configured() {
        let header = sign(BODY, SECRET, T);
        assert!(ok(&header, BODY, &["", "  ", SECRET], T));
    }

    #[test]
    fn the_first_timestamp_wins_like_the_sdk() {
        let good = compute_signature(1, BODY, SECRET);
        let header = format!("t=1,t=2,v1={good}");
        assert_eq!(verify(&header, BODY, &[SECRET], 1, 300), Ok(VerifiedTimestamp(1)));
    }

    #[test]
    fn leading_zeros_in_t_are_signed_as_the_plain_integer() {
        // The SDK signs "%d.%s" % (int(t), body).
        let good = compute_signature(T, BODY, SECRET);
        let header = format!("t=0{T},v1={good}");
        assert!(ok(&header, BODY, &[SECRET], T));
    }

    #[test]
    fn the_edges_of_the_tolerance_window_are_accepted() {
        let header = sign(BODY, SECRET, T);
        assert!(ok(&header, BODY, &[SECRET], T + 300));
        assert!(ok(&header, BODY, &[SECRET], T - 300));
    }

    // ---- refusals ----

    #[test]
    fn a_tampered_body_is_refused() {
        let header = sign(BODY, SECRET, T);
        let tampered = br#"{"id":"evt_2","object":"event"}"#;
        assert_eq!(verify(&header, tampered, &[SECRET], T, 300), Err(StripeSignatureError::NoMatchingSignature));
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let header = sign(BODY, SECRET, T);
        assert_eq!(verify(&header, BODY, &[OTHER], T, 300), Err(StripeSignatureError::NoMatchingSignature));
    }

    #[test]
    fn a_tampered_timestamp_is_refused() {
        let sig = compute_signature(T, BODY, SECRET);
        let header = format!("t={},v1={sig}", T + 1);
        assert_eq!(verify(&header, BODY, &[SECRET], T, 300), Err(StripeSignatureError::NoMatchingSignature));
    }

    #[test]
    fn an_upper_case_signature_is_refused_like_in_the_sdk() {
        let sig = compute_signature(T, BODY, SECRET).to_uppercase();
        let header = format!("t={T},v1={sig}");
        assert_eq!(verify(&header, BODY, &[SECRET], T, 300), Err(StripeSignatureError::NoMatchingSignature));
    }

    #[test]
    fn a_v0_signature_alone_is_not_enough() {
        let sig = compute_signature(T, BODY, SECRET);
        let header = format!("t={T},v0={sig}");
        assert_eq!(verify(&header, BODY, &[SECRET], T, 300), Err(StripeSignatureError::Malformed));
    }

    #[test]
    fn an_expired_timestamp_is_refused() {
        let header = sign(BODY, SECRET, T);
        assert_eq!(
            verify(&header, BODY, &[SECRET], T + 301, 300),
            Err(StripeSignatureError::TimestampOutsideTolerance)
        );
    }

    #[test]
    fn a_timestamp_too_far_in_the_future_is_refused() {
        let header = sign(BODY, SECRET, T);
        assert_eq!(
            verify(&header, BODY, &[SECRET], T - 301, 300),
            Err(StripeSignatureError::TimestampOutsideTolerance)
        );
    }

    #[test]
    fn an_expired_header_with_a_bad_signature_reports_the_signature() {
        let header = format!("t={T},v1={}", "ab".repeat(32));
        assert_eq!(verify(&header, BODY, &[SECRET], T + 10_000, 300), Err(StripeSignatureError::NoMatchingSignature));
    }

    #[test]
    fn extreme_clocks_and_timestamps_do_not_overflow() {
        for (t, now) in [(i64::MIN, i64::MAX), (i64::MAX, i64::MIN), (i64::MAX, 0)] {
            let header = sign(BODY, SECRET, t);
            assert_eq!(
                verify(&header, BODY, &[SECRET], now, 300),
                Err(StripeSignatureError::TimestampOutsideTolerance)
            );
        }
        let header = sign(BODY, SECRET, i64::MAX);
        assert!(verify(&header, BODY, &[SECRET], i64::MAX, i64::MAX).is_ok());
    }

    #[test]
    fn an_empty_header_is_missing() {
        for header in ["", "   ", "\t"] {
            assert_eq!(verify(header, BODY, &[SECRET], T, 300), Err(StripeSignatureError::MissingHeader));
        }
    }

    #[test]
    fn no_secret_or_only_blank_secrets_is_a_configuration_error() {
        let header = sign(BODY, SECRET, T);
        for secrets in [&[][..], &[""][..], &["", " \t"][..]] {
            assert_eq!(verify(&header, BODY, secrets, T, 300), Err(StripeSignatureError::NoSecretConfigured));
        }
    }

    #[test]
    fn odd_headers_are_malformed() {
        let sig = compute_signature(T, BODY, SECRET);
        let cases = [
            "t=".to_string(),
            "v1=".to_string(),
            ",,,".to_string(),
            "t=1,t=2".to_string(),
            "garbage".to_string(),
            "=".to_string(),
            "t".to_string(),
            format!("t,v1={sig}"),
            format!("t={T},v1"),
            format!("t=abc,v1={sig}"),
            format!("t=12a,v1={sig}"),
            format!("t=1.5,v1={sig}"),
            format!("t=+,v1={sig}"),
            format!("t=1_000,v1={sig}"),
            format!("t=99999999999999999999999,v1={sig}"),
            format!("t=-99999999999999999999999,v1={sig}"),
            format!("t=٣,v1={sig}"),
            format!(" t={T},v1={sig}"),
            format!("T={T},v1={sig}"),
            format!("v1={sig}"),
            format!("t={T}"),
            format!("t={T},V1={sig}"),
            format!("t={T}, v1={sig}"),
        ];
        for header in &cases {
            assert_eq!(
                verify(header, BODY, &[SECRET], T, 300),
                Err(StripeSignatureError::Malformed),
                "header {header:?}"
            );
        }
    }

    #[test]
    fn whitespace_inside_a_v1_value_does_not_match() {
        let sig = compute_signature(T, BODY, SECRET);
        for header in [format!("t={T},v1= {sig}"), format!("t={T},v1={sig} "), format!("t={T},v1={sig}\n")] {
            assert_eq!(
                verify(&header, BODY, &[SECRET], T, 300),
                Err(StripeSignatureError::NoMatchingSignature),
                "header {header:?}"
            );
        }
    }

    #[test]
    fn whitespace_around_the_t_value_is_tolerated_like_python_int() {
        let sig = compute_signature(T, BODY, SECRET);
        assert!(ok(&format!("t= {T} ,v1={sig}"), BODY, &[SECRET], T));
    }

    #[test]
    fn a_value_stops_at_a_second_equals_sign_like_the_sdk() {
        // Python: "v1=<sig>=junk".split("=", 2) -> ["v1", "<sig>", "junk"].
        let sig = compute_signature(T, BODY, SECRET);
        assert!(ok(&format!("t={T},v1={sig}=junk"), BODY, &[SECRET], T));
        assert!(ok(&format!("t={T}=junk,v1={sig}"), BODY, &[SECRET], T));
    }

    #[test]
    fn an_empty_v1_is_a_mismatch_not_a_crash() {
        assert_eq!(
            verify(&format!("t={T},v1="), BODY, &[SECRET], T, 300),
            Err(StripeSignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn unicode_and_odd_inputs_never_panic() {
        let sig = compute_signature(T, BODY, SECRET);
        let fixed = [
            "t=١٧٠٠,v1=é".to_string(),
            "🎄=🎄,t=🎄".to_string(),
            format!("t={T},v1=é{sig}"),
            "\u{0}t=1,v1=\u{0}".to_string(),
            "t=1=2=3=4,v1=a=b=c".to_string(),
            ",".repeat(10_000),
            format!("t={T},{}", "v1=00,".repeat(5_000)),
            "t=-0,v1=00".to_string(),
            "t=-9223372036854775808,v1=00".to_string(),
            "t=9223372036854775807,v1=00".to_string(),
        ];
        for header in &fixed {
            let _ = verify(header, BODY, &[SECRET], T, 300);
            let _ = verify(header, b"", &[SECRET, ""], i64::MIN, i64::MIN);
        }
        // Every short string over a small hostile alphabet.
        let alphabet = ['t', 'v', '1', '=', ',', ' ', '-', '9', 'é'];
        let mut stack = vec![String::new()];
        let mut count = 0;
        while let Some(s) = stack.pop() {
            let _ = verify(&s, BODY, &[SECRET], T, 300);
            count += 1;
            if s.chars().count() < 5 {
                for c in alphabet {
                    let mut next = s.clone();
                    next.push(c);
                    stack.push(next);
                }
            }
        }
        assert!(count > 60_000);
    }

    #[test]
    fn error_messages_do_not_leak_secrets_or_signatures() {
        let header = format!("t={T},v1={}", "ab".repeat(32));
        let expected = compute_signature(T, BODY, SECRET);
        let errors = [
            StripeSignatureError::MissingHeader,
            StripeSignatureError::Malformed,
            StripeSignatureError::TimestampOutsideTolerance,
            StripeSignatureError::NoMatchingSignature,
            StripeSignatureError::NoSecretConfigured,
        ];
        let err = verify(&header, BODY, &[SECRET], T, 300).unwrap_err();
        for e in errors.iter().chain([&err]) {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(!msg.contains(SECRET) && !msg.contains("whsec_"));
            assert!(!msg.contains(&expected) && !msg.contains("abab"));
        }
    }
}
