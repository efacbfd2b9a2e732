//! The control API: what operators ask of a running rearguard, over HTTP on
//! `daemon.listen`, and the state they read.
//!
//! - Read: `GET /v1/status` (targets, rules, open incidents), `GET /v1/incidents/{id}`
//!   (the incident and its audit trail, open or closed), `GET /v1/incidents/{id}/why`
//!   (the chain of readings, rules, decisions and actions as text).
//! - Act: `POST /v1/incidents/{id}/acknowledge`, `/resolve` and `/rollback` (run the
//!   target's plan now, as the operator decided),
//!   `POST /v1/targets/{name}/pause`, `/resume` and `/clear-breaker`, and
//!   `POST /v1/pause` and `/v1/resume` for all automatic action (a maintenance window),
//!   `POST /v1/rules/{name}/silence?for=1h` and `/unsilence`.
//!
//! Every call needs `Authorization: Bearer <daemon.control_token>`; reads are open
//! without it when `daemon.read_open` is set. Without a configured token the control API
//! answers 403. Who asked comes from `X-Rearguard-Operator` (default `api`): printable
//! UTF-8 of at most 128 bytes, or the call is refused with 400 before anything is done.
//! Every call that acts is audited: logged (who, what and the result as escaped fields,
//! never in the message), and recorded in the state store.
//!
//! This module decides nothing: commands go to the engine's loop through a channel and
//! the answer is the engine's; state comes from the snapshot the loop publishes after
//! every step.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::{Command, Incident};
use crate::store::Store;

