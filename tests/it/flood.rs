//! A connection flood on rearguard's own listener must not make it act: the real binary,
//! under a low limit of open files, watches a healthy service through an `http_probe`
//! rule with a plan while idle, slow-header and unauthenticated connections flood
//! `daemon.listen` (loopback only, bounded in count and time). Nothing is rolled back,
//! `/healthz` keeps answering and the probe never reads as a failed check.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::releases::Releases;
use crate::support;

/// The limit of open files (soft and hard) the daemon runs under.
const OPEN_FILES: u64 = 256;
/// Flooding connections at once, per kind; together more than `OPEN_FILES`.
const IDLE: usize = 150;
const SLOW_HEADERS: usize = 75;
const UNAUTHENTICATED: usize = 75;
/// How long the flood lasts, and how long a flooder waits before connecting again.
const FLOOD_FOR: Duration = Duration::from_secs(8);
const RECONNECT_AFTER: Duration = Duration::from_millis(250);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A healthy service that closes every connection after its answer, so that each probe
/// needs a new socket (and a descriptor) in rearguard.
async fn healthy_service() -> support::TestServer {
    let app = Router::new().route(
        "/health",
        get(|| async { ([(header::CONNECTION, "close")], "ok\n") }),
    );
    support::serve(app).await
}

fn config(dir: &Path, port: u16, url: &str) -> String {
    format!(
        r#"
[daemon]
state_dir = "{dir}/state"
listen = "127.0.0.1:{port}"
tick = "50ms"
drain_timeout = "5s"
max_connections = 64
header_read_timeout = "2s"

[[target]]
name = "shop"
plan = "back"
blame_window = "10m"
change = {{ type = "release_symlink", path = "{dir}/current", interval = "100ms" }}

[[signal]]
name = "health"
target = "shop"
type = "http_probe"
url = "{url}"
interval = "100ms"
timeout = "1s"

[[signal]]
name = "alerts"
target = "shop"
type = "alertmanager"
matchers = {{ alertname = "ShopDown" }}
token = {{ env = "FLOOD_AM_TOKEN" }}

[[rule]]
name = "down"
signal = "health"
consecutive = 3

[[plan]]
name = "back"

[[plan.step]]
name = "switch back"
type = "release_switch"
current = "{dir}/current"
releases = "{dir}/releases"
timeout = "5s"
"#,
        dir = dir.display()
    )
}

