//! A fake Kubernetes API server for the tests: real HTTP and JSON on loopback, good
//! enough for the real `kubectl` and for rearguard's kube client.
//!
//! It serves discovery (`/version`, `/api`, `/apis`, each group version's resource list),
//! and the resources rearguard touches: core/v1 namespaces, pods, events, configmaps and
//! secrets, apps/v1 deployments and replicasets (with their `status` and `scale`
//! subresources), coordination.k8s.io/v1 leases. Every resource supports list (label and
//! field selectors, `limit` and `continue`), get, create, update, delete (with
//! preconditions), watch (chunked JSON lines from a `resourceVersion`, `410 Expired` for
//! one that was compacted away, `sendInitialEvents`), and patch: JSON patch (RFC 6902,
//! through the json-patch crate; a failed `test` op is a 422 as in the apiserver), merge
//! patch (RFC 7386) and the strategic merge patch kubectl sends (maps merged, lists merged
//! by their patch merge key, `$patch` and `$setElementOrder` directives).
//!
//! Like the apiserver, it stores typed objects: every write is decoded into the
//! k8s-openapi type and encoded again, so nulls and unknown fields are dropped and a body
//! that is not a valid object is a 400. Resource versions come from one counter, like
//! etcd's revision. A write that carries a `metadata.resourceVersion` other than the
//! stored one is a 409 Conflict with the apiserver's Status.
//!
//! What it does not do: no controllers run (a Deployment's ReplicaSets, revisions and
//! status change only when a test writes them), no defaulting, no admission, no
//! managedFields, no authentication (it records the Authorization header it got), no
//! server-side apply (415). It speaks JSON only: a protobuf body is refused with 415, so
//! kubectl's generator commands (`kubectl create configmap`, which send protobuf) fail
//! against it; `kubectl create -f` sends JSON and works. Its OpenAPI v3 documents hold
//! only what kubectl reads to choose server-side validation (`fieldValidation`, which
//! the fake accepts and does not enforce: unknown fields are dropped); there is no
//! OpenAPI v2, so kubectl's client-side validation (of a `List`) cannot run.
//!
//! Tests seed and read state directly (`put`, `get`, `list`), see every request it served
//! (`requests`), and can inject a failure or a concurrent write before a request
//! (`inject`). `kubectl` runs the real binary against it with a kubeconfig in a temporary
//! directory.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// How many watch events are kept for watches that resume from a resource version.
const EVENT_LOG: usize = 10_000;

/// One kind of object the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Subresources served besides the object itself.
    pub subresources: &'static [&'static str],
}

impl Resource {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, `pods`: how the apiserver names it in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether `generation` counts spec changes.
    fn has_generation(&self) -> bool {
        matches!(self.kind, "Deployment" | "ReplicaSet")
    }

    /// Whether `status` is written only through the status subresource.
    fn has_status_subresource(&self) -> bool {
        self.subresources.contains(&"status")
    }
}

pub const RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        short_names: &["ns"],
        subresources: &[],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        short_names: &["po"],
        subresources: &["status"],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        short_names: &["ev"],
        subresources: &[],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        short_names: &["cm"],
        subresources: &[],
    },
    Resource {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        short_names: &[],
        subresources: &[],
    },
    Resource {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        short_names: &["deploy"],
        subresources: &["status", "scale"],
    },
    Resource {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        namespaced: true,
        short_names: &["rs"],
        subresources: &["status", "scale"],
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        short_names: &[],
        subresources: &[],
    },
];

fn resource(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource of an object, from its `apiVersion` and `kind`.
fn resource_of(obj: &Value) -> Option<&'static Resource> {
    let api_version = obj["apiVersion"].as_str()?;
    let kind = obj["kind"].as_str()?;
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// One request the fake served.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    pub authorization: Option<String>,
    pub body: String,
    pub status: u16,
}

impl Recorded {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// What an injection does to the request it matches.
pub enum Effect {
    /// Answer with this status and an apiserver Status body, without serving the request.
    Respond(u16),
    /// Change the stored objects first (a concurrent writer), then serve the request.
    Mutate(Box<dyn FnMut(&mut Store) + Send>),
}

struct Injection {
    method: Method,
    path: String,
    remaining: usize,
    effect: Effect,
}

/// A watch event, kept for watches that start from a resource version.
#[derive(Debug, Clone)]
struct Event {
    rv: u64,
    resource: &'static Resource,
    namespace: String,
    kind: &'static str,
    object: Value,
}

/// The stored objects and their history.
pub struct Store {
    rv: u64,
    uids: u64,
    /// (plural, namespace, name) → object.
    objects: BTreeMap<(&'static str, String, String), Value>,
    log: VecDeque<Event>,
    /// Events older than this were compacted away.
    compacted: u64,
    events: broadcast::Sender<Event>,
    /// Bumped to end every open watch (a dropped connection, an apiserver restart).
    epoch: tokio::sync::watch::Sender<u64>,
}

/// Why a write was refused, as the apiserver says it.
#[derive(Debug)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    name: Option<String>,
    resource: Option<&'static Resource>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            name: None,
            resource: None,
        }
    }

    fn about(mut self, r: &'static Resource, name: &str) -> ApiError {
        self.resource = Some(r);
        self.name = Some(name.to_owned());
        self
    }

    fn not_found(r: &'static Resource, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", r.qualified()),
        )
        .about(r, name)
    }

    fn conflict(r: &'static Resource, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                r.qualified()
            ),
        )
        .about(r, name)
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// The apiserver's `Status` object.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let (Some(r), Some(name)) = (self.resource, &self.name) {
            status["details"] = json!({"name": name, "group": r.group, "kind": r.plural});
        }
        status
    }
}

