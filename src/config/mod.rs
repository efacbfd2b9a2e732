//! Configuration: loading (TOML or YAML by extension, `REARGUARD_` environment
//! overrides), validation into domain types, and the worst-case detection time of rules.
//!
//! Loading is two-staged: `raw` is a serde mirror of the file, `validate` turns it into
//! the types below and collects every error with its path. Secrets are read here, once,
//! and are held as `SecretString` so they never reach a log or a report. This module
//! performs no network I/O.

mod errors;
mod load;
mod raw;
pub mod recipe;
pub mod selector;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

pub use errors::{ConfigError, ConfigErrors};
pub use load::{Format, load, load_str};
pub use units::{Cmp, Condition, Threshold, Unit};

/// A validated configuration. Cross references (a rule's signal, a target's plan) are
/// resolved to indices into the vectors here.
#[derive(Debug, Clone)]
pub struct Config {
    pub daemon: Daemon,
    pub targets: Vec<Target>,
    pub signals: Vec<Signal>,
    pub rules: Vec<Rule>,
    pub plans: Vec<Plan>,
    pub notifiers: Vec<Notifier>,
    pub escalation: Vec<EscalationLevel>,
    /// Whether incidents' transitions are posted as Kubernetes Events on targets whose
    /// change observer is `kube_deployment` (`[kubernetes] events`, default true).
    pub kube_events: bool,
    /// Only the replica holding the Lease acts (`[leader_election]`); `None`: this
    /// process always acts.
    pub leader_election: Option<LeaderElection>,
}

/// Leader election among replicas on a coordination.k8s.io/v1 Lease
/// (`[leader_election]`): only the holder runs the engine, sources and plan steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    /// How to reach the cluster (`[kubernetes]`).
    pub access: crate::kube::Access,
    pub namespace: String,
    /// The Lease's name.
    pub lease: String,
    /// This replica's name in the Lease: `identity`, else `$POD_NAME`, else the hostname.
    pub identity: String,
    /// How long the Lease holds after each renewal (whole seconds).
    pub lease_duration: Duration,
    /// How often the leader renews the Lease.
    pub renew_every: Duration,
    /// How often a standby tries to take the Lease.
    pub retry_every: Duration,
}

/// Settings of the daemon process itself (`[daemon]`).
#[derive(Debug, Clone)]
pub struct Daemon {
    /// Where incident reports and state are written.
    pub state_dir: PathBuf,
    /// The address of rearguard's own HTTP listener.
    pub listen: SocketAddr,
    pub mode: Mode,
    /// How often the engine is ticked to expire windows and fire timers.
    pub tick: Duration,
    /// How long a shutdown waits for an in-flight step to reach a safe point.
    pub drain_timeout: Duration,
    /// The default time a source may fail before the watchdog declares itself blind.
    pub blind_after: Duration,
    /// The share rule of blindness, beside `blind_after`: too many of a signal's
    /// evaluations are source errors.
    pub blind_share: BlindShare,
    /// The bearer token of the control API; without it, the control API is off.
    pub control_token: Option<SecretString>,
    /// Whether the read-only control endpoints (status, incidents, why, the status page)
    /// answer without the token.
    pub read_open: bool,
    /// The bounds of the HTTP listener on `listen`.
    pub listener: ListenerLimits,
}

/// How much of rearguard a peer of its HTTP listener can hold (`daemon.max_connections`,
/// `daemon.header_read_timeout`); a quarter of the connections may be waiting for a
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections served at once; more wait in the kernel's accept backlog.
    pub max_connections: u32,
    /// How long a connection may take to send a request's headers.
    pub header_read_timeout: Duration,
}

impl ListenerLimits {
    /// `daemon.max_connections` when the file does not set it.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 256;
    /// The largest `daemon.max_connections` accepted.
    pub const MOST_CONNECTIONS: u32 = 1_000_000;
    /// `daemon.header_read_timeout` when the file does not set it.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
}

/// When a signal that reads only some of the time counts as blind (`daemon.blind_share`,
/// `blind_share_window`, `blind_share_min`): at least `share` of its evaluations in the
/// window were source errors; sight returns at half of `share` or less.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlindShare {
    /// The fraction of evaluations (0 to 1) at or above which the signal is blind.
    pub share: f64,
    /// How far back evaluations count, at the least.
    pub window: Duration,
    /// The fewest evaluations in the window the share is judged on.
    pub min_evaluations: u32,
}

