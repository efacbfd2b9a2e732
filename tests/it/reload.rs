//! A new configuration for the running daemon (what SIGHUP hands it): applied with the
//! open incidents kept and the listener never closed, refused with the reason while the
//! old one goes on, and held back while a rollback step runs.

use std::sync::atomic::Ordering;

use rearguard::daemon::Event;
use rearguard::engine::{Effect, EntryKind, Outcome};

use crate::daemon::{Fixture, load, switch_back};
use crate::running::{Running, start};

/// The address the daemon listens on, from its first event.
async fn listening(d: &mut Running) -> std::net::SocketAddr {
    match d
        .wait_for("the listener", 10, |e| matches!(e, Event::Listening(_)))
        .await
    {
        Event::Listening(addr) => addr,
        _ => unreachable!(),
    }
}

/// One more rule on the fixture's health signal: it fires at the first failed probe.
const FAST_RULE: &str = "\n[[rule]]\nname = \"down-now\"\nsignal = \"health\"\nconsecutive = 1\n";

#[tokio::test]
async fn a_reload_applies_new_rules_keeps_the_open_incident_and_the_listener() {
    let f = Fixture::new().await;
    f.svc.broken.store(true, Ordering::SeqCst);
    let text = f.config(&switch_back(&f), "");
    let mut d = start(load(&text));
    let addr = listening(&mut d).await;
    d.wait_for("the escalation", 10, |e| {
        matches!(e, Event::Effect(_, Effect::Timeline { entry, .. })
            if entry.kind == EntryKind::Decision && entry.text.contains("nothing to blame"))
    })
    .await;

    d.reload(Ok(load(&format!("{text}{FAST_RULE}")))).await;
    d.wait_for("the reload", 10, |e| matches!(e, Event::Reloaded))
        .await;
    // The new rule judges the same failing probes and fires.
    d.wait_for("the new rule firing", 10, |e| {
        matches!(e, Event::Effect(_, Effect::RuleChanged { rule: 1, transition })
            if transition.to == rearguard::engine::Phase::Firing)
    })
    .await;
    // The port was never closed: the new configuration serves on it.
    let health = reqwest::get(format!("http://{addr}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // The incident opened before the reload ends the normal way, once.
    f.svc.broken.store(false, Ordering::SeqCst);
    let inc = d.closed_incident(10).await;
    assert_eq!(inc.outcome, Some(Outcome::Recovered), "{:#?}", inc.timeline);
    assert!(
        inc.timeline
            .iter()
            .any(|e| e.text == "configuration reloaded; incident kept (escalated)"),
        "{:#?}",
        inc.timeline
    );
    let seen = d.stop().await;
    let opened = seen
        .iter()
        .filter(
            |e| matches!(e, Event::Effect(_, Effect::Notify(n)) if n.occasion.name() == "opened"),
        )
        .count();
    assert_eq!(
        opened, 1,
        "the incident was opened once, not again after the reload"
    );
}

#[tokio::test]
async fn a_reload_that_cannot_apply_is_refused_and_the_running_configuration_stays() {
    let f = Fixture::new().await;
    let text = f.config(&switch_back(&f), "");
    let mut d = start(load(&text));
    let addr = listening(&mut d).await;
    d.wait_for("start", 10, |e| matches!(e, Event::Started))
        .await;

    // A file that does not validate: the command line sends the errors.
    d.reload(Err(
        "invalid configuration: rule[0].consecutive: must be at least 1".to_owned(),
    ))
    .await;
    let refused = d
        .wait_for("the refusal", 10, |e| matches!(e, Event::ReloadRefused(_)))
        .await;
    assert!(matches!(&refused, Event::ReloadRefused(r) if r.contains("rule[0].consecutive")));

    // A valid file that moves the listener: that needs a restart.
    let moved = text.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    d.reload(Ok(load(&moved))).await;
    let refused = d
        .wait_for("the refusal", 10, |e| matches!(e, Event::ReloadRefused(_)))
        .await;
    assert!(
        matches!(&refused, Event::ReloadRefused(r) if r.contains("daemon.listen") && r.contains("restart")),
        "{refused:?}"
    );

    // The configuration that runs still judges: a failing service fires its rule.
    f.svc.broken.store(true, Ordering::SeqCst);
    d.rule_becomes(rearguard::engine::Phase::Firing, 10).await;
    assert_eq!(
        reqwest::get(format!("http://{addr}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let seen = d.stop().await;
    assert!(!seen.iter().any(|e| matches!(e, Event::Reloaded)));
}

#[tokio::test]
async fn a_reload_waits_for_the_rollback_step_in_flight_and_runs_no_step_twice() {
    let f = Fixture::new().await;
    let gate = f.path().join("gate");
    let steps = format!(
        r#"
[[plan.step]]
name = "wait for the gate"
type = "exec"
command = ["/bin/sh", "-c", "while [ ! -e {gate} ]; do sleep 0.05; done"]
timeout = "20s"
"#,
        gate = gate.display()
    );
    let text = f.config(&steps, "");
    let mut d = f.start_and_deploy(&text).await;
    d.wait_for("the step", 20, |e| {
        matches!(e, Event::Effect(_, Effect::RunStep(_)))
    })
    .await;

    d.reload(Ok(load(&format!("{text}{FAST_RULE}")))).await;
    d.expect_none("a reload while the step runs", 2, |e| {
        matches!(e, Event::Reloaded)
    })
    .await;
    std::fs::write(&gate, "").unwrap();
    d.wait_for("the reload after the step", 10, |e| {
        matches!(e, Event::Reloaded)
    })
    .await;
    // The step's result reached the engine before the reload.
    let step_done = d.seen.iter().position(|e| {
        matches!(e, Event::Effect(_, Effect::Timeline { entry, .. })
            if matches!(entry.kind, EntryKind::StepFinished { ok: true, .. }))
    });
    let reloaded = d.seen.iter().position(|e| matches!(e, Event::Reloaded));
    assert!(
        step_done.is_some() && step_done < reloaded,
        "the step finished before the reload: {:#?}",
        d.seen
    );
    let seen = d.stop().await;
    let steps = seen
        .iter()
        .filter(|e| matches!(e, Event::Effect(_, Effect::RunStep(_))))
        .count();
    assert_eq!(steps, 1, "one step, run once");
}
