//! Kubernetes Events on a target's Deployment for its incidents' transitions, so that
//! `kubectl describe deployment` and `kubectl get events` show what rearguard decided
//! next to what the cluster did (and a new leader can read it there).
//!
//! The engine's [`Effect::Transition`](crate::engine::Effect::Transition) is turned into
//! a core/v1 Event (involvedObject the Deployment, source component `rearguard`, a
//! reason such as `RollbackStarted`, the incident's summary as the message) and handed
//! to one task that posts them in order, off the engine's loop. Posting is best effort:
//! the queue is bounded (an Event that does not fit is dropped and counted in the log),
//! each post is bounded in time, and an API error is logged once until a post succeeds
//! again. Nothing here can block or fail a rollback.
//!
//! A target gets Events when its change observer is `kube_deployment`: that names the
//! Deployment and how to reach its cluster. This module writes Events only, never the
//! Deployment.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use ::kube::Api;
use ::kube::api::PostParams;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Handle, KubeError};
use crate::config::{ChangeSpec, Config, KubeDeploymentRef, Occasion};

/// The component named in every Event's `source` and `reportingComponent`.
pub const COMPONENT: &str = "rearguard";

/// The longest message posted, in bytes (the limit of events.k8s.io/v1's `note`).
pub const MESSAGE_LIMIT: usize = 1024;

/// How many Events may wait to be posted; more are dropped.
const QUEUE: usize = 256;

/// How long one post (and the read of the Deployment's uid) may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the Events still queued at a stop may take to be posted.
const DRAIN: Duration = Duration::from_secs(2);

/// The Event's reason and type for an occasion, or `None` for occasions that are not a
/// transition of the incident (a slow rollback, failed attempts).
pub fn reason(occasion: Occasion) -> Option<(&'static str, &'static str)> {
    Some(match occasion {
        Occasion::Opened => ("IncidentOpened", "Warning"),
        Occasion::RollbackStarted => ("RollbackStarted", "Normal"),
        Occasion::RollbackSucceeded => ("RollbackSucceeded", "Normal"),
        Occasion::RollbackFailed => ("RollbackFailed", "Warning"),
        Occasion::VerificationFailed => ("VerificationFailed", "Warning"),
        Occasion::VerificationInconclusive => ("VerificationInconclusive", "Warning"),
        Occasion::NotRolledBack => ("Escalated", "Warning"),
        Occasion::Blind => ("WatchdogBlind", "Warning"),
        Occasion::Acknowledged => ("IncidentAcknowledged", "Normal"),
        Occasion::Resolved => ("IncidentResolved", "Normal"),
        Occasion::RuleJoined => ("RuleJoined", "Warning"),
        Occasion::BadRevisionDeployed => ("BadRevisionDeployed", "Warning"),
        Occasion::CannotJudge => ("CannotJudge", "Warning"),
        Occasion::RollbackSlow | Occasion::AttemptsFailed => return None,
    })
}

/// One Event waiting to be posted.
#[derive(Debug, Clone)]
struct Pending {
    target: usize,
    incident: String,
    reason: &'static str,
    kind: &'static str,
    message: String,
    at: SystemTime,
}

/// Where one target's Events go.
struct Destination {
    deployment: KubeDeploymentRef,
    handle: Handle,
    /// The Deployment's uid, read once on the first post.
    uid: Option<String>,
}

/// Hands transitions to the posting task. Cheap to call from the engine's loop: it
/// never waits.
pub struct Recorder {
    tx: Option<mpsc::Sender<Pending>>,
    /// Which targets have a Deployment.
    targets: Vec<bool>,
    dropped: Arc<AtomicU64>,
}

