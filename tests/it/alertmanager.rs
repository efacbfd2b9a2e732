//! The Alertmanager webhook receiver: crafted deliveries straight into the receiver, the
//! daemon's HTTP endpoint, the real Alertmanager posting to the daemon, and end to end a
//! real Prometheus alert rule over the test workload that makes the daemon roll back a
//! bad release.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rearguard::config::{Config, Format};
use rearguard::daemon::{Event, WEBHOOK_PATH};
use rearguard::engine::{Effect, Measure, Outcome, Phase, Reading, ReadingState, Ts};
use rearguard::source::alertmanager::{
    self, BODY_LIMIT, MAX_ALERTS_PER_SIGNAL, Receiver, Rejection,
};
use serde_json::{Value, json};

use crate::running::start;
use crate::{promstack, support, workload};

const SHOP_TOKEN: &str = "shop-token-7f3a9c";
const PAY_TOKEN: &str = "pay-token-b81e04";

const T0: &str = "2026-11-22T10:00:00Z";
const T1: &str = "2026-11-22T10:05:00Z";
const T2: &str = "2026-11-22T10:10:00Z";
const T3: &str = "2026-11-22T10:15:00Z";
const ZERO: &str = "0001-01-01T00:00:00Z";
const NOW: Ts = Ts(1_795_342_000_000);

fn env() -> Vec<(String, String)> {
    vec![
        ("AM_SHOP_TOKEN".to_owned(), SHOP_TOKEN.to_owned()),
        ("AM_PAY_TOKEN".to_owned(), PAY_TOKEN.to_owned()),
    ]
}

fn load(text: &str) -> Config {
    rearguard::config::load_str(text, Format::Toml, env(), Path::new("."))
        .unwrap_or_else(|e| panic!("the test configuration is invalid:\n{e}"))
}

/// Signal 0 `checkout` (shop token), signal 1 `payments` (pay token), signal 2
/// `shop-any` (shop token, every alert of service shop), and a probe that is no
/// alertmanager signal in between.
const SIGNALS: &str = r#"
[[target]]
name = "shop"

[[signal]]
name = "checkout"
target = "shop"
type = "alertmanager"
matchers = { alertname = "CheckoutErrors", service = "shop" }
token = { env = "AM_SHOP_TOKEN" }

[[signal]]
name = "payments"
target = "shop"
type = "alertmanager"
matchers = { alertname = "PaymentErrors" }
token = { env = "AM_PAY_TOKEN" }

[[signal]]
name = "probe"
target = "shop"
type = "http_probe"
url = "http://127.0.0.1:9/health"

[[signal]]
name = "shop-any"
target = "shop"
type = "alertmanager"
matchers = { service = "shop" }
token = { env = "AM_SHOP_TOKEN" }
"#;

fn receiver() -> Receiver {
    Receiver::new(&load(SIGNALS)).expect("the configuration has alertmanager signals")
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// One alert as Alertmanager 0.25 sends it.
fn alert(status: &str, labels: &[(&str, &str)], starts: &str, ends: &str) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    let fp = alertmanager::fingerprint(
        &labels
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect(),
    );
    json!({
        "status": status,
        "labels": labels,
        "annotations": { "summary": "more than 5% of checkouts fail" },
        "startsAt": starts,
        "endsAt": ends,
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": fp,
    })
}

const CHECKOUT: &[(&str, &str)] = &[
    ("alertname", "CheckoutErrors"),
    ("service", "shop"),
    ("severity", "page"),
];

fn firing(labels: &[(&str, &str)], starts: &str) -> Value {
    alert("firing", labels, starts, ZERO)
}

fn resolved(labels: &[(&str, &str)], starts: &str, ends: &str) -> Value {
    alert("resolved", labels, starts, ends)
}

/// A version 4 body around `alerts`.
fn body(alerts: Vec<Value>) -> Vec<u8> {
    let status = if alerts.iter().any(|a| a["status"] == "firing") {
        "firing"
    } else {
        "resolved"
    };
    serde_json::to_vec(&json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"CheckoutErrors\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "rearguard",
        "groupLabels": { "alertname": "CheckoutErrors" },
        "commonLabels": { "alertname": "CheckoutErrors" },
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    }))
    .unwrap()
}

/// (signal, ok) of each reading, failing the test on anything but a check.
fn checks(readings: &[Reading]) -> Vec<(usize, bool)> {
    readings
        .iter()
        .map(|r| match &r.state {
            ReadingState::Value(Measure::Check { ok, .. }) => (r.signal, *ok),
            other => panic!("expected a check reading, got {other:?}"),
        })
        .collect()
}

fn detail(r: &Reading) -> String {
    match &r.state {
        ReadingState::Value(Measure::Check { detail, .. }) => detail.clone().unwrap_or_default(),
        other => panic!("expected a check reading, got {other:?}"),
    }
}

/// Delivers `alerts` with the shop token and returns (signal, ok) of the readings.
fn deliver(rx: &Receiver, alerts: Vec<Value>) -> Vec<(usize, bool)> {
    let readings = rx
        .handle(Some(&bearer(SHOP_TOKEN)), &body(alerts), NOW)
        .unwrap_or_else(|r| panic!("delivery refused: {r:?}"));
    checks(&readings)
}

