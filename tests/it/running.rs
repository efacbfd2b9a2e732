//! The daemon run in-process for end-to-end tests, watched through its observer channel:
//! wait for an event with a deadline, assert that none comes, stop and collect.

use std::time::Duration;

use rearguard::config::Config;
use rearguard::daemon::{self, Event};
use rearguard::engine::{Effect, Incident, Phase};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A daemon started by [`start`], with everything it has said so far in `seen`.
pub struct Running {
    pub rx: mpsc::UnboundedReceiver<Event>,
    shutdown: CancellationToken,
    reloads: mpsc::Sender<daemon::Reload>,
    handle: tokio::task::JoinHandle<Result<(), daemon::StartError>>,
    pub seen: Vec<Event>,
}

/// Starts the daemon with `cfg` on the test's runtime. A configuration that keeps the
/// default listen address gets any free port instead: tests run side by side.
pub fn start(mut cfg: Config) -> Running {
    if cfg.daemon.listen == "127.0.0.1:9787".parse().unwrap() {
        cfg.daemon.listen = "127.0.0.1:0".parse().unwrap();
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let (reloads, reload_rx) = mpsc::channel(4);
    let handle = tokio::spawn(daemon::run(
        cfg,
        daemon::Options {
            shutdown: shutdown.clone(),
            observer: Some(tx),
            systemd: None,
            reload: Some(reload_rx),
        },
    ));
    Running {
        rx,
        shutdown,
        reloads,
        handle,
        seen: Vec::new(),
    }
}

impl Running {
    /// Waits for an event matching `pred`, failing the test at the deadline.
    pub async fn wait_for(
        &mut self,
        what: &str,
        secs: u64,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) => {
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                }
                Ok(None) => panic!(
                    "daemon stopped while waiting for {what}; saw {:#?}",
                    self.seen
                ),
                Err(_) => panic!("no {what} within {secs}s; saw {:#?}", self.seen),
            }
        }
    }

    /// Watches the events for `secs`, failing the test at the first that matches `pred`.
    pub async fn expect_none(&mut self, what: &str, secs: u64, pred: impl Fn(&Event) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) => {
                    if pred(&e) {
                        panic!("unexpected {what}: {e:#?}; before it: {:#?}", self.seen);
                    }
                    self.seen.push(e);
                }
                Ok(None) => panic!(
                    "daemon stopped while watching for {what}; saw {:#?}",
                    self.seen
                ),
                Err(_) => return,
            }
        }
    }

    /// Waits for the next incident to close and returns it.
    pub async fn closed_incident(&mut self, secs: u64) -> Incident {
        match self
            .wait_for("a closed incident", secs, |e| {
                matches!(e, Event::Effect(_, Effect::IncidentClosed(_)))
            })
            .await
        {
            Event::Effect(_, Effect::IncidentClosed(inc)) => *inc,
            _ => unreachable!(),
        }
    }

    /// Waits for rule 0 to change to `to` and returns the evidence.
    pub async fn rule_becomes(&mut self, to: Phase, secs: u64) -> String {
        let e = self
            .wait_for(&format!("rule 0 -> {}", to.name()), secs, |e| {
                matches!(e, Event::Effect(_, Effect::RuleChanged { rule: 0, transition }) if transition.to == to)
            })
            .await;
        match e {
            Event::Effect(_, Effect::RuleChanged { transition, .. }) => transition.evidence,
            _ => unreachable!(),
        }
    }

    /// Hands the daemon a new configuration (or a load error), as SIGHUP does.
    pub async fn reload(&self, reload: daemon::Reload) {
        self.reloads
            .send(reload)
            .await
            .expect("the daemon takes reloads");
    }

    /// Takes what the daemon has said so far without waiting.
    pub fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
    }

    pub fn rule_changes(&self) -> usize {
        self.seen
            .iter()
            .filter(|e| matches!(e, Event::Effect(_, Effect::RuleChanged { .. })))
            .count()
    }

    pub fn steps_run(&self) -> usize {
        self.seen
            .iter()
            .filter(|e| matches!(e, Event::Effect(_, Effect::RunStep(_))))
            .count()
    }

    /// Stops the daemon, collects what it says while draining, and checks it ran.
    pub async fn stop(mut self) -> Vec<Event> {
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.seen.push(e);
        }
        self.handle.await.expect("daemon task").expect("daemon ran");
        self.seen
    }
}
