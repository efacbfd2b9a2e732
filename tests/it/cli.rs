//! `rearguard replay` and `rearguard record` through the real binary: arguments, output
//! formats and exit codes.

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
