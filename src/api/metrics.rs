//! rearguard's own metrics, in the OpenMetrics text format (prometheus-client).
//!
//! [`Metrics::new`] registers every family and creates every label set the configuration
//! names, so that each rule, signal, target, plan step and notifier is exposed at 0 from
//! the first scrape: a series that appears only when something first goes wrong makes
//! `rate()` and `increase()` miss that first event. The handles of those label sets are
//! kept by configuration index, so that recording is an index and an atomic operation,
//! with no hashing of label values and no allocation.
//!
//! Callers pass plain values (indexes into the configuration, names, engine enums); an
//! index out of range or a notifier name the configuration does not have is ignored, so
//! a recording never panics and never creates a series outside the configuration.
//!
//! What outlives one configuration (the reloads, and the process's own series in
//! `process.rs`) is a [`Lasting`], made once per process and registered in every
//! configuration's registry, so that a reload does not reset it. `/metrics` is served in
//! OpenMetrics to whoever asks for it (Prometheus does), else in the Prometheus text
//! format (`text.rs`), which is what `promtool check metrics` reads.
//!
//! This module only counts: it decides nothing and reads no clock; its only I/O is the
//! process's own figures, read from the kernel at each scrape.

mod process;
pub mod text;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::config::{Condition, Config, Threshold};
use crate::engine::{Cause, Outcome, Phase, ReadingState};
use crate::notify::Delivery;

/// The upper bounds of the engine step histogram, in seconds: 1, 2.5 and 5 per decade
/// from 10µs to 1s. A step normally takes microseconds; the upper buckets show a step
/// that is stuck on something it should not be doing.
const STEP_BUCKETS: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The upper bounds, in seconds, of the histograms of an incident's stages (breach to
/// decision, decision to rollback done, verification): from a tenth of a second (a
/// decision on a rule without `for`) to an hour (a long verification window).
const STAGE_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// A gauge of a value that is not a whole number.
type FloatGauge = Gauge<f64, AtomicU64>;

