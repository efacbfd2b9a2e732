//! The Kubernetes manifests of packaging/kubernetes/: each parses into its k8s-openapi
//! type (converted from YAML by the real kubectl, offline), every kustomization renders
//! (`kubectl kustomize`) into typed objects that fit together (the base highly available
//! and namespace-scoped, the cluster-wide overlay, the ServiceMonitor component, the
//! sidecar) and runs the image scripts/image builds, the Deployments are what the
//! README promises, the ConfigMaps hold the example configurations byte for byte and
//! those pass `rearguard check`, and the Roles grant every request rearguard made to the
//! fake API server while running each of its Kubernetes sources, plan steps, Events and
//! leader election, and nothing that no code uses.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use rearguard::action::{Action, ActionContext};
use rearguard::config::{
    ActionSpec, KubeDeploymentRef, KubePodsSpec, KubeRestoreConfigSpec, KubeRolloutUndoSpec,
    KubeScaleSpec, Occasion, PodEvent, Replicas, ToRevision,
};
use rearguard::kube::{Access, AccessSource};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kube_fake::{KubeFake, Recorded};

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/kubernetes")
}

/// Every YAML file under packaging/kubernetes/, relative to it, kustomizations included.
fn yaml_files() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.insert(path.strip_prefix(manifests_dir()).unwrap().to_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&manifests_dir(), &mut out);
    out
}

fn is_kustomization(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "kustomization.yaml")
}

/// The manifest named `file` (its names are unique under packaging/kubernetes/).
fn manifest(file: &str) -> PathBuf {
    let found: Vec<PathBuf> = yaml_files()
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == file))
        .collect();
    assert_eq!(found.len(), 1, "one {file} under packaging/kubernetes/");
    manifests_dir().join(&found[0])
}

/// The objects of a manifest file, as JSON: the real kubectl reads the YAML (offline,
/// `label --local`), so what is checked is what kubectl would send.
fn objects(file: &str) -> Vec<Value> {
    kubectl_objects(&manifest(file).display().to_string(), None)
}

/// What `kubectl kustomize DIR` renders, as JSON objects (through `label --local` too).
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = kubectl(&["kustomize".as_ref(), dir.as_os_str()], None);
    kubectl_objects("-", Some(out))
}

/// Runs the real kubectl offline with `args`, `stdin` on its standard input; its output.
fn kubectl(args: &[&std::ffi::OsStr], stdin: Option<Vec<u8>>) -> Vec<u8> {
    use std::io::Write as _;
    let kubectl = Path::new("/usr/bin/kubectl");
    assert!(
        kubectl.exists(),
        "kubectl is not installed: apt-get install -y kubectl"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(kubectl)
        .args(args)
        .env("KUBECONFIG", "/dev/null")
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubectl");
    let mut input = child.stdin.take().unwrap();
    input.write_all(&stdin.unwrap_or_default()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The objects of `file` (`-`: of `stdin`) as kubectl prints them in JSON.
fn kubectl_objects(file: &str, stdin: Option<Vec<u8>>) -> Vec<Value> {
    let args = ["label", "--local", "-o", "json", "-f", file];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    args.push("rearguard.io/manifest-test=yes".as_ref());
    let out = kubectl(&args, stdin);
    serde_json::Deserializer::from_slice(&out)
        .into_iter::<Value>()
        .map(|v| {
            let mut v = v.expect("kubectl prints JSON");
            // The label that made kubectl print the object is not part of it.
            let labels = v["metadata"]["labels"].as_object_mut().unwrap();
            labels.remove("rearguard.io/manifest-test");
            if labels.is_empty() {
                v["metadata"].as_object_mut().unwrap().remove("labels");
            }
            v
        })
        .collect()
}

/// `value` as the k8s-openapi type `T`; fails when a field is unknown to it (dropped
/// on the way back to JSON) or has the wrong type.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value) -> T {
    let t: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("not a {}: {e}\n{value:#}", std::any::type_name::<T>()));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back,
        value,
        "{} drops or changes fields (a typo?)",
        std::any::type_name::<T>()
    );
    t
}