/// The example of Alertmanager's webhook documentation, filled in the way Alertmanager
/// 0.25 fills it for one firing alert.
const DOCUMENTED: &str = r#"{
  "receiver": "rearguard",
  "status": "firing",
  "alerts": [
    {
      "status": "firing",
      "labels": {
        "alertname": "CheckoutErrors",
        "instance": "10.0.0.7:8080",
        "job": "shop",
        "service": "shop",
        "severity": "page"
      },
      "annotations": {
        "summary": "more than 5% of checkouts fail",
        "description": "error ratio 0.31 over 5m"
      },
      "startsAt": "2026-11-22T10:00:00.123456789Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://prometheus:9090/graph?g0.expr=sum%28rate%28x%29%29&g0.tab=1",
      "fingerprint": "8a3f4b5d2c1e0f97"
    }
  ],
  "groupLabels": { "alertname": "CheckoutErrors" },
  "commonLabels": {
    "alertname": "CheckoutErrors",
    "instance": "10.0.0.7:8080",
    "job": "shop",
    "service": "shop",
    "severity": "page"
  },
  "commonAnnotations": {
    "summary": "more than 5% of checkouts fail",
    "description": "error ratio 0.31 over 5m"
  },
  "externalURL": "http://alertmanager:9093",
  "version": "4",
  "groupKey": "{}:{alertname=\"CheckoutErrors\"}",
  "truncatedAlerts": 0
}"#;

// ---------------------------------------------------------------------------------------
// The receiver, called directly.

#[test]
fn no_receiver_is_made_for_a_configuration_without_alertmanager_signals() {
    let cfg = load(
        r#"
[[target]]
name = "shop"
[[signal]]
name = "probe"
target = "shop"
type = "http_probe"
url = "http://127.0.0.1:9/health"
"#,
    );
    assert!(Receiver::new(&cfg).is_none());
    assert_eq!(receiver().signals(), vec![0, 1, 3]);
}

#[test]
fn the_documented_firing_payload_fails_every_matching_signal_with_name_and_summary() {
    let rx = receiver();
    let readings = rx
        .handle(Some(&bearer(SHOP_TOKEN)), DOCUMENTED.as_bytes(), NOW)
        .unwrap();
    assert_eq!(checks(&readings), vec![(0, false), (3, false)]);
    assert_eq!(
        detail(&readings[0]),
        "CheckoutErrors: more than 5% of checkouts fail"
    );
}

#[test]
fn a_resolved_alert_clears_its_signal() {
    let rx = receiver();
    assert_eq!(
        deliver(&rx, vec![firing(CHECKOUT, T0)]),
        vec![(0, false), (3, false)]
    );
    assert_eq!(
        deliver(&rx, vec![resolved(CHECKOUT, T0, T1)]),
        vec![(0, true), (3, true)]
    );
}

#[test]
fn repeated_and_duplicate_deliveries_emit_no_further_readings() {
    let rx = receiver();
    assert_eq!(deliver(&rx, vec![firing(CHECKOUT, T0)]).len(), 2);
    // Alertmanager's repeat_interval, a retry, and the HA peer's copy.
    for _ in 0..3 {
        assert_eq!(deliver(&rx, vec![firing(CHECKOUT, T0)]), vec![]);
    }
    let d = rx
        .receive(
            Some(&bearer(SHOP_TOKEN)),
            &body(vec![firing(CHECKOUT, T0)]),
            NOW,
        )
        .unwrap();
    assert_eq!((d.duplicates, d.applied, d.stale), (2, 0, 0), "{d}");
    assert_eq!(deliver(&rx, vec![resolved(CHECKOUT, T0, T1)]).len(), 2);
    assert_eq!(deliver(&rx, vec![resolved(CHECKOUT, T0, T1)]), vec![]);
}

#[test]
fn a_late_firing_of_an_episode_already_resolved_is_ignored() {
    let rx = receiver();
    deliver(&rx, vec![firing(CHECKOUT, T0)]);
    deliver(&rx, vec![resolved(CHECKOUT, T0, T1)]);
    // A retry of the firing notification arrives after the resolution.
    assert_eq!(deliver(&rx, vec![firing(CHECKOUT, T0)]), vec![]);
    let d = rx
        .receive(
            Some(&bearer(SHOP_TOKEN)),
            &body(vec![firing(CHECKOUT, T0)]),
            NOW,
        )
        .unwrap();
    assert_eq!(d.stale, 2, "{d}");
    // The next episode starts later and fails the signal again.
    assert_eq!(
        deliver(&rx, vec![firing(CHECKOUT, T2)]),
        vec![(0, false), (3, false)]
    );
}

#[test]
fn a_resolution_delivered_before_its_firing_keeps_the_signal_passing() {
    let rx = receiver();
    assert_eq!(
        deliver(&rx, vec![resolved(CHECKOUT, T0, T1)]),
        vec![(0, true), (3, true)]
    );
    assert_eq!(deliver(&rx, vec![firing(CHECKOUT, T0)]), vec![]);
}

