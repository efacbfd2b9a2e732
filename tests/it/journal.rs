//! Logging to the journal, against a real, standalone `systemd-journald` in a private
//! mount namespace (tmpfs over `/run` and any `/var/log/journal`, so the host's files are
//! untouched): rearguard
//! started with stderr connected the way systemd connects a service (`JOURNAL_STREAM`)
//! logs natively to the journal with its fields, and nothing to stderr. Read back with
//! `journalctl -D`.

use std::path::Path;
use std::time::Duration;

use crate::daemon::{Fixture, binary, switch_back};

const JOURNALD: &str = "/lib/systemd/systemd-journald";

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install it with `apt-get install -y {package}` (scripts/test does this as root)"
    );
}

#[tokio::test]
async fn under_journald_rearguard_logs_to_the_journal_with_its_fields() {
    require(JOURNALD, "systemd");
    require("/usr/bin/journalctl", "systemd");
    require("/usr/bin/unshare", "util-linux");
    let f = Fixture::new().await;
    let dir = f.path();
    let cfg = dir.join("rearguard.toml");
    std::fs::write(&cfg, f.config(&switch_back(&f), "")).unwrap();
    let script = format!(
        r#"set -e
mount -t tmpfs tmpfs /run
# A persistent journal directory of the host stays untouched too.
if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi
mkdir -p /run/systemd/journal /run/log/journal
{JOURNALD} &
journald=$!
for i in $(seq 100); do [ -S /run/systemd/journal/socket ] && break; sleep 0.05; done
exec 3>{dir}/stderr.log
export JOURNAL_STREAM=$(stat -L -c '%d:%i' {dir}/stderr.log)
{binary} run --config {cfg} 2>&3 &
rearguard=$!
for i in $(seq 100); do [ -s {dir}/probed ] && break; sleep 0.05; done
sleep 1
kill -TERM $rearguard
wait $rearguard
journalctl -D /run/log/journal -o json --no-pager SYSLOG_IDENTIFIER=rearguard > {dir}/journal.json
kill $journald
wait $journald || true
"#,
        dir = dir.display(),
        binary = binary(),
        cfg = cfg.display(),
    );
    std::fs::write(dir.join("run.sh"), script).unwrap();
    // The script waits for a file that says the service was probed; write it once it was.
    let probed = dir.join("probed");
    let server = f.server.requests.clone();
    let waiter = tokio::spawn(async move {
        crate::support::poll_until(Duration::from_secs(20), || {
            server.load(std::sync::atomic::Ordering::SeqCst) > 0
        })
        .await
        .ok();
        std::fs::write(probed, "yes").unwrap();
    });
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh"])
            .arg(dir.join("run.sh"))
            .output(),
    )
    .await
    .expect("the journal run ends within 60s")
    .unwrap();
    waiter.abort();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    assert!(stderr.is_empty(), "logs went to stderr too: {stderr}");
    let journal = std::fs::read_to_string(dir.join("journal.json")).unwrap();
    let entries: Vec<serde_json::Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let started = entries
        .iter()
        .find(|e| e["MESSAGE"] == "rearguard started")
        .unwrap_or_else(|| panic!("no start message in the journal: {journal}"));
    assert_eq!(started["TARGETS"], "1", "{started}");
    assert_eq!(started["RULES"], "1", "{started}");
    assert_eq!(
        started["PRIORITY"], "5",
        "info is notice (5) in tracing-journald: {started}"
    );
    assert!(
        entries.iter().any(|e| e["MESSAGE"] == "rearguard stopped"),
        "{journal}"
    );
}
