//! Cross-checks against the official SDKs through `tests/peers/sign.py`
//! (one Python process for the whole batch).
//!
//! Python: `$SECUR360_TEST_PYTHON`, else `target/peers-venv/bin/python`; a missing peer fails the test.

use secur360::domain::{stripe_signature, twilio_signature};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_pairs(params: &[(String, String)]) -> String {
    let items: Vec<String> = params.iter().map(|(k, v)| format!("[{},{}]", json_str(k), json_str(v))).collect();
    format!("[{}]", items.join(","))
}

/// Runs sign.py on a JSON array; returns each result object's text.
/// Results hold only ASCII base64/hex/header strings and booleans.
fn run_batch(python: &PathBuf, script: &PathBuf, requests: &[String]) -> Vec<String> {
    let mut child =
        Command::new(python).arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn sign.py");
    let input = format!("[{}]", requests.join(","));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sign.py failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let inner = text.trim().trim_start_matches("[{").trim_end_matches("}]");
    let results: Vec<String> = inner.split("}, {").map(str::to_string).collect();
    assert_eq!(results.len(), requests.len(), "output: {text}");
    results
}

/// `"key": "value"` -> value; `"key": true` -> "true".
fn field(result: &str, key: &str) -> String {
    let prefix = format!("\"{key}\": ");
    let rest = result.strip_prefix(&prefix).unwrap_or_else(|| panic!("no {key} in {result}"));
    rest.trim_matches('"').to_string()
}

/// Checks one sign.py result against the Rust side.
type Check = Box<dyn Fn(&str)>;

fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn rust_and_the_official_python_sdks_agree() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = manifest.join("tests/peers/sign.py");
    // Never skipped: scripts/test builds the peer venv and sets SECUR360_TEST_PYTHON.
    let python = std::env::var_os("SECUR360_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target/peers-venv/bin/python"));
    assert!(
        python.exists(),
        "the official stripe/twilio SDKs are needed at {} (run scripts/test, which builds that venv)",
        python.display()
    );

    let secret = "whsec_test_secret";
    let (primary, secondary) = ("auth_token_primary", "auth_token_secondary");
    let t = 1_700_000_000_i64;
    let bodies = [
        r#"{"id":"evt_1","object":"event","amount":1200}"#,
        "{\"description\":\"Café crème à Noël, déjà payé 🎄🔒👍🏽\"}",
        "line1\nline2\t\"quoted\" \\ backslash",
        "",
    ];
    let urls = [
        "https://example.com/sms",
        "https://example.com:8443/webhooks/twilio?tenant=acme&x=%C3%A9&empty=",
        "https://example.com:443/sms?a=1&a=2",
        "http://example.com/voice",
    ];
    let param_sets = [
        p(&[("Body", "hello"), ("From", "+33612345678"), ("To", "+33798765432")]),
        p(&[("Body", "Bonjour, ça va ? Très bien 🎉🔐"), ("From", "+33612345678")]),
        p(&[("b", "z"), ("a", "2"), ("b", "a"), ("a", "10"), ("b", "a"), ("a", "1")]),
        p(&[("é", "ü"), ("e", "u"), ("Z", ""), ("", "x")]),
        vec![],
    ];

    let mut requests = Vec::new();
    let mut checks: Vec<Check> = Vec::new();

    // Stripe: the SDK's header must equal ours and verify with ours.
    for body in bodies {
        requests.push(format!(
            r#"{{"provider":"stripe","payload":{},"secret":{},"timestamp":{t}}}"#,
            json_str(body),
            json_str(secret)
        ));
        checks.push(Box::new(move |r| {
            let header = field(r, "header");
            assert_eq!(header, stripe_signature::sign(body.as_bytes(), secret, t));
            assert!(stripe_signature::verify(&header, body.as_bytes(), &["whsec_old", secret], t, 300).is_ok());
        }));
    }

    // Stripe: odd headers, SDK verify (age check off) vs ours (huge tolerance).
    let good = stripe_signature::sign(bodies[0].as_bytes(), secret, t);
    let sig = good.split_once(",v1=").unwrap().1.to_string();
    let odd_headers = [
        good.clone(),
        format!("t={t},v1={sig}=junk"),
        format!("t=0{t},v1={sig}"),
        format!("t= {t} ,v1={sig}"),
        format!("t={t},t=1,v1={sig}"),
        format!("t=1,t={t},v1={sig}"),
        format!("t={t}, v1={sig}"),
        format!(" t={t},v1={sig}"),
        format!("t={t},v1={}", sig.to_uppercase()),
        format!("t={t},v1=,v1={sig}"),
        format!("t={t},v0={sig}"),
        format!("v1={sig}"),
        "t=,v1=00".to_string(),
        ",,,".to_string(),
        format!("t={t},v1"),
    ];
    for header in odd_headers {
        requests.push(format!(
            r#"{{"provider":"stripe","op":"verify","payload":{},"header":{},"secret":{},"tolerance":0}}"#,
            json_str(bodies[0]),
            json_str(&header),
            json_str(secret)
        ));
        checks.push(Box::new(move |r| {
            let sdk = field(r, "valid") == "true";
            let ours = stripe_signature::verify(&header, bodies[0].as_bytes(), &[secret], t, i64::MAX).is_ok();
            assert_eq!(ours, sdk, "header {header:?}");
        }));
    }

    // Twilio: compute_signature must equal ours; the secondary token verifies.
    for url in urls {
        for params in &param_sets {
            for token in [primary, secondary] {
                requests.push(format!(
                    r#"{{"provider":"twilio","url":{},"params":{},"token":{}}}"#,
                    json_str(url),
                    json_pairs(params),
                    json_str(token)
                ));
                let params = params.clone();
                checks.push(Box::new(move |r| {
                    let sdk = field(r, "signature");
                    assert_eq!(sdk, twilio_signature::compute(url, &params, token));
                    assert_eq!(twilio_signature::verify(url, &params, &sdk, &[primary, secondary]), Ok(()));
                }));
            }
        }
    }

    // Twilio: validate() with port juggling agrees with our verify().
    let port_cases = [
        ("https://example.com:443/sms?q=1", "https://example.com/sms?q=1"),
        ("https://example.com/sms?q=1", "https://example.com:443/sms?q=1"),
        ("http://example.com:80/sms", "http://example.com/sms"),
        ("http://example.com/sms", "http://example.com:80/sms"),
        ("https://example.com/sms", "https://example.com:8443/sms"),
        ("https://example.com:8443/sms", "https://example.com/sms"),
        ("https://example.com:8443/sms", "https://example.com:8443/sms"),
        ("https://example.com:80/sms", "https://example.com/sms"),
        ("http://example.com:443/sms", "http://example.com/sms"),
        ("https://example.com/sms", "https://example.com/other"),
        ("https://example.com/sms?q=1", "https://example.com/sms?q=2"),
    ];
    for (signed_url, seen_url) in port_cases {
        let params = param_sets[1].clone();
        let signature = twilio_signature::compute(signed_url, &params, secondary);
        requests.push(format!(
            r#"{{"provider":"twilio","op":"validate","url":{},"params":{},"token":{},"signature":{}}}"#,
            json_str(seen_url),
            json_pairs(&params),
            json_str(secondary),
            json_str(&signature)
        ));
        checks.push(Box::new(move |r| {
            let sdk = field(r, "valid") == "true";
            let ours = twilio_signature::verify(seen_url, &params, &signature, &[secondary]).is_ok();
            assert_eq!(ours, sdk, "signed {signed_url} seen {seen_url}");
        }));
    }

    let results = run_batch(&python, &script, &requests);
    for (check, result) in checks.iter().zip(&results) {
        check(result);
    }
    eprintln!("{} cases agree with the Python SDKs", results.len());
}
