//! Leader election end to end: two real rearguard processes, each with its own state
//! directory and listening port, against one fake API server, watching one Deployment
//! and undoing its bad rollouts. Exactly one acts; the other is a standby until the
//! leader is killed (takeover after the lease expires) or stopped (the lease released,
//! takeover at once); a step is fenced off once another replica holds the lease. Also
//! the checks of `[leader_election]`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{Method, StatusCode};
use axum::routing::get;
use serde_json::json;

use crate::daemon::binary;
use crate::kube_change::{NAME, NS, deploy, seed};
use crate::kube_fake::KubeFake;
use crate::support;

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/web";

/// The service the replicas probe: healthy while the Deployment runs `web:1`, and
/// counting each replica's probes apart (`/{replica}/health`), so that a test sees
/// which replica samples.
#[derive(Clone)]
struct Service {
    fake: Arc<KubeFake>,
    probes: Arc<Mutex<HashMap<String, usize>>>,
}

async fn health(
    State(s): State<Service>,
    UrlPath(replica): UrlPath<String>,
) -> (StatusCode, &'static str) {
    *s.probes.lock().unwrap().entry(replica).or_default() += 1;
    let image = s
        .fake
        .get("deployments", NS, NAME)
        .map(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].clone());
    if image == Some(json!("web:1")) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "failing")
    }
}

impl Service {
    fn probes(&self, replica: &str) -> usize {
        self.probes
            .lock()
            .unwrap()
            .get(replica)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `replica` has probed the service `n` times in all.
    async fn wait_probed(&self, replica: &str, n: usize) {
        support::poll_until(Duration::from_secs(10), || self.probes(replica) >= n)
            .await
            .unwrap_or_else(|_| panic!("replica {replica} does not probe the service"));
    }
}

/// One rearguard process, killed by its PID when dropped.
struct Replica {
    name: &'static str,
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Lease timings, as written in the configuration.
struct Timing {
    duration: &'static str,
    renew: &'static str,
    retry: &'static str,
}

/// A port free now on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &Path, port: u16, kubeconfig: &Path, probe: &str, timing: &Timing) -> String {
    format!(
        r#"
[daemon]
state_dir = "{state}"
listen = "127.0.0.1:{port}"
tick = "50ms"
drain_timeout = "5s"

[kubernetes]
kubeconfig = "{kubeconfig}"

[leader_election]
namespace = "shop"
lease = "rearguard"
lease_duration = "{duration}"
renew_every = "{renew}"
retry_every = "{retry}"

[[target]]
name = "web"
plan = "undo"
blame_window = "5m"
cooldown = "0s"
change = {{ type = "kube_deployment", namespace = "shop", deployment = "web" }}

[[signal]]
name = "health"
target = "web"
type = "http_probe"
url = "{probe}"
interval = "100ms"
timeout = "1s"

[[rule]]
name = "down"
signal = "health"
consecutive = 3

[[plan]]
name = "undo"

# Marks its start and end in the state directory; slow (4s) when the test asks for it.
[[plan.step]]
type = "exec"
name = "mark"
command = ["/bin/sh", "-c", "touch started; if [ -e slow ]; then sleep 4; fi; touch finished"]
cwd = "{state}"
timeout = "10s"

[[plan.step]]
type = "kube_rollout_undo"
namespace = "shop"
deployment = "web"
to_revision = "{{to_revision}}"

[plan.verify]
window = "500ms"
"#,
        state = dir.display(),
        kubeconfig = kubeconfig.display(),
        duration = timing.duration,
        renew = timing.renew,
        retry = timing.retry,
    )
}

impl Replica {
    /// Starts the real binary as replica `name` (its identity comes from `POD_NAME`, as
    /// in a pod).
    fn start(
        name: &'static str,
        fake: &KubeFake,
        service: &support::TestServer,
        timing: &Timing,
    ) -> Replica {
        Replica::start_with(name, fake, service, timing, &[])
    }

