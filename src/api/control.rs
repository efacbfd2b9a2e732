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
//! answers 403. Who asked comes from `X-Rearguard-Operator` (default `api`), and every
//! call that acts is audited: logged, and recorded in the state store, with who, what and
//! the result.
//!
//! This module decides nothing: commands go to the engine's loop through a channel and
//! the answer is the engine's; state comes from the snapshot the loop publishes after
//! every step.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
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

fn refuse(status: StatusCode, text: &str) -> Response {
    (status, format!("{text}\n")).into_response()
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

/// Who asked: the operator header, cut to 64 printable characters, or `api`.
fn operator(headers: &HeaderMap) -> String {
    let who: String = headers
        .get(OPERATOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    let who = who.trim();
    if who.is_empty() {
        "api".to_owned()
    } else {
        who.to_owned()
    }
}

async fn status(State(control): State<Arc<Control>>, headers: HeaderMap) -> Response {
    if let Err((code, why)) = authorize(&control, &headers, true) {
        return refuse(code, why);
    }
    let status = Arc::clone(&control.status.borrow());
    axum::Json(status.as_ref().clone()).into_response()
}

/// An incident by id: open (from the latest status) or closed (from the store).
fn find(control: &Control, id: &str) -> Result<Option<Incident>, String> {
    if let Some(open) = control
        .status
        .borrow()
        .incidents
        .iter()
        .find(|i| i.id == id)
    {
        return Ok(Some(open.clone()));
    }
    match control.store.closed_incident(id) {
        Ok(Some(body)) => serde_json::from_str(&body)
            .map(Some)
            .map_err(|e| format!("the stored incident cannot be read: {e}")),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err((code, why)) = authorize(&control, &headers, true) {
        return refuse(code, why);
    }
    match find(&control, &id) {
        Ok(Some(incident)) => {
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
            axum::Json(IncidentView {
                incident,
                decisions,
            })
            .into_response()
        }
        Ok(None) => refuse(
            StatusCode::NOT_FOUND,
            &format!("no incident has the id {id:?}"),
        ),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

async fn why(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err((code, why)) = authorize(&control, &headers, true) {
        return refuse(code, why);
    }
    match find(&control, &id) {
        Ok(Some(inc)) => {
            let decisions = decisions_of(&control, &inc);
            (StatusCode::OK, explain(&inc, &decisions)).into_response()
        }
        Ok(None) => refuse(
            StatusCode::NOT_FOUND,
            &format!("no incident has the id {id:?}"),
        ),
        Err(e) => refuse(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
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
    tracing::info!(operator = %who, action = %what, result = %outcome, "control api call");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if let Err(e) = control.store.audit(now, who, what, &outcome) {
        tracing::error!(error = %e, "cannot record a control api call in the audit trail");
    }
    match result {
        Ok(done) => (StatusCode::OK, format!("{done}\n")).into_response(),
        Err(why) if why == "rearguard is stopping" => refuse(StatusCode::SERVICE_UNAVAILABLE, &why),
        Err(why) => refuse(StatusCode::CONFLICT, &why),
    }
}

async fn incident_action(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    if let Err((code, why)) = authorize(&control, &headers, false) {
        return refuse(code, why);
    }
    let by = operator(&headers);
    let command = match action.as_str() {
        "acknowledge" => Command::Acknowledge {
            incident: id.clone(),
            by: by.clone(),
        },
        "resolve" => Command::Resolve {
            incident: id.clone(),
            by: by.clone(),
        },
        "rollback" => Command::Rollback {
            incident: id.clone(),
            by: by.clone(),
        },
        _ => {
            return refuse(
                StatusCode::NOT_FOUND,
                "unknown action; known: acknowledge, resolve, rollback",
            );
        }
    };
    ask(&control, command, &format!("{action} {id}"), &by).await
}

async fn target_action(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    if let Err((code, why)) = authorize(&control, &headers, false) {
        return refuse(code, why);
    }
    let by = operator(&headers);
    let index = control
        .status
        .borrow()
        .targets
        .iter()
        .position(|t| t.name == name);
    let Some(target) = index else {
        return refuse(
            StatusCode::NOT_FOUND,
            &format!("no target is named {name:?}"),
        );
    };
    let command = match action.as_str() {
        "pause" => Command::Pause {
            target: Some(target),
            by: by.clone(),
        },
        "resume" => Command::Resume {
            target: Some(target),
            by: by.clone(),
        },
        "clear-breaker" => Command::ClearBreaker {
            target,
            by: by.clone(),
        },
        _ => {
            return refuse(
                StatusCode::NOT_FOUND,
                "unknown action; known: pause, resume, clear-breaker",
            );
        }
    };
    ask(&control, command, &format!("{action} {name}"), &by).await
}

#[derive(Deserialize)]
struct SilenceQuery {
    #[serde(rename = "for")]
    for_: Option<String>,
}

async fn rule_action(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
    axum::extract::Query(query): axum::extract::Query<SilenceQuery>,
) -> Response {
    if let Err((code, why)) = authorize(&control, &headers, false) {
        return refuse(code, why);
    }
    let by = operator(&headers);
    let index = control
        .status
        .borrow()
        .rules
        .iter()
        .position(|r| r.name == name);
    let Some(rule) = index else {
        return refuse(StatusCode::NOT_FOUND, &format!("no rule is named {name:?}"));
    };
    let (for_, what) = match (action.as_str(), query.for_.as_deref()) {
        ("silence", Some(text)) => match crate::config::units::parse_duration(text) {
            Ok(d) if !d.is_zero() => (d, format!("silence {name} for {text}")),
            Ok(_) => return refuse(StatusCode::BAD_REQUEST, "`for` must be greater than zero"),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("`for`: {e}")),
        },
        ("silence", None) => {
            return refuse(StatusCode::BAD_REQUEST, "silence needs `for`, e.g. ?for=1h");
        }
        ("unsilence", _) => (Duration::ZERO, format!("unsilence {name}")),
        _ => {
            return refuse(
                StatusCode::NOT_FOUND,
                "unknown action; known: silence, unsilence",
            );
        }
    };
    ask(
        &control,
        Command::Silence {
            rule,
            for_,
            by: by.clone(),
        },
        &what,
        &by,
    )
    .await
}

async fn global_action(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path(action): Path<String>,
) -> Response {
    if let Err((code, why)) = authorize(&control, &headers, false) {
        return refuse(code, why);
    }
    let by = operator(&headers);
    let command = match action.as_str() {
        "pause" => Command::Pause {
            target: None,
            by: by.clone(),
        },
        "resume" => Command::Resume {
            target: None,
            by: by.clone(),
        },
        _ => {
            return refuse(
                StatusCode::NOT_FOUND,
                "unknown action; known: pause, resume",
            );
        }
    };
    ask(&control, command, &format!("{action} all"), &by).await
}
