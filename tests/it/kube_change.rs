//! The `kube_deployment` change observer against the fake API server, and the daemon end
//! to end on Kubernetes: a deploy seen through the watch, a service that breaks with
//! it, the revision marked bad on the cluster and rolled back through the API.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use rearguard::config::KubeDeploymentRef;
use rearguard::daemon::Event;
use rearguard::engine::Outcome;
use rearguard::kube::{Access, AccessSource};
use rearguard::source::kube_deployment::{Watcher, observe};
use serde_json::{Value, json};

use crate::kube_fake::KubeFake;
use crate::running::start;
use crate::support;

pub(crate) const NS: &str = "shop";
pub(crate) const NAME: &str = "web";

fn target(fake: &KubeFake) -> KubeDeploymentRef {
    KubeDeploymentRef {
        access: Access {
            source: AccessSource::Kubeconfig {
                path: fake.kubeconfig(),
                context: None,
            },
            server: None,
        },
        namespace: NS.to_owned(),
        deployment: NAME.to_owned(),
    }
}

pub(crate) fn template(image: &str, hash: Option<&str>) -> Value {
    let mut labels = json!({"app": "web"});
    if let Some(h) = hash {
        labels["pod-template-hash"] = json!(h);
    }
    json!({"metadata": {"labels": labels},
           "spec": {"containers": [{"name": "web", "image": image}]}})
}

/// Creates the Deployment at revision 1.
pub(crate) fn seed(fake: &KubeFake) {
    fake.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NS,
                     "annotations": {"deployment.kubernetes.io/revision": "1"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": template("web:1", None)},
    }));
    add_replica_set(fake, 1);
}

/// What the deployment controller does for revision `n`: a ReplicaSet with its template.
pub(crate) fn add_replica_set(fake: &KubeFake, n: u32) {
    let uid = fake.get("deployments", NS, NAME).unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let hash = format!("h{n}");
    fake.put(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": format!("web-{hash}"), "namespace": NS,
            "labels": {"app": "web", "pod-template-hash": hash},
            "annotations": {"deployment.kubernetes.io/revision": n.to_string()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME,
                                 "uid": uid, "controller": true}],
        },
        "spec": {"selector": {"matchLabels": {"app": "web", "pod-template-hash": hash}},
                 "template": template(&format!("web:{n}"), Some(&hash))},
    }));
}

/// A deploy of revision `n`: the Deployment's template changes (as `kubectl set image`
/// does), then the controller creates the ReplicaSet and records the revision.
pub(crate) fn deploy(fake: &KubeFake, n: u32) {
    let mut d = fake.get("deployments", NS, NAME).unwrap();
    d["spec"]["template"] = template(&format!("web:{n}"), None);
    fake.put(d);
    add_replica_set(fake, n);
    let mut d = fake.get("deployments", NS, NAME).unwrap();
    d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!(n.to_string());
    fake.put(d);
}

#[tokio::test]
async fn the_revision_is_that_of_the_replica_set_running_the_template() {
    let fake = KubeFake::start().await;
    seed(&fake);
    assert_eq!(observe(&target(&fake)).await, Ok("1".to_owned()));
    // The template changed, and the controller has not made its ReplicaSet yet.
    let mut d = fake.get("deployments", NS, NAME).unwrap();
    d["spec"]["template"] = template("web:2", None);
    fake.put(d);
    assert_eq!(
        observe(&target(&fake)).await,
        Err("deployment web has no replicaset for its current pod template yet".to_owned())
    );
    add_replica_set(&fake, 2);
    assert_eq!(observe(&target(&fake)).await, Ok("2".to_owned()));
    let missing = KubeDeploymentRef {
        deployment: "nope".to_owned(),
        ..target(&fake)
    };
    assert_eq!(
        observe(&missing).await,
        Err("deployment shop/nope not found".to_owned())
    );
}

#[tokio::test]
async fn the_watcher_wakes_on_a_change_and_not_before() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let mut watcher = Watcher::new(&target(&fake));
    // Before the first read there is nothing to wait for.
    tokio::time::timeout(Duration::from_secs(1), watcher.changed())
        .await
        .expect("at once before the first read");
    assert_eq!(watcher.observe().await, Ok("1".to_owned()));
    let mut waiting = tokio::spawn(async move {
        watcher.changed().await;
        watcher
    });
    support::poll_until(Duration::from_secs(5), || {
        fake.requests()
            .iter()
            .any(|r| r.query.contains("watch=true"))
    })
    .await
    .expect("the watcher watches");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "nothing changed yet"
    );
    deploy(&fake, 2);
    let mut watcher = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the change wakes the watcher")
        .unwrap();
    assert_eq!(watcher.observe().await, Ok("2".to_owned()));
}

/// A service whose health follows the image the Deployment runs in the fake.
async fn health(State(fake): State<Arc<KubeFake>>) -> (StatusCode, &'static str) {
    let image = fake
        .get("deployments", NS, NAME)
        .map(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].clone());
    if image == Some(json!("web:1")) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, "failing")
    }
}

#[tokio::test]
async fn a_bad_deploy_seen_through_the_watch_is_marked_bad_and_rolled_back_through_the_api() {
    let fake = Arc::new(KubeFake::start().await);
    seed(&fake);
    let server = support::serve(
        Router::new()
            .route("/health", get(health))
            .with_state(Arc::clone(&fake)),
    )
    .await;
    let dir = support::temp_dir();
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
plan = "undo"
blame_window = "5m"
change = {{ type = "kube_deployment", namespace = "shop", deployment = "web" }}

[[signal]]
name = "health"
target = "web"
type = "http_probe"
url = "{url}"
interval = "100ms"
timeout = "1s"

[[rule]]
name = "down"
signal = "health"
consecutive = 3

[[plan]]
name = "undo"

[[plan.step]]
type = "kube_mark_bad"
namespace = "shop"
deployment = "web"

[[plan.step]]
type = "kube_rollout_undo"
namespace = "shop"
deployment = "web"
to_revision = "{{to_revision}}"

[plan.verify]
window = "500ms"
"#,
        state = dir.path().display(),
        kubeconfig = fake.kubeconfig().display(),
        url = server.url("/health"),
    );
    let cfg = crate::daemon::load(&text);
    let mut d = start(cfg);
    d.wait_for("the start", 10, |e| matches!(e, Event::Started))
        .await;
    // Healthy readings on revision 1 first.
    support::poll_until(Duration::from_secs(10), || server.request_count() >= 3)
        .await
        .expect("the daemon probes the service");
    deploy(&fake, 2);
    let inc = d.closed_incident(30).await;
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "timeline: {:#?}",
        inc.timeline
    );
    assert_eq!(inc.from_revision.as_deref(), Some("2"));
    assert_eq!(inc.to_revision.as_deref(), Some("1"));
    let deployment = fake.get("deployments", NS, NAME).unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
    let bad = fake.get("replicasets", NS, "web-h2").unwrap();
    assert_eq!(
        bad["metadata"]["annotations"]["rearguard.io/marked-bad"],
        json!(inc.id)
    );
    d.stop().await;
}
