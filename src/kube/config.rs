//! The configuration a Deployment's pods read: the ConfigMaps and Secrets its pod
//! template references (volumes, projected volume sources, `envFrom`, `env[].valueFrom`
//! of every container and init container), their content, and one content hash over all
//! of them, which changes when any of them does.
//!
//! It only reads. Secret data never leaves this module as text: it is hashed, compared
//! or copied as bytes, never formatted. A hash that covers Secret data (a Secret's
//! [`Content::hash`], [`config_hash`]) is unsalted and could be brute-forced for a
//! low-entropy value: it is never logged, nor written anywhere but on a Secret.

use std::collections::BTreeMap;

use ::kube::Api;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Secret};
use serde::Serialize;

use super::KubeError;

/// A kind of configuration object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    ConfigMap,
    Secret,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
        }
    }
}

/// A ConfigMap or Secret a pod template references. `optional` only when every
/// reference to it is optional: a pod starts without it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRef {
    pub kind: Kind,
    pub name: String,
    pub optional: bool,
}

/// The content of one object, as compared, hashed and snapshotted: a ConfigMap's `data`
/// and `binaryData`, a Secret's `type` and `data` (Secret data stays bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Content {
    pub data: BTreeMap<String, String>,
    pub binary: BTreeMap<String, Vec<u8>>,
    /// A Secret's type (`Opaque` when unset); `None` for a ConfigMap.
    pub secret_type: Option<String>,
}

impl Content {
    pub fn of_config_map(cm: &ConfigMap) -> Content {
        Content {
            data: cm.data.clone().unwrap_or_default(),
            binary: bytes(cm.binary_data.as_ref()),
            secret_type: None,
        }
    }

    /// A Secret's content; `stringData` is write-only and never read back, so it is
    /// folded into `data` as the API server would.
    pub fn of_secret(s: &Secret) -> Content {
        let mut binary = bytes(s.data.as_ref());
        for (k, v) in s.string_data.iter().flatten() {
            binary.insert(k.clone(), v.clone().into_bytes());
        }
        Content {
            data: BTreeMap::new(),
            binary,
            secret_type: Some(s.type_.clone().unwrap_or_else(|| "Opaque".to_owned())),
        }
    }

    /// The hex SHA-256 of the content.
    pub fn hash(&self) -> String {
        hex_sha256(&serde_json::to_vec(self).unwrap_or_default())
    }
}

fn bytes(map: Option<&BTreeMap<String, ByteString>>) -> BTreeMap<String, Vec<u8>> {
    map.iter()
        .flat_map(|m| m.iter())
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// A `kube_deployment` target's revision as the engine names it: the Deployment's
/// revision number and the generation of its configuration (`18+cfg.2`; `18` is
/// generation 0, the configuration first seen with revision 18). The steps that act on
/// a Deployment compare the first part, and snapshots are keyed by both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    pub deployment: i64,
    pub config: u32,
}

impl Revision {
    /// `18` or `18+cfg.2`; `None` when the first part is not a revision number.
    pub fn parse(text: &str) -> Option<Revision> {
        let (base, config) = crate::source::change::split_config(text.trim());
        let deployment = base.parse::<i64>().ok()?;
        Some(Revision { deployment, config })
    }

    /// Whether only the configuration differs between the two (the same Deployment
    /// revision).
    pub fn same_deployment(self, other: Revision) -> bool {
        self.deployment == other.deployment
    }
}

impl std::fmt::Display for Revision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::source::change::with_config(
            &self.deployment.to_string(),
            self.config,
        ))
    }
}

/// What one reference points at now: its content, or `None` when it does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub reference: ConfigRef,
    pub content: Option<Content>,
}

/// The ConfigMaps and Secrets `spec` references, sorted by kind and name, each once.
pub fn references(spec: &PodSpec) -> Vec<ConfigRef> {
    let mut found: BTreeMap<(Kind, String), bool> = BTreeMap::new();
    let mut add = |kind: Kind, name: &str, optional: Option<bool>| {
        if name.is_empty() {
            return;
        }
        let optional = optional.unwrap_or(false);
        found
            .entry((kind, name.to_owned()))
            .and_modify(|o| *o &= optional)
            .or_insert(optional);
    };
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            add(Kind::ConfigMap, &cm.name, cm.optional);
        }
        if let Some(s) = &v.secret {
            add(
                Kind::Secret,
                s.secret_name.as_deref().unwrap_or(""),
                s.optional,
            );
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                add(Kind::ConfigMap, &cm.name, cm.optional);
            }
            if let Some(s) = &source.secret {
                add(Kind::Secret, &s.name, s.optional);
            }
        }
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        for from in c.env_from.iter().flatten() {
            if let Some(cm) = &from.config_map_ref {
                add(Kind::ConfigMap, &cm.name, cm.optional);
            }
            if let Some(s) = &from.secret_ref {
                add(Kind::Secret, &s.name, s.optional);
            }
        }
        for env in c.env.iter().flatten() {
            let Some(from) = &env.value_from else {
                continue;
            };
            if let Some(k) = &from.config_map_key_ref {
                add(Kind::ConfigMap, &k.name, k.optional);
            }
            if let Some(k) = &from.secret_key_ref {
                add(Kind::Secret, &k.name, k.optional);
            }
        }
    }
    found
        .into_iter()
        .map(|((kind, name), optional)| ConfigRef {
            kind,
            name,
            optional,
        })
        .collect()
}

