//! OOM kills of one cgroup on this host (`type = "cgroup_oom"`), as events.
//!
//! A watched source, not a sampled one: [`OomWatch::next`] waits for the kernel to say
//! that the cgroup's OOM counters may have changed and hands back one
//! `Measure::Event` reading per new kill, each with its own key. The kernel's signal is:
//!
//! - cgroup v2: `memory.events` (`oom_kill`, `oom_group_kill`), which the kernel marks
//!   modified when a counter changes; watched with inotify.
//! - cgroup v1: `memory.oom_control` (its `oom_kill` line); its notification API
//!   (an eventfd registered through `cgroup.event_control`) fires when the cgroup hits
//!   OOM, which can be just before the kill is counted, so a wake-up that finds no new
//!   kill is read again a few times over the next second (a kill counted later than
//!   that is seen at the next interval's read).
//!
//! The cgroup is also read at the signal's interval, as a safety net for a lost
//! notification and to say how the source is: no new kill is `NoData` (the source
//! answered and had nothing, which keeps an idle signal from being reported blind), an
//! unreadable or garbled file is a `SourceError`.
//!
//! A missing cgroup (the unit is not running, or the path is wrong) is a `SourceError`
//! with a detail that names the directory. The engine ignores anything but events for
//! a `within` rule, so it never counts as a kill or clears one; but it starts the
//! signal's `blind_after` clock, so that a wrong path or a unit that stays down is
//! reported ("watchdog is blind", escalated, never acted on) instead of looking like a
//! quiet, healthy service. A unit restart leaves the cgroup missing for far less than
//! `blind_after`, and the next good read clears it. `NoData` carries no detail and
//! would hide a typo for ever, which is why it is not used for this.
//!
//! Counting: the counter a cgroup has when watching starts is a baseline, not events.
//! A cgroup that appears later (the unit was started or restarted: systemd removes the
//! unit's cgroup and creates a new one, whose counters start at 0) is counted from 0, so
//! a kill in it is an event even when it came before the first read. A cgroup instance
//! is known by its directory's inode number (cgroupfs gives every new cgroup a new one
//! while the system runs) or by a counter that goes down; an event's key names the
//! instance and the counter value, so no kill is counted twice. (A removal notification
//! is not used to say "new instance": it can be read after the new cgroup was already
//! counted, and would count its kills again.)
//!
//! Every process the kernel kills is one event (`oom_kill`). A group kill
//! (`memory.oom.group = 1`, systemd's `OOMPolicy=kill`) kills every process of the
//! cgroup and so counts each of them; `oom_group_kill` is read, checked and logged.
//!
//! This module reads files under the cgroup and writes only the v1 registration
//! (`cgroup.event_control`); it never changes a limit or a process.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inotify::{Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::config::CgroupOomSpec;
use crate::engine::{Measure, ReadingState};

/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// After a notification that found no new kill, when to read again (from the
/// notification): cgroup v1 notifies when the cgroup hits OOM, before the kill is counted,
/// and the kill is usually counted a few milliseconds later (benches/oom.rs). Dense at
/// first, since each read is a small in-memory file; at most 12 reads per notification.
const RECHECKS: [Duration; 12] = [
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(6),
    Duration::from_millis(8),
    Duration::from_millis(10),
    Duration::from_millis(15),
    Duration::from_millis(20),
    Duration::from_millis(30),
    Duration::from_millis(50),
    Duration::from_millis(300),
    Duration::from_millis(1000),
];

/// The interface a cgroup directory offers for OOM counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `memory.events`.
    V2,
    /// `memory.oom_control`.
    V1,
}

/// The OOM counters of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Processes killed by the OOM killer.
    pub oom_kill: u64,
    /// Group kills (cgroup v2 only; 0 on v1).
    pub oom_group_kill: u64,
}

