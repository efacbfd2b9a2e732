//! `kube_rollout_undo` against the fake API server, and the oracle: the real `kubectl
//! rollout undo` on one copy of a state, rearguard's step on another, and the resulting
//! Deployments compared.

use std::time::Duration;

use axum::http::Method;
use rearguard::action::{Action, ActionContext, ActionOutput};
use rearguard::config::{ActionSpec, KubeRolloutUndoSpec, ToRevision};
use rearguard::kube::{Access, AccessSource};
use serde_json::{Value, json};

use crate::kube_fake::{Effect, KubeFake};

const NS: &str = "shop";
const NAME: &str = "web";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/shop/deployments/web";

/// One revision of the Deployment in a seeded state.
#[derive(Clone)]
struct Rev {
    /// The revision annotation of its ReplicaSet; `None` leaves it out.
    revision: Option<&'static str>,
    image: &'static str,
    /// Annotations of the pod template.
    template_annotations: Value,
    /// Annotations of the ReplicaSet besides the revision.
    rs_annotations: Value,
    /// Whether the ReplicaSet exists (a revision whose ReplicaSet was deleted has none).
    exists: bool,
}

fn rev(revision: &'static str, image: &'static str) -> Rev {
    Rev {
        revision: Some(revision),
        image,
        template_annotations: json!({}),
        rs_annotations: json!({}),
        exists: true,
    }
}

fn template(r: &Rev, hash: Option<&str>) -> Value {
    let mut labels = json!({"app": "web"});
    if let Some(h) = hash {
        labels["pod-template-hash"] = json!(h);
    }
    let mut t = json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{
            "name": "web",
            "image": r.image,
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "env": [{"name": "MODE", "value": "prod"}],
        }]},
    });
    if r.template_annotations
        .as_object()
        .is_some_and(|a| !a.is_empty())
    {
        t["metadata"]["annotations"] = r.template_annotations.clone();
    }
    t
}

/// Seeds a Deployment running the last of `revs`, with one ReplicaSet per existing
/// revision, plus a ReplicaSet with the same labels that another owner controls (it must
/// be ignored). `annotations` are the Deployment's own besides its revision.
fn seed(fake: &KubeFake, revs: &[Rev], current: &Rev, annotations: Value, paused: bool) {
    let mut deploy_annotations = annotations;
    if let Some(r) = current.revision {
        deploy_annotations["deployment.kubernetes.io/revision"] = json!(r);
    }
    let deployment = fake.put(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NS, "labels": {"app": "web"}, "annotations": deploy_annotations},
        "spec": {
            "replicas": 3,
            "paused": paused,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template(current, None),
        },
    }));
    let uid = deployment["metadata"]["uid"].as_str().unwrap().to_owned();
    for (i, r) in revs.iter().enumerate() {
        if !r.exists {
            continue;
        }
        let hash = format!("{:x}7c9d{i}", i + 10);
        let mut annotations = r.rs_annotations.clone();
        if let Some(v) = r.revision {
            annotations["deployment.kubernetes.io/revision"] = json!(v);
        }
        annotations["deployment.kubernetes.io/desired-replicas"] = json!("3");
        annotations["deployment.kubernetes.io/max-replicas"] = json!("4");
        fake.put(json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": format!("web-{hash}"),
                "namespace": NS,
                "labels": {"app": "web", "pod-template-hash": hash},
                "annotations": annotations,
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "Deployment", "name": NAME, "uid": uid,
                    "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web", "pod-template-hash": hash}},
                "template": template(r, Some(&hash)),
            },
        }));
    }
    // Same labels, a higher revision, but not the Deployment's: kubectl ignores it.
    fake.put(json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": "web-stranger",
            "namespace": NS,
            "labels": {"app": "web", "pod-template-hash": "stranger"},
            "annotations": {"deployment.kubernetes.io/revision": "99"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": "other",
                "uid": "00000000-0000-4000-8000-000000000000", "controller": true,
            }],
        },
        "spec": {
            "selector": {"matchLabels": {"app": "web", "pod-template-hash": "stranger"}},
            "template": template(&rev("99", "stranger:1"), Some("stranger")),
        },
    }));
}

