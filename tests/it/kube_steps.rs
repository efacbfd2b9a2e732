//! The Kubernetes plan steps besides the undo, against the fake API server, each checked
//! against what the real kubectl does where kubectl has the same command: waiting for a
//! rollout (`rollout status`), pause, resume, restart, scale and back, marking a
//! revision bad.

use std::time::Duration;

use axum::http::Method;
use rearguard::action::{Action, ActionContext, ActionOutput};
use rearguard::config::{
    ActionSpec, KubeDeploymentRef, KubeRolloutUndoSpec, KubeScaleSpec, Replicas, ToRevision,
};
use rearguard::kube::{Access, AccessSource};
use serde_json::{Value, json};

use crate::kube_fake::KubeFake;
use crate::support::poll_until;

const NS: &str = "shop";
const NAME: &str = "web";

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

fn ctx() -> ActionContext {
    ActionContext {
        incident: "inc-9".to_owned(),
        target: "web".to_owned(),
        rule: "errors".to_owned(),
        from_revision: None,
        to_revision: None,
        bad_revisions: Vec::new(),
        attempt: 1,
    }
}

async fn step(spec: ActionSpec, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
    Action::new(&spec, &rearguard::http::client())
        .run(ctx, timeout)
        .await
}

/// A Deployment at revision 2 with the ReplicaSets of revisions 1 and 2.
fn seed(fake: &KubeFake, paused: bool, status: Value) {
    let d = fake.put(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NS,
                     "annotations": {"deployment.kubernetes.io/revision": "2"}},
        "spec": {
            "replicas": 3,
            "paused": paused,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "web:2"}]}},
        },
    }));
    let uid = d["metadata"]["uid"].as_str().unwrap().to_owned();
    for (revision, hash) in [("1", "aaa"), ("2", "bbb")] {
        fake.put(json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": format!("web-{hash}"), "namespace": NS,
                "labels": {"app": "web", "pod-template-hash": hash},
                "annotations": {"deployment.kubernetes.io/revision": revision},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME,
                                     "uid": uid, "controller": true}],
            },
            "spec": {
                "selector": {"matchLabels": {"app": "web", "pod-template-hash": hash}},
                "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": hash}},
                             "spec": {"containers": [{"name": "web", "image": format!("web:{revision}")}]}},
            },
        }));
    }
    set_status(fake, status);
}

/// Writes the Deployment's status, as the deployment controller would.
fn set_status(fake: &KubeFake, status: Value) {
    fake.with(|s| {
        let mut d = s.get("deployments", NS, NAME).unwrap();
        d["status"] = status;
        s.force_status(d);
    });
}

fn deployment(fake: &KubeFake) -> Value {
    fake.get("deployments", NS, NAME).unwrap()
}

fn complete(generation: i64) -> Value {
    json!({"observedGeneration": generation, "replicas": 3, "updatedReplicas": 3,
           "readyReplicas": 3, "availableReplicas": 3})
}

#[tokio::test]
async fn rollout_status_judges_every_state_as_kubectl_rollout_status_does() {
    let states = [
        json!({"observedGeneration": 0}),
        json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 1}),
        json!({"observedGeneration": 1, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}),
        json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2}),
        complete(1),
        json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 1, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet \"web-bbb\" has timed out progressing."}
        ]}),
    ];
    for status in states {
        let fake = KubeFake::start().await;
        seed(&fake, false, status.clone());
        let out = fake
            .kubectl(&[
                "--namespace",
                NS,
                "rollout",
                "status",
                "deployment/web",
                "--watch=false",
            ])
            .await;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let d: k8s_openapi::api::apps::v1::Deployment =
            serde_json::from_value(deployment(&fake)).unwrap();
        use rearguard::action::kube_rollout_status::{Rollout, rollout};
        match rollout(&d) {
            Rollout::Done(text) => {
                assert!(out.status.success(), "{status}: {said}");
                assert_eq!(said.trim(), text, "{status}");
            }
            Rollout::Waiting(text) => {
                assert!(out.status.success(), "{status}: {said}");
                assert_eq!(said.trim(), text, "{status}");
            }
            Rollout::Failed(text) => {
                assert!(!out.status.success(), "{status}: {said}");
                assert!(said.contains(&text), "{status}: {said} vs {text}");
            }
        }
    }
}