/// Why the counters could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The cgroup directory does not exist.
    #[error("cgroup {dir} does not exist (is the unit running?)")]
    Missing { dir: PathBuf },
    /// The directory exists but has no memory controller files.
    #[error(
        "cgroup {dir} has no memory controller: neither memory.events (v2) nor memory.oom_control (v1)"
    )]
    NoController { dir: PathBuf },
    /// No cgroup hierarchy with the memory controller is mounted, so a unit cannot be
    /// resolved.
    #[error("no cgroup hierarchy with the memory controller under {root}")]
    NoHierarchy { root: PathBuf },
    /// The file cannot be read.
    #[error("cannot read {file}: {reason}")]
    Unreadable { file: PathBuf, reason: String },
    /// The file does not say what the kernel's format says.
    #[error("{file} is garbled: {reason}")]
    Garbled { file: PathBuf, reason: String },
}

/// Parses cgroup v2 `memory.events`: `key value` lines, of which `oom_kill` is required
/// and `oom_group_kill` optional (kernels before 5.18 lack it).
pub fn parse_v2(text: &str) -> Result<Counters, String> {
    let mut oom_kill = None;
    let mut group = None;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "line {}: expected \"key value\", got {line:?}",
                n + 1
            ));
        };
        let value: u64 = value
            .parse()
            .map_err(|_| format!("line {}: {key} is not a count: {value:?}", n + 1))?;
        match key {
            "oom_kill" => oom_kill = Some(value),
            "oom_group_kill" => group = Some(value),
            _ => {}
        }
    }
    Ok(Counters {
        oom_kill: oom_kill.ok_or("no oom_kill line")?,
        oom_group_kill: group.unwrap_or(0),
    })
}

/// Parses cgroup v1 `memory.oom_control`: `oom_kill_disable`, `under_oom` and
/// `oom_kill` lines, of which `oom_kill` is required (kernels since 4.13 have it).
pub fn parse_v1(text: &str) -> Result<Counters, String> {
    // The same shape as memory.events; only the keys differ.
    parse_v2(text).map(|c| Counters {
        oom_kill: c.oom_kill,
        oom_group_kill: 0,
    })
}

/// The cgroup hierarchy that holds the memory controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Unified (v2), mounted at this directory.
    V2(PathBuf),
    /// Legacy (v1), the memory controller's hierarchy mounted at this directory.
    V1(PathBuf),
}

/// Finds the hierarchy with the memory controller under `root` (`/sys/fs/cgroup`):
/// unified at the root, a v1 `memory` hierarchy, or (hybrid hosts) `unified/` when the
/// memory controller is there.
pub fn hierarchy(root: &Path) -> Option<Hierarchy> {
    let has_memory = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
    };
    if has_memory(root) {
        return Some(Hierarchy::V2(root.to_owned()));
    }
    let v1 = root.join("memory");
    if v1.join("memory.oom_control").exists() {
        return Some(Hierarchy::V1(v1));
    }
    let unified = root.join("unified");
    has_memory(&unified).then_some(Hierarchy::V2(unified))
}

/// The cgroup directory of `unit` in `slice` under a hierarchy's mount point, as systemd
/// lays it out: `a-b.slice` is inside `a.slice`, `-.slice` is the root.
pub fn unit_dir(mount: &Path, slice: &str, unit: &str) -> PathBuf {
    let mut dir = mount.to_owned();
    if let Some(stem) = slice.strip_suffix(".slice").filter(|s| *s != "-") {
        let mut prefix = String::new();
        for part in stem.split('-') {
            if !prefix.is_empty() {
                prefix.push('-');
            }
            prefix.push_str(part);
            dir.push(format!("{prefix}.slice"));
        }
    }
    dir.push(unit);
    dir
}

/// One read of a cgroup: which instance it is and its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Look {
    /// The directory's inode number: a new cgroup has a new one.
    pub instance: u64,
    pub version: Version,
    pub counters: Counters,
}