fn spec(fake: &KubeFake, to_revision: ToRevision) -> ActionSpec {
    ActionSpec::KubeRolloutUndo(KubeRolloutUndoSpec {
        access: Access {
            source: AccessSource::Kubeconfig {
                path: fake.kubeconfig(),
                context: None,
            },
            server: None,
        },
        namespace: NS.to_owned(),
        deployment: NAME.to_owned(),
        to_revision,
    })
}

fn ctx() -> ActionContext {
    ActionContext {
        incident: "inc-1".to_owned(),
        target: "web".to_owned(),
        rule: "errors".to_owned(),
        from_revision: None,
        to_revision: None,
        bad_revisions: Vec::new(),
        attempt: 1,
    }
}

async fn undo(fake: &KubeFake, to_revision: ToRevision, ctx: &ActionContext) -> ActionOutput {
    Action::new(&spec(fake, to_revision), &rearguard::http::client())
        .run(ctx, Duration::from_secs(20))
        .await
}

/// The Deployment without the fields that differ between two API servers by nature:
/// `metadata.resourceVersion` (each server's own counter, bumped on every write),
/// `metadata.uid` and `metadata.creationTimestamp` (assigned by each server when the
/// copy was seeded, a moment apart), and `metadata.managedFields` (the field manager is
/// the client's name, kubectl's or rearguard's; the fake keeps none anyway). Everything
/// else, `generation`, every annotation and the whole spec included, must be equal.
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
    d
}

/// The two copies, kubectl's and rearguard's, seeded alike.
async fn copies(
    revs: &[Rev],
    current: &Rev,
    annotations: Value,
    paused: bool,
) -> (KubeFake, KubeFake) {
    let kubectl = KubeFake::start().await;
    let ours = KubeFake::start().await;
    seed(&kubectl, revs, current, annotations.clone(), paused);
    seed(&ours, revs, current, annotations, paused);
    (kubectl, ours)
}

/// Runs kubectl and rearguard on their copies and checks they leave the same
/// Deployment; returns kubectl's exit status, kubectl's output and rearguard's.
async fn oracle(
    revs: &[Rev],
    current: &Rev,
    annotations: Value,
    to_revision: Option<i64>,
) -> (bool, String, ActionOutput, Value) {
    let (kubectl, ours) = copies(revs, current, annotations, false).await;
    let before = comparable(kubectl.get("deployments", NS, NAME).unwrap());
    let mut args = vec!["--namespace", NS, "rollout", "undo", "deployment/web"];
    let flag;
    if let Some(n) = to_revision {
        flag = format!("--to-revision={n}");
        args.push(&flag);
    }
    let out = kubectl.kubectl(&args).await;
    let kubectl_text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let to = match to_revision {
        Some(n) => ToRevision::Number(n),
        None => ToRevision::Previous,
    };
    let output = undo(&ours, to, &ctx()).await;
    let theirs = comparable(kubectl.get("deployments", NS, NAME).unwrap());
    let mine = comparable(ours.get("deployments", NS, NAME).unwrap());
    assert_eq!(
        mine, theirs,
        "rearguard and kubectl left different Deployments\nkubectl said: {kubectl_text}\nrearguard: {output:?}"
    );
    assert_eq!(
        out.status.success(),
        output.ok,
        "kubectl said: {kubectl_text}\nrearguard: {output:?}"
    );
    let changed = mine != before;
    // kubectl patched exactly when rearguard did.
    let patches = |f: &KubeFake| f.requests_to(&Method::PATCH, DEPLOYMENTS).len();
    assert_eq!(patches(&kubectl), usize::from(changed), "{kubectl_text}");
    assert_eq!(patches(&ours), usize::from(changed), "{output:?}");
    (out.status.success(), kubectl_text, output, mine)
}