    /// [`Replica::start`] with more environment variables (systemd's).
    fn start_with(
        name: &'static str,
        fake: &KubeFake,
        service: &support::TestServer,
        timing: &Timing,
        env: &[(&str, &Path)],
    ) -> Replica {
        let dir = support::temp_dir();
        let port = free_port();
        let cfg = dir.path().join("rearguard.toml");
        let probe = service.url(&format!("/{name}/health"));
        std::fs::write(
            &cfg,
            config(dir.path(), port, &fake.kubeconfig(), &probe, timing),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&cfg)
            .env("POD_NAME", format!("rearguard-{name}"))
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Replica {
            name,
            child: Some(child),
            port,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("rearguard.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = rearguard::http::client()
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    }

    /// The value of a metric line without labels, or with exactly these labels.
    async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits until this replica acts: `/readyz` says ready and `rearguard_leader` is 1.
    async fn wait_leading(&self, secs: u64) -> Duration {
        let started = Instant::now();
        support::poll_until_async(Duration::from_secs(secs), || async {
            self.get("/readyz").await == Some((200, "ready\n".to_owned()))
                && self.metric("rearguard_leader").await == Some(1.0)
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "replica {} does not lead within {secs}s; its log ({}):\n{}",
                self.name,
                self.log_path().display(),
                self.log()
            )
        });
        started.elapsed()
    }

    /// Waits until this replica is a standby behind `holder`.
    async fn wait_standby(&self, holder: &str, secs: u64) {
        let expected = format!("standby: lease shop/rearguard held by {holder}\n");
        support::poll_until_async(Duration::from_secs(secs), || async {
            self.get("/readyz").await == Some((200, expected.clone()))
                && self.metric("rearguard_leader").await == Some(0.0)
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "replica {} is no standby behind {holder} within {secs}s; log:\n{}",
                self.name,
                self.log()
            )
        });
    }

    /// Waits until this replica has closed `n` incidents as rolled back.
    async fn wait_rolled_back(&self, n: u32, secs: u64) {
        let series = r#"rearguard_incidents_closed_total{target="web",outcome="rolled_back"}"#;
        support::poll_until_async(Duration::from_secs(secs), || async {
            self.metric(series).await == Some(f64::from(n))
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "replica {} did not roll back {n} time(s) within {secs}s; log:\n{}",
                self.name,
                self.log()
            )
        });
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        // SAFETY: sending a signal to a child this test spawned and has not reaped.
        unsafe { libc::kill(pid, signal) };
    }

    /// SIGKILL, then reaped.
    fn kill_9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for a successful exit.
    async fn terminate(&mut self, secs: u64) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(secs);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("replica {} did not stop within {secs}s", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "{status:?}; log:\n{}", self.log());
    }
}

/// Replica a, leading, and replica b, its standby.
async fn leader_and_standby(
    fake: &KubeFake,
    server: &support::TestServer,
    timing: &Timing,
) -> (Replica, Replica) {
    let a = Replica::start("a", fake, server, timing);
    a.wait_leading(20).await;
    let b = Replica::start("b", fake, server, timing);
    b.wait_standby("rearguard-a", 20).await;
    (a, b)
}

/// Waits until the plan's first step has started on `r` (its mark in the state
/// directory).
async fn step_started(r: &Replica, secs: u64) {
    let mark = r.dir.path().join("started");
    support::poll_until(Duration::from_secs(secs), || mark.exists())
        .await
        .unwrap_or_else(|_| panic!("no step started within {secs}s; log:\n{}", r.log()));
}

/// The PATCH requests the API server accepted on the Deployment: each is one undo.
fn undos(fake: &KubeFake) -> usize {
    fake.requests_to(&Method::PATCH, DEPLOYMENT)
        .iter()
        .filter(|r| r.status == 200)
        .count()
}

fn image(fake: &KubeFake) -> serde_json::Value {
    fake.get("deployments", NS, NAME).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"]
        .clone()
}

/// The fake API server with the seeded Deployment, and the service the replicas probe.
async fn cluster() -> (Arc<KubeFake>, support::TestServer, Service) {
    let fake = Arc::new(KubeFake::start().await);
    seed(&fake);
    let (server, probes) = service(&fake).await;
    (fake, server, probes)
}

