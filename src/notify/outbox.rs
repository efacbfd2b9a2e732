//! The outbox: every message is written to the state store before it is sent, and one
//! worker per notifier delivers that notifier's messages in order until the provider
//! accepts each one.
//!
//! - Order: a notifier's messages go out oldest first, and a message waiting for a retry
//!   holds back the later ones, so that a provider never hears "resolved" before
//!   "triggered" and a Slack reply never comes before its thread.
//! - Retries: transport failures, 429 and 5xx are retried with exponential backoff (1 s
//!   doubling to 5 min, each wait drawn between half of it and all of it so that
//!   notifiers failing together do not retry together), or after exactly the provider's
//!   `Retry-After` when it sends one.
//! - Refusals: an answer no retry can fix is recorded with the message and raised once
//!   as a configuration error (an error in the log) until the notifier works again.
//! - Rate: a notifier sends at most one message per `min_interval` (from `per_minute`).
//! - Restarts: undelivered messages are in the store and are sent by the next run;
//!   accepted ones are marked before the worker moves on, so they are not sent again
//!   (a crash between the provider's answer and that mark can repeat one message, which
//!   the providers' dedup keys and the webhook's id make harmless).
//! - A failing store (a full disk): a notification the store cannot take is kept in
//!   memory, in order, and written by [`Outbox::write_kept`] once the store works again;
//!   later notifications queue behind it. A worker whose delivery cannot be recorded
//!   keeps trying to record it and sends nothing else meanwhile, so an accepted message
//!   is not sent again and the order holds. Nothing is sent before it is written.
//!
//! Workers never hold the store's lock across a send.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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

/// What became of a notification's messages.
#[derive(Debug)]
pub enum Queued {
    /// Written to the store; their workers are woken.
    Written(Vec<Message>),
    /// The store could not take them: kept in memory, in order, until
    /// [`Outbox::write_kept`] writes them.
    Kept(Vec<Message>, StoreError),
}

/// The outbox of one daemon run.
pub struct Outbox {
    store: Arc<Store>,
    /// Notifier names, by configuration index.
    names: Vec<String>,
    wake: Vec<Arc<Notify>>,
    counter: AtomicU64,
    /// Messages the store could not take yet, oldest first, with the latest error.
    kept: Mutex<(Vec<NewMessage>, Option<String>)>,
    /// By notifier index: why a delivery's outcome cannot be recorded, while it cannot.
    unrecorded: Vec<Mutex<Option<String>>>,
    /// Writes to the store that failed, since the start.
    write_failures: AtomicU64,
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
            kept: Mutex::new((Vec::new(), None)),
            unrecorded: cfg.notifiers.iter().map(|_| Mutex::new(None)).collect(),
            write_failures: AtomicU64::new(0),
        }
    }

    /// Writes one message per notifier of a notification, in one transaction, behind
    /// any kept earlier, then wakes their workers. When the store cannot take them they
    /// are kept in memory ([`Queued::Kept`]). Fails only when a message cannot be
    /// encoded.
    pub fn enqueue(&self, n: &Notification, level: Option<&str>) -> Result<Queued, StoreError> {
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
        let mut kept = self.kept();
        kept.0.extend(rows);
        Ok(match self.write(&mut kept) {
            Ok(()) => Queued::Written(messages),
            Err(e) => Queued::Kept(messages, e),
        })
    }

    /// Writes the messages kept while the store failed, in their order, and wakes their
    /// workers. Returns how many were written.
    pub fn write_kept(&self) -> Result<usize, StoreError> {
        let mut kept = self.kept();
        let n = kept.0.len();
        self.write(&mut kept).map(|()| n)
    }

    /// How many messages are kept in memory, not yet written.
    pub fn unwritten(&self) -> usize {
        self.kept().0.len()
    }

    /// Why the outbox cannot write to the store, while it cannot: messages kept, or a
    /// delivery whose outcome is not recorded.
    pub fn failing(&self) -> Option<String> {
        let kept = self.kept();
        if !kept.0.is_empty() {
            return kept.1.clone();
        }
        drop(kept);
        self.unrecorded
            .iter()
            .find_map(|u| u.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Writes to the store that failed since the start.
    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
    }

    fn kept(&self) -> MutexGuard<'_, (Vec<NewMessage>, Option<String>)> {
        // The list is consistent between statements, so a poisoned guard is safe to use.
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `kept` in one transaction; on success empties it and wakes the workers of
    /// its notifiers.
    fn write(&self, kept: &mut (Vec<NewMessage>, Option<String>)) -> Result<(), StoreError> {
        if kept.0.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.enqueue(&kept.0, now_ms()) {
            self.write_failures.fetch_add(1, Ordering::Relaxed);
            kept.1 = Some(e.to_string());
            return Err(e);
        }
        for row in kept.0.drain(..) {
            if let Some(i) = self.names.iter().position(|n| *n == row.notifier) {
                self.wake[i].notify_one();
            }
        }
        kept.1 = None;
        Ok(())
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
            self.deliver(row, &mut flush).await;
        }
    }

    async fn deliver(&mut self, row: Row, flush: &mut Flush) {
        let name = self.name().to_owned();
        let msg: Message = match serde_json::from_str(&row.body) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("the stored message cannot be read: {e}");
                tracing::error!(notifier = %name, message = %row.id, reason = %reason, "message dropped");
                self.record(&row, &Record::Rejected(&reason), flush).await;
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
        let record = match &delivery {
            Delivery::Accepted { reference, answer } => {
                if self.raised.take().is_some() {
                    tracing::info!(notifier = %name, "notifier accepts messages again");
                }
                tracing::debug!(notifier = %name, incident = %row.incident, message = %row.id, answer = %answer, "notification delivered");
                Record::Delivered {
                    answer,
                    reference: reference.as_deref(),
                }
            }
            Delivery::Retry { after, reason } => {
                let delay = match after {
                    Some(after) => (*after).min(BACKOFF_MAX),
                    None => crate::jitter::jitter(backoff(row.attempts + 1)),
                };
                tracing::warn!(notifier = %name, incident = %row.incident, message = %row.id, attempt = row.attempts + 1, retry_in_ms = delay.as_millis() as u64, reason = %reason, "notification not delivered; will retry");
                Record::RetryAt(reason, now_ms() + delay.as_millis() as u64)
            }
            Delivery::Rejected { reason } => {
                if self.raised.as_deref() != Some(reason.as_str()) {
                    tracing::error!(notifier = %name, incident = %row.incident, message = %row.id, reason = %reason, "the provider refused a notification; this is a configuration error that retrying cannot fix: check the notifier's settings with `rearguard notify-test`");
                    self.raised = Some(reason.clone());
                } else {
                    tracing::warn!(notifier = %name, incident = %row.incident, message = %row.id, "the provider refused a notification again");
                }
                Record::Rejected(reason)
            }
        };
        self.record(&row, &record, flush).await;
        if let Some(tx) = &self.attempts {
            let _ = tx.send(Attempt {
                notifier: name,
                message: msg,
                delivery,
            });
        }
    }
}