/// The Prometheus Operator's ServiceMonitor (monitoring.coreos.com/v1), which
/// k8s-openapi does not have: the fields these manifests use, each as the Operator's
/// API reference spells it, and nothing else (an unknown field is a typo).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    endpoints: Vec<ServiceMonitorEndpoint>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceMonitorEndpoint {
    port: String,
    path: String,
    interval: String,
}

/// Checks that `object` is its kind's type; returns the kind.
fn check_typed(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("").to_owned();
    match kind.as_str() {
        "Namespace" => drop(typed::<Namespace>(object)),
        "ServiceAccount" => drop(typed::<ServiceAccount>(object)),
        "Role" => drop(typed::<Role>(object)),
        "RoleBinding" => drop(typed::<RoleBinding>(object)),
        "ClusterRole" => drop(typed::<ClusterRole>(object)),
        "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(object)),
        "ConfigMap" => drop(typed::<ConfigMap>(object)),
        "Deployment" => drop(typed::<Deployment>(object)),
        "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(object)),
        "Service" => drop(typed::<Service>(object)),
        "ServiceMonitor" => drop(typed::<ServiceMonitor>(object)),
        other => panic!("unexpected kind {other:?}:\n{object:#}"),
    }
    kind
}

/// Every manifest, and the kinds of the objects it holds.
const FILES: [(&str, &[&str]); 12] = [
    ("base/namespace.yaml", &["Namespace"]),
    ("base/serviceaccount.yaml", &["ServiceAccount"]),
    ("base/role.yaml", &["Role", "Role"]),
    ("base/rolebinding.yaml", &["RoleBinding", "RoleBinding"]),
    ("base/configmap.yaml", &["ConfigMap"]),
    ("base/deployment.yaml", &["Deployment"]),
    ("base/poddisruptionbudget.yaml", &["PodDisruptionBudget"]),
    ("base/service.yaml", &["Service"]),
    ("overlays/cluster-wide/clusterrole.yaml", &["ClusterRole"]),
    (
        "overlays/cluster-wide/clusterrolebinding.yaml",
        &["ClusterRoleBinding"],
    ),
    (
        "components/service-monitor/servicemonitor.yaml",
        &["ServiceMonitor"],
    ),
    ("sidecar/sidecar.yaml", &["ConfigMap", "Deployment"]),
];

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let on_disk: BTreeSet<PathBuf> = yaml_files()
        .into_iter()
        .filter(|p| !is_kustomization(p))
        .collect();
    let listed: BTreeSet<PathBuf> = FILES.iter().map(|(f, _)| PathBuf::from(f)).collect();
    assert_eq!(on_disk, listed, "a manifest is not checked here");
    for (file, expected) in FILES {
        let path = manifests_dir().join(file).display().to_string();
        let kinds: Vec<String> = kubectl_objects(&path, None)
            .iter()
            .map(check_typed)
            .collect();
        assert_eq!(kinds, *expected, "{file}");
    }
}

/// The only object of `kind` in `file`, typed.
fn one<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, kind: &str) -> T {
    let found: Vec<Value> = objects(file)
        .into_iter()
        .filter(|o| o["kind"] == kind)
        .collect();
    assert_eq!(found.len(), 1, "{file}: one {kind}");
    typed(&found[0])
}