#[test]
fn a_late_resolution_of_an_earlier_episode_does_not_clear_a_new_one() {
    let rx = receiver();
    // The second episode's firing arrives before the first episode's resolution.
    assert_eq!(deliver(&rx, vec![firing(CHECKOUT, T2)]).len(), 2);
    assert_eq!(deliver(&rx, vec![resolved(CHECKOUT, T0, T1)]), vec![]);
    assert_eq!(
        deliver(&rx, vec![resolved(CHECKOUT, T2, T3)]),
        vec![(0, true), (3, true)]
    );
}

#[test]
fn the_signal_fails_while_any_matching_alert_fires() {
    let rx = receiver();
    let a: &[(&str, &str)] = &[
        ("alertname", "CheckoutErrors"),
        ("service", "shop"),
        ("instance", "a"),
    ];
    let b: &[(&str, &str)] = &[
        ("alertname", "CheckoutErrors"),
        ("service", "shop"),
        ("instance", "b"),
    ];
    deliver(&rx, vec![firing(a, T0)]);
    assert_eq!(deliver(&rx, vec![firing(b, T1)]), vec![]);
    assert!(
        rx.current()
            .iter()
            .all(|r| detail(r).ends_with("(+1 more firing)")),
        "{:?}",
        rx.current()
    );
    assert_eq!(
        deliver(&rx, vec![resolved(a, T0, T2)]),
        vec![],
        "b still fires"
    );
    assert_eq!(
        deliver(&rx, vec![resolved(b, T1, T2)]),
        vec![(0, true), (3, true)]
    );
}

#[test]
fn one_delivery_gives_at_most_one_reading_per_signal_from_its_net_effect() {
    let rx = receiver();
    deliver(&rx, vec![firing(CHECKOUT, T0)]);
    // The old episode resolves and a new one starts in the same group notification.
    let other: &[(&str, &str)] = &[
        ("alertname", "CheckoutErrors"),
        ("service", "shop"),
        ("instance", "c"),
    ];
    assert_eq!(
        deliver(&rx, vec![resolved(CHECKOUT, T0, T1), firing(other, T1)]),
        vec![]
    );
}

#[test]
fn a_delivery_without_fingerprints_dedupes_with_one_that_has_them() {
    let rx = receiver();
    deliver(&rx, vec![firing(CHECKOUT, T0)]);
    let mut again = firing(CHECKOUT, T0);
    again.as_object_mut().unwrap().remove("fingerprint");
    assert_eq!(deliver(&rx, vec![again]), vec![]);
    let mut clear = resolved(CHECKOUT, T0, T1);
    clear.as_object_mut().unwrap().remove("fingerprint");
    assert_eq!(deliver(&rx, vec![clear]).len(), 2);
}

#[test]
fn a_missing_token_is_refused_with_401_and_a_reason() {
    let rx = receiver();
    let r = rx.handle(None, DOCUMENTED.as_bytes(), NOW).unwrap_err();
    assert_eq!(r.status, 401);
    assert!(r.reason.contains("Authorization"), "{}", r.reason);
    for header in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", SHOP_TOKEN] {
        let r = rx
            .handle(Some(header), DOCUMENTED.as_bytes(), NOW)
            .unwrap_err();
        assert_eq!(r.status, 401, "{header:?}");
        assert!(!r.reason.contains(SHOP_TOKEN), "{}", r.reason);
    }
}

#[test]
fn a_wrong_token_is_refused_with_401_and_no_token_appears_in_the_reason() {
    let rx = receiver();
    let guesses = [
        "guess".to_owned(),
        format!("{SHOP_TOKEN}x"),
        SHOP_TOKEN[..SHOP_TOKEN.len() - 1].to_owned(),
        SHOP_TOKEN.to_uppercase(),
    ];
    for guess in &guesses {
        let r: Rejection = rx
            .handle(Some(&bearer(guess)), DOCUMENTED.as_bytes(), NOW)
            .unwrap_err();
        assert_eq!(r.status, 401, "{guess:?}");
        for secret in [guess.as_str(), SHOP_TOKEN, PAY_TOKEN] {
            assert!(!r.reason.contains(secret), "{}", r.reason);
        }
    }
    assert!(!format!("{rx:?}").contains(SHOP_TOKEN));
    // The scheme is case-insensitive (RFC 7235).
    assert!(
        rx.handle(
            Some(&format!("bearer {SHOP_TOKEN}")),
            DOCUMENTED.as_bytes(),
            NOW
        )
        .is_ok()
    );
}

#[test]
fn each_token_reaches_only_the_signals_it_is_for() {
    let pay: &[(&str, &str)] = &[("alertname", "PaymentErrors"), ("service", "pay")];
    let both = || body(vec![firing(CHECKOUT, T0), firing(pay, T0)]);

    let rx = receiver();
    let d = rx.receive(Some(&bearer(SHOP_TOKEN)), &both(), NOW).unwrap();
    assert_eq!(checks(&d.readings), vec![(0, false), (3, false)]);
    assert_eq!(d.unmatched, 1, "PaymentErrors is not the shop token's: {d}");

    let rx = receiver();
    let d = rx.receive(Some(&bearer(PAY_TOKEN)), &both(), NOW).unwrap();
    assert_eq!(checks(&d.readings), vec![(1, false)]);
    assert_eq!(d.unmatched, 1, "CheckoutErrors is not the pay token's: {d}");
}

