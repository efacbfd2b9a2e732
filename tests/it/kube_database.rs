//! Kubernetes level 3 as a recipe (`config/recipes/kubernetes-database.md`): the steps
//! it expands into, run in order against the fake API server (with a stand-in for the
//! deployment controller that reports the status the replicas would reach) and a real
//! PostgreSQL cluster restored by the `postgres` script.

use std::process::Command;
use std::time::Duration;

use rearguard::action::{Action, ActionContext, ActionOutput};
use rearguard::config::Step;
use serde_json::{Value, json};

use crate::kube_fake::KubeFake;
use crate::manifests::{NAME, NS, seed};
use crate::recipes::{Postgres, require, run, scripts_dir};
use crate::support;

/// Plays the deployment controller: the status follows the spec (every replica updated
/// and available, the generation observed) a moment after each change, and at zero
/// replicas the Deployment's pods go away (as the kubelet ends them). Stops when
/// dropped.
struct Controller(tokio::task::JoinHandle<()>);

impl Controller {
    fn start(fake: std::sync::Arc<KubeFake>) -> Controller {
        Controller(tokio::spawn(async move {
            loop {
                fake.with(|s| {
                    let Some(mut d) = s.get("deployments", NS, NAME) else {
                        return;
                    };
                    let replicas = d["spec"]["replicas"].clone();
                    let generation = d["metadata"]["generation"].clone();
                    let status = json!({"observedGeneration": generation, "replicas": replicas,
                        "updatedReplicas": replicas, "readyReplicas": replicas,
                        "availableReplicas": replicas});
                    if d["status"] != status {
                        d["status"] = status;
                        s.force_status(d);
                    }
                    if replicas == json!(0) {
                        let ours: Vec<String> = s
                            .list("pods", Some(NS))
                            .iter()
                            .filter(|p| p["metadata"]["labels"]["app"] == "web")
                            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
                            .collect();
                        for name in ours {
                            s.remove("pods", NS, &name);
                        }
                    }
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The plan steps of a `kubernetes-database` recipe step with `with`.
fn steps(fake: &KubeFake, with: &str) -> Vec<Step> {
    let mut cfg = support::config(&format!(
        "[kubernetes]\nkubeconfig = {:?}\n\n[[plan]]\nname = \"level 3\"\n\n[[plan.step]]\ntype = \"recipe\"\nrecipe = \"kubernetes-database\"\nname = \"level 3\"\nwith = {{ namespace = \"{NS}\", deployment = \"{NAME}\", {with} }}\n",
        fake.kubeconfig().display().to_string()
    ));
    cfg.plans.remove(0).steps
}

fn ctx() -> ActionContext {
    ActionContext {
        incident: "inc-3".to_owned(),
        target: "web".to_owned(),
        rule: "errors".to_owned(),
        from_revision: Some("2".to_owned()),
        to_revision: Some("1".to_owned()),
        bad_revisions: vec!["2".to_owned()],
        attempt: 1,
    }
}

async fn run_step(step: &Step) -> ActionOutput {
    Action::new(&step.action, &rearguard::http::client())
        .run(&ctx(), step.timeout)
        .await
}

fn deployment(fake: &KubeFake) -> Value {
    fake.get("deployments", NS, NAME).unwrap()
}

#[tokio::test]
async fn the_database_is_restored_while_no_pod_runs_then_the_deployment_is_undone_and_scaled_back()
{
    let pg = Postgres::start().await;
    pg.psql("postgres", "CREATE DATABASE shop");
    pg.psql(
        "shop",
        "CREATE TABLE orders (id int PRIMARY KEY, state text NOT NULL);
         INSERT INTO orders SELECT g, 'paid' FROM generate_series(1, 100) g;",
    );
    // The backup of revision 1, taken before the deploy of revision 2.
    run(Command::new(require("pg_dump", "postgresql-client"))
        .args(["-Fc", "-h"])
        .arg(pg.socket_dir())
        .args(["-U", "postgres", "-f"])
        .arg(pg.dir.path().join("1.dump"))
        .arg("shop"));
    // Revision 2 damages the data.
    pg.psql(
        "shop",
        "DELETE FROM orders WHERE id > 50; UPDATE orders SET state = 'lost';",
    );

    let fake = std::sync::Arc::new(KubeFake::start().await);
    seed(&fake);
    let _controller = Controller::start(std::sync::Arc::clone(&fake));
    let script = scripts_dir().join("postgres").display().to_string();
    let steps = steps(
        &fake,
        &format!(
            "restore_command = [{script:?}, \"restore\", \"shop\"], check_command = [{script:?}, \"check\", \"shop\", \"--\", \"SELECT count(*) = 100 FROM orders\"], backup = \"{}/{{to_revision}}.dump\", host = {:?}, user = \"postgres\", stop_timeout = \"20s\", rollout_timeout = \"20s\"",
            pg.dir.path().display(),
            pg.socket_dir()
        ),
    );
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "level 3: mark the bad revision",
            "level 3: scale the deployment to zero",
            "level 3: wait for the pods to stop",
            "level 3: restore the database",
            "level 3: check the database",
            "level 3: roll the deployment back",
            "level 3: scale back to the recorded count",
            "level 3: wait for the rollout",
        ]
    );
    for step in &steps {
        if step.name.ends_with("restore the database") {
            // Nothing of the Deployment runs while the database is restored.
            let d = deployment(&fake);
            assert_eq!(d["spec"]["replicas"], 0, "{d:#}");
            assert_eq!(d["status"]["replicas"], 0, "{d:#}");
            assert_eq!(
                d["metadata"]["annotations"]["rearguard.io/recorded-replicas"],
                "3"
            );
        }
        let out = run_step(step).await;
        assert!(out.ok, "{}: {out:#?}", step.name);
    }

    assert_eq!(
        pg.psql("shop", "SELECT count(*), min(state) FROM orders"),
        "100|paid"
    );
    let d = deployment(&fake);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:1"
    );
    assert_eq!(d["spec"]["replicas"], 3, "the count it had before");
    assert!(
        d["metadata"]["annotations"]
            .get("rearguard.io/recorded-replicas")
            .is_none(),
        "{d:#}"
    );
    let bad = fake.get("replicasets", NS, "web-bbb").unwrap();
    assert_eq!(
        bad["metadata"]["annotations"]["rearguard.io/marked-bad"],
        "inc-3"
    );
}

#[tokio::test]
async fn a_failed_restore_stops_the_plan_with_the_deployment_at_zero_and_its_count_recorded() {
    let fake = std::sync::Arc::new(KubeFake::start().await);
    seed(&fake);
    let _controller = Controller::start(std::sync::Arc::clone(&fake));
    let fail = require("false", "coreutils").display().to_string();
    let steps = steps(
        &fake,
        &format!("restore_command = [{fail:?}], stop_timeout = \"20s\""),
    );
    let mut ran = Vec::new();
    for step in &steps {
        let out = run_step(step).await;
        ran.push(step.name.clone());
        if !out.ok {
            break;
        }
    }
    assert_eq!(
        ran.last().map(String::as_str),
        Some("level 3: restore the database"),
        "the plan stops at the restore: {ran:?}"
    );
    let d = deployment(&fake);
    assert_eq!(d["spec"]["replicas"], 0);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"], "web:2",
        "not rolled back onto a database that was not restored"
    );
    assert_eq!(
        d["metadata"]["annotations"]["rearguard.io/recorded-replicas"],
        "3"
    );
}
