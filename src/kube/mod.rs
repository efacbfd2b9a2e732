//! What the Kubernetes pieces share: how rearguard reaches the cluster (`[kubernetes]`),
//! building the kube client from it, the errors of talking to the API server, and the
//! Deployment facts kubectl derives from ReplicaSets (revisions, the ReplicaSets a
//! Deployment controls, pod templates compared without `pod-template-hash`).
//!
//! This module reads; it never writes to the API. Writes belong to `action/`, except
//! rearguard's own records: its Lease (`lease.rs`) and its Events (`events.rs`).

pub mod config;
pub mod events;
pub mod lease;

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

/// The annotation that numbers a Deployment's revisions, on the Deployment and on each
/// of its ReplicaSets (`deployment.kubernetes.io/revision`).
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// The label the Deployment controller adds to a ReplicaSet's pod template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// The annotation rearguard puts on the ReplicaSet of a revision it rolled back from; a
/// revision so marked is never a rollback destination.
pub const BAD_ANNOTATION: &str = "rearguard.io/marked-bad";

/// How rearguard reaches the API server (`[kubernetes]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub source: AccessSource,
    /// Replaces the API server URL that the service account or kubeconfig names.
    pub server: Option<String>,
}

/// Where the credentials and the server's address come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AccessSource {
    /// As kubectl and client-go: `$KUBECONFIG` or `~/.kube/config` (with `context`, or
    /// the current context), else the pod's service account.
    #[default]
    Infer,
    /// The pod's service account (token and CA under
    /// `/var/run/secrets/kubernetes.io/serviceaccount`, `KUBERNETES_SERVICE_HOST`).
    InCluster,
    /// This kubeconfig file, with its current context unless `context` is set.
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
    },
}

/// Why a Kubernetes operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot configure the kubernetes client: {0}")]
    Config(String),
    /// The API server answered with a Status.
    #[error("the api server refused the request ({code} {reason}): {message}")]
    Api {
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer: connection, TLS or a response that could not be read.
    #[error("cannot reach the api server: {0}")]
    Transport(String),
}

impl KubeError {
    /// Whether the same request may succeed later: conflicts, throttling, server
    /// errors and transport failures.
    pub fn is_retryable(&self) -> bool {
        match self {
            KubeError::Config(_) => false,
            KubeError::Api { code, .. } => matches!(code, 409 | 429 | 500..=599),
            KubeError::Transport(_) => true,
        }
    }

    /// The HTTP status the API server answered with, when it answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A static label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            KubeError::Config(_) => "config",
            KubeError::Api { .. } => "api",
            KubeError::Transport(_) => "transport",
        }
    }
}

impl From<::kube::Error> for KubeError {
    fn from(e: ::kube::Error) -> KubeError {
        match e {
            ::kube::Error::Api(status) => KubeError::Api {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            },
            // An authentication failure's text can hold credentials: an exec plugin's
            // command with its environment (kubeconfig `exec.env`) and its whole output.
            ::kube::Error::Auth(_) => KubeError::Config(
                "cannot authenticate to the api server (exec plugin, token or auth provider failed); details withheld, as they can hold credentials".to_owned(),
            ),
            // The other variants describe the transport or a body that would not decode;
            // none carries a credential.
            other => KubeError::Transport(other.to_string()),
        }
    }
}

/// A client built on first use from `access`, then shared by clones.
#[derive(Clone)]
pub struct Handle {
    access: Access,
    client: std::sync::Arc<tokio::sync::OnceCell<::kube::Client>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl Handle {
    pub fn new(access: &Access) -> Handle {
        Handle {
            access: access.clone(),
            client: Default::default(),
        }
    }

    /// The client, built on the first call (reading the kubeconfig or service account).
    pub async fn client(&self) -> Result<::kube::Client, KubeError> {
        self.client
            .get_or_try_init(|| client(&self.access))
            .await
            .cloned()
    }
}

/// Why a step on a Deployment did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("deployment {0} not found")]
    NotFound(String),
    #[error(
        "deployment {deployment} changed while the step was writing it (resourceVersion {read} is no longer current); nothing was changed, and the step may be retried"
    )]
    Conflict { deployment: String, read: String },
    /// The state of the cluster forbids the step; the text says which and why.
    #[error("{0}")]
    Refused(String),
    /// Another object than the Deployment (a ConfigMap, a Secret) changed between the
    /// read and the conditional write.
    #[error(
        "{object} changed while the step was writing it (resourceVersion {read} is no longer current); it was not changed, and the step may be retried"
    )]
    ObjectConflict { object: String, read: String },
    /// The cluster is not there yet (a rollout still going); the text says what waits.
    #[error("{0}")]
    NotYet(String),
}

