//! The state store: one SQLite database in the state directory (`rearguard.db`), opened
//! in WAL mode with full sync, so that what it says was written survives `kill -9` and a
//! power cut.
//!
//! It owns the notification outbox: every message is written here before it is sent,
//! with its delivery state, attempts and next attempt time; and the threads, the
//! reference a provider gave to an incident's first message (a Slack thread `ts`, a
//! Statuspage incident id) so that later messages join it, across restarts.
//!
//! It keeps the audit trail of operator calls (who, what, result), and the engine's memory (open incidents, revisions marked bad, breakers,
//! cooldowns, escalations still due; see `engine::Memory`), written after every engine
//! step that had effects and before they are carried out; the audit trail of decisions
//! (every rule transition with the evidence behind it); and every closed incident.
//!
//! One process at a time owns a state directory: [`Store::open`] takes an exclusive lock
//! on `<state_dir>/rearguard.lock` (with the owner's PID in it) for the store's life, so
//! a second daemon on the same directory refuses to start rather than act on the same
//! incidents twice. [`Store::open_read_only`] takes no lock, for readers beside a daemon.
//!
//! It refuses a store it cannot trust: a damaged database, or engine memory that does
//! not decode (starting without it would forget breakers, bad marks and open incidents).
//! Only the operator discards them ([`discard_unreadable`], `rearguard run
//! --discard-state`), and what is discarded is kept aside, never deleted.
//!
//! The store runs SQL and nothing else: it does not send, decide, log or read the clock.
//! Calls block for the length of one small transaction; the connection sits behind a
//! mutex that is never held across an `.await`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};

use crate::engine::Memory;

/// The file name of the database inside the state directory.
pub const FILE: &str = "rearguard.db";

/// The file name of the lock inside the state directory; it holds the owner's PID.
pub const LOCK_FILE: &str = "rearguard.lock";

/// The table where `discard_unreadable` keeps an engine memory that cannot be read.
pub const DISCARDED_MEMORY: &str = "memory_discarded";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("state store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state store: a stored message cannot be read: {0}")]
    Corrupt(String),
    #[error("cannot lock the state directory through {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process holds the state directory.
    #[error(
        "the state directory {dir} is in use by another rearguard ({}); two daemons on one state directory would both act on the same incidents, so this one does not start",
        .holder.map_or_else(|| "its pid is not recorded".to_owned(), |pid| format!("pid {pid}"))
    )]
    Locked { dir: PathBuf, holder: Option<u32> },
    #[error(
        "the state store {path} is damaged ({reason}); rearguard does not start on it: run `rearguard run --discard-state` to keep it aside as {path}.corrupt-<ms> and start with an empty state"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error(
        "the state store {path} holds engine memory that cannot be read ({reason}); starting without it would forget the breakers, revisions marked bad and open incidents, so rearguard does not start: run `rearguard run --discard-state` to keep it aside (table memory_discarded) and start with an empty memory"
    )]
    UnreadableMemory { path: PathBuf, reason: String },
    #[error("cannot keep the damaged state store {path} aside: {source}")]
    KeepAside {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What [`discard_unreadable`] moved aside.
#[derive(Debug, Clone, PartialEq)]
pub enum Discarded {
    /// The whole database, renamed (with its WAL) to `kept_as`.
    Database { kept_as: PathBuf, reason: String },
    /// The engine's memory, moved to the table [`DISCARDED_MEMORY`].
    Memory { reason: String },
}

impl std::fmt::Display for Discarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Discarded::Database { kept_as, reason } => write!(
                f,
                "the damaged database ({reason}), kept as {}",
                kept_as.display()
            ),
            Discarded::Memory { reason } => write!(
                f,
                "the engine memory that cannot be read ({reason}), kept in table {DISCARDED_MEMORY}"
            ),
        }
    }
}

/// Where a message is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not yet accepted; sent at `next_at_ms` at the earliest.
    Pending,
    /// The provider accepted it.
    Delivered,
    /// The provider refused it in a way no retry fixes.
    Rejected,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Option<State> {
        match s {
            "pending" => Some(State::Pending),
            "delivered" => Some(State::Delivered),
            "rejected" => Some(State::Rejected),
            _ => None,
        }
    }
}

/// A message to put in the outbox.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The message's unique id (also inside `body`).
    pub id: String,
    pub notifier: String,
    pub incident: String,
    /// The message as JSON.
    pub body: String,
}

