//! The real binary's command line: `replay` and `record` (arguments, output formats,
//! exit codes), `--config`'s default, the completions and man pages packaged from it,
//! and what its log on stderr looks like.

use std::path::{Path, PathBuf};
use std::process::Output;

use rearguard::config::Format;

fn rearguard(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rearguard"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn scenario(name: &str) -> (String, String) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(name);
    (
        dir.join("config.toml").display().to_string(),
        dir.join("readings.csv").display().to_string(),
    )
}

#[test]
fn replay_prints_the_timeline_and_a_summary_of_what_would_have_happened() {
    let (config, csv) = scenario("bad-deploy-8pct-errors");
    let out = rearguard(&["replay", "--config", &config, "--csv", &csv]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("rolling back from v2 to v1"), "{stdout}");
    assert!(stdout.contains("verification passed"), "{stdout}");
    assert!(
        stdout.contains("rollback started 2026-11-22T10:06:05.000Z"),
        "{stdout}"
    );
}

#[test]
fn replay_with_failing_steps_shows_the_breaker_tripping() {
    let (config, csv) = scenario("bad-deploy-8pct-errors");
    let out = rearguard(&[
        "replay", "--config", &config, "--csv", &csv, "--steps", "fail",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("circuit breaker open on shop"), "{stdout}");
}

#[test]
fn replay_json_lines_each_parse_and_end_with_a_summary() {
    let (config, csv) = scenario("rollback-does-not-fix");
    let out = rearguard(&[
        "replay", "--config", &config, "--csv", &csv, "--output", "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let (summary, events) = lines.split_last().expect("some lines");
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["breakers"][0]["target"], "shop");
    for e in events {
        assert!(e["time"].is_string() && e["event"].is_string(), "{e}");
    }
    let step = events
        .iter()
        .find(|e| e["event"] == "step")
        .expect("a step line");
    assert_eq!(step["from_revision"], "v2");
    assert_eq!(step["to_revision"], "v1");
}

#[test]
fn a_broken_recording_stops_replay_with_its_line_and_exit_1() {
    let (config, _) = scenario("bad-deploy-8pct-errors");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("broken.csv");
    std::fs::write(
        &csv,
        "time,kind,target,signal,state,value,requests\n2026-11-22T10:00:00Z,reading,shop,nope,value,1,\n",
    )
    .unwrap();
    let out = rearguard(&[
        "replay",
        "--config",
        &config,
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("no signal is named \"nope\""),
        "{stderr}"
    );
}

#[test]
fn replay_without_input_or_with_a_bad_range_is_a_usage_error() {
    let (config, _) = scenario("bad-deploy-8pct-errors");
    assert_eq!(
        rearguard(&["replay", "--config", &config]).status.code(),
        Some(64)
    );
    let out = rearguard(&[
        "replay",
        "--config",
        &config,
        "--prometheus",
        "--from",
        "soon",
        "--to",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from"));
}

#[test]
fn record_writes_a_recording_that_replay_reads() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rearguard.toml");
    std::fs::write(
        &config,
        r#"
[[target]]
name = "box"
[[signal]]
name = "smoke"
target = "box"
type = "exec"
command = ["true"]
interval = "100ms"
"#,
    )
    .unwrap();
    let rec = dir.path().join("rec.csv");
    let out = rearguard(&[
        "record",
        "--config",
        config.to_str().unwrap(),
        "--out",
        rec.to_str().unwrap(),
        "--duration",
        "1s",
    ]);
    assert!(out.status.success(), "{out:?}");
    let cfg = rearguard::config::load_str(
        &std::fs::read_to_string(&config).unwrap(),
        Format::Toml,
        Vec::new(),
        Path::new("."),
    )
    .unwrap();
    let rows: Vec<_> = rearguard::recording::read(&cfg, std::fs::File::open(&rec).unwrap())
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        rows.len() >= 5,
        "about ten readings in a second at 100ms: {}",
        rows.len()
    );
    let out = rearguard(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--csv",
        rec.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 incidents"),
        "{out:?}"
    );
}

#[test]
fn run_and_the_control_commands_read_the_installed_configuration_by_default() {
    use clap::Parser as _;
    use rearguard::cli::{Cli, Command, DEFAULT_CONFIG};
    assert_eq!(DEFAULT_CONFIG, "/etc/rearguard/rearguard.toml");
    let parse = |args: &[&str]| {
        let argv = std::iter::once("rearguard").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    let Command::Run { config, .. } = parse(&["run"]).command else {
        panic!("not run")
    };
    assert_eq!(config, Path::new(DEFAULT_CONFIG));
    for args in [
        &["status"][..],
        &["why", "inc-1"],
        &["ack", "inc-1"],
        &["resolve", "inc-1"],
        &["rollback", "inc-1"],
        &["pause"],
        &["resume", "shop"],
        &["clear-breaker", "shop"],
        &["silence", "slow", "--for", "1h"],
        &["unsilence", "slow"],
    ] {
        let api = match parse(args).command {
            Command::Status { api }
            | Command::Why { api, .. }
            | Command::Ack { api, .. }
            | Command::Resolve { api, .. }
            | Command::Rollback { api, .. }
            | Command::Pause { api, .. }
            | Command::Resume { api, .. }
            | Command::ClearBreaker { api, .. }
            | Command::Silence { api, .. }
            | Command::Unsilence { api, .. } => api,
            other => panic!("{args:?} parsed as {other:?}"),
        };
        assert_eq!(api.config, Path::new(DEFAULT_CONFIG), "{args:?}");
    }
    // The commands that judge a configuration of their own still ask for it.
    for args in [
        &["replay", "--csv", "x.csv"][..],
        &["record", "--out", "-"],
        &["notify-test", "log"],
    ] {
        let argv = std::iter::once("rearguard").chain(args.iter().copied());
        assert!(
            Cli::try_parse_from(argv).is_err(),
            "{args:?} without --config"
        );
    }
    // And every --config says what it is, with the default where there is one.
    let help = String::from_utf8_lossy(&rearguard(&["run", "--help"]).stdout).into_owned();
    assert!(
        help.contains("The configuration file (TOML, or YAML by extension)")
            && help.contains("[default: /etc/rearguard/rearguard.toml]"),
        "{help}"
    );
    let help = String::from_utf8_lossy(&rearguard(&["status", "--help"]).stdout).into_owned();
    assert!(
        help.contains("[default: /etc/rearguard/rearguard.toml]"),
        "{help}"
    );
    let help = String::from_utf8_lossy(&rearguard(&["replay", "--help"]).stdout).into_owned();
    assert!(
        help.contains("The configuration whose rules judge the readings"),
        "{help}"
    );
}

/// The files of `dir`, by name.
fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

#[test]
fn the_packaged_completions_and_man_pages_are_those_of_this_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = rearguard(&["generate", "packaging", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/debian");
    for sub in ["completions", "man"] {
        let made = files(&dir.path().join(sub));
        assert!(
            files(&shipped.join(sub)) == made,
            "packaging/debian/{sub}/ is not what this command line generates; refresh it: \
             cargo run --locked -- generate packaging packaging/debian"
        );
    }
    let completions = files(&dir.path().join("completions"));
    let names: Vec<&str> = completions.keys().map(String::as_str).collect();
    assert_eq!(names, ["_rearguard", "rearguard.bash", "rearguard.fish"]);
    for (name, text) in &completions {
        let text = String::from_utf8_lossy(text);
        assert!(
            text.contains("notify-test") && text.contains("clear-breaker"),
            "{name}"
        );
        assert!(
            !text.contains("generate"),
            "{name} offers the packagers' command"
        );
    }
    let man = files(&dir.path().join("man"));
    assert!(man.contains_key("rearguard.1") && man.contains_key("rearguard-recipes-show.1"));
    assert!(
        !man.keys().any(|n| n.contains("generate")),
        "{:?}",
        man.keys()
    );
    let run = String::from_utf8_lossy(&man["rearguard-run.1"]);
    assert!(run.contains("/etc/rearguard/rearguard.toml"), "{run}");
    let top = String::from_utf8_lossy(&man["rearguard.1"]);
    assert!(
        top.contains("Exit status: 0 success, 64 bad configuration"),
        "{top}"
    );
    // One shell's completion on standard output, for a `cargo install` user.
    let out = rearguard(&["generate", "completions", "bash"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, completions["rearguard.bash"]);
}

#[test]
fn text_logs_to_a_pipe_have_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rearguard.toml");
    std::fs::write(
        &config,
        "[[target]]\nname = \"box\"\n[[signal]]\nname = \"smoke\"\ntarget = \"box\"\ntype = \"exec\"\ncommand = [\"true\"]\ninterval = \"100ms\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rearguard"))
        .args(["record", "--config", config.to_str().unwrap(), "--out", "-"])
        .args(["--duration", "200ms"])
        .env_remove("NO_COLOR")
        .env_remove("REARGUARD_LOG")
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("recording finished"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "escape sequences in the log: {stderr:?}"
    );
}

/// Runs the daemon on `config` until its log on stderr has a line containing `until`,
/// then stops it with SIGTERM; its whole log.
fn daemon_log(config: &Path, until: &str) -> String {
    let log = config.with_extension("log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rearguard"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env_remove("REARGUARD_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("the binary runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    while !read().contains(until) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {until:?} in:\n{}",
            read()
        );
        assert!(child.try_wait().unwrap().is_none(), "exited:\n{}", read());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: kill(2) on the child this test started and has not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "{}", read());
    read()
}

#[test]
fn a_notification_is_one_log_line_and_the_mode_is_spelled_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "s3cret-for-the-test").unwrap();
    let probe = |notifier: &str| {
        format!(
            r#"
[daemon]
state_dir = "{state}"
listen = "127.0.0.1:0"
mode = "shadow"

[[target]]
name = "app"

[[signal]]
name = "health"
type = "http_probe"
target = "app"
url = "http://127.0.0.1:1/health"
interval = "100ms"
timeout = "100ms"

[[rule]]
name = "app-unavailable"
signal = "health"
consecutive = 3

{notifier}

[[escalation]]
name = "people"
on = ["opened"]
notify = ["out"]
"#,
            state = dir.path().join(notifier.len().to_string()).display(),
        )
    };
    // The log notifier: its line is the notification.
    let config = dir.path().join("log.toml");
    std::fs::write(
        &config,
        probe("[[notifier]]\nname = \"out\"\ntype = \"log\""),
    )
    .unwrap();
    let log = daemon_log(&config, "occasion=\"opened\"");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("incident opened"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("occasion=\"opened\""),
        "{log}"
    );
    let started = log
        .lines()
        .find(|l| l.contains("rearguard started"))
        .unwrap();
    assert!(started.contains("mode=\"shadow\""), "{started}");
    // Another notifier: one line, saying where the notification went.
    let config = dir.path().join("hook.toml");
    let hook = format!(
        "[[notifier]]\nname = \"out\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1/hook\"\nsecret = {{ file = \"{}\" }}",
        secret.display()
    );
    std::fs::write(&config, probe(&hook)).unwrap();
    let log = daemon_log(&config, "notifiers=\"out\"");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("incident opened"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}
