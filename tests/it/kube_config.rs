//! Kubernetes configuration against the fake API server: snapshots of a Deployment's
//! ConfigMaps and Secrets (deterministic, idempotent, pruned), `kube_restore_config`,
//! `kube_delete_pods`, `kube_rollout_status` of a Deployment scaled to zero (no pod
//! left), the `kubernetes-config` and `kubernetes-emergency` recipes, and the full
//! pod-OOM incident through the daemon: a bad rollout whose ConfigMap changed
//! too, OOM kills, the rule, mark bad, undo, restore, rollout, verification.

use std::sync::Arc;
use std::time::Duration;

use rearguard::action::kube_snapshot;
use rearguard::action::{Action, ActionContext, ActionOutput};
use rearguard::config::{KubeDeploymentRef, Step};
use rearguard::daemon::Event;
use rearguard::engine::{Effect, Outcome};
use rearguard::kube::{Access, AccessSource, Handle};
use serde_json::{Value, json};

use crate::kube_fake::KubeFake;
use crate::support;

const NS: &str = "shop";
const NAME: &str = "web";
/// The Secret's password in every revision; it must never appear in an output.
const GOOD_PASSWORD: &str = "s3cret-good";
const BAD_PASSWORD: &str = "s3cret-bad";

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

fn ctx(from: &str, to: &str) -> ActionContext {
    ActionContext {
        incident: "inc-1".to_owned(),
        target: NAME.to_owned(),
        rule: "memory-leak".to_owned(),
        from_revision: Some(from.to_owned()),
        to_revision: Some(to.to_owned()),
        bad_revisions: Vec::new(),
        attempt: 1,
    }
}

/// The pod template of revision `n`: image `web:n`, the ConfigMap `web-config` through
/// `envFrom`, the Secret `web-secret` as a volume, and an optional ConfigMap that does
/// not exist.
fn template(n: u32, hash: Option<&str>) -> Value {
    let mut labels = json!({"app": "web"});
    if let Some(h) = hash {
        labels["pod-template-hash"] = json!(h);
    }
    json!({
        "metadata": {"labels": labels},
        "spec": {
            "containers": [{
                "name": "web", "image": format!("web:{n}"),
                "envFrom": [{"configMapRef": {"name": "web-config"}}],
                "env": [{"name": "FLAGS", "valueFrom": {"configMapKeyRef":
                    {"name": "web-flags", "key": "flags", "optional": true}}}],
            }],
            "volumes": [{"name": "secret", "secret": {"secretName": "web-secret"}}],
        },
    })
}

fn config_map(mode: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "web-config", "namespace": NS},
           "data": {"MODE": mode, "HEAP": if mode == "good" { "256m" } else { "4g" }}})
}

fn secret(password: &str) -> Value {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(password);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": "web-secret", "namespace": NS},
           "data": {"password": encoded}})
}

/// The Secret's password as stored in the fake.
fn password(fake: &KubeFake, name: &str) -> String {
    use base64::Engine as _;
    let s = fake.get("secrets", NS, name).expect("the secret exists");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s["data"]["password"].as_str().unwrap())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

fn mode(fake: &KubeFake, name: &str) -> Value {
    fake.get("configmaps", NS, name)
        .expect("the configmap exists")["data"]["MODE"]
        .clone()
}

/// The Deployment at revision 1 with its ReplicaSet, its ConfigMap and Secret, and
/// three running pods; the rollout is complete.
fn seed(fake: &KubeFake) {
    fake.put(config_map("good"));
    fake.put(secret(GOOD_PASSWORD));
    fake.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NS,
                     "annotations": {"deployment.kubernetes.io/revision": "1"}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": template(1, None)},
    }));
    add_replica_set(fake, 1);
    for p in ["a", "b", "c"] {
        set_pod(fake, p, 0, false);
    }
    complete_rollout(fake);
}

/// What the deployment controller does for revision `n`: a ReplicaSet with its template.
fn add_replica_set(fake: &KubeFake, n: u32) {
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
                 "template": template(n, Some(&hash))},
    }));
}

/// A deploy of revision `n`, as `kubectl apply` and the deployment controller do it.
fn deploy(fake: &KubeFake, n: u32) {
    let mut d = fake.get("deployments", NS, NAME).unwrap();
    d["spec"]["template"] = template(n, None);
    fake.put(d);
    add_replica_set(fake, n);
    let mut d = fake.get("deployments", NS, NAME).unwrap();
    d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!(n.to_string());
    fake.put(d);
    complete_rollout(fake);
}

/// The deployment controller's status for the Deployment's current generation.
fn complete_rollout(fake: &KubeFake) {
    fake.with(|s| {
        let mut d = s.get("deployments", NS, NAME).unwrap();
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
        if d["status"]["observedGeneration"].as_i64() == Some(generation) {
            return;
        }
        d["status"] = json!({"observedGeneration": generation, "replicas": 3,
            "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3});
        s.force_status(d);
    });
}

/// A pod of the app as the kubelet reports it; `oom` sets its last termination to an
/// OOM kill.
fn set_pod(fake: &KubeFake, name: &str, restarts: i32, oom: bool) {
    let mut status = json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "web", "image": "web:1", "imageID": "", "ready": true,
                               "restartCount": restarts, "state": {"running": {}}}],
    });
    if oom {
        status["containerStatuses"][0]["lastState"] =
            json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
    }
    let p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:1"}]},
        "status": status,
    });
    fake.with(|s| {
        if s.get("pods", NS, name).is_none() {
            s.force(p.clone());
        }
        s.force_status(p)
    });
}

async fn run(spec: rearguard::config::ActionSpec, ctx: &ActionContext) -> ActionOutput {
    Action::new(&spec, &rearguard::http::client())
        .run(ctx, Duration::from_secs(10))
        .await
}

