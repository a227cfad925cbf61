//! Contract check of our Twilio client against Twilio's own OpenAPI description, served by Prism
//! (`@stoplight/prism-cli@5.14`, found through `SECUR360_PRISM`; scripts/lib/prism.sh installs it).
//! Prism validates each request against the spec: ours must be accepted, a malformed one refused.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use secur360::config::Secret;
use secur360::sms::twilio::{SendOutcome, Sender, TwilioClient};

use crate::fake_twilio::{ACCOUNT_SID, AUTH_TOKEN, MESSAGING_SERVICE_SID};
use crate::peer::{self, Peer};

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/contracts/twilio_api_v2010.json");

async fn start_prism() -> Peer {
    let prism = std::env::var_os("SECUR360_PRISM").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "SECUR360_PRISM is not set: the Twilio contract test needs Prism. Install it with \
             `npm install --prefix target/prism @stoplight/prism-cli@5.14` and set \
             SECUR360_PRISM=$PWD/target/prism/node_modules/.bin/prism (scripts/lib/prism.sh does both)"
        )
    });
    assert!(prism.exists(), "SECUR360_PRISM={} does not exist (run scripts/lib/prism.sh)", prism.display());
    assert!(PathBuf::from(SPEC).exists(), "the Twilio contract {SPEC} is missing");
    let command = |port: u16| {
        let mut c = Command::new(&prism);
        c.args(["mock", "-h", "127.0.0.1", "-p", &port.to_string(), SPEC]);
        c
    };
    // Prism answers a path outside the spec with its own problem document.
    peer::start("prism", command, |_, body| body.contains("stoplight.io/prism"), Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twilio_contract_accepts_our_message_request_and_refuses_a_malformed_one() {
    let prism = start_prism().await;
    let client = TwilioClient::new(
        &prism.base,
        ACCOUNT_SID,
        Secret::new(AUTH_TOKEN),
        Sender::MessagingService(MESSAGING_SERVICE_SID.into()),
        "https://c-secur360.example/api/sms/status".into(),
        Duration::from_secs(20),
    )
    .unwrap();

    let ours = client.form("+15148732015", "Cadenas posé sur P-4 🔒");
    let (status, _, body) = client.post_form(&ours).await.expect("prism answers");
    assert!(status.is_success(), "Prism refused our request: {status} {body}");
    assert!(matches!(client.send("+15148732015", "Test").await, SendOutcome::Accepted { .. }));

    // Proof that the check can fail: without `To` the spec's required field is missing.
    let malformed: Vec<(&str, String)> = ours.into_iter().filter(|(k, _)| *k != "To").collect();
    let (status, _, body) = client.post_form(&malformed).await.expect("prism answers");
    assert!(status.is_client_error(), "Prism accepted a request without To: {status} {body}");
    assert!(body.contains("To"), "{body}");
}