impl Store {
    fn new() -> Store {
        let (events, _) = broadcast::channel(EVENT_LOG);
        Store {
            rv: 100,
            uids: 0,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            compacted: 0,
            events,
            epoch: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The latest resource version.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let r = RESOURCES.iter().find(|r| r.plural == plural)?;
        self.objects
            .get(&(r.plural, ns_key(r, namespace), name.to_owned()))
            .cloned()
    }

    /// Every object of `plural` in `namespace` (all namespaces when `None`), by name.
    pub fn list(&self, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((p, ns, _), _)| *p == plural && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates or replaces an object as a test seeds it: the namespace is created when
    /// missing, and a given resourceVersion is ignored.
    pub fn put(&mut self, mut obj: Value) -> Result<Value, ApiError> {
        let r = resource_of(&obj).ok_or_else(|| {
            ApiError::bad_request(format!(
                "no resource for apiVersion {} kind {}",
                obj["apiVersion"], obj["kind"]
            ))
        })?;
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let namespace = if r.namespaced {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            obj["metadata"]["namespace"] = json!(ns);
            if self.get("namespaces", "", &ns).is_none() {
                self.create(
                    resource("", "v1", "namespaces").expect("namespaces"),
                    "",
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                )?;
            }
            ns
        } else {
            String::new()
        };
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        if self.get(r.plural, &namespace, &name).is_some() {
            self.update(r, &namespace, &name, obj, Sub::None)
        } else {
            self.create(r, &namespace, obj)
        }
    }

    /// Writes an object directly, bypassing every check but typing: what a controller
    /// or another client would do. Returns the stored object.
    pub fn force(&mut self, obj: Value) -> Value {
        self.put(obj).expect("a valid object")
    }

    /// Writes an object's status, as a controller does through the status subresource.
    pub fn force_status(&mut self, obj: Value) -> Value {
        let r = resource_of(&obj).expect("a known kind");
        let namespace = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let mut obj = obj;
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        self.update(r, &namespace, &name, obj, Sub::Status)
            .expect("a valid status")
    }

    /// Deletes an object as another client would (a DELETED watch event); `false` when
    /// there was none.
    pub fn remove(&mut self, plural: &str, namespace: &str, name: &str) -> bool {
        let Some(r) = RESOURCES.iter().find(|r| r.plural == plural) else {
            return false;
        };
        self.delete(r, namespace, name, &Value::Null).is_ok()
    }

    /// Ends every open watch, as when the apiserver restarts or a connection drops.
    pub fn end_watches(&mut self) {
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Forgets every watch event up to now: a watch from an older resource version gets
    /// `410 Expired`, as after an etcd compaction.
    pub fn compact(&mut self) {
        self.log.clear();
        self.compacted = self.rv;
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, r: &'static Resource, namespace: &str, kind: &'static str, object: Value) {
        let event = Event {
            rv: self.rv,
            resource: r,
            namespace: namespace.to_owned(),
            kind,
            object,
        };
        if self.log.len() == EVENT_LOG
            && let Some(old) = self.log.pop_front()
        {
            self.compacted = old.rv;
        }
        self.log.push_back(event.clone());
        let _ = self.events.send(event);
    }

    fn create(
        &mut self,
        r: &'static Resource,
        namespace: &str,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        set_type(r, &mut obj);
        if r.namespaced {
            match obj["metadata"]["namespace"].as_str() {
                None | Some("") => obj["metadata"]["namespace"] = json!(namespace),
                Some(ns) if ns == namespace => {}
                Some(_) => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
            }
            if self.get("namespaces", "", namespace).is_none() {
                return Err(ApiError::not_found(
                    resource("", "v1", "namespaces").expect("namespaces"),
                    namespace,
                ));
            }
        }
        let mut name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if name.is_empty() {
            let Some(prefix) = obj["metadata"]["generateName"].as_str() else {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        r.kind
                    ),
                ));
            };
            name = format!("{prefix}{:05x}", self.uids + 1);
            obj["metadata"]["name"] = json!(name);
        }
        let key = (r.plural, ns_key(r, namespace), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", r.qualified()),
            )
            .about(r, &name));
        }
        self.uids += 1;
        let uid = format!("6b1c0f3e-0000-4000-8000-{:012x}", self.uids);
        let rv = self.next_rv();
        let meta = meta_mut(&mut obj);
        meta.insert("uid".into(), json!(uid));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.remove("generation");
        meta.remove("managedFields");
        if r.has_generation() {
            meta.insert("generation".into(), json!(1));
        }
        let obj = typed(r, obj)?;
        self.objects.insert(key, obj.clone());
        self.record(r, namespace, "ADDED", obj.clone());
        Ok(obj)
    }

    fn update(
        &mut self,
        r: &'static Resource,
        namespace: &str,
        name: &str,
        mut obj: Value,
        sub: Sub,
    ) -> Result<Value, ApiError> {
        set_type(r, &mut obj);
        let key = (r.plural, ns_key(r, namespace), name.to_owned());
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(r, name));
        };
        if obj["metadata"]["name"].as_str().is_some_and(|n| n != name) {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        match obj["metadata"]["resourceVersion"].as_str() {
            None | Some("") => {}
            Some(rv) if rv == old["metadata"]["resourceVersion"] => {}
            Some(_) => return Err(ApiError::conflict(r, name)),
        }
        // The system's fields are the server's, whatever the body says.
        for field in ["uid", "creationTimestamp", "namespace", "name"] {
            match old["metadata"].get(field) {
                Some(v) => {
                    meta_mut(&mut obj).insert(field.into(), v.clone());
                }
                None => {
                    meta_mut(&mut obj).remove(field);
                }
            }
        }
        meta_mut(&mut obj).remove("managedFields");
        match sub {
            Sub::Status => {
                // The status subresource writes the status only.
                let status = obj.get("status").cloned();
                let mut next = old.clone();
                match status {
                    Some(s) => next["status"] = s,
                    None => {
                        if let Some(m) = next.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                obj = next;
            }
            Sub::None if r.has_status_subresource() => match old.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            },
            Sub::None => {}
        }
        let generation = old["metadata"]["generation"].as_i64();
        if let Some(g) = generation {
            let changed = obj.get("spec") != old.get("spec");
            meta_mut(&mut obj).insert("generation".into(), json!(if changed { g + 1 } else { g }));
        }
        let mut obj = typed(r, obj)?;
        // The apiserver writes nothing, and bumps no version, when nothing changed.
        if without_rv(&obj) == without_rv(&old) {
            return Ok(old);
        }
        let rv = self.next_rv();
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(rv.to_string()));
        self.objects.insert(key, obj.clone());
        self.record(r, namespace, "MODIFIED", obj.clone());
        Ok(obj)
    }

    fn delete(
        &mut self,
        r: &'static Resource,
        namespace: &str,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let key = (r.plural, ns_key(r, namespace), name.to_owned());
        let Some(old) = self.objects.get(&key) else {
            return Err(ApiError::not_found(r, name));
        };
        let pre = &options["preconditions"];
        if let Some(rv) = pre["resourceVersion"].as_str()
            && rv != old["metadata"]["resourceVersion"]
        {
            return Err(ApiError::conflict(r, name));
        }
        if let Some(uid) = pre["uid"].as_str()
            && uid != old["metadata"]["uid"]
        {
            return Err(ApiError::conflict(r, name));
        }
        let mut old = self.objects.remove(&key).expect("checked above");
        let rv = self.next_rv();
        meta_mut(&mut old).insert("resourceVersion".into(), json!(rv.to_string()));
        self.record(r, namespace, "DELETED", old.clone());
        Ok(old)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    None,
    Status,
}