fn image(d: &Value) -> &str {
    d["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
}

fn three() -> Vec<Rev> {
    vec![rev("1", "web:1"), rev("2", "web:2"), rev("3", "web:3")]
}

#[tokio::test]
async fn rollout_undo_to_the_previous_revision_leaves_what_kubectl_leaves() {
    let revs = three();
    let (ok, said, output, after) = oracle(&revs, &revs[2], json!({"team": "web"}), None).await;
    assert!(ok && output.ok, "{said} {output:?}");
    assert_eq!(image(&after), "web:2");
    assert!(
        output.output.contains("from revision 3 to revision 2"),
        "{output:?}"
    );
    assert_eq!(after["metadata"]["generation"], 2);
    // The hash label never reaches the Deployment's template.
    assert_eq!(
        after["spec"]["template"]["metadata"]["labels"],
        json!({"app": "web"})
    );
}

#[tokio::test]
async fn rollout_undo_to_a_given_revision_leaves_what_kubectl_leaves() {
    let revs = three();
    let (ok, said, output, after) = oracle(&revs, &revs[2], json!({}), Some(1)).await;
    assert!(ok && output.ok, "{said} {output:?}");
    assert_eq!(image(&after), "web:1");
}

#[tokio::test]
async fn rollout_undo_copies_the_replica_sets_annotations_and_keeps_the_deployments_own_as_kubectl_does()
 {
    let mut revs = three();
    revs[1].template_annotations =
        json!({"prometheus.io/scrape": "true", "checksum/config": "abc"});
    revs[1].rs_annotations = json!({
        "kubernetes.io/change-cause": "deploy web:2",
        "team": "payments",
        "kubectl.kubernetes.io/last-applied-configuration": "{\"from\":\"the replicaset\"}",
    });
    let annotations = json!({
        "kubectl.kubernetes.io/last-applied-configuration": "{\"from\":\"the deployment\"}",
        "deployment.kubernetes.io/revision-history": "1",
        "only-on-the-deployment": "dropped by kubectl",
        "team": "web",
    });
    let (ok, said, output, after) = oracle(&revs, &revs[2], annotations, None).await;
    assert!(ok && output.ok, "{said} {output:?}");
    let a = &after["metadata"]["annotations"];
    assert_eq!(a["team"], "payments");
    assert_eq!(a["kubernetes.io/change-cause"], "deploy web:2");
    assert_eq!(
        a["kubectl.kubernetes.io/last-applied-configuration"],
        "{\"from\":\"the deployment\"}"
    );
    assert_eq!(a["deployment.kubernetes.io/revision"], "3");
    assert!(a.get("only-on-the-deployment").is_none(), "{a}");
    assert_eq!(
        after["spec"]["template"]["metadata"]["annotations"]["checksum/config"],
        "abc"
    );
}

#[tokio::test]
async fn a_revision_whose_replica_set_is_gone_is_refused_by_both_and_the_previous_is_the_one_before_it()
 {
    let mut revs = three();
    revs[1].exists = false;
    // --to-revision=2 names a revision without a ReplicaSet: both refuse, nothing changes.
    let (ok, said, output, after) = oracle(&revs, &revs[2], json!({}), Some(2)).await;
    assert!(!ok && !output.ok, "{said} {output:?}");
    assert!(
        said.contains("unable to find specified revision 2"),
        "{said}"
    );
    assert!(
        output
            .error
            .as_deref()
            .unwrap()
            .contains("unable to find revision 2"),
        "{output:?}"
    );
    assert_eq!(image(&after), "web:3");
    // Without it, the previous revision is 1.
    let (ok, said, output, after) = oracle(&revs, &revs[2], json!({}), None).await;
    assert!(ok && output.ok, "{said} {output:?}");
    assert_eq!(image(&after), "web:1");
}

#[tokio::test]
async fn a_replica_set_without_a_revision_counts_as_revision_zero_for_both() {
    let revs = vec![
        Rev {
            revision: None,
            ..rev("0", "web:0")
        },
        rev("1", "web:1"),
    ];
    let (ok, said, output, after) = oracle(&revs, &revs[1], json!({}), None).await;
    assert!(ok && output.ok, "{said} {output:?}");
    assert_eq!(image(&after), "web:0");
}

#[tokio::test]
async fn a_deployment_already_at_the_revision_is_left_alone_by_both() {
    let revs = three();
    // The Deployment runs revision 2's template, though its latest ReplicaSet is 3.
    let (ok, said, output, after) = oracle(&revs, &revs[1], json!({}), Some(2)).await;
    assert!(ok && output.ok, "{said} {output:?}");
    assert!(said.contains("skipped rollback"), "{said}");
    assert!(output.output.contains("skipped rollback"), "{output:?}");
    assert_eq!(image(&after), "web:2");
}

#[tokio::test]
async fn a_deployment_with_one_revision_has_no_history_for_either() {
    let revs = vec![rev("1", "web:1")];
    let (ok, said, output, _) = oracle(&revs, &revs[0], json!({}), None).await;
    assert!(!ok && !output.ok, "{said} {output:?}");
    assert!(said.contains("no rollout history found"), "{said}");
    assert!(
        output
            .error
            .as_deref()
            .unwrap()
            .contains("no rollout history found"),
        "{output:?}"
    );
}

#[tokio::test]
async fn the_patch_is_conditional_on_the_resource_version_that_was_read() {
    let fake = KubeFake::start().await;
    let revs = three();
    seed(&fake, &revs, &revs[2], json!({}), false);
    let output = undo(&fake, ToRevision::Previous, &ctx()).await;
    assert!(output.ok, "{output:?}");
    let patches = fake.requests_to(&Method::PATCH, DEPLOYMENTS);
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/json-patch+json")
    );
    let ops = patches[0].json();
    assert_eq!(ops[0]["op"], "test");
    assert_eq!(ops[0]["path"], "/metadata/resourceVersion");
    assert!(
        ops[0]["value"].as_str().is_some_and(|v| !v.is_empty()),
        "{ops}"
    );
    // The kubeconfig's credentials were used.
    assert_eq!(
        patches[0].authorization.as_deref(),
        Some("Bearer fake-token-for-tests")
    );
}

