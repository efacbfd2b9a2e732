//! systemd's notify protocol against a real unix datagram socket: the real binary is
//! started the way systemd starts a `Type=notify` service with `WatchdogSec` (the
//! `NOTIFY_SOCKET` and `WATCHDOG_USEC` variables) and the test reads what it sends.

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::daemon::{Fixture, binary, switch_back};

/// Reads datagrams until one satisfies `pred` or `secs` pass; returns all read.
fn read_until(socket: &UnixDatagram, secs: u64, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = pred(&text);
                seen.push(text);
                if done {
                    return seen;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break;
            }
            Err(e) => panic!("reading the notify socket: {e}"),
        }
    }
    panic!("no matching datagram within {secs}s; got {seen:#?}");
}

/// The real binary started as systemd starts a `Type=notify` service: `NOTIFY_SOCKET`,
/// and `WATCHDOG_USEC` (400 ms) when `watchdog` is set.
pub(crate) fn notified(
    cfg: &std::path::Path,
    socket: &std::path::Path,
    watchdog: bool,
    stderr: Stdio,
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(binary());
    command
        .args(["run", "--config"])
        .arg(cfg)
        .env("NOTIFY_SOCKET", socket)
        .stderr(stderr)
        .kill_on_drop(true);
    if watchdog {
        command.env("WATCHDOG_USEC", "400000");
    }
    command.spawn().unwrap()
}

/// [`read_until`] off the async runtime: hands the socket back with what was read.
pub(crate) async fn datagrams_until(
    socket: UnixDatagram,
    secs: u64,
    pred: impl Fn(&str) -> bool + Send + 'static,
) -> (UnixDatagram, Vec<String>) {
    tokio::task::spawn_blocking(move || {
        let seen = read_until(&socket, secs, pred);
        (socket, seen)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn run_tells_systemd_ready_status_watchdog_and_stopping() {
    let f = Fixture::new().await;
    let socket_path = f.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    // An Alertmanager signal makes rearguard listen: READY=1 must come after that.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(f.path().join("am.token"), "t0ken").unwrap();
    let alerts = format!(
        r#"
[[signal]]
name = "alerts"
target = "shop"
type = "alertmanager"
matchers = {{ alertname = "ShopDown" }}
token = {{ file = "{}/am.token" }}
"#,
        f.path().display()
    );
    let cfg = f.path().join("rearguard.toml");
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    std::fs::write(
        &cfg,
        format!("{}\n{alerts}", f.config(&switch_back(&f), &listen)),
    )
    .unwrap();
    let mut child = notified(&cfg, &socket_path, true, Stdio::null());
    let pid = child.id().unwrap() as i32;

    let socket = tokio::task::spawn_blocking(move || {
        let ready = read_until(&socket, 10, |d| d.contains("READY=1"));
        let ready = ready.last().unwrap();
        std::net::TcpStream::connect(("127.0.0.1", port))
            .expect("the listener is up when READY=1 is sent");
        assert!(
            ready.contains("STATUS=watching 1 target(s) with 1 rule(s); no open incident"),
            "{ready}"
        );
        // WatchdogSec 400ms: pings every 200ms from the engine's loop.
        let started = Instant::now();
        for _ in 0..3 {
            read_until(&socket, 2, |d| d == "WATCHDOG=1\n");
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        socket
    })
    .await
    .unwrap();

    // An incident shows in the status line.
    f.probed(3).await;
    f.svc
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let socket = tokio::task::spawn_blocking(move || {
        read_until(&socket, 10, |d| {
            d.contains("STATUS=1 open incident(s): shop-")
        });
        socket
    })
    .await
    .unwrap();

    // SAFETY: sending a signal to a child we spawned.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    tokio::task::spawn_blocking(move || {
        read_until(&socket, 10, |d| d.contains("STOPPING=1"));
    })
    .await
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops within the drain")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn sighup_applies_a_good_file_and_keeps_the_running_configuration_on_a_bad_one() {
    let f = Fixture::new().await;
    let socket_path = f.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let cfg = f.path().join("rearguard.toml");
    let text = f.config(&switch_back(&f), "");
    std::fs::write(&cfg, &text).unwrap();
    let log = f.path().join("stderr.log");
    let mut child = notified(
        &cfg,
        &socket_path,
        false,
        std::fs::File::create(&log).unwrap().into(),
    );
    let pid = child.id().unwrap() as i32;
    let (socket, _) = datagrams_until(socket, 10, |d| d.contains("READY=1")).await;

    // A good file: one more rule. systemd hears RELOADING=1, then READY=1 with the new
    // configuration's status line.
    std::fs::write(
        &cfg,
        format!("{text}\n[[rule]]\nname = \"down-now\"\nsignal = \"health\"\nconsecutive = 1\n"),
    )
    .unwrap();
    // SAFETY: sending a signal to a child we spawned.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let (socket, seen) = datagrams_until(socket, 10, |d| {
        d.contains("READY=1") && d.contains("with 2 rule(s)")
    })
    .await;
    assert!(
        seen.iter().any(|d| d.contains("RELOADING=1")),
        "RELOADING=1 before READY=1: {seen:#?}"
    );

    // A bad file: refused with the reason, and the two rules stay.
    std::fs::write(
        &cfg,
        format!("{text}\n[[rule]]\nname = \"broken\"\nsignal = \"nowhere\"\n"),
    )
    .unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let (socket, _) = datagrams_until(socket, 10, |d| {
        d.contains("READY=1") && d.contains("with 2 rule(s)")
    })
    .await;
    crate::support::poll_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("reload refused"))
    })
    .await
    .expect("the refusal is logged");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("configuration reloaded"), "{logged}");
    assert!(
        logged.contains("nowhere"),
        "the reason names the bad value: {logged}"
    );

    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    drop(socket);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops within the drain")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// The pings come from the engine's loop, not from a timer of their own: while the loop
