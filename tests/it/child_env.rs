//! What the commands rearguard runs see of its environment, and what of their output
//! reaches the incident: the real binary runs a plan whose steps print their
//! environment and a secret, while its own environment holds a secret's source, a
//! `REARGUARD_*` override, a variable a step inherits and one no step names.

use std::path::Path;
use std::time::Duration;

use crate::daemon::{Fixture, binary, switch_back};
use crate::support;

const TOKEN_VAR: &str = "RG_CHILD_ENV_CONTROL_TOKEN";
const TOKEN: &str = "control-token-from-the-environment";
const OVERRIDE: &str = "REARGUARD_DAEMON__BLIND_AFTER";
const FILE_SECRET: &str = "webhook-secret-from-a-file";

fn steps(f: &Fixture) -> String {
    let dir = f.path().display();
    format!(
        r#"
[[plan.step]]
name = "print env"
type = "exec"
command = ["/usr/bin/env"]
inherit_env = ["RG_CHILD_ENV_FOO"]
env = {{ EXPLICIT = "explicit-value" }}
timeout = "5s"

[[plan.step]]
name = "print secret"
type = "exec"
command = ["/bin/cat", "{dir}/webhook.secret"]
timeout = "5s"
{switch}"#,
        switch = switch_back(f)
    )
}

fn extra(f: &Fixture, port: u16) -> String {
    let dir = f.path().display();
    format!(
        r#"listen = "127.0.0.1:{port}"
control_token = {{ env = "{TOKEN_VAR}" }}

[[notifier]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:9/never"
secret = {{ file = "{dir}/webhook.secret" }}
"#
    )
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Every file under `dir`, as lossy text, concatenated.
fn all_text(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            text.push_str(&all_text(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

async fn incident_json(port: u16, id: &str) -> String {
    let url = format!("http://127.0.0.1:{port}/v1/incidents/{id}");
    let response = rearguard::http::client()
        .get(url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("the control API answers");
    assert!(response.status().is_success(), "{response:?}");
    response.text().await.unwrap()
}

fn assert_clean(what: &str, text: &str) {
    assert!(
        text.contains("explicit-value"),
        "{what} lacks the step's output: {text}"
    );
    for leak in [
        TOKEN_VAR,
        TOKEN,
        OVERRIDE,
        "RG_CHILD_ENV_UNLISTED",
        FILE_SECRET,
    ] {
        assert!(!text.contains(leak), "{what} holds {leak}: {text}");
    }
    assert!(
        text.contains("RG_CHILD_ENV_FOO=foo-inherited"),
        "{what}: {text}"
    );
    assert!(
        text.contains("[redacted]"),
        "{what} lacks the redaction: {text}"
    );
}

#[tokio::test]
async fn steps_see_only_their_environment_and_secrets_are_redacted_everywhere() {
    let f = Fixture::new().await;
    std::fs::write(f.path().join("webhook.secret"), format!("{FILE_SECRET}\n")).unwrap();
    let port = free_port();
    let cfg = f.path().join("rearguard.toml");
    std::fs::write(&cfg, f.config(&steps(&f), &extra(&f, port))).unwrap();
    let mut child = tokio::process::Command::new(binary())
        .args(["run", "--config"])
        .arg(&cfg)
        .env(TOKEN_VAR, TOKEN)
        .env(OVERRIDE, "47s")
        .env("RG_CHILD_ENV_FOO", "foo-inherited")
        .env("RG_CHILD_ENV_UNLISTED", "unlisted")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    f.probed(3).await;
    f.releases.deploy("v2");
    let reports = f.path().join("state/reports");
    support::poll_until(Duration::from_secs(30), || {
        std::fs::read_dir(&reports).is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "md")))
        })
    })
    .await
    .expect("the incident is reported within 30s");
    let report = std::fs::read_dir(&reports)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "md"))
        .unwrap();
    let id = report.file_stem().unwrap().to_string_lossy().into_owned();
    assert_clean("the report", &std::fs::read_to_string(&report).unwrap());
    assert_clean("the API", &incident_json(port, &id).await);
    child.kill().await.unwrap();
    assert_clean("the state directory", &all_text(&f.path().join("state")));
}

fn errors_with_env(toml: &str, env: &[(&str, &str)]) -> Vec<String> {
    let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    match rearguard::config::load_str(toml, rearguard::config::Format::Toml, env, Path::new(".")) {
        Ok(_) => panic!("expected errors from:\n{toml}"),
        Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
    }
}

const INHERITING: &str = r#"
[daemon]
control_token = { env = "RG_TOKEN" }

[[target]]
name = "shop"
change = { type = "exec", command = ["/bin/echo", "v1"], inherit_env = ["RG_TOKEN"] }

[[signal]]
name = "smoke"
target = "shop"
type = "exec"
command = ["/bin/true"]
inherit_env = ["HOME", "REARGUARD_DAEMON__MODE"]

[[rule]]
name = "down"
signal = "smoke"
consecutive = 3

[[plan]]
name = "back"

[[plan.step]]
type = "exec"
command = ["/bin/true"]
inherit_env = ["PGHOST", "RG_TOKEN"]
"#;

#[test]
fn inheriting_a_secret_source_or_a_rearguard_setting_is_a_check_error() {
    let errors = errors_with_env(INHERITING, &[("RG_TOKEN", "a-long-enough-token")]);
    assert_eq!(
        errors,
        [
            "signal[0].inherit_env: REARGUARD_DAEMON__MODE is rearguard's own setting, never passed to a command",
            "plan[0].step[0].inherit_env: RG_TOKEN holds a secret of this configuration and cannot be inherited",
            "target[0].change.inherit_env: RG_TOKEN holds a secret of this configuration and cannot be inherited",
        ],
    );
}
