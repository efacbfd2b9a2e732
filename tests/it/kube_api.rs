//! The fake Kubernetes API server itself, checked with its two clients: the real
//! `kubectl` (discovery, get, the patches its rollout, scale and annotate commands send,
//! create and delete) and the kube crate (watch from a resource version, 410 after a
//! compaction, 409 conflicts, Leases). The rollout tests rely on all of it.

use std::time::Duration;

use axum::http::Method;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use crate::kube_fake::KubeFake;

async fn client(fake: &KubeFake) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(fake.kubeconfig()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn deployment() -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "web:1"}]},
            },
        },
    })
}

#[tokio::test]
async fn kubectl_discovers_the_fake_and_reads_its_objects() {
    let fake = KubeFake::start().await;
    fake.put(deployment());
    let version = fake.kubectl_ok(&["version", "--output", "json"]).await;
    assert!(version.contains("v1.32.0-rearguard-fake"), "{version}");
    let resources = fake.kubectl_ok(&["api-resources", "--no-headers"]).await;
    for name in [
        "deployments",
        "replicasets",
        "pods",
        "leases",
        "configmaps",
        "secrets",
        "events",
    ] {
        assert!(resources.contains(name), "{name} missing from {resources}");
    }
    let listed = fake
        .kubectl_ok(&[
            "--namespace",
            "shop",
            "get",
            "deployments",
            "--output",
            "json",
        ])
        .await;
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["items"][0]["metadata"]["name"], "web");
    let one = fake
        .kubectl_ok(&[
            "--namespace",
            "shop",
            "get",
            "deploy/web",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
        .await;
    assert_eq!(one, "2");
    let missing = fake
        .kubectl(&["--namespace", "shop", "get", "deploy/nope"])
        .await;
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("deployments.apps \"nope\" not found"),
        "{missing:?}"
    );
}

#[tokio::test]
async fn kubectls_strategic_merge_and_merge_patches_and_scale_are_applied() {
    let fake = KubeFake::start().await;
    fake.put(deployment());
    let ns = ["--namespace", "shop"];
    let run = |args: &'static [&'static str]| {
        let mut all = ns.to_vec();
        all.extend_from_slice(args);
        all
    };
    fake.kubectl_ok(&run(&["rollout", "pause", "deployment/web"]))
        .await;
    let d = fake.get("deployments", "shop", "web").unwrap();
    assert_eq!(d["spec"]["paused"], true);
    let pause = fake.requests_to(
        &Method::PATCH,
        "/apis/apps/v1/namespaces/shop/deployments/web",
    );
    assert_eq!(
        pause[0].content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    fake.kubectl_ok(&run(&["rollout", "resume", "deployment/web"]))
        .await;
    let d = fake.get("deployments", "shop", "web").unwrap();
    assert!(
        d["spec"]["paused"].is_null() || d["spec"]["paused"] == false,
        "{d}"
    );
    fake.kubectl_ok(&run(&["rollout", "restart", "deployment/web"]))
        .await;
    let d = fake.get("deployments", "shop", "web").unwrap();
    let restarted =
        &d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"];
    assert!(restarted.is_string(), "{d}");
    // The containers list was merged by name, not replaced.
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
    fake.kubectl_ok(&run(&["scale", "deployment/web", "--replicas=5"]))
        .await;
    assert_eq!(
        fake.get("deployments", "shop", "web").unwrap()["spec"]["replicas"],
        5
    );
    fake.kubectl_ok(&run(&["annotate", "deployment/web", "owner=payments"]))
        .await;
    let d = fake.get("deployments", "shop", "web").unwrap();
    assert_eq!(d["metadata"]["annotations"]["owner"], "payments");
    fake.kubectl_ok(&run(&["set", "image", "deployment/web", "web=web:2"]))
        .await;
    let d = fake.get("deployments", "shop", "web").unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:2"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // pause, resume, restart, image: four spec changes after the first generation.
    assert_eq!(d["metadata"]["generation"], 6, "{d}");
}

#[tokio::test]
async fn kubectl_creates_from_files_and_deletes_objects() {
    let fake = KubeFake::start().await;
    let dir = crate::support::temp_dir();
    let file = dir.path().join("objects.json");
    // Two objects, one after the other (a `List` would make kubectl validate on the
    // client, with the OpenAPI v2 schema the fake does not serve).
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "settings", "namespace": "shop"}, "data": {"mode": "prod"}}),
    ];
    std::fs::write(&file, format!("{}\n{}\n", objects[0], objects[1])).unwrap();
    let path = file.to_str().unwrap();
    fake.kubectl_ok(&["create", "--filename", path]).await;
    let cm = fake.get("configmaps", "shop", "settings").unwrap();
    assert_eq!(cm["data"]["mode"], "prod");
    let again = fake.kubectl(&["create", "--filename", path]).await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    // kubectl's generators (`kubectl create configmap`) send protobuf, which the fake
    // refuses as an unsupported media type rather than misreading it.
    let generated = fake
        .kubectl(&["--namespace", "shop", "create", "configmap", "other"])
        .await;
    assert!(
        String::from_utf8_lossy(&generated.stderr).contains("unknown format"),
        "{generated:?}"
    );
    fake.kubectl_ok(&["--namespace", "shop", "delete", "configmap", "settings"])
        .await;
    assert!(fake.get("configmaps", "shop", "settings").is_none());
}

