//! A minimal Chrome DevTools Protocol client: start headless Chromium, drive one page over its WebSocket.
//!
//! Chromium is found at `SECUR360_CHROMIUM` (default `/usr/bin/chromium`); its absence fails the test.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(30);

pub fn chromium_path() -> PathBuf {
    let path = PathBuf::from(std::env::var("SECUR360_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        path.exists(),
        "Chromium is required for the admin page test and was not found at {} (set SECUR360_CHROMIUM, or install \
         Debian's `chromium`: scripts/lib/chromium.sh provides s360_chromium_ensure)",
        path.display()
    );
    path
}

pub struct Browser {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    pub port: u16,
}

impl Browser {
    pub async fn launch() -> Browser {
        let profile = tempfile::tempdir().expect("profile directory");
        let child = tokio::process::Command::new(chromium_path())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=1280,2000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("Chromium starts");
        // Chromium writes the port it chose to DevToolsActivePort once it listens: a bounded poll for that file.
        let port_file = profile.path().join("DevToolsActivePort");
        let port = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(text) = tokio::fs::read_to_string(&port_file).await {
                    if let Some(port) = text.lines().next().and_then(|l| l.trim().parse::<u16>().ok()) {
                        return port;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("Chromium opened its debugging port within 30 s");
        Browser { _child: child, _profile: profile, port }
    }

    /// Connect to the first page target.
    pub async fn page(&self) -> Page {
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{}/json/list", self.port))
            .await
            .expect("DevTools target list")
            .json()
            .await
            .expect("target list is JSON");
        let url = targets
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("DevTools WebSocket");
        let mut page = Page { ws, next_id: 0, events: Vec::new() };
        page.call("Page.enable", json!({})).await;
        page
    }
}

pub struct Page {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: Vec<Value>,
}

impl Page {
    async fn next_message(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("Chromium answered within 30 s")
                .expect("DevTools connection open")
                .expect("DevTools message");
            if let Message::Text(text) = msg {
                return serde_json::from_str(text.as_str()).expect("DevTools sends JSON");
            }
        }
    }

    /// Call a method and return its `result` (events seen meanwhile are kept for [`Page::wait_event`]).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(request)).await.expect("send to DevTools");
        loop {
            let msg = self.next_message().await;
            if msg["id"] == id {
                assert!(msg.get("error").is_none(), "{method} failed: {msg}");
                return msg["result"].clone();
            }
            self.events.push(msg);
        }
    }

    pub async fn wait_event(&mut self, method: &str) -> Value {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return self.events.remove(i);
        }
        loop {
            let msg = self.next_message().await;
            if msg["method"] == method {
                return msg;
            }
            self.events.push(msg);
        }
    }

    /// Evaluate a JavaScript expression in the page (DevTools evaluation, not a page script) and return its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true })).await;
        assert!(r.get("exceptionDetails").is_none(), "{expression} threw: {r}");
        r["result"]["value"].clone()
    }

    /// Run `action` (which starts a navigation) and wait until the new document has loaded.
    pub async fn navigation<F>(&mut self, action: F)
    where
        F: AsyncFnOnce(&mut Page),
    {
        self.events.retain(|e| e["method"] != "Page.loadEventFired");
        action(self).await;
        self.wait_event("Page.loadEventFired").await;
    }

    pub async fn goto(&mut self, url: &str) {
        self.navigation(async |p| {
            p.call("Page.navigate", json!({ "url": url })).await;
        })
        .await;
    }

    /// Focus an input and type into it with real key input.
    pub async fn type_into(&mut self, selector: &str, text: &str) {
        let found = self.eval(&format!("(() => {{ const e = document.querySelector({selector:?}); if (!e) return false; e.focus(); return true; }})()")).await;
        assert_eq!(found, json!(true), "no element {selector}");
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// Click a submit button and wait for the resulting page.
    pub async fn submit(&mut self, selector: &str) {
        let expression = format!("document.querySelector({selector:?}).click()");
        self.navigation(async |p| {
            p.eval(&expression).await;
        })
        .await;
    }

    pub async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine;
        // The whole page, not only the viewport.
        let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
        let size = &metrics["cssContentSize"];
        let clip = json!({ "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1 });
        let params = json!({ "format": "png", "captureBeyondViewport": true, "clip": clip });
        let r = self.call("Page.captureScreenshot", params).await;
        let png =
            base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().expect("image data")).expect("base64");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot folder");
        }
        std::fs::write(path, png).expect("screenshot written");
    }
}
