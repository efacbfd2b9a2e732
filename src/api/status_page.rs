//! The status page: `GET /` on `daemon.listen`, one server-rendered HTML page for the
//! person who wakes up at 3 a.m.: targets with their revision, breaker and pause; each
//! rule's phase and latest value against its threshold; open incidents with their story
//! and charts; the recent incidents.
//!
//! It reads like the status API and behind the same check (the `Reader` extractor: the
//! bearer token, or `daemon.read_open`). The page is self-contained: styles and charts
//! (SVG) inline, no script, nothing fetched from anywhere (its Content-Security-Policy
//! forbids it), and it reloads itself every [`REFRESH_SECS`].
//!
//! It reads the status the engine's loop publishes and the state store; it decides and
//! changes nothing.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::control::{Control, Reader, Status};
use crate::config::{Config, RuleMode};
use crate::engine::{Incident, Ts};
use crate::report::chart::esc;
use crate::report::{self, Evidence, history};

/// How often the page reloads itself, in seconds.
pub const REFRESH_SECS: u32 = 5;

/// How many closed incidents the page lists.
const RECENT: u64 = 10;

/// What the page forbids the browser to fetch: anything at all, beyond its inline styles.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

#[derive(Clone)]
struct Page {
    control: Arc<Control>,
    cfg: Arc<Config>,
}

impl FromRef<Page> for Arc<Control> {
    fn from_ref(page: &Page) -> Arc<Control> {
        Arc::clone(&page.control)
    }
}

/// The page's route, to merge into the daemon's listener.
pub fn router(control: Arc<Control>, cfg: Arc<Config>) -> Router {
    Router::new()
        .route("/", get(page))
        .with_state(Page { control, cfg })
}

async fn page(State(page): State<Page>, _: Reader) -> Response {
    let status = Arc::clone(&page.control.status.borrow());
    let now = Ts(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64));
    let html = render(&page.cfg, &page.control.store, &status, now);
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1100px}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.firing{color:#b10026;font-weight:bold}.pending{color:#b35806;font-weight:bold}.ok{color:#1b7837}\
section.incident{border:2px solid #b10026;padding:.5em 1em;margin:1em 0}.muted{color:#666}ol.story li{margin:.2em 0}";

/// The whole page.
pub fn render(cfg: &Config, store: &crate::store::Store, status: &Status, now: Ts) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\"><title>rearguard: {} open incident{}</title><style>{STYLE}</style></head><body>",
        status.incidents.len(),
        if status.incidents.len() == 1 { "" } else { "s" }
    );
    let paused = if status.paused_all {
        " · <strong>all automatic action paused</strong>"
    } else {
        ""
    };
    let _ = write!(
        out,
        "<h1>rearguard</h1><p class=\"muted\">mode {}{paused} · as of {} · reloads every {REFRESH_SECS} s</p>",
        esc(&status.mode),
        esc(&now.rfc3339())
    );
    targets(&mut out, status);
    rules(&mut out, cfg, store, status);
    incidents(&mut out, cfg, store, status, now);
    recent(&mut out, store);
    out.push_str("</body></html>\n");
    out
}

fn targets(out: &mut String, status: &Status) {
    out.push_str("<h2>Targets</h2><table><tr><th>Target</th><th>Revision</th><th>Breaker</th><th>Automatic action</th><th>Marked bad</th></tr>");
    for t in &status.targets {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.name),
            esc(t.revision.as_deref().unwrap_or("not known yet")),
            t.breaker
                .as_deref()
                .map_or("closed".to_owned(), |why| format!(
                    "<strong>open</strong>: {}",
                    esc(why)
                )),
            if t.paused { "paused" } else { "on" },
            esc(&t.bad.join(", "))
        );
    }
    out.push_str("</table>");
}