#[test]
fn the_deployment_runs_two_hardened_replicas_named_by_the_downward_api() {
    let d: Deployment = one("deployment.yaml", "Deployment");
    let spec = d.spec.unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    let sa: ServiceAccount = one("serviceaccount.yaml", "ServiceAccount");
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_eq!(d.metadata.namespace, sa.metadata.namespace);
    assert_eq!(
        pod.security_context.as_ref().unwrap().run_as_non_root,
        Some(true)
    );
    let c = &pod.containers[0];
    let pod_name = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "POD_NAME")
        .expect("POD_NAME is set");
    assert_eq!(
        pod_name
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.name")
    );
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(probe_path(&c.liveness_probe).as_deref(), Some("/healthz"));
    assert_eq!(probe_path(&c.readiness_probe).as_deref(), Some("/readyz"));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let resources = c.resources.as_ref().unwrap();
    assert!(resources.requests.is_some() && resources.limits.is_some());
    // The listener in the ConfigMap's configuration is the probes' port.
    let port = c.ports.iter().flatten().next().unwrap().container_port;
    let text = config_map_text("configmap.yaml");
    assert!(
        text.contains(&format!("listen = \"0.0.0.0:{port}\"")),
        "{text}"
    );
    // The configuration comes from the ConfigMap, mounted where the args say.
    let cm: ConfigMap = one("configmap.yaml", "ConfigMap");
    let volumes = pod.volumes.unwrap();
    let config = volumes
        .iter()
        .find(|v| v.config_map.as_ref().map(|c| &c.name) == cm.metadata.name.as_ref())
        .expect("a volume of the ConfigMap");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == config.name)
        .unwrap();
    assert!(
        c.args
            .iter()
            .flatten()
            .any(|a| *a == format!("{}/rearguard.toml", mount.mount_path)),
        "{:?}",
        c.args
    );
}

/// The configuration a ConfigMap of `file` holds.
fn config_map_text(file: &str) -> String {
    let cm: ConfigMap = one(file, "ConfigMap");
    cm.data.unwrap()["rearguard.toml"].clone()
}

/// Runs `rearguard check` on `text`.
fn check(text: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rearguard.toml");
    std::fs::write(&path, text).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_rearguard"))
        .arg("check")
        .arg(&path)
        .env_clear()
        .output()
        .expect("the rearguard binary runs")
}