impl BlindShare {
    /// `daemon.blind_share` when the file does not set it.
    pub const DEFAULT_SHARE: f64 = 0.5;
    /// `daemon.blind_share_window` when the file does not set it.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
    /// `daemon.blind_share_min` when the file does not set it.
    pub const DEFAULT_MIN_EVALUATIONS: u32 = 10;

    /// The window of a signal read every `interval`: `window`, or long enough to hold
    /// `min_evaluations` readings when that is longer, so a slow signal is judged too.
    pub fn window_for(&self, interval: Duration) -> Duration {
        self.window.max(interval * self.min_evaluations)
    }
}

/// `enforce` acts; `shadow` decides and notifies but never runs a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Shadow,
}

impl Mode {
    /// The mode as the configuration spells it (`daemon.mode`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// Something watched and rolled back as a unit (`[[target]]`).
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    /// The plan run when one of the target's rules fires; `None` means escalate only.
    pub plan: Option<usize>,
    /// Automatic action only when a breach began within this time after the latest change.
    pub blame_window: Duration,
    /// Minimum time between the end of one rollback and the start of the next.
    pub cooldown: Duration,
    pub max_rollbacks: u32,
    pub rollback_period: Duration,
    pub change: Option<ChangeSpec>,
    /// How long a revision must stay healthy before its configuration is snapshotted
    /// as known good: a `kube_deployment` target's ConfigMaps and Secrets, a host
    /// target's `config_files`; `None` for a target with neither.
    pub bake: Option<Duration>,
    /// A `release_symlink` or `exec` target's configuration files: absolute paths whose
    /// last component may hold `*` and `?`. Their content is part of the revision
    /// (`v18+cfg.1` when only they changed), and they are snapshotted into the state
    /// directory when a revision bakes.
    pub config_files: Vec<String>,
    /// How many revisions' snapshots are kept per target (the newest).
    pub keep_snapshots: u32,
    /// How long before a change none of the target's rules may have been pending or
    /// firing for the replaced revision to count as healthy (a rollback destination).
    pub healthy_for: Duration,
}

/// How a change of a target is detected.
#[derive(Debug, Clone)]
pub enum ChangeSpec {
    /// The revision is the name of the directory a `current` symlink points at.
    ReleaseSymlink { path: PathBuf, interval: Duration },
    /// The revision is what a command prints on stdout (trimmed).
    Exec {
        command: Vec<String>,
        /// Variables set for the command, over the default environment.
        env: BTreeMap<String, String>,
        /// Names passed through from rearguard's environment.
        inherit_env: Vec<String>,
        interval: Duration,
        timeout: Duration,
    },
    /// The Deployment's revision: that of the ReplicaSet running its pod template,
    /// watched through the API.
    KubeDeployment(KubeDeploymentRef),
}

/// A measured quantity of a target (`[[signal]]`).
#[derive(Debug, Clone)]
pub struct Signal {
    pub name: String,
    pub target: usize,
    pub interval: Duration,
    pub timeout: Duration,
    pub blind_after: Duration,
    pub source: SourceSpec,
}

/// What kind of reading a signal produces; it decides which conditions apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    /// Pass or fail (probes, smoke tests).
    Check,
    /// A number (latency in seconds, a gauge).
    Number,
    /// A ratio of errors to requests, with the request count.
    Rate,
    /// Distinct events (OOM kills), counted in a window.
    Event,
}

impl SignalKind {
    pub fn name(self) -> &'static str {
        match self {
            SignalKind::Check => "check",
            SignalKind::Number => "number",
            SignalKind::Rate => "rate",
            SignalKind::Event => "event",
        }
    }
}

impl Signal {
    /// The longest time between two readings that still counts as unbroken observation:
    /// 1.5 intervals, so that one missed reading is a gap, or the timeout plus the 1 s
    /// safety net of a sample when that is longer (the daemon stamps each reading with
    /// its scheduled time, and a sample that overruns its interval delays the next one by
    /// at most that much).
    pub fn max_gap(&self) -> Duration {
        (self.interval * 3 / 2).max(self.timeout + Duration::from_secs(1))
    }