fn snapshot_names(fake: &KubeFake, plural: &str) -> Vec<String> {
    let mut names: Vec<String> = fake
        .list(plural, Some(NS))
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "rearguard")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_revisions_configmaps_and_secrets_are_snapshotted_once_and_old_revisions_pruned() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let t = target(&fake);
    let handle = Handle::new(&t.access);
    let out = kube_snapshot::take(&t, &handle, "1", 2).await.unwrap();
    assert!(out.contains("2 objects created"), "{out}");
    assert!(!out.contains(GOOD_PASSWORD), "{out}");

    let cm = fake.get("configmaps", NS, "web-r1-web-config").unwrap();
    assert_eq!(cm["data"], config_map("good")["data"]);
    let labels = &cm["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "rearguard");
    assert_eq!(labels["rearguard.io/snapshot-of"], NAME);
    assert_eq!(labels["rearguard.io/revision"], "1");
    assert_eq!(
        cm["metadata"]["annotations"]["rearguard.io/original-name"],
        "web-config"
    );
    // No hash covering Secret data is written where the ConfigMaps' readers see it.
    let annotations = cm["metadata"]["annotations"].as_object().unwrap();
    let secret = fake.get("secrets", NS, "web-r1-web-secret").unwrap();
    let secret_hash = secret["metadata"]["annotations"]["rearguard.io/content-hash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !annotations.contains_key("rearguard.io/config-hash")
            && annotations.values().all(|v| v != secret_hash.as_str()),
        "{annotations:?}"
    );
    let s = fake.get("secrets", NS, "web-r1-web-secret").unwrap();
    assert_eq!(s["type"], "Opaque");
    assert_eq!(password(&fake, "web-r1-web-secret"), GOOD_PASSWORD);
    // The optional ConfigMap that does not exist is no error and no object.
    assert!(fake.get("configmaps", NS, "web-r1-web-flags").is_none());

    // A second replica, or a restart: the same names, nothing created twice.
    let again = kube_snapshot::take(&t, &handle, "1", 2).await.unwrap();
    assert!(
        again.contains("0 objects created, 2 already there"),
        "{again}"
    );

    // A snapshot that someone changed is not overwritten, and says so.
    let mut tampered = fake.get("configmaps", NS, "web-r1-web-config").unwrap();
    tampered["data"]["MODE"] = json!("edited");
    fake.put(tampered);
    let err = kube_snapshot::take(&t, &handle, "1", 2).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("already exists with other content"),
        "{err}"
    );
    assert_eq!(mode(&fake, "web-r1-web-config"), "edited");

    // A revision the Deployment is no longer at is refused.
    deploy(&fake, 2);
    let err = kube_snapshot::take(&t, &handle, "1", 2).await.unwrap_err();
    assert!(err.to_string().contains("is at revision 2"), "{err}");

    // Only the newest two revisions' snapshots are kept.
    kube_snapshot::take(&t, &handle, "2", 2).await.unwrap();
    deploy(&fake, 3);
    let out = kube_snapshot::take(&t, &handle, "3", 2).await.unwrap();
    assert!(out.contains("2 of older revisions deleted"), "{out}");
    assert_eq!(
        snapshot_names(&fake, "configmaps"),
        ["web-r2-web-config", "web-r3-web-config"]
    );
    assert_eq!(
        snapshot_names(&fake, "secrets"),
        ["web-r2-web-secret", "web-r3-web-secret"]
    );
    // The originals are never touched by snapshots.
    assert_eq!(mode(&fake, "web-config"), "good");
}

#[tokio::test]
async fn a_revision_whose_rollout_is_not_complete_is_not_snapshotted_yet() {
    let fake = KubeFake::start().await;
    seed(&fake);
    // Revision 2's ReplicaSet exists, but its pods are not all updated and available:
    // old pods may still be what keeps the signals healthy.
    let mut d = fake.get("deployments", NS, NAME).unwrap();
    d["spec"]["template"] = template(2, None);
    fake.put(d);
    add_replica_set(&fake, 2);
    fake.with(|s| {
        let mut d = s.get("deployments", NS, NAME).unwrap();
        let generation = d["metadata"]["generation"].clone();
        d["status"] = json!({"observedGeneration": generation, "replicas": 4,
            "updatedReplicas": 1, "readyReplicas": 3, "availableReplicas": 3});
        s.force_status(d);
    });
    let t = target(&fake);
    let err = kube_snapshot::take(&t, &Handle::new(&t.access), "2", 3)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not complete"), "{err}");
    assert!(
        err.is_retryable(),
        "a rollout in progress is waited for: {err}"
    );
    assert!(snapshot_names(&fake, "configmaps").is_empty());
    // Once the rollout completes, the snapshot is taken.
    fake.with(|s| {
        let mut d = s.get("deployments", NS, NAME).unwrap();
        d["status"]["replicas"] = json!(3);
        d["status"]["updatedReplicas"] = json!(3);
        s.force_status(d);
    });
    kube_snapshot::take(&t, &Handle::new(&t.access), "2", 3)
        .await
        .unwrap();
    assert_eq!(snapshot_names(&fake, "configmaps"), ["web-r2-web-config"]);
}

#[tokio::test]
async fn a_required_configmap_that_is_missing_leaves_no_partial_snapshot() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let mut d = fake.get("deployments", NS, NAME).unwrap();
    d["spec"]["template"]["spec"]["containers"][0]["envFrom"] =
        json!([{"configMapRef": {"name": "web-config"}}, {"configMapRef": {"name": "gone"}}]);
    fake.put(d);
    let mut rs = fake.get("replicasets", NS, "web-h1").unwrap();
    rs["spec"]["template"]["spec"]["containers"][0]["envFrom"] =
        json!([{"configMapRef": {"name": "web-config"}}, {"configMapRef": {"name": "gone"}}]);
    fake.put(rs);
    complete_rollout(&fake);
    let t = target(&fake);
    let err = kube_snapshot::take(&t, &Handle::new(&t.access), "1", 3)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("configmap shop/gone that revision 1"),
        "{err}"
    );
    assert!(snapshot_names(&fake, "configmaps").is_empty());
    assert!(snapshot_names(&fake, "secrets").is_empty());
}

