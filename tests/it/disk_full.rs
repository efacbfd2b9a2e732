//! A full state disk, for real: a small tmpfs mounted on a temporary directory used as
//! the state directory, filled with a file until writes fail, later the filler removed.
//!
//! The daemon (the real binary, as systemd runs it): while the disk is full no plan step
//! starts (its marker file stays absent), `/readyz`, the metrics and systemd's status
//! line say the store is failing, and nothing is sent that was not written first. Once
//! space is back the held step runs once and every notification reaches a local
//! receiver, each once, in order. The outbox on its own: a message the store cannot
//! take is kept and written in order later; a delivery that cannot be recorded is not
//! sent again and holds back the next message.
//!
//! Mounting needs root (as on the CI machines); without it the test fails and says so.
//! The guard unmounts only the mount it made, even when the test fails.

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::sync::Arc;

use rearguard::config::Occasion;
use rearguard::notify::Message;
use rearguard::notify::outbox::Queued;
use rearguard::store::{NewMessage, State, Store};

use crate::daemon::{Fixture, switch_back};
use crate::outbox::start_in;
use crate::provider::{Answer, Provider, Recorded};
use crate::support;
use crate::systemd::{datagrams_until, notified};

/// A tmpfs of a few pages mounted by this test on a directory of its own; unmounted
/// (detached, as the daemon may still hold files open on it) when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `path` (created, and empty), or fails the test.
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("rearguard-test")
            .arg(path)
            .output()
            .expect("mount(8) runs");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {} (this test needs root, as on the CI machines): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }

    /// Fills the filesystem with one file until a write fails for want of space.
    fn fill(&self) -> PathBuf {
        fill(&self.path)
    }
}