/// Reads a cgroup directory's OOM counters.
pub fn look(dir: &Path) -> Result<Look, ReadError> {
    // cgroupfs files are generated in memory by the kernel: reading one does not block.
    let meta = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => m,
        Ok(_) => {
            return Err(ReadError::Unreadable {
                file: dir.to_owned(),
                reason: "not a directory".to_owned(),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReadError::Missing {
                dir: dir.to_owned(),
            });
        }
        Err(e) => {
            return Err(ReadError::Unreadable {
                file: dir.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    let candidates = [
        (Version::V2, "memory.events", parse_v2 as fn(&str) -> _),
        (Version::V1, "memory.oom_control", parse_v1),
    ];
    for (version, name, parse) in candidates {
        let file = dir.join(name);
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let counters = parse(&text).map_err(|reason| ReadError::Garbled {
                    file: file.clone(),
                    reason,
                })?;
                return Ok(Look {
                    instance: meta.ino(),
                    version,
                    counters,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                // Removed between the two calls: the cgroup is gone.
                if !dir.exists() {
                    return Err(ReadError::Missing {
                        dir: dir.to_owned(),
                    });
                }
                return Err(ReadError::Unreadable {
                    file,
                    reason: e.to_string(),
                });
            }
        }
    }
    if !dir.exists() {
        return Err(ReadError::Missing {
            dir: dir.to_owned(),
        });
    }
    Err(ReadError::NoController {
        dir: dir.to_owned(),
    })
}

/// What the counting knows of the cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Nothing read yet: the first instance read is the baseline.
    Fresh,
    /// The cgroup was seen missing or removed: the next instance counts from 0.
    Gone,
    /// This instance, whose counter was last this.
    Instance { instance: u64, oom_kill: u64 },
}

/// Turns reads into new kills: pure, so that removal and recreation are tested without
/// a cgroup.
#[derive(Debug, Clone)]
pub struct Tally {
    /// A short name for the cgroup, in event keys.
    label: String,
    known: Known,
}

impl Tally {
    pub fn new(label: impl Into<String>) -> Tally {
        Tally {
            label: label.into(),
            known: Known::Fresh,
        }
    }

    /// The keys of the kills that `read` shows and earlier reads did not, oldest first.
    /// Errors change nothing, except that a missing cgroup makes the next one new.
    pub fn observe(&mut self, read: &Result<Look, ReadError>) -> Vec<String> {
        let look = match read {
            Ok(look) => look,
            Err(ReadError::Missing { .. }) => {
                self.known = Known::Gone;
                return Vec::new();
            }
            Err(_) => return Vec::new(),
        };
        let now = look.counters.oom_kill;
        let from = match self.known {
            Known::Fresh => now,
            Known::Gone => 0,
            Known::Instance { instance, oom_kill } if instance == look.instance => {
                // A counter that went down belongs to a new cgroup with the same number.
                if now < oom_kill { 0 } else { oom_kill }
            }
            Known::Instance { .. } => 0,
        };
        self.known = Known::Instance {
            instance: look.instance,
            oom_kill: now,
        };
        // A garbled counter must not panic nor allocate without bound.
        let new = now.saturating_sub(from);
        if new > MAX_KILLS_AT_ONCE {
            tracing::warn!(cgroup = %self.label, kills = new, counted = MAX_KILLS_AT_ONCE, "implausibly many oom kills at once; counting the first ones");
        }
        (from.saturating_add(1)..=now)
            .take(MAX_KILLS_AT_ONCE as usize)
            .map(|n| format!("{}#{}/{n}", self.label, look.instance))
            .collect()
    }
}

/// The most kills one read turns into events (far above any rule's threshold).
const MAX_KILLS_AT_ONCE: u64 = 10_000;

/// How the kernel tells us to look again.
struct Notifier {
    inotify: AsyncFd<Inotify>,
    /// `memory.events` of the instance being watched (v2).
    file: Option<(u64, WatchDescriptor)>,
    /// The cgroup's parent directory, for the cgroup's creation and removal.
    parent: Option<WatchDescriptor>,
    /// The v1 eventfd registered for the instance being watched.
    eventfd: Option<(u64, AsyncFd<OwnedFd>)>,
}

/// What woke the watcher.
enum Wake {
    Tick,
    /// A notification; `early` when it can come before the kill is counted (v1).
    Notified {
        early: bool,
    },
    Recheck,
}

/// Watches one cgroup for OOM kills. Created without I/O; the first [`OomWatch::next`]
/// reads the baseline and arms the notifications.
pub struct OomWatch {
    spec: CgroupOomSpec,
    root: PathBuf,
    dir: Option<PathBuf>,
    tally: Tally,
    ticker: Interval,
    notifier: Option<Notifier>,
    /// The time of the last notification that has found no kill yet, and how many
    /// rechecks were made since.
    recheck: Option<(Instant, usize)>,
    /// The last state reported on a tick, so that a change is logged once.
    last_state: Option<String>,
}

impl OomWatch {
    /// A watcher of `spec`, read every `interval` as a safety net.
    pub fn new(spec: &CgroupOomSpec, interval: Duration) -> OomWatch {
        OomWatch::with_root(spec, interval, Path::new(CGROUP_ROOT))
    }

    /// As [`OomWatch::new`], with the cgroup hierarchies under `root` instead of
    /// `/sys/fs/cgroup` (only a `unit` is resolved against it).
    pub fn with_root(spec: &CgroupOomSpec, interval: Duration, root: &Path) -> OomWatch {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let label = match spec {
            CgroupOomSpec::Path(p) => p
                .file_name()
                .map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into()),
            CgroupOomSpec::Unit { unit, .. } => unit.clone(),
        };
        OomWatch {
            spec: spec.clone(),
            root: root.to_owned(),
            dir: None,
            tally: Tally::new(label),
            ticker,
            notifier: None,
            recheck: None,
            last_state: None,
        }
    }

    /// The cgroup directory, once resolved.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn resolve(&mut self) -> Result<PathBuf, ReadError> {
        if let Some(dir) = &self.dir {
            return Ok(dir.clone());
        }
        let dir = match &self.spec {
            CgroupOomSpec::Path(p) => p.clone(),
            CgroupOomSpec::Unit { unit, slice } => match hierarchy(&self.root) {
                Some(Hierarchy::V2(mount) | Hierarchy::V1(mount)) => unit_dir(&mount, slice, unit),
                None => {
                    return Err(ReadError::NoHierarchy {
                        root: self.root.clone(),
                    });
                }
            },
        };
        tracing::info!(cgroup = %dir.display(), "watching the cgroup for oom kills");
        self.dir = Some(dir.clone());
        Ok(dir)
    }

    /// Waits for what comes next and returns its readings: one event per new kill; on a
    /// tick without one, `NoData`, or a `SourceError` saying why the cgroup cannot be
    /// read. Never returns an empty list. Cancel-safe: dropping the future loses no kill
    /// (the counters are read again next time).
    pub async fn next(&mut self) -> Vec<ReadingState> {
        loop {
            let wake = self.wait().await;
            let dir = match self.resolve() {
                Ok(dir) => dir,
                Err(e) => match wake {
                    Wake::Tick => return vec![self.state(Err(e.to_string()))],
                    _ => continue,
                },
            };
            let read = look(&dir);
            let kills = self.tally.observe(&read);
            self.arm(&dir, &read);
            if let Ok(l) = &read
                && l.counters.oom_group_kill > 0
                && !kills.is_empty()
            {
                tracing::info!(cgroup = %dir.display(), oom_group_kill = l.counters.oom_group_kill, "the cgroup has had group oom kills");
            }
            if !kills.is_empty() {
                self.recheck = None;
                tracing::warn!(cgroup = %dir.display(), kills = kills.len(), "oom kill");
                self.last_state = Some("ok".to_owned());
                return kills
                    .into_iter()
                    .map(|key| ReadingState::Value(Measure::Event { key }))
                    .collect();
            }
            match wake {
                Wake::Tick => {
                    return vec![self.state(read.map(|_| ()).map_err(|e| e.to_string()))];
                }
                // v2 counts before it notifies, and memory.events also changes on
                // `high` and `max` events, which can be frequent: no rechecks for it.
                Wake::Notified { early: false } => {}
                Wake::Notified { early: true } => {
                    if self.recheck.is_none() {
                        self.recheck = Some((Instant::now(), 0));
                    }
                }
                Wake::Recheck => {
                    if let Some((at, n)) = self.recheck {
                        self.recheck = (n + 1 < RECHECKS.len()).then_some((at, n + 1));
                    }
                }
            }
        }
    }

    /// The reading of a tick without a kill, logging a change of state once.
    fn state(&mut self, read: Result<(), String>) -> ReadingState {
        match read {
            Ok(()) => {
                if self.last_state.take().is_some_and(|s| s != "ok") {
                    tracing::info!(cgroup = ?self.dir, "the cgroup can be read again");
                }
                self.last_state = Some("ok".to_owned());
                ReadingState::NoData
            }
            Err(e) => {
                if self.last_state.as_deref() != Some(&e) {
                    tracing::warn!(error = %e, "cannot read the cgroup's oom counters");
                    self.last_state = Some(e.clone());
                }
                ReadingState::SourceError(crate::source::clip(&e, crate::source::DETAIL_LIMIT))
            }
        }
    }

    /// Waits for a tick, a notification or a due recheck.
    async fn wait(&mut self) -> Wake {
        let recheck_at = self.recheck.map(|(at, n)| at + RECHECKS[n]);
        let (inotify, eventfd) = match self.notifier.as_mut() {
            Some(n) => (Some(&mut n.inotify), n.eventfd.as_ref().map(|(_, fd)| fd)),
            None => (None, None),
        };
        tokio::select! {
            _ = self.ticker.tick() => Wake::Tick,
            () = inotified(inotify) => Wake::Notified { early: false },
            () = signalled(eventfd) => Wake::Notified { early: true },
            () = sleep_until(recheck_at) => Wake::Recheck,
        }
    }

    /// Keeps the notifications pointed at the instance just read: inotify on the parent
    /// directory (creation, removal) and on `memory.events` (v2), or an eventfd (v1).
    /// Failing to arm is logged; the interval's reads still see every kill.
    fn arm(&mut self, dir: &Path, read: &Result<Look, ReadError>) {
        if self.notifier.is_none() {
            match Inotify::init().and_then(readable) {
                Ok(inotify) => {
                    self.notifier = Some(Notifier {
                        inotify,
                        file: None,
                        parent: None,
                        eventfd: None,
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start inotify; reading the cgroup at its interval only");
                    return;
                }
            }
        }
        let Some(n) = self.notifier.as_mut() else {
            return;
        };
        if n.parent.is_none()
            && let Some(parent) = dir.parent()
        {
            let mask = WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::ONLYDIR;
            n.parent = n.inotify.get_ref().watches().add(parent, mask).ok();
        }
        let current = read.as_ref().ok();
        let instance = current.map(|l| l.instance);
        if n.file.as_ref().map(|(i, _)| *i)
            != instance.filter(|_| current.is_some_and(|l| l.version == Version::V2))
        {
            if let Some((_, wd)) = n.file.take() {
                let _ = n.inotify.get_ref().watches().remove(wd);
            }
            if let Some(l) = current.filter(|l| l.version == Version::V2) {
                match n
                    .inotify
                    .get_ref()
                    .watches()
                    .add(dir.join("memory.events"), WatchMask::MODIFY)
                {
                    Ok(wd) => n.file = Some((l.instance, wd)),
                    Err(e) => {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot watch memory.events; reading it at the interval only")
                    }
                }
            }
        }
        let v1 = instance.filter(|_| current.is_some_and(|l| l.version == Version::V1));
        if n.eventfd.as_ref().map(|(i, _)| *i) != v1 {
            n.eventfd = None;
            if let Some(instance) = v1 {
                match register_v1(dir) {
                    Ok(fd) => n.eventfd = Some((instance, fd)),
                    Err(e) => {
                        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot register for oom notifications; reading memory.oom_control at the interval only")
                    }
                }
            }
        }
    }
}

/// Waits for inotify events (their content does not matter: the cgroup is read again).
async fn inotified(inotify: Option<&mut AsyncFd<Inotify>>) {
    let Some(inotify) = inotify else {
        return std::future::pending().await;
    };
    let mut buffer = [0u8; 4096];
    loop {
        let Ok(mut guard) = inotify.readable_mut().await else {
            return std::future::pending().await;
        };
        let read = guard.try_io(|fd| {
            let events = fd.get_mut().read_events(&mut buffer)?;
            Ok(events.count())
        });
        match read {
            Ok(Ok(0)) | Err(_) => continue,
            Ok(Ok(_)) => return,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read inotify events; reading the cgroup at its interval only");
                return std::future::pending().await;
            }
        }
    }
}

/// Waits until the v1 eventfd is signalled, and resets it.
async fn signalled(eventfd: Option<&AsyncFd<OwnedFd>>) {
    let Some(fd) = eventfd else {
        return std::future::pending().await;
    };
    loop {
        let Ok(mut guard) = fd.readable().await else {
            return std::future::pending().await;
        };
        let raw = fd.get_ref().as_raw_fd();
        let read = guard.try_io(|_| {
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into a u64, as eventfd requires.
            let n = unsafe { libc::read(raw, (&raw mut count).cast(), 8) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        });
        match read {
            Ok(Ok(())) => return,
            Ok(Err(_)) => return std::future::pending().await,
            Err(_would_block) => continue,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Registers an eventfd for the v1 OOM notifications of the cgroup at `dir`.
fn register_v1(dir: &Path) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: eventfd returns a new descriptor or -1.
    let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we own from here on.
    let eventfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let control = std::fs::File::open(dir.join("memory.oom_control"))?;
    std::fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd()),
    )?;
    readable(eventfd)
}

/// `fd` registered with the runtime for reading.
fn readable<T: AsRawFd>(fd: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: both types passed here (`Inotify`, `OwnedFd`) own their descriptor and
    // keep it open, unchanged, until they are dropped with the `AsyncFd`.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look_of(instance: u64, oom_kill: u64) -> Result<Look, ReadError> {
        Ok(Look {
            instance,
            version: Version::V1,
            counters: Counters {
                oom_kill,
                oom_group_kill: 0,
            },
        })
    }

    fn missing() -> Result<Look, ReadError> {
        Err(ReadError::Missing {
            dir: PathBuf::from("/x"),
        })
    }

    #[test]
    fn memory_events_of_cgroup_v2_give_both_oom_counters() {
        let text = "low 0\nhigh 3\nmax 12\noom 4\noom_kill 2\noom_group_kill 1\n";
        assert_eq!(
            parse_v2(text),
            Ok(Counters {
                oom_kill: 2,
                oom_group_kill: 1
            })
        );
        assert_eq!(parse_v2("oom_kill 7\n").map(|c| c.oom_kill), Ok(7));
    }

    #[test]
    fn memory_oom_control_of_cgroup_v1_gives_the_kill_counter() {
        let text = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        assert_eq!(parse_v1(text).map(|c| c.oom_kill), Ok(5));
    }

    #[test]
    fn garbled_counter_files_are_refused_with_the_line() {
        assert_eq!(parse_v2("oom 1\n").unwrap_err(), "no oom_kill line");
        assert_eq!(
            parse_v2("oom_kill many\n").unwrap_err(),
            "line 1: oom_kill is not a count: \"many\""
        );
        assert!(
            parse_v2("oom_kill 1 2\n")
                .unwrap_err()
                .starts_with("line 1: expected")
        );
        assert!(parse_v1("").is_err());
    }

    #[test]
    fn the_counter_present_when_watching_starts_is_a_baseline() {
        let mut t = Tally::new("shop.service");
        assert!(t.observe(&look_of(10, 4)).is_empty());
        assert_eq!(
            t.observe(&look_of(10, 6)),
            ["shop.service#10/5", "shop.service#10/6"]
        );
        assert!(t.observe(&look_of(10, 6)).is_empty());
    }

    #[test]
    fn a_recreated_cgroup_counts_its_kills_from_zero() {
        let mut t = Tally::new("u");
        assert!(t.observe(&look_of(10, 4)).is_empty());
        // Recreated between two reads: a new inode.
        assert_eq!(t.observe(&look_of(11, 1)), ["u#11/1"]);
        // Seen missing, then back with kills made before the first read.
        assert!(t.observe(&missing()).is_empty());
        assert_eq!(t.observe(&look_of(12, 2)), ["u#12/1", "u#12/2"]);
        // A cgroup missing when watching starts counts from zero once it appears.
        let mut t = Tally::new("u");
        assert!(t.observe(&missing()).is_empty());
        assert_eq!(t.observe(&look_of(3, 1)), ["u#3/1"]);
    }

    #[test]
    fn a_counter_going_down_means_a_new_cgroup_even_with_the_same_inode() {
        let mut t = Tally::new("u");
        assert!(t.observe(&look_of(10, 4)).is_empty());
        assert_eq!(t.observe(&look_of(10, 1)), ["u#10/1"]);
        assert_eq!(t.observe(&look_of(10, 3)).len(), 2);
    }

    #[test]
    fn read_errors_neither_count_nor_reset() {
        let mut t = Tally::new("u");
        assert!(t.observe(&look_of(10, 4)).is_empty());
        let garbled = Err(ReadError::Garbled {
            file: PathBuf::from("/x/memory.events"),
            reason: "no oom_kill line".into(),
        });
        assert!(t.observe(&garbled).is_empty());
        assert_eq!(t.observe(&look_of(10, 5)), ["u#10/5"]);
    }

    #[test]
    fn a_unit_resolves_to_its_cgroup_under_nested_slices() {
        let m = Path::new("/sys/fs/cgroup/memory");
        assert_eq!(
            unit_dir(m, "system.slice", "shop.service"),
            Path::new("/sys/fs/cgroup/memory/system.slice/shop.service")
        );
        assert_eq!(
            unit_dir(m, "app-web-shop.slice", "a.service"),
            Path::new("/sys/fs/cgroup/memory/app.slice/app-web.slice/app-web-shop.slice/a.service")
        );
        assert_eq!(
            unit_dir(m, "-.slice", "init.scope"),
            Path::new("/sys/fs/cgroup/memory/init.scope")
        );
    }

    #[test]
    fn the_hierarchy_with_the_memory_controller_is_found_on_v2_v1_and_hybrid_hosts() {
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        assert_eq!(hierarchy(v2.path()), Some(Hierarchy::V2(v2.path().into())));

        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(v1.path().join("memory")).unwrap();
        std::fs::write(v1.path().join("memory/memory.oom_control"), "oom_kill 0\n").unwrap();
        std::fs::create_dir_all(v1.path().join("unified")).unwrap();
        std::fs::write(v1.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        assert_eq!(
            hierarchy(v1.path()),
            Some(Hierarchy::V1(v1.path().join("memory")))
        );

        let none = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(none.path().join("unified")).unwrap();
        std::fs::write(none.path().join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
        assert_eq!(hierarchy(none.path()), None);
    }
}
