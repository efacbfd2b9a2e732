//! The serde mirror of the configuration file: the first of the two stages.
//!
//! Every struct denies unknown fields so that a typo is an error, and every value that
//! needs parsing (durations, percentages, conditions, URLs) is kept as text here, so that
//! `validate` can report all bad values at once, each with its path. Nothing in this
//! module is used past validation.

use std::collections::BTreeMap;

use figment::value::Value;
use serde::Deserialize;

/// The top level. Each list item stays an untyped value here and is deserialized on its
/// own, so that one bad item does not hide the errors of the others.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: Option<Value>,
    #[serde(default)]
    pub target: Vec<Value>,
    #[serde(default)]
    pub signal: Vec<Value>,
    #[serde(default)]
    pub rule: Vec<Value>,
    #[serde(default)]
    pub plan: Vec<Value>,
    #[serde(default)]
    pub notifier: Vec<Value>,
    #[serde(default)]
    pub escalation: Vec<Value>,
    #[serde(default)]
    pub kubernetes: Option<Value>,
    #[serde(default)]
    pub leader_election: Option<Value>,
}

/// How rearguard reaches the Kubernetes API server (`[kubernetes]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    pub in_cluster: Option<bool>,
    pub kubeconfig: Option<String>,
    pub context: Option<String>,
    pub server: Option<String>,
    /// Whether incidents' transitions are posted as Events on their Deployment.
    pub events: Option<bool>,
}

/// Leader election among replicas on a Kubernetes Lease (`[leader_election]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLeaderElection {
    pub namespace: String,
    pub lease: Option<String>,
    pub identity: Option<String>,
    pub lease_duration: Option<String>,
    pub renew_every: Option<String>,
    pub retry_every: Option<String>,
}

/// A revision written as a number or as the `{to_revision}` placeholder.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawRevision {
    Number(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDaemon {
    pub state_dir: Option<String>,
    pub listen: Option<String>,
    pub mode: Option<String>,
    pub tick: Option<String>,
    pub drain_timeout: Option<String>,
    pub blind_after: Option<String>,
    pub blind_share: Option<String>,
    pub blind_share_window: Option<String>,
    pub blind_share_min: Option<u32>,
    pub control_token: Option<RawSecret>,
    pub read_open: Option<bool>,
    pub max_connections: Option<u32>,
    pub header_read_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: String,
    pub plan: Option<String>,
    pub blame_window: Option<String>,
    pub cooldown: Option<String>,
    pub max_rollbacks: Option<u32>,
    pub rollback_period: Option<String>,
    pub change: Option<RawChange>,
    pub bake: Option<String>,
    pub keep_snapshots: Option<u32>,
    pub healthy_for: Option<String>,
    pub config_files: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum RawChange {
    ReleaseSymlink {
        path: String,
        interval: Option<String>,
    },
    Exec {
        command: Vec<String>,
        interval: Option<String>,
        timeout: Option<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        inherit_env: Vec<String>,
    },
    KubeDeployment {
        namespace: String,
        deployment: String,
    },
}

/// A signal. Every variant repeats the common keys (`name`, `target`, `interval`,
/// `timeout`, `blind_after`) because serde cannot deny unknown keys through `flatten`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum RawSignal {
    HttpProbe {
        name: String,
        target: String,
        interval: Option<String>,
        timeout: Option<String>,
        blind_after: Option<String>,
        url: String,
        method: Option<String>,
        expect_status: Option<Vec<u16>>,
        body_contains: Option<String>,
        json_pointer: Option<String>,
        json_equals: Option<serde_json::Value>,
    },
    Exec {
        name: String,
        target: String,
        interval: Option<String>,
        timeout: Option<String>,
        blind_after: Option<String>,
        command: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        inherit_env: Vec<String>,
        cwd: Option<String>,
    },
    Prometheus {
        name: String,
        target: String,
        interval: Option<String>,
        timeout: Option<String>,
        blind_after: Option<String>,
        url: String,
        error_rate: Option<RawErrorRate>,
        latency: Option<RawLatency>,
        query: Option<String>,
        window: Option<String>,
        auth: Option<RawAuth>,
        tls: Option<RawTls>,
    },
    Scrape {
        name: String,
        target: String,
        interval: Option<String>,
        timeout: Option<String>,
        blind_after: Option<String>,
        url: String,
        error_rate: Option<RawErrorRate>,
        latency: Option<RawLatency>,
        value: Option<String>,
        window: Option<String>,
        auth: Option<RawAuth>,
        tls: Option<RawTls>,
    },
    Alertmanager {
        name: String,
        target: String,
        interval: Option<String>,
        timeout: Option<String>,
        blind_after: Option<String>,
        #[serde(default)]
        matchers: BTreeMap<String, String>,
        token: RawSecret,
    },
    CgroupOom {
        name: String,
        target: String,
        interval: Option<String>,
        timeout: Option<String>,
        blind_after: Option<String>,
        /// A cgroup directory; exactly one of `cgroup` and `unit`.
        cgroup: Option<String>,
        /// A systemd unit, resolved to its cgroup on this host.
        unit: Option<String>,
        /// The slice the unit runs in (default `system.slice`); only with `unit`.
        slice: Option<String>,
    },
    KubePods {
        name: String,
        target: String,
        interval: Option<String>,
        timeout: Option<String>,
        blind_after: Option<String>,
        namespace: String,
        selector: String,
        event: String,
    },
}

impl RawSignal {
    /// The keys every signal has, whatever its type.
    pub fn common(&self) -> RawSignalCommon<'_> {
        match self {
            RawSignal::HttpProbe {
                name,
                target,
                interval,
                timeout,
                blind_after,
                ..
            }
            | RawSignal::Exec {
                name,
                target,
                interval,
                timeout,
                blind_after,
                ..
            }
            | RawSignal::Prometheus {
                name,
                target,
                interval,
                timeout,
                blind_after,
                ..
            }
            | RawSignal::Scrape {
                name,
                target,
                interval,
                timeout,
                blind_after,
                ..
            }
            | RawSignal::Alertmanager {
                name,
                target,
                interval,
                timeout,
                blind_after,
                ..
            }
            | RawSignal::CgroupOom {
                name,
                target,
                interval,
                timeout,
                blind_after,
                ..
            }
            | RawSignal::KubePods {
                name,
                target,
                interval,
                timeout,
                blind_after,
                ..
            } => RawSignalCommon {
                name,
                target,
                interval,
                timeout,
                blind_after,
            },
        }
    }
}

