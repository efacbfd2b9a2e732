//! The `kube_pods` source against the fake API server: OOM kills, crash loops,
//! readiness and evictions seen through a watch, each pod counted once, and a watch that
//! ends or expires resumed without counting anything twice or losing what happened.

use std::time::Duration;

use rearguard::config::{KubePodsSpec, PodEvent};
use rearguard::engine::{Measure, ReadingState};
use rearguard::kube::{Access, AccessSource};
use rearguard::source::kube_pods::PodMemory;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::kube_fake::KubeFake;

const NS: &str = "shop";

fn spec(fake: &KubeFake, event: PodEvent) -> KubePodsSpec {
    KubePodsSpec {
        access: Access {
            source: AccessSource::Kubeconfig {
                path: fake.kubeconfig(),
                context: None,
            },
            server: None,
        },
        namespace: NS.to_owned(),
        selector: "app=web".to_owned(),
        event,
    }
}

/// A pod of the app with one container `web`.
fn pod(name: &str, restarts: i32, last_reason: Option<&str>, extra: Value) -> Value {
    let mut status = json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{
            "name": "web", "image": "web:1", "imageID": "", "ready": true,
            "restartCount": restarts, "state": {"running": {}},
        }],
    });
    if let Some(reason) = last_reason {
        status["containerStatuses"][0]["lastState"] =
            json!({"terminated": {"exitCode": 137, "reason": reason}});
    }
    if let Some(m) = extra.as_object() {
        for (k, v) in m {
            status[k] = v.clone();
        }
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:1"}]},
        "status": status,
    })
}

/// Sets a pod's status as the kubelet would.
fn set(fake: &KubeFake, p: Value) {
    fake.with(|s| {
        if s.get("pods", NS, p["metadata"]["name"].as_str().unwrap())
            .is_none()
        {
            s.force(p.clone());
        }
        s.force_status(p)
    });
}

fn uid(fake: &KubeFake, name: &str) -> String {
    fake.get("pods", NS, name).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned()
}

struct Watching {
    rx: mpsc::Receiver<ReadingState>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<PodMemory>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.token.cancel();
        self.task.abort();
    }
}

fn watch(fake: &KubeFake, event: PodEvent) -> Watching {
    watch_from(fake, event, PodMemory::default())
}

/// A heartbeat: "no data" while the source sees, or, before its first list has
/// answered, the source error saying it has not listed yet.
fn heartbeat(state: &ReadingState) -> bool {
    match state {
        ReadingState::NoData => true,
        ReadingState::SourceError(e) => e == "the pods have not been listed yet",
        _ => false,
    }
}

/// A watch that starts from what an earlier one knew (as after a reload).
fn watch_from(fake: &KubeFake, event: PodEvent, memory: PodMemory) -> Watching {
    let (tx, rx) = mpsc::channel(64);
    let token = CancellationToken::new();
    let task = tokio::spawn(rearguard::source::kube_pods::watch(
        spec(fake, event),
        Duration::from_millis(100),
        memory,
        tx,
        token.clone(),
    ));
    Watching { rx, token, task }
}

impl Watching {
    /// Stops the watch and takes what it knew.
    async fn stop(mut self) -> PodMemory {
        self.token.cancel();
        (&mut self.task).await.expect("the watch stops cleanly")
    }

    /// The next event's key, skipping heartbeats; fails at a source error or after `secs`.
    async fn event(&mut self, secs: u64) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ReadingState::Value(Measure::Event { key }))) => return key,
                Ok(Some(state)) if heartbeat(&state) => {}
                Ok(other) => panic!("expected an event, got {other:?}"),
                Err(_) => panic!("no event within {secs}s"),
            }
        }
    }

    /// Fails if an event comes within `millis`; heartbeats pass.
    async fn no_event(&mut self, millis: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(millis);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(state)) if heartbeat(&state) => {}
                Ok(other) => panic!("expected no event, got {other:?}"),
                Err(_) => return,
            }
        }
    }

    /// Waits until the source has listed and watches (a heartbeat after the first list).
    async fn ready(&mut self, fake: &KubeFake) {
        crate::support::poll_until(Duration::from_secs(5), || {
            fake.requests()
                .iter()
                .any(|r| r.query.contains("watch=true"))
        })
        .await
        .expect("the source watches the pods");
    }
}

