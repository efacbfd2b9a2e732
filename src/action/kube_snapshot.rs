//! Snapshots of a Deployment's configuration in its cluster: the ConfigMaps and Secrets
//! its pod template references, copied when a revision has baked (the engine's
//! `Effect::Baked`), as objects of the same kind in the Deployment's namespace, so that
//! `kube_restore_config` (and a new leader, or a person with kubectl) can put them back.
//!
//! Snapshots are keyed by the full revision the engine names (`18`, `18+cfg.2`: see
//! [`Revision`]), so that the known-good configuration of a configuration-only change
//! can be restored. A snapshot object is named `<deployment>-r<revision>-<original>`, or
//! `<deployment>-r<revision>c<generation>-<original>` for a configuration generation
//! (shortened with a hash when too long), labelled `app.kubernetes.io/managed-by=rearguard`,
//! `rearguard.io/snapshot-of=<deployment>` (shortened with a hash past 63 characters,
//! the longest label value; the full name is in the annotation of the same key, which
//! selection compares), `rearguard.io/revision=<n>` and, for a generation,
//! `rearguard.io/config-generation=<g>` (none is generation 0), and annotated with the
//! original's name, its content hash, and the number of objects in the set
//! (`rearguard.io/objects`): the objects are created one at a time, so a `take` that
//! fails partway leaves fewer, which `kube_restore_config` refuses to restore. The name
//! is deterministic: a second replica, a restart or a retry creating the same snapshot
//! meets 409 AlreadyExists, which with the same content is success, so taking it again
//! completes a partial set. Only the newest `keep` revisions' snapshots are kept.
//!
//! Secret data is copied as bytes and never formatted into an output, an error or a log.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ::kube::Api;
use ::kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use crate::config::KubeDeploymentRef;
use crate::kube::config::{self as kconfig, Content, Kind, Revision};
use crate::kube::{Handle, KubeError, StepError};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const SNAPSHOT_OF: &str = "rearguard.io/snapshot-of";
pub const REVISION: &str = "rearguard.io/revision";
/// The configuration generation of a snapshot's revision; absent for generation 0.
pub const CONFIG_GENERATION: &str = "rearguard.io/config-generation";
pub const ORIGINAL: &str = "rearguard.io/original-name";
pub const CONTENT_HASH: &str = "rearguard.io/content-hash";
/// How many objects the snapshot of one revision holds, on each of them: a set with
/// fewer objects than this is incomplete (a `take` that failed partway) and is never
/// restored.
pub const OBJECTS: &str = "rearguard.io/objects";

/// The first wait before a failed snapshot is taken again; it doubles after each
/// failure up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
/// The longest wait between two tries of a failed snapshot.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// How long a failed snapshot is tried again, in waits; then it is given up.
pub const RETRY_FOR: Duration = Duration::from_secs(3600);

/// The waits between the tries of a snapshot that keeps failing: 10 s doubling up to
/// 5 min, until they add up to an hour.
pub fn retry_waits() -> impl Iterator<Item = Duration> {
    let mut wait = RETRY_FIRST;
    let mut total = Duration::ZERO;
    std::iter::from_fn(move || {
        if total >= RETRY_FOR {
            return None;
        }
        let this = wait.min(RETRY_FOR - total);
        total += this;
        wait = (wait * 2).min(RETRY_MAX);
        Some(this)
    })
}

/// The longest name of a ConfigMap or Secret (a DNS subdomain).
const MAX_NAME: usize = 253;