/// One command for the engine's loop, with where its answer goes.
#[derive(Debug)]
pub struct Request {
    pub command: Command,
    /// `Ok(what was done)` or `Err(why it was refused)`.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// What rearguard is doing, as the engine's loop last published it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `enforce` or `shadow`.
    pub mode: String,
    /// All automatic action is paused (a maintenance window).
    pub paused_all: bool,
    pub targets: Vec<TargetStatus>,
    pub rules: Vec<RuleStatus>,
    pub incidents: Vec<Incident>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub name: String,
    pub revision: Option<String>,
    pub paused: bool,
    /// Why automatic action is stopped until an operator clears the breaker.
    pub breaker: Option<String>,
    /// Revisions rearguard rolled back from; never a rollback destination.
    pub bad: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleStatus {
    pub name: String,
    pub target: String,
    /// `ok`, `pending` or `firing`.
    pub phase: String,
    /// Until when an operator silenced it (RFC 3339), if they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_until: Option<String>,
}

/// What the control endpoints need.
pub struct Control {
    pub commands: mpsc::Sender<Request>,
    pub status: watch::Receiver<Arc<Status>>,
    pub store: Arc<Store>,
    pub token: Option<SecretString>,
    pub read_open: bool,
}

/// The header that names who asked.
pub const OPERATOR_HEADER: &str = "x-rearguard-operator";

/// The control routes, to merge into the daemon's listener.
pub fn router(control: Arc<Control>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/incidents/{id}", get(incident))
        .route("/v1/incidents/{id}/why", get(why))
        .route("/v1/incidents/{id}/{action}", post(incident_action))
        .route("/v1/targets/{name}/{action}", post(target_action))
        .route("/v1/rules/{name}/{action}", post(rule_action))
        .route("/v1/{action}", post(global_action))
        .with_state(control)
}

/// An answer as one line of text: why a call was refused, or what it did.
pub(crate) struct Answer(StatusCode, String);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

fn refuse(status: StatusCode, text: &str) -> Answer {
    Answer(status, text.to_owned())
}

/// Checks the bearer token; `read` calls pass without it when reads are open.
fn authorize(
    control: &Control,
    headers: &HeaderMap,
    read: bool,
) -> Result<(), (StatusCode, &'static str)> {
    if read && control.read_open {
        return Ok(());
    }
    let Some(token) = &control.token else {
        return Err((
            StatusCode::FORBIDDEN,
            "the control API is off: set daemon.control_token",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
        });
    match given {
        None => Err((StatusCode::UNAUTHORIZED, "a bearer token is required")),
        Some(t)
            if crate::source::alertmanager::constant_time_eq(
                t.as_bytes(),
                token.expose_secret().as_bytes(),
            ) =>
        {
            Ok(())
        }
        Some(_) => Err((StatusCode::UNAUTHORIZED, "the bearer token is wrong")),
    }
}

/// The longest operator name taken, in bytes.
pub const OPERATOR_MAX_BYTES: usize = 128;

/// Who asked: the operator header without surrounding white space, or `api` when it is
/// absent or blank. A name is printable UTF-8 of at most [`OPERATOR_MAX_BYTES`]; anything
/// else is refused, never cut or cleaned, so that the logs, the audit trail, timelines
/// and notifications name exactly who acted and nobody can write lines or fields there.
fn operator(headers: &HeaderMap) -> Result<String, String> {
    let mut values = headers.get_all(OPERATOR_HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        if headers.contains_key(OPERATOR_HEADER) {
            return Err(format!("{OPERATOR_HEADER}: give one operator, not several"));
        }
        return Ok("api".to_owned());
    };
    let who = std::str::from_utf8(value.as_bytes())
        .map_err(|_| format!("{OPERATOR_HEADER}: the operator name is not UTF-8"))?
        .trim();
    if who.len() > OPERATOR_MAX_BYTES {
        return Err(format!(
            "{OPERATOR_HEADER}: the operator name is longer than {OPERATOR_MAX_BYTES} bytes"
        ));
    }
    if let Some(c) = who.chars().find(|&c| !printable(c)) {
        return Err(format!(
            "{OPERATOR_HEADER}: the operator name has the unprintable character {}",
            c.escape_unicode()
        ));
    }
    Ok(if who.is_empty() { "api" } else { who }.to_owned())
}

/// Not a control character, a line or paragraph separator, or a bidirectional
/// formatting character (which can make a name read as something else).
fn printable(c: char) -> bool {
    !c.is_control()
        && !matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        && !('\u{202a}'..='\u{202e}').contains(&c)
        && !('\u{2066}'..='\u{2069}').contains(&c)
}

/// A caller the token lets read (or any caller, when reads are open); for any router
/// whose state holds the [`Control`] (the status page's too).
pub(crate) struct Reader;

impl<S: Send + Sync> FromRequestParts<S> for Reader
where
    Arc<Control>: FromRef<S>,
{
    type Rejection = Answer;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Answer> {
        let control = Arc::<Control>::from_ref(state);
        authorize(&control, &parts.headers, true).map_err(|(code, why)| refuse(code, why))?;
        Ok(Reader)
    }
}

/// A caller the token lets act, and the operator's name (see [`operator`]).
struct Operator(String);

impl FromRequestParts<Arc<Control>> for Operator {
    type Rejection = Answer;

    async fn from_request_parts(parts: &mut Parts, control: &Arc<Control>) -> Result<Self, Answer> {
        authorize(control, &parts.headers, false).map_err(|(code, why)| refuse(code, why))?;
        let who = operator(&parts.headers).map_err(|why| refuse(StatusCode::BAD_REQUEST, &why))?;
        Ok(Operator(who))
    }
}

async fn status(State(control): State<Arc<Control>>, _: Reader) -> Response {
    let status = Arc::clone(&control.status.borrow());
    axum::Json(status.as_ref().clone()).into_response()
}

/// An incident by id: open (from the latest status) or closed (from the store); 404
/// when there is none.
fn find(control: &Control, id: &str) -> Result<Incident, Answer> {
    if let Some(open) = control
        .status
        .borrow()
        .incidents
        .iter()
        .find(|i| i.id == id)
    {
        return Ok(open.clone());
    }
    let internal = |e: String| refuse(StatusCode::INTERNAL_SERVER_ERROR, &e);
    match control.store.closed_incident(id) {
        Ok(Some(body)) => serde_json::from_str(&body)
            .map_err(|e| internal(format!("the stored incident cannot be read: {e}"))),
        Ok(None) => Err(refuse(
            StatusCode::NOT_FOUND,
            &format!("no incident has the id {id:?}"),
        )),
        Err(e) => Err(internal(e.to_string())),
    }
}

/// The rule transitions behind an incident, from the state store.
fn decisions_of(control: &Control, inc: &Incident) -> Vec<crate::store::Decision> {
    control
        .store
        .decisions(
            &inc.id,
            &inc.target_name,
            inc.breach_started.0,
            inc.opened_at.0,
        )
        .unwrap_or_else(|e| {
            tracing::warn!(incident = %inc.id, error = %e, "cannot read the incident's decisions");
            Vec::new()
        })
}

#[derive(Serialize)]
struct IncidentView {
    incident: Incident,
    decisions: Vec<DecisionView>,
}

#[derive(Serialize)]
struct DecisionView {
    at: String,
    rule: String,
    from: String,
    to: String,
    evidence: String,
}

async fn incident(
    State(control): State<Arc<Control>>,
    _: Reader,
    Path(id): Path<String>,
) -> Result<Response, Answer> {
    let incident = find(&control, &id)?;
    let decisions = decisions_of(&control, &incident)
        .into_iter()
        .map(|d| DecisionView {
            at: crate::engine::Ts(d.at_ms).rfc3339(),
            rule: d.rule,
            from: d.from,
            to: d.to,
            evidence: d.evidence,
        })
        .collect();
    Ok(axum::Json(IncidentView {
        incident,
        decisions,
    })
    .into_response())
}

async fn why(
    State(control): State<Arc<Control>>,
    _: Reader,
    Path(id): Path<String>,
) -> Result<Response, Answer> {
    let inc = find(&control, &id)?;
    let decisions = decisions_of(&control, &inc);
    Ok((StatusCode::OK, explain(&inc, &decisions)).into_response())
}

/// The chain behind an incident as text: the rule transitions with their evidence, then
/// every line of the timeline (decisions, steps, verification, notifications, operators).
pub fn explain(inc: &Incident, decisions: &[crate::store::Decision]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let state = match &inc.outcome {
        Some(o) => format!("closed: {}", o.name()),
        None => inc.state.name().to_owned(),
    };
    let _ = writeln!(out, "incident {} on {} ({state})", inc.id, inc.target_name);
    let _ = writeln!(
        out,
        "breach began {}, opened {}",
        inc.breach_started.rfc3339(),
        inc.opened_at.rfc3339()
    );
    if let (Some(from), Some(to)) = (&inc.from_revision, &inc.to_revision) {
        let _ = writeln!(out, "rolled back from {from} to {to}");
    }
    if !decisions.is_empty() {
        let _ = writeln!(out, "\nrules (readings and thresholds behind each change):");
        for d in decisions {
            let _ = writeln!(
                out,
                "  {} {} {} -> {}: {}",
                crate::engine::Ts(d.at_ms).clock(),
                d.rule,
                d.from,
                d.to,
                d.evidence
            );
        }
    }
    let _ = writeln!(out, "\ntimeline:");
    for e in &inc.timeline {
        let _ = writeln!(out, "  {} {}", e.at.clock(), e.text);
    }
    out
}

/// Sends a command to the engine's loop and waits for its answer.
async fn ask(control: &Control, command: Command, what: &str, who: &str) -> Response {
    let (reply, answer) = oneshot::channel();
    let sent = control.commands.send(Request { command, reply }).await;
    let result = match sent {
        Err(_) => Err("rearguard is stopping".to_owned()),
        Ok(()) => match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("rearguard is stopping".to_owned()),
            Err(_) => Err("the engine did not answer within 10s".to_owned()),
        },
    };
    let outcome = match &result {
        Ok(done) => done.clone(),
        Err(why) => format!("refused: {why}"),
    };
    audit(control, who, what, &outcome);
    match result {
        Ok(done) => Answer(StatusCode::OK, done),
        Err(why) if why == "rearguard is stopping" => Answer(StatusCode::SERVICE_UNAVAILABLE, why),
        Err(why) => Answer(StatusCode::CONFLICT, why),
    }
    .into_response()
}

/// Logs a call that acted and records it in the audit trail. What the caller wrote (the
/// path's id, and so the outcome) goes into the log as quoted, escaped fields.
fn audit(control: &Control, who: &str, what: &str, outcome: &str) {
    log_call(who, what, outcome);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if let Err(e) = control.store.audit(now, who, what, outcome) {
        tracing::error!(error = %e, "cannot record a control api call in the audit trail");
    }
}

fn log_call(who: &str, what: &str, outcome: &str) {
    tracing::info!(operator = ?who, action = ?what, result = ?outcome, "control api call");
}

/// The command that `action` names in `known`, or 404 listing the known actions.
fn pick<F: Copy>(known: &[(&str, F)], action: &str) -> Result<F, Answer> {
    match known.iter().find(|(name, _)| *name == action) {
        Some((_, make)) => Ok(*make),
        None => {
            let names: Vec<&str> = known.iter().map(|(name, _)| *name).collect();
            let text = format!("unknown action; known: {}", names.join(", "));
            Err(refuse(StatusCode::NOT_FOUND, &text))
        }
    }
}

/// Where `name` stands among the `kind`s of the latest status, or 404.
fn index_of<'a>(
    mut names: impl Iterator<Item = &'a str>,
    kind: &str,
    name: &str,
) -> Result<usize, Answer> {
    names.position(|n| n == name).ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            &format!("no {kind} is named {name:?}"),
        )
    })
}

