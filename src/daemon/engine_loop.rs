//! The engine's loop: one `select!` over a closed set of events (`Turn`), each handed to
//! a small handler: an input, an operator's command, a reload, the tick, systemd's
//! watchdog. After every turn the loop says it turned (`/healthz`) and updates systemd's
//! status line.
//!
//! It is the only caller of `Engine::step` while the generation runs, and it must not
//! wait on anything slow: effects are carried out without waiting (`effects.rs`), and a
//! reload is built on a task of its own, bounded.

use std::time::Instant;

use tokio::sync::mpsc;

use super::effects::Publish;
use super::generation::{Generation, input_time};
use super::parts::Parts;
use super::reload::{Reload, prepare_reload};
use super::{Event, next_reload, watchdog_tick};
use crate::api::{Metrics, control};
use crate::config::Config;
use crate::engine::{Effect, Engine, Input, Ts};

/// What the engine's loop waits for; one turn handles one.
enum Turn {
    /// The generation's stop token was cancelled.
    Stop,
    /// An input from a sampler, a watch, a change observer, the webhook or a step.
    Input(Input, Ts),
    /// An operator's command from the control API.
    Command(control::Request),
    /// A new configuration, or why there is none.
    Reload(Box<Reload>),
    /// The engine's tick.
    Tick,
    /// Time to ping systemd's watchdog.
    Watchdog,
}

impl Generation<'_> {
    /// Turns until the generation stops, or until a new configuration waits, no step is
    /// in flight, no incident is acting and nothing waits for the state store. Returns
    /// that configuration.
    pub(super) async fn engine_loop(
        &mut self,
        mut reloads: Option<&mut mpsc::Receiver<Reload>>,
    ) -> Option<Box<Parts>> {
        loop {
            if self.pending.is_some()
                && self.in_flight.is_empty()
                && !self.engine.acting()
                && self.nothing_unwritten()
            {
                break;
            }
            match self.next_turn(reloads.as_deref_mut()).await {
                Turn::Stop => break,
                turn => self.handle(turn).await,
            }
            self.turned();
        }
        self.pending.take()
    }

    async fn next_turn(&mut self, reloads: Option<&mut mpsc::Receiver<Reload>>) -> Turn {
        tokio::select! {
            biased;
            _ = self.tasks.stop.cancelled() => Turn::Stop,
            Some((input, at)) = self.rx.recv() => Turn::Input(input, at),
            Some(request) = self.commands.recv() => Turn::Command(request),
            Some(reload) = next_reload(reloads) => Turn::Reload(Box::new(reload)),
            _ = self.ticker.tick() => Turn::Tick,
            _ = watchdog_tick(self.watchdog.as_mut()) => Turn::Watchdog,
        }
    }

    async fn handle(&mut self, turn: Turn) {
        match turn {
            Turn::Stop => {}
            Turn::Input(input, at) => self.on_input(input, at),
            Turn::Command(request) => self.on_command(request),
            Turn::Reload(reload) => self.on_reload(*reload).await,
            Turn::Tick => self.on_tick(),
            Turn::Watchdog => {
                if let Some(sd) = self.shared.systemd.as_ref() {
                    sd.ping();
                }
            }
        }
    }

    fn on_input(&mut self, input: Input, at: Ts) {
        match &input {
            Input::StepDone(r) => {
                self.in_flight.remove(&r.incident);
            }
            Input::Reading(r) => {
                self.metrics.reading(r.signal, &r.state);
                let rules = self.rules_of_signal.get(r.signal);
                for &rule in rules.map_or(&[][..], Vec::as_slice) {
                    self.metrics.evaluation(rule);
                }
            }
            _ => {}
        }
        // Every input carries the time it happened (see `input_time`).
        let signal = match &input {
            Input::Reading(r) => Some(r.signal),
            _ => None,
        };
        let now = input_time(&input, at, self.last);
        self.last = self.last.max(now);
        let change_at = match &input {
            Input::Reading(r) => {
                self.charts.reading(&self.cfg, r, now);
                None
            }
            Input::Change { at, .. } => Some((*at).min(now)),
            _ => None,
        };
        let effects = self.step_timed(input, now);
        if let Some(signal) = signal {
            let rules = self
                .rules_of_signal
                .get(signal)
                .map_or(&[][..], Vec::as_slice);
            judged(&self.metrics, &self.engine, rules.iter().copied());
        }
        if let Some(at) = change_at {
            self.charts.changes(&self.cfg, &effects, at);
        }
        self.settle(effects, now, Publish::IfChanged);
    }

    fn on_command(&mut self, request: control::Request) {
        let now = self.shared.clock.now().max(self.last);
        self.last = now;
        let effects = self.engine.step(Input::Command(request.command), now);
        let answer = match effects.iter().find_map(|e| match e {
            Effect::CommandRejected { reason } => Some(reason.clone()),
            _ => None,
        }) {
            Some(reason) => Err(reason),
            None => Ok("done".to_owned()),
        };
        self.settle(effects, now, Publish::Always);
        let _ = request.reply.send(answer);
    }

    fn on_tick(&mut self) {
        let now = self.shared.clock.now().max(self.last);
        self.last = now;
        let effects = self.step_timed(Input::Tick, now);
        // A tick ages the events `within` rules count.
        judged(&self.metrics, &self.engine, 0..self.cfg.rules.len());
        self.settle(effects, now, Publish::IfChanged);
    }

    /// Checks and builds a new configuration; it waits as `pending` until it can apply.
    async fn on_reload(&mut self, reload: Reload) {
        let systemd = self.shared.systemd.as_ref();
        if let Some(sd) = systemd {
            sd.reloading("reloading the configuration");
        }
        match prepare_reload(&self.cfg, reload, &self.shared.client).await {
            Ok(parts) => {
                if self.pending.replace(Box::new(parts)).is_some() {
                    tracing::info!("a newer configuration replaces the one waiting to be applied");
                }
                self.told_waiting = false;
            }
            Err(reason) => {
                self.shared
                    .lasting
                    .reloaded(false, std::time::SystemTime::now());
                tracing::error!(reason = %reason, "reload refused; the running configuration stays");
                self.shared.tell(Event::ReloadRefused(reason));
                if let Some(sd) = systemd {
                    sd.ready(&self.status);
                }
            }
        }
        let busy = !self.in_flight.is_empty() || self.engine.acting();
        if self.pending.is_some() && busy && !self.told_waiting {
            self.told_waiting = true;
            tracing::info!(
                steps = self.in_flight.len(),
                "the new configuration waits for the rollback step in flight"
            );
        }
    }

    /// One engine step, its duration measured.
    pub(super) fn step_timed(&mut self, input: Input, now: Ts) -> Vec<Effect> {
        let took = Instant::now();
        let effects = self.engine.step(input, now);
        self.metrics.engine_step(took.elapsed());
        effects
    }

    /// After every turn: `/healthz` hears that the loop turned, and systemd's status
    /// line follows the open incidents and a failing state store.
    fn turned(&mut self) {
        self.shared.health.engine_turned(self.shared.clock.now().0);
        if let Some(sd) = self.shared.systemd.as_ref() {
            let failing = self.shared.health.store_failing();
            let now_status = status_line(&self.cfg, &self.engine, failing.as_deref());
            if now_status != self.status {
                sd.status(&now_status);
                self.status = now_status;
            }
        }
    }
}