#[tokio::test]
async fn a_deployment_changed_between_read_and_patch_is_not_overwritten_and_the_error_is_retryable()
{
    let fake = KubeFake::start().await;
    let revs = three();
    seed(&fake, &revs, &revs[2], json!({}), false);
    // Someone scales the Deployment after rearguard read it, before its patch lands.
    fake.inject(
        Method::PATCH,
        DEPLOYMENTS,
        1,
        Effect::Mutate(Box::new(|store| {
            let mut d = store.get("deployments", NS, NAME).unwrap();
            d["spec"]["replicas"] = json!(5);
            store.force(d);
        })),
    );
    let output = undo(&fake, ToRevision::Previous, &ctx()).await;
    assert!(!output.ok, "{output:?}");
    let error = output.error.unwrap();
    assert!(
        error.contains("changed while it was being rolled back"),
        "{error}"
    );
    assert!(error.contains("[retryable]"), "{error}");
    let d = fake.get("deployments", NS, NAME).unwrap();
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(image(&d), "web:3");
    // A second attempt reads the new state and succeeds.
    let output = undo(&fake, ToRevision::Previous, &ctx()).await;
    assert!(output.ok, "{output:?}");
    let d = fake.get("deployments", NS, NAME).unwrap();
    assert_eq!(
        (image(&d), d["spec"]["replicas"].as_i64()),
        ("web:2", Some(5))
    );
}

#[tokio::test]
async fn a_revision_marked_bad_is_never_a_destination() {
    let fake = KubeFake::start().await;
    let revs = three();
    seed(&fake, &revs, &revs[2], json!({}), false);
    let mut c = ctx();
    c.bad_revisions = vec!["2".to_owned()];
    let output = undo(&fake, ToRevision::Previous, &c).await;
    assert!(!output.ok, "{output:?}");
    assert!(
        output
            .error
            .as_deref()
            .unwrap()
            .contains("revision 2 of deployment shop/web is marked bad"),
        "{output:?}"
    );
    // Marked on the cluster (by another rearguard, or before a restart).
    let mut revs = three();
    revs[0].rs_annotations = json!({"rearguard.io/marked-bad": "inc-0"});
    let fake2 = KubeFake::start().await;
    seed(&fake2, &revs, &revs[2], json!({}), false);
    let output = undo(&fake2, ToRevision::Number(1), &ctx()).await;
    assert!(!output.ok, "{output:?}");
    assert!(
        output.error.as_deref().unwrap().contains("marked bad"),
        "{output:?}"
    );
    for f in [&fake, &fake2] {
        assert!(f.requests_to(&Method::PATCH, DEPLOYMENTS).is_empty());
        assert_eq!(image(&f.get("deployments", NS, NAME).unwrap()), "web:3");
    }
}

