//! Verification of Twilio's `X-Twilio-Signature` header for form-encoded
//! POST webhooks (the Auth Token scheme, HMAC-SHA1).
//!
//! Self-contained: only `std`, `hmac`, `sha1`, `subtle`, `base64` and
//! `thiserror`.
//!
//! Mirrors `twilio.request_validator.RequestValidator` (twilio==9.13.0):
//!
//! * `compute_signature(uri, params)`: data = the URL exactly as given, then
//!   for each parameter name in `sorted(set(params))` (code-point order, which
//!   is the byte order of UTF-8 and so Rust's `str` order), for each value in
//!   `sorted(set(values))`, append `name + value`. Repeated keys therefore
//!   have their values **de-duplicated** and sorted as strings (`"1" < "10" <
//!   "2"`). HMAC-SHA1 keyed with the token's UTF-8 bytes, standard base64
//!   with padding.
//! * `validate(uri, params, signature)`: succeeds if the signature matches
//!   the URL with its port removed *or* the URL with a port (the one present,
//!   else 443 for `https`, 80 for anything else). The SDK removes **any**
//!   port, not just the default one: a request to `https://h:8443/x` also
//!   validates against a signature of `https://h/x`.
//!
//! Differences from the SDK:
//! * the URL exactly as given is also a candidate. The SDK rebuilds both of
//!   its candidates with `urlparse(..).geturl()`, which drops an empty `?`
//!   or `#`, so the SDK refuses a genuine signature of `https://h/x?`;
//! * the port is removed from the host part only (the SDK cuts the whole
//!   netloc at its first `:`, which mangles `user:pass@host` and IPv6
//!   literals);
//! * several tokens may be given (primary + secondary);
//! * the JSON-body variant (`bodySHA256` query parameter) and HMAC-SHA256
//!   shared keys are out of scope.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::collections::{BTreeMap, BTreeSet};
use subtle::{Choice, ConstantTimeEq};

type HmacSha1 = Hmac<Sha1>;

/// Why an `X-Twilio-Signature` was refused. The messages never contain a
/// token or an expected signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TwilioSignatureError {
    #[error("the X-Twilio-Signature header is missing or empty")]
    MissingSignature,
    #[error("no Twilio auth token is configured")]
    NoTokenConfigured,
    #[error("the X-Twilio-Signature header does not match the request")]
    Mismatch,
}

/// Verifies `signature_header` for a POST to `url` (the full URL Twilio
/// requested, query string included) with form parameters `params` (decoded,
/// in any order, repeated keys allowed), against every non-empty token.
pub fn verify(
    url: &str,
    params: &[(String, String)],
    signature_header: &str,
    tokens: &[&str],
) -> Result<(), TwilioSignatureError> {
    if signature_header.trim().is_empty() {
        return Err(TwilioSignatureError::MissingSignature);
    }
    let tokens: Vec<&str> = tokens.iter().copied().filter(|t| !t.is_empty()).collect();
    if tokens.is_empty() {
        return Err(TwilioSignatureError::NoTokenConfigured);
    }

    let params_data = params_data(params);
    // Each comparison is constant-time. The search stops at the first match (a genuine request: usually the
    // first candidate with the primary token, one HMAC instead of up to six): when it stops tells only which
    // candidate matched, never anything about an expected signature.
    for candidate in url_candidates(url) {
        for token in &tokens {
            let expected = sign_data(&candidate, &params_data, token);
            // `ct_eq` on slices of different lengths is false.
            let matched: Choice = expected.as_bytes().ct_eq(signature_header.as_bytes());
            if bool::from(matched) {
                return Ok(());
            }
        }
    }
    Err(TwilioSignatureError::Mismatch)
}

/// The signature Twilio sends for a POST to exactly `url` with `params`,
/// as `RequestValidator(token).compute_signature(url, params)` computes it.
pub fn compute(url: &str, params: &[(String, String)], token: &str) -> String {
    sign_data(url, &params_data(params), token)
}