#[tokio::test]
async fn restore_config_puts_the_known_good_data_back_once_and_never_shows_secrets() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let t = target(&fake);
    kube_snapshot::take(&t, &Handle::new(&t.access), "1", 3)
        .await
        .unwrap();
    fake.put(config_map("bad"));
    fake.put(secret(BAD_PASSWORD));
    let spec = rearguard::config::ActionSpec::KubeRestoreConfig(
        rearguard::config::KubeRestoreConfigSpec {
            target: t.clone(),
            revision: None,
        },
    );
    let before = fake.get("configmaps", NS, "web-config").unwrap();
    let out = run(spec.clone(), &ctx("2", "1")).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(mode(&fake, "web-config"), "good");
    assert_eq!(password(&fake, "web-secret"), GOOD_PASSWORD);
    let text = format!("{out:?}");
    assert!(
        !text.contains(GOOD_PASSWORD) && !text.contains(BAD_PASSWORD),
        "{text}"
    );
    // The original keeps its identity: an update of the object read, not a new one.
    let after = fake.get("configmaps", NS, "web-config").unwrap();
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    let puts = fake.requests_to(
        &axum::http::Method::PUT,
        "/api/v1/namespaces/shop/configmaps/web-config",
    );
    assert_eq!(puts.len(), 1);
    let sent: Value = serde_json::from_str(&puts[0].body).unwrap();
    assert_eq!(
        sent["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "the update is conditional on the version read"
    );

    // Again: nothing to do, nothing written.
    let out = run(spec.clone(), &ctx("2", "1")).await;
    assert!(out.ok, "{out:?}");
    assert!(
        out.output.contains("already as in the snapshot"),
        "{}",
        out.output
    );
    let puts = fake.requests_to(
        &axum::http::Method::PUT,
        "/api/v1/namespaces/shop/configmaps/web-config",
    );
    assert_eq!(puts.len(), 1, "no second write");
}

#[tokio::test]
async fn restore_config_refuses_a_snapshot_with_an_object_missing_and_writes_nothing() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let t = target(&fake);
    let handle = Handle::new(&t.access);
    kube_snapshot::take(&t, &handle, "1", 3).await.unwrap();
    let cm = fake.get("configmaps", NS, "web-r1-web-config").unwrap();
    assert_eq!(cm["metadata"]["annotations"]["rearguard.io/objects"], "2");
    // What a take that failed after its first object leaves.
    assert!(fake.with(|s| s.remove("secrets", NS, "web-r1-web-secret")));
    fake.put(config_map("bad"));
    fake.put(secret(BAD_PASSWORD));
    let spec = rearguard::config::ActionSpec::KubeRestoreConfig(
        rearguard::config::KubeRestoreConfigSpec {
            target: t.clone(),
            revision: None,
        },
    );
    let before = fake.requests().len();
    let out = run(spec.clone(), &ctx("2", "1")).await;
    assert!(!out.ok, "{out:?}");
    let error = out.error.unwrap();
    assert!(
        error.contains(
            "snapshot of revision 1 of deployment shop/web is incomplete: 1 of its 2 objects"
        ),
        "{error}"
    );
    let writes: Vec<_> = fake.requests()[before..]
        .iter()
        .filter(|r| r.method != axum::http::Method::GET)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "nothing is written: {writes:?}");
    assert_eq!(mode(&fake, "web-config"), "bad");
    assert_eq!(password(&fake, "web-secret"), BAD_PASSWORD);

    // Taking the snapshot again completes the set, and then it is restored. The
    // originals hold the bad data now, so put back what revision 1 ran with first.
    fake.put(config_map("good"));
    fake.put(secret(GOOD_PASSWORD));
    let out = kube_snapshot::take(&t, &handle, "1", 3).await.unwrap();
    assert!(out.contains("1 objects created, 1 already there"), "{out}");
    fake.put(config_map("bad"));
    fake.put(secret(BAD_PASSWORD));
    let out = run(spec, &ctx("2", "1")).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(mode(&fake, "web-config"), "good");
    assert_eq!(password(&fake, "web-secret"), GOOD_PASSWORD);
}

#[tokio::test]
async fn a_snapshot_without_its_set_size_is_refused_until_taken_again_which_annotates_it() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let t = target(&fake);
    let handle = Handle::new(&t.access);
    kube_snapshot::take(&t, &handle, "1", 3).await.unwrap();
    // As a rearguard that did not write the set's size left them.
    for (plural, name) in [
        ("configmaps", "web-r1-web-config"),
        ("secrets", "web-r1-web-secret"),
    ] {
        let mut o = fake.get(plural, NS, name).unwrap();
        let a = o["metadata"]["annotations"].as_object_mut().unwrap();
        a.remove("rearguard.io/objects");
        a.remove("rearguard.io/snapshot-of");
        fake.put(o);
    }
    fake.put(config_map("bad"));
    let spec = rearguard::config::ActionSpec::KubeRestoreConfig(
        rearguard::config::KubeRestoreConfigSpec {
            target: t.clone(),
            revision: None,
        },
    );
    let error = run(spec.clone(), &ctx("2", "1")).await.error.unwrap();
    assert!(
        error.contains("cannot be checked for completeness"),
        "{error}"
    );
    assert_eq!(mode(&fake, "web-config"), "bad");

    // Taken again (a restart bakes the current revision again): annotated in place.
    fake.put(config_map("good"));
    let out = kube_snapshot::take(&t, &handle, "1", 3).await.unwrap();
    assert!(out.contains("0 objects created, 2 already there"), "{out}");
    let cm = fake.get("configmaps", NS, "web-r1-web-config").unwrap();
    assert_eq!(cm["metadata"]["annotations"]["rearguard.io/objects"], "2");
    assert_eq!(password(&fake, "web-r1-web-secret"), GOOD_PASSWORD);
    // A third take finds nothing to annotate and writes nothing.
    let puts = |f: &KubeFake| {
        f.requests()
            .iter()
            .filter(|r| r.method == axum::http::Method::PUT)
            .count()
    };
    let before = puts(&fake);
    kube_snapshot::take(&t, &handle, "1", 3).await.unwrap();
    assert_eq!(puts(&fake), before);
    fake.put(config_map("bad"));
    let out = run(spec, &ctx("2", "1")).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(mode(&fake, "web-config"), "good");
}