#[test]
fn alerts_matching_no_signal_produce_no_reading_and_are_counted() {
    let rx = receiver();
    let unknown: &[(&str, &str)] = &[("alertname", "DiskFull"), ("service", "db")];
    let partial: &[(&str, &str)] = &[("alertname", "CheckoutErrors"), ("service", "other")];
    let d = rx
        .receive(
            Some(&bearer(SHOP_TOKEN)),
            &body(vec![firing(unknown, T0), firing(partial, T0)]),
            NOW,
        )
        .unwrap();
    assert!(d.readings.is_empty(), "{:?}", d.readings);
    assert_eq!((d.alerts, d.unmatched), (2, 2));
    assert!(d.to_string().contains("2 matching no signal"), "{d}");
    assert!(rx.current().is_empty(), "nothing is known of any signal");
}

#[test]
fn malformed_bodies_are_refused_with_400_and_a_reason() {
    let rx = receiver();
    let mut no_version: Value = serde_json::from_str(DOCUMENTED).unwrap();
    no_version.as_object_mut().unwrap().remove("version");
    let mut no_alerts: Value = serde_json::from_str(DOCUMENTED).unwrap();
    no_alerts.as_object_mut().unwrap().remove("alerts");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(DOCUMENTED).unwrap();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"version=4&alerts=".to_vec(), "not JSON"),
        ("empty", Vec::new(), "not JSON"),
        ("an array", b"[]".to_vec(), "not a JSON object"),
        (
            "no version",
            serde_json::to_vec(&no_version).unwrap(),
            "no version",
        ),
        (
            "version 3",
            with(&|v| v["version"] = json!("3")),
            "version \"3\"",
        ),
        (
            "version as a number",
            with(&|v| v["version"] = json!(4)),
            "version 4",
        ),
        (
            "no alerts",
            serde_json::to_vec(&no_alerts).unwrap(),
            "no alerts",
        ),
        (
            "alerts not a list",
            with(&|v| v["alerts"] = json!({})),
            "malformed",
        ),
        (
            "no labels",
            with(&|v| {
                v["alerts"][0].as_object_mut().unwrap().remove("labels");
            }),
            "labels",
        ),
        (
            "a label that is a number",
            with(&|v| v["alerts"][0]["labels"]["x"] = json!(1)),
            "malformed",
        ),
        (
            "an unknown status",
            with(&|v| v["alerts"][0]["status"] = json!("pending")),
            "alerts[0].status",
        ),
        (
            "a start that is no time",
            with(&|v| v["alerts"][0]["startsAt"] = json!("yesterday")),
            "alerts[0].startsAt",
        ),
        (
            "a zero start",
            with(&|v| v["alerts"][0]["startsAt"] = json!(ZERO)),
            "alerts[0].startsAt",
        ),
        (
            "a start without zone",
            with(&|v| v["alerts"][0]["startsAt"] = json!("2026-11-22T10:00:00")),
            "alerts[0].startsAt",
        ),
        (
            "a resolution without end",
            with(&|v| v["alerts"][0]["status"] = json!("resolved")),
            "alerts[0].endsAt",
        ),
        (
            "an end before the start",
            with(&|v| {
                v["alerts"][0]["status"] = json!("resolved");
                v["alerts"][0]["endsAt"] = json!("2026-11-22T09:00:00Z");
            }),
            "alerts[0].endsAt",
        ),
    ];
    for (what, body, expect) in cases {
        let r = rx
            .handle(Some(&bearer(SHOP_TOKEN)), &body, NOW)
            .expect_err(what);
        assert_eq!(r.status, 400, "{what}: {r:?}");
        assert!(
            r.reason.contains(expect),
            "{what}: {:?} lacks {expect:?}",
            r.reason
        );
    }
    assert!(rx.current().is_empty(), "no refused body changed anything");
}

#[test]
fn a_body_with_one_bad_alert_changes_nothing() {
    let rx = receiver();
    let mut bad = firing(CHECKOUT, T1);
    bad["startsAt"] = json!("not a time");
    let pay: &[(&str, &str)] = &[
        ("alertname", "CheckoutErrors"),
        ("service", "shop"),
        ("i", "2"),
    ];
    let r = rx
        .handle(
            Some(&bearer(SHOP_TOKEN)),
            &body(vec![firing(pay, T0), bad]),
            NOW,
        )
        .unwrap_err();
    assert_eq!(r.status, 400);
    assert!(r.reason.contains("alerts[1].startsAt"), "{}", r.reason);
    // Had the first alert been applied, this would be a duplicate without a reading.
    assert_eq!(deliver(&rx, vec![firing(pay, T0)]).len(), 2);
}