#[tokio::test]
async fn a_paused_deployment_is_not_rolled_back() {
    let (kubectl, ours) = copies(&three(), &rev("3", "web:3"), json!({}), true).await;
    let output = undo(&ours, ToRevision::Previous, &ctx()).await;
    assert!(!output.ok, "{output:?}");
    assert!(
        output.error.as_deref().unwrap().contains("is paused"),
        "{output:?}"
    );
    assert!(ours.requests_to(&Method::PATCH, DEPLOYMENTS).is_empty());
    // kubectl refuses too.
    let out = kubectl
        .kubectl(&["--namespace", NS, "rollout", "undo", "deployment/web"])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("paused"));
}

#[tokio::test]
async fn a_deployment_that_moved_past_the_incidents_revision_is_left_alone() {
    let fake = KubeFake::start().await;
    let revs = three();
    seed(&fake, &revs, &revs[2], json!({}), false);
    let mut c = ctx();
    c.from_revision = Some("2".to_owned());
    let output = undo(&fake, ToRevision::Previous, &c).await;
    assert!(!output.ok, "{output:?}");
    assert!(
        output
            .error
            .as_deref()
            .unwrap()
            .contains("is at revision 3, not at the incident's revision 2"),
        "{output:?}"
    );
    assert!(fake.requests_to(&Method::PATCH, DEPLOYMENTS).is_empty());
}

#[tokio::test]
async fn the_incidents_to_revision_is_used_when_configured() {
    let fake = KubeFake::start().await;
    let revs = three();
    seed(&fake, &revs, &revs[2], json!({}), false);
    let mut c = ctx();
    c.from_revision = Some("3".to_owned());
    c.to_revision = Some("1".to_owned());
    let output = undo(&fake, ToRevision::Incident, &c).await;
    assert!(output.ok, "{output:?}");
    assert_eq!(image(&fake.get("deployments", NS, NAME).unwrap()), "web:1");
    c.to_revision = Some("web:1".to_owned());
    let output = undo(&fake, ToRevision::Incident, &c).await;
    assert!(
        output
            .error
            .as_deref()
            .unwrap()
            .contains("not a deployment revision number"),
        "{output:?}"
    );
}

#[tokio::test]
async fn a_missing_deployment_and_a_missing_kubeconfig_are_clear_errors() {
    let fake = KubeFake::start().await;
    let output = undo(&fake, ToRevision::Previous, &ctx()).await;
    assert_eq!(
        output.error.as_deref(),
        Some("deployment shop/web not found"),
        "{output:?}"
    );
    let url = fake.url();
    let kubeconfig = fake.kubeconfig();
    drop(fake);
    let spec = ActionSpec::KubeRolloutUndo(KubeRolloutUndoSpec {
        access: Access {
            source: AccessSource::Kubeconfig {
                path: kubeconfig,
                context: None,
            },
            server: Some(url),
        },
        namespace: NS.to_owned(),
        deployment: NAME.to_owned(),
        to_revision: ToRevision::Previous,
    });
    // The kubeconfig went with the fake's directory: a configuration error.
    let output = Action::new(&spec, &rearguard::http::client())
        .run(&ctx(), Duration::from_secs(10))
        .await;
    assert!(
        output
            .error
            .as_deref()
            .unwrap()
            .contains("cannot configure the kubernetes client"),
        "{output:?}"
    );
}