impl Recorder {
    /// A recorder for `cfg`'s targets whose change observer is `kube_deployment`,
    /// posting from a task on `tracker` until `stop` is cancelled. Off (records nothing)
    /// when `[kubernetes] events = false` or no target is a Deployment.
    pub fn start(cfg: &Config, tracker: &TaskTracker, stop: CancellationToken) -> Recorder {
        let destinations: Vec<Option<Destination>> = cfg
            .targets
            .iter()
            .map(|t| match &t.change {
                Some(ChangeSpec::KubeDeployment(d)) if cfg.kube_events => Some(Destination {
                    handle: Handle::new(&d.access),
                    deployment: d.clone(),
                    uid: None,
                }),
                _ => None,
            })
            .collect();
        let targets: Vec<bool> = destinations.iter().map(Option::is_some).collect();
        let dropped = Arc::new(AtomicU64::new(0));
        if !targets.iter().any(|&t| t) {
            return Recorder {
                tx: None,
                targets,
                dropped,
            };
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tracker.spawn(post_loop(destinations, rx, stop, Arc::clone(&dropped)));
        Recorder {
            tx: Some(tx),
            targets,
            dropped,
        }
    }

    /// Queues the Event of an incident's transition on `target`'s Deployment, if it has
    /// one and the occasion is a transition.
    pub fn record(&self, target: usize, incident: &str, occasion: Occasion, summary: &str) {
        let Some(tx) = &self.tx else { return };
        if !self.targets.get(target).copied().unwrap_or(false) {
            return;
        }
        let Some((reason, kind)) = reason(occasion) else {
            return;
        };
        let pending = Pending {
            target,
            incident: incident.to_owned(),
            reason,
            kind,
            message: message(summary),
            at: SystemTime::now(),
        };
        if tx.try_send(pending).is_err() {
            // Counted and reported by the posting task, once it catches up.
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The Event's message: the summary, on one line, within [`MESSAGE_LIMIT`].
pub fn message(summary: &str) -> String {
    let one_line: String = summary
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    crate::notify::text::truncate_bytes(&one_line, MESSAGE_LIMIT)
}

/// Posts queued Events one at a time, in the order they were recorded. Once `stop` is
/// cancelled, what is queued still gets [`DRAIN`] to be posted, so that the Events of a
/// stop's last steps are not lost to it.
async fn post_loop(
    mut destinations: Vec<Option<Destination>>,
    mut rx: mpsc::Receiver<Pending>,
    stop: CancellationToken,
    dropped: Arc<AtomicU64>,
) {
    // While failing, further failures are not logged again until a post succeeds.
    let mut failing = false;
    let mut reported_drops = 0;
    let mut deadline: Option<Instant> = None;
    loop {
        let pending = match deadline {
            None => tokio::select! {
                _ = stop.cancelled() => {
                    deadline = Some(Instant::now() + DRAIN);
                    continue;
                }
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            },
            Some(d) if Instant::now() < d => match rx.try_recv() {
                Ok(p) => p,
                Err(_) => return,
            },
            Some(_) => return,
        };
        let Some(Some(dest)) = destinations.get_mut(pending.target) else {
            continue;
        };
        let posted = bounded(post(dest, &pending), &stop, &mut deadline).await;
        let deployment = format!(
            "{}/{}",
            dest.deployment.namespace, dest.deployment.deployment
        );
        match posted {
            Ok(()) => {
                if failing {
                    tracing::info!(deployment = %deployment, "kubernetes events are posted again");
                }
                failing = false;
                tracing::debug!(incident = %pending.incident, deployment = %deployment, reason = pending.reason, "kubernetes event posted");
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(incident = %pending.incident, deployment = %deployment, reason = pending.reason, error = %e, "cannot post a kubernetes event; further failures are not logged until one succeeds");
            }
            Err(_) => {}
        }
        let now_dropped = dropped.load(Ordering::Relaxed);
        if now_dropped > reported_drops {
            tracing::warn!(
                dropped = now_dropped - reported_drops,
                "kubernetes events dropped: too many waiting to be posted"
            );
            reported_drops = now_dropped;
        }
    }
}

/// `post` within [`POST_TIMEOUT`], and within the drain's deadline once `stop` is
/// cancelled (which sets it).
async fn bounded(
    post: impl std::future::Future<Output = Result<(), KubeError>>,
    stop: &CancellationToken,
    deadline: &mut Option<Instant>,
) -> Result<(), KubeError> {
    tokio::pin!(post);
    let limit = Instant::now() + POST_TIMEOUT;
    loop {
        let until = deadline.map_or(limit, |d| d.min(limit));
        tokio::select! {
            r = &mut post => return r,
            _ = tokio::time::sleep_until(until) => {
                return Err(KubeError::Transport("no answer in time".to_owned()));
            }
            _ = stop.cancelled(), if deadline.is_none() => {
                *deadline = Some(Instant::now() + DRAIN);
            }
        }
    }
}

/// A unique suffix for Event names within this process.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

async fn post(dest: &mut Destination, pending: &Pending) -> Result<(), KubeError> {
    let client = dest.handle.client().await?;
    let namespace = dest.deployment.namespace.clone();
    let name = dest.deployment.deployment.clone();
    if dest.uid.is_none() {
        // Best effort: an Event without the uid still names the Deployment.
        if let Ok(d) = super::deployment(&client, &namespace, &name).await {
            dest.uid = d.metadata.uid;
        }
    }
    let event = event(pending, &namespace, &name, dest.uid.clone());
    let api: Api<Event> = Api::namespaced(client, &namespace);
    api.create(&PostParams::default(), &event).await?;
    Ok(())
}

/// The core/v1 Event of `pending` on the Deployment `namespace/name`.
fn event(pending: &Pending, namespace: &str, name: &str, uid: Option<String>) -> Event {
    let at = k8s_openapi::jiff::Timestamp::try_from(pending.at)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let nanos = pending
        .at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    // As client-go names Events: the object's name and a unique hexadecimal suffix.
    let prefix: String = name.chars().take(200).collect();
    let instance = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| COMPONENT.to_owned());
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{prefix}.{nanos:x}{seq:x}")),
            namespace: Some(namespace.to_owned()),
            annotations: Some(
                [("rearguard.io/incident".to_owned(), pending.incident.clone())].into(),
            ),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("apps/v1".to_owned()),
            kind: Some("Deployment".to_owned()),
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid,
            ..Default::default()
        },
        reason: Some(pending.reason.to_owned()),
        message: Some(pending.message.clone()),
        type_: Some(pending.kind.to_owned()),
        source: Some(EventSource {
            component: Some(COMPONENT.to_owned()),
            host: None,
        }),
        first_timestamp: Some(Time(at)),
        last_timestamp: Some(Time(at)),
        event_time: Some(MicroTime(at)),
        count: Some(1),
        action: Some(pending.reason.to_owned()),
        reporting_component: Some(COMPONENT.to_owned()),
        reporting_instance: Some(instance),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transition_has_a_reason_and_the_scheduled_occasions_have_none() {
        for occasion in Occasion::ALL {
            let r = reason(occasion);
            match occasion {
                Occasion::RollbackSlow | Occasion::AttemptsFailed => assert_eq!(r, None),
                _ => {
                    let (reason, kind) = r.expect("a transition has a reason");
                    assert!(
                        reason
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_uppercase())
                    );
                    assert!(matches!(kind, "Normal" | "Warning"), "{kind}");
                }
            }
        }
    }

    #[test]
    fn messages_are_one_line_and_at_most_the_limit() {
        let long = format!("shop: rollback failed\n{}", "é".repeat(2000));
        let m = message(&long);
        assert!(m.len() <= MESSAGE_LIMIT, "{}", m.len());
        assert!(!m.contains('\n'));
        assert!(m.starts_with("shop: rollback failed "));
        assert_eq!(message("short"), "short");
    }

    #[test]
    fn an_event_names_the_deployment_and_rearguard() {
        let pending = Pending {
            target: 0,
            incident: "inc-1".into(),
            reason: "RollbackStarted",
            kind: "Normal",
            message: "shop: rollback started".into(),
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        };
        let e = event(&pending, "shop", "shop-api", Some("u-1".into()));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Deployment"));
        assert_eq!(e.involved_object.name.as_deref(), Some("shop-api"));
        assert_eq!(e.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(
            e.source.and_then(|s| s.component).as_deref(),
            Some(COMPONENT)
        );
        assert!(e.metadata.name.unwrap().starts_with("shop-api."));
        let json = serde_json::to_value(&e.first_timestamp).unwrap();
        assert_eq!(json, serde_json::json!("2027-01-15T08:00:00Z"));
    }
}