#[tokio::test]
async fn snapshots_are_selected_by_the_full_deployment_name_not_by_the_label_alone() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let t = target(&fake);
    kube_snapshot::take(&t, &Handle::new(&t.access), "1", 3)
        .await
        .unwrap();
    let cm = fake.get("configmaps", NS, "web-r1-web-config").unwrap();
    assert_eq!(
        cm["metadata"]["annotations"]["rearguard.io/snapshot-of"],
        NAME
    );
    // Another Deployment's snapshot whose (shortened) label happens to be the same.
    let mut foreign = cm.clone();
    foreign["metadata"] = json!({
        "name": "other-r1-web-config", "namespace": NS,
        "labels": cm["metadata"]["labels"].clone(),
        "annotations": {"rearguard.io/snapshot-of": "web-but-another-deployment",
                        "rearguard.io/original-name": "web-config",
                        "rearguard.io/objects": "1"},
    });
    foreign["data"]["MODE"] = json!("foreign");
    fake.put(foreign);
    fake.put(config_map("bad"));
    let out = run(
        rearguard::config::ActionSpec::KubeRestoreConfig(
            rearguard::config::KubeRestoreConfigSpec {
                target: t,
                revision: None,
            },
        ),
        &ctx("2", "1"),
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert!(!out.output.contains("other-r1"), "{}", out.output);
    assert_eq!(mode(&fake, "web-config"), "good");
}

#[tokio::test]
async fn restore_config_without_a_snapshot_of_the_revision_fails_and_names_those_there_are() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let t = target(&fake);
    let spec = rearguard::config::ActionSpec::KubeRestoreConfig(
        rearguard::config::KubeRestoreConfigSpec {
            target: t.clone(),
            revision: None,
        },
    );
    let out = run(spec.clone(), &ctx("2", "1")).await;
    assert!(!out.ok);
    let error = out.error.unwrap();
    assert!(
        error.contains("no snapshot of revision 1 of deployment shop/web")
            && error.contains("revisions with snapshots: none"),
        "{error}"
    );
    assert!(!error.contains("[retryable]"), "{error}");
    kube_snapshot::take(&t, &Handle::new(&t.access), "1", 3)
        .await
        .unwrap();
    let fixed = rearguard::config::ActionSpec::KubeRestoreConfig(
        rearguard::config::KubeRestoreConfigSpec {
            target: t,
            revision: Some(7),
        },
    );
    let error = run(fixed, &ctx("2", "1")).await.error.unwrap();
    assert!(
        error.contains("no snapshot of revision 7")
            && error.contains("revisions with snapshots: 1"),
        "{error}"
    );
    // An incident without a revision number restores nothing rather than guessing.
    let mut unknown = ctx("2", "1");
    unknown.to_revision = Some("v1".to_owned());
    let error = run(spec, &unknown).await.error.unwrap();
    assert!(error.contains("not a revision number"), "{error}");
    assert_eq!(mode(&fake, "web-config"), "good");
}

/// The Deployment scaled to zero with its status caught up (status.replicas 0), pods
/// `a` and `b` gone and `c` still terminating, and a pod of another app running.
fn scaled_to_zero_with_a_terminating_pod(fake: &KubeFake) {
    let mut d = fake.get("deployments", NS, NAME).unwrap();
    d["spec"]["replicas"] = json!(0);
    fake.put(d);
    fake.with(|s| {
        let mut d = s.get("deployments", NS, NAME).unwrap();
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
        d["status"] = json!({"observedGeneration": generation, "replicas": 0,
            "updatedReplicas": 0, "readyReplicas": 0, "availableReplicas": 0});
        s.force_status(d);
        assert!(s.remove("pods", NS, "a") && s.remove("pods", NS, "b"));
        let mut c = s.get("pods", NS, "c").unwrap();
        c["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        s.force(c);
    });
    fake.put(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "other", "namespace": NS, "labels": {"app": "db"}},
        "spec": {"containers": [{"name": "db", "image": "db:1"}]},
    }));
}