/// The name of the snapshot of `original` for `revision` of `deployment`.
pub fn snapshot_name(deployment: &str, revision: Revision, original: &str) -> String {
    let Revision {
        deployment: n,
        config,
    } = revision;
    let name = if config == 0 {
        format!("{deployment}-r{n}-{original}")
    } else {
        format!("{deployment}-r{n}c{config}-{original}")
    };
    if name.len() <= MAX_NAME {
        return name;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let short: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let head = name[..MAX_NAME - 13].trim_end_matches(['-', '.']);
    format!("{head}-{short}")
}

/// The longest label value.
const MAX_LABEL: usize = 63;

/// The `rearguard.io/snapshot-of` label value for `deployment`: its name when it fits
/// a label value (63 characters), else its first 52 characters and 10 hex digits of
/// its SHA-256. The full name is in the annotation of the same key, which [`list`]
/// compares, so a shortened label never selects another Deployment's snapshots.
pub fn label_value(deployment: &str) -> String {
    if deployment.len() <= MAX_LABEL {
        return deployment.to_owned();
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, deployment.as_bytes());
    let short: String = digest.as_ref()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    // A label value begins and ends with an alphanumeric character.
    let head = deployment[..MAX_LABEL - 11].trim_end_matches(['-', '.']);
    format!("{head}-{short}")
}

/// The label selector of the snapshots of `deployment`, of one Deployment revision (all
/// its configuration generations) or all.
fn selector(deployment: &str, revision: Option<Revision>) -> String {
    let mut s = format!(
        "{MANAGED_BY}=rearguard,{SNAPSHOT_OF}={}",
        label_value(deployment)
    );
    if let Some(r) = revision {
        s.push_str(&format!(",{REVISION}={}", r.deployment));
    }
    s
}

/// Takes the snapshot of `revision` of the target's Deployment, then deletes the
/// snapshots of all but the newest `keep` revisions. Refuses when the Deployment has
/// moved to another revision since, or a required ConfigMap or Secret is missing (an
/// incomplete snapshot would restore a configuration that never ran).
pub async fn take(
    target: &KubeDeploymentRef,
    handle: &Handle,
    revision: &str,
    keep: u32,
) -> Result<String, StepError> {
    let client = handle.client().await?;
    let (ns, name) = (&target.namespace, &target.deployment);
    let shown = format!("{ns}/{name}");
    let Some(number) = Revision::parse(revision) else {
        return Err(StepError::Refused(format!(
            "revision {revision:?} of deployment {shown} is not a revision number: no snapshot"
        )));
    };
    let d = crate::kube::deployment(&client, ns, name).await?;
    let sets = crate::kube::replica_sets(&client, &d).await?;
    let current =
        crate::source::kube_deployment::revision_of(&d, &sets).map_err(StepError::Refused)?;
    // The configuration generation is the change observer's: the Deployment's own
    // revision is what can be checked here.
    if current != number.deployment.to_string() {
        return Err(StepError::Refused(format!(
            "deployment {shown} is at revision {current}, no longer {revision}: its configuration is not snapshotted as revision {revision}'s"
        )));
    }
    // Healthy signals while old pods still serve say nothing of the new revision's
    // configuration: only a finished rollout is snapshotted.
    match super::kube_rollout_status::rollout(&d) {
        super::kube_rollout_status::Rollout::Done(_) => {}
        super::kube_rollout_status::Rollout::Waiting(why)
        | super::kube_rollout_status::Rollout::Failed(why) => {
            return Err(StepError::NotYet(format!(
                "the rollout of revision {revision} of deployment {shown} is not complete ({why}): no snapshot yet"
            )));
        }
    }
    let spec = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .unwrap_or_default();
    let observed = kconfig::read(&client, ns, &kconfig::references(&spec)).await?;
    if let Some(missing) = observed
        .iter()
        .find(|o| o.content.is_none() && !o.reference.optional)
    {
        return Err(StepError::Refused(format!(
            "{} {ns}/{} that revision {revision} of deployment {shown} requires is missing: no snapshot taken",
            missing.reference.kind.name(),
            missing.reference.name
        )));
    }
    let objects = observed.iter().filter(|o| o.content.is_some()).count();
    let (mut created, mut existing) = (0, 0);
    for o in &observed {
        let Some(content) = &o.content else {
            continue;
        };
        let mut labels = BTreeMap::from([
            (MANAGED_BY.to_owned(), "rearguard".to_owned()),
            (SNAPSHOT_OF.to_owned(), label_value(name)),
            (REVISION.to_owned(), number.deployment.to_string()),
        ]);
        if number.config > 0 {
            labels.insert(CONFIG_GENERATION.to_owned(), number.config.to_string());
        }
        let meta = ObjectMeta {
            name: Some(snapshot_name(name, number, &o.reference.name)),
            namespace: Some(ns.clone()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (SNAPSHOT_OF.to_owned(), name.clone()),
                (ORIGINAL.to_owned(), o.reference.name.clone()),
                (CONTENT_HASH.to_owned(), content.hash()),
                (OBJECTS.to_owned(), objects.to_string()),
            ])),
            ..Default::default()
        };
        if create(&client, ns, o.reference.kind, meta, content).await? {
            created += 1;
        } else {
            existing += 1;
        }
    }
    let pruned = prune(&client, ns, name, keep).await?;
    Ok(format!(
        "snapshot of revision {revision} of deployment {shown}: {created} objects created, {existing} already there, {pruned} of older revisions deleted"
    ))
}

