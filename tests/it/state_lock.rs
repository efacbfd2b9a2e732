//! One state directory, one daemon: the real binary refuses to start beside another on
//! the same state directory (naming its PID), and refuses a state store whose engine
//! memory cannot be read unless told `--discard-state`.

use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

use rearguard::store::{StepRecord, Store};

use crate::daemon::binary;
use crate::support;

/// A configuration with nothing to watch, its state in `dir/state`.
fn config(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("rearguard.toml");
    let text = format!(
        "[daemon]\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n",
        dir.join("state").display()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// A daemon started by a test, killed if the test ends before stopping it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cfg: &Path, extra: &[&str], log: &Path) -> Daemon {
    let child = Command::new(binary())
        .args(["run", "--config"])
        .arg(cfg)
        .args(extra)
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Daemon(child)
}

/// Runs `rearguard run` to its end, which must come within a deadline.
async fn run_to_end(cfg: &Path) -> Output {
    let run = tokio::process::Command::new(binary())
        .args(["run", "--config"])
        .arg(cfg)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("rearguard refuses to start rather than run")
        .unwrap()
}

/// Waits until the daemon logging to `log` is running: it has opened its state store
/// and serves its listener.
async fn running(log: &Path) {
    support::poll_until(Duration::from_secs(20), || {
        std::fs::read_to_string(log).is_ok_and(|t| t.contains("serving /metrics"))
    })
    .await
    .unwrap_or_else(|_| panic!("the daemon starts: {:?}", std::fs::read_to_string(log)));
}

/// The PID in the state directory's lock file.
fn lock_holder(state: &Path) -> String {
    std::fs::read_to_string(state.join(rearguard::store::LOCK_FILE))
        .unwrap()
        .trim()
        .to_owned()
}

/// Stops a daemon we started with SIGTERM and waits for it.
fn stop(mut daemon: Daemon) -> std::process::ExitStatus {
    // SAFETY: sending a signal to a child we spawned.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    daemon.0.wait().unwrap()
}

#[tokio::test]
async fn a_second_daemon_on_the_same_state_directory_refuses_naming_the_first() {
    let dir = support::temp_dir();
    let cfg = config(dir.path());
    let log = dir.path().join("first.log");
    let mut first = spawn(&cfg, &[], &log);
    let pid = first.0.id();
    running(&log).await;

    let second = run_to_end(&cfg).await;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("pid {pid}")), "{stderr}");
    assert!(stderr.contains("in use by another rearguard"), "{stderr}");

    assert!(
        first.0.try_wait().unwrap().is_none(),
        "the first daemon keeps running"
    );
    assert_eq!(lock_holder(&dir.path().join("state")), pid.to_string());
    assert!(stop(first).success());
}

#[tokio::test]
async fn engine_memory_that_cannot_be_read_stops_the_start_until_discarded() {
    let dir = support::temp_dir();
    let cfg = config(dir.path());
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let torn = StepRecord {
        memory: Some((5, "{\"version\":1,\"targets\":[{\"na".to_owned())),
        ..StepRecord::default()
    };
    Store::open(&state).unwrap().record_step(&torn).unwrap();

    let refused = run_to_end(&cfg).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("holds engine memory that cannot be read"),
        "{stderr}"
    );
    assert!(stderr.contains("--discard-state"), "{stderr}");

    let log = dir.path().join("discard.log");
    let daemon = spawn(&cfg, &["--discard-state"], &log);
    running(&log).await;
    assert_eq!(lock_holder(&state), daemon.0.id().to_string());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("state discarded"), "{text}");
    assert!(
        text.contains("ERROR"),
        "discarding is logged as an error: {text}"
    );
    assert!(stop(daemon).success());

    let kept = rusqlite::Connection::open(state.join(rearguard::store::FILE))
        .unwrap()
        .query_row("SELECT body FROM memory_discarded", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap();
    assert_eq!(kept, "{\"version\":1,\"targets\":[{\"na");
    Store::open(&state).expect("the store opens again without the torn memory");
}