fn rules(out: &mut String, cfg: &Config, store: &crate::store::Store, status: &Status) {
    out.push_str("<h2>Rules</h2><table><tr><th>Rule</th><th>Target</th><th>Phase</th><th>Latest value</th><th>Fires when</th></tr>");
    for r in &status.rules {
        let Some(rule) = cfg.rules.iter().find(|x| x.name == r.name) else {
            continue;
        };
        let silenced = r
            .silenced_until
            .as_deref()
            .map_or(String::new(), |u| format!(" (silenced until {})", esc(u)));
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}{silenced}</td><td>{}</td><td>{} {}</td></tr>",
            esc(&r.name),
            esc(&r.target),
            esc(&r.phase),
            esc(&r.phase),
            esc(&latest_value(cfg, store, rule)),
            esc(&rule.when.describe()),
            esc(&rule.mode.describe())
        );
    }
    out.push_str("</table>");
}

/// The rule's latest reading in words, with its time; an event rule's value is the
/// count within its window up to that reading.
fn latest_value(cfg: &Config, store: &crate::store::Store, rule: &crate::config::Rule) -> String {
    let signal = &cfg.signals[rule.signal];
    let latest = match store.latest_reading(&signal.name) {
        Ok(Some(row)) => row,
        Ok(None) => return "no reading yet".to_owned(),
        Err(e) => return format!("cannot read: {e}"),
    };
    let rows = match rule.mode {
        RuleMode::Within { window } => store
            .readings(
                &signal.name,
                latest.at_ms.saturating_sub(window.as_millis() as u64),
                latest.at_ms,
            )
            .unwrap_or_else(|_| vec![latest.clone()]),
        _ => vec![latest],
    };
    let kind = signal.kind();
    match history::points_for(rule, kind, &rows).last() {
        Some(p) => format!(
            "{} at {}",
            history::describe(rule, kind, p),
            &p.at.clock()[..8]
        ),
        None => "no reading yet".to_owned(),
    }
}

fn incidents(
    out: &mut String,
    cfg: &Config,
    store: &crate::store::Store,
    status: &Status,
    now: Ts,
) {
    out.push_str("<h2>Open incidents</h2>");
    if status.incidents.is_empty() {
        out.push_str("<p class=\"ok\">No open incidents.</p>");
    }
    for inc in &status.incidents {
        incident(out, cfg, store, inc, now);
    }
}

fn incident(out: &mut String, cfg: &Config, store: &crate::store::Store, inc: &Incident, now: Ts) {
    let ev = Evidence::load(store, cfg, inc, now);
    let why = inc
        .escalation_reason
        .as_deref()
        .map_or(String::new(), |r| format!("<p>Escalated: {}</p>", esc(r)));
    let _ = write!(
        out,
        "<section class=\"incident\" id=\"{}\"><h3>Incident {} on {}: {}</h3><p>opened {} · breach began {}</p>{why}<ol class=\"story\">",
        esc(&inc.id),
        esc(&inc.id),
        esc(&inc.target_name),
        esc(inc.state.name()),
        esc(&inc.opened_at.rfc3339()),
        esc(&inc.breach_started.rfc3339())
    );
    for (at, text) in report::story(inc, cfg, &ev) {
        let _ = write!(
            out,
            "<li><span class=\"muted\">{}</span> {}</li>",
            esc(&at.clock()),
            esc(&text)
        );
    }
    out.push_str("</ol>");
    for (_, chart) in report::charts(inc, cfg, &ev) {
        let _ = write!(
            out,
            "<div class=\"chart\">{}</div>",
            report::chart::svg(&chart)
        );
    }
    out.push_str("</section>");
}

fn recent(out: &mut String, store: &crate::store::Store) {
    out.push_str("<h2>Recent incidents</h2>");
    let rows = match store.recent_incidents(RECENT) {
        Ok(rows) => rows,
        Err(e) => {
            let _ = write!(
                out,
                "<p>cannot read the closed incidents: {}</p>",
                esc(&e.to_string())
            );
            return;
        }
    };
    if rows.is_empty() {
        out.push_str("<p class=\"muted\">None yet.</p>");
        return;
    }
    out.push_str("<table><tr><th>Incident</th><th>Target</th><th>Opened</th><th>Open for</th><th>Outcome</th></tr>");
    for r in rows {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.id),
            esc(&r.target),
            esc(&Ts(r.opened_ms).rfc3339()),
            esc(&crate::config::units::human_duration(
                Ts(r.closed_ms).since(Ts(r.opened_ms))
            )),
            esc(&r.outcome.replace('_', " "))
        );
    }
    out.push_str("</table>");
}
