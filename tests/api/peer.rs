//! External test peers (Prism, localstripe) started on a free loopback port and killed when dropped.
//!
//! The port is found by binding port 0 and letting it go, so another test may take it before the peer binds it.
//! The peer then exits (address in use), or the port answers as another server: once in CI, Prism's contract check
//! reached one of our own test services and got its 404. So a peer counts as ready only when the port answers as
//! that peer; otherwise it is stopped and started again on another port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

/// Ports tried before giving up.
const ATTEMPTS: usize = 5;
/// A path no peer serves: every peer answers it with its own kind of error.
const PROBE_PATH: &str = "/__secur360_probe";

pub struct Peer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `name` with `command(port)` (its output discarded) and return once `GET PROBE_PATH` on that port answers
/// as the peer (`is_peer` on the answer's headers and body), within `within` per attempt.
pub async fn start(
    name: &str,
    command: impl Fn(u16) -> Command,
    is_peer: impl Fn(&HeaderMap, &str) -> bool,
    within: Duration,
) -> Peer {
    let client = reqwest::Client::new();
    for _ in 0..ATTEMPTS {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = command(port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut peer = Peer { child, base: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = peer.child.try_wait().expect("poll the peer process") {
                eprintln!("{name} exited ({status}) on port {port}, most likely taken meanwhile: trying another port");
                break;
            }
            if let Ok(res) = client.get(format!("{}{PROBE_PATH}", peer.base)).send().await {
                let headers = res.headers().clone();
                let body = res.text().await.unwrap_or_default();
                if is_peer(&headers, &body) {
                    return peer;
                }
                eprintln!("port {port} answers as another server than {name}: trying another port");
                break;
            }
            assert!(Instant::now() < deadline, "{name} did not answer on port {port} within {within:?}");
            // A bounded readiness poll, not a sleep standing in for work.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("{name} could not be started on a free port in {ATTEMPTS} attempts")
}
