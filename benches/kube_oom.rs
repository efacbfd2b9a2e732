//! Pod-watch OOM kills to decision: from the moment the Kubernetes API server records a
//! pod's status with an `OOMKilled` restart to the moment rearguard's rule fires and its
//! plan's first step is ordered (issue 4 asks for less than 1 s).
//!
//! Each run starts, on loopback, the tests' fake API server (`tests/it/kube_fake.rs`:
//! real HTTP and JSON, watches from a resourceVersion, the same server the real kubectl
//! talks to) holding three running pods of an app, and rearguard's daemon in-process (the
//! code of `rearguard run`) with a `kube_pods` signal counting `oom_killed` events of
//! those pods (`interval = "1h"`, so only the watch can deliver the kills in time), the
//! runbook's rule shape `> 2 within 1m`, and a one-step plan (`/bin/true`) after a new
//! revision was observed. Once the daemon watches the pods, the bench writes each pod's
//! status with a container restarted after `OOMKilled`, 200 ms apart, as the kubelet
//! would. Measured from the instant just before the third status is written into the
//! server's store (which also sends the watch event) to the daemon's observer hearing
//! the rule turn firing, and the `RunStep` effect.
//!
//! `cargo bench --bench kube_oom` (`RUNS=N`, default 20, about 2 s each). No root and no
//! external program. Under `cargo test` it does nothing.

#[path = "../tests/it/kube_fake.rs"]
mod kube_fake;

mod common;

#[path = "../tests/it/support.rs"]
mod support;

use std::time::{Duration, Instant};

use common::median;
use serde_json::{Value, json};

use kube_fake::KubeFake;

const NS: &str = "shop";

/// Kills per run; the rule fires on the last one.
const KILLS: usize = 3;

/// Between two kills: pacing the injected fault, not waiting for something.
const SPACING: Duration = Duration::from_millis(200);

/// A running pod of the app, or one whose container restarted after an OOM kill.
fn pod(name: &str, killed: bool) -> Value {
    let mut container = json!({
        "name": "web", "image": "web:2", "imageID": "", "ready": true,
        "restartCount": if killed { 1 } else { 0 }, "state": {"running": {}},
    });
    if killed {
        container["lastState"] = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:2"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [container]},
    })
}

/// Writes a pod's status into the fake's store, as the kubelet's status update would.
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

struct RunResult {
    /// Third kill recorded to the rule firing, and to the first step ordered, in ms.
    to_firing: f64,
    to_step: f64,
}

async fn one_run() -> RunResult {
    let fake = KubeFake::start().await;
    let names: Vec<String> = (0..KILLS).map(|i| format!("web-{i}")).collect();
    for name in &names {
        set(&fake, pod(name, false));
    }
    let dir = tempfile::tempdir().unwrap();
    let revision = common::Revision::new(dir.path());
    let kubernetes = format!(
        r#"[kubernetes]
kubeconfig = "{}""#,
        fake.kubeconfig().display()
    );
    let signal = format!(
        r#"type = "kube_pods"
namespace = "{NS}"
selector = "app=web"
event = "oom_killed"
interval = "1h""#
    );
    let cfg = common::oom_config(dir.path(), &revision, &kubernetes, &signal);
    let mut daemon = common::Daemon::spawn(cfg);
    daemon.started().await;
    revision.deploy(&mut daemon).await;
    support::poll_until(Duration::from_secs(10), || {
        fake.requests()
            .iter()
            .any(|r| r.path.ends_with("/pods") && r.query.contains("watch=true"))
    })
    .await
    .expect("the daemon watches the pods");
    let decided = daemon.decision();
    let mut third = None;
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(SPACING).await;
        }
        let killed = pod(name, true);
        let at = Instant::now();
        set(&fake, killed);
        third = Some(at);
    }
    let third = third.unwrap();
    let decision = tokio::time::timeout(Duration::from_secs(30), decided)
        .await
        .expect("rearguard decides within 30 s")
        .expect("the observer task");
    daemon.stop().await;
    let firing = decision.firing.expect("the rule fired first");
    // A rule that fired before the third kill would be a wrong measurement, not a fast one.
    assert!(firing >= third, "the rule fired before the third kill");
    let ms = |t: Instant| t.duration_since(third).as_secs_f64() * 1000.0;
    RunResult {
        to_firing: ms(firing),
        to_step: ms(decision.step),
    }
}

fn main() {
    let Some(runs) = common::runs(20) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut results = Vec::new();
    for i in 0..runs {
        let r = rt.block_on(one_run());
        println!(
            "run {}: third OOM kill recorded by the API server to rule firing {:.1} ms, to the first step ordered {:.1} ms",
            i + 1,
            r.to_firing,
            r.to_step
        );
        results.push(r);
    }
    let firing: Vec<f64> = results.iter().map(|r| r.to_firing).collect();
    let step: Vec<f64> = results.iter().map(|r| r.to_step).collect();
    let max = |v: &[f64]| v.iter().copied().fold(f64::MIN, f64::max);
    println!();
    println!("| Path | Median | Worst | Runs |");
    println!("|---|---:|---:|---:|");
    println!(
        "| pod status with OOMKilled recorded by the API server to rule firing | {:.1} ms | {:.1} ms | {runs} |",
        median(firing.clone()).unwrap_or(f64::NAN),
        max(&firing)
    );
    println!(
        "| pod status with OOMKilled recorded by the API server to the rollback's first step | {:.1} ms | {:.1} ms | {runs} |",
        median(step.clone()).unwrap_or(f64::NAN),
        max(&step)
    );
}