fn ns_key(r: &Resource, namespace: &str) -> String {
    if r.namespaced {
        namespace.to_owned()
    } else {
        String::new()
    }
}

fn set_type(r: &Resource, obj: &mut Value) {
    if !obj.is_object() {
        *obj = json!({});
    }
    obj["apiVersion"] = json!(r.api_version());
    obj["kind"] = json!(r.kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("made an object")
}

fn without_rv(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    obj
}

/// The object as the apiserver would store it: decoded into its type and encoded again.
fn typed(r: &Resource, obj: Value) -> Result<Value, ApiError> {
    use k8s_openapi::api::{apps::v1 as apps, coordination::v1 as coordination, core::v1 as core};
    fn round<T: serde::de::DeserializeOwned + serde::Serialize>(
        kind: &str,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let typed: T = serde_json::from_value(obj)
            .map_err(|e| ApiError::bad_request(format!("the body is not a valid {kind}: {e}")))?;
        Ok(serde_json::to_value(typed).expect("a typed object encodes"))
    }
    let obj = match r.kind {
        "Namespace" => round::<core::Namespace>(r.kind, obj),
        "Pod" => round::<core::Pod>(r.kind, obj),
        "Event" => round::<core::Event>(r.kind, obj),
        "ConfigMap" => round::<core::ConfigMap>(r.kind, obj),
        "Secret" => round::<core::Secret>(r.kind, obj),
        "Deployment" => round::<apps::Deployment>(r.kind, obj),
        "ReplicaSet" => round::<apps::ReplicaSet>(r.kind, obj),
        "Lease" => round::<coordination::Lease>(r.kind, obj),
        other => Err(ApiError::bad_request(format!("no type for kind {other}"))),
    }?;
    Ok(go_shape(r, obj))
}

/// What the apiserver's Go encoding writes that k8s-openapi leaves out: struct fields
/// without a pointer are always written, so every container has `resources` (`{}` when
/// empty) and a pod template's metadata has `creationTimestamp: null`.
fn go_shape(r: &Resource, mut obj: Value) -> Value {
    fn pod_spec(spec: &mut Value) {
        for list in ["initContainers", "containers"] {
            if let Some(containers) = spec[list].as_array_mut() {
                for c in containers {
                    if c.get("resources").is_none() {
                        c["resources"] = json!({});
                    }
                }
            }
        }
    }
    match r.kind {
        "Deployment" | "ReplicaSet" if obj["spec"]["template"].is_object() => {
            let template = &mut obj["spec"]["template"];
            if !template["metadata"].is_object() {
                template["metadata"] = json!({});
            }
            if template["metadata"].get("creationTimestamp").is_none() {
                template["metadata"]["creationTimestamp"] = Value::Null;
            }
            pod_spec(&mut template["spec"]);
        }
        "Pod" => pod_spec(&mut obj["spec"]),
        _ => {}
    }
    obj
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The fake API server, on `127.0.0.1` with an ephemeral port. It stops when dropped:
/// open watches end, and the port is released.
pub struct KubeFake {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// Holds the kubeconfig and kubectl's cache.
    dir: tempfile::TempDir,
}

struct Inner {
    store: Mutex<Store>,
    requests: Mutex<Vec<Recorded>>,
    injections: Mutex<Vec<Injection>>,
    stop: CancellationToken,
}

impl Drop for KubeFake {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

impl KubeFake {
    pub async fn start() -> KubeFake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("the bound address");
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::new()),
            requests: Mutex::new(Vec::new()),
            injections: Mutex::new(Vec::new()),
            stop: stop.clone(),
        });
        for ns in ["default", "kube-system"] {
            inner
                .store
                .lock()
                .unwrap()
                .put(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
                .expect("a namespace");
        }
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .expect("the fake API server runs");
        });
        let dir = tempfile::tempdir().expect("a temporary directory");
        let fake = KubeFake {
            addr,
            inner,
            stop,
            task,
            dir,
        };
        std::fs::write(fake.kubeconfig(), fake.kubeconfig_text()).expect("write the kubeconfig");
        fake
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context points at this server.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn kubeconfig_text(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: default\ncurrent-context: fake\nusers:\n- name: tester\n  user:\n    token: fake-token-for-tests\n",
            self.url()
        )
    }

    /// Runs the real `kubectl` against this server and returns its output. Fails the test,
    /// saying how to install it, when kubectl is missing.
    pub async fn kubectl(&self, args: &[&str]) -> std::process::Output {
        let kubectl = Path::new("/usr/bin/kubectl");
        assert!(
            kubectl.exists(),
            "kubectl is not installed: apt-get install -y kubectl"
        );
        let cache = self.dir.path().join("cache");
        tokio::process::Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .kill_on_drop(true)
            .output()
            .await
            .expect("run kubectl")
    }

    /// Like [`kubectl`](Self::kubectl), and fails the test with kubectl's output unless it
    /// exited 0. Returns its stdout.
    pub async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on the store, under its lock.
    pub fn with<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        f(&mut self.inner.store.lock().unwrap())
    }

    pub fn put(&self, obj: Value) -> Value {
        self.with(|s| s.put(obj))
            .expect("the fake accepts the object")
    }

    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.with(|s| s.get(plural, namespace, name))
    }

    pub fn list(&self, plural: &str, namespace: Option<&str>) -> Vec<Value> {
        self.with(|s| s.list(plural, namespace))
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The requests with this method whose path is `path`.
    pub fn requests_to(&self, method: &Method, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == *method && r.path == path)
            .collect()
    }

    /// The next `times` requests with `method` to exactly `path` get `effect` first.
    pub fn inject(&self, method: Method, path: &str, times: usize, effect: Effect) {
        self.inner.injections.lock().unwrap().push(Injection {
            method,
            path: path.to_owned(),
            remaining: times,
            effect,
        });
    }
}

