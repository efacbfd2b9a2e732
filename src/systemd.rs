//! systemd's notify protocol (`Type=notify`): `READY=1` once rearguard is up, `STATUS=`
//! lines saying what it is doing (led by "state store failing: ..." while it cannot write
//! its state), `WATCHDOG=1` from the engine's loop, `STOPPING=1` when
//! it begins to stop. Datagrams go to the socket systemd names in `NOTIFY_SOCKET`.
//!
//! The environment is read once, by the command line, before the daemon starts; the
//! daemon only calls the methods here. Outside systemd (no `NOTIFY_SOCKET`) there is no
//! [`Systemd`] and nothing is sent. A failed send is logged once and never stops
//! rearguard: systemd's own timeouts are the judge.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// The connection to systemd's notify socket.
#[derive(Debug)]
pub struct Systemd {
    /// `WATCHDOG_USEC`, when systemd expects pings.
    watchdog: Option<Duration>,
    warned: AtomicBool,
}

impl Systemd {
    /// From the environment systemd sets for a `Type=notify` service; `None` when
    /// `NOTIFY_SOCKET` is not set.
    pub fn from_env() -> Option<Systemd> {
        std::env::var_os("NOTIFY_SOCKET")?;
        Some(Systemd {
            watchdog: sd_notify::watchdog_enabled(),
            warned: AtomicBool::new(false),
        })
    }

    /// How often to ping: half of `WatchdogSec`, as systemd advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
            .filter(|d| !d.is_zero())
            .map(|d| (d / 2).max(Duration::from_millis(10)))
    }

    /// Configuration, state store, listeners and sources are up.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// The engine's loop is alive.
    pub fn ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// A new configuration is being applied; `ready` ends it.
    pub fn reloading(&self, status: &str) {
        self.send(&[NotifyState::Reloading, NotifyState::Status(status)]);
    }

    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
        } else if self.warned.swap(false, Ordering::Relaxed) {
            tracing::info!("notifying systemd works again");
        }
    }
}