/// Sets the judged value and threshold gauges of `rules`.
fn judged(metrics: &Metrics, engine: &Engine, rules: impl Iterator<Item = usize>) {
    for rule in rules {
        metrics.rule_judged(rule, engine.rule_judged(rule));
    }
}

/// systemd's `STATUS=` line for what the engine has open, led by why the state store
/// fails while it does.
pub(super) fn status_line(cfg: &Config, engine: &Engine, store_failing: Option<&str>) -> String {
    let line = match engine.incidents() {
        [] => idle_status(cfg),
        open => incidents_status(open),
    };
    match store_failing {
        Some(why) => {
            format!("state store failing: {why}; no step starts until it is written; {line}")
        }
        None => line,
    }
}

/// The `STATUS=` line while no incident is open.
fn idle_status(cfg: &Config) -> String {
    format!(
        "watching {} target(s) with {} rule(s); no open incident",
        cfg.targets.len(),
        cfg.rules.len()
    )
}

/// The `STATUS=` line with open incidents: the first few and their states.
fn incidents_status(open: &[crate::engine::Incident]) -> String {
    let shown: Vec<String> = open
        .iter()
        .take(3)
        .map(|i| format!("{} ({})", i.id, i.state.name()))
        .collect();
    let more = open.len().saturating_sub(shown.len());
    format!(
        "{} open incident(s): {}{}",
        open.len(),
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}