/// Where a request goes.
struct Route {
    resource: &'static Resource,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let method = parts.method.clone();
    let path = parts.uri.path().to_owned();
    let query_text = parts.uri.query().unwrap_or("").to_owned();
    let header_text = |name: header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header_text(header::CONTENT_TYPE);
    let mut response = answer(
        &inner,
        &method,
        &path,
        &query_text,
        content_type.as_deref(),
        &body,
    );
    if !response.headers().contains_key(header::CONTENT_TYPE) {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    inner.requests.lock().unwrap().push(Recorded {
        method,
        path,
        query: query_text,
        content_type,
        authorization: header_text(header::AUTHORIZATION),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: response.status().as_u16(),
    });
    response
}

fn answer(
    inner: &Arc<Inner>,
    method: &Method,
    path: &str,
    query_text: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Response {
    let injected = {
        let mut injections = inner.injections.lock().unwrap();
        let found = injections
            .iter_mut()
            .find(|i| i.remaining > 0 && i.method == *method && i.path == path);
        match found {
            Some(injection) => {
                injection.remaining -= 1;
                match &mut injection.effect {
                    Effect::Respond(code) => Some(*code),
                    Effect::Mutate(f) => {
                        f(&mut inner.store.lock().unwrap());
                        None
                    }
                }
            }
            None => None,
        }
    };
    if let Some(code) = injected {
        let reason = match code {
            409 => "Conflict",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            _ => "Unknown",
        };
        return error(ApiError::new(
            code,
            reason,
            format!("injected failure {code}"),
        ));
    }
    // Bodies in protobuf (or CBOR) are refused as unsupported, which makes client-go
    // fall back to JSON, as against an apiserver that does not speak them.
    if !body.is_empty()
        && content_type.is_some_and(|t| t.contains("protobuf") || t.contains("cbor"))
        && !content_type.is_some_and(|t| t.starts_with("application/apply-patch"))
    {
        return error(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {})",
                content_type.unwrap_or("")
            ),
        ));
    }
    let query: BTreeMap<String, String> = url_query(query_text);
    match (method, path) {
        (&Method::GET, "/version") => return ok(version()),
        (&Method::GET, "/api") => {
            return ok(json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
            }));
        }
        (&Method::GET, "/apis") => return ok(group_list()),
        (&Method::GET, "/openapi/v3") => return ok(openapi_root()),
        (&Method::GET, p) if p.starts_with("/openapi/v3/") => {
            return match openapi_group_version(&p["/openapi/v3/".len()..]) {
                Some(doc) => ok(doc),
                None => error(ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )),
            };
        }
        (&Method::GET, "/healthz" | "/readyz" | "/livez") => {
            return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response();
        }
        _ => {}
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        ["apis", group] if method == Method::GET => {
            return match group_json(group) {
                Some(g) => ok(g),
                None => error(ApiError::new(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )),
            };
        }
        _ => {
            return error(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    if rest.is_empty() {
        return match resource_list(group, version) {
            Some(list) if method == Method::GET => ok(list),
            _ => error(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )),
        };
    }
    let route = match route(group, version, rest) {
        Some(r) => r,
        None => {
            return error(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    let result = serve(inner, method, &route, &query, content_type, body);
    match result {
        Ok(Served::Object(v)) => ok(v),
        Ok(Served::Created(v)) => (StatusCode::CREATED, axum::Json(v)).into_response(),
        Ok(Served::Watch(response)) => response,
        Err(e) => error(e),
    }
}

enum Served {
    Object(Value),
    Created(Value),
    Watch(Response),
}

fn route(group: &str, version: &str, rest: &[&str]) -> Option<Route> {
    let (namespace, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (ns.to_string(), tail),
        _ => (String::new(), rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    let resource = resource(group, version, plural)?;
    if resource.namespaced == namespace.is_empty() && name.is_some() {
        return None;
    }
    if let Some(s) = &sub
        && !resource.subresources.contains(&s.as_str())
    {
        return None;
    }
    Some(Route {
        resource,
        namespace,
        name,
        sub,
    })
}

fn serve(
    inner: &Arc<Inner>,
    method: &Method,
    route: &Route,
    query: &BTreeMap<String, String>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Served, ApiError> {
    let r = route.resource;
    let ns = route.namespace.as_str();
    let mut store = inner.store.lock().unwrap();
    match (method, &route.name, route.sub.as_deref()) {
        (&Method::GET, None, None) => {
            let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
            let selector = Selector::parse(query)?;
            if watching {
                drop(store);
                return watch(inner, r, ns, query, selector).map(Served::Watch);
            }
            list(&store, r, ns, query, &selector).map(Served::Object)
        }
        (&Method::GET, Some(name), None) => store
            .get(r.plural, ns, name)
            .map(Served::Object)
            .ok_or_else(|| ApiError::not_found(r, name)),
        (&Method::GET, Some(name), Some("status")) => store
            .get(r.plural, ns, name)
            .map(Served::Object)
            .ok_or_else(|| ApiError::not_found(r, name)),
        (&Method::GET, Some(name), Some("scale")) => {
            let obj = store
                .get(r.plural, ns, name)
                .ok_or_else(|| ApiError::not_found(r, name))?;
            Ok(Served::Object(scale_of(&obj)))
        }
        (&Method::POST, None, None) => {
            let obj = json_body(body)?;
            store.create(r, ns, obj).map(Served::Created)
        }
        (&Method::PUT, Some(name), sub) => {
            let obj = json_body(body)?;
            match sub {
                None => store.update(r, ns, name, obj, Sub::None),
                Some("status") => store.update(r, ns, name, obj, Sub::Status),
                Some(_) => {
                    let current = store
                        .get(r.plural, ns, name)
                        .ok_or_else(|| ApiError::not_found(r, name))?;
                    let next = apply_scale(&current, &obj, name, r)?;
                    store
                        .update(r, ns, name, next, Sub::None)
                        .map(|o| scale_of(&o))
                }
            }
            .map(Served::Object)
        }
        (&Method::PATCH, Some(name), sub) => {
            let current = store
                .get(r.plural, ns, name)
                .ok_or_else(|| ApiError::not_found(r, name))?;
            let kind = content_type
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim();
            let patch = json_body(body)?;
            let base = if sub == Some("scale") {
                scale_of(&current)
            } else {
                current.clone()
            };
            let patched = match kind {
                "application/json-patch+json" => {
                    let ops: json_patch::Patch = serde_json::from_value(patch)
                        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                    let mut doc = base;
                    json_patch::patch(&mut doc, &ops).map_err(|e| {
                        ApiError::new(
                            422,
                            "Invalid",
                            format!("the server rejected our request due to an error in our request: {e}"),
                        )
                        .about(r, name)
                    })?;
                    doc
                }
                "application/merge-patch+json" => {
                    let mut doc = base;
                    json_patch::merge(&mut doc, &patch);
                    doc
                }
                "application/strategic-merge-patch+json" => {
                    let mut doc = base;
                    strategic_merge(&mut doc, &patch, "")?;
                    doc
                }
                "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        "the fake API server does not do server-side apply",
                    ));
                }
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other:?})"
                        ),
                    ));
                }
            };
            match sub {
                None => store.update(r, ns, name, patched, Sub::None),
                Some("status") => store.update(r, ns, name, patched, Sub::Status),
                Some(_) => {
                    let next = apply_scale(&current, &patched, name, r)?;
                    store
                        .update(r, ns, name, next, Sub::None)
                        .map(|o| scale_of(&o))
                }
            }
            .map(Served::Object)
        }
        (&Method::DELETE, Some(name), None) => {
            let options = if body.is_empty() {
                Value::Null
            } else {
                json_body(body)?
            };
            store.delete(r, ns, name, &options).map(Served::Object)
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )),
    }
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
}