type IncidentCommand = fn(String, String) -> Command;

const INCIDENT_ACTIONS: [(&str, IncidentCommand); 3] = [
    ("acknowledge", |incident, by| Command::Acknowledge {
        incident,
        by,
    }),
    ("resolve", |incident, by| Command::Resolve { incident, by }),
    ("rollback", |incident, by| Command::Rollback {
        incident,
        by,
    }),
];

async fn incident_action(
    State(control): State<Arc<Control>>,
    Operator(by): Operator,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, Answer> {
    let make = pick(&INCIDENT_ACTIONS, &action)?;
    let what = format!("{action} {id}");
    Ok(ask(&control, make(id, by.clone()), &what, &by).await)
}

type TargetCommand = fn(usize, String) -> Command;

const TARGET_ACTIONS: [(&str, TargetCommand); 3] = [
    ("pause", |target, by| Command::Pause {
        target: Some(target),
        by,
    }),
    ("resume", |target, by| Command::Resume {
        target: Some(target),
        by,
    }),
    ("clear-breaker", |target, by| Command::ClearBreaker {
        target,
        by,
    }),
];

async fn target_action(
    State(control): State<Arc<Control>>,
    Operator(by): Operator,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, Answer> {
    let target = {
        let status = control.status.borrow();
        index_of(
            status.targets.iter().map(|t| t.name.as_str()),
            "target",
            &name,
        )?
    };
    let make = pick(&TARGET_ACTIONS, &action)?;
    let what = format!("{action} {name}");
    Ok(ask(&control, make(target, by.clone()), &what, &by).await)
}

#[derive(Deserialize)]
struct SilenceQuery {
    #[serde(rename = "for")]
    for_: Option<String>,
}

async fn rule_action(
    State(control): State<Arc<Control>>,
    Operator(by): Operator,
    Path((name, action)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<SilenceQuery>,
) -> Result<Response, Answer> {
    let rule = {
        let status = control.status.borrow();
        index_of(status.rules.iter().map(|r| r.name.as_str()), "rule", &name)?
    };
    let (for_, what) = match (action.as_str(), query.for_.as_deref()) {
        ("silence", Some(text)) => match crate::config::units::parse_duration(text) {
            Ok(d) if !d.is_zero() => (d, format!("silence {name} for {text}")),
            Ok(_) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "`for` must be greater than zero",
                ));
            }
            Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, &format!("`for`: {e}"))),
        },
        ("silence", None) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "silence needs `for`, e.g. ?for=1h",
            ));
        }
        ("unsilence", _) => (Duration::ZERO, format!("unsilence {name}")),
        _ => {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "unknown action; known: silence, unsilence",
            ));
        }
    };
    let command = Command::Silence {
        rule,
        for_,
        by: by.clone(),
    };
    Ok(ask(&control, command, &what, &by).await)
}