async fn service(fake: &Arc<KubeFake>) -> (support::TestServer, Service) {
    let state = Service {
        fake: Arc::clone(fake),
        probes: Arc::default(),
    };
    let server = support::serve(
        Router::new()
            .route("/{replica}/health", get(health))
            .with_state(state.clone()),
    )
    .await;
    (server, state)
}

fn lease_holder(fake: &KubeFake) -> serde_json::Value {
    fake.get("leases", "shop", "rearguard").unwrap()["spec"]["holderIdentity"].clone()
}

#[tokio::test]
async fn one_replica_acts_and_after_a_kill_9_the_standby_takes_over_and_undoes_the_next_bad_rollout_once()
 {
    let (fake, server, probes) = cluster().await;
    let timing = Timing {
        duration: "2s",
        renew: "500ms",
        retry: "200ms",
    };
    let (mut a, b) = leader_and_standby(&fake, &server, &timing).await;
    assert_eq!(lease_holder(&fake), "rearguard-a");

    // Only the leader samples; the standby runs no source.
    probes.wait_probed("a", 3).await;
    deploy(&fake, 2);
    a.wait_rolled_back(1, 30).await;
    assert_eq!(image(&fake), "web:1");
    assert_eq!(undos(&fake), 1, "the bad rollout is undone exactly once");
    assert_eq!(probes.probes("b"), 0, "the standby never sampled");
    b.wait_standby("rearguard-a", 1).await;

    // The leader dies without a word: the standby takes the lease once it expires.
    a.kill_9();
    let took = b.wait_leading(15).await;
    assert!(
        took < Duration::from_secs(10),
        "takeover took {took:?} with a 2s lease"
    );
    assert_eq!(lease_holder(&fake), "rearguard-b");
    let lease = fake.get("leases", "shop", "rearguard").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease:#}");

    // The new leader watches revision 1 healthy for a while, then a second bad rollout
    // comes: it undoes it, once.
    let seen = probes.probes("b");
    probes.wait_probed("b", seen + 5).await;
    deploy(&fake, 3);
    b.wait_rolled_back(1, 30).await;
    assert_eq!(image(&fake), "web:1");
    assert_eq!(undos(&fake), 2, "each bad rollout is undone exactly once");
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_releases_the_lease_and_the_standby_takes_over_at_once() {
    let fake = Arc::new(KubeFake::start().await);
    seed(&fake);
    let (server, _probes) = service(&fake).await;
    // A lease far longer than the takeover may take: only a release explains it.
    let timing = Timing {
        duration: "60s",
        renew: "10s",
        retry: "200ms",
    };
    let (mut a, b) = leader_and_standby(&fake, &server, &timing).await;
    let stopped = Instant::now();
    a.terminate(15).await;
    assert!(a.log().contains("lease released"), "{}", a.log());
    b.wait_leading(10).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(20),
        "took {:?} with a 60s lease",
        stopped.elapsed()
    );
    assert_eq!(lease_holder(&fake), "rearguard-b");
}