    /// The range a built-in rate or quantile query looks back over: a step fault shows
    /// fully in the reading only once the window holds nothing from before it. Zero for
    /// gauges, checks, events and free PromQL (whose ranges rearguard cannot see).
    pub fn window(&self) -> Duration {
        match &self.source {
            SourceSpec::Prometheus(PrometheusSpec {
                query: PromQuery::ErrorRate { .. } | PromQuery::Latency { .. },
                window,
                ..
            })
            | SourceSpec::Scrape(ScrapeSpec {
                query: ScrapeQuery::ErrorRate { .. } | ScrapeQuery::Latency { .. },
                window,
                ..
            }) => *window,
            _ => Duration::ZERO,
        }
    }

    pub fn kind(&self) -> SignalKind {
        match &self.source {
            SourceSpec::HttpProbe(_) | SourceSpec::Exec(_) => SignalKind::Check,
            SourceSpec::Prometheus(p) => match p.query {
                PromQuery::ErrorRate { .. } => SignalKind::Rate,
                PromQuery::Latency { .. } | PromQuery::Expr(_) => SignalKind::Number,
            },
            SourceSpec::Scrape(s) => match s.query {
                ScrapeQuery::ErrorRate { .. } => SignalKind::Rate,
                ScrapeQuery::Latency { .. } | ScrapeQuery::Value(_) => SignalKind::Number,
            },
            SourceSpec::Alertmanager(_) => SignalKind::Check,
            SourceSpec::CgroupOom { .. } | SourceSpec::KubePods(_) => SignalKind::Event,
        }
    }
}

/// Where a signal's readings come from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    HttpProbe(HttpProbeSpec),
    Exec(ExecSpec),
    Prometheus(PrometheusSpec),
    Scrape(ScrapeSpec),
    Alertmanager(AlertmanagerSpec),
    CgroupOom(CgroupOomSpec),
    KubePods(KubePodsSpec),
}

/// The pods of a label selector and the kind of event counted (`kube_pods`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubePodsSpec {
    /// How to reach the cluster (`[kubernetes]`).
    pub access: crate::kube::Access,
    pub namespace: String,
    /// A label selector, as in `kubectl -l`.
    pub selector: String,
    pub event: PodEvent,
}

/// What a `kube_pods` signal counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodEvent {
    OomKilled,
    CrashLoop,
    NotReady,
    Evicted,
}

impl PodEvent {
    pub fn name(self) -> &'static str {
        match self {
            PodEvent::OomKilled => "oom_killed",
            PodEvent::CrashLoop => "crash_loop",
            PodEvent::NotReady => "not_ready",
            PodEvent::Evicted => "evicted",
        }
    }
}

impl SourceSpec {
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceSpec::HttpProbe(_) => "http_probe",
            SourceSpec::Exec(_) => "exec",
            SourceSpec::Prometheus(_) => "prometheus",
            SourceSpec::Scrape(_) => "scrape",
            SourceSpec::Alertmanager(_) => "alertmanager",
            SourceSpec::CgroupOom { .. } => "cgroup_oom",
            SourceSpec::KubePods(_) => "kube_pods",
        }
    }
}

/// Which cgroup a `cgroup_oom` signal watches: exactly one of `cgroup` and `unit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupOomSpec {
    /// A cgroup directory, as configured (`cgroup = "/sys/fs/cgroup/..."`).
    Path(PathBuf),
    /// A systemd unit in a slice (`unit = "shop.service"`), resolved to its cgroup on the
    /// hierarchy the host has when watching starts (see `source::cgroup_oom`).
    Unit {
        /// The unit's full name, e.g. `shop.service`.
        unit: String,
        /// The slice it runs in, e.g. `system.slice`; `-.slice` is the root.
        slice: String,
    },
}

#[derive(Debug, Clone)]
pub struct HttpProbeSpec {
    pub url: reqwest::Url,
    pub method: reqwest::Method,
    pub expect_status: Vec<u16>,
    pub body_contains: Option<String>,
    /// A JSON pointer (`/status`) and the value it must equal.
    pub json: Option<(String, serde_json::Value)>,
}