#[tokio::test]
async fn oom_kills_are_seen_once_per_restart_and_never_for_the_past() {
    let fake = KubeFake::start().await;
    // Killed before rearguard looked: a baseline, not an event.
    set(&fake, pod("old", 3, Some("OOMKilled"), json!({})));
    set(&fake, pod("a", 0, None, json!({})));
    set(&fake, pod("b", 0, None, json!({})));
    let mut w = watch(&fake, PodEvent::OomKilled);
    w.ready(&fake).await;
    w.no_event(300).await;
    set(&fake, pod("a", 1, Some("OOMKilled"), json!({})));
    assert_eq!(w.event(5).await, uid(&fake, "a"));
    // A crash that is not an OOM kill, and an unrelated status change, are not events.
    set(&fake, pod("b", 1, Some("Error"), json!({})));
    set(
        &fake,
        pod("a", 1, Some("OOMKilled"), json!({"podIP": "10.0.0.7"})),
    );
    w.no_event(300).await;
    // Killed again: another event with the same pod's key (the engine counts pods).
    set(&fake, pod("a", 2, Some("OOMKilled"), json!({})));
    assert_eq!(w.event(5).await, uid(&fake, "a"));
    // A pod created after the first list that was already killed counts.
    set(&fake, pod("c", 1, Some("OOMKilled"), json!({})));
    assert_eq!(w.event(5).await, uid(&fake, "c"));
    // Other pods of the namespace are not watched.
    let mut other = pod("x", 5, Some("OOMKilled"), json!({}));
    other["metadata"]["labels"] = json!({"app": "other"});
    set(&fake, other);
    w.no_event(300).await;
}

#[tokio::test]
async fn a_watch_that_ends_or_expires_resumes_without_double_counting_or_losing_events() {
    let fake = KubeFake::start().await;
    set(&fake, pod("a", 0, None, json!({})));
    set(&fake, pod("b", 0, None, json!({})));
    let mut w = watch(&fake, PodEvent::OomKilled);
    w.ready(&fake).await;
    set(&fake, pod("a", 1, Some("OOMKilled"), json!({})));
    assert_eq!(w.event(5).await, uid(&fake, "a"));
    let watches = |f: &KubeFake| {
        f.requests()
            .iter()
            .filter(|r| r.query.contains("watch=true"))
            .count()
    };
    // The connection drops: the source watches again from where it was.
    let before = watches(&fake);
    fake.with(|s| s.end_watches());
    crate::support::poll_until(Duration::from_secs(5), || watches(&fake) > before)
        .await
        .expect("the watch is resumed");
    w.no_event(300).await;
    // An OOM kill while the watch is down and its version compacted away: the source
    // gets 410, lists again, and counts b once, and a not again.
    let lists = |f: &KubeFake| {
        f.requests()
            .iter()
            .filter(|r| r.path.ends_with("/pods") && !r.query.contains("watch=true"))
            .count()
    };
    let listed = lists(&fake);
    fake.with(|s| {
        s.end_watches();
        let mut b = pod("b", 1, Some("OOMKilled"), json!({}));
        b["metadata"]["namespace"] = json!(NS);
        s.force_status(b);
        s.compact();
    });
    assert_eq!(w.event(5).await, uid(&fake, "b"));
    w.no_event(500).await;
    assert!(lists(&fake) > listed, "the source listed the pods again");
}