/// Creates one snapshot object: `true` when created, `false` when an identical one was
/// already there (another replica, or this one before a restart).
async fn create(
    client: &::kube::Client,
    ns: &str,
    kind: Kind,
    meta: ObjectMeta,
    content: &Content,
) -> Result<bool, StepError> {
    let name = meta.name.clone().unwrap_or_default();
    let pp = PostParams::default();
    let result = match kind {
        Kind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            api.create(&pp, &config_map(meta.clone(), content))
                .await
                .map(|_| ())
        }
        Kind::Secret => {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            api.create(&pp, &secret(meta.clone(), content))
                .await
                .map(|_| ())
        }
    };
    match result.map_err(KubeError::from) {
        Ok(()) => Ok(true),
        Err(KubeError::Api { code: 409, .. }) => {
            let there = read_content(client, ns, kind, &name).await?;
            if let Some((there, there_meta)) = there.as_ref()
                && there == content
            {
                annotate(client, ns, kind, there_meta, &meta, content).await?;
                Ok(false)
            } else {
                Err(StepError::Refused(format!(
                    "{} {ns}/{name} already exists with other content: the snapshot is left as it is",
                    kind.name()
                )))
            }
        }
        Err(e) => Err(e.into()),
    }
}

async fn read_content(
    client: &::kube::Client,
    ns: &str,
    kind: Kind,
    name: &str,
) -> Result<Option<(Content, ObjectMeta)>, KubeError> {
    Ok(match kind {
        Kind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|c| (Content::of_config_map(&c), c.metadata)),
        Kind::Secret => Api::<Secret>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await?
            .map(|s| (Content::of_secret(&s), s.metadata)),
    })
}

/// Gives a snapshot object that is already there with the right content the
/// annotations `wanted` has and it lacks (one taken by a rearguard that did not write
/// the set's size or the full Deployment name), by an update conditional on the
/// version read; nothing is written when it has them all.
async fn annotate(
    client: &::kube::Client,
    ns: &str,
    kind: Kind,
    there: &ObjectMeta,
    wanted: &ObjectMeta,
    content: &Content,
) -> Result<(), StepError> {
    let mut annotations = there.annotations.clone().unwrap_or_default();
    let before = annotations.clone();
    for key in [OBJECTS, SNAPSHOT_OF] {
        if let Some(v) = wanted.annotations.as_ref().and_then(|a| a.get(key)) {
            annotations.insert(key.to_owned(), v.clone());
        }
    }
    if annotations == before {
        return Ok(());
    }
    let name = there.name.clone().unwrap_or_default();
    let read = there.resource_version.clone().unwrap_or_default();
    let mut meta = there.clone();
    meta.annotations = Some(annotations);
    let pp = PostParams::default();
    // The content is the same: the object written back is the one read (its
    // resourceVersion in `meta` makes the update conditional) with the annotations.
    let result = match kind {
        Kind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .replace(&name, &pp, &config_map(meta, content))
            .await
            .map(|_| ()),
        Kind::Secret => Api::<Secret>::namespaced(client.clone(), ns)
            .replace(&name, &pp, &secret(meta, content))
            .await
            .map(|_| ()),
    };
    match result.map_err(KubeError::from) {
        Ok(()) => Ok(()),
        Err(KubeError::Api { code: 409, .. }) => Err(conflict(kind, ns, &name, &read)),
        Err(e) => Err(e.into()),
    }
}

