//! Leader takeover: how long a standby replica takes to act after the leader goes.
//!
//! Each run starts the fake Kubernetes API server of the integration tests
//! (`tests/it/kube_fake.rs`) on loopback and two real `rearguard run` processes with
//! `[leader_election]` on one Lease, each with its own state directory and port. Once
//! the first leads (its `/readyz` says `ready`) and the second is a standby (`/readyz`
//! says `standby: ...`), the leader is either killed with SIGKILL or stopped with
//! SIGTERM, and the time is taken from the signal to the standby's `/readyz` answering
//! `ready` (its engine and sources running), polled every 5 ms.
//!
//! Cases: SIGKILL with the default timings (lease 15s, renew every 5s, standbys retry
//! every 2s), SIGKILL with short ones (lease 3s, renew 1s, retry 500ms), and SIGTERM with
//! the defaults (the leader releases the Lease after its drain).
//!
//! `cargo bench --bench takeover`; `RUNS=N` sets the runs per case (default 3). Under
//! `cargo test` it does nothing.

#[path = "../tests/it/kube_fake.rs"]
mod kube_fake;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube_fake::KubeFake;

/// One rearguard process, killed by its PID when dropped.
struct Replica {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Case {
    name: &'static str,
    duration: &'static str,
    renew: &'static str,
    retry: &'static str,
    signal: i32,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(name: &str, kubeconfig: &Path, case: &Case) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("rearguard.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[daemon]
state_dir = "{state}"
listen = "127.0.0.1:{port}"
drain_timeout = "5s"

[kubernetes]
kubeconfig = "{kubeconfig}"

[leader_election]
namespace = "bench"
lease = "rearguard"
lease_duration = "{duration}"
renew_every = "{renew}"
retry_every = "{retry}"
"#,
            state = dir.path().display(),
            kubeconfig = kubeconfig.display(),
            duration = case.duration,
            renew = case.renew,
            retry = case.retry,
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_rearguard"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("POD_NAME", name)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    Replica {
        child: Some(child),
        port,
        _dir: dir,
    }
}

async fn readyz(client: &reqwest::Client, port: u16) -> Option<String> {
    let r = client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    r.text().await.ok()
}

async fn wait(client: &reqwest::Client, r: &Replica, prefix: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if readyz(client, r.port)
            .await
            .is_some_and(|t| t.starts_with(prefix))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {prefix:?} within {limit:?}; its log:\n{}",
            std::fs::read_to_string(r._dir.path().join("stderr.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run(case: &Case, client: &reqwest::Client) -> Duration {
    let fake = KubeFake::start().await;
    fake.put(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
    );
    let kubeconfig = fake.kubeconfig();
    let mut a = start("rearguard-a", &kubeconfig, case);
    wait(client, &a, "ready", Duration::from_secs(20)).await;
    let b = start("rearguard-b", &kubeconfig, case);
    wait(client, &b, "standby", Duration::from_secs(20)).await;
    let mut leader = a.child.take().unwrap();
    let sent = Instant::now();
    // SAFETY: a signal to a child this bench spawned and has not reaped.
    unsafe { libc::kill(leader.id() as i32, case.signal) };
    wait(client, &b, "ready", Duration::from_secs(60)).await;
    let took = sent.elapsed();
    let _ = leader.kill();
    let _ = leader.wait();
    took
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let cases = [
        Case {
            name: "SIGKILL, lease 15s (defaults)",
            duration: "15s",
            renew: "5s",
            retry: "2s",
            signal: libc::SIGKILL,
        },
        Case {
            name: "SIGKILL, lease 3s, renew 1s, retry 500ms",
            duration: "3s",
            renew: "1s",
            retry: "500ms",
            signal: libc::SIGKILL,
        },
        Case {
            name: "SIGTERM, lease 15s (defaults)",
            duration: "15s",
            renew: "5s",
            retry: "2s",
            signal: libc::SIGTERM,
        },
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rearguard::http::client();
    println!("| case | signal → standby ready: median (min–max) over {runs} runs |");
    println!("|---|---|");
    for case in &cases {
        let mut times: Vec<Duration> = (0..runs).map(|_| rt.block_on(run(case, &client))).collect();
        times.sort();
        println!(
            "| {} | {} ms ({}–{}) |",
            case.name,
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1])
        );
    }
}