#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The program and its arguments; never run through a shell.
    pub command: Vec<String>,
    /// Variables set for the command, over the default environment
    /// ([`crate::process::DEFAULT_ENV`]); a step's `REARGUARD_*` values win over them.
    pub env: BTreeMap<String, String>,
    /// Names passed through from rearguard's environment when set (`inherit_env`).
    pub inherit_env: Vec<String>,
    pub cwd: Option<PathBuf>,
}

/// A Prometheus server queried through its HTTP API.
#[derive(Debug, Clone)]
pub struct PrometheusSpec {
    /// The server's base URL, e.g. `http://prometheus:9090`.
    pub url: reqwest::Url,
    pub query: PromQuery,
    /// The range of `increase()` and `rate()` in built-in queries.
    pub window: Duration,
    pub auth: Option<HttpAuth>,
    pub tls: TlsSpec,
}

/// What a Prometheus signal asks.
#[derive(Debug, Clone)]
pub enum PromQuery {
    /// `sum(increase(errors[window]))` out of `sum(increase(requests[window]))`.
    ErrorRate {
        requests: selector::Selector,
        errors: Vec<selector::Matcher>,
    },
    /// `histogram_quantile(q, sum by (le) (rate(histogram[window])))`.
    Latency {
        histogram: selector::Selector,
        quantile: f64,
    },
    /// Any PromQL expression returning one value.
    Expr(String),
}

/// A Prometheus text or OpenMetrics endpoint scraped directly.
#[derive(Debug, Clone)]
pub struct ScrapeSpec {
    pub url: reqwest::Url,
    pub query: ScrapeQuery,
    /// Counters and histograms are compared across this window.
    pub window: Duration,
    pub auth: Option<HttpAuth>,
    pub tls: TlsSpec,
}

/// What a scrape signal computes from the exposition.
#[derive(Debug, Clone)]
pub enum ScrapeQuery {
    /// The increase of the error series out of the increase of the request series.
    ErrorRate {
        requests: selector::Selector,
        errors: Vec<selector::Matcher>,
    },
    /// A quantile of the increase of a histogram's buckets (`_bucket` series).
    Latency {
        histogram: selector::Selector,
        quantile: f64,
    },
    /// The sum of the selected series' current values (a gauge).
    Value(selector::Selector),
}

/// Alertmanager's webhook, received on rearguard's listener: firing alerts whose labels
/// match are failing readings, resolved ones passing.
#[derive(Debug, Clone)]
pub struct AlertmanagerSpec {
    /// Label equality matchers an alert must all satisfy.
    pub matchers: Vec<(String, String)>,
    /// The bearer token Alertmanager sends (`http_config.authorization`).
    pub token: SecretString,
}

/// Credentials for an HTTP source.
#[derive(Clone)]
pub enum HttpAuth {
    Bearer(SecretString),
    Basic {
        username: String,
        password: SecretString,
    },
}

impl fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpAuth::Bearer(_) => f.write_str("Bearer([redacted])"),
            HttpAuth::Basic { username, .. } => write!(f, "Basic({username:?}, [redacted])"),
        }
    }
}

/// TLS settings for an HTTP source; rustls with the system roots by default.
#[derive(Debug, Clone, Default)]
pub struct TlsSpec {
    /// A PEM file of extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. For tests and emergencies only.
    pub insecure_skip_verify: bool,
}

/// A row of the trigger table (`[[rule]]`).
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub target: usize,
    pub signal: usize,
    pub when: Condition,
    pub mode: RuleMode,
    /// Once firing, the rule clears when this holds on every evaluation for `clear_for`.
    pub clear: Condition,
    pub clear_for: Duration,
    /// Rate readings with fewer requests are insufficient samples.
    pub min_requests: u64,
    /// The one-sided confidence level (0.95) that the true rate is past the threshold.
    pub confidence: Option<f64>,
    /// How much history before a change forms the baseline of a `x baseline` condition
    /// or a judge.
    pub baseline_window: Duration,
    /// The fewest readings a baseline must hold (`baseline_min_samples`), and the share
    /// of `baseline_window` they must cover (`baseline_min_coverage`); below either
    /// there is no baseline and the rule holds.
    pub baseline_min_samples: u32,
    pub baseline_min_coverage: f64,
    /// The statistical judge of a `> baseline` condition; `None` for other conditions.
    pub judge: Option<Judge>,
    pub no_data: Policy,
    pub insufficient: Policy,
    /// The longest time between two readings of the rule's signal that still counts as
    /// unbroken observation (see [`Signal::max_gap`]); a longer silence restarts the
    /// proof of `for`, `consecutive`, `m_of_n` and `clear_for`.
    pub max_gap: Duration,
}

