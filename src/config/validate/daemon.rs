//! `[daemon]`: the state directory, the listen address, the mode, the tick, drain and
//! blindness timings (`blind_after` and the share rule), the control token and the listener's limits. It reads only its
//! own table and must not look at any other section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::value::Value;

use super::ctx::{Ctx, MIN_TICK};
use crate::config::raw::RawDaemon;
use crate::config::units::parse_percent;
use crate::config::{BlindShare, Daemon, ListenerLimits, Mode};

/// `[daemon]`, with defaults for every key (and for a missing table).
pub(super) fn daemon(ctx: &mut Ctx, raw: Option<&Value>) -> Daemon {
    let raw: RawDaemon = raw.and_then(|v| ctx.item("daemon", v)).unwrap_or_default();
    let listen = match &raw.listen {
        None => SocketAddr::from(([127, 0, 0, 1], 9787)),
        Some(text) => text.parse().unwrap_or_else(|_| {
            ctx.err(
                "daemon.listen",
                format!("expected an address like \"127.0.0.1:9787\", got {text:?}"),
            );
            SocketAddr::from(([127, 0, 0, 1], 9787))
        }),
    };
    let mode = match raw.mode.as_deref() {
        None | Some("enforce") => Mode::Enforce,
        Some("shadow") => Mode::Shadow,
        Some(other) => {
            ctx.err(
                "daemon.mode",
                format!("expected \"enforce\" or \"shadow\", got {other:?}"),
            );
            Mode::Enforce
        }
    };
    Daemon {
        state_dir: PathBuf::from(raw.state_dir.as_deref().unwrap_or("/var/lib/rearguard")),
        listen,
        mode,
        tick: ctx.duration_at_least(
            "daemon.tick".into(),
            &raw.tick,
            Duration::from_secs(1),
            MIN_TICK,
        ),
        drain_timeout: ctx.duration(
            "daemon.drain_timeout".into(),
            &raw.drain_timeout,
            Duration::from_secs(30),
        ),
        blind_after: ctx.positive_duration(
            "daemon.blind_after".into(),
            &raw.blind_after,
            Duration::from_secs(120),
        ),
        blind_share: blind_share(ctx, &raw),
        control_token: raw
            .control_token
            .as_ref()
            .and_then(|t| ctx.secret("daemon.control_token".into(), t)),
        read_open: raw.read_open.unwrap_or(false),
        listener: listener_limits(ctx, &raw),
    }
}

/// `daemon.blind_share`, `daemon.blind_share_window` and `daemon.blind_share_min`.
fn blind_share(ctx: &mut Ctx, raw: &RawDaemon) -> BlindShare {
    let share = match raw.blind_share.as_deref().map(parse_percent) {
        None => BlindShare::DEFAULT_SHARE,
        Some(Ok(share)) if share > 0.0 => share,
        Some(Ok(_)) => {
            ctx.err("daemon.blind_share", "must be greater than 0%");
            BlindShare::DEFAULT_SHARE
        }
        Some(Err(m)) => {
            ctx.err("daemon.blind_share", m);
            BlindShare::DEFAULT_SHARE
        }
    };
    let min_evaluations = match raw.blind_share_min {
        None => BlindShare::DEFAULT_MIN_EVALUATIONS,
        Some(n) if (2..=10_000).contains(&n) => n,
        Some(n) => {
            ctx.err(
                "daemon.blind_share_min",
                format!("expected 2 to 10000, got {n}"),
            );
            BlindShare::DEFAULT_MIN_EVALUATIONS
        }
    };
    BlindShare {
        share,
        window: ctx.positive_duration(
            "daemon.blind_share_window".into(),
            &raw.blind_share_window,
            BlindShare::DEFAULT_WINDOW,
        ),
        min_evaluations,
    }
}

/// `daemon.max_connections` and `daemon.header_read_timeout`.
fn listener_limits(ctx: &mut Ctx, raw: &RawDaemon) -> ListenerLimits {
    let most = ListenerLimits::MOST_CONNECTIONS;
    let max_connections = match raw.max_connections {
        None => ListenerLimits::DEFAULT_MAX_CONNECTIONS,
        Some(n) if (1..=most).contains(&n) => n,
        Some(n) => {
            ctx.err(
                "daemon.max_connections",
                format!("expected 1 to {most}, got {n}"),
            );
            ListenerLimits::DEFAULT_MAX_CONNECTIONS
        }
    };
    ListenerLimits {
        max_connections,
        header_read_timeout: ctx.positive_duration(
            "daemon.header_read_timeout".into(),
            &raw.header_read_timeout,
            ListenerLimits::DEFAULT_HEADER_READ_TIMEOUT,
        ),
    }
}
