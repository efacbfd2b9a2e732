//! `rearguard demo` through the real binary, exactly as the README runs it.

use std::time::Duration;

#[tokio::test]
async fn demo_rolls_the_bad_release_back_and_exits_zero_with_a_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_rearguard"))
            .arg("demo")
            .arg("--dir")
            .arg(dir.path())
            .output(),
    )
    .await
    .expect("the demo finishes within its own minute")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    for expected in [
        "deploying v2",
        "rearguard saw the revision change: v1 -> v2",
        "rule service-unavailable: pending -> firing",
        "rolling back from v2 to v1",
        "verification passed",
        "rolled back to v1 and verified healthy",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let link = std::fs::read_link(dir.path().join("current")).unwrap();
    assert_eq!(link, std::path::Path::new("releases/v1"));
    let reports: Vec<_> = std::fs::read_dir(dir.path().join("state/reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = std::fs::read_to_string(&reports[0]).unwrap();
    assert!(
        report.contains("| Outcome | rolled back and verified |"),
        "{report}"
    );
    assert!(
        stdout.contains(&reports[0].display().to_string()),
        "the report path is printed"
    );
    assert!(
        stdout.contains("status page: http://127.0.0.1:"),
        "the status page's address is printed: {stdout}"
    );
    let chart = stdout
        .lines()
        .find_map(|l| l.strip_prefix("chart: "))
        .unwrap_or_else(|| panic!("the chart's path is printed: {stdout}"));
    let svg = std::fs::read_to_string(chart).unwrap();
    assert!(svg.contains("data-marker=\"change\""), "{svg}");
    assert!(report.contains(&format!(
        "]({})",
        std::path::Path::new(chart).file_name().unwrap().to_string_lossy()
    )));
}