/// A judge (`when = "> baseline"`): whether the target is worse since its latest change
/// than in the baseline window before it, decided with a stated confidence by a test
/// that stays valid when asked at every reading (see `engine::judge`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judge {
    /// The confidence (0.99) a "worse" needs; `1 - confidence` bounds the share of
    /// healthy changes it calls worse, however often it is asked.
    pub confidence: f64,
    /// How much worse counts (1.5 = the error ratio, or the median and spread, 1.5
    /// times the baseline's).
    pub min_effect: f64,
    /// How long after a change an inconclusive judge tells people it cannot judge.
    pub inconclusive_after: Duration,
}

/// How a rule turns a sequence of breaching evaluations into firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleMode {
    /// Every evaluation for this long breaches (Prometheus `for`).
    Sustained { for_: Duration },
    /// N breaching evaluations in a row.
    Consecutive { n: u32 },
    /// At least M of the last N evaluations breach.
    MOfN { m: u32, n: u32 },
    /// The count of distinct events within the window meets the condition.
    Within { window: Duration },
}

impl RuleMode {
    pub fn describe(&self) -> String {
        match self {
            RuleMode::Sustained { for_ } => format!("for {}", units::format_duration(*for_)),
            RuleMode::Consecutive { n } => format!("{n} consecutive"),
            RuleMode::MOfN { m, n } => format!("{m} of last {n}"),
            RuleMode::Within { window } => format!("within {}", units::format_duration(*window)),
        }
    }
}

/// What a rule does with a reading that has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Keep the current state; the reading neither breaches nor clears.
    Hold,
    Breach,
    Ok,
}

impl Rule {
    /// The longest time from the onset of a step fault to firing, given the signal's
    /// sampling, for a fault past the threshold that the source reads as values
    /// throughout (held readings and gaps restart the proof, see `engine::rule`):
    /// - the signal's `window` (rate and quantile queries): the window's ratio or
    ///   quantile is a mix of before and after the onset, and is wholly after it `window`
    ///   after the onset; a fault of ratio `r` from a clean start crosses a threshold
    ///   `t` at `window * t / r`, which approaches `window` as `r` approaches `t`;
    /// - one interval: the first sample at or after the crossing;
    /// - the rule's own bound: `for` rounded up to whole intervals, `consecutive` N-1
    ///   further intervals, `m_of_n` M-1;
    /// - the timeout: the sample that fires may take that long.
    ///
    /// A Prometheus server's own scrape interval comes on top (rearguard cannot see it),
    /// as do the ranges inside a free `query` expression.
    pub fn worst_case_detection(&self, signal: &Signal) -> Duration {
        let i = signal.interval;
        let own = match self.mode {
            RuleMode::Sustained { for_ } => {
                // Firing happens at the first evaluation at least `for` after the first
                // breaching one; evaluations are one interval apart.
                let steps = (for_.as_secs_f64() / i.as_secs_f64().max(1e-9)).ceil();
                i.mul_f64(steps)
            }
            RuleMode::Consecutive { n } => i * n.saturating_sub(1),
            RuleMode::MOfN { m, .. } => i * m.saturating_sub(1),
            RuleMode::Within { .. } => Duration::ZERO,
        };
        // A pushed reading is judged when it arrives: only the rule's own bound counts
        // (from the webhook's arrival; the pusher's own delays come before it). Pod
        // events come through a watch, as they happen.
        if let SourceSpec::Alertmanager(_) | SourceSpec::KubePods(_) = signal.source {
            return own;
        }
        // OOM kills wake the watcher through the kernel's notification; the last of its
        // re-reads after a notification comes 1s after it (the interval's read is the
        // safety net for a lost notification, not the bound).
        if let SourceSpec::CgroupOom(_) = signal.source {
            return own + Duration::from_secs(1);
        }
        // Other events (the `within` mode) arrive by polling, so one interval too.
        signal.window() + own + i + signal.timeout
    }
}

