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
//! The store runs SQL and nothing else: it does not send, decide or read the clock.
//! Calls block for the length of one small transaction; the connection sits behind a
//! mutex that is never held across an `.await`.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

/// The file name of the database inside the state directory.
pub const FILE: &str = "rearguard.db";

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

/// The state store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
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
CREATE TABLE IF NOT EXISTS threads (
    notifier  TEXT NOT NULL,
    incident  TEXT NOT NULL,
    reference TEXT NOT NULL,
    PRIMARY KEY (notifier, incident)
);
";

const COLUMNS: &str = "seq, id, notifier, incident, body, state, attempts, next_at_ms, created_at_ms, last_error, answer";

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(FILE);
        let open = |path: &Path| -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            // WAL keeps readers off the writer's back; FULL syncs the log on every
            // commit, so a committed message survives a power cut, not only a crash.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        };
        let conn = open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Store {
            conn: Mutex::new(conn),
            path,
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
}