#[tokio::test]
async fn the_server_setting_overrides_the_kubeconfigs_address() {
    let fake = KubeFake::start().await;
    let revs = three();
    seed(&fake, &revs, &revs[2], json!({}), false);
    let dir = crate::support::temp_dir();
    let kubeconfig = dir.path().join("kubeconfig");
    // A kubeconfig naming a port nothing listens on; `server` points at the fake.
    std::fs::write(
        &kubeconfig,
        std::fs::read_to_string(fake.kubeconfig())
            .unwrap()
            .replace(&fake.url(), "http://127.0.0.1:9"),
    )
    .unwrap();
    let spec = ActionSpec::KubeRolloutUndo(KubeRolloutUndoSpec {
        access: Access {
            source: AccessSource::Kubeconfig {
                path: kubeconfig,
                context: None,
            },
            server: Some(fake.url()),
        },
        namespace: NS.to_owned(),
        deployment: NAME.to_owned(),
        to_revision: ToRevision::Previous,
    });
    let output = Action::new(&spec, &rearguard::http::client())
        .run(&ctx(), Duration::from_secs(10))
        .await;
    assert!(output.ok, "{output:?}");
}

const PLAN: &str = r#"
[[target]]
name = "web"
plan = "undo"

[[signal]]
name = "probe"
target = "web"
type = "http_probe"
url = "http://127.0.0.1:9/healthz"

[[rule]]
name = "down"
signal = "probe"
when = "failing"
consecutive = 3

[[plan]]
name = "undo"
[[plan.step]]
type = "kube_rollout_undo"
namespace = "shop"
deployment = "web"
"#;

fn load(toml: &str, base: &std::path::Path) -> Result<rearguard::config::Config, Vec<String>> {
    rearguard::config::load_str(
        toml,
        rearguard::config::Format::Toml,
        std::iter::empty(),
        base,
    )
    .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

fn undo_spec(cfg: &rearguard::config::Config) -> KubeRolloutUndoSpec {
    match &cfg.plans[0].steps[0].action {
        ActionSpec::KubeRolloutUndo(spec) => spec.clone(),
        other => panic!("not a kube_rollout_undo step: {other:?}"),
    }
}

#[test]
fn the_step_and_the_cluster_access_are_read_from_the_configuration() {
    let base = std::path::Path::new("/etc/rearguard");
    let cfg = load(PLAN, base).unwrap();
    let spec = undo_spec(&cfg);
    assert_eq!(spec.access, Access::default());
    assert_eq!(spec.to_revision, ToRevision::Previous);
    assert_eq!(
        (spec.namespace.as_str(), spec.deployment.as_str()),
        ("shop", "web")
    );

    let text = format!(
        "[kubernetes]\nkubeconfig = \"kube/config\"\ncontext = \"prod\"\nserver = \"https://10.0.0.1:6443/\"\n{}to_revision = 4\n",
        PLAN
    );
    let spec = undo_spec(&load(&text, base).unwrap());
    assert_eq!(
        spec.access,
        Access {
            source: AccessSource::Kubeconfig {
                path: base.join("kube/config"),
                context: Some("prod".to_owned()),
            },
            server: Some("https://10.0.0.1:6443".to_owned()),
        }
    );
    assert_eq!(spec.to_revision, ToRevision::Number(4));
    let text =
        format!("[kubernetes]\nin_cluster = true\n{PLAN}to_revision = \"{{to_revision}}\"\n");
    let spec = undo_spec(&load(&text, base).unwrap());
    assert_eq!(spec.access.source, AccessSource::InCluster);
    assert_eq!(spec.to_revision, ToRevision::Incident);
}

#[test]
fn bad_kubernetes_settings_are_reported_with_their_paths() {
    let base = std::path::Path::new(".");
    let text = format!(
        "[kubernetes]\nin_cluster = true\nkubeconfig = \"x\"\nserver = \"ftp://x\"\nport = 1\n{}",
        PLAN.replace("namespace = \"shop\"", "namespace = \"Shop_1\"")
    );
    let errors = load(&text, base).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("kubernetes.port: unknown key")),
        "{errors:?}"
    );
    let text = format!(
        "[kubernetes]\nin_cluster = true\nkubeconfig = \"x\"\nserver = \"ftp://x\"\n{}to_revision = 0\n",
        PLAN.replace("namespace = \"shop\"", "namespace = \"Shop_1\"")
    );
    let errors = load(&text, base).unwrap_err();
    for expected in [
        "kubernetes.kubeconfig: not allowed with in_cluster = true",
        "kubernetes.server: expected an http or https URL",
        "plan[0].step[0].namespace: \"Shop_1\" is not a Kubernetes name",
        "plan[0].step[0].to_revision: expected a revision number >= 1 or \"{to_revision}\"",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{expected} not in {errors:?}"
        );
    }
    let text = format!("{PLAN}to_revision = \"latest\"\n");
    let errors = load(&text, base).unwrap_err();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("plan[0].step[0].to_revision")),
        "{errors:?}"
    );
    let text = format!("[kubernetes]\ncontext = \"prod\"\n{PLAN}");
    let errors = load(&text, base).unwrap_err();
    assert_eq!(errors, ["kubernetes.context: only with kubeconfig"]);
}