#[tokio::test]
async fn a_step_is_not_started_once_another_replica_holds_the_lease() {
    let (fake, server, probes) = cluster().await;
    // Renewals far apart: the fence, not the renewal, is what sees the lease taken.
    let timing = Timing {
        duration: "60s",
        renew: "30s",
        retry: "200ms",
    };
    let a = Replica::start("a", &fake, &server, &timing);
    a.wait_leading(20).await;
    probes.wait_probed("a", 3).await;
    // Another replica takes the lease (as after a pause of this one past its lease).
    let mut lease = fake.get("leases", "shop", "rearguard").unwrap();
    lease["spec"]["holderIdentity"] = json!("rearguard-intruder");
    lease["spec"]["leaseTransitions"] = json!(1);
    fake.put(lease);
    deploy(&fake, 2);
    a.wait_standby("rearguard-intruder", 20).await;
    assert!(
        a.log()
            .contains("step not started: this replica no longer holds the lease"),
        "the fence refused the step: {}",
        a.log()
    );
    assert_eq!(undos(&fake), 0, "nothing was written to the Deployment");
    assert_eq!(image(&fake), "web:2");
    assert_eq!(
        lease_holder(&fake),
        "rearguard-intruder",
        "the lease is left to its holder"
    );
    // The step is left unrecorded: ordered, never finished, so that this store's next
    // restore escalates it rather than running it (or counting a failed rollback).
    let (_, body) = rearguard::store::Store::open_read_only(a.dir.path())
        .unwrap()
        .memory()
        .unwrap()
        .expect("the engine's memory");
    let memory: rearguard::engine::Memory = serde_json::from_str(&body).unwrap();
    let open = &memory.incidents.first().expect("the incident stays open");
    let text = format!("{:?}", open.incident.timeline);
    assert!(!text.contains("StepFinished"), "{text}");
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_acting_and_leads_again_once_the_lease_is_free() {
    let (fake, server, probes) = cluster().await;
    let timing = Timing {
        duration: "3s",
        renew: "300ms",
        retry: "200ms",
    };
    let a = Replica::start("a", &fake, &server, &timing);
    a.wait_leading(20).await;
    // Another replica takes the lease and never renews it.
    let mut lease = fake.get("leases", "shop", "rearguard").unwrap();
    lease["spec"]["holderIdentity"] = json!("rearguard-intruder");
    lease["spec"]["leaseTransitions"] = json!(1);
    fake.put(lease);
    support::poll_until(Duration::from_secs(10), || {
        a.log()
            .contains("leadership lost: another replica holds the lease")
    })
    .await
    .unwrap_or_else(|_| panic!("the renewal does not see the lease taken: {}", a.log()));
    support::poll_until(Duration::from_secs(10), || {
        a.log()
            .contains("leadership lost: this replica is a standby again")
    })
    .await
    .unwrap_or_else(|_| panic!("the generation does not end: {}", a.log()));
    // Once the intruder's lease expires, a takes it back with the next token and runs
    // its engine again.
    a.wait_leading(20).await;
    let lease = fake.get("leases", "shop", "rearguard").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "rearguard-a");
    assert_eq!(lease["spec"]["leaseTransitions"], 2, "{lease:#}");
    let seen = probes.probes("a");
    probes.wait_probed("a", seen + 3).await;
}

/// Reads systemd notify datagrams until `want` holds for one, within `secs`.
async fn datagram(
    socket: &tokio::net::UnixDatagram,
    secs: u64,
    want: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = want(&text);
                seen.push(text);
                if done {
                    return seen;
                }
            }
            Ok(Err(e)) => panic!("reading the notify socket: {e}"),
            Err(_) => panic!("no matching datagram within {secs}s; got {seen:#?}"),
        }
    }
}