#[test]
fn the_config_maps_hold_the_example_configurations_and_they_pass_check() {
    for (file, example) in [
        ("configmap.yaml", "kubernetes-service.toml"),
        ("sidecar.yaml", "sidecar.toml"),
    ] {
        let text = config_map_text(file);
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/examples")
            .join(example);
        let expected = std::fs::read_to_string(&path).unwrap();
        assert!(
            text == expected,
            "{file} does not hold config/examples/{example}: copy it into the ConfigMap, each line indented by 4 spaces"
        );
        let out = check(&text);
        assert!(
            out.status.success(),
            "{file}: rearguard check failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Kustomize: the base, its variants, and what holds them together.
// ---------------------------------------------------------------------------------------

/// What names an object: kind, namespace (empty when cluster-scoped), name.
type Id = (String, String, String);

fn id(object: &Value) -> Id {
    let field = |v: &Value| v.as_str().unwrap_or("").to_owned();
    (
        field(&object["kind"]),
        field(&object["metadata"]["namespace"]),
        field(&object["metadata"]["name"]),
    )
}

/// What `kubectl kustomize` renders for the kustomization in `dir` (relative to
/// packaging/kubernetes/), each object checked against its type. A Component cannot be
/// rendered alone: it is rendered in a throwaway overlay of the base, as a user adds it.
fn render(dir: &str) -> BTreeMap<Id, Value> {
    let path = manifests_dir().join(dir);
    let text = std::fs::read_to_string(path.join("kustomization.yaml")).unwrap();
    let objects = if text.contains("\nkind: Component\n") {
        let overlay = tempfile::tempdir().unwrap();
        // kustomize takes relative paths only: up to the root, then down.
        let up = "../".repeat(overlay.path().components().count() - 1);
        let from_root = |p: PathBuf| format!("{up}{}", p.strip_prefix("/").unwrap().display());
        std::fs::write(
            overlay.path().join("kustomization.yaml"),
            format!(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n",
                from_root(manifests_dir().join("base")),
                from_root(path),
            ),
        )
        .unwrap();
        kustomize(overlay.path())
    } else {
        kustomize(&path)
    };
    let mut out = BTreeMap::new();
    for object in objects {
        check_typed(&object);
        assert!(
            out.insert(id(&object), object).is_none(),
            "{dir}: an object twice"
        );
    }
    out
}

const KUSTOMIZATIONS: [&str; 4] = [
    "base",
    "overlays/cluster-wide",
    "components/service-monitor",
    "sidecar",
];

/// The one object of `kind` named `name` in a rendering, typed.
fn get<T: serde::de::DeserializeOwned + serde::Serialize>(
    rendered: &BTreeMap<Id, Value>,
    kind: &str,
    name: &str,
) -> T {
    let found: Vec<&Value> = rendered
        .iter()
        .filter(|((k, _, n), _)| k == kind && n == name)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name}: {:?}", rendered.keys());
    typed(found[0])
}

/// Whether every label `selector` matches on is in `labels`.
fn selects(selector: Option<&BTreeMap<String, String>>, labels: &BTreeMap<String, String>) -> bool {
    let selector = selector.filter(|s| !s.is_empty()).expect("a selector");
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn every_kustomization_renders_typed_objects_and_every_manifest_is_in_one() {
    let on_disk: BTreeSet<PathBuf> = yaml_files()
        .into_iter()
        .filter(|p| is_kustomization(p))
        .map(|p| p.parent().unwrap().to_owned())
        .collect();
    let listed: BTreeSet<PathBuf> = KUSTOMIZATIONS.iter().map(PathBuf::from).collect();
    assert_eq!(on_disk, listed, "a kustomization is not rendered here");
    let mut rendered: Vec<Value> = Vec::new();
    for dir in KUSTOMIZATIONS {
        rendered.extend(render(dir).into_values());
    }
    // Each manifest's objects come out of some kustomization exactly as written.
    for (file, _) in FILES {
        let path = manifests_dir().join(file).display().to_string();
        for object in kubectl_objects(&path, None) {
            assert!(
                rendered.contains(&object),
                "{file}: {:?} is in no kustomization's output as written",
                id(&object)
            );
        }
    }
}

#[test]
fn the_base_is_highly_available_and_scoped_to_the_watched_namespace() {
    let base = render("base");
    let d: Deployment = get(&base, "Deployment", "rearguard");
    let spec = d.spec.clone().unwrap();
    let pod_labels = spec.template.metadata.clone().unwrap().labels.unwrap();
    // A PodDisruptionBudget that keeps one replica through a drain, and lets one go.
    let pdb: PodDisruptionBudget = get(&base, "PodDisruptionBudget", "rearguard");
    assert_eq!(pdb.metadata.namespace, d.metadata.namespace);
    let budget = pdb.spec.unwrap();
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let Some(IntOrString::Int(min)) = budget.min_available else {
        panic!("minAvailable is a number: {:?}", budget.min_available)
    };
    let replicas = spec.replicas.unwrap();
    assert!(
        min >= 1 && min < replicas,
        "minAvailable {min} of {replicas}"
    );
    assert!(selects(
        budget
            .selector
            .as_ref()
            .and_then(|s| s.match_labels.as_ref()),
        &pod_labels
    ));
    assert_eq!(
        budget.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow")
    );
    // A Service on the listener: the container port the probes use.
    let svc: Service = get(&base, "Service", "rearguard");
    assert_eq!(svc.metadata.namespace, d.metadata.namespace);
    let svc_spec = svc.spec.unwrap();
    assert!(selects(svc_spec.selector.as_ref(), &pod_labels));
    let container = &spec.template.spec.as_ref().unwrap().containers[0];
    let container_port = container.ports.iter().flatten().next().unwrap();
    let port = &svc_spec.ports.unwrap()[0];
    assert_eq!(port.port, container_port.container_port);
    assert_eq!(
        port.target_port,
        Some(IntOrString::String(container_port.name.clone().unwrap()))
    );
    // RBAC only in namespaces: the watched one, and rearguard's own for the Lease.
    assert!(
        !base.keys().any(|(k, _, _)| k.starts_with("Cluster")),
        "{:?}",
        base.keys()
    );
    let role: Role = get(&base, "Role", "rearguard");
    let binding: RoleBinding = get(&base, "RoleBinding", "rearguard");
    assert_eq!(role.metadata.namespace, binding.metadata.namespace);
    assert_eq!(binding.role_ref.name, "rearguard");
    let sa: ServiceAccount = get(&base, "ServiceAccount", "rearguard");
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!(
        (Some(&subject.name), subject.namespace.as_ref()),
        (sa.metadata.name.as_ref(), sa.metadata.namespace.as_ref())
    );
}

#[test]
fn the_cluster_wide_overlay_swaps_the_watched_namespaces_role_for_the_cluster_role() {
    let base = render("base");
    let wide = render("overlays/cluster-wide");
    let ids = |m: &BTreeMap<Id, Value>| m.keys().cloned().collect::<BTreeSet<Id>>();
    let owned = |v: [&str; 3]| -> Id { (v[0].into(), v[1].into(), v[2].into()) };
    assert_eq!(
        ids(&base)
            .difference(&ids(&wide))
            .cloned()
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([
            owned(["Role", "payments", "rearguard"]),
            owned(["RoleBinding", "payments", "rearguard"]),
        ])
    );
    assert_eq!(
        ids(&wide)
            .difference(&ids(&base))
            .cloned()
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([
            owned(["ClusterRole", "", "rearguard-watcher"]),
            owned(["ClusterRoleBinding", "", "rearguard-watcher"]),
        ])
    );
    for (key, object) in &wide {
        if let Some(same) = base.get(key) {
            assert_eq!(object, same, "the overlay changed {key:?}");
        }
    }
    let binding: ClusterRoleBinding = get(&wide, "ClusterRoleBinding", "rearguard-watcher");
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("ClusterRole", "rearguard-watcher")
    );
    let sa: ServiceAccount = get(&wide, "ServiceAccount", "rearguard");
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (
            subjects[0].kind.as_str(),
            Some(&subjects[0].name),
            subjects[0].namespace.as_ref()
        ),
        (
            "ServiceAccount",
            sa.metadata.name.as_ref(),
            sa.metadata.namespace.as_ref()
        )
    );
}

#[test]
fn the_service_monitor_scrapes_metrics_on_the_services_port() {
    let rendered = render("components/service-monitor");
    let monitor: ServiceMonitor = get(&rendered, "ServiceMonitor", "rearguard");
    let svc: Service = get(&rendered, "Service", "rearguard");
    assert_eq!(monitor.metadata.namespace, svc.metadata.namespace);
    assert!(selects(
        monitor.spec.selector.match_labels.as_ref(),
        svc.metadata.labels.as_ref().unwrap()
    ));
    let port_names: Vec<String> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    for endpoint in &monitor.spec.endpoints {
        assert!(port_names.contains(&endpoint.port), "{port_names:?}");
        assert_eq!(endpoint.path, "/metrics");
    }
}

#[test]
fn every_rearguard_container_runs_the_image_scripts_image_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let version = env!("CARGO_PKG_VERSION");
    let script = std::fs::read_to_string(root.join("scripts/image")).unwrap();
    assert!(
        script.contains("\nimage=localhost/rearguard:${version}\n"),
        "scripts/image no longer tags localhost/rearguard:VERSION"
    );
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("\nARG REARGUARD_VERSION={version}\n")),
        "the Dockerfile's version label is not Cargo.toml's {version}"
    );
    let expected = format!("localhost/rearguard:{version}");
    let mut seen = 0;
    for dir in KUSTOMIZATIONS {
        for ((kind, _, name), object) in render(dir) {
            if kind != "Deployment" {
                continue;
            }
            let d: Deployment = typed(&object);
            let pod = d.spec.unwrap().template.spec.unwrap();
            for c in pod.containers.iter().filter(|c| c.name == "rearguard") {
                assert_eq!(c.image.as_deref(), Some(expected.as_str()), "{dir}: {name}");
                seen += 1;
            }
        }
    }
    assert_eq!(
        seen,
        KUSTOMIZATIONS.len(),
        "a rearguard container in each rendering"
    );
}