#[test]
fn a_body_over_the_limit_is_refused_with_413() {
    let rx = receiver();
    let mut big = body(vec![firing(CHECKOUT, T0)]);
    big.resize(BODY_LIMIT + 1, b' ');
    let r = rx.handle(Some(&bearer(SHOP_TOKEN)), &big, NOW).unwrap_err();
    assert_eq!(r.status, 413, "{r:?}");
    // Authentication comes first: an anonymous caller learns nothing about limits.
    let r = rx.handle(None, &big, NOW).unwrap_err();
    assert_eq!(r.status, 401);
}

#[test]
fn the_detail_is_one_bounded_line() {
    let rx = receiver();
    let mut a = firing(CHECKOUT, T0);
    a["annotations"]["summary"] = json!(format!("first line\nsecond line {}", "é".repeat(400)));
    let readings = rx
        .handle(Some(&bearer(SHOP_TOKEN)), &body(vec![a]), NOW)
        .unwrap();
    let d = detail(&readings[0]);
    assert!(
        d.len() <= rearguard::source::DETAIL_LIMIT,
        "{} bytes",
        d.len()
    );
    assert!(
        d.starts_with("CheckoutErrors: first line second line"),
        "{d}"
    );
    assert!(!d.contains('\n'));
}

fn as_refs(l: &[(String, String)]) -> Vec<(&str, &str)> {
    l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[test]
fn memory_is_bounded_per_signal_and_resolved_alerts_make_room() {
    let rx = receiver();
    let labels: Vec<Vec<(String, String)>> = (0..MAX_ALERTS_PER_SIGNAL + 10)
        .map(|i| {
            vec![
                ("alertname".to_owned(), "CheckoutErrors".to_owned()),
                ("service".to_owned(), "shop".to_owned()),
                ("instance".to_owned(), format!("i{i}")),
            ]
        })
        .collect();
    let all: Vec<Value> = labels.iter().map(|l| firing(&as_refs(l), T0)).collect();
    let d = rx
        .receive(Some(&bearer(SHOP_TOKEN)), &body(all), NOW)
        .unwrap();
    // Two shop-token signals match every alert.
    assert_eq!(d.dropped, 20, "{d}");
    assert_eq!(d.applied, 2 * MAX_ALERTS_PER_SIGNAL, "{d}");
    let resolve: Vec<Value> = labels[..MAX_ALERTS_PER_SIGNAL]
        .iter()
        .map(|l| resolved(&as_refs(l), T0, T1))
        .collect();
    assert_eq!(
        checks(
            &rx.handle(Some(&bearer(SHOP_TOKEN)), &body(resolve), NOW)
                .unwrap()
        ),
        vec![(0, true), (3, true)]
    );
    // The ten not remembered fire again later; resolved alerts give way to them.
    let late: Vec<Value> = labels[MAX_ALERTS_PER_SIGNAL..]
        .iter()
        .map(|l| firing(&as_refs(l), T2))
        .collect();
    let d = rx
        .receive(Some(&bearer(SHOP_TOKEN)), &body(late), NOW)
        .unwrap();
    assert_eq!((d.dropped, d.applied), (0, 20), "{d}");
    assert_eq!(checks(&d.readings), vec![(0, false), (3, false)]);
}

#[test]
fn resolved_alerts_are_forgotten_an_hour_after_their_last_delivery() {
    let rx = receiver();
    deliver(&rx, vec![firing(CHECKOUT, T0)]);
    deliver(&rx, vec![resolved(CHECKOUT, T0, T1)]);
    let within = NOW.plus(Duration::from_secs(59 * 60));
    let late = || body(vec![firing(CHECKOUT, T0)]);
    let d = rx
        .receive(Some(&bearer(SHOP_TOKEN)), &late(), within)
        .unwrap();
    assert_eq!(d.stale, 2, "still remembered: {d}");
    // An hour after the resolution was last delivered it is forgotten, and the same
    // firing notification is news again. Alertmanager retries for far shorter than that.
    let after = within.plus(Duration::from_secs(61 * 60));
    let d = rx
        .receive(Some(&bearer(SHOP_TOKEN)), &late(), after)
        .unwrap();
    assert_eq!(d.applied, 2, "forgotten: {d}");
}

#[test]
fn current_re_asserts_the_known_state_of_signals_that_have_one() {
    let rx = receiver();
    assert!(rx.current().is_empty());
    deliver(&rx, vec![firing(CHECKOUT, T0)]);
    assert_eq!(checks(&rx.current()), vec![(0, false), (3, false)]);
    deliver(&rx, vec![resolved(CHECKOUT, T0, T1)]);
    assert_eq!(checks(&rx.current()), vec![(0, true), (3, true)]);
}

#[test]
fn times_with_offsets_and_nanoseconds_compare_as_instants() {
    let rx = receiver();
    deliver(
        &rx,
        vec![firing(CHECKOUT, "2026-11-22T11:00:00.000000001+01:00")],
    );
    // The same instant written in UTC is the same episode: a duplicate.
    assert_eq!(
        deliver(&rx, vec![firing(CHECKOUT, "2026-11-22T10:00:00Z")]),
        vec![]
    );
    assert_eq!(
        deliver(
            &rx,
            vec![resolved(
                CHECKOUT,
                "2026-11-22T10:00:00Z",
                "2026-11-22T05:30:00-05:00"
            )]
        )
        .len(),
        2
    );
}

// ---------------------------------------------------------------------------------------
// The daemon, in process, with an observer.

/// A free loopback port: bound, read, released. The daemon binds it right after.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A daemon configuration with the `checkout` alertmanager signal and its rule
/// (`when = "failing"`, `consecutive = 1`) for target `shop`; `target_extra` goes into
/// the target's table and `tail` at the end (a plan).
fn daemon_config(dir: &Path, port: u16, target_extra: &str, tail: &str) -> Config {
    load(&format!(
        r#"
[daemon]
state_dir = "{dir}/state"
listen = "127.0.0.1:{port}"
tick = "50ms"
drain_timeout = "5s"

[[target]]
name = "shop"
{target_extra}

[[signal]]
name = "checkout"
target = "shop"
type = "alertmanager"
matchers = {{ alertname = "CheckoutErrors", service = "shop" }}
token = {{ env = "AM_SHOP_TOKEN" }}

[[rule]]
name = "checkout-alerting"
signal = "checkout"
when = "failing"
consecutive = 1
{tail}
"#,
        dir = dir.display()
    ))
}

async fn post(url: &str, auth: Option<&str>, body: Vec<u8>) -> (u16, String) {
    let client = rearguard::http::client();
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("the daemon answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_daemon_endpoint_refuses_bad_deliveries_and_fires_and_clears_the_rule() {
    let dir = support::temp_dir();
    let port = free_port();
    let mut d = start(daemon_config(dir.path(), port, "", ""));
    d.wait_for("start", 10, |e| matches!(e, Event::Started))
        .await;
    let url = format!("http://127.0.0.1:{port}{WEBHOOK_PATH}");
    let shop = bearer(SHOP_TOKEN);

    let (status, text) = post(&url, None, body(vec![firing(CHECKOUT, T0)])).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("Authorization"), "{text}");
    let (status, text) = post(
        &url,
        Some(&bearer(PAY_TOKEN)),
        body(vec![firing(CHECKOUT, T0)]),
    )
    .await;
    assert_eq!(
        status, 401,
        "the pay token is for no signal of this daemon: {text}"
    );
    assert!(
        !text.contains(PAY_TOKEN) && !text.contains(SHOP_TOKEN),
        "{text}"
    );
    let (status, text) = post(&url, Some(&shop), b"{\"version\":\"4\"".to_vec()).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not JSON"), "{text}");
    let unknown: &[(&str, &str)] = &[("alertname", "DiskFull")];
    let (status, text) = post(&url, Some(&shop), body(vec![firing(unknown, T0)])).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("0 readings") && text.contains("1 matching no signal"),
        "{text}"
    );
    d.drain();
    assert_eq!(
        d.rule_changes(),
        0,
        "nothing refused or unknown moved the rule"
    );

    let (status, text) = post(&url, Some(&shop), body(vec![firing(CHECKOUT, T0)])).await;
    assert_eq!(status, 200, "{text}");
    let evidence = d.rule_becomes(Phase::Firing, 10).await;
    assert!(
        evidence.contains("CheckoutErrors: more than 5% of checkouts fail"),
        "{evidence}"
    );
    // Alertmanager's repeat of the same notification changes nothing.
    let (status, _) = post(&url, Some(&shop), body(vec![firing(CHECKOUT, T0)])).await;
    assert_eq!(status, 200);
    let (status, text) = post(&url, Some(&shop), body(vec![resolved(CHECKOUT, T0, T1)])).await;
    assert_eq!(status, 200, "{text}");
    d.rule_becomes(Phase::Ok, 10).await;

    let seen = d.stop().await;
    let fired = seen
        .iter()
        .filter(|e| matches!(e, Event::Effect(_, Effect::RuleChanged { transition, .. }) if transition.to == Phase::Firing))
        .count();
    assert_eq!(fired, 1, "{seen:#?}");
}