/// `name + value` for each name, then each distinct value, in sorted order.
fn params_data(params: &[(String, String)]) -> String {
    let mut grouped: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, value) in params {
        grouped.entry(name).or_default().insert(value);
    }
    let mut data = String::new();
    for (name, values) in grouped {
        for value in values {
            data.push_str(name);
            data.push_str(value);
        }
    }
    data
}

fn sign_data(url: &str, params_data: &str, token: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha1::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    mac.update(params_data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The URL as given, without its port, and with a port (the default one
/// added if none), without duplicates.
fn url_candidates(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    if scheme.is_empty() {
        return out;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let scheme = scheme.to_ascii_lowercase();

    // The host part is after the last '@'; an IPv6 literal ends with ']'.
    let host_start = authority.rfind('@').map_or(0, |i| i + 1);
    let host = &authority[host_start..];
    let after_brackets = host.rfind(']').map_or(0, |i| i + 1);
    let port_colon = host[after_brackets..].find(':').map(|i| host_start + after_brackets + i);

    let (without_port, with_port) = match port_colon {
        Some(colon) => (authority[..colon].to_string(), authority.to_string()),
        None => {
            let default_port = if scheme == "https" { 443 } else { 80 };
            (authority.to_string(), format!("{authority}:{default_port}"))
        }
    };
    for authority in [without_port, with_port] {
        let candidate = format!("{scheme}://{authority}{tail}");
        if !out.contains(&candidate) {
            out.push(candidate);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "auth_token_primary";
    const SECONDARY: &str = "auth_token_secondary";

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn docs_params() -> Vec<(String, String)> {
        p(&[
            ("To", "+18005551212"),
            ("From", "+12349013030"),
            ("Digits", "1234"),
            ("Caller", "+12349013030"),
            ("CallSid", "CA1234567890ABCDE"),
        ])
    }

    fn french_params() -> Vec<(String, String)> {
        p(&[("To", "+33798765432"), ("Body", "Bonjour, ça va ? Très bien 🎉🔐"), ("From", "+33612345678")])
    }

    // ---- fixed vectors from the official SDK (twilio==9.13.0, CPython 3.11) ----

    #[test]
    fn the_documented_example_matches_the_official_sdk_vector() {
        // RequestValidator("12345").compute_signature(
        //     "https://mycompany.com/myapp.php?foo=1&bar=2",
        //     {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
        //      "From": "+12349013030", "To": "+18005551212"})
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let sdk = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert_eq!(compute(url, &docs_params(), "12345"), sdk);
        assert_eq!(verify(url, &docs_params(), sdk, &["12345"]), Ok(()));
    }

    #[test]
    fn a_french_and_emoji_body_with_port_and_query_matches_the_official_sdk_vector() {
        // RequestValidator("auth_token_primary").compute_signature(
        //     "https://example.com:8443/webhooks/twilio?tenant=acme&x=%C3%A9",
        //     {"Body": "Bonjour, ça va ? Très bien 🎉🔐", "From": "+33612345678",
        //      "To": "+33798765432"})
        let url = "https://example.com:8443/webhooks/twilio?tenant=acme&x=%C3%A9";
        let sdk = "EHS7tGitdxSD2NaaqRdSRlQSIrU=";
        assert_eq!(compute(url, &french_params(), TOKEN), sdk);
        assert_eq!(verify(url, &french_params(), sdk, &[TOKEN]), Ok(()));
    }

    #[test]
    fn repeated_keys_match_the_official_sdk_vector() {
        // With a werkzeug-style MultiDict (a dict subclass with getall):
        // RequestValidator("auth_token_primary").compute_signature(
        //     "https://example.com/sms", MD({"b": ["z", "a", "a"], "a": ["2", "10", "1"]}))
        // The SDK sorts names, then de-duplicates and sorts values as strings:
        // data = url + "a1" + "a10" + "a2" + "ba" + "bz".
        let params = p(&[("b", "z"), ("a", "2"), ("b", "a"), ("a", "10"), ("b", "a"), ("a", "1")]);
        let sdk = "xV4h8tzzsmheFEgyYKoIQjrxK1g=";
        assert_eq!(compute("https://example.com/sms", &params, TOKEN), sdk);
    }

    #[test]
    fn a_signature_of_the_url_with_port_443_validates_without_it_like_the_sdk() {
        // RequestValidator("auth_token_primary").compute_signature(
        //     "https://example.com:443/sms", {"Body": "hi"})
        // and RequestValidator(..).validate("https://example.com/sms", {"Body": "hi"}, <that>)
        // is True.
        let sdk = "zVvkKu8V5nOdUmD/6kGNpdIoobI=";
        let params = p(&[("Body", "hi")]);
        assert_eq!(compute("https://example.com:443/sms", &params, TOKEN), sdk);
        assert_eq!(verify("https://example.com/sms", &params, sdk, &[TOKEN]), Ok(()));
        assert_eq!(verify("https://example.com:443/sms", &params, sdk, &[TOKEN]), Ok(()));
    }

    // ---- good cases ----

    #[test]
    fn a_round_trip_is_accepted_whatever_the_parameter_order() {
        let url = "https://example.com/sms?tenant=acme";
        let sig = compute(url, &french_params(), TOKEN);
        let mut reversed = french_params();
        reversed.reverse();
        assert_eq!(verify(url, &reversed, &sig, &[TOKEN]), Ok(()));
    }

    #[test]
    fn the_secondary_token_matches() {
        let url = "https://example.com/sms";
        let sig = compute(url, &docs_params(), SECONDARY);
        assert_eq!(verify(url, &docs_params(), &sig, &[TOKEN, SECONDARY]), Ok(()));
        assert_eq!(verify(url, &docs_params(), &sig, &["", SECONDARY]), Ok(()));
    }

    #[test]
    fn a_signature_without_port_validates_a_request_seen_with_the_default_port() {
        let params = p(&[("Body", "hi")]);
        let sig = compute("https://example.com/sms", &params, TOKEN);
        assert_eq!(verify("https://example.com:443/sms", &params, &sig, &[TOKEN]), Ok(()));
        let sig = compute("http://example.com/sms", &params, TOKEN);
        assert_eq!(verify("http://example.com:80/sms", &params, &sig, &[TOKEN]), Ok(()));
        let sig = compute("http://example.com:80/sms", &params, TOKEN);
        assert_eq!(verify("http://example.com/sms", &params, &sig, &[TOKEN]), Ok(()));
    }

    #[test]
    fn any_port_is_also_tried_removed_like_the_sdk() {
        let params = p(&[("Body", "hi")]);
        let sig = compute("https://example.com/sms", &params, TOKEN);
        assert_eq!(verify("https://example.com:8443/sms", &params, &sig, &[TOKEN]), Ok(()));
    }

    #[test]
    fn a_url_with_an_empty_query_is_accepted_as_signed() {
        // The SDK's validate refuses this one (geturl() drops the bare '?').
        let params = p(&[("Body", "hi")]);
        let sig = compute("https://example.com/sms?", &params, TOKEN);
        assert_eq!(verify("https://example.com/sms?", &params, &sig, &[TOKEN]), Ok(()));
    }

    #[test]
    fn no_parameters_sign_the_url_alone() {
        let url = "https://example.com/voice?CallSid=CA1";
        let sig = compute(url, &[], TOKEN);
        assert_eq!(verify(url, &[], &sig, &[TOKEN]), Ok(()));
    }

    #[test]
    fn duplicate_pairs_count_once() {
        let url = "https://example.com/sms";
        let once = p(&[("a", "1")]);
        let twice = p(&[("a", "1"), ("a", "1")]);
        assert_eq!(compute(url, &once, TOKEN), compute(url, &twice, TOKEN));
    }

    // ---- refusals ----

    #[test]
    fn a_tampered_body_is_refused() {
        let url = "https://example.com/sms";
        let sig = compute(url, &french_params(), TOKEN);
        let mut tampered = french_params();
        tampered[1].1 = "Bonjour, ça va ? Très bien 🎉🔓".to_string();
        assert_eq!(verify(url, &tampered, &sig, &[TOKEN]), Err(TwilioSignatureError::Mismatch));
    }

    #[test]
    fn an_added_parameter_is_refused() {
        let url = "https://example.com/sms";
        let sig = compute(url, &docs_params(), TOKEN);
        let mut more = docs_params();
        more.push(("Extra".into(), String::new()));
        assert_eq!(verify(url, &more, &sig, &[TOKEN]), Err(TwilioSignatureError::Mismatch));
    }

    #[test]
    fn a_different_url_or_query_is_refused() {
        let sig = compute("https://example.com/sms?tenant=acme", &docs_params(), TOKEN);
        for url in [
            "https://example.com/sms?tenant=evil",
            "https://example.com/sms",
            "https://evil.example.com/sms?tenant=acme",
            "http://example.com/sms?tenant=acme",
        ] {
            assert_eq!(verify(url, &docs_params(), &sig, &[TOKEN]), Err(TwilioSignatureError::Mismatch), "url {url}");
        }
    }

    #[test]
    fn a_wrong_token_is_refused() {
        let url = "https://example.com/sms";
        let sig = compute(url, &docs_params(), "someone_else");
        assert_eq!(verify(url, &docs_params(), &sig, &[TOKEN, SECONDARY]), Err(TwilioSignatureError::Mismatch));
    }

    #[test]
    fn a_signature_with_surrounding_spaces_or_other_case_is_refused() {
        let url = "https://example.com/sms";
        let sig = compute(url, &docs_params(), TOKEN);
        for bad in [format!(" {sig}"), format!("{sig} "), sig.to_lowercase()] {
            assert_eq!(verify(url, &docs_params(), &bad, &[TOKEN]), Err(TwilioSignatureError::Mismatch));
        }
    }

    #[test]
    fn an_empty_signature_is_missing() {
        for sig in ["", "  "] {
            assert_eq!(
                verify("https://example.com/sms", &[], sig, &[TOKEN]),
                Err(TwilioSignatureError::MissingSignature)
            );
        }
    }

    #[test]
    fn no_token_or_only_empty_tokens_is_a_configuration_error() {
        for tokens in [&[][..], &[""][..], &["", ""][..]] {
            assert_eq!(
                verify("https://example.com/sms", &[], "abc=", tokens),
                Err(TwilioSignatureError::NoTokenConfigured)
            );
        }
    }

    #[test]
    fn odd_urls_and_params_never_panic() {
        let urls = [
            "",
            "://",
            "https://",
            "https://:",
            "https://:443",
            "https://@",
            "https://[::1]:8443/x?y",
            "https://[::1]/x",
            "https://user:pass@host:8443/x",
            "https://user:pass@host/x",
            "https://host:notaport/x",
            "https://hôte.fr:443/é?q=🎉#frag",
            "no scheme at all",
            "é://é",
            "https://host?x#y",
        ];
        let params = p(&[("", ""), ("é", "🎉"), ("", "x")]);
        for url in urls {
            let sig = compute(url, &params, TOKEN);
            assert_eq!(verify(url, &params, &sig, &[TOKEN]), Ok(()), "url {url:?}");
            let _ = verify(url, &params, "garbage", &[TOKEN]);
            let _ = url_candidates(url);
        }
    }

    #[test]
    fn port_candidates_touch_only_the_host_part() {
        assert_eq!(
            url_candidates("https://user:pass@host:8443/x"),
            ["https://user:pass@host:8443/x", "https://user:pass@host/x",]
        );
        assert_eq!(
            url_candidates("HTTPS://[::1]/x?a=b:c"),
            ["HTTPS://[::1]/x?a=b:c", "https://[::1]/x?a=b:c", "https://[::1]:443/x?a=b:c",]
        );
        assert_eq!(url_candidates("http://h?q=1"), ["http://h?q=1", "http://h:80?q=1"]);
    }

    #[test]
    fn error_messages_do_not_leak_tokens_or_signatures() {
        let expected = compute("https://example.com/sms", &[], TOKEN);
        for e in [
            TwilioSignatureError::MissingSignature,
            TwilioSignatureError::NoTokenConfigured,
            TwilioSignatureError::Mismatch,
        ] {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(!msg.contains(TOKEN) && !msg.contains(&expected));
        }
    }
}