pub struct RawSignalCommon<'a> {
    pub name: &'a str,
    pub target: &'a str,
    pub interval: &'a Option<String>,
    pub timeout: &'a Option<String>,
    pub blind_after: &'a Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawErrorRate {
    pub requests: String,
    pub errors: String,
}

/// Credentials: `bearer = { file = "..." }`, or `username` with `password = { env = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub bearer: Option<RawSecret>,
    pub username: Option<String>,
    pub password: Option<RawSecret>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca_file: Option<String>,
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLatency {
    pub histogram: String,
    pub quantile: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub signal: String,
    pub when: Option<String>,
    #[serde(rename = "for")]
    pub for_: Option<String>,
    pub consecutive: Option<u32>,
    pub m_of_n: Option<[u32; 2]>,
    pub within: Option<String>,
    pub clear: Option<String>,
    pub clear_for: Option<String>,
    pub min_requests: Option<u64>,
    pub confidence: Option<String>,
    pub baseline_window: Option<String>,
    pub baseline_min_samples: Option<u32>,
    pub baseline_min_coverage: Option<String>,
    pub min_effect: Option<String>,
    pub inconclusive_after: Option<String>,
    pub no_data: Option<String>,
    pub insufficient: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    pub name: String,
    #[serde(default)]
    pub step: Vec<Value>,
    pub verify: Option<RawVerify>,
}

/// A plan step. Every variant repeats the common keys (`name`, `timeout`, `retries`,
/// `on_failure`) because serde cannot deny unknown keys through `flatten`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum RawStep {
    Exec {
        name: Option<String>,
        timeout: Option<String>,
        retries: Option<u32>,
        on_failure: Option<String>,
        command: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        inherit_env: Vec<String>,
        cwd: Option<String>,
    },
    ReleaseSwitch {
        name: Option<String>,
        timeout: Option<String>,
        retries: Option<u32>,
        on_failure: Option<String>,
        current: String,
        releases: Option<String>,
        restart: Option<Vec<String>>,
    },
    Http {
        name: Option<String>,
        timeout: Option<String>,
        retries: Option<u32>,
        on_failure: Option<String>,
        url: String,
        method: Option<String>,
        #[serde(default)]
        headers: BTreeMap<String, RawHeaderValue>,
        body: Option<String>,
        expect_status: Option<Vec<u16>>,
    },
    KubeRolloutUndo(RawKubeStep),
    KubeRolloutStatus(RawKubeStep),
    KubePause(RawKubeStep),
    KubeResume(RawKubeStep),
    KubeScale(RawKubeStep),
    KubeRestart(RawKubeStep),
    KubeMarkBad(RawKubeStep),
    KubeRestoreConfig(RawKubeStep),
    KubeDeletePods(RawKubeStep),
    RestoreConfigFiles {
        name: Option<String>,
        timeout: Option<String>,
        retries: Option<u32>,
        on_failure: Option<String>,
        to_revision: Option<String>,
    },
}