/// Reads every referenced object in `namespace`; a missing one is `content: None`,
/// whether or not the reference is optional.
pub async fn read(
    client: &::kube::Client,
    namespace: &str,
    refs: &[ConfigRef],
) -> Result<Vec<Observed>, KubeError> {
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        let content = match r.kind {
            Kind::ConfigMap => maps
                .get_opt(&r.name)
                .await?
                .map(|cm| Content::of_config_map(&cm)),
            Kind::Secret => secrets
                .get_opt(&r.name)
                .await?
                .map(|s| Content::of_secret(&s)),
        };
        out.push(Observed {
            reference: r.clone(),
            content,
        });
    }
    Ok(out)
}

/// One hash over the references and what they hold (a missing object counts as missing):
/// it changes when any referenced object's content does, or the set of references.
pub fn config_hash(observed: &[Observed]) -> String {
    let parts: Vec<(Kind, &str, Option<String>)> = observed
        .iter()
        .map(|o| {
            (
                o.reference.kind,
                o.reference.name.as_str(),
                o.content.as_ref().map(Content::hash),
            )
        })
        .collect();
    hex_sha256(&serde_json::to_vec(&parts).unwrap_or_default())
}

fn hex_sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn references_come_from_volumes_projections_env_from_and_value_from() {
        let s = spec(json!({
            "volumes": [
                {"name": "a", "configMap": {"name": "app-config"}},
                {"name": "b", "secret": {"secretName": "tls", "optional": true}},
                {"name": "c", "projected": {"sources": [
                    {"configMap": {"name": "extra", "optional": true}},
                    {"secret": {"name": "token"}},
                ]}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "db"}}]}],
            "containers": [{
                "name": "c",
                "envFrom": [{"configMapRef": {"name": "app-config", "optional": true}}],
                "env": [
                    {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "flags", "key": "x"}}},
                    {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "tls", "key": "y", "optional": true}}},
                    {"name": "Z", "value": "plain"},
                ],
            }],
        }));
        let refs = references(&s);
        let got: Vec<(Kind, &str, bool)> = refs
            .iter()
            .map(|r| (r.kind, r.name.as_str(), r.optional))
            .collect();
        assert_eq!(
            got,
            vec![
                // Required once is required: a pod does not start without it.
                (Kind::ConfigMap, "app-config", false),
                (Kind::ConfigMap, "extra", true),
                (Kind::ConfigMap, "flags", false),
                (Kind::Secret, "db", false),
                (Kind::Secret, "tls", true),
                (Kind::Secret, "token", false),
            ]
        );
    }

    #[test]
    fn the_hash_changes_with_any_content_and_counts_a_missing_object() {
        let cm = |v: &str| ConfigMap {
            data: Some([("k".to_owned(), v.to_owned())].into()),
            ..Default::default()
        };
        let r = ConfigRef {
            kind: Kind::ConfigMap,
            name: "app".into(),
            optional: true,
        };
        let with = |content: Option<Content>| {
            config_hash(&[Observed {
                reference: r.clone(),
                content,
            }])
        };
        let a = with(Some(Content::of_config_map(&cm("1"))));
        assert_eq!(a, with(Some(Content::of_config_map(&cm("1")))));
        assert_ne!(a, with(Some(Content::of_config_map(&cm("2")))));
        assert_ne!(a, with(None));
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn a_secrets_string_data_counts_as_its_data() {
        let with_data = Secret {
            data: Some([("p".to_owned(), ByteString(b"pw".to_vec()))].into()),
            ..Default::default()
        };
        let with_string = Secret {
            string_data: Some([("p".to_owned(), "pw".to_owned())].into()),
            ..Default::default()
        };
        assert_eq!(
            Content::of_secret(&with_data),
            Content::of_secret(&with_string)
        );
        assert_eq!(
            Content::of_secret(&with_data).secret_type.as_deref(),
            Some("Opaque")
        );
    }
}