/// What a worker writes to the store after an attempt.
enum Record<'a> {
    Delivered {
        answer: &'a str,
        /// The incident's thread reference the provider gave, if any.
        reference: Option<&'a str>,
    },
    /// Not delivered: the reason, and when to try again.
    RetryAt(&'a str, u64),
    Rejected(&'a str),
}

impl Worker {
    /// Records an attempt's outcome. While the store cannot take it, the worker tries
    /// again every second and sends nothing: the message stays first in its queue, and
    /// one the provider accepted must not be sent again. Gives up only at the flush
    /// deadline (the message is then sent again by the next run, which the providers'
    /// dedup keys make harmless).
    async fn record(&self, row: &Row, record: &Record<'_>, flush: &mut Flush) {
        let mut said = false;
        loop {
            let Err(e) = self.record_once(row, record) else {
                if said {
                    tracing::info!(notifier = %self.name(), message = %row.id, "delivery attempt recorded: the state store works again");
                }
                *self.unrecorded() = None;
                return;
            };
            self.outbox.write_failures.fetch_add(1, Ordering::Relaxed);
            if !said {
                tracing::error!(notifier = %self.name(), message = %row.id, error = %e, "cannot record a delivery attempt; trying again every second, sending nothing meanwhile");
                said = true;
            }
            *self.unrecorded() = Some(e.to_string());
            let deadline = *flush.borrow();
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
                || wait(flush, Duration::from_secs(1)).await
            {
                return;
            }
        }
    }

    fn record_once(&self, row: &Row, record: &Record<'_>) -> Result<(), StoreError> {
        let store = &self.outbox.store;
        match *record {
            Record::Delivered { answer, reference } => {
                let thread = reference.map(|r| (self.name(), row.incident.as_str(), r));
                store.delivered(row.seq, answer, thread, now_ms())
            }
            Record::RetryAt(reason, at) => store.retry_later(row.seq, reason, at),
            Record::Rejected(reason) => store.rejected(row.seq, reason, now_ms()),
        }
    }

    fn unrecorded(&self) -> MutexGuard<'_, Option<String>> {
        self.outbox.unrecorded[self.index]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