fn conflict(kind: Kind, ns: &str, name: &str, read: &str) -> StepError {
    StepError::ObjectConflict {
        object: format!("{} {ns}/{name}", kind.name()),
        read: read.to_owned(),
    }
}

/// A ConfigMap with `meta` holding `content`.
pub fn config_map(meta: ObjectMeta, content: &Content) -> ConfigMap {
    ConfigMap {
        metadata: meta,
        data: Some(content.data.clone()),
        binary_data: (!content.binary.is_empty()).then(|| byte_strings(&content.binary)),
        ..Default::default()
    }
}

/// A Secret with `meta` holding `content`, of the same type.
pub fn secret(meta: ObjectMeta, content: &Content) -> Secret {
    Secret {
        metadata: meta,
        data: Some(byte_strings(&content.binary)),
        type_: content.secret_type.clone(),
        ..Default::default()
    }
}

pub fn byte_strings(map: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, ByteString> {
    map.iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect()
}

/// A snapshot object found on the cluster.
#[derive(Debug, Clone)]
pub struct Found {
    pub kind: Kind,
    /// The snapshot's own name.
    pub name: String,
    /// The name of the object it copies.
    pub original: Option<String>,
    /// The revision it is of (its labels); `None` when they are not numbers.
    pub revision: Option<Revision>,
    /// The size of the set it belongs to (its `rearguard.io/objects` annotation), when
    /// present and a number.
    pub objects: Option<usize>,
    pub content: Content,
}

/// Checks that `found`, the snapshot objects of one revision, are the whole set its
/// `take` wrote: every object says how many there are, they agree, and that many are
/// here. `shown` names the Deployment in the error.
pub fn complete(found: &[Found], revision: Revision, shown: &str) -> Result<(), String> {
    let sizes: BTreeSet<Option<usize>> = found.iter().map(|f| f.objects).collect();
    let names = || {
        let mut n: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        n.sort_unstable();
        n.join(", ")
    };
    match sizes.iter().collect::<Vec<_>>().as_slice() {
        [Some(n)] if *n == found.len() => Ok(()),
        [Some(n)] => Err(format!(
            "the snapshot of revision {revision} of deployment {shown} is incomplete: {} of its {n} objects are there ({}); a snapshot that failed partway is completed when the revision is snapshotted again",
            found.len(),
            names()
        )),
        _ => Err(format!(
            "the snapshot of revision {revision} of deployment {shown} cannot be checked for completeness: its objects ({}) do not all carry the same {OBJECTS} annotation (taken by an older rearguard, or edited)",
            names()
        )),
    }
}

/// The snapshot objects of `deployment`, of one revision (`18+cfg.2`: that generation
/// only) or of all.
pub async fn list(
    client: &::kube::Client,
    ns: &str,
    deployment: &str,
    revision: Option<Revision>,
) -> Result<Vec<Found>, KubeError> {
    let lp = ListParams::default().labels(&selector(deployment, revision));
    let found = |kind: Kind, meta: &ObjectMeta, content: Content| Found {
        kind,
        name: meta.name.clone().unwrap_or_default(),
        original: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ORIGINAL))
            .cloned(),
        revision: snapshot_revision(meta),
        objects: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(OBJECTS))
            .and_then(|n| n.parse().ok()),
        content,
    };
    // The label may be shortened: only the annotation names the Deployment exactly. A
    // snapshot without it (taken before it was written) has the full name as label.
    let ours = |meta: &ObjectMeta| match meta.annotations.as_ref().and_then(|a| a.get(SNAPSHOT_OF))
    {
        Some(full) => full == deployment,
        None => {
            meta.labels.as_ref().and_then(|l| l.get(SNAPSHOT_OF)) == Some(&deployment.to_owned())
        }
    };
    let ours = |meta: &ObjectMeta| {
        ours(meta) && revision.is_none_or(|r| snapshot_revision(meta) == Some(r))
    };
    let mut out = Vec::new();
    for cm in Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .into_iter()
        .filter(|cm| ours(&cm.metadata))
    {
        out.push(found(
            Kind::ConfigMap,
            &cm.metadata,
            Content::of_config_map(&cm),
        ));
    }
    for s in Api::<Secret>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .into_iter()
        .filter(|s| ours(&s.metadata))
    {
        out.push(found(Kind::Secret, &s.metadata, Content::of_secret(&s)));
    }
    Ok(out)
}

