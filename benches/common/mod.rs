//! What the benchmarks that run rearguard's daemon in-process share: the daemon of
//! `rearguard run` on a configuration, telling its events, and the median of a sample.

#![allow(dead_code)]

use rearguard::config::Config;
use rearguard::daemon::{self, Event, StartError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A daemon running in-process: its events, the token that stops it, and its task.
pub struct Daemon {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), StartError>>,
}

impl Daemon {
    /// Starts the daemon of `rearguard run` on `cfg` (no systemd, no reloads).
    pub fn spawn(cfg: Config) -> Daemon {
        let (tx, events) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(daemon::run(
            cfg,
            daemon::Options {
                shutdown: shutdown.clone(),
                observer: Some(tx),
                systemd: None,
                reload: None,
            },
        ));
        Daemon {
            events,
            shutdown,
            handle,
        }
    }

    /// Stops it and waits for it to end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }
}

/// The median of `v`, `None` when it is empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}
