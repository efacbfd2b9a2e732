//! Observing a target's current revision, so that the daemon can record change events
//! and the engine can tell whether a breach began after a change.
//!
//! A revision names its configuration too: when what a target reads (a Deployment's
//! ConfigMaps and Secrets, a host target's `config_files`) changes alone, the revision
//! becomes `18+cfg.1`, `18+cfg.2`, ... ([`Generations`]), so that a configuration-only
//! change is blamed like any other. The digest compared is kept in memory only: it may
//! cover secrets, so it is never logged or written.
//!
//! An observation only reads: it never moves a symlink or changes anything it looks at.
//! The daemon calls it each interval and compares with the previous answer. An exec
//! observer's command gets the default environment, its `inherit_env` names and its
//! `env`, never the rest of rearguard's (see [`crate::process`]).

use std::path::Path;
use std::time::Duration;

use super::clip_start;
use crate::config::ChangeSpec;
use crate::config::units::format_duration;
use crate::process::{self, Exit};

/// The target's current revision, or why it could not be observed.
///
/// - `release_symlink`: the file name of what the symlink points at (`current ->
///   releases/v2` is `v2`), whether the link is relative or absolute.
/// - `exec`: the trimmed standard output of the command, which must exit 0 within its
///   timeout and print something.
/// - `kube_deployment`: the revision of the ReplicaSet running the Deployment's pod
///   template (one read; the daemon watches instead, see [`super::kube_deployment`]).
pub async fn observe(spec: &ChangeSpec) -> Result<String, String> {
    match spec {
        ChangeSpec::ReleaseSymlink { path, .. } => release_symlink(path).await,
        ChangeSpec::Exec {
            command,
            env,
            inherit_env,
            timeout,
            ..
        } => {
            let env = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            exec(command, env, inherit_env, *timeout).await
        }
        ChangeSpec::KubeDeployment(target) => super::kube_deployment::observe(target).await,
    }
}