/// The keys of every step on a Kubernetes Deployment; validation refuses the keys a
/// type does not take (`replicas` is for kube_scale only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubeStep {
    pub name: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub on_failure: Option<String>,
    pub namespace: String,
    pub deployment: String,
    pub to_revision: Option<RawRevision>,
    pub replicas: Option<RawRevision>,
}

impl RawStep {
    pub fn common(&self) -> RawStepCommon<'_> {
        match self {
            RawStep::Exec {
                name,
                timeout,
                retries,
                on_failure,
                ..
            }
            | RawStep::ReleaseSwitch {
                name,
                timeout,
                retries,
                on_failure,
                ..
            }
            | RawStep::Http {
                name,
                timeout,
                retries,
                on_failure,
                ..
            }
            | RawStep::RestoreConfigFiles {
                name,
                timeout,
                retries,
                on_failure,
                ..
            } => RawStepCommon {
                name,
                timeout,
                retries: *retries,
                on_failure,
            },
            RawStep::KubeRolloutUndo(k)
            | RawStep::KubeRolloutStatus(k)
            | RawStep::KubePause(k)
            | RawStep::KubeResume(k)
            | RawStep::KubeScale(k)
            | RawStep::KubeRestart(k)
            | RawStep::KubeMarkBad(k)
            | RawStep::KubeRestoreConfig(k)
            | RawStep::KubeDeletePods(k) => RawStepCommon {
                name: &k.name,
                timeout: &k.timeout,
                retries: k.retries,
                on_failure: &k.on_failure,
            },
        }
    }
}

pub struct RawStepCommon<'a> {
    pub name: &'a Option<String>,
    pub timeout: &'a Option<String>,
    pub retries: Option<u32>,
    pub on_failure: &'a Option<String>,
}

/// A header value: plain text, or a secret read from a file or environment variable.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawHeaderValue {
    Plain(String),
    Secret(RawSecret),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    pub file: Option<String>,
    pub env: Option<String>,
    /// Text put before the secret, e.g. `"Bearer "`.
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub window: Option<String>,
    pub rules: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "snake_case")]
pub enum RawNotifier {
    Log {
        name: String,
    },
    Slack {
        name: String,
        timeout: Option<String>,
        per_minute: Option<u32>,
        webhook_url: Option<RawSecret>,
        token: Option<RawSecret>,
        channel: Option<String>,
        api_url: Option<String>,
    },
    #[serde(rename = "pagerduty")]
    PagerDuty {
        name: String,
        timeout: Option<String>,
        per_minute: Option<u32>,
        routing_key: RawSecret,
        url: Option<String>,
    },
    Teams {
        name: String,
        timeout: Option<String>,
        per_minute: Option<u32>,
        webhook_url: RawSecret,
    },
    Statuspage {
        name: String,
        timeout: Option<String>,
        per_minute: Option<u32>,
        api_key: RawSecret,
        page_id: String,
        component_id: Option<String>,
        api_url: Option<String>,
    },
    Email {
        name: String,
        timeout: Option<String>,
        per_minute: Option<u32>,
        host: String,
        port: Option<u16>,
        tls: Option<String>,
        username: Option<String>,
        password: Option<RawSecret>,
        from: String,
        to: Vec<String>,
    },
    Webhook {
        name: String,
        timeout: Option<String>,
        per_minute: Option<u32>,
        url: String,
        secret: RawSecret,
    },
}

impl RawNotifier {
    pub fn name(&self) -> &str {
        match self {
            RawNotifier::Log { name }
            | RawNotifier::Slack { name, .. }
            | RawNotifier::PagerDuty { name, .. }
            | RawNotifier::Teams { name, .. }
            | RawNotifier::Statuspage { name, .. }
            | RawNotifier::Email { name, .. }
            | RawNotifier::Webhook { name, .. } => name,
        }
    }

    /// `timeout` and `per_minute`, which every type but `log` has.
    pub fn limits(&self) -> (&Option<String>, Option<u32>) {
        match self {
            RawNotifier::Log { .. } => (&None, None),
            RawNotifier::Slack {
                timeout,
                per_minute,
                ..
            }
            | RawNotifier::PagerDuty {
                timeout,
                per_minute,
                ..
            }
            | RawNotifier::Teams {
                timeout,
                per_minute,
                ..
            }
            | RawNotifier::Statuspage {
                timeout,
                per_minute,
                ..
            }
            | RawNotifier::Email {
                timeout,
                per_minute,
                ..
            }
            | RawNotifier::Webhook {
                timeout,
                per_minute,
                ..
            } => (timeout, *per_minute),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEscalation {
    pub name: Option<String>,
    pub on: Vec<String>,
    pub after: Option<String>,
    pub repeat: Option<String>,
    pub notify: Vec<String>,
    pub slow_after: Option<String>,
    pub attempts: Option<u32>,
}