#[tokio::test]
async fn rollout_status_of_a_deployment_scaled_to_zero_waits_until_its_terminating_pods_are_gone() {
    let fake = KubeFake::start().await;
    seed(&fake);
    scaled_to_zero_with_a_terminating_pod(&fake);
    let spec = rearguard::config::ActionSpec::KubeRolloutStatus(target(&fake));
    let action = Action::new(&spec, &rearguard::http::client());
    let step =
        tokio::spawn(async move { action.run(&ctx("2", "1"), Duration::from_secs(30)).await });
    // The step watches the pods once it has seen pod c still there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !fake
        .requests_to(&axum::http::Method::GET, "/api/v1/namespaces/shop/pods")
        .iter()
        .any(|r| r.query.contains("watch=true"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the step never watched the pods"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!step.is_finished(), "done while pod c is still terminating");
    assert!(fake.with(|s| s.remove("pods", NS, "c")));
    let out = tokio::time::timeout(Duration::from_secs(10), step)
        .await
        .expect("the step ends once the pod is gone")
        .unwrap();
    assert!(out.ok, "{out:?}");
    assert!(
        out.output.contains("no pod of it is left"),
        "{}",
        out.output
    );
    // The other app's pod is neither waited for nor touched.
    assert!(fake.get("pods", NS, "other").is_some());
}

#[tokio::test]
async fn rollout_status_times_out_naming_the_pods_of_a_deployment_scaled_to_zero_that_remain() {
    let fake = KubeFake::start().await;
    seed(&fake);
    scaled_to_zero_with_a_terminating_pod(&fake);
    let out = Action::new(
        &rearguard::config::ActionSpec::KubeRolloutStatus(target(&fake)),
        &rearguard::http::client(),
    )
    .run(&ctx("2", "1"), Duration::from_millis(1500))
    .await;
    assert!(!out.ok, "{out:?}");
    let error = out.error.unwrap();
    assert!(
        error.contains("timed out after")
            && error.contains("scaled to zero but 1 of its pods are left: c (terminating)"),
        "{error}"
    );
    assert!(!error.contains("other"), "{error}");
}

#[tokio::test]
async fn delete_pods_deletes_the_deployments_pods_and_no_others() {
    let fake = KubeFake::start().await;
    seed(&fake);
    fake.put(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "other", "namespace": NS, "labels": {"app": "db"}},
        "spec": {"containers": [{"name": "db", "image": "db:1"}]},
    }));
    let out = run(
        rearguard::config::ActionSpec::KubeDeletePods(target(&fake)),
        &ctx("2", "1"),
    )
    .await;
    assert!(out.ok, "{out:?}");
    assert!(out.output.starts_with("deleted 3 pods"), "{}", out.output);
    for p in ["a", "b", "c"] {
        assert!(fake.get("pods", NS, p).is_none(), "pod {p} is deleted");
    }
    assert!(
        fake.get("pods", NS, "other").is_some(),
        "another app's pod stays"
    );
    // The pods come back; a retry (the first answer was lost) leaves them alone, a
    // first attempt (the plan run again) deletes them.
    fake.put(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "a2", "namespace": NS, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "web:1"}]},
    }));
    let mut retry = ctx("2", "1");
    retry.attempt = 2;
    let spec = rearguard::config::ActionSpec::KubeDeletePods(target(&fake));
    let out = run(spec.clone(), &retry).await;
    assert!(out.ok, "{out:?}");
    assert!(out.output.starts_with("deleted 0 pods"), "{}", out.output);
    assert!(fake.get("pods", NS, "a2").is_some(), "the new pod stays");
    let out = run(spec, &ctx("2", "1")).await;
    assert!(out.output.starts_with("deleted 1 pods"), "{}", out.output);
    assert!(fake.get("pods", NS, "a2").is_none());
}

/// The plan steps of `recipe` with the given `with`, validated as `check` does.
fn recipe_steps(fake: &KubeFake, dir: &std::path::Path, recipe: &str) -> Vec<Step> {
    let text = format!(
        r#"
[daemon]
state_dir = "{}"

[kubernetes]
kubeconfig = "{}"

[[target]]
name = "web"
plan = "p"
change = {{ type = "kube_deployment", namespace = "shop", deployment = "web" }}

[[plan]]
name = "p"

[[plan.step]]
type = "recipe"
recipe = "{recipe}"
name = "r"
with = {{ namespace = "shop", deployment = "web" }}
"#,
        dir.display(),
        fake.kubeconfig().display()
    );
    support::config(&text).plans[0].steps.clone()
}

#[tokio::test]
async fn the_kubernetes_config_recipe_rolls_back_restores_the_configuration_and_restarts() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let t = target(&fake);
    kube_snapshot::take(&t, &Handle::new(&t.access), "1", 3)
        .await
        .unwrap();
    fake.put(config_map("bad"));
    fake.put(secret(BAD_PASSWORD));
    deploy(&fake, 2);
    let dir = support::temp_dir();
    let steps = recipe_steps(&fake, dir.path(), "kubernetes-config");
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "r: mark the bad revision",
            "r: roll the deployment back",
            "r: restore the configuration",
            "r: restart the deployment",
            "r: wait for the rollout",
        ]
    );
    let ctx = ctx("2", "1");
    let client = rearguard::http::client();
    for step in &steps[..4] {
        let out = Action::new(&step.action, &client)
            .run(&ctx, step.timeout)
            .await;
        assert!(out.ok, "{}: {out:?}", step.name);
    }
    let d = fake.get("deployments", NS, NAME).unwrap();
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "web:1");
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "restarted so that every pod reads the restored configuration"
    );
    assert_eq!(mode(&fake, "web-config"), "good");
    assert_eq!(password(&fake, "web-secret"), GOOD_PASSWORD);
    let bad = fake.get("replicasets", NS, "web-h2").unwrap();
    assert_eq!(
        bad["metadata"]["annotations"]["rearguard.io/marked-bad"],
        "inc-1"
    );
    complete_rollout(&fake);
    let out = Action::new(&steps[4].action, &client)
        .run(&ctx, steps[4].timeout)
        .await;
    assert!(out.ok, "{out:?}");
}

#[tokio::test]
async fn the_kubernetes_emergency_recipe_pauses_restores_and_deletes_the_pods() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let t = target(&fake);
    kube_snapshot::take(&t, &Handle::new(&t.access), "1", 3)
        .await
        .unwrap();
    fake.put(config_map("bad"));
    let dir = support::temp_dir();
    let steps = recipe_steps(&fake, dir.path(), "kubernetes-emergency");
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "r: pause the deployment",
            "r: restore the configuration",
            "r: delete the pods",
        ]
    );
    let ctx = ctx("1", "1");
    let client = rearguard::http::client();
    for step in &steps {
        let out = Action::new(&step.action, &client)
            .run(&ctx, step.timeout)
            .await;
        assert!(out.ok, "{}: {out:?}", step.name);
    }
    let d = fake.get("deployments", NS, NAME).unwrap();
    assert_eq!(d["spec"]["paused"], true, "the deployment stays paused");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
    assert_eq!(mode(&fake, "web-config"), "good");
    assert!(fake.list("pods", Some(NS)).is_empty());
}

#[tokio::test]
async fn the_emergency_recipe_deletes_no_pods_when_there_is_no_snapshot() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let dir = support::temp_dir();
    let steps = recipe_steps(&fake, dir.path(), "kubernetes-emergency");
    let client = rearguard::http::client();
    let ctx = ctx("1", "1");
    let restore = Action::new(&steps[1].action, &client)
        .run(&ctx, steps[1].timeout)
        .await;
    assert!(!restore.ok, "{restore:?}");
    // The plan aborts at the failed restore (on_failure defaults to abort), so the
    // delete step is never ordered; its pods are untouched.
    assert_eq!(steps[1].on_failure, rearguard::config::OnFailure::Abort);
    assert_eq!(fake.list("pods", Some(NS)).len(), 3);
}