/// is stuck (here: writing its state to a database another process holds locked), systemd
/// hears nothing, and would kill it at `WatchdogSec`; once the loop turns again, the
/// pings come back.
#[tokio::test]
async fn no_watchdog_ping_while_the_engine_is_stuck() {
    let f = Fixture::new().await;
    let socket_path = f.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let cfg = f.path().join("rearguard.toml");
    std::fs::write(&cfg, f.config(&switch_back(&f), "")).unwrap();
    let mut child = notified(&cfg, &socket_path, true, Stdio::null());
    let socket = tokio::task::spawn_blocking(move || {
        read_until(&socket, 10, |d| d.contains("READY=1"));
        for _ in 0..3 {
            read_until(&socket, 2, |d| d == "WATCHDOG=1\n");
        }
        socket
    })
    .await
    .unwrap();
    f.probed(3).await;

    // Another process takes the state store's write lock; the next engine step that has
    // something to record (a rule changing phase) waits for it, up to the store's 5 s.
    let db = rusqlite::Connection::open(f.path().join("state/rearguard.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    f.svc
        .broken
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (socket, longest) = tokio::task::spawn_blocking(move || {
        let mut pings = vec![Instant::now()];
        let until = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            socket
                .set_read_timeout(Some(
                    until
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                ))
                .unwrap();
            match socket.recv(&mut buf) {
                Ok(n) if &buf[..n] == b"WATCHDOG=1\n" => pings.push(Instant::now()),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        pings.push(Instant::now());
        let longest = pings
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        (socket, longest)
    })
    .await
    .unwrap();
    assert!(
        longest >= Duration::from_millis(1500),
        "pings every 200ms went on while the engine was stuck (longest gap {longest:?})"
    );

    // The lock goes; the loop turns and pings again. The writes that waited for the lock
    // (the step's record, then the readings kept for the charts) finish first; on a
    // machine busy with the other tests that has taken more than 3 s once, so the bound
    // is the store's 5 s busy timeout with room, still far below any WatchdogSec.
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    datagrams_until(socket, 10, |d| d == "WATCHDOG=1\n").await;
    child.kill().await.unwrap();
}