/// The autoscaling/v1 Scale of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector_text(&obj["spec"]["selector"]),
        },
    })
}

fn apply_scale(
    current: &Value,
    scale: &Value,
    name: &str,
    r: &'static Resource,
) -> Result<Value, ApiError> {
    let replicas = scale["spec"]["replicas"]
        .as_i64()
        .ok_or_else(|| ApiError::bad_request("spec.replicas is required"))?;
    if replicas < 0 {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {replicas}: must be greater than or equal to 0"),
        )
        .about(r, name));
    }
    let mut next = current.clone();
    next["spec"]["replicas"] = json!(replicas);
    match scale["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() => next["metadata"]["resourceVersion"] = json!(rv),
        _ => {}
    }
    Ok(next)
}

fn selector_text(selector: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(labels) = selector["matchLabels"].as_object() {
        for (k, v) in labels {
            parts.push(format!("{k}={}", v.as_str().unwrap_or("")));
        }
    }
    parts.join(",")
}

fn list(
    store: &Store,
    r: &'static Resource,
    ns: &str,
    query: &BTreeMap<String, String>,
    selector: &Selector,
) -> Result<Value, ApiError> {
    let namespace = if ns.is_empty() { None } else { Some(ns) };
    let mut items: Vec<Value> = store
        .list(r.plural, namespace)
        .into_iter()
        .filter(|o| selector.matches(o))
        .collect();
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    };
    if let Some(after) = query.get("continue").filter(|c| !c.is_empty()) {
        items.retain(|o| key(o).as_str() > after.as_str());
    }
    let mut meta = json!({"resourceVersion": store.rv.to_string()});
    if let Some(limit) = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0)
        && items.len() > limit
    {
        items.truncate(limit);
        meta["continue"] = json!(key(items.last().expect("limit > 0")));
        meta["remainingItemCount"] = json!(0);
    }
    // Items of a list carry no apiVersion and kind in the apiserver's answers.
    for item in &mut items {
        if let Some(m) = item.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
    }
    Ok(json!({
        "kind": format!("{}List", r.kind),
        "apiVersion": r.api_version(),
        "metadata": meta,
        "items": items,
    }))
}

