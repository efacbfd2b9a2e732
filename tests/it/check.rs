//! `rearguard check` through the real binary, and the shipped configuration folder: every
//! file under `config/` must pass, the reference must show every key the schema has, and
//! a bad file must be reported completely, with paths, and exit 64.
//!
//! The binary runs with an empty environment unless a test sets variables, so that no
//! `REARGUARD_` override or secret of the machine running the tests changes the outcome.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use rearguard::config::{Format, RuleMode, load_str};

const EXIT_CONFIG: i32 = 64;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

/// Runs `rearguard ARGS` with only the given environment.
fn rearguard(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rearguard"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the rearguard binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A configuration file in a fresh temporary directory, removed when the guard drops.
struct TempConfig {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TempConfig {
    fn new(name: &str, text: &str) -> TempConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        TempConfig { _dir: dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// Every configuration file under `dir`, at any depth, sorted.
fn configuration_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("toml" | "yaml" | "yml")
            ) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_shipped_configuration_passes_check() {
    let files = configuration_files(&config_dir());
    let names: BTreeSet<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(config_dir())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for expected in [
        "default.toml",
        "reference.toml",
        "examples/runbook-table.toml",
        "examples/kubernetes-service.toml",
        "examples/host-systemd.toml",
        "examples/host-systemd.yaml",
        "examples/sidecar.toml",
        "examples/alertmanager-driven.toml",
        "examples/recipes.toml",
    ] {
        assert!(
            names.contains(expected),
            "config/{expected} is missing; found {names:?}"
        );
    }
    for file in &files {
        let path = file.to_str().unwrap();
        let out = rearguard(&["check", path], &[]);
        let text = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{path} fails check:\n{text}{}",
            stderr(&out)
        );
        assert!(
            text.starts_with(&format!("{path}: ok, mode ")),
            "{path}:\n{text}"
        );
        assert!(
            text.contains("worst-case detection"),
            "{path} has no rule:\n{text}"
        );
    }
}

#[test]
fn an_invalid_file_exits_64_and_lists_every_error_with_its_path() {
    let file = TempConfig::new(
        "broken.toml",
        r#"
[[target]]
name = "shop"
blame_windw = "30m"

[[target]]
name = "api"
plan = "rollbak"

[[signal]]
name = "health"
type = "http_probe"
target = "api"
url = "http://127.0.0.1:8080/healthz"

[[signal]]
name = "errors"
type = "prometheus"
target = "api"
url = "http://127.0.0.1:9090"
error_rate = { requests = "http_requests_total", errors = 'code=~"5.."' }

[[rule]]
name = "down"
signal = "health"
consecutive = 3

[[rule]]
name = "error-rate"
signal = "errors"
when = "> 5%"
for = "5m"
confidence = "95"

[[rule]]
name = "slow-to-recover"
signal = "health"
for = "5 minutes"

[[plan]]
name = "rollback"

[[plan.step]]
type = "exec"
command = ["/usr/bin/true"]

[[plan.step]]
type = "exec"
command = ["kubectl", "rollout", "undo", "--to-revision={to_revision}"]

[[plan.step]]
type = "http"
url = "https://status.example/incidents/{incident}"
headers = { Authorization = { env = "STATUS_PAGE_TOKEN", prefix = "Bearer " } }
"#,
    );
    let out = rearguard(&["check", file.path()], &[]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(EXIT_CONFIG),
        "{text}{}",
        stderr(&out)
    );
    let expected = [
        r#"target[0].blame_windw: unknown key "blame_windw"; known: "name", "plan", "blame_window", "cooldown", "max_rollbacks", "rollback_period", "change", "bake", "keep_snapshots", "healthy_for", "config_files""#,
        r#"target[1].plan: no plan is named "rollbak""#,
        r#"plan[0].step[1].command[3]: placeholders are substituted only as whole arguments: write "{to_revision}" as an argument of its own, or read the environment variable REARGUARD_TO_REVISION"#,
        r#"plan[0].step[2].headers.Authorization: environment variable STATUS_PAGE_TOKEN is not set"#,
        r#"rule[1].confidence: expected a percentage like "5%", got "95""#,
        r#"rule[2].for: expected a duration like "5m", got "5 minutes""#,
    ];
    // The count is exact: every error is listed, and nothing else.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        format!("{}: {} errors", file.path(), expected.len()),
        "{text}"
    );
    assert_eq!(lines.len(), expected.len() + 1, "{text}");
    for line in expected {
        assert!(
            lines.contains(&format!("  {line}").as_str()),
            "missing {line:?} in:\n{text}"
        );
    }
}

#[test]
fn error_paths_name_the_bad_key_of_the_right_item() {
    let errors = crate::support::config_errors(
        r#"
[[target]]
nam = "typo"

[[target]]
name = "web"

[[target]]
name = "web"

[[signal]]
name = "health"
type = "http_probe"
target = "web"
url = "http://127.0.0.1:8080/healthz"
expect_stauts = [200]

[[rule]]
signal = "health"
"#,
    );
    for expected in [
        // An unknown key inside a `type`-tagged item still names the key.
        r#"signal[0].expect_stauts: unknown key "expect_stauts"; known: "name", "target", "interval", "timeout", "blind_after", "url", "method", "expect_status", "body_contains", "json_pointer", "json_equals""#,
        // The duplicate is the third target, even though the first one is invalid.
        r#"target[2].name: "web" is used by an earlier target"#,
        "rule[0].name: is required",
    ] {
        assert!(
            errors.iter().any(|e| e == expected),
            "missing {expected:?} in {errors:#?}"
        );
    }
}

#[test]
fn check_prints_each_rules_worst_case_detection_time() {
    let file = TempConfig::new(
        "detection.toml",
        r#"
[[target]]
name = "api"

[[signal]]
name = "errors"
type = "prometheus"
target = "api"
url = "http://127.0.0.1:9090"
interval = "30s"
timeout = "5s"
error_rate = { requests = "http_requests_total", errors = 'code=~"5.."' }

[[signal]]
name = "p95"
type = "prometheus"
target = "api"
url = "http://127.0.0.1:9090"
interval = "45s"
timeout = "5s"
window = "2m"
latency = { histogram = "http_request_duration_seconds_bucket" }

[[signal]]
name = "health"
type = "http_probe"
target = "api"
url = "http://127.0.0.1:8080/healthz"
interval = "10s"
timeout = "2s"

[[signal]]
name = "smoke"
type = "exec"
target = "api"
command = ["/usr/bin/true"]
interval = "1m"
timeout = "30s"

[[rule]]
name = "error-rate"
signal = "errors"
when = "> 5%"
for = "5m"

[[rule]]
name = "slow"
signal = "p95"
when = "> 200ms"
for = "5m"

[[rule]]
name = "down"
signal = "health"
consecutive = 3

[[rule]]
name = "smoke-broken"
signal = "smoke"
m_of_n = [2, 3]
"#,
    );
    let out = rearguard(&["check", file.path()], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for line in [
        // The rate window (1m by default: a fault just over 5% shows fully only once the
        // window holds nothing from before it), then 5m as 10 samples 30s apart, plus
        // one interval, plus the timeout.
        "    rule error-rate: errors > 5% for 5m; worst-case detection 6m35s (sampled every 30s, timeout 5s)",
        // Its 2m window; 5m is not a whole number of 45s intervals: the 7th sample
        // (5m15s) fires.
        "    rule slow: p95 > 200ms for 5m; worst-case detection 8m5s (sampled every 45s, timeout 5s)",
        "    rule down: health failing 3 consecutive; worst-case detection 32s (sampled every 10s, timeout 2s)",
        "    rule smoke-broken: smoke failing 2 of last 3; worst-case detection 2m30s (sampled every 1m, timeout 30s)",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

const OVERRIDABLE: &str = r#"
[daemon]
mode = "enforce"

[[target]]
name = "api"

[[signal]]
name = "health"
type = "http_probe"
target = "api"
url = "http://127.0.0.1:8080/healthz"
interval = "30s"
timeout = "5s"

[[rule]]
name = "down"
signal = "health"
for = "5m"

[[rule]]
name = "flaky"
signal = "health"
m_of_n = [3, 5]
"#;

#[test]
fn environment_overrides_change_what_check_reports() {
    let file = TempConfig::new("rearguard.toml", OVERRIDABLE);
    let plain = stdout(&rearguard(&["check", file.path()], &[]));
    assert!(plain.contains(": ok, mode enforce\n"), "{plain}");
    assert!(
        plain.contains("rule down: health failing for 5m; worst-case detection 5m35s"),
        "{plain}"
    );

    let out = rearguard(
        &["check", file.path()],
        &[
            ("REARGUARD_DAEMON__MODE", "shadow"),
            ("REARGUARD_RULE__0__FOR", "2m"),
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains(": ok, mode shadow"), "{text}");
    assert!(
        text.contains("rule down: health failing for 2m; worst-case detection 2m35s"),
        "{text}"
    );

    // A list index past the end is an error reported under the variable's name.
    let out = rearguard(&["check", file.path()], &[("REARGUARD_RULE__5__FOR", "2m")]);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG));
    assert!(
        stdout(&out)
            .contains("  REARGUARD_RULE__5__FOR: list index 5 is past the end (length 2)\n"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn environment_overrides_parse_lists_and_reach_nested_keys() {
    let env = [
        ("REARGUARD_RULE__1__M_OF_N".to_owned(), "[2, 5]".to_owned()),
        (
            "REARGUARD_SIGNAL__0__INTERVAL".to_owned(),
            "1m30s".to_owned(),
        ),
        // Not an override: no `__`, so it must not be mistaken for a key.
        ("REARGUARD_LOG".to_owned(), "debug".to_owned()),
    ];
    let cfg = load_str(OVERRIDABLE, Format::Toml, env, Path::new(".")).unwrap();
    assert_eq!(cfg.rules[1].mode, RuleMode::MOfN { m: 2, n: 5 });
    assert_eq!(cfg.signals[0].interval.as_secs(), 90);
}

#[test]
fn yaml_and_toml_of_the_same_configuration_validate_to_the_same_summary() {
    let examples = config_dir().join("examples");
    let (toml, yaml) = (
        examples.join("host-systemd.toml"),
        examples.join("host-systemd.yaml"),
    );
    let summary = |path: &Path| {
        let out = rearguard(&["check", path.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
        let text = stdout(&out);
        let (first, rest) = text.split_once('\n').unwrap();
        assert!(first.starts_with(path.to_str().unwrap()), "{text}");
        (
            first[path.to_str().unwrap().len()..].to_owned(),
            rest.to_owned(),
        )
    };
    let (t, y) = (summary(&toml), summary(&yaml));
    assert!(t.1.contains("rule "), "the summary lists no rule:\n{}", t.1);
    assert_eq!(t, y);

    // The summary leaves out steps, URLs and commands: compare the whole configuration.
    let load = |path: &Path, format| {
        let text = std::fs::read_to_string(path).unwrap();
        format!(
            "{:?}",
            load_str(&text, format, Vec::new(), &examples).unwrap()
        )
    };
    assert_eq!(load(&toml, Format::Toml), load(&yaml, Format::Yaml));
}

#[test]
fn the_reference_shows_every_key_of_the_schema() {
    let reference = std::fs::read_to_string(config_dir().join("reference.toml")).unwrap();
    // The schema's own list of keys for each kind of table, taken from the error an
    // unknown key gets there, so that a key added to the schema fails this test until
    // the reference documents it.
    let probes = [
        "[daemon]\nzzz = 1",
        "[[target]]\nzzz = 1",
        "[[target]]\nchange = { type = \"release_symlink\", zzz = 1 }",
        "[[target]]\nchange = { type = \"exec\", zzz = 1 }",
        "[[target]]\nchange = { type = \"kube_deployment\", zzz = 1 }",
        "[[signal]]\ntype = \"http_probe\"\nzzz = 1",
        "[[signal]]\ntype = \"exec\"\nzzz = 1",
        "[[signal]]\ntype = \"prometheus\"\nzzz = 1",
        "[[signal]]\ntype = \"prometheus\"\nname = \"a\"\ntarget = \"a\"\nurl = \"http://a\"\nerror_rate = { zzz = 1 }",
        "[[signal]]\ntype = \"prometheus\"\nname = \"a\"\ntarget = \"a\"\nurl = \"http://a\"\nlatency = { zzz = 1 }",
        "[[signal]]\ntype = \"prometheus\"\nname = \"a\"\ntarget = \"a\"\nurl = \"http://a\"\nauth = { zzz = 1 }",
        "[[signal]]\ntype = \"prometheus\"\nname = \"a\"\ntarget = \"a\"\nurl = \"http://a\"\ntls = { zzz = 1 }",
        "[[signal]]\ntype = \"scrape\"\nzzz = 1",
        "[[signal]]\ntype = \"alertmanager\"\nzzz = 1",
        "[[signal]]\ntype = \"cgroup_oom\"\nzzz = 1",
        "[[signal]]\ntype = \"kube_pods\"\nzzz = 1",
        "[[rule]]\nzzz = 1",
        "[[plan]]\nzzz = 1",
        "[[plan]]\nname = \"p\"\nverify = { zzz = 1 }",
        "[[plan]]\nname = \"p\"\n[[plan.step]]\ntype = \"exec\"\nzzz = 1",
        "[[plan]]\nname = \"p\"\n[[plan.step]]\ntype = \"release_switch\"\nzzz = 1",
        "[[plan]]\nname = \"p\"\n[[plan.step]]\ntype = \"http\"\nzzz = 1",
        "[[plan]]\nname = \"p\"\n[[plan.step]]\ntype = \"recipe\"\nzzz = 1",
        "[[notifier]]\ntype = \"log\"\nzzz = 1",
        "[[notifier]]\ntype = \"slack\"\nzzz = 1",
        "[[notifier]]\ntype = \"pagerduty\"\nzzz = 1",
        "[[notifier]]\ntype = \"teams\"\nzzz = 1",
        "[[notifier]]\ntype = \"statuspage\"\nzzz = 1",
        "[[notifier]]\ntype = \"email\"\nzzz = 1",
        "[[notifier]]\ntype = \"webhook\"\nzzz = 1",
        "[[escalation]]\nzzz = 1",
        "[leader_election]\nzzz = 1",
    ];
    let mut keys = BTreeSet::new();
    for probe in probes {
        let errors = crate::support::config_errors(probe);
        let known = errors
            .iter()
            .find_map(|e| {
                e.split_once("unknown key \"zzz\"; known: ")
                    .map(|(_, k)| k.to_owned())
            })
            .unwrap_or_else(|| panic!("no unknown-key error for {probe:?}: {errors:#?}"));
        keys.extend(known.split(", ").map(|k| k.trim_matches('"').to_owned()));
    }
    // Secret header values are untagged, so they have no unknown-key error to ask.
    keys.extend(["type", "file", "env", "prefix"].map(str::to_owned));
    assert!(keys.len() > 50, "too few keys found: {keys:?}");
    let shown = |key: &str| {
        // `key = ...`, inline or in a comment, or a table header like `[plan.verify]`.
        let key = regex::escape(key);
        let pattern = format!(r"(?m)(^|[\s{{,#]){key}\s*=|\.{key}\]");
        regex::Regex::new(&pattern).unwrap().is_match(&reference)
    };
    let missing: Vec<&String> = keys.iter().filter(|k| !shown(k)).collect();
    assert!(
        missing.is_empty(),
        "config/reference.toml does not show these keys: {missing:?}"
    );

    // Values that are names rather than keys: every section, type, occasion and event.
    for section in [
        "[daemon]",
        "[[target]]",
        "[[signal]]",
        "[[rule]]",
        "[[plan]]",
        "[[plan.step]]",
        "[plan.verify]",
        "[[notifier]]",
        "[[escalation]]",
    ] {
        assert!(reference.contains(section), "no {section} in the reference");
    }
    for value in [
        "release_symlink",
        "kube_deployment",
        "http_probe",
        "prometheus",
        "scrape",
        "alertmanager",
        "/webhook/alertmanager",
        "cgroup_oom",
        "kube_pods",
        "release_switch",
        "oom_killed",
        "crash_loop",
        "not_ready",
        "evicted",
        "enforce",
        "shadow",
        "hold",
        "breach",
        "abort",
        "continue",
        "{incident}",
        "{target}",
        "{rule}",
        "{from_revision}",
        "{to_revision}",
        "REARGUARD_DAEMON__MODE=shadow",
        "\"slack\"",
        "\"pagerduty\"",
        "\"teams\"",
        "\"statuspage\"",
        "\"email\"",
        "\"webhook\"",
        "notify-test",
        "REARGUARD_RULE__0__FOR=2m",
    ] {
        assert!(
            reference.contains(value),
            "{value} is not mentioned in the reference"
        );
    }
    for occasion in rearguard::config::Occasion::ALL {
        let explained =
            regex::Regex::new(&format!(r"(?m)^#\s+{}\s\s+\S", occasion.name())).unwrap();
        assert!(
            explained.is_match(&reference),
            "occasion {} is not explained in the reference",
            occasion.name()
        );
    }
}

#[test]
fn a_nonexistent_file_is_a_clear_error_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("rearguard.toml");
    let out = rearguard(&["check", missing.to_str().unwrap()], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{text}");
    assert!(
        text.contains(&format!(
            "cannot read configuration file {}: No such file or directory",
            missing.display()
        )),
        "{text}"
    );
}

#[test]
fn check_reports_each_file_and_fails_if_any_is_invalid() {
    let good = config_dir().join("examples/sidecar.toml");
    let bad = TempConfig::new("bad.yaml", "daemon:\n  mode: loud\n");
    let out = rearguard(&["check", good.to_str().unwrap(), bad.path()], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{text}");
    assert!(
        text.contains(&format!("{}: ok, mode enforce", good.display())),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}: 1 error\n", bad.path())),
        "{text}"
    );
    assert!(
        text.contains("  daemon.mode: expected \"enforce\" or \"shadow\", got \"loud\"\n"),
        "{text}"
    );
}

#[test]
fn usage_errors_exit_64() {
    for args in [
        &["chek", "rearguard.toml"][..],
        &["check"][..],
        &["check", "--no-such-option", "a.toml"][..],
    ] {
        let out = rearguard(args, &[]);
        assert_eq!(
            out.status.code(),
            Some(EXIT_CONFIG),
            "rearguard {args:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("Usage:"),
            "rearguard {args:?}: {}",
            stderr(&out)
        );
    }
    // Asking for help is not a usage error.
    let out = rearguard(&["check", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_verification_shorter_than_a_within_rules_window_is_an_error() {
    let config = |verify: &str| {
        format!(
            r#"
[[target]]
name = "shop"
plan = "back"
[[signal]]
name = "oom"
target = "shop"
type = "cgroup_oom"
cgroup = "/sys/fs/cgroup/shop"
[[rule]]
name = "oom-loop"
signal = "oom"
when = "> 3"
within = "5m"
[[plan]]
name = "back"
[[plan.step]]
type = "exec"
command = ["true"]
[plan.verify]
window = "{verify}"
"#
        )
    };
    let errors = crate::support::config_errors(&config("2m"));
    assert_eq!(
        errors,
        vec![
            "plan[0].verify.window: 2m is shorter than rule \"oom-loop\"'s `within` of 5m: events from before the rollback would still count when verification ends; make it at least 5m"
        ],
        "{errors:#?}"
    );
    assert!(load_str(&config("5m"), Format::Toml, Vec::new(), Path::new(".")).is_ok());
}

#[test]
fn notifier_settings_are_checked_with_their_paths_and_secrets_stay_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("not-a-url");
    std::fs::write(&secret, "hooks-secret-value-1234\n").unwrap();
    let errors = crate::support::config_errors(&format!(
        r#"
[[notifier]]
name = "both"
type = "slack"
webhook_url = {{ file = "{secret}" }}
token = {{ env = "SLACK_TOKEN" }}

[[notifier]]
name = "bot"
type = "slack"
token = {{ env = "SLACK_TOKEN" }}

[[notifier]]
name = "hook"
type = "slack"
webhook_url = {{ file = "{secret}" }}
per_minute = 0

[[notifier]]
name = "mail"
type = "email"
host = "smtp.example.com"
tls = "ssl"
from = "rearguard"
to = []
username = "ops"

[[notifier]]
name = "pager"
type = "pagerduty"
routing_key = {{ env = "PD_KEY" }}
timeout = "0s"

[[escalation]]
on = ["rollback_slow", "opened"]
notify = ["pager"]

[[escalation]]
on = ["opened"]
slow_after = "5m"
attempts = 2
notify = ["pager", "nobody"]
"#,
        secret = secret.display()
    ));
    let expected = [
        "notifier[0]: a slack notifier takes exactly one of `webhook_url` (incoming webhook) or `token` (bot)",
        "notifier[1].channel: required with `token`: the channel id to post to",
        "notifier[2].per_minute: must be at least 1",
        "notifier[2].webhook_url: the secret is not an http or https URL (its value is not shown)",
        "notifier[3].tls: expected \"starttls\", \"tls\" or \"none\", got \"ssl\"",
        "notifier[3].from: expected an email address like ops@example.com, got \"rearguard\"",
        "notifier[3].to: must list at least one address",
        "notifier[3]: `username` and `password` go together",
        "notifier[4].timeout: must be greater than zero",
        "notifier[4].routing_key: environment variable PD_KEY is not set",
        "escalation[0].slow_after: required when `on` lists rollback_slow",
        "escalation[1].slow_after: only means something when `on` lists rollback_slow",
        "escalation[1].attempts: only means something when `on` lists attempts_failed",
        "escalation[1].notify[1]: no notifier is named \"nobody\"",
    ];
    for e in expected {
        assert!(
            errors.iter().any(|x| x == e),
            "missing {e:?} in {errors:#?}"
        );
    }
    assert!(
        !errors.iter().any(|e| e.contains("hooks-secret-value")),
        "{errors:#?}"
    );
}

#[test]
fn a_cgroup_oom_signal_takes_exactly_one_of_cgroup_and_unit_and_says_so() {
    let signal = |keys: &str| {
        format!(
            "[[target]]\nname = \"shop\"\n[[signal]]\nname = \"oom\"\ntarget = \"shop\"\ntype = \"cgroup_oom\"\n{keys}\n"
        )
    };
    let one_of = "give exactly one of `cgroup` (a cgroup directory) and `unit` (a systemd unit, e.g. \"shop.service\")";
    assert_eq!(
        crate::support::config_errors(&signal("")),
        vec![format!("signal[0]: {one_of}, got neither")]
    );
    assert_eq!(
        crate::support::config_errors(&signal(
            "cgroup = \"/sys/fs/cgroup/shop\"\nunit = \"shop.service\""
        )),
        vec![format!("signal[0]: {one_of}, got both")]
    );
    assert_eq!(
        crate::support::config_errors(&signal("cgroup = \"shop\"\nslice = \"app.slice\"")),
        vec![
            "signal[0].slice: goes with `unit`; with `cgroup` the directory already says where the cgroup is",
            "signal[0].cgroup: expected an absolute path to a cgroup directory, e.g. \"/sys/fs/cgroup/system.slice/shop.service\", got \"shop\"",
        ]
    );
    assert_eq!(
        crate::support::config_errors(&signal("unit = \"shop\"\nslice = \"apps\"")),
        vec![
            "signal[0].unit: expected a systemd unit name with its type, e.g. \"shop.service\" (.service, .scope, .slice, .socket, .mount or .swap), got \"shop\"",
            "signal[0].slice: expected a systemd slice name, e.g. \"system.slice\" or \"-.slice\" for the root, got \"apps\"",
        ]
    );
    let cfg = load_str(
        &signal("unit = \"shop.service\"\nslice = \"app-web.slice\""),
        Format::Toml,
        Vec::new(),
        Path::new("."),
    )
    .unwrap();
    assert!(matches!(
        &cfg.signals[0].source,
        rearguard::config::SourceSpec::CgroupOom(rearguard::config::CgroupOomSpec::Unit { unit, slice })
            if unit == "shop.service" && slice == "app-web.slice"
    ));
}

/// The reference with `from` replaced by `to`, which must be in it, and its secret files
/// named by absolute paths, so that the text can be checked from anywhere.
fn reference_with(from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(config_dir().join("reference.toml")).unwrap();
    assert!(text.contains(from), "the reference has no {from:?}");
    let examples = format!("\"{}/examples/", config_dir().display());
    text.replacen(from, to, 1).replace("\"examples/", &examples)
}

/// `rearguard check` of `text` written as `name` with `env`: its exit code and
/// everything it printed.
fn check_text(name: &str, text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let file = TempConfig::new(name, text);
    let out = rearguard(&["check", file.path()], env);
    (
        out.status.code(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

#[test]
fn a_plan_that_fails_to_deserialize_is_reported_without_a_panic() {
    let plan_name = "[[plan]]\nname = \"shop-rollback\"\n";
    for broken in ["[[plan]]\nname = 0\n", "[[plan]]\n"] {
        let (code, text) = check_text("plan.toml", &reference_with(plan_name, broken), &[]);
        assert_eq!(code, Some(EXIT_CONFIG), "{text}");
        assert!(!text.contains("panicked"), "{text}");
        assert!(text.contains("  plan[0].name: "), "{text}");
    }
}

#[test]
fn a_deeply_nested_override_is_an_error_not_a_stack_overflow() {
    let deep = format!("{}{}", "[".repeat(1500), "]".repeat(1500));
    let reference = config_dir().join("reference.toml");
    let out = rearguard(
        &["check", reference.to_str().unwrap()],
        &[("REARGUARD_DAEMON__MODE", &deep)],
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{text}");
    assert!(
        text.contains(
            "REARGUARD_DAEMON__MODE: the value nests tables or lists deeper than 32 levels"
        ),
        "{text}"
    );
    let file = TempConfig::new("deep.toml", &format!("x = {deep}\n"));
    let out = rearguard(&["check", file.path()], &[]);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("recursion limit exceeded"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn durations_finer_than_a_millisecond_or_under_their_minimum_are_refused() {
    let errors = crate::support::config_errors(
        r#"
[daemon]
tick = "1ms"

[[target]]
name = "shop"
change = { type = "release_symlink", path = "/srv/shop/current", interval = "50ms" }

[[signal]]
name = "health"
type = "http_probe"
target = "shop"
url = "http://127.0.0.1:8080/healthz"
interval = "0.000001s"
timeout = "0.5ms"

[[rule]]
name = "down"
signal = "health"
for = "1.0001s"
"#,
    );
    let expected = [
        "daemon.tick: must be at least 10ms",
        "target[0].change.interval: must be at least 100ms",
        "signal[0].interval: \"0.000001s\" is finer than a millisecond: durations are whole milliseconds",
        "signal[0].timeout: \"0.5ms\" is finer than a millisecond: durations are whole milliseconds",
        "rule[0].for: \"1.0001s\" is finer than a millisecond: durations are whole milliseconds",
    ];
    assert_eq!(errors, expected);
}

#[test]
fn a_nul_byte_in_any_string_is_refused_at_its_path() {
    let errors = crate::support::config_errors(
        "[[target]]\nname = \"shop\"\n\n[[signal]]\nname = \"smoke\"\ntype = \"exec\"\ntarget = \"shop\"\ncommand = [\"/bin/true\", \"a\\u0000b\"]\nenv = { X = \"\\u0000\" }\ncwd = \"/tmp\\u0000\"\n",
    );
    let nul = "holds a NUL byte, which no argument, environment value or path can carry";
    assert_eq!(
        errors,
        [
            format!("signal[0].command[1]: {nul}"),
            format!("signal[0].cwd: {nul}"),
            format!("signal[0].env.X: {nul}"),
        ]
    );
}

#[test]
fn a_key_written_twice_is_refused_in_yaml_as_in_toml() {
    let yaml = TempConfig::new("twice.yaml", "daemon:\n  mode: shadow\n  mode: enforce\n");
    let toml = TempConfig::new(
        "twice.toml",
        "[daemon]\nmode = \"shadow\"\nmode = \"enforce\"\n",
    );
    for (file, expected) in [
        (&yaml, "the key \"mode\" is written twice in one mapping"),
        (&toml, "duplicate key `mode`"),
    ] {
        let out = rearguard(&["check", file.path()], &[]);
        assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{}", stdout(&out));
        assert!(stdout(&out).contains(expected), "{}", stdout(&out));
    }
}

#[test]
fn check_reports_the_errors_an_unknown_signal_or_a_tagged_item_used_to_hide() {
    let errors = crate::support::config_errors(
        r#"
[[target]]
name = "shop"

[[signal]]
name = "health"
type = "http_probe"
target = "shop"
url = "http://127.0.0.1:8080/healthz"
interval = 300

[[rule]]
name = "down"
signal = "helth"
when = "failing"
for = "5 minutes"
"#,
    );
    assert_eq!(
        errors,
        [
            "signal[0].interval: invalid type: found signed int `300`, expected a string",
            "rule[0].signal: no signal is named \"helth\"",
            "rule[0].for: expected a duration like \"5m\", got \"5 minutes\"",
        ]
    );
}

#[test]
fn secret_files_are_regular_files_under_a_size_limit_and_never_block() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 64 * 1024 + 1]).unwrap();
    let at_limit = dir.path().join("at-limit");
    std::fs::write(&at_limit, vec![b'x'; 64 * 1024]).unwrap();
    for (path, expected) in [
        (
            fifo.as_path(),
            "is not a regular file (a FIFO, device or directory is refused)",
        ),
        (
            Path::new("/dev/zero"),
            "is not a regular file (a FIFO, device or directory is refused)",
        ),
        (
            dir.path(),
            "is not a regular file (a FIFO, device or directory is refused)",
        ),
        (
            big.as_path(),
            "is larger than the limit of 64 KiB for a secret",
        ),
    ] {
        let text = format!(
            "[daemon]\ncontrol_token = {{ file = {:?} }}\n",
            path.display().to_string()
        );
        let file = TempConfig::new("secret.toml", &text);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rearguard"))
            .args(["check", file.path()])
            .env_clear()
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!(
                    "check of a secret file at {} did not finish",
                    path.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let line = format!(
            "  daemon.control_token: secret file {}: {expected}",
            path.display()
        );
        assert!(
            stdout(&out).contains(&line),
            "{line:?} in:\n{}",
            stdout(&out)
        );
    }
    let text = format!(
        "[daemon]\ncontrol_token = {{ file = {:?} }}\n",
        at_limit.display().to_string()
    );
    assert!(load_str(&text, Format::Toml, std::iter::empty(), Path::new(".")).is_ok());
}

#[test]
fn a_secret_written_inline_or_given_by_an_override_is_never_echoed() {
    let secret = "hunter2-do-not-print";
    let inline = [
        reference_with(
            "control_token = { file = \"examples/secrets/control.token\" }",
            &format!("control_token = \"{secret}\""),
        ),
        reference_with(
            "routing_key = { file = \"examples/secrets/pagerduty.key\" }",
            &format!("routing_key = \"{secret}\""),
        ),
        reference_with(
            "control_token = { file = \"examples/secrets/control.token\" }",
            &format!("control_token = {secret}"),
        ),
    ];
    for text in &inline {
        let (code, out) = check_text("inline.toml", text, &[]);
        assert_eq!(code, Some(EXIT_CONFIG), "{out}");
        assert!(!out.contains(secret), "{out}");
    }
    for var in [
        "REARGUARD_DAEMON__CONTROL_TOKEN",
        "REARGUARD_NOTIFIER__3__ROUTING_KEY",
    ] {
        let reference = config_dir().join("reference.toml");
        let out = rearguard(&["check", reference.to_str().unwrap()], &[(var, secret)]);
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{text}");
        assert!(text.contains("found a string, expected a secret"), "{text}");
        assert!(!text.contains(secret), "{text}");
    }
}

mod loader_never_panics {
    use std::path::Path;

    use proptest::prelude::*;
    use rearguard::config::{Format, load_str};

    fn line() -> impl Strategy<Value = String> {
        let section = prop::sample::select(vec![
            "[[target]]",
            "[[signal]]",
            "[[rule]]",
            "[[plan]]",
            "[[plan.step]]",
            "[[notifier]]",
            "[[escalation]]",
            "[daemon]",
            "[kubernetes]",
            "[leader_election]",
        ])
        .prop_map(str::to_owned);
        let key = prop::sample::select(vec![
            "name",
            "plan",
            "target",
            "signal",
            "type",
            "when",
            "for",
            "within",
            "interval",
            "timeout",
            "command",
            "url",
            "token",
            "notify",
            "rules",
            "verify",
            "tick",
            "mode",
            "consecutive",
            "m_of_n",
            "change",
            "window",
            "recipe",
        ]);
        let value = prop::sample::select(vec![
            "\"a\"",
            "\"b\"",
            "0",
            "-1",
            "\"5m\"",
            "\"1ms\"",
            "\"> 5%\"",
            "\"failing\"",
            "[]",
            "[\"a\"]",
            "{}",
            "{ file = \"/dev/null\" }",
            "\"http_probe\"",
            "\"exec\"",
            "\"prometheus\"",
            "\"alertmanager\"",
            "\"slack\"",
            "\"http://127.0.0.1:1\"",
            "[[[]]]",
            "[1, 2]",
            "true",
            "\"\"",
            "{ rules = [\"a\"], window = \"1s\" }",
        ]);
        prop_oneof![
            section,
            (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
            "[ -~]{0,20}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn random_configurations_load_or_fail_without_a_panic(lines in prop::collection::vec(line(), 0..40)) {
            let text = lines.join("\n");
            let _ = load_str(&text, Format::Toml, std::iter::empty(), Path::new("."));
            let _ = load_str(&text.replace(" = ", ": "), Format::Yaml, std::iter::empty(), Path::new("."));
        }
    }
}
