//! A harness for real `secur360 serve` processes: spawn the built binary with chosen environment variables,
//! wait until it is ready (its "listening" log line, then `/readyz` answering 200, within a deadline), kill it
//! with SIGKILL, start it again on the same environment. A child is always killed and reaped on drop.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{read, ADMIN_TOKEN};

/// How long a process may take to print its listening line and answer `/readyz` (debug build, busy machine).
pub const READY_WITHIN: Duration = Duration::from_secs(60);

pub struct ServeProcess {
    /// A name for the logs (`a`, `b`, …).
    pub name: String,
    env: BTreeMap<String, String>,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT` of the current incarnation.
    pub address: String,
    /// Every stderr line of every incarnation (JSON logs), kept for diagnostics and panic checks.
    log: Arc<Mutex<Vec<String>>>,
    /// The log is also copied here, so a failing run can be read after the fact.
    pub log_path: PathBuf,
    pub client: reqwest::Client,
    /// How many times this process was started.
    pub starts: u32,
}

impl ServeProcess {
    /// Start `secur360 serve` with `vars` on top of a loopback bind on a free port, JSON logs and the operator
    /// token of the suite; return once it is ready.
    pub async fn start(name: &str, vars: &[(String, String)]) -> ServeProcess {
        let mut env = BTreeMap::new();
        env.insert("BIND_ADDR".to_owned(), "127.0.0.1:0".to_owned());
        env.insert("ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned());
        env.insert("LOG_FORMAT".to_owned(), "json".to_owned());
        env.insert("RUST_LOG".to_owned(), "info".to_owned());
        for (k, v) in vars {
            env.insert(k.clone(), v.clone());
        }
        let log_path =
            std::env::temp_dir().join(format!("secur360-serve-{name}-{}.log", uuid::Uuid::new_v4().simple()));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut p = ServeProcess {
            name: name.to_owned(),
            env,
            child: None,
            address: String::new(),
            log: Arc::new(Mutex::new(Vec::new())),
            log_path,
            client,
            starts: 0,
        };
        p.spawn().await;
        p
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_secur360"));
        cmd.arg("serve").env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn serve");
        self.starts += 1;
        let stderr = child.stderr.take().unwrap();
        self.child = Some(child);
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let log = self.log.clone();
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_path).ok();
        let tag = format!("[{} #{}]", self.name, self.starts);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{tag} {line}");
                }
                if line.contains("secur360 listening") {
                    let addr = serde_json::from_str::<Value>(&line)
                        .ok()
                        .and_then(|v| v["fields"]["addr"].as_str().map(str::to_owned));
                    if let (Some(tx), Some(addr)) = (tx.take(), addr) {
                        let _ = tx.send(addr);
                    }
                }
                log.lock().unwrap().push(format!("{tag} {line}"));
            }
        });
        let addr = match tokio::time::timeout(READY_WITHIN, rx).await {
            Ok(Ok(addr)) => addr,
            _ => panic!("{} did not start listening within {READY_WITHIN:?}; log:\n{}", self.name, self.tail(40)),
        };
        self.address = format!("http://{addr}");
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let ready = self.client.get(self.url("/readyz")).timeout(Duration::from_secs(10)).send().await;
            if matches!(&ready, Ok(r) if r.status() == StatusCode::OK) {
                break;
            }
            assert!(Instant::now() < deadline, "{} not ready within {READY_WITHIN:?}: {ready:?}", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await; // polling interval of a readiness probe
        }
    }

    /// SIGKILL, and reap the child: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            let status = child.wait().expect("reap the killed process");
            assert!(!status.success(), "{} was killed, yet exited successfully", self.name);
        }
    }

    /// SIGTERM (a graceful stop: in-flight requests finish, queued work is recorded) and wait, within
    /// [`READY_WITHIN`], for the process to exit; its exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the process is running");
        let sent = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {} failed", child.id());
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {READY_WITHIN:?} of SIGTERM", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await; // polling for the exit, as a supervisor does
        }
    }

    /// Start again on the same environment (a new instance id, a new port).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// The process is still running (it did not exit, e.g. on a panic).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().expect("try_wait").is_none())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.client.request(method, self.url(path));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        read(rb.send().await.expect("request sent")).await
    }

    pub async fn operator(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(method, path, Some(ADMIN_TOKEN), body).await
    }

    /// Create a tenant through the API and return an API key for it.
    /// Create a paying tenant (its subscription written into `db`, see `helpers::subscribe`) and return an API
    /// key for it.
    pub async fn tenant_with_key(&self, db: &secur360::db::Db, id: &str) -> String {
        let (s, b) = self
            .operator(
                Method::POST,
                "/api/tenants",
                Some(serde_json::json!({ "id": id, "name": format!("Tenant {id}") })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let (s, b) = self
            .operator(
                Method::POST,
                &format!("/api/tenants/{id}/api-keys"),
                Some(serde_json::json!({ "label": "faults" })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        crate::helpers::subscribe(db, id, "active", 0).await;
        b["key"].as_str().expect("key in response").to_owned()
    }

    /// Every log line so far (all incarnations).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn tail(&self, n: usize) -> String {
        let lines = self.log_lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// No incarnation panicked.
    pub fn assert_no_panic(&self) {
        let panics: Vec<String> = self.log_lines().into_iter().filter(|l| l.contains("panicked")).collect();
        assert!(panics.is_empty(), "{} panicked:\n{}", self.name, panics.join("\n"));
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log_path);
        } else {
            eprintln!("{}: log kept at {}", self.name, self.log_path.display());
        }
    }
}

/// Poll `probe` until it returns `Some`, at most `within`; panics with `what` on the deadline.
pub async fn poll_until<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not reached within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await; // polling interval, not a wait for work
    }
}

pub fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}