// ---------------------------------------------------------------------------------------
// RBAC: the Roles against what rearguard asks of the API server.
// ---------------------------------------------------------------------------------------

/// One RBAC permission: API group, resource (with `/subresource`), verb.
type Grant = (String, String, String);

fn grants(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

/// What RBAC checks for a request, or `None` for discovery and other paths that are not
/// resources (every authenticated client may read those).
fn grant_of(r: &Recorded) -> Option<Grant> {
    let parts: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        _ => rest,
    };
    let (resource, named) = match rest {
        [] => return None,
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub, ..] => (format!("{resource}/{sub}"), true),
    };
    let watch = r
        .query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (r.method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if watch => "watch",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (other, _) => panic!("unexpected method {other} to {}", r.path),
    };
    Some((group.to_owned(), resource, verb.to_owned()))
}

pub(crate) const NS: &str = "shop";
pub(crate) const NAME: &str = "web";

fn access(fake: &KubeFake) -> Access {
    Access {
        source: AccessSource::Kubeconfig {
            path: fake.kubeconfig(),
            context: None,
        },
        server: None,
    }
}

fn target(fake: &KubeFake) -> KubeDeploymentRef {
    KubeDeploymentRef {
        access: access(fake),
        namespace: NS.to_owned(),
        deployment: NAME.to_owned(),
    }
}