/// Issue 4: a bad rollout whose ConfigMap and Secret changed too; its pods are
/// OOM-killed; the daemon sees the kills through the kube_pods watch, the rule fires,
/// and the plan marks the revision bad, undoes the rollout, restores the configuration
/// from the snapshot taken when revision 1 baked, and waits for the rollout; the
/// verification passes.
#[tokio::test]
async fn oom_killed_pods_after_a_bad_rollout_roll_back_the_deployment_and_its_configuration() {
    let fake = Arc::new(KubeFake::start().await);
    seed(&fake);
    // The deployment controller's status, as the test's stand-in for it.
    let controller = {
        let fake = Arc::clone(&fake);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(20));
            loop {
                every.tick().await;
                complete_rollout(&fake);
            }
        })
    };
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
plan = "level2"
blame_window = "5m"
bake = "300ms"
change = {{ type = "kube_deployment", namespace = "shop", deployment = "web" }}

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
within = "2s"

[[plan]]
name = "level2"

[[plan.step]]
type = "kube_mark_bad"
namespace = "shop"
deployment = "web"

[[plan.step]]
type = "kube_rollout_undo"
namespace = "shop"
deployment = "web"
to_revision = "{{to_revision}}"

[[plan.step]]
type = "kube_restore_config"
namespace = "shop"
deployment = "web"

[[plan.step]]
type = "kube_rollout_status"
namespace = "shop"
deployment = "web"
timeout = "20s"

[plan.verify]
window = "3s"
"#,
        state = dir.path().display(),
        kubeconfig = fake.kubeconfig().display(),
    );
    let mut d = crate::running::start(crate::daemon::load(&text));
    d.wait_for("the start", 10, |e| matches!(e, Event::Started))
        .await;
    // Revision 1 bakes, and its configuration is snapshotted on the cluster.
    support::poll_until(Duration::from_secs(15), || {
        fake.get("configmaps", NS, "web-r1-web-config").is_some()
            && fake.get("secrets", NS, "web-r1-web-secret").is_some()
    })
    .await
    .expect("the baked revision's configuration is snapshotted");

    // The bad rollout: a new ConfigMap and Secret content and a new template.
    fake.put(config_map("bad"));
    fake.put(secret(BAD_PASSWORD));
    deploy(&fake, 2);
    d.wait_for(
        "the bad rollout",
        10,
        |e| matches!(e, Event::Effect(_, Effect::ChangeObserved { to, .. }) if to == "2"),
    )
    .await;
    // Its pods are OOM-killed.
    set_pod(&fake, "a", 1, true);
    set_pod(&fake, "b", 1, true);

    let inc = d.closed_incident(30).await;
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "timeline: {:#?}",
        inc.timeline
    );
    assert_eq!(inc.from_revision.as_deref(), Some("2"));
    assert_eq!(inc.to_revision.as_deref(), Some("1"));
    let actions: Vec<&str> = inc.steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "kube_mark_bad",
            "kube_rollout_undo",
            "kube_restore_config",
            "kube_rollout_status"
        ]
    );
    let d1 = fake.get("deployments", NS, NAME).unwrap();
    assert_eq!(
        d1["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
    assert_eq!(mode(&fake, "web-config"), "good");
    assert_eq!(
        fake.get("configmaps", NS, "web-config").unwrap()["data"],
        config_map("good")["data"]
    );
    assert_eq!(password(&fake, "web-secret"), GOOD_PASSWORD);
    let story = format!("{inc:?}");
    assert!(
        !story.contains(GOOD_PASSWORD) && !story.contains(BAD_PASSWORD),
        "no secret in the incident"
    );
    d.stop().await;
    controller.abort();
}

#[tokio::test]
async fn each_change_of_the_configmaps_and_secrets_alone_is_a_configuration_generation() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let mut watcher = rearguard::source::kube_deployment::Watcher::new(&target(&fake));
    assert_eq!(watcher.observe().await, Ok("1".to_owned()));
    let first = watcher.config_hash().expect("a hash").to_owned();
    assert_eq!(
        watcher.observe().await,
        Ok("1".to_owned()),
        "nothing changed"
    );
    assert_eq!(watcher.config_hash(), Some(first.as_str()));
    fake.put(config_map("bad"));
    assert_eq!(
        watcher.observe().await,
        Ok("1+cfg.1".to_owned()),
        "a ConfigMap's data changed"
    );
    fake.put(secret(BAD_PASSWORD));
    assert_eq!(
        watcher.observe().await,
        Ok("1+cfg.2".to_owned()),
        "a Secret's data changed"
    );
    // The optional ConfigMap appearing changes it too.
    fake.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "web-flags", "namespace": NS},
                    "data": {"flags": "x"}}));
    assert_eq!(watcher.observe().await, Ok("1+cfg.3".to_owned()));
    // A restart goes on from the revision the engine remembers: no change.
    let mut restarted = rearguard::source::kube_deployment::Watcher::new(&target(&fake))
        .remembering(Some("1+cfg.3"));
    assert_eq!(restarted.observe().await, Ok("1+cfg.3".to_owned()));
    fake.put(config_map("good"));
    assert_eq!(restarted.observe().await, Ok("1+cfg.4".to_owned()));
    // A new Deployment revision starts again at its own number.
    deploy(&fake, 2);
    assert_eq!(restarted.observe().await, Ok("2".to_owned()));
}

