//! Running a program from an argv with a timeout and bounded output capture: the exec
//! source, the exec action, the release switch's restart command and the exec change
//! observer all start processes through here.
//!
//! A program is never run through a shell. Each child leads its own process group, so
//! that a timeout (or a caller dropping the future) kills everything it started, not only
//! the direct child. A process that a command leaves running after it exits on its own (a
//! daemon started by a restart script) is left alone. This module does not interpret exit
//! codes: what a failure means is for the caller to say.
//!
//! A child never inherits rearguard's whole environment, which holds the variables
//! secrets are read from and `REARGUARD_*` configuration overrides: it gets only
//! [`DEFAULT_ENV`] and `LC_*`, the names its command lists in `inherit_env`, and the
//! values the caller sets. Every secret value the configuration loaded (see
//! [`remember_secret`]) is replaced by `[redacted]` in captured output before it is
//! returned, so that no report, store, API answer or log built from it holds one.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::RwLock;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::time::Instant;

/// How much output is kept: the last 16 KiB, where the error usually is.
pub const OUTPUT_LIMIT: usize = 16 * 1024;

/// How long output is still read after the child has exited, for processes it left
/// behind that still hold the pipe open. Data already in the pipe is read at once.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// How long reaping a killed child may take before it is left to tokio's orphan reaper.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// The variables of rearguard's environment every child gets when they are set (with
/// every `LC_*`): where programs are, who runs them and where, locale and time zone.
pub const DEFAULT_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR",
];

/// Secret values shorter than this are not scrubbed from output: replacing every `a` or
/// `42` would garble the output and hide nothing.
pub const MIN_SECRET_LEN: usize = 4;

/// What captured output is scrubbed of: every secret value any configuration loaded by
/// this process read. Values are only added, so a secret rotated away stays scrubbed.
static SECRETS: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

/// A program to run.
#[derive(Debug, Clone)]
pub struct Command<'a> {
    /// The program and its arguments; the program is looked up in `PATH` if it has no `/`.
    pub argv: &'a [String],
    /// Variables set for the program, over the default environment and `inherit`.
    pub env: Vec<(String, String)>,
    /// Names of rearguard's own variables passed through when set (`inherit_env`).
    pub inherit: &'a [String],
    /// The working directory; the daemon's own when `None`.
    pub cwd: Option<&'a Path>,
    /// After this long the whole process group is killed.
    pub timeout: Duration,
}

/// A program that ran, to completion or until it was killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub status: Exit,
    /// Standard output and standard error interleaved as written, lossy UTF-8, at most
    /// the last [`OUTPUT_LIMIT`] bytes, prefixed with `[... N bytes cut]` when cut.
    pub output: String,
    /// From the start of the program until it exited or was killed and reaped.
    pub duration: Duration,
}

impl Finished {
    /// Whether the program exited with code 0.
    pub fn success(&self) -> bool {
        self.status == Exit::Code(0)
    }
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal (not by us).
    Signal(i32),
    /// It ran past its timeout and its process group was killed.
    TimedOut,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit {code}"),
            Exit::Signal(signal) => write!(f, "killed by signal {signal}"),
            Exit::TimedOut => f.write_str("timed out"),
        }
    }
}

/// A program that could not be started, or whose end could not be observed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("no program to run: the command is empty")]
    EmptyCommand,
    #[error("program {program:?} not found")]
    NotFound { program: String },
    #[error("program {program:?} cannot be run: permission denied")]
    PermissionDenied { program: String },
    #[error("working directory {} does not exist", cwd.display())]
    NoWorkingDirectory { cwd: PathBuf },
    #[error("cannot start {program:?}: {source}")]
    Start { program: String, source: io::Error },
    #[error("cannot create a pipe for the output of {program:?}: {source}")]
    Pipe { program: String, source: io::Error },
    #[error("lost track of {program:?} while waiting for it: {source}")]
    Wait { program: String, source: io::Error },
}

/// Runs a program to completion or until its timeout, capturing standard output and
/// standard error together. Returns near the timeout even when processes the program
/// started keep the output pipe open.
pub async fn run(cmd: Command<'_>) -> Result<Finished, SpawnError> {
    let (finished, _) = run_inner(cmd, false).await?;
    Ok(finished)
}

/// Like [`run`], but standard output is kept apart: `Finished::output` holds only
/// standard error, and the second value is standard output (lossy UTF-8, bounded the same
/// way). For commands whose output is a value, such as a revision.
pub async fn run_stdout(cmd: Command<'_>) -> Result<(Finished, String), SpawnError> {
    let (finished, stdout) = run_inner(cmd, true).await?;
    Ok((finished, stdout.unwrap_or_default()))
}