impl StepError {
    pub fn is_retryable(&self) -> bool {
        match self {
            StepError::Kube(e) => e.is_retryable(),
            StepError::Conflict { .. }
            | StepError::ObjectConflict { .. }
            | StepError::NotYet(_) => true,
            StepError::NotFound(_) | StepError::Refused(_) => false,
        }
    }

    /// A failed write to the Deployment `namespace/name` based on resourceVersion
    /// `read`: 409 (a stale resourceVersion) is [`StepError::Conflict`], and so is 422
    /// when the Deployment has changed since `read` (a JSON patch `test` that failed);
    /// a 422 on an unchanged Deployment is the API server's verdict on the object
    /// itself, reported as it is.
    pub async fn from_write(
        e: ::kube::Error,
        client: &::kube::Client,
        namespace: &str,
        name: &str,
        read: &str,
    ) -> StepError {
        let conflict = || StepError::Conflict {
            deployment: format!("{namespace}/{name}"),
            read: read.to_owned(),
        };
        match KubeError::from(e) {
            KubeError::Api { code: 409, .. } => conflict(),
            api @ KubeError::Api { code: 422, .. } => {
                match deployment(client, namespace, name).await {
                    Ok(d) if d.metadata.resource_version.as_deref() != Some(read) => conflict(),
                    Err(StepError::NotFound(_)) => {
                        StepError::NotFound(format!("{namespace}/{name}"))
                    }
                    _ => StepError::Kube(api),
                }
            }
            other => StepError::Kube(other),
        }
    }
}

/// The Deployment `namespace/name`, or [`StepError::NotFound`].
pub async fn deployment(
    client: &::kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Deployment, StepError> {
    let api: ::kube::Api<Deployment> = ::kube::Api::namespaced(client.clone(), namespace);
    api.get_opt(name)
        .await
        .map_err(KubeError::from)?
        .ok_or_else(|| StepError::NotFound(format!("{namespace}/{name}")))
}

/// Patches the Deployment `namespace/name`, read at resourceVersion `read` (which the
/// patch must test or carry, so that a Deployment changed in between is not
/// overwritten). A failure is explained as [`StepError::from_write`] does.
pub async fn patch_deployment<P: serde::Serialize + std::fmt::Debug>(
    client: &::kube::Client,
    namespace: &str,
    name: &str,
    read: &str,
    patch: &::kube::api::Patch<P>,
) -> Result<(), StepError> {
    let api: ::kube::Api<Deployment> = ::kube::Api::namespaced(client.clone(), namespace);
    match api
        .patch(name, &::kube::api::PatchParams::default(), patch)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(StepError::from_write(e, client, namespace, name, read).await),
    }
}

/// The ReplicaSets `deployment` controls, in the order the API server lists them.
pub async fn replica_sets(
    client: &::kube::Client,
    deployment: &Deployment,
) -> Result<Vec<ReplicaSet>, KubeError> {
    let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
    let api: ::kube::Api<ReplicaSet> = ::kube::Api::namespaced(client.clone(), &namespace);
    let selector = deployment
        .spec
        .as_ref()
        .map(|s| selector_text(&s.selector))
        .unwrap_or_default();
    let listed = api
        .list(&::kube::api::ListParams::default().labels(&selector))
        .await?;
    Ok(controlled(deployment, &listed.items)
        .into_iter()
        .cloned()
        .collect())
}

