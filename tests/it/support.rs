//! Helpers shared by the integration tests: polling with a deadline instead of sleeping,
//! a real HTTP server on loopback for a test's own axum router, raw TCP servers that
//! misbehave in ways no well-formed HTTP server can, and small config builders.
//!
//! Nothing here fakes rearguard's own code: sources and actions meet real sockets, real
//! processes and real files.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A condition did not become true before its deadline.
#[derive(Debug)]
pub struct TimedOut(pub Duration);

/// Checks `condition` every 10 ms until it holds or `timeout` has passed.
pub async fn poll_until(
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<(), TimedOut> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TimedOut(timeout));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Checks an asynchronous `condition` every 100 ms until it holds or `timeout` has
/// passed (for conditions that ask a server).
pub async fn poll_until_async<F, Fut>(timeout: Duration, mut condition: F) -> Result<(), TimedOut>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TimedOut(timeout));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real HTTP server on `127.0.0.1` with an ephemeral port, serving a test's router. It
/// stops accepting when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// How many requests have reached the router.
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// `http://127.0.0.1:<port><path>`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn request_count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn count(State(requests): State<Arc<AtomicUsize>>, request: Request, next: Next) -> Response {
    requests.fetch_add(1, Ordering::SeqCst);
    next.run(request).await
}

/// Serves `router` on loopback until the returned server is dropped.
pub async fn serve(router: Router) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    let requests = Arc::new(AtomicUsize::new(0));
    let app = router.layer(axum::middleware::from_fn_with_state(
        Arc::clone(&requests),
        count,
    ));
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .await
            .expect("the test server runs");
    });
    TestServer {
        addr,
        requests,
        task,
    }
}

/// How a raw TCP server treats each connection.
#[derive(Debug, Clone, Copy)]
pub enum Misbehave {
    /// Accept, read the request, never answer, keep the connection open.
    Hang,
    /// Accept, read the request, then reset the connection (RST, not FIN).
    Reset,
    /// Accept, read the request, answer with these bytes (not HTTP) and close.
    Garbage(&'static [u8]),
}

/// A TCP server on `127.0.0.1` that misbehaves on every connection; stops when dropped.
pub struct RawServer {
    pub addr: SocketAddr,
    /// How many connections were accepted.
    pub accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn raw_server(behaviour: Misbehave) -> RawServer {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        // Connections live in this set, so that dropping the server closes them too.
        let mut connections = JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            connections.spawn(misbehave(stream, behaviour));
        }
    });
    RawServer {
        addr,
        accepted,
        task,
    }
}

async fn misbehave(mut stream: TcpStream, behaviour: Misbehave) {
    // Read the request head first, so that the client is waiting for an answer.
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    match behaviour {
        Misbehave::Hang => {
            // Reads until the client gives up; never writes.
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        Misbehave::Reset => {
            stream.set_zero_linger().expect("set SO_LINGER to zero");
            drop(stream);
        }
        Misbehave::Garbage(bytes) => {
            let _ = stream.write_all(bytes).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// An argv from string literals.
pub fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// A validated configuration from TOML text; panics with every error if it is invalid.
pub fn config(toml: &str) -> rearguard::config::Config {
    rearguard::config::load_str(
        toml,
        rearguard::config::Format::Toml,
        std::iter::empty(),
        Path::new("."),
    )
    .unwrap_or_else(|e| panic!("the test configuration is invalid:\n{e}"))
}

/// The errors of a configuration that must not validate, as `path: message` lines;
/// panics if it validates.
pub fn config_errors(toml: &str) -> Vec<String> {
    match rearguard::config::load_str(
        toml,
        rearguard::config::Format::Toml,
        std::iter::empty(),
        Path::new("."),
    ) {
        Ok(_) => panic!("expected errors from:\n{toml}"),
        Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// A fresh temporary directory, removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Whether process `pid` is gone: no `/proc` entry, or a zombie waiting for a parent
/// that does not reap (PID 1 in some containers).
pub fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}