#[tokio::test]
async fn rollout_status_watches_the_deployment_until_the_rollout_completes() {
    let fake = KubeFake::start().await;
    seed(
        &fake,
        false,
        json!({"observedGeneration": 1, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}),
    );
    let spec = ActionSpec::KubeRolloutStatus(target(&fake));
    let waiting = tokio::spawn(async move { step(spec, &ctx(), Duration::from_secs(20)).await });
    // Once the step watches the Deployment, the controller finishes the rollout.
    poll_until(Duration::from_secs(10), || {
        fake.requests()
            .iter()
            .any(|r| r.query.contains("watch=true") && r.query.contains("metadata.name%3Dweb"))
    })
    .await
    .expect("the step watches the deployment");
    assert!(!waiting.is_finished(), "the rollout is not complete yet");
    set_status(&fake, complete(1));
    let out = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the step sees the change")
        .unwrap();
    assert!(out.ok, "{out:?}");
    assert_eq!(out.output, "deployment \"web\" successfully rolled out");
    // Watched, not polled: one read of the Deployment.
    let path = "/apis/apps/v1/namespaces/shop/deployments/web";
    assert_eq!(fake.requests_to(&Method::GET, path).len(), 1);
}

#[tokio::test]
async fn rollout_status_fails_at_its_timeout_with_the_last_status_and_at_once_past_the_deadline() {
    let fake = KubeFake::start().await;
    seed(
        &fake,
        false,
        json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 1}),
    );
    let out = step(
        ActionSpec::KubeRolloutStatus(target(&fake)),
        &ctx(),
        Duration::from_secs(1),
    )
    .await;
    assert!(!out.ok);
    assert_eq!(
        out.error.as_deref(),
        Some(
            "timed out after 1s; last status: Waiting for deployment \"web\" rollout to finish: 1 of 3 updated replicas are available..."
        )
    );
    set_status(
        &fake,
        json!({"observedGeneration": 1, "conditions": [
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
        ]}),
    );
    let out = step(
        ActionSpec::KubeRolloutStatus(target(&fake)),
        &ctx(),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        out.error.as_deref(),
        Some("deployment \"web\" exceeded its progress deadline")
    );
    assert!(out.duration < Duration::from_secs(10), "{out:?}");
}

/// The Deployment without what differs between two servers by nature (see
/// kube_rollout.rs) and the restart time, which is each client's clock.
fn comparable(mut d: Value) -> Value {
    let meta = d["metadata"].as_object_mut().unwrap();
    for field in [
        "resourceVersion",
        "uid",
        "creationTimestamp",
        "managedFields",
    ] {
        meta.remove(field);
    }
    // rearguard's own mark of the incident it restarted for (kube_restart.rs).
    if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove("rearguard.io/restarted-for");
        if a.is_empty() {
            meta.remove("annotations");
        }
    }
    if let Some(a) = d["spec"]["template"]["metadata"]["annotations"].as_object_mut()
        && a.contains_key("kubectl.kubernetes.io/restartedAt")
    {
        a.insert("kubectl.kubernetes.io/restartedAt".into(), json!("<time>"));
    }
    d
}