async fn run_inner(
    cmd: Command<'_>,
    split: bool,
) -> Result<(Finished, Option<String>), SpawnError> {
    let Some((program, args)) = cmd.argv.split_first() else {
        return Err(SpawnError::EmptyCommand);
    };
    let pipe_error = |source| SpawnError::Pipe {
        program: program.clone(),
        source,
    };
    // The first pipe carries stdout (and stderr unless split); the second stderr alone.
    let (first_tx, first_rx) = pipe::pipe().map_err(pipe_error)?;
    let first_tx = first_tx.into_blocking_fd().map_err(pipe_error)?;
    let (stdout, stderr, second_rx): (OwnedFd, OwnedFd, Option<pipe::Receiver>) = if split {
        let (tx, rx) = pipe::pipe().map_err(pipe_error)?;
        (
            first_tx,
            tx.into_blocking_fd().map_err(pipe_error)?,
            Some(rx),
        )
    } else {
        let copy = first_tx.try_clone().map_err(pipe_error)?;
        (first_tx, copy, None)
    };

    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(child_env(std::env::vars_os(), cmd.inherit, &cmd.env))
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = cmd.cwd {
        command.current_dir(cwd);
    }
    let start = Instant::now();
    let spawned = command.spawn();
    // The command holds our copies of the pipes' write ends; the reads below only see
    // end-of-file once they are closed.
    drop(command);
    let mut child = spawned.map_err(|e| spawn_error(program, cmd.cwd, e))?;
    let mut group = GroupGuard {
        pgid: child.id().and_then(|id| i32::try_from(id).ok()),
    };

    let mut first = Reader::new(first_rx);
    let mut second = second_rx.map(Reader::new);
    let deadline = start + cmd.timeout;
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);

    let waited = loop {
        let second_open = second.as_ref().is_some_and(|r| r.open);
        tokio::select! {
            biased;
            () = &mut timer => break None,
            status = child.wait() => break Some(status),
            () = first.read_some(), if first.open => {}
            () = read_optional(&mut second), if second_open => {}
        }
    };

    let status = match waited {
        Some(Ok(status)) => {
            // The program ended on its own: whatever it left running is meant to run.
            group.disarm();
            exit_of(status)
        }
        Some(Err(source)) => {
            group.kill();
            return Err(SpawnError::Wait {
                program: program.clone(),
                source,
            });
        }
        None => {
            group.kill();
            let _ = child.start_kill();
            if tokio::time::timeout(REAP_TIMEOUT, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(program = %program, "killed process was not reaped in time");
            }
            Exit::TimedOut
        }
    };

    let drain_until = Instant::now() + DRAIN_AFTER_EXIT;
    let _ = tokio::time::timeout_at(drain_until, async {
        while first.open || second.as_ref().is_some_and(|r| r.open) {
            let second_open = second.as_ref().is_some_and(|r| r.open);
            tokio::select! {
                () = first.read_some(), if first.open => {}
                () = read_optional(&mut second), if second_open => {}
            }
        }
    })
    .await;

    let duration = start.elapsed();
    let (output, stdout) = match second {
        Some(err) => (err.tail.finish(), Some(scrub(&first.tail.finish()))),
        None => (first.tail.finish(), None),
    };
    let output = scrub(&output);
    Ok((
        Finished {
            status,
            output,
            duration,
        },
        stdout,
    ))
}

/// The environment of a child: from `parent`, the [`DEFAULT_ENV`] names, `LC_*` and the
/// `inherit` names; then `env`, which wins over them.
fn child_env(
    parent: impl Iterator<Item = (OsString, OsString)>,
    inherit: &[String],
    env: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let mut vars: Vec<(OsString, OsString)> = parent
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            DEFAULT_ENV.contains(&name.as_ref())
                || name.starts_with("LC_")
                || inherit.iter().any(|n| *n == name)
        })
        .collect();
    vars.extend(env.iter().map(|(k, v)| (k.into(), v.into())));
    vars
}

/// Adds `value` to what captured output is scrubbed of, unless it is shorter than
/// [`MIN_SECRET_LEN`]. Called for every secret a configuration reads.
pub fn remember_secret(value: &str) {
    if value.chars().count() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !secrets.contains(value) {
        secrets.insert(value.to_owned());
    }
}

/// `text` with every remembered secret value replaced by `[redacted]`, longest first so
/// that a secret containing another is replaced whole.
pub fn scrub(text: &str) -> String {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut found: Vec<&String> = secrets
        .iter()
        .filter(|s| text.contains(s.as_str()))
        .collect();
    if found.is_empty() {
        return text.to_owned();
    }
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for secret in found {
        out = out.replace(secret.as_str(), "[redacted]");
    }
    out
}

fn spawn_error(program: &str, cwd: Option<&Path>, error: io::Error) -> SpawnError {
    match error.kind() {
        io::ErrorKind::NotFound => match cwd {
            Some(dir) if !dir.is_dir() => SpawnError::NoWorkingDirectory {
                cwd: dir.to_owned(),
            },
            _ => SpawnError::NotFound {
                program: program.to_owned(),
            },
        },
        io::ErrorKind::PermissionDenied => SpawnError::PermissionDenied {
            program: program.to_owned(),
        },
        _ => SpawnError::Start {
            program: program.to_owned(),
            source: error,
        },
    }
}