const PHASES: [Phase; 3] = [Phase::Ok, Phase::Pending, Phase::Firing];
const CAUSES: [Cause; 2] = [Cause::Breach, Cause::Blind];
const READING_STATES: [&str; 4] = ["value", "no_data", "insufficient", "error"];
const OUTCOMES: [&str; 5] = [
    "rolled_back",
    "rolled_back_unverified",
    "recovered",
    "resolved_by_operator",
    "interrupted",
];
const DELIVERIES: [&str; 3] = ["accepted", "retry", "rejected"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RulePhaseLabels {
    rule: String,
    target: String,
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadingLabels {
    signal: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabels {
    signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpenedLabels {
    target: String,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    target: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    plan: String,
    step: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    notifier: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifierLabels {
    notifier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleTargetLabels {
    rule: String,
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// One rule's phase gauges, one per [`PHASES`] entry.
#[derive(Debug)]
struct RuleSeries {
    phases: [Gauge; 3],
    /// Held while the three gauges change, so that two callers cannot leave two phases
    /// at 1; a scrape may still see the change half done, for one scrape.
    changing: Mutex<()>,
    evaluations: Counter,
    /// The latest value judged, and the threshold it was judged against.
    value: FloatGauge,
    threshold: FloatGauge,
    /// The breach condition, for the threshold of a `x baseline` rule.
    when: Condition,
}

#[derive(Debug)]
struct SignalSeries {
    /// One per [`READING_STATES`] entry.
    readings: [Counter; 4],
    source_errors: Counter,
}

#[derive(Debug)]
struct TargetSeries {
    /// One per [`CAUSES`] entry.
    opened: [Counter; 2],
    open: Gauge,
    /// One per [`OUTCOMES`] entry.
    closed: [Counter; 5],
    breaker_open: Gauge,
    paused: Gauge,
    /// From the breach to the decision, from the decision to the rollback done, and the
    /// verification.
    breach_to_decision: Histogram,
    decision_to_rollback_done: Histogram,
    verification: Histogram,
}

#[derive(Debug)]
struct NotifierSeries {
    /// One per [`DELIVERIES`] entry.
    deliveries: [Counter; 3],
    pending: Gauge,
}

/// rearguard's metrics registry, with a handle on every series the configuration names.
/// Shared between threads behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    rules: Vec<RuleSeries>,
    signals: Vec<SignalSeries>,
    targets: Vec<TargetSeries>,
    /// By plan index, then step index: `[ok, failed]`.
    steps: Vec<Vec<[Counter; 2]>>,
    notifiers: HashMap<String, NotifierSeries>,
    engine_step: Histogram,
    leader: Gauge,
    outbox_unwritten: Gauge,
    store_write_failures: Counter,
}

/// Registers `metric` under `name` and gives it back, for the handle the registry keeps
/// a clone of.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// [`registered`] for a metric in seconds: its name ends in `_seconds`.
fn registered_seconds<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register_with_unit(name, help, Unit::Seconds, metric.clone());
    metric
}

/// A histogram of one of an incident's stages.
fn stage_histogram() -> Histogram {
    Histogram::new(STAGE_BUCKETS)
}

type StageFamily = Family<TargetLabels, Histogram, fn() -> Histogram>;

fn stage_family() -> StageFamily {
    Family::new_with_constructor(stage_histogram)
}

/// The labelled families, registered once; every rule, signal, target, plan step and
/// notifier of a configuration takes its series from them.
struct Families {
    rule_phase: Family<RulePhaseLabels, Gauge>,
    readings: Family<ReadingLabels, Counter>,
    source_errors: Family<SignalLabels, Counter>,
    evaluations: Family<RuleLabels, Counter>,
    opened: Family<OpenedLabels, Counter>,
    open: Family<TargetLabels, Gauge>,
    closed: Family<ClosedLabels, Counter>,
    actions: Family<ActionLabels, Counter>,
    notifications: Family<NotificationLabels, Counter>,
    pending: Family<NotifierLabels, Gauge>,
    rule_value: Family<RuleTargetLabels, FloatGauge>,
    rule_threshold: Family<RuleTargetLabels, FloatGauge>,
    breaker_open: Family<TargetLabels, Gauge>,
    paused: Family<TargetLabels, Gauge>,
    breach_to_decision: StageFamily,
    decision_to_rollback_done: StageFamily,
    verification: StageFamily,
}

impl Families {
    fn register(registry: &mut Registry) -> Families {
        let r = registry;
        Families {
            rule_phase: registered(
                r,
                "rule_phase",
                "The phase of each rule, 1 for the current one: ok, pending or firing",
                Family::default(),
            ),
            readings: registered(
                r,
                "readings",
                "Readings taken by state: value, no_data, insufficient or error",
                Family::default(),
            ),
            source_errors: registered(
                r,
                "source_errors",
                "Readings whose source could not be read",
                Family::default(),
            ),
            evaluations: registered(
                r,
                "evaluations",
                "Readings a rule has judged",
                Family::default(),
            ),
            opened: registered(
                r,
                "incidents_opened",
                "Incidents opened by cause: breach or blind",
                Family::default(),
            ),
            open: registered(r, "incidents_open", "Incidents open now", Family::default()),
            closed: registered(
                r,
                "incidents_closed",
                "Incidents closed by outcome: rolled_back, rolled_back_unverified, recovered, resolved_by_operator or interrupted",
                Family::default(),
            ),
            actions: registered(
                r,
                "actions",
                "Plan step attempts by outcome: ok or failed",
                Family::default(),
            ),
            notifications: registered(
                r,
                "notifications",
                "Delivery attempts by the provider's answer: accepted, retry or rejected",
                Family::default(),
            ),
            pending: registered(
                r,
                "outbox_pending",
                "Messages in the outbox waiting for delivery",
                Family::default(),
            ),
            rule_value: registered(
                r,
                "rule_value",
                "The value of the latest reading each rule judged, in its signal's unit: a fraction for error rates, seconds for latency, 1 for a failing check and 0 for a passing one, a count of distinct events; NaN when that reading had no value (no data, too few requests, no baseline)",
                Family::default(),
            ),
            rule_threshold: registered(
                r,
                "rule_threshold",
                "The value each rule breaches past, in the unit of rule_value: its threshold, or its ratio times the baseline (NaN while there is none); 1 for a rule on a failing check",
                Family::default(),
            ),
            breaker_open: registered(
                r,
                "target_breaker_open",
                "1 while the target's circuit breaker is open: no automatic action until an operator clears it",
                Family::default(),
            ),
            paused: registered(
                r,
                "target_paused",
                "1 while automatic action on the target is paused (the target, or all targets)",
                Family::default(),
            ),
            breach_to_decision: registered_seconds(
                r,
                "breach_to_decision",
                "From the start of an incident's breach to the decision to roll back or to escalate without acting",
                stage_family(),
            ),
            decision_to_rollback_done: registered_seconds(
                r,
                "decision_to_rollback_done",
                "From the decision to roll back to the plan's last step done, or to the step that stopped the plan",
                stage_family(),
            ),
            verification: registered_seconds(
                r,
                "verification_duration",
                "From a rollback's plan finishing to its verification's verdict: passed, failed or inconclusive",
                stage_family(),
            ),
        }
    }

    /// Every rule's phase gauges (phase `ok` set) and evaluation counter.
    fn rules(&self, cfg: &Config) -> Vec<RuleSeries> {
        cfg.rules
            .iter()
            .map(|rule| {
                let target = cfg
                    .targets
                    .get(rule.target)
                    .map_or_else(String::new, |t| t.name.clone());
                let phases = PHASES.map(|phase| {
                    self.rule_phase.get_or_create_owned(&RulePhaseLabels {
                        rule: rule.name.clone(),
                        target: target.clone(),
                        phase: phase.name(),
                    })
                });
                phases[phase_index(Phase::Ok)].set(1);
                let labels = RuleTargetLabels {
                    rule: rule.name.clone(),
                    target,
                };
                let series = RuleSeries {
                    phases,
                    changing: Mutex::new(()),
                    evaluations: self.evaluations.get_or_create_owned(&RuleLabels {
                        rule: rule.name.clone(),
                    }),
                    value: self.rule_value.get_or_create_owned(&labels),
                    threshold: self.rule_threshold.get_or_create_owned(&labels),
                    when: rule.when,
                };
                series.value.set(f64::NAN);
                series.threshold.set(threshold(rule.when, None));
                series
            })
            .collect()
    }

    fn signals(&self, cfg: &Config) -> Vec<SignalSeries> {
        cfg.signals
            .iter()
            .map(|signal| SignalSeries {
                readings: READING_STATES.map(|state| {
                    self.readings.get_or_create_owned(&ReadingLabels {
                        signal: signal.name.clone(),
                        state,
                    })
                }),
                source_errors: self.source_errors.get_or_create_owned(&SignalLabels {
                    signal: signal.name.clone(),
                }),
            })
            .collect()
    }

    fn targets(&self, cfg: &Config) -> Vec<TargetSeries> {
        let labels = |target: &crate::config::Target| TargetLabels {
            target: target.name.clone(),
        };
        cfg.targets
            .iter()
            .map(|target| TargetSeries {
                opened: CAUSES.map(|cause| {
                    self.opened.get_or_create_owned(&OpenedLabels {
                        target: target.name.clone(),
                        cause: cause_name(cause),
                    })
                }),
                open: self.open.get_or_create_owned(&TargetLabels {
                    target: target.name.clone(),
                }),
                closed: OUTCOMES.map(|outcome| {
                    self.closed.get_or_create_owned(&ClosedLabels {
                        target: target.name.clone(),
                        outcome,
                    })
                }),
                breaker_open: self.breaker_open.get_or_create_owned(&labels(target)),
                paused: self.paused.get_or_create_owned(&labels(target)),
                breach_to_decision: self.breach_to_decision.get_or_create_owned(&labels(target)),
                decision_to_rollback_done: self
                    .decision_to_rollback_done
                    .get_or_create_owned(&labels(target)),
                verification: self.verification.get_or_create_owned(&labels(target)),
            })
            .collect()
    }

    /// By plan, then step: `[ok, failed]`.
    fn steps(&self, cfg: &Config) -> Vec<Vec<[Counter; 2]>> {
        cfg.plans
            .iter()
            .map(|plan| {
                plan.steps
                    .iter()
                    .map(|step| {
                        ["ok", "failed"].map(|outcome| {
                            self.actions.get_or_create_owned(&ActionLabels {
                                plan: plan.name.clone(),
                                step: step.name.clone(),
                                outcome,
                            })
                        })
                    })
                    .collect()
            })
            .collect()
    }

    fn notifiers(&self, cfg: &Config) -> HashMap<String, NotifierSeries> {
        cfg.notifiers
            .iter()
            .map(|n| {
                let series = NotifierSeries {
                    deliveries: DELIVERIES.map(|outcome| {
                        self.notifications.get_or_create_owned(&NotificationLabels {
                            notifier: n.name.clone(),
                            outcome,
                        })
                    }),
                    pending: self.pending.get_or_create_owned(&NotifierLabels {
                        notifier: n.name.clone(),
                    }),
                };
                (n.name.clone(), series)
            })
            .collect()
    }
}

/// The series that outlive one configuration: the configuration's reloads and the
/// process's own series. Made once per process (the daemon keeps it for its whole run);
/// each configuration's [`Metrics`] registers the same handles, so a reload resets none.
#[derive(Clone, Debug)]
pub struct Lasting {
    process: Arc<process::Process>,
    last_reload_ok: Gauge,
    last_reload_success: FloatGauge,
    /// `[success, failure]`.
    reloads: [Counter; 2],
    reloads_family: Family<ResultLabels, Counter>,
}

impl Lasting {
    /// For a daemon that started, and loaded its configuration, at `started`: the
    /// configuration it started with counts as the last successful load.
    pub fn new(started: SystemTime) -> Lasting {
        let reloads_family = Family::<ResultLabels, Counter>::default();
        let reloads = ["success", "failure"]
            .map(|result| reloads_family.get_or_create_owned(&ResultLabels { result }));
        let lasting = Lasting {
            process: Arc::new(process::Process {
                started: epoch_seconds(started),
            }),
            last_reload_ok: Gauge::default(),
            last_reload_success: FloatGauge::default(),
            reloads,
            reloads_family,
        };
        lasting.last_reload_ok.set(1);
        lasting.last_reload_success.set(epoch_seconds(started));
        lasting
    }

    /// A new configuration was applied (`ok`) or refused, at `at`.
    pub fn reloaded(&self, ok: bool, at: SystemTime) {
        self.reloads[usize::from(!ok)].inc();
        self.last_reload_ok.set(i64::from(ok));
        if ok {
            self.last_reload_success.set(epoch_seconds(at));
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "config_last_reload_successful",
            "1 when the last attempt to load the configuration (at the start, or a reload) succeeded, 0 when it was refused",
            self.last_reload_ok.clone(),
        );
        r.register_with_unit(
            "config_last_reload_success_timestamp",
            "When the configuration was last loaded successfully, in seconds since the Unix epoch",
            Unit::Seconds,
            self.last_reload_success.clone(),
        );
        r.register(
            "config_reloads",
            "Reloads of the configuration by result: success or failure (refused; the running configuration stays)",
            self.reloads_family.clone(),
        );
    }
}

fn epoch_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The value a rule with breach condition `when` breaches past, given the baseline it
/// was last judged against: NaN for a `x baseline` rule without one; for a judge
/// (`> baseline`), the baseline's error ratio or median itself (the judge fires on a
/// confident effect past it, not at a fixed line).
fn threshold(when: Condition, baseline: Option<f64>) -> f64 {
    match when {
        Condition::Failing => 1.0,
        Condition::Passing => 0.0,
        Condition::Compare {
            threshold: Threshold::Value(v, _),
            ..
        } => v,
        Condition::Compare {
            threshold: Threshold::BaselineRatio(r),
            ..
        } => baseline.map_or(f64::NAN, |b| r * b),
        Condition::Compare {
            threshold: Threshold::Baseline,
            ..
        } => baseline.unwrap_or(f64::NAN),
    }
}

impl Metrics {
    /// Registers every family and creates every label set of `cfg`: every rule starts in
    /// phase `ok` with no value judged, every counter and the other gauges at 0. The
    /// series of a process that started now (see [`Metrics::with_lasting`]).
    pub fn new(cfg: &Config) -> Metrics {
        Metrics::with_lasting(cfg, &Lasting::new(SystemTime::now()))
    }

    /// [`Metrics::new`] with the series that outlive a configuration: those of
    /// `lasting`, which the configuration before had and the next one will.
    pub fn with_lasting(cfg: &Config, lasting: &Lasting) -> Metrics {
        let mut registry = Registry::default();
        // The process's series keep the names every client library gives them.
        registry.register_collector(Box::new(Arc::clone(&lasting.process)));
        let r = registry.sub_registry_with_prefix("rearguard");
        let families = Families::register(r);
        lasting.register(r);
        let outbox_unwritten = registered(
            r,
            "outbox_unwritten",
            "Notification messages kept in memory because the state store cannot take them yet",
            Gauge::default(),
        );
        let store_write_failures = registered(
            r,
            "store_write_failures",
            "Writes to the state store that failed: the engine's state, outbox messages, delivery records",
            Counter::default(),
        );
        let engine_step = Histogram::new(STEP_BUCKETS);
        r.register_with_unit(
            "engine_step_duration",
            "How long the engine took to decide on one input",
            Unit::Seconds,
            engine_step.clone(),
        );
        let leader = registered(
            r,
            "leader",
            "1 when this replica acts (it holds the lease, or leader election is off), 0 on a standby",
            Gauge::default(),
        );
        leader.set(1);
        let build = registered(
            r,
            "build_info",
            "The running version of rearguard, always 1",
            Family::<BuildLabels, Gauge>::default(),
        );
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        Metrics {
            rules: families.rules(cfg),
            signals: families.signals(cfg),
            targets: families.targets(cfg),
            steps: families.steps(cfg),
            notifiers: families.notifiers(cfg),
            registry,
            engine_step,
            leader,
            outbox_unwritten,
            store_write_failures,
        }
    }

    /// Rule `rule` is now in `phase`: its gauge for `phase` is 1, the other two 0.
    pub fn rule_phase(&self, rule: usize, phase: Phase) {
        let Some(series) = self.rules.get(rule) else {
            return;
        };
        // A poisoned lock only means a holder panicked; the gauges are set whole below.
        let _changing = series
            .changing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = phase_index(phase);
        // The new phase is set before the old one is cleared, so that a scrape in
        // between sees two phases rather than none.
        series.phases[now].set(1);
        for (i, gauge) in series.phases.iter().enumerate() {
            if i != now {
                gauge.set(0);
            }
        }
    }

    /// Signal `signal` gave a reading in `state`; an error also counts as a source error.
    pub fn reading(&self, signal: usize, state: &ReadingState) {
        let Some(series) = self.signals.get(signal) else {
            return;
        };
        let i = match state {
            ReadingState::Value(_) => 0,
            ReadingState::NoData => 1,
            ReadingState::Insufficient { .. } => 2,
            ReadingState::SourceError(_) => {
                series.source_errors.inc();
                3
            }
        };
        series.readings[i].inc();
    }

    /// Rule `rule` judged one reading.
    pub fn evaluation(&self, rule: usize) {
        if let Some(series) = self.rules.get(rule) {
            series.evaluations.inc();
        }
    }

    /// An incident of target `target` was opened for `cause`.
    pub fn incident_opened(&self, target: usize, cause: Cause) {
        let Some(series) = self.targets.get(target) else {
            return;
        };
        let i = match cause {
            Cause::Breach => 0,
            Cause::Blind => 1,
        };
        series.opened[i].inc();
        series.open.inc();
    }

    /// An incident of target `target` ended with `outcome`. The open gauge never goes
    /// below 0, even for a close whose opening was not recorded.
    pub fn incident_closed(&self, target: usize, outcome: &Outcome) {
        let Some(series) = self.targets.get(target) else {
            return;
        };
        let Some(i) = OUTCOMES.iter().position(|o| *o == outcome.name()) else {
            return;
        };
        series.closed[i].inc();
        let _ = series
            .open
            .inner()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open > 0).then(|| open - 1)
            });
    }

    /// One attempt of step `step` of plan `plan` finished, `ok` or failed.
    pub fn action(&self, plan: usize, step: usize, ok: bool) {
        if let Some(counters) = self.steps.get(plan).and_then(|p| p.get(step)) {
            counters[usize::from(!ok)].inc();
        }
    }

    /// Notifier `notifier` (its configured name) answered one delivery attempt.
    pub fn notification(&self, notifier: &str, delivery: &Delivery) {
        let Some(series) = self.notifiers.get(notifier) else {
            return;
        };
        let i = match delivery {
            Delivery::Accepted { .. } => 0,
            Delivery::Retry { .. } => 1,
            Delivery::Rejected { .. } => 2,
        };
        series.deliveries[i].inc();
    }

    /// Notifier `notifier` (its configured name) has `messages` waiting in the outbox.
    pub fn outbox_pending(&self, notifier: &str, messages: u64) {
        if let Some(series) = self.notifiers.get(notifier) {
            series
                .pending
                .set(i64::try_from(messages).unwrap_or(i64::MAX));
        }
    }

    /// `messages` notification messages wait in memory for the state store.
    pub fn outbox_unwritten(&self, messages: u64) {
        self.outbox_unwritten
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    /// The state store's failed writes since the start are `total` (a count the daemon
    /// and the outbox keep); the counter catches up with it and never goes back.
    pub fn store_write_failures(&self, total: u64) {
        let counted = self.store_write_failures.get();
        if total > counted {
            self.store_write_failures.inc_by(total - counted);
        }
    }

    /// Whether this replica acts (holds the lease) or is a standby.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// One engine step took `took`.
    pub fn engine_step(&self, took: Duration) {
        self.engine_step.observe(took.as_secs_f64());
    }

    /// Rule `rule` judged a reading: its value and the baseline it was judged against
    /// (see `Engine::rule_judged`), or `None` when the reading had no value.
    pub fn rule_judged(&self, rule: usize, judged: Option<(f64, Option<f64>)>) {
        let Some(series) = self.rules.get(rule) else {
            return;
        };
        let (value, baseline) = judged.map_or((f64::NAN, None), |(v, b)| (v, b));
        series.value.set(value);
        series.threshold.set(threshold(series.when, baseline));
    }

    /// Target `target`'s circuit breaker is open or not, and automatic action on it
    /// paused or not.
    pub fn target_state(&self, target: usize, breaker_open: bool, paused: bool) {
        if let Some(series) = self.targets.get(target) {
            series.breaker_open.set(i64::from(breaker_open));
            series.paused.set(i64::from(paused));
        }
    }

    /// One of target `target`'s incidents reached `stage`, `took` after the stage's start.
    pub fn stage(&self, target: usize, stage: Stage, took: Duration) {
        let Some(series) = self.targets.get(target) else {
            return;
        };
        let histogram = match stage {
            Stage::Decided => &series.breach_to_decision,
            Stage::RollbackDone => &series.decision_to_rollback_done,
            Stage::Verified => &series.verification,
        };
        histogram.observe(took.as_secs_f64());
    }

    /// The whole exposition in the Prometheus text format (version 0.0.4), without
    /// `# EOF`: what `promtool check metrics` reads.
    pub fn encode_text(&self) -> String {
        text::from_openmetrics(&self.encode())
    }

    /// The whole exposition in the OpenMetrics text format, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail; should the encoder ever fail, the exposition
        // has no `# EOF` and every scraper rejects it rather than reading part of it.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// The end of one of an incident's stages, each measured from its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Rolling back or escalating was decided, measured from the start of the breach.
    Decided,
    /// The plan's last step is done, or a step stopped it, measured from the decision.
    RollbackDone,
    /// The verification's verdict, measured from the plan finishing.
    Verified,
}

fn phase_index(phase: Phase) -> usize {
    match phase {
        Phase::Ok => 0,
        Phase::Pending => 1,
        Phase::Firing => 2,
    }
}

fn cause_name(cause: Cause) -> &'static str {
    match cause {
        Cause::Breach => "breach",
        Cause::Blind => "blind",
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Format, load_str};
    use crate::engine::Measure;

    /// Two targets, two signals, three rules, one plan of two steps, two notifiers.
    const CONFIG: &str = r#"
[[target]]
name = "web"
plan = "undo"

[[target]]
name = "api"

[[signal]]
name = "health"
target = "web"
type = "http_probe"
url = "http://127.0.0.1:8080/health"
interval = "10s"

[[signal]]
name = "api-health"
target = "api"
type = "http_probe"
url = "http://127.0.0.1:8081/health"
interval = "10s"

[[rule]]
name = "down"
signal = "health"
when = "failing"
consecutive = 3

[[rule]]
name = "flapping"
signal = "health"
when = "failing"
consecutive = 1

[[rule]]
name = "api-down"
signal = "api-health"
when = "failing"
consecutive = 3

[[plan]]
name = "undo"

[[plan.step]]
name = "switch"
type = "exec"
command = ["/bin/true"]

[[plan.step]]
name = "restart"
type = "exec"
command = ["/bin/true"]

[[notifier]]
name = "log"
type = "log"

[[notifier]]
name = "hook"
type = "log"
"#;

    fn config(text: &str) -> crate::config::Config {
        load_str(text, Format::Toml, std::iter::empty(), Path::new("."))
            .unwrap_or_else(|e| panic!("the test configuration is invalid:\n{e}"))
    }

    fn metrics() -> Metrics {
        Metrics::new(&config(CONFIG))
    }

    /// Asserts that the exposition has every line of `expected`, exactly.
    #[track_caller]
    fn check(m: &Metrics, expected: &[&str]) {
        let text = m.encode();
        let lines: Vec<&str> = text.lines().collect();
        let missing: Vec<&&str> = expected.iter().filter(|e| !lines.contains(e)).collect();
        assert!(
            missing.is_empty(),
            "missing lines {missing:#?} in the exposition:\n{text}"
        );
    }

    #[test]
    fn every_label_set_of_the_configuration_is_exposed_from_the_start() {
        let m = metrics();
        check(
            &m,
            &[
                r#"rearguard_rule_phase{rule="down",target="web",phase="ok"} 1"#,
                r#"rearguard_rule_phase{rule="down",target="web",phase="pending"} 0"#,
                r#"rearguard_rule_phase{rule="down",target="web",phase="firing"} 0"#,
                r#"rearguard_rule_phase{rule="api-down",target="api",phase="ok"} 1"#,
                r#"rearguard_readings_total{signal="health",state="value"} 0"#,
                r#"rearguard_readings_total{signal="health",state="no_data"} 0"#,
                r#"rearguard_readings_total{signal="health",state="insufficient"} 0"#,
                r#"rearguard_readings_total{signal="api-health",state="error"} 0"#,
                r#"rearguard_source_errors_total{signal="api-health"} 0"#,
                r#"rearguard_evaluations_total{rule="flapping"} 0"#,
                r#"rearguard_incidents_opened_total{target="web",cause="breach"} 0"#,
                r#"rearguard_incidents_opened_total{target="api",cause="blind"} 0"#,
                r#"rearguard_incidents_open{target="api"} 0"#,
                r#"rearguard_incidents_closed_total{target="web",outcome="rolled_back"} 0"#,
                r#"rearguard_incidents_closed_total{target="web",outcome="recovered"} 0"#,
                r#"rearguard_incidents_closed_total{target="web",outcome="resolved_by_operator"} 0"#,
                r#"rearguard_incidents_closed_total{target="api",outcome="interrupted"} 0"#,
                r#"rearguard_actions_total{plan="undo",step="switch",outcome="ok"} 0"#,
                r#"rearguard_actions_total{plan="undo",step="restart",outcome="failed"} 0"#,
                r#"rearguard_notifications_total{notifier="log",outcome="accepted"} 0"#,
                r#"rearguard_notifications_total{notifier="hook",outcome="retry"} 0"#,
                r#"rearguard_notifications_total{notifier="hook",outcome="rejected"} 0"#,
                r#"rearguard_outbox_pending{notifier="hook"} 0"#,
                r#"rearguard_engine_step_duration_seconds_count 0"#,
                r#"rearguard_engine_step_duration_seconds_bucket{le="0.00001"} 0"#,
                r#"rearguard_engine_step_duration_seconds_bucket{le="1.0"} 0"#,
                r#"rearguard_engine_step_duration_seconds_bucket{le="+Inf"} 0"#,
                &format!(
                    r#"rearguard_build_info{{version="{}"}} 1"#,
                    env!("CARGO_PKG_VERSION")
                ),
                "# TYPE rearguard_readings counter",
                "# TYPE rearguard_incidents_open gauge",
                "# TYPE rearguard_engine_step_duration_seconds histogram",
                "# UNIT rearguard_engine_step_duration_seconds seconds",
            ],
        );
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
        // 3 rules x 3 phases, and nothing the configuration does not name.
        let phases = text
            .lines()
            .filter(|l| l.starts_with("rearguard_rule_phase{"))
            .count();
        assert_eq!(phases, 9, "{text}");
        let actions = text
            .lines()
            .filter(|l| l.starts_with("rearguard_actions_total{"))
            .count();
        assert_eq!(actions, 4, "{text}");
    }

    #[test]
    fn rule_phase_is_one_hot() {
        let m = metrics();
        m.rule_phase(0, Phase::Pending);
        m.rule_phase(0, Phase::Firing);
        check(
            &m,
            &[
                r#"rearguard_rule_phase{rule="down",target="web",phase="ok"} 0"#,
                r#"rearguard_rule_phase{rule="down",target="web",phase="pending"} 0"#,
                r#"rearguard_rule_phase{rule="down",target="web",phase="firing"} 1"#,
                // Another rule of the same target is untouched.
                r#"rearguard_rule_phase{rule="flapping",target="web",phase="ok"} 1"#,
                r#"rearguard_rule_phase{rule="flapping",target="web",phase="firing"} 0"#,
            ],
        );
        m.rule_phase(0, Phase::Ok);
        check(
            &m,
            &[
                r#"rearguard_rule_phase{rule="down",target="web",phase="ok"} 1"#,
                r#"rearguard_rule_phase{rule="down",target="web",phase="firing"} 0"#,
            ],
        );
    }

    #[test]
    fn readings_count_by_state_and_errors_count_as_source_errors() {
        let m = metrics();
        let states = [
            ReadingState::Value(Measure::Check {
                ok: true,
                detail: None,
            }),
            ReadingState::Value(Measure::Number(1.0)),
            ReadingState::NoData,
            ReadingState::Insufficient { have: 3, need: 10 },
            ReadingState::SourceError("connection refused".to_owned()),
            ReadingState::SourceError("status 500".to_owned()),
            ReadingState::SourceError("status 502".to_owned()),
        ];
        for state in &states {
            m.reading(1, state);
        }
        m.evaluation(2);
        m.evaluation(2);
        check(
            &m,
            &[
                r#"rearguard_readings_total{signal="api-health",state="value"} 2"#,
                r#"rearguard_readings_total{signal="api-health",state="no_data"} 1"#,
                r#"rearguard_readings_total{signal="api-health",state="insufficient"} 1"#,
                r#"rearguard_readings_total{signal="api-health",state="error"} 3"#,
                r#"rearguard_source_errors_total{signal="api-health"} 3"#,
                r#"rearguard_readings_total{signal="health",state="value"} 0"#,
                r#"rearguard_source_errors_total{signal="health"} 0"#,
                r#"rearguard_evaluations_total{rule="api-down"} 2"#,
                r#"rearguard_evaluations_total{rule="down"} 0"#,
            ],
        );
    }

    #[test]
    fn the_open_incident_gauge_goes_up_and_down_and_never_below_zero() {
        let m = metrics();
        m.incident_opened(0, Cause::Breach);
        m.incident_opened(0, Cause::Blind);
        check(
            &m,
            &[
                r#"rearguard_incidents_open{target="web"} 2"#,
                r#"rearguard_incidents_opened_total{target="web",cause="breach"} 1"#,
                r#"rearguard_incidents_opened_total{target="web",cause="blind"} 1"#,
                r#"rearguard_incidents_open{target="api"} 0"#,
            ],
        );
        m.incident_closed(0, &Outcome::RolledBack);
        check(&m, &[r#"rearguard_incidents_open{target="web"} 1"#]);
        m.incident_closed(0, &Outcome::ResolvedByOperator("ops".to_owned()));
        m.incident_closed(0, &Outcome::Interrupted);
        check(
            &m,
            &[
                r#"rearguard_incidents_open{target="web"} 0"#,
                r#"rearguard_incidents_closed_total{target="web",outcome="rolled_back"} 1"#,
                r#"rearguard_incidents_closed_total{target="web",outcome="resolved_by_operator"} 1"#,
                r#"rearguard_incidents_closed_total{target="web",outcome="interrupted"} 1"#,
                r#"rearguard_incidents_closed_total{target="web",outcome="recovered"} 0"#,
            ],
        );
    }

    #[test]
    fn actions_notifications_outbox_and_engine_steps_are_recorded() {
        let m = metrics();
        m.action(0, 0, true);
        m.action(0, 1, false);
        m.action(0, 1, false);
        m.notification(
            "hook",
            &Delivery::Retry {
                after: None,
                reason: "status 503".to_owned(),
            },
        );
        m.notification(
            "hook",
            &Delivery::Accepted {
                reference: None,
                answer: "status 200".to_owned(),
            },
        );
        m.notification(
            "log",
            &Delivery::Rejected {
                reason: "status 400".to_owned(),
            },
        );
        m.outbox_pending("hook", 7);
        m.engine_step(Duration::from_micros(20));
        m.engine_step(Duration::from_secs(2));
        check(
            &m,
            &[
                r#"rearguard_actions_total{plan="undo",step="switch",outcome="ok"} 1"#,
                r#"rearguard_actions_total{plan="undo",step="switch",outcome="failed"} 0"#,
                r#"rearguard_actions_total{plan="undo",step="restart",outcome="failed"} 2"#,
                r#"rearguard_notifications_total{notifier="hook",outcome="retry"} 1"#,
                r#"rearguard_notifications_total{notifier="hook",outcome="accepted"} 1"#,
                r#"rearguard_notifications_total{notifier="log",outcome="rejected"} 1"#,
                r#"rearguard_outbox_pending{notifier="hook"} 7"#,
                r#"rearguard_outbox_pending{notifier="log"} 0"#,
                r#"rearguard_engine_step_duration_seconds_count 2"#,
                r#"rearguard_engine_step_duration_seconds_bucket{le="0.00001"} 0"#,
                r#"rearguard_engine_step_duration_seconds_bucket{le="0.000025"} 1"#,
                r#"rearguard_engine_step_duration_seconds_bucket{le="1.0"} 1"#,
                r#"rearguard_engine_step_duration_seconds_bucket{le="+Inf"} 2"#,
            ],
        );
        m.outbox_pending("hook", 0);
        check(&m, &[r#"rearguard_outbox_pending{notifier="hook"} 0"#]);
    }

    #[test]
    fn unwritten_messages_and_store_write_failures_are_exposed_and_failures_never_go_back() {
        let m = metrics();
        check(
            &m,
            &[
                "rearguard_outbox_unwritten 0",
                "rearguard_store_write_failures_total 0",
                "# TYPE rearguard_store_write_failures counter",
            ],
        );
        m.outbox_unwritten(4);
        m.store_write_failures(3);
        check(
            &m,
            &[
                "rearguard_outbox_unwritten 4",
                "rearguard_store_write_failures_total 3",
            ],
        );
        m.outbox_unwritten(0);
        m.store_write_failures(2);
        m.store_write_failures(5);
        check(
            &m,
            &[
                "rearguard_outbox_unwritten 0",
                "rearguard_store_write_failures_total 5",
            ],
        );
    }

    #[test]
    fn indexes_out_of_range_and_unknown_notifiers_are_ignored() {
        let m = metrics();
        // The process's own series change by themselves; rearguard's must not.
        let own = |m: &Metrics| {
            m.encode()
                .lines()
                .filter(|l| !l.starts_with("process_"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let before = own(&m);
        m.rule_phase(3, Phase::Firing);
        m.rule_phase(usize::MAX, Phase::Pending);
        m.reading(2, &ReadingState::NoData);
        m.reading(usize::MAX, &ReadingState::SourceError("x".to_owned()));
        m.evaluation(3);
        m.incident_opened(2, Cause::Breach);
        m.incident_closed(2, &Outcome::Recovered);
        m.action(1, 0, true);
        m.action(0, 2, false);
        m.action(usize::MAX, usize::MAX, true);
        m.notification(
            "nobody",
            &Delivery::Rejected {
                reason: "no".to_owned(),
            },
        );
        m.outbox_pending("nobody", 3);
        m.rule_judged(3, Some((1.0, None)));
        m.target_state(2, true, true);
        m.stage(2, Stage::Decided, Duration::from_secs(1));
        assert_eq!(own(&m), before, "nothing may change");
    }

    #[test]
    fn a_configuration_without_rules_plans_or_notifiers_exposes_its_target() {
        let text = "[[target]]\nname = \"lonely\"\n";
        let cfg = load_str(text, Format::Toml, std::iter::empty(), Path::new("."))
            .unwrap_or_else(|e| panic!("the test configuration is invalid:\n{e}"));
        let m = Metrics::new(&cfg);
        check(
            &m,
            &[
                r#"rearguard_incidents_open{target="lonely"} 0"#,
                r#"rearguard_engine_step_duration_seconds_count 0"#,
            ],
        );
        let text = m.encode();
        assert!(!text.contains("rearguard_rule_phase{"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn metrics_are_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Metrics>();
        let m = std::sync::Arc::new(metrics());
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let m = std::sync::Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.evaluation(0);
                        m.rule_phase(1, Phase::Firing);
                        m.rule_phase(1, Phase::Pending);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a worker");
        }
        check(
            &m,
            &[
                r#"rearguard_evaluations_total{rule="down"} 4000"#,
                r#"rearguard_rule_phase{rule="flapping",target="web",phase="ok"} 0"#,
                r#"rearguard_rule_phase{rule="flapping",target="web",phase="pending"} 1"#,
                r#"rearguard_rule_phase{rule="flapping",target="web",phase="firing"} 0"#,
            ],
        );
    }

    /// A configuration with a rule of each kind of threshold.
    const THRESHOLDS: &str = r#"
[[target]]
name = "web"

[[signal]]
name = "errors"
target = "web"
type = "prometheus"
url = "http://127.0.0.1:9090"
error_rate = { requests = 'http_requests_total', errors = 'code=~"5.."' }

[[signal]]
name = "p95"
target = "web"
type = "prometheus"
url = "http://127.0.0.1:9090"
latency = { histogram = "http_request_duration_seconds_bucket" }

[[signal]]
name = "health"
target = "web"
type = "http_probe"
url = "http://127.0.0.1:8080/health"

[[rule]]
name = "errors"
signal = "errors"
when = "> 5%"
for = "1m"

[[rule]]
name = "slower"
signal = "p95"
when = "> 1.5x baseline"
for = "1m"

[[rule]]
name = "down"
signal = "health"
when = "failing"
consecutive = 3
"#;

    #[test]
    fn rule_values_and_thresholds_start_unknown_or_fixed_and_follow_what_was_judged() {
        let m = Metrics::new(&config(THRESHOLDS));
        check(
            &m,
            &[
                r#"rearguard_rule_value{rule="errors",target="web"} NaN"#,
                r#"rearguard_rule_threshold{rule="errors",target="web"} 0.05"#,
                r#"rearguard_rule_threshold{rule="slower",target="web"} NaN"#,
                r#"rearguard_rule_threshold{rule="down",target="web"} 1.0"#,
                "# TYPE rearguard_rule_value gauge",
            ],
        );
        m.rule_judged(0, Some((0.125, None)));
        m.rule_judged(1, Some((0.3, Some(0.25))));
        m.rule_judged(2, Some((1.0, None)));
        check(
            &m,
            &[
                r#"rearguard_rule_value{rule="errors",target="web"} 0.125"#,
                r#"rearguard_rule_value{rule="slower",target="web"} 0.3"#,
                r#"rearguard_rule_threshold{rule="slower",target="web"} 0.375"#,
                r#"rearguard_rule_value{rule="down",target="web"} 1.0"#,
            ],
        );
        m.rule_judged(0, None);
        m.rule_judged(1, None);
        m.rule_judged(7, Some((1.0, None)));
        check(
            &m,
            &[
                r#"rearguard_rule_value{rule="errors",target="web"} NaN"#,
                r#"rearguard_rule_threshold{rule="errors",target="web"} 0.05"#,
                r#"rearguard_rule_threshold{rule="slower",target="web"} NaN"#,
            ],
        );
    }

    #[test]
    fn targets_expose_their_breaker_and_pause() {
        let m = metrics();
        check(
            &m,
            &[
                r#"rearguard_target_breaker_open{target="web"} 0"#,
                r#"rearguard_target_paused{target="api"} 0"#,
            ],
        );
        m.target_state(0, true, false);
        m.target_state(1, false, true);
        m.target_state(2, true, true);
        check(
            &m,
            &[
                r#"rearguard_target_breaker_open{target="web"} 1"#,
                r#"rearguard_target_paused{target="web"} 0"#,
                r#"rearguard_target_breaker_open{target="api"} 0"#,
                r#"rearguard_target_paused{target="api"} 1"#,
            ],
        );
    }

    #[test]
    fn each_stage_of_an_incident_has_its_histogram_per_target() {
        let m = metrics();
        m.stage(0, Stage::Decided, Duration::from_secs(75));
        m.stage(0, Stage::RollbackDone, Duration::from_millis(400));
        m.stage(1, Stage::Verified, Duration::from_secs(300));
        m.stage(5, Stage::Verified, Duration::from_secs(1));
        check(
            &m,
            &[
                r#"rearguard_breach_to_decision_seconds_count{target="web"} 1"#,
                r#"rearguard_breach_to_decision_seconds_bucket{le="60.0",target="web"} 0"#,
                r#"rearguard_breach_to_decision_seconds_bucket{le="120.0",target="web"} 1"#,
                r#"rearguard_breach_to_decision_seconds_count{target="api"} 0"#,
                r#"rearguard_decision_to_rollback_done_seconds_bucket{le="0.5",target="web"} 1"#,
                r#"rearguard_verification_duration_seconds_sum{target="api"} 300.0"#,
                r#"rearguard_verification_duration_seconds_count{target="web"} 0"#,
                "# UNIT rearguard_verification_duration_seconds seconds",
            ],
        );
    }

    #[test]
    fn reloads_and_the_process_outlive_a_configuration() {
        let started = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lasting = Lasting::new(started);
        let first = Metrics::with_lasting(&config(CONFIG), &lasting);
        check(
            &first,
            &[
                "rearguard_config_last_reload_successful 1",
                "rearguard_config_last_reload_success_timestamp_seconds 1800000000.0",
                r#"rearguard_config_reloads_total{result="success"} 0"#,
                "process_start_time_seconds 1800000000.0",
                "# TYPE process_cpu_seconds counter",
                "# TYPE process_resident_memory_bytes gauge",
                "# TYPE process_open_fds gauge",
                "# TYPE process_max_fds gauge",
            ],
        );
        lasting.reloaded(false, started + Duration::from_secs(60));
        lasting.reloaded(true, started + Duration::from_secs(90));
        lasting.reloaded(false, started + Duration::from_secs(120));
        let second = Metrics::with_lasting(&config(CONFIG), &lasting);
        for m in [&first, &second] {
            check(
                m,
                &[
                    "rearguard_config_last_reload_successful 0",
                    "rearguard_config_last_reload_success_timestamp_seconds 1800000090.0",
                    r#"rearguard_config_reloads_total{result="success"} 1"#,
                    r#"rearguard_config_reloads_total{result="failure"} 2"#,
                ],
            );
        }
    }

    #[test]
    fn the_text_format_names_counters_with_total_and_has_no_eof() {
        let text = metrics().encode_text();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            "# HELP rearguard_readings_total Readings taken by state: value, no_data, insufficient or error.",
            "# TYPE rearguard_readings_total counter",
            "# TYPE process_cpu_seconds_total counter",
            "# TYPE rearguard_incidents_open gauge",
        ] {
            assert!(lines.contains(&expected), "no {expected:?} in:\n{text}");
        }
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }
}