/// An ordered rollback procedure with its verification (`[[plan]]`).
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub steps: Vec<Step>,
    pub verify: Verify,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub timeout: Duration,
    /// Further attempts after a failed one.
    pub retries: u32,
    pub on_failure: OnFailure,
    pub action: ActionSpec,
}

/// What a plan does when a step has failed all its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop the plan and escalate.
    Abort,
    /// Record the failure and run the next step.
    Continue,
}

#[derive(Debug, Clone)]
pub enum ActionSpec {
    Exec(ExecSpec),
    ReleaseSwitch(ReleaseSwitchSpec),
    Http(HttpCallSpec),
    KubeRolloutUndo(KubeRolloutUndoSpec),
    KubeRolloutStatus(KubeDeploymentRef),
    KubePause(KubeDeploymentRef),
    KubeResume(KubeDeploymentRef),
    KubeScale(KubeScaleSpec),
    KubeRestart(KubeDeploymentRef),
    KubeMarkBad(KubeDeploymentRef),
    KubeRestoreConfig(KubeRestoreConfigSpec),
    KubeDeletePods(KubeDeploymentRef),
    RestoreConfigFiles(RestoreConfigFilesSpec),
}

impl ActionSpec {
    pub fn type_name(&self) -> &'static str {
        match self {
            ActionSpec::Exec(_) => "exec",
            ActionSpec::ReleaseSwitch(_) => "release_switch",
            ActionSpec::Http(_) => "http",
            ActionSpec::KubeRolloutUndo(_) => "kube_rollout_undo",
            ActionSpec::KubeRolloutStatus(_) => "kube_rollout_status",
            ActionSpec::KubePause(_) => "kube_pause",
            ActionSpec::KubeResume(_) => "kube_resume",
            ActionSpec::KubeScale(_) => "kube_scale",
            ActionSpec::KubeRestart(_) => "kube_restart",
            ActionSpec::KubeMarkBad(_) => "kube_mark_bad",
            ActionSpec::KubeRestoreConfig(_) => "kube_restore_config",
            ActionSpec::KubeDeletePods(_) => "kube_delete_pods",
            ActionSpec::RestoreConfigFiles(_) => "restore_config_files",
        }
    }
}

/// `kubectl rollout undo` of one Deployment, through the API.
#[derive(Debug, Clone)]
pub struct KubeRolloutUndoSpec {
    /// How to reach the cluster (`[kubernetes]`).
    pub access: crate::kube::Access,
    pub namespace: String,
    pub deployment: String,
    pub to_revision: ToRevision,
}

/// Restores a Deployment's ConfigMaps and Secrets from a revision's snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeRestoreConfigSpec {
    pub target: KubeDeploymentRef,
    /// The revision whose snapshot is restored; `None`: the incident's `{to_revision}`.
    pub revision: Option<i64>,
}

/// Restores a host target's `config_files` from a revision's snapshot in the state
/// directory, with each file's mode and owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreConfigFilesSpec {
    /// `daemon.state_dir`, where the snapshots are.
    pub state_dir: PathBuf,
    /// The revision whose snapshot is restored; `None`: the incident's `{to_revision}`.
    pub revision: Option<String>,
}

/// One Deployment, and how to reach its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeDeploymentRef {
    /// How to reach the cluster (`[kubernetes]`).
    pub access: crate::kube::Access,
    pub namespace: String,
    pub deployment: String,
}

/// `kubectl scale` of one Deployment, remembering the count it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeScaleSpec {
    pub target: KubeDeploymentRef,
    pub replicas: Replicas,
}

/// The replica count a kube_scale step sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    Count(i32),
    /// The count an earlier kube_scale step replaced (kept on the Deployment).
    Recorded,
}

/// The revision a rollout undo goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToRevision {
    /// The revision before the Deployment's latest (kubectl's default).
    Previous,
    /// This revision.
    Number(i64),
    /// The incident's `{to_revision}`, which must be a revision number.
    Incident,
}

