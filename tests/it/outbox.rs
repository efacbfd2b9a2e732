//! The outbox on its own: a real state store in a temporary directory, real workers, and
//! a local webhook receiver that answers from a script. Retries honour `Retry-After`
//! and resend the same message; a refusal is recorded and does not hold back the next
//! message; the rate limit spaces deliveries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rearguard::config::{Config, Occasion};
use rearguard::engine::Notification;
use rearguard::notify::outbox::{Attempt, Limits, Outbox, Queued};
use rearguard::notify::{Delivery, Message, Sink};
use rearguard::store::{State, Store};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::provider::{Answer, Provider, Recorded};
use crate::support;

fn any(_: &Recorded) -> Result<(), String> {
    Ok(())
}

fn accept(_: &Recorded, _: usize) -> Answer {
    Answer::Status(200, "{}".to_owned())
}

/// An outbox with one webhook notifier posting to `url`, its workers running.
pub(crate) struct Running {
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) store: Arc<Store>,
    attempts: mpsc::UnboundedReceiver<Attempt>,
    cfg: Config,
    _dir: tempfile::TempDir,
    _flush: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
}

fn start(url: &str, per_minute: u32) -> Running {
    start_in(url, per_minute, None)
}

/// [`start`] with the state store in `state` (a directory of the test's own) instead of
/// a temporary directory.
pub(crate) fn start_in(url: &str, per_minute: u32, state: Option<&std::path::Path>) -> Running {
    let dir = support::temp_dir();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let cfg = support::config(&format!(
        r#"
[[notifier]]
name = "hook"
type = "webhook"
url = "{url}"
secret = {{ file = "{}" }}
per_minute = {per_minute}
timeout = "2s"
"#,
        secret.display()
    ));
    let store = Arc::new(Store::open(state.unwrap_or(dir.path())).unwrap());
    let outbox = Arc::new(Outbox::new(Arc::clone(&store), &cfg));
    let n = &cfg.notifiers[0];
    let sink = Sink::new(n, &rearguard::http::client()).unwrap();
    let limits = Limits {
        min_interval: n.min_interval,
        timeout: n.timeout,
    };
    let (flush, flush_rx) = tokio::sync::watch::channel(None);
    let (tx, attempts) = mpsc::unbounded_channel();
    outbox.spawn(
        vec![(sink, limits)],
        &TaskTracker::new(),
        flush_rx,
        Some(tx),
    );
    Running {
        outbox,
        store,
        attempts,
        cfg,
        _dir: dir,
        _flush: flush,
    }
}

impl Running {
    fn notify(&self, incident: &str, occasion: Occasion) -> Message {
        match self.enqueue(incident, occasion) {
            Queued::Written(mut written) => written.remove(0),
            Queued::Kept(_, e) => panic!("the store did not take the message: {e}"),
        }
    }

    /// Hands the outbox a notification for its one notifier.
    pub(crate) fn enqueue(&self, incident: &str, occasion: Occasion) -> Queued {
        let facts = Message::test("hook", 1_795_000_000_000).facts;
        let n = Notification {
            incident: incident.to_owned(),
            target: 0,
            occasion,
            level: None,
            notifiers: vec![0],
            summary: format!("{incident}: {}", occasion.headline()),
            facts,
        };
        assert_eq!(self.cfg.notifiers.len(), 1);
        self.outbox.enqueue(&n, None).unwrap()
    }

    /// The occasions of the next `n` attempts, each of which must be accepted.
    pub(crate) async fn accepted(&mut self, n: usize) -> Vec<Occasion> {
        let mut order = Vec::new();
        for _ in 0..n {
            let a = self.next_attempt().await;
            assert!(matches!(a.delivery, Delivery::Accepted { .. }), "{a:?}");
            order.push(a.message.occasion);
        }
        order
    }

    pub(crate) async fn next_attempt(&mut self) -> Attempt {
        tokio::time::timeout(Duration::from_secs(10), self.attempts.recv())
            .await
            .expect("a delivery attempt within 10s")
            .expect("the worker runs")
    }
}

#[tokio::test]
async fn retry_after_is_honoured_and_the_same_message_is_sent_again() {
    let receiver = Provider::start(any, accept).await;
    receiver.script([Answer::RetryAfter(429, 1), Answer::RetryAfter(503, 1)]);
    let mut run = start(&receiver.url("/hook"), 600);
    let started = Instant::now();
    let msg = run.notify("shop-1", Occasion::Opened);
    let first = run.next_attempt().await;
    assert_eq!(
        first.delivery,
        Delivery::Retry {
            after: Some(Duration::from_secs(1)),
            reason: "HTTP 429: slow down".to_owned()
        }
    );
    let second = run.next_attempt().await;
    assert!(matches!(second.delivery, Delivery::Retry { .. }));
    let third = run.next_attempt().await;
    assert!(
        matches!(third.delivery, Delivery::Accepted { .. }),
        "{third:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two Retry-After: 1 waits, then delivered after {:?}",
        started.elapsed()
    );
    let ids: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.header("x-rearguard-id").unwrap().to_owned())
        .collect();
    assert_eq!(ids, [msg.id.clone(), msg.id.clone(), msg.id.clone()]);
    let stored = run.store.messages().unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].state, State::Delivered);
    assert_eq!(stored[0].attempts, 3);
}

#[tokio::test]
async fn a_refused_message_is_recorded_and_does_not_hold_back_the_next() {
    let receiver = Provider::start(any, accept).await;
    receiver.script([Answer::Status(400, "unknown field".to_owned())]);
    let mut run = start(&receiver.url("/hook"), 600);
    run.notify("shop-1", Occasion::Opened);
    run.notify("shop-1", Occasion::Resolved);
    let first = run.next_attempt().await;
    assert_eq!(
        first.delivery,
        Delivery::Rejected {
            reason: "HTTP 400: unknown field".to_owned()
        }
    );
    let second = run.next_attempt().await;
    assert_eq!(second.message.occasion, Occasion::Resolved);
    assert!(matches!(second.delivery, Delivery::Accepted { .. }));
    let states: Vec<(State, Option<String>)> = run
        .store
        .messages()
        .unwrap()
        .into_iter()
        .map(|m| (m.state, m.last_error))
        .collect();
    assert_eq!(
        states,
        [
            (State::Rejected, Some("HTTP 400: unknown field".to_owned())),
            (State::Delivered, None)
        ]
    );
    assert_eq!(receiver.requests().len(), 2, "a refusal is not retried");
}

#[tokio::test]
async fn deliveries_are_spaced_by_the_rate_limit_and_keep_their_order() {
    let receiver = Provider::start(any, accept).await;
    // 120 a minute: one every 500ms.
    let mut run = start(&receiver.url("/hook"), 120);
    let started = Instant::now();
    for occasion in [
        Occasion::Opened,
        Occasion::RollbackStarted,
        Occasion::RollbackSucceeded,
        Occasion::Resolved,
    ] {
        run.notify("shop-1", occasion);
    }
    let order = run.accepted(4).await;
    assert_eq!(
        order,
        [
            Occasion::Opened,
            Occasion::RollbackStarted,
            Occasion::RollbackSucceeded,
            Occasion::Resolved
        ]
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "four messages at 500ms spacing took only {:?}",
        started.elapsed()
    );
}
