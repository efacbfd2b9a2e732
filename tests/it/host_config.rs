//! A host target's configuration files (`config_files`) through the daemon, on real
//! files: a change of the files alone is revision `v1+cfg.1`, blamed when the health
//! check fails, and the plan's `restore_config_files` step puts the snapshot taken when
//! `v1` baked back with each file's mode and owner, moves aside a file that was not
//! there, and keeps the bad content as `FILE.before-rollback`; the release switch of
//! the same plan switches nothing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use rearguard::daemon::Event;
use rearguard::engine::{Effect, Outcome};

use crate::releases::Releases;
use crate::support;

/// Writes `text` to `path` with `mode` and owner `uid:gid`.
fn write(path: &Path, text: &str, mode: u32, (uid, gid): (u32, u32)) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

#[tokio::test]
async fn a_config_file_change_is_rolled_back_by_restoring_the_files_with_mode_and_owner() {
    let releases = Releases::new();
    let dir = releases.path();
    let etc = dir.join("etc");
    std::fs::create_dir_all(etc.join("conf.d")).unwrap();
    // As root (these machines), the files belong to someone else, as /etc/shop's would.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let owner = if uid == 0 { (1234, 5678) } else { (uid, gid) };
    let env = etc.join(".env");
    write(&env, "MODE=good\nTOKEN=t0ken-good\n", 0o640, owner);
    write(
        &etc.join("conf.d/app.toml"),
        "heap = \"256m\"\n",
        0o644,
        owner,
    );
    let marker = dir.join("restarted");
    let state = support::temp_dir();
    let text = format!(
        r#"
[daemon]
state_dir = "{state}"
listen = "127.0.0.1:0"
tick = "50ms"
drain_timeout = "5s"

[[target]]
name = "shop"
plan = "level2"
blame_window = "5m"
bake = "300ms"
healthy_for = "0s"
change = {{ type = "release_symlink", path = "{dir}/current", interval = "100ms" }}
config_files = ["{etc}/.env", "{etc}/conf.d/*.toml"]

[[signal]]
name = "health"
target = "shop"
type = "exec"
command = ["/bin/grep", "-q", "MODE=good", "{etc}/.env"]
interval = "100ms"
timeout = "2s"

[[rule]]
name = "down"
signal = "health"
consecutive = 3

[[plan]]
name = "level2"

[[plan.step]]
type = "restore_config_files"

[[plan.step]]
type = "release_switch"
current = "{dir}/current"

[[plan.step]]
name = "restart"
type = "exec"
command = ["/usr/bin/touch", "{marker}"]

[plan.verify]
window = "500ms"
"#,
        state = state.path().display(),
        dir = dir.display(),
        etc = etc.display(),
        marker = marker.display(),
    );
    let mut d = crate::running::start(crate::daemon::load(&text));
    d.wait_for("the start", 10, |e| matches!(e, Event::Started))
        .await;
    let manifest = state.path().join("config-snapshots/shop/v1/manifest.json");
    support::poll_until(Duration::from_secs(15), || manifest.is_file())
        .await
        .expect("revision v1's configuration files are snapshotted when it bakes");
    let snapshot = std::fs::read_to_string(&manifest).unwrap();
    assert!(
        !snapshot.contains("t0ken"),
        "the manifest holds no content: {snapshot}"
    );

    // Someone rewrites the .env (as root, 0600) and drops in a new file.
    write(&env, "MODE=bad\nTOKEN=t0ken-bad\n", 0o600, (uid, gid));
    std::fs::write(etc.join("conf.d/extra.toml"), "x = 1\n").unwrap();
    d.wait_for(
        "the configuration-only change",
        10,
        |e| matches!(e, Event::Effect(_, Effect::ChangeObserved { from, to, .. }) if from == "v1" && to == "v1+cfg.1"),
    )
    .await;

    let inc = d.closed_incident(30).await;
    assert_eq!(
        inc.outcome,
        Some(Outcome::RolledBack),
        "timeline: {:#?}",
        inc.timeline
    );
    assert_eq!(inc.from_revision.as_deref(), Some("v1+cfg.1"));
    assert_eq!(inc.to_revision.as_deref(), Some("v1"));
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "MODE=good\nTOKEN=t0ken-good\n"
    );
    let meta = std::fs::metadata(&env).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!((meta.uid(), meta.gid()), owner);
    assert_eq!(
        std::fs::read_to_string(etc.join(".env.before-rollback")).unwrap(),
        "MODE=bad\nTOKEN=t0ken-bad\n",
        "the content rolled back from is kept"
    );
    assert!(
        !etc.join("conf.d/extra.toml").exists(),
        "a file that was not there is moved aside"
    );
    assert!(etc.join("conf.d/extra.toml.before-rollback").exists());
    assert_eq!(
        releases.current(),
        "releases/v1",
        "the release did not change"
    );
    assert!(marker.exists(), "the plan restarted the service");
    let story = format!("{inc:?}");
    assert!(!story.contains("t0ken"), "no file content in the incident");
    d.stop().await;
}

#[test]
fn config_files_are_checked_with_their_paths() {
    let text = r#"
[[target]]
name = "k8s"
change = { type = "kube_deployment", namespace = "shop", deployment = "web" }
config_files = ["/etc/shop/app.toml"]

[[target]]
name = "shop"
change = { type = "release_symlink", path = "/srv/shop/current" }
config_files = ["etc/shop/.env", "/etc/*/app.toml", "/etc/shop/../x", "/etc/shop/*.toml"]
"#;
    let errors = support::config_errors(text);
    for want in [
        "target[0].config_files: only for a target whose change observer is release_symlink or exec",
        "target[1].config_files[0]: \"etc/shop/.env\" is not an absolute path",
        "target[1].config_files[1]: \"/etc/*/app.toml\": wildcards (* and ?) are allowed in the file name only",
        "target[1].config_files[2]: \"/etc/shop/../x\" holds \"..\"",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{want}\nin {errors:#?}"
        );
    }
    assert!(
        !errors.iter().any(|e| e.contains("config_files[3]")),
        "a wildcard in the file name is fine: {errors:#?}"
    );
}

#[test]
fn a_restore_config_files_step_needs_a_target_with_config_files() {
    let text = r#"
[[target]]
name = "shop"
change = { type = "release_symlink", path = "/srv/shop/current" }
plan = "restore"

[[plan]]
name = "restore"

[[plan.step]]
name = "files back"
type = "restore_config_files"
"#;
    let errors = support::config_errors(text);
    let want = "target[0].plan: plan \"restore\" has a restore_config_files step (\"files back\") but this target has no config_files to snapshot";
    assert!(
        errors.iter().any(|e| e.contains(want)),
        "{want}\nin {errors:#?}"
    );
    let with_files = text.replace(
        "plan = \"restore\"",
        "plan = \"restore\"\nconfig_files = [\"/srv/shop/.env\"]",
    );
    let loaded = rearguard::config::load_str(
        &with_files,
        rearguard::config::Format::Toml,
        std::iter::empty(),
        Path::new("."),
    );
    if let Err(errors) = loaded {
        let errors: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
        assert!(
            !errors
                .iter()
                .any(|e| e.contains("restore_config_files step")),
            "{errors:#?}"
        );
    }
}