/// A kube client for `access`. It connects lazily: this fails only on configuration
/// (a kubeconfig that cannot be read, no service account, a bad server URL).
pub async fn client(access: &Access) -> Result<::kube::Client, KubeError> {
    let config_error = |e: &dyn std::fmt::Display| KubeError::Config(withhold_yaml(e.to_string()));
    let mut config = match &access.source {
        AccessSource::Infer => ::kube::Config::infer()
            .await
            .map_err(|e| config_error(&e))?,
        AccessSource::InCluster => ::kube::Config::incluster().map_err(|e| config_error(&e))?,
        AccessSource::Kubeconfig { path, context } => {
            let kubeconfig = ::kube::config::Kubeconfig::read_from(path).map_err(|e| {
                KubeError::Config(withhold_yaml(format!(
                    "reading kubeconfig {}: {e}",
                    path.display()
                )))
            })?;
            let options = ::kube::config::KubeConfigOptions {
                context: context.clone(),
                ..Default::default()
            };
            ::kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| config_error(&e))?
        }
    };
    // A hung API server must become an error, never a quiet wait: no read waits longer
    // than the longest watch the server is asked to hold open (290 s) plus a margin.
    config.connect_timeout = Some(std::time::Duration::from_secs(10));
    config.read_timeout = Some(std::time::Duration::from_secs(330));
    config.write_timeout = Some(std::time::Duration::from_secs(30));
    if let Some(server) = &access.server {
        config.cluster_url = server
            .parse()
            .map_err(|e| KubeError::Config(format!("server {server:?} is not a URL: {e}")))?;
    }
    ::kube::Client::try_from(config).map_err(|e| config_error(&e))
}

/// The text of a configuration error without what the YAML parser said: its message
/// may quote the offending line of a kubeconfig, which can hold a token.
fn withhold_yaml(text: String) -> String {
    const PARSE: &str = "failed to parse kubeconfig YAML";
    match text.find(PARSE) {
        Some(at) => format!(
            "{}{PARSE} (the parser's detail is not shown: a kubeconfig holds credentials)",
            &text[..at]
        ),
        None => text,
    }
}

/// A Deployment's revision as kubectl reads it from the revision annotation: 0 without
/// the annotation, `None` when it is not a number.
pub fn revision(annotations: Option<&std::collections::BTreeMap<String, String>>) -> Option<i64> {
    match annotations.and_then(|a| a.get(REVISION_ANNOTATION)) {
        None => Some(0),
        Some(text) => text.parse().ok(),
    }
}

/// Checks a label selector as `kubectl -l` takes it (`app=web,tier in (a,b),!canary`):
/// `Err` says what is wrong.
pub fn check_selector(text: &str) -> Result<(), String> {
    let key_ok = |k: &str| {
        let name = k.rsplit('/').next().unwrap_or("");
        !name.is_empty()
            && name.len() <= 63
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    };
    let value_ok = |v: &str| {
        v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if text.trim().is_empty() {
        return Err("is empty: it would select every pod of the namespace".to_owned());
    }
    let mut depth = 0i32;
    let mut terms = vec![String::new()];
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            terms.push(String::new());
        } else if let Some(t) = terms.last_mut() {
            t.push(c);
        }
    }
    for term in terms.iter().map(|t| t.trim()) {
        let bad = || Err(format!("{term:?} is not a label requirement"));
        let ok = if let Some(k) = term.strip_prefix('!') {
            key_ok(k.trim())
        } else if let Some((k, v)) = term
            .split_once("!=")
            .or_else(|| term.split_once("=="))
            .or_else(|| term.split_once('='))
        {
            key_ok(k.trim()) && value_ok(v.trim())
        } else if let Some((k, set)) = term
            .split_once(" notin ")
            .or_else(|| term.split_once(" in "))
        {
            let inner = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'));
            key_ok(k.trim()) && inner.is_some_and(|i| i.split(',').all(|v| value_ok(v.trim())))
        } else {
            key_ok(term)
        };
        if !ok {
            return bad();
        }
    }
    Ok(())
}