#[tokio::test]
async fn a_watch_resumes_from_a_resource_version_without_repeating_events() {
    let fake = KubeFake::start().await;
    let client = client(&fake).await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm = |name: &str, v: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": v}})).unwrap()
    };
    maps.create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    let list = maps.list(&ListParams::default()).await.unwrap();
    let start = list.metadata.resource_version.unwrap();
    maps.create(&PostParams::default(), &cm("b", "1"))
        .await
        .unwrap();
    let mut stream = maps
        .watch(&WatchParams::default().timeout(10), &start)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchEvent::Added(b) = first else {
        panic!("expected b added, got {first:?}");
    };
    assert_eq!(b.metadata.name.as_deref(), Some("b"));
    // A change made while the watch is open arrives on it.
    maps.replace("a", &PostParams::default(), &{
        let mut a = maps.get("a").await.unwrap();
        a.data = Some([("v".to_owned(), "2".to_owned())].into());
        a
    })
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let WatchEvent::Modified(a) = next else {
        panic!("expected a modified, got {next:?}");
    };
    let seen = a.metadata.resource_version.unwrap();
    drop(stream);
    // Resuming from the last version seen gives only what came after it.
    maps.delete("b", &DeleteParams::default()).await.unwrap();
    let mut resumed = maps
        .watch(&WatchParams::default().timeout(10), &seen)
        .await
        .unwrap()
        .boxed();
    let event = tokio::time::timeout(Duration::from_secs(5), resumed.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&event, WatchEvent::Deleted(b) if b.metadata.name.as_deref() == Some("b")),
        "{event:?}"
    );
    // After a compaction the old version is gone: 410 Expired, as etcd would say.
    fake.with(|s| s.compact());
    let mut expired = maps
        .watch(&WatchParams::default().timeout(10), &seen)
        .await
        .unwrap()
        .boxed();
    let event = tokio::time::timeout(Duration::from_secs(5), expired.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&event, WatchEvent::Error(e) if e.code == 410),
        "{event:?}"
    );
}

#[tokio::test]
async fn a_stale_update_is_a_409_conflict_and_leases_work_end_to_end() {
    let fake = KubeFake::start().await;
    let client = client(&fake).await;
    let leases: Api<Lease> = Api::namespaced(client, "kube-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "rearguard"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut mine = created.clone();
    mine.spec.as_mut().unwrap().holder_identity = Some("b".to_owned());
    leases
        .replace("rearguard", &PostParams::default(), &mine)
        .await
        .unwrap();
    // The same, stale, resourceVersion again: someone else wrote in between.
    mine.spec.as_mut().unwrap().holder_identity = Some("c".to_owned());
    let err = leases
        .replace("rearguard", &PostParams::default(), &mine)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
            assert!(
                status.message.contains("the object has been modified"),
                "{status:?}"
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let now = leases.get("rearguard").await.unwrap();
    assert_eq!(now.spec.unwrap().holder_identity.as_deref(), Some("b"));
    let dup = leases
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert!(matches!(dup, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"));
    leases
        .delete("rearguard", &DeleteParams::default())
        .await
        .unwrap();
    let gone = leases.get("rearguard").await.unwrap_err();
    assert!(matches!(gone, kube::Error::Api(s) if s.code == 404));
}

#[tokio::test]
async fn lists_honour_label_selectors_and_pages() {
    let fake = KubeFake::start().await;
    for (name, tier) in [("a", "web"), ("b", "api"), ("c", "web"), ("d", "db")] {
        fake.put(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "labels": {"tier": tier}},
        }));
    }
    let client = client(&fake).await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let names = |list: kube::api::ObjectList<ConfigMap>| -> Vec<String> {
        list.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect()
    };
    let web = maps
        .list(&ListParams::default().labels("tier=web"))
        .await
        .unwrap();
    assert_eq!(names(web), ["a", "c"]);
    let not_web = maps
        .list(&ListParams::default().labels("tier notin (web),tier"))
        .await
        .unwrap();
    assert_eq!(names(not_web), ["b", "d"]);
    let page = maps.list(&ListParams::default().limit(3)).await.unwrap();
    let token = page.metadata.continue_.clone().unwrap();
    assert_eq!(names(page), ["a", "b", "c"]);
    let rest = maps
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert!(rest.metadata.continue_.as_deref().unwrap_or("").is_empty());
    assert_eq!(names(rest), ["d"]);
}