#[tokio::test]
async fn restore_config_creates_an_original_that_was_deleted() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let t = target(&fake);
    kube_snapshot::take(&t, &Handle::new(&t.access), "1", 3)
        .await
        .unwrap();
    fake.kubectl_ok(&["-n", NS, "delete", "configmap", "web-config"])
        .await;
    assert!(fake.get("configmaps", NS, "web-config").is_none());
    let spec = rearguard::config::ActionSpec::KubeRestoreConfig(
        rearguard::config::KubeRestoreConfigSpec {
            target: t,
            revision: Some(1),
        },
    );
    let out = run(spec, &ctx("2", "9")).await;
    assert!(out.ok, "{out:?}");
    assert!(
        out.output.contains("was missing and is created again"),
        "{}",
        out.output
    );
    assert_eq!(mode(&fake, "web-config"), "good");
    let labels = &fake.get("configmaps", NS, "web-config").unwrap()["metadata"]["labels"];
    assert!(
        labels.is_null(),
        "the original carries no snapshot labels: {labels}"
    );
}

#[test]
fn bake_and_the_new_steps_keys_are_checked_with_their_paths() {
    let text = r#"
[[target]]
name = "host"
bake = "1m"

[[target]]
name = "web"
plan = "p"
bake = "0s"
keep_snapshots = 0
change = { type = "kube_deployment", namespace = "shop", deployment = "web" }

[[plan]]
name = "p"

[[plan.step]]
type = "kube_restore_config"
namespace = "shop"
deployment = "web"
to_revision = "latest"

[[plan.step]]
type = "kube_delete_pods"
namespace = "shop"
deployment = "web"
to_revision = 3
"#;
    let errors: Vec<String> = support::config_errors(text);
    for expected in [
        "target[0].bake: only for a target whose change observer is kube_deployment, or that has config_files",
        "target[1].bake: must be greater than zero",
        "target[1].keep_snapshots: must be at least 1",
        "plan[0].step[0].to_revision: expected a revision number >= 1 or \"{to_revision}\"",
        "plan[0].step[1].to_revision: only for types kube_rollout_undo and kube_restore_config",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{expected:?} not in {errors:#?}"
        );
    }
}

/// A daemon watching `web` with a short bake, in `mode`; its plan is never run here.
fn baking_daemon(fake: &KubeFake, dir: &tempfile::TempDir, mode: &str) -> crate::running::Running {
    let text = format!(
        r#"
[daemon]
state_dir = "{state}"
listen = "127.0.0.1:0"
tick = "50ms"
drain_timeout = "5s"
mode = "{mode}"

[kubernetes]
kubeconfig = "{kubeconfig}"

[[target]]
name = "web"
plan = "undo"
bake = "300ms"
change = {{ type = "kube_deployment", namespace = "shop", deployment = "web" }}

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
within = "2s"

[[plan]]
name = "undo"

[[plan.step]]
type = "kube_rollout_undo"
namespace = "shop"
deployment = "web"
"#,
        state = dir.path().display(),
        kubeconfig = fake.kubeconfig().display(),
    );
    crate::running::start(crate::daemon::load(&text))
}

#[tokio::test]
async fn a_snapshot_that_failed_partway_is_taken_again_after_a_backoff_and_completed() {
    let fake = KubeFake::start().await;
    seed(&fake);
    // The Secret's snapshot cannot be created the first time (as when the Role lacks
    // create on secrets until someone fixes it): the ConfigMap's is.
    fake.inject(
        axum::http::Method::POST,
        "/api/v1/namespaces/shop/secrets",
        1,
        crate::kube_fake::Effect::Respond(403),
    );
    let dir = support::temp_dir();
    let d = baking_daemon(&fake, &dir, "enforce");
    // The first try fails after the ConfigMap; the retry, 10 s later, completes the set.
    support::poll_until(Duration::from_secs(40), || {
        fake.get("secrets", NS, "web-r1-web-secret").is_some()
    })
    .await
    .expect("the failed snapshot is taken again");
    let posts = |path: &str| fake.requests_to(&axum::http::Method::POST, path);
    let secrets = posts("/api/v1/namespaces/shop/secrets");
    assert_eq!(
        secrets.iter().map(|r| r.status).collect::<Vec<_>>(),
        [403, 201],
        "one failed try, then one that created it"
    );
    // The ConfigMap created by the first try met 409 with the same content on the second.
    let maps = posts("/api/v1/namespaces/shop/configmaps");
    assert_eq!(
        maps.iter().map(|r| r.status).collect::<Vec<_>>(),
        [201, 409]
    );
    assert_eq!(password(&fake, "web-r1-web-secret"), GOOD_PASSWORD);
    d.stop().await;
}

#[tokio::test]
async fn in_shadow_mode_a_baked_revision_is_not_snapshotted() {
    let fake = KubeFake::start().await;
    seed(&fake);
    let dir = support::temp_dir();
    let mut d = baking_daemon(&fake, &dir, "shadow");
    d.wait_for(
        "the bake",
        10,
        |e| matches!(e, Event::Effect(_, Effect::Baked { revision, .. }) if revision == "1"),
    )
    .await;
    // The snapshot task, when there is one, runs on the tracker that the drain waits
    // for; after the stop nothing more can be written.
    d.stop().await;
    let writes: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.method == axum::http::Method::POST || r.method == axum::http::Method::DELETE)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(writes.is_empty(), "{writes:?}");
    let lists: Vec<String> = fake
        .requests()
        .iter()
        .filter(|r| r.query.contains("rearguard.io%2Fsnapshot-of"))
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    assert!(lists.is_empty(), "no snapshot listed either: {lists:?}");
    assert!(snapshot_names(&fake, "configmaps").is_empty());
}

/// The daemon with the shipped level-2 recipe (`kubernetes-config`) on the OOM rule,
/// baking after 300ms, and the deployment controller's status kept complete by a task.
fn level2_daemon(
    fake: &Arc<KubeFake>,
    dir: &tempfile::TempDir,
) -> (crate::running::Running, tokio::task::JoinHandle<()>) {
    let controller = {
        let fake = Arc::clone(fake);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(20));
            loop {
                every.tick().await;
                complete_rollout(&fake);
            }
        })
    };
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
plan = "level2"
blame_window = "5m"
bake = "300ms"
healthy_for = "0s"
change = {{ type = "kube_deployment", namespace = "shop", deployment = "web" }}

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
within = "2s"

[[plan]]
name = "level2"

