//! The outbox: every message is written to the state store before it is sent, and one
//! worker per notifier delivers that notifier's messages in order until the provider
//! accepts each one.
//!
//! - Order: a notifier's messages go out oldest first, and a message waiting for a retry
//!   holds back the later ones, so that a provider never hears "resolved" before
//!   "triggered" and a Slack reply never comes before its thread.
//! - Retries: transport failures, 429 and 5xx are retried with exponential backoff (1 s
//!   doubling to 5 min), or after exactly the provider's `Retry-After` when it sends one.
//! - Refusals: an answer no retry can fix is recorded with the message and raised once
//!   as a configuration error (an error in the log) until the notifier works again.
//! - Rate: a notifier sends at most one message per `min_interval` (from `per_minute`).
//! - Restarts: undelivered messages are in the store and are sent by the next run;
//!   accepted ones are marked before the worker moves on, so they are not sent again
//!   (a crash between the provider's answer and that mark can repeat one message, which
//!   the providers' dedup keys and the webhook's id make harmless).
//!
//! Workers never hold the store's lock across a send.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};
use tokio_util::task::TaskTracker;

use super::{Delivery, Message, Sink};
use crate::config::Config;
use crate::engine::Notification;
use crate::store::{NewMessage, Row, Store, StoreError};

/// The first retry delay; it doubles with each failed attempt.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest delay between two attempts, and the most of a `Retry-After` honoured.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long delivered and refused messages are kept in the store.
pub const KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// What happened to one delivery attempt, for observers (the demo, tests).
#[derive(Debug, Clone)]
pub struct Attempt {
    pub notifier: String,
    pub message: Message,
    pub delivery: Delivery,
}

/// Controls the workers' end: `None` while running; `Some(deadline)` once the daemon
/// stops, after which workers deliver what is due until their queue is empty or the
/// deadline passes, and leave the rest in the store for the next run.
pub type Flush = watch::Receiver<Option<tokio::time::Instant>>;