/// One message of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Insertion order; delivery order within one notifier.
    pub seq: i64,
    pub id: String,
    pub notifier: String,
    pub incident: String,
    pub body: String,
    pub state: State,
    pub attempts: u32,
    /// Wall-clock milliseconds of the next attempt.
    pub next_at_ms: u64,
    pub created_at_ms: u64,
    /// The latest failure, for retries and refusals.
    pub last_error: Option<String>,
    /// What the provider answered when it accepted.
    pub answer: Option<String>,
}

/// One rule transition, for the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub at_ms: u64,
    pub rule: String,
    pub target: String,
    /// The incident open on the target when it happened, if any.
    pub incident: Option<String>,
    pub from: String,
    pub to: String,
    pub evidence: String,
}

/// What one engine step leaves behind, written in one transaction.
#[derive(Debug, Default)]
pub struct StepRecord {
    /// The engine's memory after the step, as JSON.
    pub memory: Option<(u64, String)>,
    pub decisions: Vec<Decision>,
    /// Closed incidents: (id, target, opened ms, closed ms, outcome, JSON).
    pub closed: Vec<(String, String, u64, u64, String, String)>,
}

/// The most readings kept per signal, the newest; older ones are deleted as new ones are
/// written. With [`READINGS_KEPT_FOR`], this bounds what the charts can show: 4096
/// readings are 11 hours of a signal sampled every 10 s, 17 minutes of one sampled
/// every 250 ms.
pub const READINGS_KEPT_PER_SIGNAL: u64 = 4096;

/// Readings older than this before the newest one written are deleted.
pub const READINGS_KEPT_FOR_MS: u64 = 24 * 3_600_000;

/// The most revision changes kept per target, the newest.
pub const CHANGES_KEPT_PER_TARGET: u64 = 100;

/// One reading of one signal, as kept for the charts: `state` is `value`, `no_data`,
/// `insufficient` or `error`; `value` the number a value reading showed (a rate as a
/// fraction), `count` a rate's requests, `detail` an event's key or an insufficient
/// reading's `have/need`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingRow {
    pub signal: String,
    pub at_ms: u64,
    pub state: String,
    pub value: Option<f64>,
    pub count: Option<f64>,
    pub detail: Option<String>,
}

/// One observed revision change of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    pub target: String,
    pub at_ms: u64,
    pub from: String,
    pub to: String,
}

/// A closed incident in brief, for lists.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedRow {
    pub id: String,
    pub target: String,
    pub opened_ms: u64,
    pub closed_ms: u64,
    pub outcome: String,
}

/// The state store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The state directory's lock, released when the store is dropped; none when
    /// read-only.
    _lock: Option<DirLock>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    notifier      TEXT NOT NULL,
    incident      TEXT NOT NULL,
    body          TEXT NOT NULL,
    state         TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_at_ms    INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_error    TEXT,
    answer        TEXT,
    done_at_ms    INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_queue ON outbox (notifier, state, seq);