// ---------------------------------------------------------------------------------------
// The real Alertmanager.

/// Alertmanager's configuration: one route to a webhook at the daemon's endpoint with
/// `token`, quick grouping, resolved notifications on.
fn alertmanager_config(port: u16, token: &str) -> String {
    format!(
        r#"
route:
  receiver: rearguard
  group_by: ['alertname']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: rearguard
    webhook_configs:
      - url: 'http://127.0.0.1:{port}{WEBHOOK_PATH}'
        send_resolved: true
        http_config:
          authorization:
            credentials: '{token}'
"#
    )
}

fn rfc3339(t: SystemTime) -> String {
    Ts(t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64).rfc3339()
}

/// Posts one alert to Alertmanager's API.
async fn inject(am: &promstack::Server, labels: &Value, starts: SystemTime, ends: SystemTime) {
    let alerts = json!([{
        "labels": labels,
        "annotations": { "summary": "more than 5% of checkouts fail" },
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
    }]);
    let resp = rearguard::http::client()
        .post(format!("{}/api/v2/alerts", am.url()))
        .json(&alerts)
        .send()
        .await
        .expect("alertmanager answers");
    let status = resp.status();
    assert!(
        status.is_success(),
        "alertmanager refused the alert: {status} {}",
        resp.text().await.unwrap_or_default()
    );
}