#[tokio::test]
async fn a_standby_is_ready_for_systemd_with_its_status_keeps_the_watchdog_fed_and_refuses_a_reload_of_leader_election()
 {
    let (fake, server, probes) = cluster().await;
    let timing = Timing {
        duration: "60s",
        renew: "10s",
        retry: "200ms",
    };
    let a = Replica::start("a", &fake, &server, &timing);
    a.wait_leading(20).await;
    let dir = support::temp_dir();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut b = Replica::start_with(
        "b",
        &fake,
        &server,
        &timing,
        &[
            ("NOTIFY_SOCKET", socket_path.as_path()),
            ("WATCHDOG_USEC", Path::new("400000")),
        ],
    );
    let seen = datagram(&socket, 20, |d| d.contains("READY=1")).await;
    let ready = seen.last().unwrap();
    assert!(
        ready.contains("STATUS=standby: lease shop/rearguard held by rearguard-a"),
        "{seen:#?}"
    );
    // A standby runs no engine, yet systemd's watchdog must not restart it.
    datagram(&socket, 5, |d| d.contains("WATCHDOG=1")).await;
    datagram(&socket, 5, |d| d.contains("WATCHDOG=1")).await;

    // A reload that changes leader election is refused; the standby goes on.
    let text = std::fs::read_to_string(b.config_path()).unwrap();
    std::fs::write(
        b.config_path(),
        text.replace(r#"lease = "rearguard""#, r#"lease = "other""#),
    )
    .unwrap();
    b.signal(libc::SIGHUP);
    support::poll_until(Duration::from_secs(10), || {
        b.log()
            .contains("leader_election: changing leader election needs a restart")
    })
    .await
    .unwrap_or_else(|_| panic!("the reload is not refused: {}", b.log()));
    b.wait_standby("rearguard-a", 5).await;
    assert_eq!(probes.probes("b"), 0);

    // A reload of the leader keeps its term: it goes on leading with the same token.
    let text = std::fs::read_to_string(a.config_path()).unwrap();
    std::fs::write(
        a.config_path(),
        text.replace(r#"drain_timeout = "5s""#, r#"drain_timeout = "6s""#),
    )
    .unwrap();
    a.signal(libc::SIGHUP);
    support::poll_until(Duration::from_secs(10), || {
        a.log().contains("configuration reloaded")
    })
    .await
    .unwrap_or_else(|_| panic!("the leader does not reload: {}", a.log()));
    a.wait_leading(5).await;
    let lease = fake.get("leases", "shop", "rearguard").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 0, "{lease:#}");
    b.wait_standby("rearguard-a", 5).await;
    b.terminate(15).await;
    assert_eq!(
        lease_holder(&fake),
        "rearguard-a",
        "a standby releases nothing"
    );
}

fn errors(toml: &str, env: &[(&str, &str)]) -> Vec<String> {
    match rearguard::config::load_str(
        toml,
        rearguard::config::Format::Toml,
        env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        Path::new("."),
    ) {
        Ok(_) => Vec::new(),
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

#[test]
fn leader_election_settings_are_checked_each_with_its_path() {
    let found = errors(
        r#"
[leader_election]
namespace = "Shop"
lease = ""
identity = " "
lease_duration = "1500ms"
renew_every = "2s"
retry_every = "0s"
"#,
        &[],
    );
    for expected in [
        "leader_election.namespace: \"Shop\" is not a Kubernetes name",
        "leader_election.lease: \"\" is not a Kubernetes name",
        "leader_election.identity: must not be empty",
        "leader_election.lease_duration: must be a whole number of seconds, at least 1s",
        "leader_election.renew_every: must be shorter than lease_duration",
        "leader_election.retry_every: must be greater than zero",
    ] {
        assert!(
            found.iter().any(|e| e.contains(expected)),
            "{expected:?} not in {found:#?}"
        );
    }
    let missing = errors("[leader_election]\nlease = \"x\"\n", &[]);
    assert!(
        missing
            .iter()
            .any(|e| e.contains("leader_election") && e.contains("namespace")),
        "{missing:#?}"
    );
}

#[test]
fn the_identity_defaults_to_pod_name_and_the_timings_to_client_go_like_values() {
    let cfg = rearguard::config::load_str(
        "[leader_election]\nnamespace = \"shop\"\n",
        rearguard::config::Format::Toml,
        [("POD_NAME".to_owned(), "rearguard-0".to_owned())],
        Path::new("."),
    )
    .unwrap();
    let le = cfg.leader_election.expect("leader election is on");
    assert_eq!(le.identity, "rearguard-0");
    assert_eq!(le.lease, "rearguard");
    assert_eq!(le.lease_duration, Duration::from_secs(15));
    assert_eq!(le.renew_every, Duration::from_secs(5));
    assert_eq!(le.retry_every, Duration::from_secs(2));
    // Without POD_NAME, the hostname.
    let cfg = rearguard::config::load_str(
        "[leader_election]\nnamespace = \"shop\"\n",
        rearguard::config::Format::Toml,
        std::iter::empty(),
        Path::new("."),
    )
    .unwrap();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(cfg.leader_election.unwrap().identity, host.trim());
}

#[test]
fn check_shows_the_leader_election_settings_and_refuses_bad_ones_with_exit_64() {
    let dir = support::temp_dir();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[leader_election]\nnamespace = \"shop\"\nidentity = \"rearguard-0\"\nlease_duration = \"10s\"\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("check")
        .arg(&good)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("  leader election: lease shop/rearguard as \"rearguard-0\"; held 10s, renewed every 3s333ms, standbys retry every 2s\n"),
        "{text}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[leader_election]\nnamespace = \"shop\"\nrenew_every = \"20s\"\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("check")
        .arg(&bad)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(
        text.contains("leader_election.renew_every: must be shorter than lease_duration"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stopping_leader_keeps_its_lease_while_its_step_finishes_then_releases_it() {
    let (fake, server, probes) = cluster().await;
    // The step (4s) outlasts the lease (2s): only renewals during the drain keep it.
    let timing = Timing {
        duration: "2s",
        renew: "500ms",
        retry: "200ms",
    };
    let (mut a, b) = leader_and_standby(&fake, &server, &timing).await;
    std::fs::write(a.dir.path().join("slow"), "").unwrap();
    probes.wait_probed("a", 3).await;
    deploy(&fake, 2);
    step_started(&a, 20).await;
    // SIGTERM while the step runs: the lease stays with a until its drain is over.
    let mut holders = Vec::new();
    let watch = async {
        let until = Instant::now() + Duration::from_millis(3500);
        while Instant::now() < until {
            holders.push(lease_holder(&fake));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::join!(a.terminate(20), watch);
    assert!(
        holders.iter().all(|h| h == "rearguard-a"),
        "the lease changed hands during the leader's drain: {holders:?}"
    );
    assert!(
        a.dir.path().join("finished").exists(),
        "the step finished in the drain; log:\n{}",
        a.log()
    );
    assert!(a.log().contains("lease released"), "{}", a.log());
    assert_eq!(undos(&fake), 0, "no step starts once the drain has begun");
    b.wait_leading(10).await;
}

#[tokio::test]
async fn a_leader_that_loses_its_lease_cancels_the_step_in_flight_at_once() {
    let (fake, server, probes) = cluster().await;
    let timing = Timing {
        duration: "3s",
        renew: "200ms",
        retry: "200ms",
    };
    let a = Replica::start("a", &fake, &server, &timing);
    a.wait_leading(20).await;
    std::fs::write(a.dir.path().join("slow"), "").unwrap();
    probes.wait_probed("a", 3).await;
    deploy(&fake, 2);
    step_started(&a, 20).await;
    // Another replica holds the lease now (this one was partitioned past its lease).
    let mut lease = fake.get("leases", "shop", "rearguard").unwrap();
    lease["spec"]["holderIdentity"] = json!("rearguard-intruder");
    lease["spec"]["leaseTransitions"] = json!(1);
    lease["spec"]["leaseDurationSeconds"] = json!(600);
    fake.put(lease);
    a.wait_standby("rearguard-intruder", 10).await;
    assert!(
        a.log()
            .contains("step cancelled: this replica no longer holds the lease"),
        "{}",
        a.log()
    );
    // The step's process was killed: it never reaches its end (it would after 4s).
    let finished = a.dir.path().join("finished");
    assert!(
        support::poll_until(Duration::from_secs(6), || finished.exists())
            .await
            .is_err(),
        "the step ran on after the lease was lost; log:\n{}",
        a.log()
    );
    assert_eq!(undos(&fake), 0);
}

#[tokio::test]
async fn a_fence_check_the_api_server_fails_once_is_asked_again_and_the_step_runs() {
    let (fake, server, probes) = cluster().await;
    // Renewals far apart: the fence is the only reader of the lease meanwhile.
    let timing = Timing {
        duration: "60s",
        renew: "30s",
        retry: "200ms",
    };
    let a = Replica::start("a", &fake, &server, &timing);
    a.wait_leading(20).await;
    probes.wait_probed("a", 3).await;
    let lease = "/apis/coordination.k8s.io/v1/namespaces/shop/leases/rearguard";
    fake.inject(
        Method::GET,
        lease,
        2,
        crate::kube_fake::Effect::Respond(500),
    );
    deploy(&fake, 2);
    a.wait_rolled_back(1, 30).await;
    assert_eq!(undos(&fake), 1, "{}", a.log());
    let failed = fake
        .requests_to(&Method::GET, lease)
        .iter()
        .filter(|r| r.status == 500)
        .count();
    assert_eq!(failed, 2, "the fence met the failures");
    assert!(a.log().contains("asking again"), "{}", a.log());
    assert_eq!(a.metric("rearguard_leader").await, Some(1.0));
}