[[plan.step]]
type = "recipe"
recipe = "kubernetes-config"
name = "level 2"
with = {{ namespace = "shop", deployment = "web", rollout_timeout = "20s" }}

[plan.verify]
window = "3s"
"#,
        state = dir.path().display(),
        kubeconfig = fake.kubeconfig().display(),
    );
    (
        crate::running::start(crate::daemon::load(&text)),
        controller,
    )
}

/// Waits until revision 1's configuration is snapshotted on the cluster.
async fn baked_revision_1(fake: &KubeFake) {
    support::poll_until(Duration::from_secs(15), || {
        fake.get("configmaps", NS, "web-r1-web-config").is_some()
            && fake.get("secrets", NS, "web-r1-web-secret").is_some()
    })
    .await
    .expect("the baked revision's configuration is snapshotted");
}

/// What the incident's steps printed, in order.
fn step_outputs(inc: &rearguard::engine::Incident) -> Vec<String> {
    inc.timeline
        .iter()
        .filter_map(|e| match &e.kind {
            rearguard::engine::EntryKind::StepFinished { output, .. } => Some(output.clone()),
            _ => None,
        })
        .collect()
}

/// Issue 14: a ConfigMap changed and the Deployment did not. The change is seen as
/// revision `1+cfg.1` and blamed; the level-2 recipe restores the ConfigMap from the
/// snapshot of revision 1 and restarts, and neither marks revision 1 bad nor undoes it.
#[tokio::test]
async fn a_configmap_only_change_is_rolled_back_by_restoring_the_configmap_not_the_deployment() {
    let fake = Arc::new(KubeFake::start().await);
    seed(&fake);
    let dir = support::temp_dir();
    let (mut d, controller) = level2_daemon(&fake, &dir);
    d.wait_for("the start", 10, |e| matches!(e, Event::Started))
        .await;
    baked_revision_1(&fake).await;

    fake.put(config_map("bad"));
    // Nothing touches the Deployment, so its watch (renewed every minute) sees nothing:
    // the observer reads the ConfigMaps and Secrets again every 10 s (CONFIG_RECHECK).
    d.wait_for(
        "the configuration-only change",
        15,
        |e| matches!(e, Event::Effect(_, Effect::ChangeObserved { from, to, .. }) if from == "1" && to == "1+cfg.1"),
    )
    .await;
    set_pod(&fake, "a", 1, true);
    set_pod(&fake, "b", 1, true);

    let inc = d.closed_incident(30).await;
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "timeline: {:#?}",
        inc.timeline
    );
    assert_eq!(inc.from_revision.as_deref(), Some("1+cfg.1"));
    assert_eq!(inc.to_revision.as_deref(), Some("1"));
    let outputs = step_outputs(&inc);
    assert!(outputs[0].contains("nothing marked"), "{outputs:#?}");
    assert!(
        outputs[1].contains("stays at revision 1") && outputs[1].contains("nothing to undo"),
        "{outputs:#?}"
    );
    assert!(
        outputs[2].contains("configmap shop/web-config restored"),
        "{outputs:#?}"
    );
    assert_eq!(mode(&fake, "web-config"), "good");
    let rs = fake.get("replicasets", NS, "web-h1").unwrap();
    assert!(
        rs["metadata"]["annotations"]["rearguard.io/marked-bad"].is_null(),
        "the revision that did not change is not marked bad: {rs}"
    );
    let dep = fake.get("deployments", NS, NAME).unwrap();
    assert_eq!(
        dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    assert!(
        dep["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "restarted so that every pod reads the restored configuration"
    );
    d.stop().await;
    controller.abort();
}

/// Issue 14: a configuration generation bakes under its full revision, and a new
/// Deployment revision after it (with other configuration) is rolled back by the same
/// level-2 recipe to both: the Deployment to revision 1 and the configuration of
/// `1+cfg.1`, from its own snapshot.
#[tokio::test]
async fn a_deployment_and_config_change_after_a_config_generation_restores_both() {
    let fake = Arc::new(KubeFake::start().await);
    seed(&fake);
    let dir = support::temp_dir();
    let (mut d, controller) = level2_daemon(&fake, &dir);
    d.wait_for("the start", 10, |e| matches!(e, Event::Started))
        .await;
    baked_revision_1(&fake).await;
    // A configuration change that is fine: it bakes as 1+cfg.1.
    let mut tuned = config_map("good");
    tuned["data"]["HEAP"] = json!("512m");
    fake.put(tuned.clone());
    let mut dep = fake.get("deployments", NS, NAME).unwrap();
    dep["metadata"]["annotations"]["example.com/touched"] = json!("1");
    fake.put(dep);
    support::poll_until(Duration::from_secs(15), || {
        fake.get("configmaps", NS, "web-r1c1-web-config").is_some()
    })
    .await
    .expect("the configuration generation is snapshotted under its full revision");

    fake.put(config_map("bad"));
    fake.put(secret(BAD_PASSWORD));
    deploy(&fake, 2);
    d.wait_for(
        "the bad rollout",
        10,
        |e| matches!(e, Event::Effect(_, Effect::ChangeObserved { from, to, .. }) if from == "1+cfg.1" && to == "2"),
    )
    .await;
    set_pod(&fake, "a", 1, true);
    set_pod(&fake, "b", 1, true);

    let inc = d.closed_incident(30).await;
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "timeline: {:#?}",
        inc.timeline
    );
    assert_eq!(inc.to_revision.as_deref(), Some("1+cfg.1"));
    let dep = fake.get("deployments", NS, NAME).unwrap();
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
    assert_eq!(
        fake.get("configmaps", NS, "web-config").unwrap()["data"],
        tuned["data"],
        "the configuration of 1+cfg.1, not of 1"
    );
    assert_eq!(password(&fake, "web-secret"), GOOD_PASSWORD);
    let bad = fake.get("replicasets", NS, "web-h2").unwrap();
    assert!(bad["metadata"]["annotations"]["rearguard.io/marked-bad"].is_string());
    d.stop().await;
    controller.abort();
}