#[tokio::test]
async fn the_daemon_does_not_start_with_a_kubeconfig_it_cannot_read() {
    let dir = crate::support::temp_dir();
    let text = format!(
        "[daemon]\nstate_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n[kubernetes]\nkubeconfig = \"missing/kubeconfig\"\n{PLAN}",
        dir.path().display()
    );
    let cfg = load(&text, dir.path()).unwrap();
    let result = rearguard::daemon::run(
        cfg,
        rearguard::daemon::Options {
            shutdown: tokio_util::sync::CancellationToken::new(),
            observer: None,
            systemd: None,
            reload: None,
        },
    )
    .await;
    let error = result.expect_err("the daemon must not start");
    assert!(error.is_config(), "{error}");
    let text = error.to_string();
    assert!(
        text.starts_with(
            "plan[0].step[0] (step 1): cannot configure the kubernetes client: reading kubeconfig"
        ),
        "{text}"
    );
}

#[test]
fn every_deployment_step_type_is_read_and_keys_a_type_does_not_take_are_refused() {
    let base = std::path::Path::new(".");
    let with_step = |step: &str| {
        PLAN.replace(
            "type = \"kube_rollout_undo\"\nnamespace = \"shop\"\ndeployment = \"web\"\n",
            step,
        )
    };
    for (kind, extra, expected) in [
        ("kube_rollout_status", "", "kube_rollout_status"),
        ("kube_pause", "", "kube_pause"),
        ("kube_resume", "", "kube_resume"),
        ("kube_restart", "", "kube_restart"),
        ("kube_mark_bad", "", "kube_mark_bad"),
        ("kube_restore_config", "", "kube_restore_config"),
        (
            "kube_restore_config",
            "to_revision = 2\n",
            "kube_restore_config",
        ),
        ("kube_delete_pods", "", "kube_delete_pods"),
        ("kube_scale", "replicas = 0\n", "kube_scale"),
        ("kube_scale", "replicas = \"recorded\"\n", "kube_scale"),
    ] {
        let text = with_step(&format!(
            "type = \"{kind}\"\nnamespace = \"shop\"\ndeployment = \"web\"\n{extra}"
        ));
        let cfg = load(&text, base).unwrap_or_else(|e| panic!("{kind}: {e:?}"));
        assert_eq!(cfg.plans[0].steps[0].action.type_name(), expected);
    }
    for (step, expected) in [
        (
            "type = \"kube_scale\"\nnamespace = \"shop\"\ndeployment = \"web\"\n",
            "plan[0].step[0].replicas: required for type kube_scale",
        ),
        (
            "type = \"kube_scale\"\nnamespace = \"shop\"\ndeployment = \"web\"\nreplicas = -1\n",
            "plan[0].step[0].replicas: expected a number of replicas >= 0 or \"recorded\"",
        ),
        (
            "type = \"kube_pause\"\nnamespace = \"shop\"\ndeployment = \"web\"\nreplicas = 2\n",
            "plan[0].step[0].replicas: only for type kube_scale",
        ),
        (
            "type = \"kube_restart\"\nnamespace = \"shop\"\ndeployment = \"web\"\nto_revision = 2\n",
            "plan[0].step[0].to_revision: only for types kube_rollout_undo and kube_restore_config",
        ),
    ] {
        let errors = load(&with_step(step), base).unwrap_err();
        assert_eq!(errors, [expected], "{step}");
    }
}