fn exit_of(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        // Neither a code nor a signal cannot happen for a waited-for child on Unix.
        (None, None) => Exit::Code(-1),
    }
}

/// Kills the child's process group when dropped, unless disarmed: a caller that drops the
/// future of [`run`] leaves no process behind.
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // SAFETY: kill(2) has no memory-safety preconditions. The group id is the
            // child's pid, which cannot be reused while the child is not yet reaped.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Reader {
    rx: pipe::Receiver,
    tail: Tail,
    open: bool,
    buf: Box<[u8]>,
}

impl Reader {
    fn new(rx: pipe::Receiver) -> Reader {
        Reader {
            rx,
            tail: Tail::new(OUTPUT_LIMIT),
            open: true,
            buf: vec![0; 8192].into_boxed_slice(),
        }
    }

    /// Reads what is available; cancel-safe, since a read either completes or takes
    /// nothing from the pipe.
    async fn read_some(&mut self) {
        match self.rx.read(&mut self.buf).await {
            Ok(0) => self.open = false,
            Ok(n) => self.tail.push(&self.buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.open = false,
        }
    }
}

async fn read_optional(reader: &mut Option<Reader>) {
    match reader {
        Some(r) => r.read_some().await,
        None => std::future::pending().await,
    }
}

/// The last `limit` bytes of a stream, and how many came before them.
struct Tail {
    buf: Vec<u8>,
    total: u64,
    limit: usize,
}

impl Tail {
    fn new(limit: usize) -> Tail {
        Tail {
            buf: Vec::new(),
            total: 0,
            limit,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
        // Trimming only past twice the limit keeps the copying amortized.
        if self.buf.len() > 2 * self.limit {
            let excess = self.buf.len() - self.limit;
            self.buf.drain(..excess);
        }
    }

    fn finish(self) -> String {
        let mut kept = &self.buf[self.buf.len().saturating_sub(self.limit)..];
        if (kept.len() as u64) < self.total {
            // Skip the continuation bytes of a character cut in the middle.
            let partial = kept
                .iter()
                .take(3)
                .take_while(|b| (**b & 0xC0) == 0x80)
                .count();
            kept = &kept[partial..];
        }
        let text = String::from_utf8_lossy(kept);
        let cut = self.total - kept.len() as u64;
        if cut > 0 {
            format!("[... {cut} bytes cut]\n{text}")
        } else {
            text.into_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Tail, child_env, remember_secret, scrub};
    use std::ffi::OsString;

    #[test]
    fn children_get_the_defaults_the_inherited_names_and_their_own_values() {
        let parent = [
            ("PATH", "/bin"),
            ("LC_TIME", "C"),
            ("SLACK_URL", "https://hooks"),
            ("REARGUARD_DAEMON__MODE", "shadow"),
            ("FOO", "foo"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = [("HOME".to_owned(), "/srv".to_owned())];
        let vars = child_env(parent.into_iter(), &["FOO".to_owned()], &env);
        let names: Vec<_> = vars.iter().map(|(k, v)| format!("{k:?}={v:?}")).collect();
        assert_eq!(
            names,
            [
                r#""PATH"="/bin""#,
                r#""LC_TIME"="C""#,
                r#""FOO"="foo""#,
                r#""HOME"="/root""#,
                r#""HOME"="/srv""#,
            ]
        );
    }

    #[test]
    fn remembered_secrets_are_scrubbed_but_short_values_are_not() {
        remember_secret("s3cr3t-value-for-scrub-test");
        remember_secret("s3cr3t-value-for-scrub-test-longer");
        remember_secret("ab");
        let out = scrub("a s3cr3t-value-for-scrub-test-longer and s3cr3t-value-for-scrub-test ab");
        assert_eq!(out, "a [redacted] and [redacted] ab");
    }

    fn tail(limit: usize, chunks: &[&[u8]]) -> String {
        let mut t = Tail::new(limit);
        for c in chunks {
            t.push(c);
        }
        t.finish()
    }

    #[test]
    fn short_output_is_kept_whole() {
        assert_eq!(tail(8, &[b"abc", b"def"]), "abcdef");
    }

    #[test]
    fn long_output_keeps_the_end_and_says_how_much_was_cut() {
        assert_eq!(tail(4, &[b"0123456789", b"ab"]), "[... 8 bytes cut]\n89ab");
    }

    #[test]
    fn cut_never_splits_a_character() {
        // "é" is two bytes; keeping 3 bytes of "xéé" would start inside the first "é".
        assert_eq!(tail(3, &["xéé".as_bytes()]), "[... 3 bytes cut]\né");
    }
}
