//! The `kube_pods` source: events of the pods a label selector matches, seen through a
//! watch (not by polling), each handed to the engine as it happens.
//!
//! One signal counts one kind of event, each pod at most once (the engine counts
//! distinct keys, and the key is the pod's UID): "OOMKilled > 3 pods in 5 minutes".
//!
//! - `oom_killed`: a container's restart count went up and its last state says
//!   `terminated` with reason `OOMKilled`, or a container that does not restart is now
//!   terminated with that reason.
//! - `crash_loop`: a container is now waiting with reason `CrashLoopBackOff`.
//! - `not_ready`: the pod's `Ready` condition turned `False` (a pod seen not ready when
//!   first listed counts too: nothing says it ever was).
//! - `evicted`: the pod failed with reason `Evicted` (the kubelet evicted it, for memory
//!   pressure or otherwise): told apart from an OOM kill, which leaves the pod running.
//!
//! What is known of each pod (restart counts, readiness, eviction) is kept across watch
//! errors: after one, the pods are listed again and compared with it, so nothing is
//! counted twice and nothing that happened in the gap is lost. Pods present at the first
//! list are a baseline, not events: their past restarts happened before rearguard looked.
//! Between events the source reports "no data" every interval while it can see, and a
//! source error while it cannot, so blindness is detected as for every other source.
//!
//! A watch stopped for a reload hands what it knows ([`PodMemory`]) to the watch of the
//! same signal in the new configuration, whose first list is then compared with it like
//! a list after a watch error: an event in the gap is counted, not taken as a baseline.

use std::collections::HashMap;
use std::time::Duration;

use ::kube::Api;
use ::kube::api::{ListParams, WatchEvent, WatchParams};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{KubePodsSpec, PodEvent};
use crate::engine::{Measure, ReadingState};
use crate::kube::{Handle, KubeError};

/// What a heartbeat says before the first list has answered.
const NOT_LISTED: &str = "the pods have not been listed yet";

/// How long one watch request stays open before it is renewed.
const WATCH_SECONDS: u32 = 290;

/// How long listing the pods may take.
const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What is known of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memo {
    /// Restart count by container name (init containers too).
    restarts: HashMap<String, i32>,
    /// Containers already seen terminated by an OOM kill (those that do not restart).
    oom_terminated: Vec<String>,
    crash_looping: bool,
    ready: Option<bool>,
    evicted: bool,
}

/// What a watch knows of its pods, kept from one watch to the next of the same signal
/// (across a reload). The default knows nothing: the first list is a baseline.
#[derive(Debug, Clone, Default)]
pub struct PodMemory {
    /// By pod UID; `None` until the first list.
    known: Option<HashMap<String, Memo>>,
}

fn statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let status = pod.status.as_ref();
    status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .chain(
            status
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten(),
        )
}

/// What `pod` says now.
pub fn memo(pod: &Pod) -> Memo {
    let mut m = Memo::default();
    for c in statuses(pod) {
        m.restarts.insert(c.name.clone(), c.restart_count);
        let terminated_oom = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
        if terminated_oom {
            m.oom_terminated.push(c.name.clone());
        }
        let waiting = c.state.as_ref().and_then(|s| s.waiting.as_ref());
        if waiting.is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff")) {
            m.crash_looping = true;
        }
    }
    let status = pod.status.as_ref();
    m.ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status == "True");
    m.evicted = status.is_some_and(|s| {
        s.phase.as_deref() == Some("Failed") && s.reason.as_deref() == Some("Evicted")
    });
    m
}

/// Whether `pod`, known before as `before` (`None`: never seen), shows a new event of
/// `kind`.
pub fn happened(kind: PodEvent, before: Option<&Memo>, pod: &Pod) -> bool {
    let now = memo(pod);
    let empty = Memo::default();
    let before = before.unwrap_or(&empty);
    match kind {
        PodEvent::OomKilled => {
            let restarted_oom = statuses(pod).any(|c| {
                let was = before.restarts.get(&c.name).copied().unwrap_or(0);
                let last_oom = c
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
                c.restart_count > was && last_oom
            });
            let newly_terminated = now
                .oom_terminated
                .iter()
                .any(|c| !before.oom_terminated.contains(c));
            restarted_oom || newly_terminated
        }
        PodEvent::CrashLoop => now.crash_looping && !before.crash_looping,
        // A pod that was ready and no longer is: a pod starting (no Ready condition yet,
        // then Ready=False until its containers are up) is not an event.
        PodEvent::NotReady => now.ready == Some(false) && before.ready == Some(true),
        PodEvent::Evicted => now.evicted && !before.evicted,
    }
}