fn watch(
    inner: &Arc<Inner>,
    r: &'static Resource,
    ns: &str,
    query: &BTreeMap<String, String>,
    selector: Selector,
) -> Result<Response, ApiError> {
    let store = inner.store.lock().unwrap();
    let rv = query
        .get("resourceVersion")
        .map(String::as_str)
        .unwrap_or("");
    let initial_events = query.get("sendInitialEvents").is_some_and(|s| s == "true");
    let in_scope = move |e: &Event, selector: &Selector| {
        e.resource == r && (ns.is_empty() || e.namespace == ns) && selector.matches(&e.object)
    };
    let ns = ns.to_owned();
    let mut first: Vec<Value> = Vec::new();
    let from = store.rv;
    if rv.is_empty() || rv == "0" || initial_events {
        let namespace = if ns.is_empty() {
            None
        } else {
            Some(ns.as_str())
        };
        for obj in store.list(r.plural, namespace) {
            if selector.matches(&obj) {
                first.push(json!({"type": "ADDED", "object": obj}));
            }
        }
        if initial_events {
            first.push(json!({
                "type": "BOOKMARK",
                "object": {
                    "apiVersion": r.api_version(),
                    "kind": r.kind,
                    "metadata": {
                        "resourceVersion": store.rv.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                },
            }));
        }
    } else {
        let asked: u64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?;
        if asked < store.compacted {
            first.push(json!({
                "type": "ERROR",
                "object": ApiError::new(
                    410,
                    "Expired",
                    format!("too old resource version: {asked} ({})", store.compacted),
                )
                .status(),
            }));
            let lines: Vec<Result<Bytes, std::io::Error>> = first
                .into_iter()
                .map(|v| Ok(Bytes::from(format!("{v}\n"))))
                .collect();
            let body = Body::from_stream(futures_util::stream::iter(lines));
            return Ok(watch_response(body));
        }
        for e in store.log.iter().filter(|e| e.rv > asked) {
            if in_scope(e, &selector) {
                first.push(json!({"type": e.kind, "object": e.object}));
            }
        }
    }
    let receiver = store.events.subscribe();
    let mut epoch = store.epoch.subscribe();
    epoch.mark_unchanged();
    drop(store);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let deadline = tokio::time::Instant::now() + timeout;
    let stop = inner.stop.clone();
    let r_ns = ns.clone();
    let state = (
        first.into_iter().collect::<VecDeque<_>>(),
        receiver,
        selector,
        epoch,
    );
    let stream = futures_util::stream::unfold(
        state,
        move |(mut pending, mut receiver, selector, mut epoch)| {
            let stop = stop.clone();
            let r_ns = r_ns.clone();
            async move {
                if let Some(v) = pending.pop_front() {
                    return Some((
                        Ok::<_, std::io::Error>(Bytes::from(format!("{v}\n"))),
                        (pending, receiver, selector, epoch),
                    ));
                }
                loop {
                    // A dropped connection loses what was still in flight.
                    let event = tokio::select! {
                        biased;
                        _ = stop.cancelled() => return None,
                        _ = epoch.changed() => return None,
                        _ = tokio::time::sleep_until(deadline) => return None,
                        e = receiver.recv() => e,
                    };
                    match event {
                        Ok(e) => {
                            let matches = e.rv > from
                                && e.resource == r
                                && (r_ns.is_empty() || e.namespace == r_ns)
                                && selector.matches(&e.object);
                            if matches {
                                let line = json!({"type": e.kind, "object": e.object});
                                return Some((
                                    Ok(Bytes::from(format!("{line}\n"))),
                                    (pending, receiver, selector, epoch),
                                ));
                            }
                        }
                        Err(_) => return None,
                    }
                }
            }
        },
    );
    Ok(watch_response(Body::from_stream(stream)))
}

fn watch_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .expect("a response")
}