/// The name of the release a symlink points at.
pub(crate) async fn release_symlink(path: &Path) -> Result<String, String> {
    let meta = tokio::fs::symlink_metadata(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.file_type().is_symlink() {
        return Err(format!("{} is not a symlink", path.display()));
    }
    let target = tokio::fs::read_link(path)
        .await
        .map_err(|e| format!("cannot read the symlink {}: {e}", path.display()))?;
    match target.file_name().and_then(|n| n.to_str()) {
        Some(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err(format!(
            "{} points at {}, which does not name a release",
            path.display(),
            target.display()
        )),
    }
}

async fn exec(
    command: &[String],
    env: Vec<(String, String)>,
    inherit: &[String],
    timeout: std::time::Duration,
) -> Result<String, String> {
    let cmd = process::Command {
        argv: command,
        env,
        inherit,
        cwd: None,
        timeout,
    };
    let (finished, stdout) = process::run_stdout(cmd).await.map_err(|e| e.to_string())?;
    let stderr = clip_start(finished.output.trim(), 200);
    let with_stderr = |what: String| {
        if stderr.is_empty() {
            what
        } else {
            format!("{what}: {stderr}")
        }
    };
    match finished.status {
        Exit::Code(0) => {}
        Exit::TimedOut => {
            return Err(with_stderr(format!(
                "timed out after {}",
                format_duration(timeout)
            )));
        }
        other => return Err(with_stderr(other.to_string())),
    }
    let revision = stdout.trim();
    if revision.is_empty() {
        return Err(with_stderr("the command printed no revision".to_owned()));
    }
    Ok(revision.to_owned())
}

/// What joins a revision's own name and its configuration generation: `18+cfg.2` is the
/// second configuration-only change seen while revision `18` ran.
pub const CONFIG_MARK: &str = "+cfg.";

/// The revision `base` with configuration generation `generation` (`base` itself for 0).
pub fn with_config(base: &str, generation: u32) -> String {
    if generation == 0 {
        base.to_owned()
    } else {
        format!("{base}{CONFIG_MARK}{generation}")
    }
}

/// A revision's own name and its configuration generation: `("18", 2)` for `18+cfg.2`,
/// `("18", 0)` for `18`. A suffix that is not `+cfg.` and a positive number is part of
/// the name.
pub fn split_config(revision: &str) -> (&str, u32) {
    match revision.rsplit_once(CONFIG_MARK) {
        Some((base, n)) if !base.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            match n.parse::<u32>() {
                Ok(g) if g > 0 => (base, g),
                _ => (revision, 0),
            }
        }
        _ => (revision, 0),
    }
}

/// Names a target's revisions with their configuration generation: the observed
/// revision (a Deployment's, a release's) as it is while its configuration stays as
/// first seen with it, then `+cfg.1`, `+cfg.2`, ... on each change of the configuration
/// alone; a new revision starts again at 0.
///
/// The digest it compares is kept in memory only (it may cover Secret data or an `.env`
/// file: never logged, never written). Across a restart the generation is taken from the
/// revision the engine remembers ([`Generations::remembering`]): the configuration first
/// seen then is taken as that revision's, so a restart is never a change.
#[derive(Debug, Clone, Default)]
pub struct Generations {
    base: Option<String>,
    generation: u32,
    digest: Option<String>,
}

impl Generations {
    /// Goes on from `revision`, the last one the engine knew of the target (`None`: the
    /// first observation names the revision as it is).
    pub fn remembering(revision: Option<&str>) -> Generations {
        let Some(revision) = revision else {
            return Generations::default();
        };
        let (base, generation) = split_config(revision);
        Generations {
            base: Some(base.to_owned()),
            generation,
            digest: None,
        }
    }

    /// The revision to report for `base` observed with configuration `digest` (`None`:
    /// the configuration could not be read, so it is taken as unchanged).
    pub fn name(&mut self, base: &str, digest: Option<&str>) -> String {
        if self.base.as_deref() != Some(base) {
            self.base = Some(base.to_owned());
            self.generation = 0;
            self.digest = digest.map(str::to_owned);
        } else if let Some(d) = digest {
            match self.digest.as_deref() {
                None => self.digest = Some(d.to_owned()),
                Some(old) if old != d => {
                    self.generation += 1;
                    self.digest = Some(d.to_owned());
                }
                Some(_) => {}
            }
        }
        with_config(base, self.generation)
    }

    /// Whether `base` observed with configuration `digest` would be a configuration-only
    /// change: the same revision as before with other configuration.
    pub fn config_only(&self, base: &str, digest: &str) -> bool {
        self.base.as_deref() == Some(base) && self.digest.as_deref().is_some_and(|d| d != digest)
    }

    /// Whether the configuration is the one first seen with the revision (generation 0).
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

/// How long an observer waits before it names a configuration-only change, to look
/// again: a deploy that writes the configuration first and switches the revision a moment
/// later (`kubectl apply -f dir/`, a release script that writes `.env` and then the link)
/// is one change of both, not `18+cfg.1` then `19` (a rollback to `18+cfg.1` would find
/// no snapshot of it).
pub const CONFIG_SETTLE: Duration = Duration::from_secs(2);

/// The most bytes one configuration file of a host target may hold: it is read whole at
/// each observation and copied into the state directory when its revision bakes.
pub const CONFIG_FILE_LIMIT: u64 = 1 << 20;
/// The most files a target's `config_files` may name once its patterns are expanded.
pub const CONFIG_FILES_MAX: usize = 64;

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` one.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &n)
}

/// The files a target's `config_files` name now, sorted, each once. A pattern is an
/// absolute path whose last component may hold `*` and `?` (checked by `check`): it names
/// the regular files of its directory that match (a leading dot only when the pattern
/// has one); a path without them names that file, whether it exists or not (a missing
/// file is part of the configuration too).
pub fn config_files(patterns: &[String]) -> Result<Vec<std::path::PathBuf>, String> {
    let mut out = std::collections::BTreeSet::new();
    for pattern in patterns {
        let path = Path::new(pattern);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.contains(['*', '?']) {
            out.insert(path.to_path_buf());
            continue;
        }
        let dir = path.parent().unwrap_or(Path::new("/"));
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
        };
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            let hidden_ok = !file.starts_with('.') || name.starts_with('.');
            let regular = entry.file_type().is_ok_and(|t| t.is_file());
            if hidden_ok && regular && wildcard(name, file) {
                out.insert(entry.path());
            }
        }
    }
    if out.len() > CONFIG_FILES_MAX {
        return Err(format!(
            "config_files names {} files, more than the {CONFIG_FILES_MAX} a target may have",
            out.len()
        ));
    }
    Ok(out.into_iter().collect())
}

/// The content of `path` (`None`: it does not exist), refused past [`CONFIG_FILE_LIMIT`]
/// or when it is not a regular file. Errors name the file, never its content.
pub fn read_config_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file (a configuration file must be one)",
            path.display()
        ));
    }
    if meta.len() > CONFIG_FILE_LIMIT {
        return Err(format!(
            "{} holds {} bytes, more than the {CONFIG_FILE_LIMIT} a configuration file may",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read(path)
        .map(Some)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// One digest over the files `patterns` name and what they hold (a missing file counts
/// as missing). It covers whatever the files hold (an `.env` holds secrets): it is kept
/// in memory only, never logged or written.
pub fn config_digest(patterns: &[String]) -> Result<String, String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for path in config_files(patterns)? {
        let name = path.to_string_lossy();
        ctx.update(&(name.len() as u64).to_le_bytes());
        ctx.update(name.as_bytes());
        match read_config_file(&path)? {
            None => ctx.update(&[0]),
            Some(bytes) => {
                ctx.update(&[1]);
                ctx.update(&(bytes.len() as u64).to_le_bytes());
                ctx.update(&bytes);
            }
        }
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// A host target's observer (`release_symlink` or `exec`) with its `config_files`: the
/// observed revision, then `+cfg.N` when only the files changed (see [`Generations`]).
#[derive(Debug, Clone)]
pub struct HostObserver {
    spec: ChangeSpec,
    config_files: Vec<String>,
    generations: Generations,
    /// The last error reading the files, said once.
    files_error: Option<String>,
}

impl HostObserver {
    /// `remembered`: the last revision the engine knew of the target.
    pub fn new(spec: &ChangeSpec, config_files: &[String], remembered: Option<&str>) -> Self {
        HostObserver {
            spec: spec.clone(),
            config_files: config_files.to_vec(),
            generations: Generations::remembering(remembered),
            files_error: None,
        }
    }

    /// The target's revision with its configuration generation. Files that cannot be
    /// read are logged (once per error, naming the file) and taken as unchanged.
    /// A configuration-only change is looked at again after [`CONFIG_SETTLE`].
    pub async fn observe(&mut self) -> Result<String, String> {
        let (mut base, mut digest) = self.read().await?;
        if digest
            .as_deref()
            .is_some_and(|d| self.generations.config_only(&base, d))
        {
            tokio::time::sleep(CONFIG_SETTLE).await;
            (base, digest) = self.read().await?;
        }
        Ok(self.generations.name(&base, digest.as_deref()))
    }

    /// The observed revision and the digest of the files (`None`: none are named, or
    /// they cannot be read, which is logged once per error and taken as unchanged).
    async fn read(&mut self) -> Result<(String, Option<String>), String> {
        let base = observe(&self.spec).await?;
        if self.config_files.is_empty() {
            return Ok((base, None));
        }
        let patterns = self.config_files.clone();
        let digest = tokio::task::spawn_blocking(move || config_digest(&patterns))
            .await
            .unwrap_or_else(|e| Err(format!("reading the configuration files failed: {e}")));
        let digest = match digest {
            Ok(d) => {
                self.files_error = None;
                Some(d)
            }
            Err(e) => {
                if self.files_error.as_ref() != Some(&e) {
                    tracing::warn!(error = %e, "cannot read the target's configuration files; they are taken as unchanged");
                    self.files_error = Some(e);
                }
                None
            }
        };
        Ok((base, digest))
    }
}

/// A target's change observer with its configuration generations: what the daemon's
/// change loop and `rearguard record` keep from one observation to the next.
#[derive(Debug)]
pub enum Observer {
    Host(HostObserver),
    Kube(super::kube_deployment::Watcher),
}

impl Observer {
    /// `remembered`: the target's revision as the engine knows it, if it does.
    pub fn new(spec: &ChangeSpec, config_files: &[String], remembered: Option<&str>) -> Self {
        match spec {
            ChangeSpec::KubeDeployment(t) => {
                Observer::Kube(super::kube_deployment::Watcher::new(t).remembering(remembered))
            }
            _ => Observer::Host(HostObserver::new(spec, config_files, remembered)),
        }
    }

    /// The target's revision with its configuration generation.
    pub async fn observe(&mut self) -> Result<String, String> {
        match self {
            Observer::Host(h) => h.observe().await,
            Observer::Kube(w) => w.observe().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revision_names_its_configuration_generation_and_splits_back() {
        assert_eq!(with_config("18", 0), "18");
        assert_eq!(with_config("18", 2), "18+cfg.2");
        assert_eq!(split_config("18+cfg.2"), ("18", 2));
        assert_eq!(split_config("v18"), ("v18", 0));
        // Not a generation: part of the name.
        assert_eq!(split_config("18+cfg.x"), ("18+cfg.x", 0));
        assert_eq!(split_config("18+cfg.0"), ("18+cfg.0", 0));
        assert_eq!(split_config("+cfg.3"), ("+cfg.3", 0));
    }

    /// One observation: the revision and the digest of its configuration.
    type Seen = (&'static str, Option<&'static str>);

    /// What a case checks, the remembered revision, the observations, the names reported.
    type Case = (
        &'static str,
        Option<&'static str>,
        &'static [Seen],
        &'static [&'static str],
    );

    const CASES: &[Case] = &[
        (
            "the configuration first seen is the revision's own",
            None,
            &[("18", Some("a")), ("18", Some("a"))],
            &["18", "18"],
        ),
        (
            "each change of the configuration alone is a new generation",
            None,
            &[("18", Some("a")), ("18", Some("b")), ("18", Some("a"))],
            &["18", "18+cfg.1", "18+cfg.2"],
        ),
        (
            "a new revision starts again at 0",
            None,
            &[("18", Some("a")), ("18", Some("b")), ("19", Some("b"))],
            &["18", "18+cfg.1", "19"],
        ),
        (
            "configuration that cannot be read is taken as unchanged",
            None,
            &[("18", Some("a")), ("18", None), ("18", Some("a"))],
            &["18", "18", "18"],
        ),
        (
            "a restart goes on from the remembered generation",
            Some("18+cfg.2"),
            &[("18", Some("c")), ("18", Some("c")), ("18", Some("d"))],
            &["18+cfg.2", "18+cfg.2", "18+cfg.3"],
        ),
        (
            "a remembered revision that moved on while stopped is a new revision",
            Some("18+cfg.2"),
            &[("19", Some("c"))],
            &["19"],
        ),
    ];

    #[test]
    fn generations_count_configuration_only_changes_within_a_revision() {
        for (what, remembered, observed, expected) in CASES {
            let mut g = Generations::remembering(*remembered);
            let got: Vec<String> = observed.iter().map(|(b, d)| g.name(b, *d)).collect();
            assert_eq!(&got, expected, "{what}");
        }
    }

    #[test]
    fn wildcards_match_a_file_name() {
        assert!(wildcard("*.toml", "shop.toml"));
        assert!(wildcard("app-?.conf", "app-1.conf"));
        assert!(!wildcard("*.toml", "shop.toml.bak"));
        assert!(!wildcard("app-?.conf", "app-12.conf"));
        assert!(wildcard(".env", ".env"));
    }

    #[test]
    fn config_files_expand_patterns_and_bound_what_they_read() {
        let dir = std::env::temp_dir().join(format!("rearguard-cfg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        std::fs::write(dir.join("conf.d/a.toml"), "a = 1").unwrap();
        std::fs::write(dir.join("conf.d/b.toml"), "b = 1").unwrap();
        std::fs::write(dir.join("conf.d/.hidden.toml"), "h = 1").unwrap();
        std::fs::write(dir.join("conf.d/c.txt"), "c").unwrap();
        let patterns = vec![
            format!("{}/conf.d/*.toml", dir.display()),
            format!("{}/.env", dir.display()),
        ];
        let files = config_files(&patterns).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect();
        assert_eq!(names, [".env", "conf.d/a.toml", "conf.d/b.toml"]);
        let before = config_digest(&patterns).unwrap();
        std::fs::write(dir.join(".env"), "TOKEN=x").unwrap();
        let with_env = config_digest(&patterns).unwrap();
        assert_ne!(before, with_env, "a file that appears changes the digest");
        std::fs::write(dir.join("conf.d/c.txt"), "changed").unwrap();
        assert_eq!(
            with_env,
            config_digest(&patterns).unwrap(),
            "unmatched files do not count"
        );
        let big = vec![0u8; CONFIG_FILE_LIMIT as usize + 1];
        std::fs::write(dir.join(".env"), big).unwrap();
        let err = config_digest(&patterns).unwrap_err();
        assert!(
            err.contains(".env holds") && err.contains("more than"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A release script that writes the configuration and switches the link a moment
    /// later is one change of both (`v19`), not `v18+cfg.1` then `v19`; a change of the
    /// files alone is still a generation once it has settled.
    #[tokio::test]
    async fn a_configuration_change_followed_by_a_new_release_is_one_change() {
        let dir = tempfile::tempdir().unwrap();
        let releases = dir.path();
        for r in ["v18", "v19"] {
            std::fs::create_dir(releases.join(r)).unwrap();
        }
        let current = releases.join("current");
        std::os::unix::fs::symlink(releases.join("v18"), &current).unwrap();
        let env = releases.join(".env");
        std::fs::write(&env, "MODE=a\n").unwrap();
        let spec = ChangeSpec::ReleaseSymlink {
            path: current.clone(),
            interval: Duration::from_secs(1),
        };
        let files = [env.to_str().unwrap().to_owned()];
        let mut observer = HostObserver::new(&spec, &files, None);
        assert_eq!(observer.observe().await.unwrap(), "v18");

        std::fs::write(&env, "MODE=b\n").unwrap();
        let switch = {
            let (current, v19) = (current.clone(), releases.join("v19"));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let next = current.with_extension("next");
                std::os::unix::fs::symlink(v19, &next).unwrap();
                std::fs::rename(next, &current).unwrap();
            })
        };
        assert_eq!(observer.observe().await.unwrap(), "v19");
        switch.await.unwrap();

        std::fs::write(&env, "MODE=c\n").unwrap();
        assert_eq!(observer.observe().await.unwrap(), "v19+cfg.1");
    }
}
