//! `[daemon]`: the state directory, the listen address, the mode, the tick, drain and
//! blindness timings and the control token. It reads only its own table and must not
//! look at any other section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::value::Value;

use super::ctx::Ctx;
use crate::config::raw::RawDaemon;
use crate::config::{Daemon, Mode};

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
        tick: ctx.positive_duration("daemon.tick".into(), &raw.tick, Duration::from_secs(1)),
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
        control_token: raw
            .control_token
            .as_ref()
            .and_then(|t| ctx.secret("daemon.control_token".into(), t)),
        read_open: raw.read_open.unwrap_or(false),
    }
}