/// Watches the pods of `spec` until `token` is cancelled, sending each event's reading
/// as it happens and a reading every `interval` (no data, or the source error) to `tx`.
/// It starts from `memory` (what an earlier watch of the same signal knew) and returns
/// what it knows when it stops.
pub async fn watch(
    spec: KubePodsSpec,
    interval: Duration,
    memory: PodMemory,
    tx: mpsc::Sender<ReadingState>,
    token: CancellationToken,
) -> PodMemory {
    let handle = Handle::new(&spec.access);
    let mut first = memory.known.is_none();
    let mut known: HashMap<String, Memo> = memory.known.unwrap_or_default();
    // What is known when the watch stops: nothing if it never listed.
    let kept = |known: HashMap<String, Memo>, first: bool| PodMemory {
        known: (!first).then_some(known),
    };
    // Until the first list answers, the source has seen nothing: a heartbeat then says
    // so (a source error), never "no data", which would claim the pods were seen calm.
    let error: std::sync::Mutex<Option<String>> =
        std::sync::Mutex::new(first.then(|| NOT_LISTED.to_string()));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first heartbeat comes an interval after the start, when the first list has
    // succeeded or failed.
    ticker.reset();
    loop {
        let round = follow(&spec, &handle, &mut known, &mut first, &tx, &error);
        let failure = tokio::select! {
            _ = token.cancelled() => None,
            failure = round => Some(failure),
            // The heartbeat: say every interval whether the source can see.
            _ = heartbeat(&mut ticker, &tx, &error) => None,
        };
        let Some(failure) = failure else {
            return kept(known, first);
        };
        // 410 Expired: the version watched from was compacted away, a routine event.
        // Listing again is the whole answer; nothing was missed, nothing failed.
        if failure.code() == Some(410) {
            continue;
        }
        let failure = failure.to_string();
        tracing::warn!(namespace = %spec.namespace, selector = %spec.selector, error = %failure, "the pods' watch failed; listing them again");
        if let Ok(mut e) = error.lock() {
            *e = Some(failure.clone());
        }
        let _ = tx.send(ReadingState::SourceError(failure)).await;
        // A moment before listing again, so a failing API server is not hammered.
        tokio::select! {
            _ = token.cancelled() => return kept(known, first),
            _ = tokio::time::sleep(crate::jitter::jitter(Duration::from_secs(1))) => {}
        }
    }
}

/// Sends a reading each tick; returns only when the receiver is gone.
async fn heartbeat(
    ticker: &mut tokio::time::Interval,
    tx: &mpsc::Sender<ReadingState>,
    error: &std::sync::Mutex<Option<String>>,
) {
    loop {
        ticker.tick().await;
        let current = error.lock().ok().and_then(|e| e.clone());
        let state = match current {
            Some(e) => ReadingState::SourceError(e),
            None => ReadingState::NoData,
        };
        if tx.send(state).await.is_err() {
            return;
        }
    }
}

/// Lists the pods, then watches them; returns why it stopped.
async fn follow(
    spec: &KubePodsSpec,
    handle: &Handle,
    known: &mut HashMap<String, Memo>,
    first: &mut bool,
    tx: &mpsc::Sender<ReadingState>,
    error: &std::sync::Mutex<Option<String>>,
) -> KubeError {
    let client = match handle.client().await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let pods: Api<Pod> = Api::namespaced(client, &spec.namespace);
    // A list answers in moments; one that does not is an error, not a quiet wait.
    let params = ListParams::default().labels(&spec.selector);
    let listing = pods.list(&params);
    let listed = match tokio::time::timeout(LIST_TIMEOUT, listing).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return e.into(),
        Err(_) => {
            return KubeError::Transport(format!(
                "listing the pods did not answer within {}s",
                LIST_TIMEOUT.as_secs()
            ));
        }
    };
    if let Ok(mut e) = error.lock() {
        *e = None;
    }
    let mut seen = HashMap::new();
    for pod in &listed.items {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // At the first list every pod is a baseline (a pod not ready then was never seen
        // ready); after a gap, what changed meanwhile is compared with what was known.
        if !*first {
            see(spec, known.get(&uid), pod, tx).await;
        }
        seen.insert(uid, memo(pod));
    }
    // Pods gone during a gap are forgotten; those still there carry their memo.
    *known = seen;
    *first = false;
    let mut version = listed.metadata.resource_version.unwrap_or_default();
    loop {
        let params = WatchParams::default()
            .labels(&spec.selector)
            .timeout(WATCH_SECONDS);
        let mut events = match pods.watch(&params, &version).await {
            Ok(s) => s.boxed(),
            Err(e) => return e.into(),
        };
        loop {
            match events.try_next().await {
                Ok(Some(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    see(spec, known.get(&uid), &pod, tx).await;
                    known.insert(uid, memo(&pod));
                    version = pod.metadata.resource_version.clone().unwrap_or(version);
                }
                Ok(Some(WatchEvent::Deleted(pod))) => {
                    known.remove(&pod.metadata.uid.clone().unwrap_or_default());
                    version = pod.metadata.resource_version.clone().unwrap_or(version);
                }
                Ok(Some(WatchEvent::Bookmark(b))) => version = b.metadata.resource_version,
                Ok(Some(WatchEvent::Error(status))) => {
                    return KubeError::Api {
                        code: status.code,
                        reason: status.reason.clone(),
                        message: status.message.clone(),
                    };
                }
                // The server ended the watch (its timeout): watch again from here.
                Ok(None) => break,
                Err(e) => return e.into(),
            }
        }
    }
}

async fn see(
    spec: &KubePodsSpec,
    before: Option<&Memo>,
    pod: &Pod,
    tx: &mpsc::Sender<ReadingState>,
) {
    if happened(spec.event, before, pod) {
        let key = pod.metadata.uid.clone().unwrap_or_default();
        tracing::info!(
            pod = pod.metadata.name.as_deref().unwrap_or(""),
            event = spec.event.name(),
            "pod event"
        );
        let _ = tx.send(ReadingState::Value(Measure::Event { key })).await;
    }
}
