//! The real Prometheus and Alertmanager servers (Debian packages `prometheus` and
//! `prometheus-alertmanager`), started on loopback with temporary data directories and
//! killed by PID when dropped.
//!
//! A missing server fails the test loudly with the install command; it never skips.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::support;

/// The path of an installed server binary, or a panic that says how to install it.
pub(crate) fn binary(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} is not installed; install it with `apt-get install -y {package}` (scripts/test does this on a fresh machine)"
    );
}

/// A free loopback port: bound, read, released. The server binds it right after.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A server process with its data directory.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    /// Holds the data directory until the server is dropped.
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Server {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `host:port`, for scrape targets and webhook configurations.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it, as an outage would.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// The server's own log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn spawn(bin: PathBuf, args: Vec<String>, dir: tempfile::TempDir, port: u16) -> Server {
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).expect("server log file");
        let child = Command::new(&bin)
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let server = Server {
            child: Some(child),
            port,
            _dir: dir,
            log,
        };
        let ready = format!("{}/-/ready", server.url());
        let client = reqwest_client();
        let ok = support::poll_until_async(Duration::from_secs(30), || {
            let client = client.clone();
            let ready = ready.clone();
            async move {
                client
                    .get(&ready)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        if ok.is_err() {
            panic!(
                "{} did not become ready within 30s; its log:\n{}",
                bin.display(),
                server.log()
            );
        }
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn reqwest_client() -> reqwest::Client {
    rearguard::http::client()
}

/// Starts Prometheus scraping `targets` (`host:port`) every `scrape_interval`, with
/// optional alerting `rules` (a rule file's YAML) sent to `alertmanager` (`host:port`).
pub async fn prometheus(
    targets: &[String],
    scrape_interval: &str,
    rules: Option<&str>,
    alertmanager: Option<&str>,
) -> Server {
    let bin = binary("prometheus", "prometheus");
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let targets = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut config = format!(
        "global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\nscrape_configs:\n  - job_name: workload\n    static_configs:\n      - targets: [{targets}]\n"
    );
    if let Some(rules) = rules {
        std::fs::write(dir.path().join("rules.yml"), rules).expect("rule file");
        config.push_str("rule_files:\n  - rules.yml\n");
    }
    if let Some(am) = alertmanager {
        config.push_str(&format!(
            "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{am}']\n"
        ));
    }
    std::fs::write(dir.path().join("prometheus.yml"), &config).expect("prometheus.yml");
    let args = vec![
        format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ),
        format!("--storage.tsdb.path={}", dir.path().join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--storage.tsdb.retention.time=1h".to_owned(),
    ];
    Server::spawn(bin, args, dir, port).await
}

/// Starts Alertmanager with `config` (its YAML), clustering off.
pub async fn alertmanager(config: &str) -> Server {
    let bin = binary("prometheus-alertmanager", "prometheus-alertmanager");
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    std::fs::write(dir.path().join("alertmanager.yml"), config).expect("alertmanager.yml");
    let args = vec![
        format!(
            "--config.file={}",
            dir.path().join("alertmanager.yml").display()
        ),
        format!("--storage.path={}", dir.path().join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        // An empty cluster address turns clustering (and its port 9094) off.
        "--cluster.listen-address=".to_owned(),
    ];
    Server::spawn(bin, args, dir, port).await
}