/// A label selector and a field selector, as the apiserver parses them.
#[derive(Debug, Clone, Default)]
struct Selector {
    labels: Vec<Requirement>,
    fields: Vec<(String, bool, String)>,
}

#[derive(Debug, Clone)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Selector {
    fn parse(query: &BTreeMap<String, String>) -> Result<Selector, ApiError> {
        let mut selector = Selector::default();
        if let Some(text) = query.get("labelSelector") {
            for term in split_terms(text) {
                let term = term.trim();
                if term.is_empty() {
                    continue;
                }
                selector.labels.push(parse_requirement(term)?);
            }
        }
        if let Some(text) = query.get("fieldSelector") {
            for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                    (f, false, v)
                } else if let Some((f, v)) = term.split_once("==") {
                    (f, true, v)
                } else if let Some((f, v)) = term.split_once('=') {
                    (f, true, v)
                } else {
                    return Err(ApiError::bad_request(format!(
                        "invalid field selector: {term:?}"
                    )));
                };
                if !matches!(field, "metadata.name" | "metadata.namespace") {
                    return Err(ApiError::bad_request(format!(
                        "field label not supported: {field}"
                    )));
                }
                selector
                    .fields
                    .push((field.to_owned(), equal, value.to_owned()));
            }
        }
        Ok(selector)
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let label = |k: &str| labels[k].as_str();
        let labels_ok = self.labels.iter().all(|req| match req {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        });
        let fields_ok = self.fields.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => obj["metadata"]["name"].as_str(),
                _ => obj["metadata"]["namespace"].as_str(),
            };
            (actual == Some(value.as_str())) == *equal
        });
        labels_ok && fields_ok
    }
}

/// Splits a label selector on the commas outside parentheses.
fn split_terms(text: &str) -> Vec<String> {
    let mut terms = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    terms.push(current);
    terms
}

fn parse_requirement(term: &str) -> Result<Requirement, ApiError> {
    let set = |rest: &str| -> Result<Vec<String>, ApiError> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| ApiError::bad_request(format!("invalid label selector: {term:?}")))?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(key.trim().to_owned()));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Requirement::NotEquals(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = term.split_once("==") {
        return Ok(Requirement::Equals(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = term.split_once('=') {
        return Ok(Requirement::Equals(k.trim().into(), v.trim().into()));
    }
    if let Some((k, rest)) = term.split_once(" notin ") {
        return Ok(Requirement::NotIn(k.trim().into(), set(rest)?));
    }
    if let Some((k, rest)) = term.split_once(" in ") {
        return Ok(Requirement::In(k.trim().into(), set(rest)?));
    }
    if term
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        return Ok(Requirement::Exists(term.to_owned()));
    }
    Err(ApiError::bad_request(format!(
        "invalid label selector: {term:?}"
    )))
}

/// The patch merge key of the lists a strategic merge patch merges by key, by the
/// list's field name (from the Kubernetes API's `x-kubernetes-patch-merge-key`).
fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "tolerations" => "key",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        _ => return None,
    })
}