#[tokio::test]
async fn crash_loops_readiness_and_evictions_are_told_apart() {
    let fake = KubeFake::start().await;
    set(&fake, pod("a", 0, None, json!({})));
    set(&fake, pod("b", 0, None, json!({})));
    let mut crash = watch(&fake, PodEvent::CrashLoop);
    let mut ready = watch(&fake, PodEvent::NotReady);
    let mut evicted = watch(&fake, PodEvent::Evicted);
    let mut oom = watch(&fake, PodEvent::OomKilled);
    for w in [&mut crash, &mut ready, &mut evicted, &mut oom] {
        w.ready(&fake).await;
    }
    // a crash-loops: not ready, and waiting in CrashLoopBackOff after an error.
    let mut looping = pod("a", 3, Some("Error"), json!({}));
    looping["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    looping["status"]["containerStatuses"][0]["state"] =
        json!({"waiting": {"reason": "CrashLoopBackOff"}});
    set(&fake, looping);
    assert_eq!(crash.event(5).await, uid(&fake, "a"));
    assert_eq!(ready.event(5).await, uid(&fake, "a"));
    // b is evicted for memory pressure: an eviction, not an OOM kill or a crash loop.
    set(
        &fake,
        pod(
            "b",
            0,
            None,
            json!({"phase": "Failed", "reason": "Evicted",
                   "message": "The node was low on resource: memory."}),
        ),
    );
    assert_eq!(evicted.event(5).await, uid(&fake, "b"));
    oom.no_event(300).await;
    crash.no_event(100).await;
}

/// The kubelet reports every pod it starts as not ready until its containers are up: a
/// rolling update is not a stream of `not_ready` events. Only a pod that was ready and
/// no longer is counts.
#[tokio::test]
async fn a_starting_pod_that_is_not_ready_yet_is_no_not_ready_event() {
    let fake = KubeFake::start().await;
    let mut ready = watch(&fake, PodEvent::NotReady);
    ready.ready(&fake).await;
    let mut starting = pod("new", 0, None, json!({"phase": "Pending"}));
    starting["status"]["conditions"] = json!([]);
    set(&fake, starting.clone());
    starting["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    set(&fake, starting);
    ready.no_event(500).await;
    // Up, then down: that is the event.
    set(&fake, pod("new", 0, None, json!({})));
    let mut down = pod("new", 0, None, json!({}));
    down["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    set(&fake, down);
    assert_eq!(ready.event(5).await, uid(&fake, "new"));
}

#[tokio::test]
async fn a_source_that_cannot_list_reports_a_source_error_every_interval() {
    let fake = KubeFake::start().await;
    fake.inject(
        axum::http::Method::GET,
        "/api/v1/namespaces/shop/pods",
        1000,
        crate::kube_fake::Effect::Respond(403),
    );
    let mut w = watch(&fake, PodEvent::OomKilled);
    // Before the first list fails, a heartbeat may say the pods were not listed yet; it
    // never says "no data", which would claim they were seen.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let state = tokio::time::timeout_at(deadline, w.rx.recv())
            .await
            .expect("a source error within 5s")
            .unwrap();
        match state {
            ReadingState::SourceError(e) if e.contains("403") => break,
            ReadingState::SourceError(e) => assert!(e.contains("not been listed"), "{e}"),
            other => panic!("expected a source error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_daemon_fires_an_oom_rule_on_distinct_pods_killed_within_the_window() {
    let fake = KubeFake::start().await;
    for name in ["a", "b", "c"] {
        set(&fake, pod(name, 0, None, json!({})));
    }
    let dir = crate::support::temp_dir();
    let text = format!(
        r#"
[daemon]
state_dir = "{state}"
listen = "127.0.0.1:0"
tick = "50ms"
drain_timeout = "5s"

[kubernetes]
kubeconfig = "{kubeconfig}"

[[target]]
name = "web"

[[signal]]
name = "oom"
target = "web"
type = "kube_pods"
namespace = "shop"
selector = "app=web"
event = "oom_killed"
interval = "100ms"

[[rule]]
name = "memory-leak"
signal = "oom"
when = "> 1"
within = "5m"
"#,
        state = dir.path().display(),
        kubeconfig = fake.kubeconfig().display(),
    );
    let mut d = crate::running::start(crate::daemon::load(&text));
    d.wait_for("the start", 10, |e| {
        matches!(e, rearguard::daemon::Event::Started)
    })
    .await;
    crate::support::poll_until(Duration::from_secs(5), || {
        fake.requests()
            .iter()
            .any(|r| r.query.contains("watch=true"))
    })
    .await
    .expect("the daemon watches the pods");
    // The same pod killed twice is one pod: not above 1.
    set(&fake, pod("a", 1, Some("OOMKilled"), json!({})));
    set(&fake, pod("a", 2, Some("OOMKilled"), json!({})));
    d.expect_none("the rule firing on one pod", 1, |e| {
        matches!(
            e,
            rearguard::daemon::Event::Effect(_, rearguard::engine::Effect::RuleChanged { .. })
        )
    })
    .await;
    set(&fake, pod("b", 1, Some("OOMKilled"), json!({})));
    let evidence = d.rule_becomes(rearguard::engine::Phase::Firing, 5).await;
    assert!(evidence.contains("2 distinct events"), "{evidence}");
    d.stop().await;
}

#[test]
fn a_bad_selector_or_event_is_a_configuration_error_with_its_path() {
    let text = r#"
[[target]]
name = "web"

[[signal]]
name = "oom"
target = "web"
type = "kube_pods"
namespace = "Shop"
selector = "app in web"
event = "oomkilled"
"#;
    let errors: Vec<String> = crate::support::config_errors(text);
    for expected in [
        "signal[0].selector: \"app in web\" is not a label requirement",
        "signal[0].namespace: \"Shop\" is not a Kubernetes name",
        "signal[0].event: expected \"oom_killed\"",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{expected} not in {errors:?}"
        );
    }
}

#[tokio::test]
async fn a_watch_handed_what_the_one_before_knew_counts_a_kill_in_the_gap() {
    let fake = KubeFake::start().await;
    set(&fake, pod("a", 0, None, json!({})));
    set(&fake, pod("b", 0, None, json!({})));
    let mut w = watch(&fake, PodEvent::OomKilled);
    w.ready(&fake).await;
    w.no_event(200).await;
    let memory = w.stop().await;
    // Killed while no watch runs (a reload's gap).
    set(&fake, pod("a", 1, Some("OOMKilled"), json!({})));
    // A watch that starts afresh takes it as the past.
    let mut fresh = watch(&fake, PodEvent::OomKilled);
    fresh.ready(&fake).await;
    fresh.no_event(300).await;
    // The watch handed the memory compares and counts it, once.
    let mut next = watch_from(&fake, PodEvent::OomKilled, memory);
    assert_eq!(next.event(5).await, uid(&fake, "a"));
    next.no_event(300).await;
}