#[derive(Debug, Clone)]
pub struct ReleaseSwitchSpec {
    /// The symlink that names the running release.
    pub current: PathBuf,
    /// The directory holding one directory per release.
    pub releases: PathBuf,
    /// Run after the switch (argv, no shell).
    pub restart: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct HttpCallSpec {
    pub method: reqwest::Method,
    /// May hold placeholders such as `{incident}`; values are percent-encoded.
    pub url: String,
    pub headers: Vec<(String, HeaderValue)>,
    /// May hold placeholders; values are escaped as JSON string content.
    pub body: Option<String>,
    pub expect_status: Vec<u16>,
}

/// A header value; secret values are never printed.
#[derive(Clone)]
pub enum HeaderValue {
    Plain(String),
    Secret(SecretString),
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Plain(v) => write!(f, "{v:?}"),
            HeaderValue::Secret(_) => f.write_str("[redacted]"),
        }
    }
}

/// How a plan's success is judged.
#[derive(Debug, Clone)]
pub struct Verify {
    /// After the last step, the rules are watched this long.
    pub window: Duration,
    /// Rules that must be clear at the end of the window; empty means the rules that
    /// opened the incident.
    pub rules: Vec<usize>,
}

/// A place notifications go to (`[[notifier]]`).
#[derive(Debug, Clone)]
pub struct Notifier {
    pub name: String,
    /// Bounds one delivery attempt (every request it makes).
    pub timeout: Duration,
    /// The least time between two deliveries, from `per_minute`; zero for `log`.
    pub min_interval: Duration,
    pub kind: NotifierKind,
}

/// Each notifier type with its settings. Secrets are read at load time and never printed.
#[derive(Debug, Clone)]
pub enum NotifierKind {
    /// The daemon's log and the incident report.
    Log,
    Slack(SlackSpec),
    PagerDuty(PagerDutySpec),
    Teams(TeamsSpec),
    Statuspage(StatuspageSpec),
    Email(EmailSpec),
    Webhook(WebhookSpec),
}

impl NotifierKind {
    pub fn name(&self) -> &'static str {
        match self {
            NotifierKind::Log => "log",
            NotifierKind::Slack(_) => "slack",
            NotifierKind::PagerDuty(_) => "pagerduty",
            NotifierKind::Teams(_) => "teams",
            NotifierKind::Statuspage(_) => "statuspage",
            NotifierKind::Email(_) => "email",
            NotifierKind::Webhook(_) => "webhook",
        }
    }
}

/// Slack: an incoming webhook (one message per transition), or a bot token (one thread
/// per incident, the parent message kept current).
#[derive(Debug, Clone)]
pub enum SlackSpec {
    Webhook {
        url: SecretString,
    },
    Bot {
        token: SecretString,
        channel: String,
        /// `https://slack.com/api` unless set; methods are appended (`/chat.postMessage`).
        api_url: reqwest::Url,
    },
}

/// PagerDuty Events API v2.
#[derive(Debug, Clone)]
pub struct PagerDutySpec {
    pub routing_key: SecretString,
    /// `https://events.pagerduty.com` unless set; `/v2/enqueue` and
    /// `/v2/change/enqueue` are appended.
    pub url: reqwest::Url,
}

/// Microsoft Teams through a Workflows webhook.
#[derive(Debug, Clone)]
pub struct TeamsSpec {
    pub url: SecretString,
}

/// Atlassian Statuspage.
#[derive(Debug, Clone)]
pub struct StatuspageSpec {
    pub api_key: SecretString,
    pub page_id: String,
    /// The component whose status follows the incident; none leaves components alone.
    pub component_id: Option<String>,
    /// `https://api.statuspage.io/v1` unless set.
    pub api_url: reqwest::Url,
}

/// Email over SMTP.
#[derive(Debug, Clone)]
pub struct EmailSpec {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub from: String,
    pub to: Vec<String>,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain text; for a relay on the same host only.
    None,
    /// Upgrade with STARTTLS (port 587); the upgrade is required.
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// A generic webhook: a versioned JSON body signed with HMAC-SHA256.
#[derive(Debug, Clone)]
pub struct WebhookSpec {
    pub url: reqwest::Url,
    /// The HMAC key of the signature header.
    pub secret: SecretString,
}

/// One rung of the escalation ladder (`[[escalation]]`).
#[derive(Debug, Clone)]
pub struct EscalationLevel {
    pub name: String,
    pub on: Vec<Occasion>,
    /// Delay after the occasion before notifying; cancelled by acknowledgement or resolution.
    pub after: Duration,
    /// Repeat the notification this often until acknowledged or resolved.
    pub repeat: Option<Duration>,
    pub notify: Vec<usize>,
    /// For `rollback_slow`: how long a rollback (plan and verification) may take.
    pub slow_after: Duration,
    /// For `attempts_failed`: how many failed step attempts in one incident.
    pub attempts: u32,
}

/// The moments of an incident's life that escalation levels react to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Occasion {
    Opened,
    RollbackStarted,
    RollbackSlow,
    AttemptsFailed,
    RollbackSucceeded,
    RollbackFailed,
    VerificationFailed,
    /// The verification window ended without measured readings showing the rules clear.
    VerificationInconclusive,
    NotRolledBack,
    Blind,
    Acknowledged,
    Resolved,
    /// Another rule fired into an incident already decided on (or fired again in it).
    RuleJoined,
    /// A revision rearguard marked bad (rolled back from) is deployed again.
    BadRevisionDeployed,
    /// A judge (`> baseline`) was still inconclusive `inconclusive_after` a change.
    CannotJudge,
}