/// A Deployment at revision 2 with the ReplicaSets of revisions 1 and 2, and one pod.
pub(crate) fn seed(fake: &KubeFake) {
    let d = fake.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": NS,
                     "annotations": {"deployment.kubernetes.io/revision": "2"}},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "web:2"}]}}},
    }));
    let uid = d["metadata"]["uid"].as_str().unwrap().to_owned();
    for (revision, hash) in [("1", "aaa"), ("2", "bbb")] {
        fake.put(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
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
    fake.with(|s| {
        s.force(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-bbb-1", "namespace": NS, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:2"}]},
            "status": {"phase": "Running"},
        }))
    });
}

/// Makes the seeded Deployment's pod template (and its ReplicaSets') take its
/// environment from the ConfigMap and the Secret `web-config`, which it creates.
fn reference_config(fake: &KubeFake) {
    for kind in ["ConfigMap", "Secret"] {
        fake.put(json!({
            "apiVersion": "v1", "kind": kind,
            "metadata": {"name": "web-config", "namespace": NS},
            "data": {"MODE": "c2FmZQ=="},
        }));
    }
    let from =
        json!([{"configMapRef": {"name": "web-config"}}, {"secretRef": {"name": "web-config"}}]);
    let mut objects = vec![("deployments", NAME.to_owned())];
    objects.extend(["web-aaa", "web-bbb"].map(|n| ("replicasets", n.to_owned())));
    for (plural, name) in objects {
        let mut obj = fake.get(plural, NS, &name).expect("seeded");
        obj["spec"]["template"]["spec"]["containers"][0]["envFrom"] = from.clone();
        fake.put(obj);
    }
    // The deployment controller's status: the rollout of that template is complete.
    fake.with(|s| {
        let mut d = s.get("deployments", NS, NAME).expect("seeded");
        let generation = d["metadata"]["generation"].clone();
        d["status"] = json!({"observedGeneration": generation, "replicas": 3,
            "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3});
        s.force_status(d);
    });
}

/// Every kind of Kubernetes plan step, in an order that works on the seeded Deployment.
/// A new kind of step must be added here: the match below has no catch-all, so a new
/// variant does not compile until it is placed.
fn every_kube_step(fake: &KubeFake) -> Vec<ActionSpec> {
    let t = target(fake);
    let steps = vec![
        ActionSpec::KubeMarkBad(t.clone()),
        ActionSpec::KubePause(t.clone()),
        ActionSpec::KubeResume(t.clone()),
        ActionSpec::KubeRestart(t.clone()),
        ActionSpec::KubeScale(KubeScaleSpec {
            target: t.clone(),
            replicas: Replicas::Count(0),
        }),
        ActionSpec::KubeRolloutUndo(KubeRolloutUndoSpec {
            access: t.access.clone(),
            namespace: t.namespace.clone(),
            deployment: t.deployment.clone(),
            to_revision: ToRevision::Incident,
        }),
        ActionSpec::KubeRestoreConfig(KubeRestoreConfigSpec {
            target: t.clone(),
            revision: Some(2),
        }),
        ActionSpec::KubeScale(KubeScaleSpec {
            target: t.clone(),
            replicas: Replicas::Recorded,
        }),
        ActionSpec::KubeDeletePods(t.clone()),
        ActionSpec::KubeRolloutStatus(t.clone()),
    ];
    for step in &steps {
        match step {
            ActionSpec::KubeRolloutUndo(_)
            | ActionSpec::KubeRolloutStatus(_)
            | ActionSpec::KubePause(_)
            | ActionSpec::KubeResume(_)
            | ActionSpec::KubeScale(_)
            | ActionSpec::KubeRestart(_)
            | ActionSpec::KubeMarkBad(_)
            | ActionSpec::KubeRestoreConfig(_)
            | ActionSpec::KubeDeletePods(_) => {}
            ActionSpec::Exec(_)
            | ActionSpec::ReleaseSwitch(_)
            | ActionSpec::Http(_)
            | ActionSpec::RestoreConfigFiles(_) => {
                unreachable!("not a kubernetes step")
            }
        }
    }
    steps
}

/// Runs every Kubernetes source, plan step, the Events and leader election against
/// `fake`.
async fn run_everything(fake: &KubeFake) {
    let ctx = ActionContext {
        incident: "inc-rbac".to_owned(),
        target: "web".to_owned(),
        rule: "down".to_owned(),
        from_revision: Some("2".to_owned()),
        to_revision: Some("1".to_owned()),
        bad_revisions: vec!["2".to_owned()],
        attempt: 1,
    };
    // The snapshot of a baked revision's configuration (revision 2 references a
    // ConfigMap and a Secret), which kube_restore_config puts back after the undo.
    // The snapshot of an older revision is pruned (one revision's kept).
    reference_config(fake);
    use rearguard::action::kube_snapshot::{MANAGED_BY, REVISION, SNAPSHOT_OF};
    for kind in ["ConfigMap", "Secret"] {
        fake.put(json!({
            "apiVersion": "v1", "kind": kind,
            "metadata": {"name": "web-r1-web-config", "namespace": NS,
                         "labels": {MANAGED_BY: "rearguard", SNAPSHOT_OF: NAME, REVISION: "1"}},
            "data": {"MODE": "b2xk"},
        }));
    }
    let handle = rearguard::kube::Handle::new(&access(fake));
    let taken = rearguard::action::kube_snapshot::take(&target(fake), &handle, "2", 1).await;
    assert!(taken.is_ok(), "{taken:?}");
    // The bad revision's configuration, which the restore replaces.
    for plural in ["configmaps", "secrets"] {
        let mut obj = fake.get(plural, NS, "web-config").expect("created");
        obj["data"]["MODE"] = json!("YmFk");
        fake.put(obj);
    }
    for spec in every_kube_step(fake) {
        // rollout status waits for a controller the fake does not have: its reads are
        // what counts here, not its verdict.
        let timeout = match spec {
            ActionSpec::KubeRolloutStatus(_) => Duration::from_millis(500),
            _ => Duration::from_secs(10),
        };
        let out = Action::new(&spec, &rearguard::http::client())
            .run(&ctx, timeout)
            .await;
        if !matches!(spec, ActionSpec::KubeRolloutStatus(_)) {
            assert!(out.ok, "{}: {out:?}", spec.type_name());
        }
    }

    // The change observer: a read, then a watch that wakes on a change.
    let mut watcher = rearguard::source::kube_deployment::Watcher::new(&target(fake));
    // The fake has no controller: the template of revision 1 is what runs after the undo.
    assert_eq!(watcher.observe().await, Ok("1".to_owned()));
    let _ = tokio::time::timeout(Duration::from_millis(300), watcher.changed()).await;

    // A kube_pods signal: its list, then its watch.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let token = CancellationToken::new();
    let spec = KubePodsSpec {
        access: access(fake),
        namespace: NS.to_owned(),
        selector: "app=web".to_owned(),
        event: PodEvent::OomKilled,
    };
    let pods = tokio::spawn(rearguard::source::kube_pods::watch(
        spec,
        Duration::from_millis(100),
        Default::default(),
        tx,
        token.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a reading of the pods");
    crate::support::poll_until(Duration::from_secs(10), || {
        fake.requests()
            .iter()
            .any(|r| r.path.ends_with("/pods") && r.query.contains("watch=true"))
    })
    .await
    .expect("the pods are watched");
    token.cancel();
    let _ = pods.await;

    // An Event on the Deployment.
    let cfg = crate::daemon::load(&format!(
        r#"
[kubernetes]
kubeconfig = "{}"

[leader_election]
namespace = "kube-system"
identity = "rearguard-0"

[[target]]
name = "web"
change = {{ type = "kube_deployment", namespace = "{NS}", deployment = "{NAME}" }}
"#,
        fake.kubeconfig().display()
    ));
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let recorder = rearguard::kube::events::Recorder::start(&cfg, &tracker, stop.clone());
    recorder.record(0, "inc-rbac", Occasion::Opened, "web: incident opened");
    crate::support::poll_until(Duration::from_secs(10), || {
        !fake.list("events", Some(NS)).is_empty()
    })
    .await
    .expect("the event is posted");
    stop.cancel();
    tracker.close();
    tracker.wait().await;

    // Leader election: create the Lease, renew it, give it up, while a standby's watch
    // waits for the Lease to change.
    let settings = cfg.leader_election.as_ref().expect("configured above");
    let (elector, watch) = rearguard::leader::elector(settings).await.unwrap();
    let now = SystemTime::now();
    let term = match elector.step(now).await.unwrap() {
        rearguard::kube::lease::Role::Leader(term) => term,
        other => panic!("expected to lead, got {other:?}"),
    };
    let changed = tokio::spawn(async move { watch.changed().await });
    crate::support::poll_until(Duration::from_secs(10), || {
        fake.requests()
            .iter()
            .any(|r| r.path.ends_with("/leases") && r.query.contains("watch=true"))
    })
    .await
    .expect("the lease is watched");
    elector.step(now + Duration::from_secs(5)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), changed)
        .await
        .expect("the watch sees the renewal")
        .unwrap();
    elector
        .fence(&term, now + Duration::from_secs(6))
        .await
        .unwrap();
    elector
        .release(&term, now + Duration::from_secs(7))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_roles_grant_every_request_rearguard_makes_and_nothing_it_does_not() {
    let fake = Arc::new(KubeFake::start().await);
    seed(&fake);
    run_everything(&fake).await;

    let role_rules = |name: &str| {
        let roles: Vec<Role> = objects("role.yaml")
            .iter()
            .filter(|o| o["kind"] == "Role")
            .map(typed)
            .collect();
        let role = roles
            .into_iter()
            .find(|r| r.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no Role {name} in role.yaml"));
        grants(&role.rules.unwrap_or_default())
    };
    let watched = role_rules("rearguard");
    let election = role_rules("rearguard-leader-election");

    let mut used: BTreeMap<Grant, String> = BTreeMap::new();
    for r in fake.requests() {
        if let Some(g) = grant_of(&r) {
            used.entry(g)
                .or_insert_with(|| format!("{} {}?{}", r.method, r.path, r.query));
        }
    }
    // The run did exercise what matters (so this test can fail).
    for needed in [
        ("apps", "deployments", "patch"),
        ("apps", "deployments", "watch"),
        ("apps", "replicasets", "patch"),
        ("", "pods", "watch"),
        ("", "events", "create"),
        ("coordination.k8s.io", "leases", "update"),
    ] {
        let g = (needed.0.into(), needed.1.into(), needed.2.into());
        assert!(used.contains_key(&g), "the run never made {g:?}: {used:#?}");
    }
    let missing: Vec<String> = used
        .iter()
        .filter(|(g, _)| {
            let granted = if g.1 == "leases" { &election } else { &watched };
            !granted.contains(*g)
        })
        .map(|(g, example)| format!("{g:?}, e.g. {example}"))
        .collect();
    assert!(
        missing.is_empty(),
        "packaging/kubernetes/role.yaml does not grant:\n{}",
        missing.join("\n")
    );
    let unused: Vec<&Grant> = watched
        .iter()
        .chain(&election)
        .filter(|g| !used.contains_key(*g))
        .collect();
    assert!(
        unused.is_empty(),
        "role.yaml grants what no code uses (least privilege): {unused:?}"
    );

    // The ClusterRole variant grants exactly the watched namespace's Role.
    let cluster: ClusterRole = one("clusterrole.yaml", "ClusterRole");
    assert_eq!(grants(&cluster.rules.unwrap_or_default()), watched);
}
