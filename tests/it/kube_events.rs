//! Kubernetes Events on incident transitions, end to end against the fake API server:
//! the daemon sees a bad deploy through the watch, rolls it back, and posts one Event per
//! transition on the Deployment, in order; an API that refuses Events does not stop the
//! rollback; `[kubernetes] events = false` posts none.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::Method;
use axum::routing::get;
use rearguard::daemon::Event;
use rearguard::engine::Outcome;
use serde_json::{Value, json};

use crate::kube_change::{NAME, NS, deploy, health, seed};
use crate::kube_fake::{self, KubeFake};
use crate::running::start;
use crate::support;

const EVENTS: &str = "/api/v1/namespaces/shop/events";

/// A daemon watching the Deployment `shop/web` with a probe of a service that fails on
/// any image but `web:1`, and a plan that rolls it back; `events` is the value of
/// `[kubernetes] events`, if set.
fn config(fake: &KubeFake, url: &str, state: &std::path::Path, events: Option<bool>) -> String {
    let events = events.map_or(String::new(), |e| format!("events = {e}"));
    format!(
        r#"
[daemon]
state_dir = "{state}"
listen = "127.0.0.1:0"
tick = "50ms"
drain_timeout = "5s"

[kubernetes]
kubeconfig = "{kubeconfig}"
{events}

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
type = "kube_rollout_undo"
namespace = "shop"
deployment = "web"
to_revision = "{{to_revision}}"

[plan.verify]
window = "500ms"
"#,
        state = state.display(),
        kubeconfig = fake.kubeconfig().display(),
    )
}

/// Runs a bad deploy of revision 2 through a daemon on `fake` until its incident closes;
/// returns the incident's id after checking it was rolled back.
async fn bad_deploy_rolled_back(fake: Arc<KubeFake>, events: Option<bool>) -> String {
    seed(&fake);
    let server = support::serve(
        Router::new()
            .route("/health", get(health))
            .with_state(Arc::clone(&fake)),
    )
    .await;
    let dir = support::temp_dir();
    let cfg = crate::daemon::load(&config(&fake, &server.url("/health"), dir.path(), events));
    let mut d = start(cfg);
    d.wait_for("the start", 10, |e| matches!(e, Event::Started))
        .await;
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
    let deployment = fake.get("deployments", NS, NAME).unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
    d.stop().await;
    inc.id
}

/// The reasons of the Events posted to the namespace, in the order they were posted.
fn posted_reasons(fake: &KubeFake) -> Vec<String> {
    fake.requests_to(&Method::POST, EVENTS)
        .iter()
        .map(|r| r.json()["reason"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// A rollback that verified, then the incident resolved; the last Event is posted while
/// the daemon stops (a stop drains the queue, bounded).
const TRANSITIONS: [&str; 4] = [
    "IncidentOpened",
    "RollbackStarted",
    "RollbackSucceeded",
    "IncidentResolved",
];

#[tokio::test]
async fn each_transition_of_an_incident_is_an_event_on_its_deployment_in_order() {
    let fake = Arc::new(KubeFake::start().await);
    let incident = bad_deploy_rolled_back(Arc::clone(&fake), None).await;
    support::poll_until(Duration::from_secs(10), || {
        posted_reasons(&fake).len() >= TRANSITIONS.len()
    })
    .await
    .unwrap_or_else(|_| panic!("events posted: {:?}", posted_reasons(&fake)));
    assert_eq!(posted_reasons(&fake), TRANSITIONS);

    let uid = fake.get("deployments", NS, NAME).unwrap()["metadata"]["uid"].clone();
    let stored = fake.list("events", Some(NS));
    assert_eq!(stored.len(), TRANSITIONS.len(), "{stored:#?}");
    for event in &stored {
        assert_eq!(
            event["involvedObject"],
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME,
                   "namespace": NS, "uid": uid}),
            "{event:#}"
        );
        assert_eq!(event["source"]["component"], "rearguard");
        assert_eq!(event["reportingComponent"], "rearguard");
        assert_eq!(
            event["metadata"]["annotations"]["rearguard.io/incident"],
            json!(incident)
        );
        let message = event["message"].as_str().unwrap();
        assert!(message.contains(&incident), "{message}");
        assert!(message.len() <= rearguard::kube::events::MESSAGE_LIMIT);
        let warning = matches!(event["reason"].as_str(), Some("IncidentOpened"));
        assert_eq!(
            event["type"],
            if warning { "Warning" } else { "Normal" },
            "{event:#}"
        );
    }
    let opened = stored
        .iter()
        .find(|e| e["reason"] == "IncidentOpened")
        .unwrap();
    assert!(
        opened["message"].as_str().unwrap().contains("[down]"),
        "the message names the rule: {opened:#}"
    );

    // kubectl reads them back as core/v1 Events of the Deployment.
    let out = fake
        .kubectl_ok(&["get", "events", "-n", NS, "-o", "json"])
        .await;
    let listed: Value = serde_json::from_str(&out).unwrap();
    let items = listed["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), TRANSITIONS.len(), "{out}");
    assert!(
        items
            .iter()
            .all(|e| e["involvedObject"]["kind"] == "Deployment"
                && e["involvedObject"]["name"] == NAME),
        "{out}"
    );
}

#[tokio::test]
async fn an_api_server_that_refuses_events_does_not_stop_the_rollback() {
    let fake = Arc::new(KubeFake::start().await);
    fake.inject(Method::POST, EVENTS, 100, kube_fake::Effect::Respond(500));
    // bad_deploy_rolled_back checks the rollback completed and the Deployment is back.
    bad_deploy_rolled_back(Arc::clone(&fake), None).await;
    let refused = fake.requests_to(&Method::POST, EVENTS);
    assert!(
        refused.len() >= 2 && refused.iter().all(|r| r.status == 500),
        "every event was tried and refused: {:?}",
        refused.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(fake.list("events", Some(NS)).is_empty());
}

#[tokio::test]
async fn no_event_is_posted_when_events_are_turned_off() {
    let fake = Arc::new(KubeFake::start().await);
    bad_deploy_rolled_back(Arc::clone(&fake), Some(false)).await;
    assert_eq!(posted_reasons(&fake), Vec::<String>::new());
}