impl Occasion {
    pub const ALL: [Occasion; 15] = [
        Occasion::Opened,
        Occasion::RollbackStarted,
        Occasion::RollbackSlow,
        Occasion::AttemptsFailed,
        Occasion::RollbackSucceeded,
        Occasion::RollbackFailed,
        Occasion::VerificationFailed,
        Occasion::VerificationInconclusive,
        Occasion::NotRolledBack,
        Occasion::Blind,
        Occasion::Acknowledged,
        Occasion::Resolved,
        Occasion::RuleJoined,
        Occasion::BadRevisionDeployed,
        Occasion::CannotJudge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Occasion::Opened => "opened",
            Occasion::RollbackStarted => "rollback_started",
            Occasion::RollbackSlow => "rollback_slow",
            Occasion::AttemptsFailed => "attempts_failed",
            Occasion::RollbackSucceeded => "rollback_succeeded",
            Occasion::RollbackFailed => "rollback_failed",
            Occasion::VerificationFailed => "verification_failed",
            Occasion::VerificationInconclusive => "verification_inconclusive",
            Occasion::NotRolledBack => "not_rolled_back",
            Occasion::Blind => "blind",
            Occasion::Acknowledged => "acknowledged",
            Occasion::Resolved => "resolved",
            Occasion::RuleJoined => "rule_joined",
            Occasion::BadRevisionDeployed => "bad_revision_deployed",
            Occasion::CannotJudge => "cannot_judge",
        }
    }

    /// What people read: "rollback started".
    pub fn headline(self) -> &'static str {
        match self {
            Occasion::Opened => "incident opened",
            Occasion::RollbackStarted => "rollback started",
            Occasion::RollbackSlow => "rollback is taking too long",
            Occasion::AttemptsFailed => "several rollback attempts failed",
            Occasion::RollbackSucceeded => "rollback succeeded and verified",
            Occasion::RollbackFailed => "rollback failed",
            Occasion::VerificationFailed => "still unhealthy after rollback",
            Occasion::VerificationInconclusive => "rolled back, not verified",
            Occasion::NotRolledBack => "not rolled back automatically",
            Occasion::Blind => "watchdog is blind",
            Occasion::Acknowledged => "acknowledged",
            Occasion::Resolved => "incident resolved",
            Occasion::RuleJoined => "another rule fired",
            Occasion::BadRevisionDeployed => "a revision marked bad is deployed again",
            Occasion::CannotJudge => "cannot judge the latest change",
        }
    }

    /// Occasions that end the need to act: told to every notifier already told of the
    /// incident, at once, whatever the levels say.
    pub fn closes_loop(self) -> bool {
        matches!(self, Occasion::Acknowledged | Occasion::Resolved)
    }

    /// Occasions that are news for whoever already knows of the incident: told at once
    /// to every notifier already told of it and to the levels that list them, never
    /// delayed nor repeated (the acknowledgement, the resolution, another rule firing
    /// into it, a revision marked bad deployed again).
    pub fn told_at_once(self) -> bool {
        self.closes_loop()
            || matches!(
                self,
                Occasion::RuleJoined | Occasion::BadRevisionDeployed | Occasion::CannotJudge
            )
    }
}

impl Config {
    /// The index of the signal with this name.
    pub fn signal_index(&self, name: &str) -> Option<usize> {
        self.signals.iter().position(|s| s.name == name)
    }
}