#[tokio::test]
async fn a_422_on_an_unchanged_deployment_is_the_servers_verdict_not_a_conflict() {
    let fake = KubeFake::start().await;
    let revs = three();
    seed(&fake, &revs, &revs[2], json!({}), false);
    // An admission webhook or validation refuses the object: nothing changed meanwhile.
    fake.inject(Method::PATCH, DEPLOYMENTS, 1, Effect::Respond(422));
    let output = undo(&fake, ToRevision::Previous, &ctx()).await;
    let error = output.error.unwrap();
    assert!(
        error.starts_with("the api server refused the request (422"),
        "{error}"
    );
    assert!(!error.contains("[retryable]"), "{error}");
    assert_eq!(image(&fake.get("deployments", NS, NAME).unwrap()), "web:3");
}

/// Kubernetes level 1 as a recipe (`config/recipes/kubernetes-undo.md`): the steps it
/// expands into, run in order against the fake cluster, mark the bad revision, put the
/// incident's revision back and wait for the rollout, which the test completes as the
/// deployment controller would.
#[tokio::test]
async fn the_kubernetes_undo_recipe_marks_the_bad_revision_rolls_back_and_waits() {
    let fake = KubeFake::start().await;
    let revs = three();
    seed(&fake, &revs, &revs[2], json!({}), false);
    let dir = crate::support::temp_dir();
    let text = format!(
        "[daemon]\nstate_dir = \"{}\"\n[kubernetes]\nkubeconfig = \"{}\"\n{}",
        dir.path().display(),
        fake.kubeconfig().display(),
        PLAN.replace(
            "type = \"kube_rollout_undo\"\nnamespace = \"shop\"\ndeployment = \"web\"\n",
            "type = \"recipe\"\nrecipe = \"kubernetes-undo\"\nname = \"level 1\"\nwith = { namespace = \"shop\", deployment = \"web\" }\n",
        )
    );
    let cfg = load(&text, dir.path()).unwrap_or_else(|e| panic!("{e:#?}"));
    let steps = &cfg.plans[0].steps;
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "level 1: mark the bad revision",
            "level 1: roll the deployment back",
            "level 1: wait for the rollout",
        ]
    );
    let ctx = ActionContext {
        from_revision: Some("3".to_owned()),
        to_revision: Some("1".to_owned()),
        ..ctx()
    };
    let client = rearguard::http::client();
    for step in &steps[..2] {
        let out = Action::new(&step.action, &client)
            .run(&ctx, step.timeout)
            .await;
        assert!(out.ok, "{}: {out:?}", step.name);
    }
    let deployment = fake.get("deployments", NS, NAME).unwrap();
    assert_eq!(
        image(&deployment),
        "web:1",
        "the incident's revision, not the previous one"
    );
    let marked: Vec<Value> = fake
        .list("replicasets", Some(NS))
        .into_iter()
        .filter(|rs| rs["metadata"]["annotations"]["rearguard.io/marked-bad"] == json!("inc-1"))
        .collect();
    assert_eq!(
        marked.len(),
        1,
        "exactly the bad revision's ReplicaSet is marked"
    );
    assert_eq!(
        marked[0]["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        json!("3")
    );

    // The rollout: the step waits until the controller reports it complete.
    let wait = &steps[2];
    let action = Action::new(&wait.action, &client);
    let waiting = tokio::spawn(async move { action.run(&ctx, Duration::from_secs(20)).await });
    crate::support::poll_until(Duration::from_secs(10), || {
        fake.requests()
            .iter()
            .any(|r| r.query.contains("watch=true"))
    })
    .await
    .expect("the step watches the deployment");
    assert!(
        !waiting.is_finished(),
        "not complete before the controller says so"
    );
    let generation = deployment["metadata"]["generation"].as_i64().unwrap_or(1);
    fake.with(|s| {
        let mut d = s.get("deployments", NS, NAME).unwrap();
        d["status"] = json!({"observedGeneration": generation, "replicas": 3,
            "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3});
        s.force_status(d);
    });
    let out = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the step sees the rollout complete")
        .unwrap();
    assert!(out.ok, "{out:?}");
}