#[tokio::test]
async fn pause_resume_and_restart_leave_what_kubectl_leaves() {
    let kubectl = KubeFake::start().await;
    let ours = KubeFake::start().await;
    seed(&kubectl, false, complete(1));
    seed(&ours, false, complete(1));
    for (command, spec) in [
        ("pause", ActionSpec::KubePause(target(&ours))),
        ("resume", ActionSpec::KubeResume(target(&ours))),
        ("restart", ActionSpec::KubeRestart(target(&ours))),
    ] {
        kubectl
            .kubectl_ok(&["--namespace", NS, "rollout", command, "deployment/web"])
            .await;
        let out = step(spec, &ctx(), Duration::from_secs(10)).await;
        assert!(out.ok, "{command}: {out:?}");
        assert_eq!(
            comparable(deployment(&ours)),
            comparable(deployment(&kubectl)),
            "after {command}"
        );
    }
    let d = deployment(&ours);
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
    assert_eq!(d["metadata"]["generation"], 4);
    assert_eq!(
        d["metadata"]["annotations"]["rearguard.io/restarted-for"],
        "inc-9"
    );
    // Retried for the same incident (its answer was lost): no second restart.
    let mut retry = ctx();
    retry.attempt = 2;
    let out = step(
        ActionSpec::KubeRestart(target(&ours)),
        &retry,
        Duration::from_secs(10),
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert!(out.output.contains("already restarted"), "{out:?}");
    assert_eq!(deployment(&ours)["metadata"]["generation"], 4);
    let path = "/apis/apps/v1/namespaces/shop/deployments/web";
    let patches = ours.requests_to(&Method::PATCH, path).len();
    // A first attempt (the plan run again on the same incident) restarts.
    let out = step(
        ActionSpec::KubeRestart(target(&ours)),
        &ctx(),
        Duration::from_secs(10),
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert!(out.output.contains("restarted at"), "{out:?}");
    assert_eq!(ours.requests_to(&Method::PATCH, path).len(), patches + 1);
    // Another incident restarts it again.
    let mut other = ctx();
    other.incident = "inc-10".to_owned();
    let out = step(
        ActionSpec::KubeRestart(target(&ours)),
        &other,
        Duration::from_secs(10),
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert!(out.output.contains("restarted at"), "{out:?}");
    assert_eq!(
        deployment(&ours)["metadata"]["annotations"]["rearguard.io/restarted-for"],
        "inc-10"
    );
}

#[tokio::test]
async fn pausing_a_paused_deployment_changes_nothing_and_a_paused_one_is_not_restarted() {
    let fake = KubeFake::start().await;
    seed(&fake, true, complete(1));
    let out = step(
        ActionSpec::KubePause(target(&fake)),
        &ctx(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(out.output, "deployment shop/web already paused");
    let out = step(
        ActionSpec::KubeRestart(target(&fake)),
        &ctx(),
        Duration::from_secs(10),
    )
    .await;
    assert!(
        out.error.as_deref().unwrap().contains("is paused"),
        "{out:?}"
    );
    let path = "/apis/apps/v1/namespaces/shop/deployments/web";
    assert!(fake.requests_to(&Method::PATCH, path).is_empty());
}

#[tokio::test]
async fn a_plan_that_resumes_first_rolls_a_paused_deployment_back() {
    let fake = KubeFake::start().await;
    seed(&fake, true, complete(1));
    let undo = ActionSpec::KubeRolloutUndo(KubeRolloutUndoSpec {
        access: target(&fake).access,
        namespace: NS.to_owned(),
        deployment: NAME.to_owned(),
        to_revision: ToRevision::Previous,
    });
    let out = step(undo.clone(), &ctx(), Duration::from_secs(10)).await;
    assert!(
        out.error.as_deref().unwrap().contains("is paused"),
        "{out:?}"
    );
    let out = step(
        ActionSpec::KubeResume(target(&fake)),
        &ctx(),
        Duration::from_secs(10),
    )
    .await;
    assert!(out.ok, "{out:?}");
    let out = step(undo, &ctx(), Duration::from_secs(10)).await;
    assert!(out.ok, "{out:?}");
    let d = deployment(&fake);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
}

#[tokio::test]
async fn scaling_records_the_count_and_scaling_back_restores_it_once() {
    let fake = KubeFake::start().await;
    seed(&fake, false, complete(1));
    let scale = |replicas| {
        ActionSpec::KubeScale(KubeScaleSpec {
            target: target(&fake),
            replicas,
        })
    };
    let out = step(scale(Replicas::Recorded), &ctx(), Duration::from_secs(10)).await;
    assert!(
        out.error
            .as_deref()
            .unwrap()
            .contains("has no recorded replica count"),
        "{out:?}"
    );
    let out = step(scale(Replicas::Count(0)), &ctx(), Duration::from_secs(10)).await;
    assert!(out.ok, "{out:?}");
    let d = deployment(&fake);
    assert_eq!(d["spec"]["replicas"], 0);
    assert_eq!(
        d["metadata"]["annotations"]["rearguard.io/recorded-replicas"],
        "3"
    );
    // Run again (its answer was lost) or to another count: the first record stays.
    let out = step(scale(Replicas::Count(1)), &ctx(), Duration::from_secs(10)).await;
    assert!(out.ok, "{out:?}");
    let d = deployment(&fake);
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(
        d["metadata"]["annotations"]["rearguard.io/recorded-replicas"],
        "3"
    );
    let out = step(scale(Replicas::Recorded), &ctx(), Duration::from_secs(10)).await;
    assert!(out.ok, "{out:?}");
    let d = deployment(&fake);
    assert_eq!(d["spec"]["replicas"], 3);
    assert!(
        d["metadata"]["annotations"]
            .get("rearguard.io/recorded-replicas")
            .is_none(),
        "{d}"
    );
    assert_eq!(
        d["metadata"]["annotations"]["rearguard.io/restored-replicas"],
        "3"
    );
    // Restoring again (its answer was lost) finds the Deployment already back, and
    // writes nothing.
    let path = "/apis/apps/v1/namespaces/shop/deployments/web";
    let patches = fake.requests_to(&Method::PATCH, path).len();
    let out = step(scale(Replicas::Recorded), &ctx(), Duration::from_secs(10)).await;
    assert!(out.ok, "{out:?}");
    assert!(out.output.contains("already back"), "{out:?}");
    assert_eq!(fake.requests_to(&Method::PATCH, path).len(), patches);
    // kubectl reads the same count.
    let replicas = fake
        .kubectl_ok(&[
            "--namespace",
            NS,
            "get",
            "deploy/web",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await;
    assert_eq!(replicas, "3");
    // The next scale records afresh and drops the mark of the restore.
    let out = step(scale(Replicas::Count(0)), &ctx(), Duration::from_secs(10)).await;
    assert!(out.ok, "{out:?}");
    let d = deployment(&fake);
    assert_eq!(
        d["metadata"]["annotations"]["rearguard.io/recorded-replicas"],
        "3"
    );
    assert!(
        d["metadata"]["annotations"]
            .get("rearguard.io/restored-replicas")
            .is_none(),
        "{d}"
    );
}

#[tokio::test]
async fn a_revision_marked_bad_on_the_cluster_is_refused_by_a_later_undo() {
    let fake = KubeFake::start().await;
    seed(&fake, false, complete(1));
    let mut c = ctx();
    c.from_revision = Some("1".to_owned());
    let out = step(
        ActionSpec::KubeMarkBad(target(&fake)),
        &c,
        Duration::from_secs(10),
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        out.output,
        "marked revision 1 of deployment shop/web (replicaset web-aaa) bad"
    );
    let rs = fake.get("replicasets", NS, "web-aaa").unwrap();
    assert_eq!(
        rs["metadata"]["annotations"]["rearguard.io/marked-bad"],
        "inc-9"
    );
    let again = step(
        ActionSpec::KubeMarkBad(target(&fake)),
        &c,
        Duration::from_secs(10),
    )
    .await;
    assert!(again.output.contains("already marked bad"), "{again:?}");
    // Without a numeric incident revision nothing is marked: the Deployment's current
    // revision may be a fix rolled forward since.
    let out = step(
        ActionSpec::KubeMarkBad(target(&fake)),
        &ctx(),
        Duration::from_secs(10),
    )
    .await;
    assert!(!out.ok, "{out:?}");
    assert!(
        out.error
            .as_deref()
            .unwrap()
            .contains("not a revision number"),
        "{out:?}"
    );
    let current = fake.list("replicasets", Some(NS));
    assert_eq!(
        current
            .iter()
            .filter(|rs| !rs["metadata"]["annotations"]["rearguard.io/marked-bad"].is_null())
            .count(),
        1,
        "only revision 1 is marked"
    );
    let undo = ActionSpec::KubeRolloutUndo(KubeRolloutUndoSpec {
        access: target(&fake).access,
        namespace: NS.to_owned(),
        deployment: NAME.to_owned(),
        to_revision: ToRevision::Number(1),
    });
    let out = step(undo, &ctx(), Duration::from_secs(10)).await;
    assert!(
        out.error.as_deref().unwrap().contains("marked bad"),
        "{out:?}"
    );
}
