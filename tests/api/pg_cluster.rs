//! A private, throwaway PostgreSQL cluster (initdb + pg_ctl in a temporary folder, on a free loopback port) for
//! tests that stop the database server. The machine's shared cluster on 5432 is never touched. PostgreSQL
//! refuses to run as root, so as root every server command runs as the `postgres` OS user (as
//! scripts/lib/postgres.sh does).

use std::path::{Path, PathBuf};
use std::process::Command;

use secur360::db::Db;
use secur360::on_db;

pub struct PrivateCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
    as_root: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` with initdb and pg_ctl, or the ones on PATH.
fn bindir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return bin;
    }
    let out = Command::new("sh").args(["-c", "command -v initdb"]).output().expect("sh");
    let initdb = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !initdb.is_empty(),
        "the database-outage test needs PostgreSQL's initdb and pg_ctl (apt-get install postgresql)"
    );
    Path::new(&initdb).parent().unwrap().to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PrivateCluster {
    /// initdb a new cluster and start it.
    pub fn start() -> PrivateCluster {
        let uid = Command::new("id").arg("-u").output().expect("id -u");
        let as_root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let dir = tempfile::Builder::new().prefix("secur360-pgfault-").tempdir().expect("temporary folder");
        let cluster = PrivateCluster { bin: bindir(), dir, port: free_port(), as_root };
        if as_root {
            let ok = Command::new("chown").args(["-R", "postgres:"]).arg(cluster.dir.path()).status().unwrap();
            assert!(ok.success(), "chown the cluster folder to postgres");
        }
        let data = cluster.data();
        cluster.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            &cluster.dir.path().join("initdb.log"),
        );
        cluster.start_server();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Run a server binary (as `postgres` when we are root), with its output in `log`; panics on failure.
    fn run(&self, tool: &str, args: &[&str], log: &Path) {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).current_dir("/tmp").output().unwrap_or_else(|e| panic!("run {tool}: {e}"));
        let _ = std::fs::write(log, [&out.stdout[..], &out.stderr[..]].concat());
        assert!(out.status.success(), "{tool} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Start (or start again) the server and wait until it accepts connections (`pg_ctl -w`).
    pub fn start_server(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=60",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-w", "-t", "60", "-o", &opts, "start"],
            &self.dir.path().join("pg_ctl-start.log"),
        );
    }

    /// Stop the server at once (`pg_ctl stop -m immediate`): connections are cut, no shutdown checkpoint.
    pub fn stop_immediate(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "-t", "60", "stop"],
            &self.dir.path().join("pg_ctl-stop.log"),
        );
    }

    /// The superuser URL of database `name` in this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.data();
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "-t", "30", "stop"];
        let _ = if self.as_root {
            Command::new("runuser").args(["-u", "postgres", "--"]).arg(&exe).args(args).current_dir("/tmp").output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}

/// Create and migrate the service's database in the private cluster. Returns a handle with the owner role (for
/// the test's own checks) and the URL the service must run as. This is the one place to adapt when the
/// service runs as a separate non-superuser role (row-level security): create that role here and return its
/// URL, as `helpers::fresh_database` does for the shared cluster.
pub async fn private_database(cluster: &PrivateCluster) -> (Db, String) {
    let admin = Db::connect(&cluster.url("postgres"), 1).await.expect("connect to the private cluster");
    on_db!(&admin, p => sqlx::query("CREATE DATABASE secur360_fault").execute(p).await.map(|_| ()))
        .expect("create database");
    admin.close().await;
    let url = cluster.url("secur360_fault");
    let db = Db::connect(&url, 2).await.expect("connect to the private database");
    db.migrate().await.expect("migrate the private database");
    // The service runs as the runtime role (row-level security), as on the shared cluster.
    crate::helpers::ensure_runtime_login(&db).await;
    let mut runtime = url::Url::parse(&url).expect("a postgres URL");
    runtime.set_username(crate::helpers::RUNTIME_LOGIN).expect("a postgres URL takes a user name");
    (db, runtime.to_string())
}