/// The revision a snapshot object is of, from its labels (no generation label:
/// generation 0, as every snapshot taken before generations were).
fn snapshot_revision(meta: &ObjectMeta) -> Option<Revision> {
    let labels = meta.labels.as_ref()?;
    let deployment = labels.get(REVISION)?.parse().ok()?;
    let config = match labels.get(CONFIG_GENERATION) {
        None => 0,
        Some(g) => g.parse().ok()?,
    };
    Some(Revision { deployment, config })
}

/// Deletes the snapshots of every revision of `deployment` but the newest `keep`; how
/// many objects it deleted.
async fn prune(
    client: &::kube::Client,
    ns: &str,
    deployment: &str,
    keep: u32,
) -> Result<usize, KubeError> {
    let all = list(client, ns, deployment, None).await?;
    let revisions: BTreeSet<Revision> = all.iter().filter_map(|f| f.revision).collect();
    let kept: BTreeSet<Revision> = revisions
        .iter()
        .rev()
        .take(keep as usize)
        .copied()
        .collect();
    let mut deleted = 0;
    for f in all
        .iter()
        .filter(|f| f.revision.is_some_and(|r| !kept.contains(&r)))
    {
        let dp = DeleteParams::default();
        let result = match f.kind {
            Kind::ConfigMap => Api::<ConfigMap>::namespaced(client.clone(), ns)
                .delete(&f.name, &dp)
                .await
                .map(|_| ()),
            Kind::Secret => Api::<Secret>::namespaced(client.clone(), ns)
                .delete(&f.name, &dp)
                .await
                .map(|_| ()),
        };
        match result.map_err(KubeError::from) {
            Ok(()) => deleted += 1,
            // Another replica pruned it first.
            Err(KubeError::Api { code: 404, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_ten_seconds_doubling_to_five_minutes_for_an_hour() {
        let waits: Vec<u64> = retry_waits().map(|w| w.as_secs()).collect();
        assert_eq!(waits[..7], [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(waits.iter().sum::<u64>(), 3600);
        assert!(waits.iter().all(|w| *w <= 300), "{waits:?}");
    }

    #[test]
    fn a_long_deployment_name_is_shortened_to_a_valid_label_value() {
        assert_eq!(label_value("web"), "web");
        let fits = "a".repeat(63);
        assert_eq!(label_value(&fits), fits);
        let long = format!("{}-x", "a".repeat(70));
        let other = format!("{}-y", "a".repeat(70));
        let label = label_value(&long);
        assert_eq!(label.len(), 63, "{label}");
        assert!(label.starts_with(&"a".repeat(52)), "{label}");
        assert!(label.chars().last().unwrap().is_ascii_alphanumeric());
        assert_eq!(label, label_value(&long));
        assert_ne!(label, label_value(&other));
        // A name cut at a dash does not end the label with it.
        let dashed = format!("{}-{}", "b".repeat(51), "c".repeat(20));
        assert!(
            !label_value(&dashed).contains("--"),
            "{}",
            label_value(&dashed)
        );
    }

    #[test]
    fn snapshot_names_are_deterministic_and_fit_a_dns_subdomain() {
        let r = |text: &str| Revision::parse(text).unwrap();
        assert_eq!(
            snapshot_name("web", r("3"), "web-config"),
            "web-r3-web-config"
        );
        assert_eq!(
            snapshot_name("web", r("3+cfg.2"), "web-config"),
            "web-r3c2-web-config"
        );
        let long = "x".repeat(250);
        let a = snapshot_name("web", r("3"), &long);
        assert_eq!(a, snapshot_name("web", r("3"), &long));
        assert!(a.len() <= MAX_NAME, "{}", a.len());
        assert_ne!(a, snapshot_name("web", r("4"), &long));
        assert_ne!(a, snapshot_name("web", r("3+cfg.1"), &long));
    }
}