/// Fills the filesystem of `dir` with the file `dir/filler` until a write fails for want
/// of space; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return filler,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Ok(path) = std::ffi::CString::new(self.path.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // SAFETY: a valid C string naming the mount this guard made.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
            eprintln!(
                "cannot unmount {}: {}",
                self.path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

fn any(_: &Recorded) -> Result<(), String> {
    Ok(())
}

fn accepted(_: &Recorded, _: usize) -> Answer {
    Answer::Status(202, "{}".to_owned())
}

/// A plan whose first step appends a line to `marker`, then switches back to v1.
fn plan(f: &Fixture, marker: &Path) -> String {
    format!(
        r#"
[[plan.step]]
name = "mark"
type = "exec"
command = ["/bin/sh", "-c", "echo ran >> {marker}"]
timeout = "5s"
{switch}"#,
        marker = marker.display(),
        switch = switch_back(f),
    )
}

fn marks(marker: &Path) -> usize {
    std::fs::read_to_string(marker).map_or(0, |t| t.lines().count())
}

/// GETs `path` from the daemon: the status code and the body.
async fn get(port: u16, path: &str) -> (u16, String) {
    match rearguard::http::client()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// The value of an unlabelled series in the exposition.
fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The webhook messages the receiver got: (id, occasion), in order.
fn received(hook: &Provider) -> Vec<(String, String)> {
    hook.requests()
        .iter()
        .map(|r| {
            let body = r.json();
            let field = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
            (field("id"), field("occasion"))
        })
        .collect()
}

#[tokio::test]
async fn a_full_state_disk_holds_steps_and_notifications_until_space_returns_then_each_runs_once() {
    let f = Fixture::new().await;
    let state = f.path().join("state");
    let tmpfs = Tmpfs::mount(&state, "8m");
    let hook = Provider::start(any, accepted).await;
    std::fs::write(f.path().join("hook.secret"), "hmac-secret-4417").unwrap();
    let marker = f.path().join("step.marker");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let notifier = format!(
        r#"
[[notifier]]
name = "hook"
type = "webhook"
url = "{url}"
secret = {{ file = "{dir}/hook.secret" }}
"#,
        url = hook.url("/rearguard"),
        dir = f.path().display(),
    );
    let cfg = f.path().join("rearguard.toml");
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    std::fs::write(
        &cfg,
        format!("{}\n{notifier}", f.config(&plan(&f, &marker), &listen)),
    )
    .unwrap();
    let socket_path = f.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let log = f.path().join("stderr.log");
    let mut child = notified(
        &cfg,
        &socket_path,
        false,
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    let pid = child.id().unwrap() as i32;
    let (socket, _) = datagrams_until(socket, 10, |d| d.contains("READY=1")).await;
    f.probed(3).await;

    // Full: the breach is decided, but its memory cannot be written.
    let filler = tmpfs.fill();
    f.releases.deploy("v2");
    let (socket, _) = datagrams_until(socket, 20, |d| {
        d.contains("STATUS=state store failing: ") && d.contains("open incident(s)")
    })
    .await;
    let (code, body) = get(port, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("state store failing: "), "{body}");
    // Several ticks later, still nothing has run or been sent.
    support::poll_until_async(Duration::from_secs(10), || async {
        let metrics = get(port, "/metrics").await.1;
        series(&metrics, "rearguard_store_write_failures_total").is_some_and(|n| n >= 10.0)
    })
    .await
    .expect("failed writes are retried every tick and counted");
    let metrics = get(port, "/metrics").await.1;
    assert!(
        series(&metrics, "rearguard_outbox_unwritten").is_some_and(|n| n >= 1.0),
        "the held notifications are counted: {metrics}"
    );
    assert_eq!(marks(&marker), 0, "no step starts while the store is full");
    assert!(
        hook.requests().is_empty(),
        "nothing is sent that was not written first: {:?}",
        received(&hook)
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("step held"), "{logged}");

    // Space is back: the held step runs once, the rollback ends, every message goes out.
    std::fs::remove_file(&filler).unwrap();
    support::poll_until(Duration::from_secs(20), || marks(&marker) == 1)
        .await
        .unwrap_or_else(|_| panic!("the held step never ran; log:\n{}", read(&log)));
    support::poll_until_async(Duration::from_secs(20), || async {
        let occasions: Vec<String> = received(&hook).into_iter().map(|(_, o)| o).collect();
        occasions.contains(&"resolved".to_owned())
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "not every notification was delivered: {:?}; log:\n{}",
            received(&hook),
            read(&log)
        )
    });
    assert_eq!(get(port, "/readyz").await, (200, "ready\n".to_owned()));
    let _ = datagrams_until(socket, 10, |d| {
        d.starts_with("STATUS=") && !d.contains("state store failing")
    })
    .await;

    // SAFETY: sending a signal to a child we spawned.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("stops within the drain")
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(marks(&marker), 1, "the held step ran exactly once");
    assert_eq!(f.releases.current(), "releases/v1", "the rollback finished");

    // Every message written once space came back was delivered once, in order.
    let got = received(&hook);
    let occasions: Vec<&str> = got.iter().map(|(_, o)| o.as_str()).collect();
    let opened = occasions.iter().position(|o| *o == "opened");
    let started = occasions.iter().position(|o| *o == "rollback_started");
    let resolved = occasions.iter().position(|o| *o == "resolved");
    assert!(
        opened < started && started < resolved && opened.is_some(),
        "opened, rollback started, then resolved: {occasions:?}"
    );
    let stored: Vec<_> = Store::open(&state)
        .unwrap()
        .messages()
        .unwrap()
        .into_iter()
        .filter(|m| m.notifier == "hook")
        .collect();
    assert!(
        stored.iter().all(|m| m.state == State::Delivered),
        "{stored:#?}"
    );
    let stored_ids: Vec<&str> = stored.iter().map(|m| m.id.as_str()).collect();
    let got_ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(got_ids, stored_ids, "each message delivered once, in order");
    hook.assert_valid();
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// A tmpfs of 1 MiB on a temporary directory, for the outbox's store.
fn outbox_disk() -> (tempfile::TempDir, Tmpfs) {
    let parent = support::temp_dir();
    let tmpfs = Tmpfs::mount(&parent.path().join("state"), "1m");
    (parent, tmpfs)
}

#[tokio::test]
async fn a_notification_the_full_store_cannot_take_is_kept_then_written_in_order_and_sent() {
    let (_parent, tmpfs) = outbox_disk();
    let receiver = Provider::start(any, accepted).await;
    let mut run = start_in(&receiver.url("/hook"), 600, Some(&tmpfs.path));
    let filler = tmpfs.fill();
    for occasion in [Occasion::Opened, Occasion::RollbackStarted] {
        let queued = run.enqueue("shop-1", occasion);
        assert!(matches!(queued, Queued::Kept(..)), "{queued:?}");
    }
    assert_eq!(run.outbox.unwritten(), 2);
    let failing = run
        .outbox
        .failing()
        .expect("the outbox says the store fails");
    assert!(failing.contains("full"), "{failing}");
    assert!(run.outbox.write_kept().is_err());
    assert_eq!(run.outbox.write_failures(), 3);
    assert_eq!(run.store.messages().unwrap().len(), 0);

    std::fs::remove_file(&filler).unwrap();
    let queued = run.enqueue("shop-1", Occasion::Resolved);
    assert!(matches!(queued, Queued::Written(..)), "{queued:?}");
    assert_eq!(run.outbox.unwritten(), 0);
    assert_eq!(run.outbox.failing(), None);
    assert_eq!(
        run.accepted(3).await,
        [
            Occasion::Opened,
            Occasion::RollbackStarted,
            Occasion::Resolved
        ]
    );
    assert_eq!(receiver.requests().len(), 3);
}

/// The directory the next responder fills when it gets its first request.
static FILL_ON_FIRST: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Fills the disk while answering the first request (so that its acceptance cannot be
/// recorded), and accepts every request.
fn fill_then_accept(r: &Recorded, index: usize) -> Answer {
    if index == 0
        && let Some(dir) = FILL_ON_FIRST.lock().unwrap().as_ref()
    {
        fill(dir);
    }
    accepted(r, index)
}

/// Writes two messages for the notifier `hook` (opened, then resolved) to the store in
/// `state`, before any worker runs.
fn two_messages_stored(state: &Path) {
    let rows: Vec<NewMessage> = [Occasion::Opened, Occasion::Resolved]
        .into_iter()
        .enumerate()
        .map(|(i, occasion)| {
            let mut m = Message::test("hook", 1_795_000_000_000);
            m.id = format!("shop-1.{i}.hook");
            m.occasion = occasion;
            NewMessage {
                id: m.id.clone(),
                notifier: "hook".to_owned(),
                incident: m.incident.clone(),
                body: serde_json::to_string(&m).unwrap(),
            }
        })
        .collect();
    Store::open(state).unwrap().enqueue(&rows, 0).unwrap();
}

#[tokio::test]
async fn an_accepted_message_that_cannot_be_recorded_is_not_sent_again_and_holds_back_the_next() {
    let (_parent, tmpfs) = outbox_disk();
    *FILL_ON_FIRST.lock().unwrap() = Some(tmpfs.path.clone());
    two_messages_stored(&tmpfs.path);
    let receiver = Provider::start(any, fill_then_accept).await;
    let mut run = start_in(&receiver.url("/hook"), 600, Some(&tmpfs.path));
    // The first delivery is accepted, then cannot be recorded: the worker tries again
    // every second and sends nothing meanwhile.
    let outbox = Arc::clone(&run.outbox);
    support::poll_until(Duration::from_secs(10), || outbox.write_failures() >= 3)
        .await
        .expect("the record is tried again");
    assert!(outbox.failing().is_some_and(|e| e.contains("full")));
    assert_eq!(receiver.requests().len(), 1, "nothing else is sent");

    std::fs::remove_file(tmpfs.path.join("filler")).unwrap();
    assert_eq!(
        run.accepted(2).await,
        [Occasion::Opened, Occasion::Resolved]
    );
    assert_eq!(
        receiver.requests().len(),
        2,
        "the accepted message was not sent again"
    );
    assert_eq!(outbox.failing(), None);
    let stored: Vec<(State, u32)> = run
        .store
        .messages()
        .unwrap()
        .into_iter()
        .map(|m| (m.state, m.attempts))
        .collect();
    assert_eq!(stored, [(State::Delivered, 1), (State::Delivered, 1)]);
}
