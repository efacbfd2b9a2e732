//! The fuzz targets' seed corpora and the crashes the fuzzers found, replayed on stable
//! through the same checks the targets run (`fuzz/src/lib.rs`, included here): a seed
//! never breaks an invariant, the seeds reach past the parsers (valid configurations,
//! accepted deliveries, recordings that read), and each crash input is now a clear error.
//! The fuzzing itself is `scripts/fuzz` (nightly, cargo-fuzz).

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};

/// The seed files of one fuzz target, by name, with their bytes.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", dir.display());
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("a seed file"))
        })
        .collect()
}

#[test]
fn fuzz_config_seeds_are_the_shipped_examples_and_they_load() {
    let seeds = corpus("config");
    for (name, data) in &seeds {
        // `bad-` seeds are rejected on purpose; every other one is a valid configuration.
        let result = checks::config(data);
        assert_eq!(
            result.is_err(),
            name.starts_with("bad-"),
            "{name}: {result:?}"
        );
    }
    let shipped = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml") || n.ends_with(".yaml"));
    for example in shipped {
        assert!(
            seeds.iter().any(|(n, _)| *n == example),
            "{example} is not a config seed"
        );
    }
}

#[test]
fn fuzz_config_overrides_in_a_seed_reach_the_configuration() {
    let (_, seed) = corpus("config")
        .into_iter()
        .find(|(n, _)| n == "overrides")
        .expect("the overrides seed");
    assert_eq!(checks::config(&seed), Ok(()));
    // The same seed with an override of a key that does not exist is refused, by path.
    let mut bad = seed.clone();
    bad.extend_from_slice(b"\0REARGUARD_DAEMON__NO_SUCH_KEY=1");
    let error = checks::config(&bad).unwrap_err();
    assert!(error.contains("no_such_key"), "{error}");
}

#[test]
fn fuzz_exposition_seeds_parse_in_their_format() {
    for (name, data) in corpus("exposition") {
        let [text, openmetrics] = checks::exposition(&data);
        match name.rsplit('.').next() {
            Some("om") => assert!(openmetrics.is_ok(), "{name}: {openmetrics:?}"),
            _ if name.starts_with("bad-") => assert!(text.is_err(), "{name}"),
            _ => assert!(text.as_ref().is_ok_and(|n| *n > 0), "{name}: {text:?}"),
        }
    }
}

#[test]
fn fuzz_webhook_seeds_are_accepted_or_refused_as_they_say() {
    for (name, data) in corpus("webhook") {
        let results = checks::webhook(&data);
        assert!(!results.is_empty(), "{name}");
        let refused = results.iter().filter(|r| r.is_err()).count();
        let expected = if name.starts_with("bad-") {
            results.len()
        } else {
            0
        };
        assert_eq!(refused, expected, "{name}: {results:?}");
    }
}

#[test]
fn fuzz_recording_seeds_read_and_write_back_the_same() {
    for (name, data) in corpus("recording") {
        let rows = checks::recording(&data);
        assert!(rows.as_ref().is_ok_and(|n| *n > 0), "{name}: {rows:?}");
    }
}