/// Applies a strategic merge patch: maps merge (null deletes), lists with a patch merge
/// key merge by it, other lists are replaced; `$patch: replace|delete`,
/// `$setElementOrder/...`, `$retainKeys` and `$deleteFromPrimitiveList/...` are handled
/// as the apiserver does for the cases kubectl sends.
fn strategic_merge(doc: &mut Value, patch: &Value, field: &str) -> Result<(), ApiError> {
    let Some(patch_map) = patch.as_object() else {
        *doc = patch.clone();
        return Ok(());
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch.clone();
            if let Some(m) = replaced.as_object_mut() {
                m.remove("$patch");
            }
            *doc = replaced;
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Null;
            return Ok(());
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch directive {other:?} at {field}"
            )));
        }
        None => {}
    }
    if !doc.is_object() {
        *doc = json!({});
    }
    let target = doc.as_object_mut().expect("made an object");
    for (key, value) in patch_map {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" {
            continue;
        }
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(existing), Some(gone)) = (
                target.get_mut(list).and_then(Value::as_array_mut),
                value.as_array(),
            ) {
                existing.retain(|v| !gone.contains(v));
            }
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match (value, merge_key(key)) {
            (Value::Array(items), Some(merge_key)) => {
                let existing = target.entry(key.clone()).or_insert_with(|| json!([]));
                if !existing.is_array() {
                    *existing = json!([]);
                }
                let list = existing.as_array_mut().expect("made an array");
                for item in items {
                    let id = item.get(merge_key).cloned();
                    let directive = item.get("$patch").and_then(Value::as_str);
                    let position = list.iter().position(|e| e.get(merge_key) == id.as_ref());
                    match (position, directive) {
                        (Some(p), Some("delete")) => {
                            list.remove(p);
                        }
                        (None, Some("delete")) => {}
                        (Some(p), _) => strategic_merge(&mut list[p], item, key)?,
                        (None, _) => {
                            let mut fresh = Value::Null;
                            strategic_merge(&mut fresh, item, key)?;
                            list.push(fresh);
                        }
                    }
                }
            }
            (Value::Object(_), _) => {
                let entry = target.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(entry, value, key)?;
                if entry.is_null() {
                    target.remove(key);
                }
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(())
}

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(e.status())).into_response()
}

fn url_query(text: &str) -> BTreeMap<String, String> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0-rearguard-fake",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    groups.dedup();
    groups
}

fn group_json(group: &str) -> Option<Value> {
    let r = RESOURCES
        .iter()
        .find(|r| r.group == group && !group.is_empty())?;
    let gv = json!({"groupVersion": r.api_version(), "version": r.version});
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": [gv],
        "preferredVersion": gv,
    }))
}

fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .filter_map(group_json)
        .map(|mut g| {
            if let Some(m) = g.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            g
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let verbs = json!([
            "create", "delete", "get", "list", "patch", "update", "watch"
        ]);
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs,
            "shortNames": r.short_names,
        }));
        for sub in r.subresources {
            let (kind, group_of, version_of) = if *sub == "scale" {
                ("Scale", "autoscaling", "v1")
            } else {
                (r.kind, r.group, r.version)
            };
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "group": group_of,
                "version": version_of,
                "kind": kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// The OpenAPI v3 index: one document per group version.
fn openapi_root() -> Value {
    let mut paths = Map::new();
    let mut gvs: Vec<String> = RESOURCES
        .iter()
        .map(|r| {
            if r.group.is_empty() {
                format!("api/{}", r.version)
            } else {
                format!("apis/{}/{}", r.group, r.version)
            }
        })
        .collect();
    gvs.dedup();
    for gv in gvs {
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash=fake")}),
        );
    }
    json!({"paths": paths})
}

/// A group version's OpenAPI v3 document, reduced to what kubectl reads from it: each
/// object path's PATCH operation with its kind and the `fieldValidation` parameter, so
/// that kubectl validates on the server (which the fake accepts and does not enforce:
/// unknown fields are dropped, as with `fieldValidation=Ignore`).
fn openapi_group_version(gv: &str) -> Option<Value> {
    let mut paths = Map::new();
    for r in RESOURCES {
        let prefix = if r.group.is_empty() {
            format!("api/{}", r.version)
        } else {
            format!("apis/{}/{}", r.group, r.version)
        };
        if prefix != gv {
            continue;
        }
        let item = if r.namespaced {
            format!("/{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("/{prefix}/{}/{{name}}", r.plural)
        };
        paths.insert(
            item,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                    {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
