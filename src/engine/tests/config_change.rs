//! Table-driven tests of configuration changes: a revision whose configuration alone
//! changed (`18` then `18+cfg.1`, as the change observers name it) is a change like any
//! other, blamed, rolled back to the revision before it, and baked under its full name.
//! The engine treats revisions as opaque text: nothing here depends on their form.
//!
//! It reuses the script language and rendering of `engine::tests`.

use super::*;

/// A host target whose configuration files are part of its revision.
const FILES_TARGET: &str = r#"
plan = "undo"
blame_window = "30m"
bake = "10m"
change = { type = "release_symlink", path = "/srv/shop/current" }
config_files = ["/srv/shop/.env", "/etc/shop/*.toml"]
"#;

fn files_config() -> Config {
    config(FILES_TARGET, &format!("{ERRORS_RULE}\n{PLAN}"))
}

/// The rendered lines of `script` that say what changed and where the plan went.
fn decisions(script: &str) -> Vec<String> {
    let mut run = Run::new(files_config());
    run.script(script);
    run.output()
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| {
            l.contains(" change ")
                || l.contains(" run step 0 attempt 1 ")
                || l.contains(" escalated: ")
        })
        .collect()
}

/// (what, the changes and the breach, the decisive lines)
const CASES: &[(&str, &str, &[&str])] = &[
    (
        "a configuration-only change is blamed and rolled back to the revision before it",
        "0 change v18
         20m change v18+cfg.1
         22m..24m/1m errors 10/100",
        &[
            "20m change v18 -> v18+cfg.1 (v18 healthy)",
            "24m run step 0 attempt 1 (v18+cfg.1 -> v18)",
        ],
    ),
    (
        "a second configuration change goes back to the first, not to the release's own",
        "0 change v18
         5m change v18+cfg.1
         20m change v18+cfg.2
         22m..24m/1m errors 10/100",
        &[
            "5m change v18 -> v18+cfg.1 (v18 healthy)",
            "20m change v18+cfg.1 -> v18+cfg.2 (v18+cfg.1 healthy)",
            "24m run step 0 attempt 1 (v18+cfg.2 -> v18+cfg.1)",
        ],
    ),
    (
        "a new release after a configuration change goes back to that configuration",
        "0 change v18
         5m change v18+cfg.1
         20m change v19
         22m..24m/1m errors 10/100",
        &[
            "5m change v18 -> v18+cfg.1 (v18 healthy)",
            "20m change v18+cfg.1 -> v19 (v18+cfg.1 healthy)",
            "24m run step 0 attempt 1 (v19 -> v18+cfg.1)",
        ],
    ),
    (
        "the same revision observed again (a restart of rearguard) is no change",
        "0 change v18+cfg.1
         20m change v18+cfg.1
         22m..24m/1m errors 10/100",
        &["24m escalated: no change of this target has been observed since rearguard started..."],
    ),
];

#[test]
fn configuration_changes_are_blamed_like_any_other() {
    for (what, script, expected) in CASES {
        let got = decisions(script);
        let matches = got.len() == expected.len()
            && got
                .iter()
                .zip(expected.iter())
                .all(|(g, e)| match e.strip_suffix("...") {
                    Some(prefix) => g.starts_with(prefix),
                    None => g == e,
                });
        assert!(matches, "{what}:\n got {got:#?}\nwant {expected:#?}");
    }
}

#[test]
fn a_host_target_with_config_files_bakes_each_configuration_under_its_full_revision() {
    check_baked(
        files_config(),
        "0 change v18
         0..15m/1m tick
         16m change v18+cfg.1
         16m..30m/1m tick",
        &[("10m", "v18"), ("26m", "v18+cfg.1")],
    );
}

#[test]
fn a_host_target_without_config_files_is_never_baked() {
    let target = r#"
plan = "undo"
change = { type = "release_symlink", path = "/srv/shop/current" }
"#;
    let cfg = config(target, &format!("{ERRORS_RULE}\n{PLAN}"));
    check_baked(cfg, "0 change v18\n0..30m/1m tick", &[]);
}