type GlobalCommand = fn(String) -> Command;

const GLOBAL_ACTIONS: [(&str, GlobalCommand); 2] = [
    ("pause", |by| Command::Pause { target: None, by }),
    ("resume", |by| Command::Resume { target: None, by }),
];

async fn global_action(
    State(control): State<Arc<Control>>,
    Operator(by): Operator,
    Path(action): Path<String>,
) -> Result<Response, Answer> {
    let make = pick(&GLOBAL_ACTIONS, &action)?;
    Ok(ask(&control, make(by.clone()), &format!("{action} all"), &by).await)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What a plain-text log shows of one control call.
    fn logged(who: &str, what: &str, outcome: &str) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        tracing::subscriber::with_default(subscriber, || log_call(who, what, outcome));
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn what_a_caller_wrote_is_logged_as_quoted_fields_on_one_line() {
        let line = logged(
            "bob result=done",
            "acknowledge x\nINFO control api call operator=alice",
            "refused: no open incident",
        );
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(line.contains(r#"operator="bob result=done""#), "{line}");
        assert!(
            line.contains(r#"action="acknowledge x\nINFO control api call operator=alice""#),
            "{line}"
        );
    }

    fn operator_of(value: &[u8]) -> Result<String, String> {
        let mut headers = HeaderMap::new();
        headers.insert(
            OPERATOR_HEADER,
            axum::http::HeaderValue::from_bytes(value).unwrap(),
        );
        operator(&headers)
    }

    #[test]
    fn an_operator_is_printable_utf8_of_at_most_128_bytes() {
        assert_eq!(operator(&HeaderMap::new()), Ok("api".to_owned()));
        assert_eq!(operator_of(b"  "), Ok("api".to_owned()));
        assert_eq!(operator_of(" Zoë ".as_bytes()), Ok("Zoë".to_owned()));
        let longest = "é".repeat(OPERATOR_MAX_BYTES / 2);
        assert_eq!(operator_of(longest.as_bytes()), Ok(longest.clone()));
        for refused in [
            format!("{longest}a").into_bytes(),
            b"a\tb".to_vec(),
            "a\u{85}b".as_bytes().to_vec(),
            "a\u{2028}b".as_bytes().to_vec(),
            "a\u{202e}b".as_bytes().to_vec(),
            b"\xff".to_vec(),
        ] {
            let shown = String::from_utf8_lossy(&refused).into_owned();
            assert!(operator_of(&refused).is_err(), "{shown:?} was taken");
        }
        let mut two = HeaderMap::new();
        two.append(OPERATOR_HEADER, "alice".parse().unwrap());
        two.append(OPERATOR_HEADER, "bob".parse().unwrap());
        assert!(operator(&two).is_err());
    }
}