/// The outbox of one daemon run.
pub struct Outbox {
    store: Arc<Store>,
    /// Notifier names, by configuration index.
    names: Vec<String>,
    wake: Vec<Arc<Notify>>,
    counter: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Outbox {
    pub fn new(store: Arc<Store>, cfg: &Config) -> Outbox {
        Outbox {
            store,
            names: cfg.notifiers.iter().map(|n| n.name.clone()).collect(),
            wake: cfg
                .notifiers
                .iter()
                .map(|_| Arc::new(Notify::new()))
                .collect(),
            counter: AtomicU64::new(0),
        }
    }

    /// Writes one message per notifier of a notification, in one transaction, then wakes
    /// their workers. Returns the messages written.
    pub fn enqueue(
        &self,
        n: &Notification,
        level: Option<&str>,
    ) -> Result<Vec<Message>, StoreError> {
        let now = now_ms();
        let mut messages = Vec::with_capacity(n.notifiers.len());
        let mut rows = Vec::with_capacity(n.notifiers.len());
        for &i in &n.notifiers {
            let Some(name) = self.names.get(i) else {
                continue;
            };
            let k = self.counter.fetch_add(1, Ordering::Relaxed);
            let msg = Message {
                id: format!("{}.{}.{k}.{name}", n.incident, n.facts.at_ms),
                test: false,
                incident: n.incident.clone(),
                occasion: n.occasion,
                level: level.map(str::to_owned),
                summary: n.summary.clone(),
                facts: n.facts.clone(),
            };
            let body = serde_json::to_string(&msg)
                .map_err(|e| StoreError::Corrupt(format!("cannot encode a message: {e}")))?;
            rows.push(NewMessage {
                id: msg.id.clone(),
                notifier: name.clone(),
                incident: n.incident.clone(),
                body,
            });
            messages.push(msg);
        }
        self.store.enqueue(&rows, now)?;
        for &i in &n.notifiers {
            if let Some(w) = self.wake.get(i) {
                w.notify_one();
            }
        }
        Ok(messages)
    }

    /// Starts one delivery worker per notifier on the tracker; messages left by an
    /// earlier run are delivered first. Names in the store that no notifier has any more
    /// are reported once.
    pub fn spawn(
        self: &Arc<Self>,
        sinks: Vec<(Sink, Limits)>,
        tracker: &TaskTracker,
        flush: Flush,
        attempts: Option<tokio::sync::mpsc::UnboundedSender<Attempt>>,
    ) {
        match self
            .store
            .prune(now_ms().saturating_sub(KEEP.as_millis() as u64))
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(messages = n, "old outbox messages pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the outbox"),
        }
        match self.store.pending_notifiers() {
            Ok(waiting) => {
                for (name, count) in waiting {
                    if self.names.contains(&name) {
                        tracing::info!(notifier = %name, messages = count, "delivering messages queued before this start");
                    } else {
                        tracing::warn!(notifier = %name, messages = count, "the outbox holds messages for a notifier that is no longer configured; they stay undelivered");
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
        }
        for (i, (sink, limits)) in sinks.into_iter().enumerate() {
            let worker = Worker {
                outbox: Arc::clone(self),
                index: i,
                sink,
                limits,
                attempts: attempts.clone(),
                raised: None,
            };
            tracker.spawn(worker.run(flush.clone()));
        }
    }
}

/// How fast and how long a notifier may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The least time between two deliveries.
    pub min_interval: Duration,
    /// Bounds one request; a whole delivery (a Slack reply and its parent's update) is
    /// given three times this.
    pub timeout: Duration,
}

struct Worker {
    outbox: Arc<Outbox>,
    index: usize,
    sink: Sink,
    limits: Limits,
    attempts: Option<tokio::sync::mpsc::UnboundedSender<Attempt>>,
    /// The refusal already raised as a configuration error, until a delivery succeeds.
    raised: Option<String>,
}

impl Worker {
    fn name(&self) -> &str {
        &self.outbox.names[self.index]
    }

    async fn run(mut self, mut flush: Flush) {
        let wake = Arc::clone(&self.outbox.wake[self.index]);
        let mut last_sent: Option<tokio::time::Instant> = None;
        loop {
            let deadline = *flush.borrow();
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return;
            }
            let next = match self.outbox.store.next_pending(self.name()) {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(notifier = %self.name(), error = %e, "cannot read the outbox; trying again in 5s");
                    if wait(&mut flush, Duration::from_secs(5)).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(row) = next else {
                if deadline.is_some() {
                    return;
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    changed = flush.changed() => if changed.is_err() { return },
                }
                continue;
            };
            // Not before the retry time, nor sooner than the rate limit allows.
            let mut delay = Duration::from_millis(row.next_at_ms.saturating_sub(now_ms()));
            if let Some(t) = last_sent {
                delay = delay.max(
                    (t + self.limits.min_interval)
                        .saturating_duration_since(tokio::time::Instant::now()),
                );
            }
            if !delay.is_zero() {
                if deadline.is_some_and(|d| tokio::time::Instant::now() + delay > d) {
                    // It cannot go out before the deadline; the next run sends it.
                    return;
                }
                if wait(&mut flush, delay).await {
                    return;
                }
                continue;
            }
            last_sent = Some(tokio::time::Instant::now());
            self.deliver(row).await;
        }
    }

    async fn deliver(&mut self, row: Row) {
        let name = self.name().to_owned();
        let msg: Message = match serde_json::from_str(&row.body) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("the stored message cannot be read: {e}");
                tracing::error!(notifier = %name, message = %row.id, reason = %reason, "message dropped");
                if let Err(e) = self.outbox.store.rejected(row.seq, &reason, now_ms()) {
                    tracing::error!(notifier = %name, error = %e, "cannot record a refused message");
                }
                return;
            }
        };
        let thread = match self.outbox.store.thread(&name, &row.incident) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(notifier = %name, error = %e, "cannot read the incident's thread; trying again");
                let _ = self
                    .outbox
                    .store
                    .retry_later(row.seq, &e.to_string(), now_ms() + 5000);
                return;
            }
        };
        let bound = self.limits.timeout * 3;
        let delivery = tokio::time::timeout(bound, self.sink.send(&msg, thread.as_deref()))
            .await
            .unwrap_or_else(|_| Delivery::Retry {
                after: None,
                reason: format!(
                    "the delivery took longer than {}",
                    crate::config::units::format_duration(bound)
                ),
            });
        let recorded = match &delivery {
            Delivery::Accepted { reference, answer } => {
                if self.raised.take().is_some() {
                    tracing::info!(notifier = %name, "notifier accepts messages again");
                }
                tracing::debug!(notifier = %name, incident = %row.incident, message = %row.id, answer = %answer, "notification delivered");
                let thread = reference
                    .as_deref()
                    .map(|r| (name.as_str(), row.incident.as_str(), r));
                self.outbox
                    .store
                    .delivered(row.seq, answer, thread, now_ms())
            }
            Delivery::Retry { after, reason } => {
                let delay = match after {
                    Some(after) => (*after).min(BACKOFF_MAX),
                    None => backoff(row.attempts + 1),
                };
                tracing::warn!(notifier = %name, incident = %row.incident, message = %row.id, attempt = row.attempts + 1, retry_in_ms = delay.as_millis() as u64, reason = %reason, "notification not delivered; will retry");
                self.outbox
                    .store
                    .retry_later(row.seq, reason, now_ms() + delay.as_millis() as u64)
            }
            Delivery::Rejected { reason } => {
                if self.raised.as_deref() != Some(reason.as_str()) {
                    tracing::error!(notifier = %name, incident = %row.incident, message = %row.id, reason = %reason, "the provider refused a notification; this is a configuration error that retrying cannot fix: check the notifier's settings with `rearguard notify-test`");
                    self.raised = Some(reason.clone());
                } else {
                    tracing::warn!(notifier = %name, incident = %row.incident, message = %row.id, "the provider refused a notification again");
                }
                self.outbox.store.rejected(row.seq, reason, now_ms())
            }
        };
        if let Err(e) = recorded {
            tracing::error!(notifier = %name, message = %row.id, error = %e, "cannot record a delivery attempt");
        }
        if let Some(tx) = &self.attempts {
            let _ = tx.send(Attempt {
                notifier: name,
                message: msg,
                delivery,
            });
        }
    }
}

/// The delay before attempt `n + 1` after `n` failed attempts: 1 s, 2 s, 4 s … 5 min.
pub fn backoff(failed: u32) -> Duration {
    let exp = failed.saturating_sub(1).min(16);
    (BACKOFF_START * 2u32.pow(exp)).min(BACKOFF_MAX)
}

/// Sleeps `delay`, returning early when the flush deadline is set. True when the worker
/// must stop (the daemon is gone).
async fn wait(flush: &mut Flush, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        changed = flush.changed() => changed.is_err(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=12).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