/// The real binary on `cfg`, with at most [`OPEN_FILES`] open files.
fn spawn_limited(cfg: &Path) -> tokio::process::Child {
    let mut command = std::process::Command::new(crate::daemon::binary());
    command
        .args(["run", "--config"])
        .arg(cfg)
        .env("FLOOD_AM_TOKEN", "flood-test-token")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and touches only the child being started.
    unsafe {
        command.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: OPEN_FILES,
                rlim_max: OPEN_FILES,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .expect("the rearguard binary starts")
}

#[derive(Clone, Copy)]
enum Kind {
    /// Connects and sends nothing.
    Idle,
    /// Sends a request's headers a few bytes at a time, never finishing them.
    SlowHeaders,
    /// Posts a large webhook body without a token, slowly.
    Unauthenticated,
}

/// Connects, misbehaves until the daemon closes the connection or the flood ends, and
/// connects again after a pause. Counts the connections made.
async fn flooder(port: u16, kind: Kind, until: Instant, made: Arc<AtomicUsize>) {
    while Instant::now() < until {
        let connect = TcpStream::connect(("127.0.0.1", port));
        if let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            made.fetch_add(1, Ordering::Relaxed);
            let _ = tokio::time::timeout_at(until, misbehave(&mut stream, kind)).await;
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

async fn misbehave(stream: &mut TcpStream, kind: Kind) {
    let mut buf = [0u8; 1024];
    match kind {
        Kind::Idle => {
            let _ = stream.read(&mut buf).await;
        }
        Kind::SlowHeaders => {
            let _ = stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await;
            loop {
                if stream.write_all(b"X-A: b\r\n").await.is_err() {
                    return;
                }
                tokio::select! {
                    read = stream.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) { return },
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
        Kind::Unauthenticated => {
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                rearguard::daemon::WEBHOOK_PATH,
                1024 * 1024
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let chunk = vec![b' '; 64 * 1024];
            loop {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
                tokio::select! {
                    read = stream.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) { return },
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// Asks `/healthz` on a new connection every 200 ms until `until`: (answered, asked).
async fn watch_healthz(port: u16, until: Instant) -> (usize, usize, Vec<String>) {
    rearguard::http::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a client");
    let url = format!("http://127.0.0.1:{port}/healthz");
    let (mut answered, mut asked, mut errors) = (0, 0, Vec::new());
    while Instant::now() < until {
        asked += 1;
        match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => answered += 1,
            Ok(r) => errors.push(format!("status {}", r.status())),
            Err(e) => errors.push(format!("{e:?}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (answered, asked, errors)
}

/// The rule transitions rearguard recorded for rule `down`.
fn transitions_of_down(state_dir: &Path) -> Vec<(String, String, String)> {
    let db = rusqlite::Connection::open(state_dir.join("rearguard.db")).expect("the state store");
    let mut stmt = db
        .prepare("SELECT from_phase, to_phase, evidence FROM decisions WHERE rule = 'down'")
        .expect("the decisions table");
    stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .expect("a query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_on_the_listener_rolls_nothing_back_and_healthz_keeps_answering() {
    let releases = Releases::new();
    let service = healthy_service().await;
    let dir = releases.path().to_owned();
    let port = free_port();
    let cfg = dir.join("rearguard.toml");
    std::fs::write(&cfg, config(&dir, port, &service.url("/health"))).unwrap();
    let mut child = spawn_limited(&cfg);

    // v1 seen healthy, then the healthy v2 deployed and probed: a change the flood would
    // have to be blamed on for a rollback.
    let probes = service.requests.clone();
    support::poll_until(Duration::from_secs(15), || {
        probes.load(Ordering::SeqCst) >= 5
    })
    .await
    .expect("the daemon probes the service");
    releases.deploy("v2");
    let after_deploy = probes.load(Ordering::SeqCst);
    support::poll_until(Duration::from_secs(10), || {
        probes.load(Ordering::SeqCst) >= after_deploy + 10
    })
    .await
    .expect("the daemon probes v2");

    let until = Instant::now() + FLOOD_FOR;
    let made = Arc::new(AtomicUsize::new(0));
    let kinds = [
        (Kind::Idle, IDLE),
        (Kind::SlowHeaders, SLOW_HEADERS),
        (Kind::Unauthenticated, UNAUTHENTICATED),
    ];
    let mut flood = tokio::task::JoinSet::new();
    for (kind, n) in kinds {
        for _ in 0..n {
            flood.spawn(flooder(port, kind, until, Arc::clone(&made)));
        }
    }
    let before = probes.load(Ordering::SeqCst);
    let (answered, asked, errors) = watch_healthz(port, until).await;
    while flood.join_next().await.is_some() {}
    let during = probes.load(Ordering::SeqCst) - before;
    // A few probe intervals after the flood, for a breach it caused to show.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // SAFETY: sending a signal to the child we spawned.
    unsafe { libc::kill(child.id().expect("running") as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("rearguard stops within its drain")
        .expect("waited");

    let flooded = made.load(Ordering::Relaxed);
    assert!(
        flooded > OPEN_FILES as usize,
        "the flood opened {flooded} connections"
    );
    assert_eq!(
        answered, asked,
        "/healthz kept answering during the flood: {errors:?}"
    );
    assert!(
        during >= 40,
        "the service was probed all along: {during} probes in {FLOOD_FOR:?}"
    );
    assert_eq!(releases.current(), "releases/v2", "nothing was rolled back");
    assert_eq!(
        transitions_of_down(&dir.join("state")),
        vec![],
        "the probe never read as a failed check"
    );
    assert!(status.success(), "{status:?}");
}

#[test]
fn listener_limits_are_validated_with_their_paths() {
    let errors = support::config_errors(
        r#"
[daemon]
max_connections = 0
header_read_timeout = "0s"
"#,
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("daemon.max_connections") && e.contains("got 0")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("daemon.header_read_timeout")),
        "{errors:?}"
    );
    let cfg = support::config("[daemon]\nmax_connections = 1000\nheader_read_timeout = \"3s\"\n");
    assert_eq!(cfg.daemon.listener.max_connections, 1000);
    assert_eq!(
        cfg.daemon.listener.header_read_timeout,
        Duration::from_secs(3)
    );
}

/// Sends a webhook request's headers with a 1 MiB `Content-Length` and no body, and
/// returns the connection.
async fn webhook_headers(port: u16, auth: Option<&str>) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        rearguard::daemon::WEBHOOK_PATH,
        1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    stream
}

/// The status line and headers of the answer on `stream`, if one comes within `wait`.
async fn answer_head(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(wait, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn the_webhook_refuses_a_missing_token_before_the_body_and_bounds_bodies_in_flight() {
    let dir = support::temp_dir();
    let port = free_port();
    let text = format!(
        r#"
[daemon]
state_dir = "{dir}/state"
listen = "127.0.0.1:{port}"
tick = "50ms"
drain_timeout = "5s"

[[target]]
name = "shop"

[[signal]]
name = "alerts"
target = "shop"
type = "alertmanager"
matchers = {{ alertname = "ShopDown" }}
token = {{ file = "{dir}/token" }}
"#,
        dir = dir.path().display()
    );
    std::fs::write(dir.path().join("token"), "webhook-token").unwrap();
    let mut d = crate::running::start(crate::daemon::load(&text));
    d.wait_for("start", 10, |e| {
        matches!(e, rearguard::daemon::Event::Started)
    })
    .await;

    let mut anonymous = webhook_headers(port, None).await;
    let head = answer_head(&mut anonymous, Duration::from_secs(2))
        .await
        .expect("answered before the body was sent");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // Announced bodies of the largest size take the whole budget: a delivery that finds
    // it taken is told to come back at once. One that got a share is waiting for its
    // body, and keeps holding it.
    let token = Some("Bearer webhook-token");
    let mut holding = Vec::new();
    let mut refused = None;
    for _ in 0..rearguard::daemon::BODIES_IN_FLIGHT / (1024 * 1024) + 5 {
        let mut next = webhook_headers(port, token).await;
        match answer_head(&mut next, Duration::from_millis(500)).await {
            Some(head) => {
                refused = Some(head);
                break;
            }
            None => holding.push(next),
        }
    }
    let head = refused.expect("a delivery over the budget is answered at once");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert_eq!(
        holding.len(),
        rearguard::daemon::BODIES_IN_FLIGHT / (1024 * 1024),
        "as many bodies in flight as the budget holds"
    );
    drop(holding);
    d.stop().await;
}

#[test]
fn the_shipped_units_open_files_fit_the_default_configuration_and_a_thousand_connections() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("systemd/rearguard.service")).unwrap();
    let limits: Vec<u64> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("LimitNOFILE="))
        .map(|v| v.trim().parse().expect("one number: soft and hard"))
        .collect();
    let [limit] = limits[..] else {
        panic!("one LimitNOFILE= in the unit: {limits:?}")
    };
    let mut cfg = rearguard::config::load(&root.join("config/default.toml")).expect("valid");
    let needed = rearguard::daemon::descriptors_needed(&cfg);
    assert!(needed < limit, "{needed} needed, {limit} allowed");
    assert!(needed > u64::from(cfg.daemon.listener.max_connections));
    cfg.daemon.listener.max_connections = 1000;
    assert!(rearguard::daemon::descriptors_needed(&cfg) < limit);
    cfg.daemon.listener.max_connections = 10_000;
    assert!(
        rearguard::daemon::descriptors_needed(&cfg) > limit,
        "the limit binds"
    );
}