/// The label selector as the list parameter `labelSelector` writes it.
pub fn selector_text(selector: &LabelSelector) -> String {
    let mut terms = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        terms.push(format!("{key}={value}"));
    }
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.clone().unwrap_or_default().join(",");
        terms.push(match expr.operator.as_str() {
            "In" => format!("{} in ({values})", expr.key),
            "NotIn" => format!("{} notin ({values})", expr.key),
            "Exists" => expr.key.clone(),
            _ => format!("!{}", expr.key),
        });
    }
    terms.join(",")
}

/// The ReplicaSets among `candidates` that `deployment` controls (its UID in their
/// controller reference), in the order given, as kubectl's `GetAllReplicaSets`.
pub fn controlled<'a>(
    deployment: &Deployment,
    candidates: &'a [ReplicaSet],
) -> Vec<&'a ReplicaSet> {
    let Some(uid) = deployment.metadata.uid.as_deref() else {
        return Vec::new();
    };
    candidates
        .iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .collect()
}

/// Whether two pod templates are the same but for the `pod-template-hash` label, with
/// empty and missing values counted equal (kubectl's `equalIgnoreHash`).
pub fn same_template(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let normal = |t: &PodTemplateSpec| {
        let mut t = t.clone();
        if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
            labels.remove(POD_TEMPLATE_HASH);
        }
        let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
        prune_empty(&mut v);
        v
    };
    normal(a) == normal(b)
}

/// Removes nulls, empty objects and empty arrays, recursively.
fn prune_empty(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for value in map.values_mut() {
                prune_empty(value);
            }
            map.retain(|_, value| !is_empty(value));
        }
        Value::Array(items) => items.iter_mut().for_each(prune_empty),
        _ => {}
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn a_missing_revision_annotation_is_revision_zero_and_garbage_is_none() {
        let mut a = std::collections::BTreeMap::new();
        assert_eq!(revision(Some(&a)), Some(0));
        a.insert(REVISION_ANNOTATION.to_owned(), "7".to_owned());
        assert_eq!(revision(Some(&a)), Some(7));
        a.insert(REVISION_ANNOTATION.to_owned(), "seven".to_owned());
        assert_eq!(revision(Some(&a)), None);
    }

    #[tokio::test]
    async fn a_kubeconfig_that_is_not_yaml_is_reported_without_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nusers:\n- name: x\n  user:\n    token: s3cr3t-t0ken: [unclosed\n",
        )
        .unwrap();
        let access = Access {
            source: AccessSource::Kubeconfig {
                path: path.clone(),
                context: None,
            },
            server: None,
        };
        let error = client(&access)
            .await
            .err()
            .expect("not a kubeconfig")
            .to_string();
        assert!(!error.contains("s3cr3t"), "{error}");
        assert!(error.contains("failed to parse kubeconfig YAML"), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");
    }

    #[test]
    fn label_selectors_are_checked_as_kubectl_takes_them() {
        for good in [
            "app=web",
            "app.kubernetes.io/name==web,tier!=db",
            "tier in (web, api),!canary,track",
            "env notin (dev)",
        ] {
            assert_eq!(check_selector(good), Ok(()), "{good}");
        }
        for bad in ["", "app=web,", "app in web", "app=we b", "=web", "app=(x)"] {
            assert!(check_selector(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn selectors_are_written_as_the_list_parameter() {
        let selector = LabelSelector {
            match_labels: Some([("app".to_owned(), "shop".to_owned())].into()),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["web".into(), "api".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert_eq!(
            selector_text(&selector),
            "app=shop,tier in (web,api),!canary"
        );
    }

    #[test]
    fn templates_differing_only_in_the_hash_label_or_empty_values_are_the_same() {
        let a: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "shop", "pod-template-hash": "abc"}},
            "spec": {"containers": [{"name": "c", "image": "shop:1", "env": []}]}
        }))
        .unwrap();
        let b: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "shop"}, "annotations": {}},
            "spec": {"containers": [{"name": "c", "image": "shop:1"}]}
        }))
        .unwrap();
        assert!(same_template(&a, &b));
        let c: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "shop"}},
            "spec": {"containers": [{"name": "c", "image": "shop:2"}]}
        }))
        .unwrap();
        assert!(!same_template(&a, &c));
    }
}