/// The sum of an Alertmanager counter's series for the webhook integration.
async fn webhook_counter(am: &promstack::Server, name: &str) -> f64 {
    let Ok(resp) = rearguard::http::client()
        .get(format!("{}/metrics", am.url()))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains("integration=\"webhook\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn real_alertmanager_delivers_firing_and_resolved_alerts_that_fire_and_clear_the_rule() {
    let dir = support::temp_dir();
    let port = free_port();
    let mut d = start(daemon_config(dir.path(), port, "", ""));
    d.wait_for("start", 10, |e| matches!(e, Event::Started))
        .await;
    let am = promstack::alertmanager(&alertmanager_config(port, SHOP_TOKEN)).await;

    let labels = json!({ "alertname": "CheckoutErrors", "service": "shop", "severity": "page" });
    let unrelated = json!({ "alertname": "DiskFull", "service": "db" });
    let started = SystemTime::now() - Duration::from_secs(10);
    let later = SystemTime::now() + Duration::from_secs(300);
    inject(&am, &unrelated, started, later).await;
    inject(&am, &labels, started, later).await;
    let evidence = d.rule_becomes(Phase::Firing, 30).await;
    assert!(evidence.contains("CheckoutErrors"), "{evidence}");

    // Alertmanager's fingerprint is the one the receiver computes when there is none.
    let listed: Value = rearguard::http::client()
        .get(format!("{}/api/v2/alerts", am.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ours = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "CheckoutErrors")
        .unwrap_or_else(|| panic!("alertmanager lists the alert: {listed}"));
    let labels_map = serde_json::from_value(labels.clone()).unwrap();
    assert_eq!(
        ours["fingerprint"].as_str(),
        Some(alertmanager::fingerprint(&labels_map).as_str())
    );

    // Resolving: the same alert with an end in the past.
    inject(
        &am,
        &labels,
        started,
        SystemTime::now() - Duration::from_secs(1),
    )
    .await;
    d.rule_becomes(Phase::Ok, 30).await;

    // Every delivery, the unrelated group's included, was answered with success.
    let sent = webhook_counter(&am, "alertmanager_notifications_total").await;
    let failed = webhook_counter(&am, "alertmanager_notifications_failed_total").await;
    assert!(sent >= 2.0, "alertmanager sent {sent} notifications");
    assert_eq!(failed, 0.0, "alertmanager log:\n{}", am.log());
    d.stop().await;
}

#[tokio::test]
async fn real_alertmanager_with_a_wrong_token_is_refused_and_nothing_fires() {
    let dir = support::temp_dir();
    let port = free_port();
    let mut d = start(daemon_config(dir.path(), port, "", ""));
    d.wait_for("start", 10, |e| matches!(e, Event::Started))
        .await;
    let am = promstack::alertmanager(&alertmanager_config(port, "not-the-token")).await;
    let labels = json!({ "alertname": "CheckoutErrors", "service": "shop" });
    inject(
        &am,
        &labels,
        SystemTime::now() - Duration::from_secs(10),
        SystemTime::now() + Duration::from_secs(300),
    )
    .await;
    let failed = support::poll_until_async(Duration::from_secs(30), || {
        let am = &am;
        async move { webhook_counter(am, "alertmanager_notifications_failed_total").await >= 1.0 }
    })
    .await;
    assert!(
        failed.is_ok(),
        "alertmanager never saw its delivery refused; its log:\n{}",
        am.log()
    );
    // The refusal is decided before the answer, so any reading would already be queued.
    d.drain();
    assert_eq!(d.rule_changes(), 0, "{:#?}", d.seen);
    assert!(
        !am.log().contains(SHOP_TOKEN),
        "the daemon's answer never carries a token"
    );
    d.stop().await;
}

// ---------------------------------------------------------------------------------------
// End to end: workload -> Prometheus alert rule -> Alertmanager -> webhook -> rollback.

/// Releases `v1` (healthy) and `v2` (30% errors) with a `current` symlink on v1.
fn releases(dir: &Path) {
    for name in ["v1", "v2"] {
        std::fs::create_dir_all(dir.join("releases").join(name)).unwrap();
    }
    std::os::unix::fs::symlink("releases/v1", dir.join("current")).unwrap();
}

fn deploy(dir: &Path, release: &str) {
    let tmp = dir.join(".deploy");
    std::os::unix::fs::symlink(format!("releases/{release}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("current")).unwrap();
}

fn current(dir: &Path) -> String {
    std::fs::read_link(dir.join("current"))
        .unwrap()
        .display()
        .to_string()
}

/// Makes the workload behave as the release `current` names: v2 fails 30% of requests.
fn follow_release(dir: &Path, w: Arc<workload::Workload>) -> tokio::task::JoinHandle<()> {
    let link = dir.join("current");
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        loop {
            ticker.tick().await;
            let release = std::fs::read_link(&link).unwrap_or_default();
            let error_fraction = if release.ends_with("v2") { 0.3 } else { 0.0 };
            w.set(workload::Behaviour {
                error_fraction,
                ..workload::Behaviour::default()
            });
        }
    })
}

const ALERT_RULES: &str = r#"
groups:
  - name: shop
    rules:
      - alert: CheckoutErrors
        expr: sum(rate(http_requests_total{code="500"}[5s])) / sum(rate(http_requests_total[5s])) > 0.05
        for: 2s
        labels:
          service: shop
        annotations:
          summary: more than 5% of checkouts fail
"#;

#[tokio::test]
async fn a_prometheus_alert_through_alertmanager_rolls_back_a_bad_release() {
    let dir = support::temp_dir();
    let path = dir.path();
    releases(path);
    let w = Arc::new(workload::Workload::start(workload::Behaviour::default()).await);
    let follower = follow_release(path, Arc::clone(&w));
    let port = free_port();
    let target = format!(
        r#"plan = "back"
blame_window = "5m"
change = {{ type = "release_symlink", path = "{dir}/current", interval = "100ms" }}"#,
        dir = path.display()
    );
    let plan = format!(
        r#"
[[plan]]
name = "back"

[[plan.step]]
name = "switch back"
type = "release_switch"
current = "{dir}/current"
releases = "{dir}/releases"
timeout = "5s"

[plan.verify]
window = "18s"
"#,
        dir = path.display()
    );
    let mut d = start(daemon_config(path, port, &target, &plan));
    d.wait_for("start", 10, |e| matches!(e, Event::Started))
        .await;
    let am = promstack::alertmanager(&alertmanager_config(port, SHOP_TOKEN)).await;
    let prom =
        promstack::prometheus(&[w.target()], "1s", Some(ALERT_RULES), Some(&am.addr())).await;

    // Prometheus computes the rule's ratio (it has two scrapes of traffic) before the deploy.
    let client = rearguard::http::client();
    let query = format!(
        "{}/api/v1/query?query=sum(rate(http_requests_total[5s]))",
        prom.url()
    );
    support::poll_until_async(Duration::from_secs(30), || {
        let (client, query) = (client.clone(), query.clone());
        async move {
            let Ok(r) = client.get(&query).send().await else {
                return false;
            };
            r.text().await.is_ok_and(|t| t.contains("\"value\""))
        }
    })
    .await
    .unwrap_or_else(|_| panic!("prometheus never rated the workload; log:\n{}", prom.log()));

    deploy(path, "v2");
    d.wait_for("the deploy of v2", 10, |e| {
        matches!(e, Event::Effect(_, Effect::ChangeObserved { to, previous_healthy: true, .. }) if to == "v2")
    })
    .await;
    let evidence = d.rule_becomes(Phase::Firing, 45).await;
    assert!(
        evidence.contains("CheckoutErrors: more than 5% of checkouts fail"),
        "{evidence}"
    );
    let closed = d
        .wait_for("the closed incident", 60, |e| {
            matches!(e, Event::Effect(_, Effect::IncidentClosed(_)))
        })
        .await;
    let Event::Effect(_, Effect::IncidentClosed(inc)) = closed else {
        unreachable!()
    };
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "timeline: {:#?}\nalertmanager log:\n{}",
        inc.timeline,
        am.log()
    );
    assert_eq!(inc.from_revision.as_deref(), Some("v2"));
    assert_eq!(inc.to_revision.as_deref(), Some("v1"));
    assert_eq!(current(path), "releases/v1");
    assert!(
        d.seen.iter().any(|e| matches!(e, Event::Effect(_, Effect::RuleChanged { transition, .. }) if transition.to == Phase::Ok)),
        "the resolved notification cleared the rule"
    );
    follower.abort();
    let seen = d.stop().await;
    let steps = seen
        .iter()
        .filter(|e| matches!(e, Event::Effect(_, Effect::RunStep(_))))
        .count();
    assert_eq!(steps, 1, "one rollback, run once");
}

#[test]
fn a_reload_keeps_the_alerts_known_for_signals_that_did_not_change() {
    let old_cfg = load(SIGNALS);
    let old = Receiver::new(&old_cfg).unwrap();
    deliver(&old, vec![firing(CHECKOUT, T0)]);
    // The new configuration drops `payments` (so the signals move) and changes the
    // matchers of `shop-any`; `checkout` stays as it was.
    let text = SIGNALS
        .replace(
            "alertname = \"PaymentErrors\"",
            "alertname = \"PaymentErrors\", env = \"prod\"",
        )
        .replace(
            "matchers = { service = \"shop\" }",
            "matchers = { service = \"shop\", env = \"prod\" }",
        );
    let new_cfg = load(&text);
    let new = Receiver::new(&new_cfg).unwrap();
    let checkout = new_cfg.signal_index("checkout").unwrap();
    assert!(
        !checks(&new.current()).contains(&(checkout, false)),
        "a new receiver knows nothing by itself"
    );
    new.take_over(&old, &old_cfg, &new_cfg);
    let shop_any = new_cfg.signal_index("shop-any").unwrap();
    let current = checks(&new.current());
    assert!(
        current.contains(&(checkout, false)),
        "checkout's firing alert is still known: {current:?}"
    );
    assert!(
        !current.contains(&(shop_any, false)),
        "a changed signal starts with nothing known: {current:?}"
    );
}