CREATE TABLE IF NOT EXISTS memory (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    at_ms INTEGER NOT NULL,
    body  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    INTEGER NOT NULL,
    rule     TEXT NOT NULL,
    target   TEXT NOT NULL,
    incident TEXT,
    from_phase TEXT NOT NULL,
    to_phase TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_incident ON decisions (incident, seq);
CREATE TABLE IF NOT EXISTS incidents (
    id        TEXT PRIMARY KEY,
    target    TEXT NOT NULL,
    opened_ms INTEGER NOT NULL,
    closed_ms INTEGER NOT NULL,
    outcome   TEXT NOT NULL,
    body      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    INTEGER NOT NULL,
    operator TEXT NOT NULL,
    action   TEXT NOT NULL,
    result   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS memory_discarded (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    discarded_at_ms INTEGER NOT NULL,
    reason          TEXT NOT NULL,
    at_ms,
    body
);
CREATE TABLE IF NOT EXISTS readings (
    signal TEXT NOT NULL,
    at_ms  INTEGER NOT NULL,
    state  TEXT NOT NULL,
    value  REAL,
    count  REAL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS readings_by_signal ON readings (signal, at_ms);
CREATE TABLE IF NOT EXISTS changes (
    target        TEXT NOT NULL,
    at_ms         INTEGER NOT NULL,
    from_revision TEXT NOT NULL,
    to_revision   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_target ON changes (target, at_ms);
CREATE TABLE IF NOT EXISTS threads (
    notifier  TEXT NOT NULL,
    incident  TEXT NOT NULL,
    reference TEXT NOT NULL,
    PRIMARY KEY (notifier, incident)
);
";

const COLUMNS: &str = "seq, id, notifier, incident, body, state, attempts, next_at_ms, created_at_ms, last_error, answer";

impl Store {
    /// Opens (creating if needed) the store in `dir`, owning the directory while the
    /// store lives. Fails if another process owns it (naming its PID), if the database
    /// is damaged, or if the engine's memory cannot be read (see [`discard_unreadable`]).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let lock = DirLock::take(dir)?;
        let path = dir.join(FILE);
        let conn = match open_checked(&path)? {
            Opened::Sound(conn) => conn,
            Opened::Damaged(reason) => return Err(StoreError::Damaged { path, reason }),
            Opened::BadMemory(_, reason) => {
                return Err(StoreError::UnreadableMemory { path, reason });
            }
        };
        Ok(Store {
            conn: Mutex::new(conn),
            path,
            _lock: Some(lock),
        })
    }

    /// Opens the existing store in `dir` to read it beside the process that owns it
    /// (tests, inspection): no lock, no check, no write.
    pub fn open_read_only(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(FILE);
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags)
            .and_then(|conn| {
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                Ok(conn)
            })
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Store {
            conn: Mutex::new(conn),
            path,
            _lock: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the transaction is
        // rolled back), so the poisoned guard is safe to use.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes messages to the outbox in one transaction, due at once. A message whose id
    /// is already there is left as it is.
    pub fn enqueue(&self, messages: &[NewMessage], now_ms: u64) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO outbox (id, notifier, incident, body, state, next_at_ms, created_at_ms)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
            )?;
            for m in messages {
                insert.execute(params![m.id, m.notifier, m.incident, m.body, now_ms as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Writes what an engine step leaves behind, in one transaction, before its effects
    /// are carried out.
    pub fn record_step(&self, record: &StepRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some((at, body)) = &record.memory {
            tx.execute(
                "INSERT INTO memory (id, at_ms, body) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms, body = excluded.body",
                params![*at as i64, body],
            )?;
        }
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO decisions (at_ms, rule, target, incident, from_phase, to_phase, evidence)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for d in &record.decisions {
                insert.execute(params![
                    d.at_ms as i64,
                    d.rule,
                    d.target,
                    d.incident,
                    d.from,
                    d.to,
                    d.evidence
                ])?;
            }
        }
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO incidents (id, target, opened_ms, closed_ms, outcome, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (id, target, opened, closed, outcome, body) in &record.closed {
                insert.execute(params![
                    id,
                    target,
                    *opened as i64,
                    *closed as i64,
                    outcome,
                    body
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records one operator call: who, what, and how it ended.
    pub fn audit(
        &self,
        at_ms: u64,
        operator: &str,
        action: &str,
        result: &str,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO audit (at_ms, operator, action, result) VALUES (?1, ?2, ?3, ?4)",
            params![at_ms as i64, operator, action, result],
        )?;
        Ok(())
    }

    /// Every operator call recorded, oldest first: (ms, operator, action, result).
    pub fn audit_trail(&self) -> Result<Vec<(u64, String, String, String)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT at_ms, operator, action, result FROM audit ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The engine's memory from the last run, as JSON, with when it was taken.
    pub fn memory(&self) -> Result<Option<(u64, String)>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row("SELECT at_ms, body FROM memory WHERE id = 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
            })
            .optional()?)
    }

    /// The audit trail of one incident, oldest first: the rule transitions recorded with
    /// it, and those of its target between the breach's start and its opening (a rule
    /// goes pending before there is an incident).
    pub fn decisions(
        &self,
        incident: &str,
        target: &str,
        breach_started_ms: u64,
        opened_ms: u64,
    ) -> Result<Vec<Decision>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT at_ms, rule, target, incident, from_phase, to_phase, evidence
             FROM decisions
             WHERE incident = ?1
                OR (incident IS NULL AND target = ?2 AND at_ms BETWEEN ?3 AND ?4)
             ORDER BY seq",
        )?;
        let rows = stmt.query_map(
            params![incident, target, breach_started_ms as i64, opened_ms as i64],
            |r| {
                Ok(Decision {
                    at_ms: r.get::<_, i64>(0)? as u64,
                    rule: r.get(1)?,
                    target: r.get(2)?,
                    incident: r.get(3)?,
                    from: r.get(4)?,
                    to: r.get(5)?,
                    evidence: r.get(6)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Writes readings and revision changes in one transaction, then deletes what is
    /// past the bounds ([`READINGS_KEPT_PER_SIGNAL`], [`READINGS_KEPT_FOR_MS`],
    /// [`CHANGES_KEPT_PER_TARGET`]) for the signals and targets written.
    pub fn record_readings(
        &self,
        readings: &[ReadingRow],
        changes: &[ChangeRow],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO readings (signal, at_ms, state, value, count, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for r in readings {
                insert.execute(params![
                    r.signal,
                    r.at_ms as i64,
                    r.state,
                    r.value,
                    r.count,
                    r.detail
                ])?;
            }
            let mut insert = tx.prepare_cached(
                "INSERT INTO changes (target, at_ms, from_revision, to_revision)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for c in changes {
                insert.execute(params![c.target, c.at_ms as i64, c.from, c.to])?;
            }
        }
        let newest = readings.iter().map(|r| r.at_ms).max().unwrap_or(0);
        let mut signals: Vec<&str> = readings.iter().map(|r| r.signal.as_str()).collect();
        signals.sort_unstable();
        signals.dedup();
        for signal in signals {
            tx.prepare_cached(
                "DELETE FROM readings WHERE signal = ?1 AND (at_ms < ?2 OR at_ms <
                   (SELECT at_ms FROM readings WHERE signal = ?1 ORDER BY at_ms DESC LIMIT 1 OFFSET ?3))",
            )?
            .execute(params![
                signal,
                newest.saturating_sub(READINGS_KEPT_FOR_MS) as i64,
                (READINGS_KEPT_PER_SIGNAL - 1) as i64
            ])?;
        }
        for c in changes {
            tx.prepare_cached(
                "DELETE FROM changes WHERE target = ?1 AND at_ms <
                   (SELECT at_ms FROM changes WHERE target = ?1 ORDER BY at_ms DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![c.target, (CHANGES_KEPT_PER_TARGET - 1) as i64])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The readings of a signal from `from_ms` to `to_ms` (inclusive), oldest first.
    pub fn readings(
        &self,
        signal: &str,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<ReadingRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT signal, at_ms, state, value, count, detail FROM readings
             WHERE signal = ?1 AND at_ms BETWEEN ?2 AND ?3 ORDER BY at_ms, rowid",
        )?;
        let rows = stmt.query_map(params![signal, from_ms as i64, to_ms as i64], reading_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest reading of a signal, if one is kept.
    pub fn latest_reading(&self, signal: &str) -> Result<Option<ReadingRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT signal, at_ms, state, value, count, detail FROM readings
             WHERE signal = ?1 ORDER BY at_ms DESC, rowid DESC LIMIT 1",
        )?;
        Ok(stmt.query_row(params![signal], reading_row).optional()?)
    }

    /// The revision changes of a target up to `to_ms`, the newest `limit`, oldest first.
    pub fn changes(
        &self,
        target: &str,
        to_ms: u64,
        limit: u64,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT target, at_ms, from_revision, to_revision FROM changes
             WHERE target = ?1 AND at_ms <= ?2 ORDER BY at_ms DESC, rowid DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![target, to_ms as i64, limit as i64], |r| {
            Ok(ChangeRow {
                target: r.get(0)?,
                at_ms: r.get::<_, i64>(1)? as u64,
                from: r.get(2)?,
                to: r.get(3)?,
            })
        })?;
        let mut out: Vec<ChangeRow> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// The newest `limit` closed incidents, newest first.
    pub fn recent_incidents(&self, limit: u64) -> Result<Vec<ClosedRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, target, opened_ms, closed_ms, outcome FROM incidents
             ORDER BY closed_ms DESC, id LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok(ClosedRow {
                id: r.get(0)?,
                target: r.get(1)?,
                opened_ms: r.get::<_, i64>(2)? as u64,
                closed_ms: r.get::<_, i64>(3)? as u64,
                outcome: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A closed incident, as JSON.
    pub fn closed_incident(&self, id: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT body FROM incidents WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The oldest pending message of a notifier: the next to deliver, in order.
    pub fn next_pending(&self, notifier: &str) -> Result<Option<Row>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM outbox WHERE notifier = ?1 AND state = 'pending' ORDER BY seq LIMIT 1"
        ))?;
        stmt.query_row(params![notifier], row)
            .optional()?
            .transpose()
    }

    /// Records that the provider accepted a message, and the incident's thread reference
    /// on this notifier when the provider gave one.
    pub fn delivered(
        &self,
        seq: i64,
        answer: &str,
        thread: Option<(&str, &str, &str)>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, answer = ?2, done_at_ms = ?3
             WHERE seq = ?1",
            params![seq, answer, now_ms as i64],
        )?;
        if let Some((notifier, incident, reference)) = thread {
            tx.execute(
                "INSERT INTO threads (notifier, incident, reference) VALUES (?1, ?2, ?3)
                 ON CONFLICT (notifier, incident) DO UPDATE SET reference = excluded.reference",
                params![notifier, incident, reference],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a failed attempt; the message is tried again at `next_at_ms`.
    pub fn retry_later(&self, seq: i64, reason: &str, next_at_ms: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_at_ms = ?3 WHERE seq = ?1",
            params![seq, reason, next_at_ms as i64],
        )?;
        Ok(())
    }

    /// Records that the provider refused a message for good.
    pub fn rejected(&self, seq: i64, reason: &str, now_ms: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE outbox SET state = 'rejected', attempts = attempts + 1, last_error = ?2, done_at_ms = ?3
             WHERE seq = ?1",
            params![seq, reason, now_ms as i64],
        )?;
        Ok(())
    }

    /// The reference of an incident's thread on a notifier, if its first message was
    /// accepted with one.
    pub fn thread(&self, notifier: &str, incident: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT reference FROM threads WHERE notifier = ?1 AND incident = ?2",
        )?;
        Ok(stmt
            .query_row(params![notifier, incident], |r| r.get(0))
            .optional()?)
    }

    /// Every message of the outbox, oldest first (for `status`, reports and tests).
    pub fn messages(&self) -> Result<Vec<Row>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM outbox ORDER BY seq"))?;
        let rows = stmt.query_map([], row)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// How many messages wait for each notifier, by name.
    pub fn pending_notifiers(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT notifier, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY notifier ORDER BY notifier",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets delivered and refused messages finished before `before_ms`, and the
    /// threads of incidents that have no message left.
    pub fn prune(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "DELETE FROM outbox WHERE state != 'pending' AND done_at_ms < ?1",
            params![before_ms as i64],
        )?;
        tx.execute(
            "DELETE FROM threads WHERE NOT EXISTS
               (SELECT 1 FROM outbox o WHERE o.notifier = threads.notifier AND o.incident = threads.incident)",
            [],
        )?;
        tx.commit()?;
        Ok(n)
    }
}

/// At the operator's request (`rearguard run --discard-state`): moves aside what the
/// store in `dir` holds that cannot be read, so that the next [`Store::open`] starts
/// without it. A damaged database is renamed (`rearguard.db.corrupt-<now_ms>`, its WAL
/// beside it) and a new one begins; an engine memory that cannot be read goes to the
/// table [`DISCARDED_MEMORY`]. Takes the directory's lock for its length, so it refuses
/// while a daemon owns it. Returns what it moved, for the caller to log.
pub fn discard_unreadable(dir: &Path, now_ms: u64) -> Result<Vec<Discarded>, StoreError> {
    let path = dir.join(FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let _lock = DirLock::take(dir)?;
    let mut discarded = Vec::new();
    let mut opened = open_checked(&path)?;
    if let Opened::Damaged(reason) = opened {
        let kept_as = keep_aside(&path, now_ms).map_err(|source| StoreError::KeepAside {
            path: path.clone(),
            source,
        })?;
        discarded.push(Discarded::Database { kept_as, reason });
        opened = open_checked(&path)?;
    }
    match opened {
        Opened::Sound(_) => {}
        Opened::BadMemory(mut conn, reason) => {
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO memory_discarded (discarded_at_ms, reason, at_ms, body)
                 SELECT ?1, ?2, at_ms, body FROM memory WHERE id = 1",
                params![now_ms as i64, reason],
            )?;
            tx.execute("DELETE FROM memory WHERE id = 1", [])?;
            tx.commit()?;
            discarded.push(Discarded::Memory { reason });
        }
        Opened::Damaged(reason) => return Err(StoreError::Damaged { path, reason }),
    }
    Ok(discarded)
}

/// The exclusive lock on a state directory: `flock` on its lock file, released by the
/// kernel when the file is closed (the store dropped, the process gone, even by
/// `kill -9`). The file is opened close-on-exec, so commands the daemon runs never
/// inherit it.
#[derive(Debug)]
struct DirLock {
    _file: File,
}

impl DirLock {
    fn take(dir: &Path) -> Result<DirLock, StoreError> {
        let path = dir.join(LOCK_FILE);
        let failed = |source| StoreError::Lock {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok());
                return Err(StoreError::Locked {
                    dir: dir.to_owned(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(failed(e)),
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(failed)?;
        Ok(DirLock { _file: file })
    }
}

/// A database opened and checked.
enum Opened {
    Sound(Connection),
    /// The file is not a database, or fails SQLite's integrity check.
    Damaged(String),
    /// The database is sound but the engine's memory in it cannot be read.
    BadMemory(Connection, String),
}

/// Opens the database at `path` (creating it if needed) and checks what a start relies
/// on; an error is a failure to open that is not damage (permissions, a missing
/// directory).
fn open_checked(path: &Path) -> Result<Opened, StoreError> {
    let checked = (|| {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL keeps readers off the writer's back; FULL syncs the log on every
        // commit, so a committed message survives a power cut, not only a crash.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        if let Some(problem) = integrity_problem(&conn)? {
            return Ok(Opened::Damaged(problem));
        }
        conn.execute_batch(SCHEMA)?;
        Ok(match memory_problem(&conn)? {
            None => Opened::Sound(conn),
            Some(reason) => Opened::BadMemory(conn, reason),
        })
    })();
    match checked {
        Ok(opened) => Ok(opened),
        Err(e) if is_damage(&e) => Ok(Opened::Damaged(e.to_string())),
        Err(source) => Err(StoreError::Open {
            path: path.to_owned(),
            source,
        }),
    }
}

fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

/// What SQLite's `quick_check` finds wrong, if anything (its first lines).
fn integrity_problem(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let lines = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .take(3)
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((lines != ["ok"]).then(|| format!("integrity check: {}", lines.join("; "))))
}

/// Why the engine's memory cannot be read, if it cannot.
fn memory_problem(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let problem = conn
        .query_row("SELECT body FROM memory WHERE id = 1", [], |r| {
            Ok(match r.get_ref(0)? {
                ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
                    Ok(json) => Memory::decode(json).err(),
                    Err(e) => Some(format!("not UTF-8 text: {e}")),
                },
                other => Some(format!("stored as {} instead of text", other.data_type())),
            })
        })
        .optional()?;
    Ok(problem.flatten())
}

/// Renames the database at `path`, with its WAL and shared-memory files, to
/// `<path>.corrupt-<now_ms>`; returns the new name.
fn keep_aside(path: &Path, now_ms: u64) -> std::io::Result<PathBuf> {
    let kept_as = PathBuf::from(format!("{}.corrupt-{now_ms}", path.display()));
    std::fs::rename(path, &kept_as)?;
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            std::fs::rename(&from, format!("{}{suffix}", kept_as.display()))?;
        }
    }
    Ok(kept_as)
}

fn reading_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReadingRow> {
    Ok(ReadingRow {
        signal: r.get(0)?,
        at_ms: r.get::<_, i64>(1)? as u64,
        state: r.get(2)?,
        value: r.get(3)?,
        count: r.get(4)?,
        detail: r.get(5)?,
    })
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Row, StoreError>> {
    let state: String = r.get(5)?;
    let Some(state) = State::parse(&state) else {
        return Ok(Err(StoreError::Corrupt(format!(
            "message {} has the unknown state {state:?}",
            r.get::<_, i64>(0)?
        ))));
    };
    Ok(Ok(Row {
        seq: r.get(0)?,
        id: r.get(1)?,
        notifier: r.get(2)?,
        incident: r.get(3)?,
        body: r.get(4)?,
        state,
        attempts: r.get::<_, i64>(6)? as u32,
        next_at_ms: r.get::<_, i64>(7)? as u64,
        created_at_ms: r.get::<_, i64>(8)? as u64,
        last_error: r.get(9)?,
        answer: r.get(10)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, notifier: &str, incident: &str) -> NewMessage {
        NewMessage {
            id: id.to_owned(),
            notifier: notifier.to_owned(),
            incident: incident.to_owned(),
            body: format!("{{\"id\":\"{id}\"}}"),
        }
    }

    /// A store in a fresh directory whose engine memory is `body`, closed again.
    fn with_memory(body: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let record = StepRecord {
            memory: Some((7, body.to_owned())),
            ..StepRecord::default()
        };
        Store::open(dir.path())
            .unwrap()
            .record_step(&record)
            .unwrap();
        dir
    }

    fn memory_json(version: u32) -> String {
        serde_json::to_string(&Memory {
            version,
            at: crate::engine::Ts(7),
            paused_all: true,
            targets: Vec::new(),
            incidents: Vec::new(),
            pending: Vec::new(),
            silenced: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn a_second_open_of_the_same_directory_fails_naming_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let owner = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::Locked { holder: Some(pid), .. } if pid == std::process::id()),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        // Readers beside the owner are not blocked.
        let reader = Store::open_read_only(dir.path()).unwrap();
        owner.audit(1, "ops", "pause", "ok").unwrap();
        assert_eq!(reader.audit_trail().unwrap().len(), 1);
        drop(owner);
        Store::open(dir.path()).expect("the lock ends with its store");
    }

    #[test]
    fn engine_memory_that_cannot_be_read_stops_the_open_until_discarded() {
        let dir = with_memory("{\"version\": 1, \"targets\": [tru");
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::UnreadableMemory { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("--discard-state"), "{err}");
        Store::open(dir.path()).expect_err("refused again: nothing was dropped");

        let discarded = discard_unreadable(dir.path(), 99).unwrap();
        assert!(
            matches!(&discarded[..], [Discarded::Memory { reason }] if reason.contains("JSON")),
            "{discarded:?}"
        );
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.memory().unwrap(), None);
        let kept: (i64, i64, String) = store
            .conn()
            .query_row(
                "SELECT discarded_at_ms, at_ms, body FROM memory_discarded",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            kept,
            (99, 7, "{\"version\": 1, \"targets\": [tru".to_owned())
        );
    }

    #[test]
    fn memory_of_another_layout_version_is_refused_and_readable_memory_kept() {
        let dir = with_memory(&memory_json(VERSION_OTHER));
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("layout version"), "{err}");

        let dir = with_memory(&memory_json(Memory::VERSION));
        assert_eq!(discard_unreadable(dir.path(), 1).unwrap(), Vec::new());
        let (at, body) = Store::open(dir.path()).unwrap().memory().unwrap().unwrap();
        assert_eq!((at, body), (7, memory_json(Memory::VERSION)));
    }

    const VERSION_OTHER: u32 = Memory::VERSION + 1;

    #[test]
    fn a_file_that_is_not_a_database_stops_the_open_until_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let junk = "not a database ".repeat(100);
        std::fs::write(dir.path().join(FILE), &junk).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
        assert!(err.to_string().contains("--discard-state"), "{err}");

        let discarded = discard_unreadable(dir.path(), 1234).unwrap();
        let kept_as = dir.path().join(format!("{FILE}.corrupt-1234"));
        assert!(
            matches!(&discarded[..], [Discarded::Database { kept_as: k, .. }] if *k == kept_as),
            "{discarded:?}"
        );
        assert_eq!(std::fs::read_to_string(&kept_as).unwrap(), junk);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.memory().unwrap(), None);
    }

    #[test]
    fn a_database_with_a_damaged_page_stops_the_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let many: Vec<NewMessage> = (0..200)
                .map(|i| message(&format!("m{i}"), "s", "i"))
                .collect();
            store.enqueue(&many, 1).unwrap();
        }
        // Page 2 onwards (page size 4096) overwritten with garbage; the header is intact.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 3 * 4096, "{}", bytes.len());
        bytes[4096..3 * 4096].fill(0xA5);
        std::fs::write(&path, bytes).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
    }

    #[test]
    fn discarding_refuses_while_another_process_owns_the_directory() {
        let dir = with_memory("garbage");
        let _owner = Store::open_read_only(dir.path()).unwrap();
        let lock = DirLock::take(dir.path()).unwrap();
        let err = discard_unreadable(dir.path(), 1).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
        drop(lock);
        assert_eq!(discard_unreadable(dir.path(), 1).unwrap().len(), 1);
    }

    #[test]
    fn messages_are_delivered_in_order_per_notifier_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .enqueue(
                    &[
                        message("a1", "slack", "i1"),
                        message("b1", "pager", "i1"),
                        message("a2", "slack", "i1"),
                    ],
                    1000,
                )
                .unwrap();
            let first = store.next_pending("slack").unwrap().unwrap();
            assert_eq!(first.id, "a1");
            store
                .delivered(first.seq, "HTTP 200", Some(("slack", "i1", "171.1")), 1001)
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.next_pending("slack").unwrap().unwrap().id, "a2");
        assert_eq!(store.next_pending("pager").unwrap().unwrap().id, "b1");
        assert_eq!(
            store.thread("slack", "i1").unwrap().as_deref(),
            Some("171.1")
        );
        assert_eq!(store.thread("pager", "i1").unwrap(), None);
        assert_eq!(
            store.pending_notifiers().unwrap(),
            vec![("pager".to_owned(), 1), ("slack".to_owned(), 1)]
        );
    }

    #[test]
    fn enqueueing_the_same_id_twice_keeps_one_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.enqueue(&[message("a1", "slack", "i1")], 1).unwrap();
        let seq = store.next_pending("slack").unwrap().unwrap().seq;
        store.delivered(seq, "ok", None, 2).unwrap();
        store.enqueue(&[message("a1", "slack", "i1")], 3).unwrap();
        assert_eq!(store.next_pending("slack").unwrap(), None);
        assert_eq!(store.messages().unwrap().len(), 1);
    }

    #[test]
    fn retries_and_refusals_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .enqueue(&[message("a1", "s", "i"), message("a2", "s", "i")], 10)
            .unwrap();
        let row = store.next_pending("s").unwrap().unwrap();
        store.retry_later(row.seq, "HTTP 500", 5000).unwrap();
        let again = store.next_pending("s").unwrap().unwrap();
        assert_eq!(
            (again.id.as_str(), again.attempts, again.next_at_ms),
            ("a1", 1, 5000)
        );
        assert_eq!(again.last_error.as_deref(), Some("HTTP 500"));
        store.rejected(again.seq, "HTTP 400: bad", 20).unwrap();
        assert_eq!(store.next_pending("s").unwrap().unwrap().id, "a2");
        let all = store.messages().unwrap();
        assert_eq!(all[0].state, State::Rejected);
        assert_eq!(all[0].attempts, 2);
    }

    #[test]
    fn pruning_keeps_pending_messages_and_live_threads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .enqueue(&[message("old", "s", "i1"), message("new", "s", "i2")], 10)
            .unwrap();
        let old = store.next_pending("s").unwrap().unwrap();
        store
            .delivered(old.seq, "ok", Some(("s", "i1", "t1")), 100)
            .unwrap();
        assert_eq!(store.prune(50).unwrap(), 0);
        assert_eq!(store.prune(200).unwrap(), 1);
        assert_eq!(store.thread("s", "i1").unwrap(), None);
        assert_eq!(store.next_pending("s").unwrap().unwrap().id, "new");
    }

    fn reading(signal: &str, at_ms: u64) -> ReadingRow {
        ReadingRow {
            signal: signal.to_owned(),
            at_ms,
            state: "value".to_owned(),
            value: Some(at_ms as f64),
            count: None,
            detail: None,
        }
    }

    #[test]
    fn readings_are_kept_per_signal_within_their_count_and_age_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let n = READINGS_KEPT_PER_SIGNAL + 10;
        let batch: Vec<ReadingRow> = (0..n).map(|i| reading("a", 1_000 + i)).collect();
        store.record_readings(&batch, &[]).unwrap();
        store.record_readings(&[reading("b", 5)], &[]).unwrap();
        let kept = store.readings("a", 0, u64::MAX >> 2).unwrap();
        assert_eq!(kept.len() as u64, READINGS_KEPT_PER_SIGNAL);
        assert_eq!(kept[0].at_ms, 1_010, "the oldest go first");
        assert_eq!(
            store.latest_reading("a").unwrap().unwrap().at_ms,
            1_000 + n - 1
        );
        assert_eq!(
            store.readings("b", 0, 10).unwrap().len(),
            1,
            "other signals stay"
        );
        // A day after the newest, the old ones go.
        let later = 1_000 + n + READINGS_KEPT_FOR_MS + 1;
        store.record_readings(&[reading("a", later)], &[]).unwrap();
        assert_eq!(store.readings("a", 0, u64::MAX >> 2).unwrap().len(), 1);
    }

    #[test]
    fn changes_are_kept_newest_per_target_and_read_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let changes: Vec<ChangeRow> = (0..CHANGES_KEPT_PER_TARGET + 5)
            .map(|i| ChangeRow {
                target: "shop".to_owned(),
                at_ms: i * 10,
                from: format!("v{i}"),
                to: format!("v{}", i + 1),
            })
            .collect();
        store.record_readings(&[], &changes).unwrap();
        let all = store.changes("shop", u64::MAX >> 2, 1000).unwrap();
        assert_eq!(all.len() as u64, CHANGES_KEPT_PER_TARGET);
        assert_eq!(all[0].from, "v5");
        let before = store.changes("shop", 205, 2).unwrap();
        let names: Vec<&str> = before.iter().map(|c| c.to.as_str()).collect();
        assert_eq!(names, ["v20", "v21"]);
        assert!(
            store
                .changes("other", u64::MAX >> 2, 10)
                .unwrap()
                .is_empty()
        );
    }
}
