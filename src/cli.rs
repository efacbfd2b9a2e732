//! The command line: argument parsing, logging set-up, exit codes. Each subcommand is a
//! thin call into the library.
//!
//! Exit codes: 0 success, 64 bad configuration or usage, 1 runtime failure.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::units::format_duration;
use crate::config::{self, Config, Mode};

/// Exit code for bad configuration or usage.
pub const EXIT_CONFIG: u8 = 64;

/// The configuration `run` and the control commands read when `--config` is not given:
/// where the Debian package installs it (a conffile) and the container image has it.
pub const DEFAULT_CONFIG: &str = "/etc/rearguard/rearguard.toml";

/// The end of `rearguard --help` and of the man page: files, environment, exit status.
const AFTER_LONG_HELP: &str = "\
Files:
  /etc/rearguard/rearguard.toml  the configuration run and the control commands read by
                                 default (the Debian package's conffile)
  /var/lib/rearguard             the state directory ([daemon] state_dir): incidents,
                                 the notification outbox, reports

Environment:
  REARGUARD_LOG                  log filter, e.g. \"debug\" or \"info,rearguard::engine=debug\"
  REARGUARD_<SECTION>__<KEY>     overrides a configuration key, e.g.
                                 REARGUARD_DAEMON__MODE=shadow
  NO_COLOR                       no colour in the log, even on a terminal

Exit status: 0 success, 64 bad configuration or usage, 1 runtime failure.";

#[derive(Debug, Parser)]
#[command(
    name = "rearguard",
    version,
    about = "An autonomous rollback watchdog",
    long_about = "An autonomous rollback watchdog: samples error rate, latency, OOM kills and \
health checks, evaluates a trigger table, rolls back a bad deploy with its plan, verifies \
the rollback and escalates to people.",
    after_long_help = AFTER_LONG_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Output of `replay`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    /// A readable timeline and a summary.
    Text,
    /// JSON lines, as documented in `src/replay.rs`.
    Json,
}

/// How `replay` answers plan steps.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Steps {
    Succeed,
    Fail,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate configuration files; print each rule's worst-case detection time.
    Check {
        /// Configuration files (TOML, or YAML by extension).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the watchdog.
    Run {
        /// The configuration file (TOML, or YAML by extension).
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Start with an empty state when the state store cannot be read (a damaged
        /// database, engine memory that does not decode), which otherwise stops the
        /// start. What cannot be read is kept aside, not deleted.
        #[arg(long)]
        discard_state: bool,
    },
    /// Replay recorded readings through a configuration's rules, with no side effects,
    /// and print what would have happened.
    Replay {
        /// The configuration whose rules judge the readings.
        #[arg(long, short)]
        config: PathBuf,
        /// A recording (CSV, as `rearguard record` writes it).
        #[arg(
            long,
            conflicts_with = "prometheus",
            required_unless_present = "prometheus"
        )]
        csv: Option<PathBuf>,
        /// Read the configuration's Prometheus signals over --from..--to instead.
        #[arg(long, requires_all = ["from", "to"])]
        prometheus: bool,
        /// Start of the range: RFC 3339 or Unix seconds.
        #[arg(long)]
        from: Option<String>,
        /// End of the range: RFC 3339 or Unix seconds.
        #[arg(long)]
        to: Option<String>,
        /// Resolution of the range, e.g. "15s".
        #[arg(long, default_value = "15s")]
        step: String,
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// How replay answers each plan step it would have run.
        #[arg(long, value_enum, default_value_t = Steps::Succeed)]
        steps: Steps,
    },
    /// Record live readings of a configuration's signals to a CSV recording.
    Record {
        /// The configuration whose signals are read.
        #[arg(long, short)]
        config: PathBuf,
        /// The recording to write; "-" for standard output.
        #[arg(long, short)]
        out: PathBuf,
        /// Stop after this long, e.g. "10m"; otherwise at SIGTERM or SIGINT.
        #[arg(long)]
        duration: Option<String>,
    },
    /// Send a clearly marked test message through a configured notifier and print what
    /// the provider answered.
    NotifyTest {
        /// The configuration that defines the notifier.
        #[arg(long, short)]
        config: PathBuf,
        /// The notifier's name, as in `[[notifier]] name`.
        notifier: String,
    },
    /// What the running rearguard is doing: targets, rules, open incidents.
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// The chain of readings, rules, decisions and actions behind an incident.
    Why {
        #[command(flatten)]
        api: ApiArgs,
        incident: String,
    },
    /// Acknowledge an incident: reminders stop; PagerDuty hears `acknowledge`.
    Ack {
        #[command(flatten)]
        api: ApiArgs,
        incident: String,
    },
    /// Resolve an incident by hand.
    Resolve {
        #[command(flatten)]
        api: ApiArgs,
        incident: String,
    },
    /// Roll an incident's target back now with its plan, as an operator decided (the
    /// blame window, breaker, cooldown and pauses are yours to judge; a revision marked
    /// bad is never a destination).
    Rollback {
        #[command(flatten)]
        api: ApiArgs,
        incident: String,
    },
    /// Pause automatic action on one target, or on all (a maintenance window).
    Pause {
        #[command(flatten)]
        api: ApiArgs,
        /// The target; all targets when left out.
        target: Option<String>,
    },
    /// Resume automatic action on one target, or on all.
    Resume {
        #[command(flatten)]
        api: ApiArgs,
        target: Option<String>,
    },
    /// Clear a target's tripped circuit breaker.
    ClearBreaker {
        #[command(flatten)]
        api: ApiArgs,
        target: String,
    },
    /// Silence a rule for a while: its firing opens no incident until the silence ends.
    Silence {
        #[command(flatten)]
        api: ApiArgs,
        rule: String,
        /// How long, e.g. "1h".
        #[arg(long = "for")]
        for_: String,
    },
    /// Lift a rule's silence.
    Unsilence {
        #[command(flatten)]
        api: ApiArgs,
        rule: String,
    },
    /// Watch a simulated service roll out a bad release and roll it back, end to end.
    Demo {
        /// Where to keep the demo's files (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The shipped rollback recipes: list them, or show one.
    Recipes {
        #[command(subcommand)]
        command: Option<RecipesCommand>,
    },
}

/// `rearguard generate`: shell completions and man pages for packagers. A command line of
/// its own, not a subcommand of [`Cli`], so that the completions and pages it writes
/// from [`Cli`] neither offer nor describe it (clap_complete offers hidden subcommands).
#[derive(Debug, Parser)]
#[command(name = "rearguard generate", version)]
pub struct GenerateCli {
    #[command(subcommand)]
    pub what: Generate,
}

/// What `rearguard generate` writes.
#[derive(Debug, Subcommand)]
pub enum Generate {
    /// The completion script for one shell, on standard output.
    Completions { shell: clap_complete::Shell },
    /// Everything a package installs: `completions/` (bash, zsh, fish) and `man/` (a page
    /// per command) in DIR; packaging/debian/ holds the output for the Debian package.
    Packaging { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum RecipesCommand {
    /// Print a recipe: its parameters, preconditions, what it verifies, what it cannot
    /// undo, how it is tested, and the steps it expands into.
    Show { name: String },
}

/// How the control subcommands reach the running rearguard: its configuration gives the
/// listen address and the control token.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The running rearguard's configuration: its listen address and control token.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// The API's base URL, when not `http://<daemon.listen>`.
    #[arg(long)]
    pub api: Option<String>,
    /// Who is asking, for the audit trail (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

/// Parses the process arguments and runs the chosen command.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "generate") {
        return match GenerateCli::try_parse_from(&args[1..]) {
            Ok(g) => generate(&g.what),
            Err(e) => usage(e),
        };
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return usage(e),
    };
    match cli.command {
        Command::Check { files } => check(&files, &mut std::io::stdout()),
        Command::Run {
            config,
            discard_state,
        } => {
            init_logging(cli.log_format, "info");
            run(&config, discard_state)
        }
        Command::Replay {
            config,
            csv,
            prometheus: _,
            from,
            to,
            step,
            output,
            steps,
        } => {
            init_logging(cli.log_format, "warn");
            replay(&config, csv.as_deref(), from.zip(to), &step, output, steps)
        }
        Command::Record {
            config,
            out,
            duration,
        } => {
            init_logging(cli.log_format, "info");
            record(&config, &out, duration.as_deref())
        }
        Command::NotifyTest { config, notifier } => {
            init_logging(cli.log_format, "info");
            notify_test(&config, &notifier, &mut std::io::stdout())
        }
        Command::Status { api } => control(&api, reqwest::Method::GET, "/v1/status".to_owned()),
        Command::Why { api, incident } => control(
            &api,
            reqwest::Method::GET,
            format!("/v1/incidents/{}/why", segment(&incident)),
        ),
        Command::Ack { api, incident } => control(
            &api,
            reqwest::Method::POST,
            format!("/v1/incidents/{}/acknowledge", segment(&incident)),
        ),
        Command::Resolve { api, incident } => control(
            &api,
            reqwest::Method::POST,
            format!("/v1/incidents/{}/resolve", segment(&incident)),
        ),
        Command::Rollback { api, incident } => control(
            &api,
            reqwest::Method::POST,
            format!("/v1/incidents/{}/rollback", segment(&incident)),
        ),
        Command::Pause { api, target } => control(
            &api,
            reqwest::Method::POST,
            target_path(target.as_deref(), "pause"),
        ),
        Command::Resume { api, target } => control(
            &api,
            reqwest::Method::POST,
            target_path(target.as_deref(), "resume"),
        ),
        Command::ClearBreaker { api, target } => control(
            &api,
            reqwest::Method::POST,
            format!("/v1/targets/{}/clear-breaker", segment(&target)),
        ),
        Command::Silence { api, rule, for_ } => {
            let mut query = reqwest::Url::parse("http://x/").expect("a valid base");
            query.query_pairs_mut().append_pair("for", &for_);
            control(
                &api,
                reqwest::Method::POST,
                format!(
                    "/v1/rules/{}/silence?{}",
                    segment(&rule),
                    query.query().unwrap_or_default()
                ),
            )
        }
        Command::Unsilence { api, rule } => control(
            &api,
            reqwest::Method::POST,
            format!("/v1/rules/{}/unsilence", segment(&rule)),
        ),
        Command::Recipes { command } => recipes(command.as_ref(), &mut std::io::stdout()),
        Command::Demo { dir } => {
            init_logging(cli.log_format, "error");
            runtime().block_on(crate::demo::run(dir))
        }
    }
}

/// A parse error (exit 64) or `--help`/`--version` (exit 0), printed.
fn usage(e: clap::Error) -> ExitCode {
    let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
    let _ = e.print();
    ExitCode::from(code)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // File system calls (change observers read symlinks) run on the blocking pool;
        // observers tick together, and an unbounded pool would grow a thread per target.
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Logs go to the journal natively when stderr is connected to it (systemd says so with
/// `JOURNAL_STREAM`), with every field as a journal field (`INCIDENT=...`); otherwise
/// human-readable text or JSON lines on stderr, the text in colour only on a terminal
/// (and not with `NO_COLOR` set): a pipe, a file or a container runtime's log gets no
/// escape sequences.
fn init_logging(format: LogFormat, default: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("REARGUARD_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
    };
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_syslog_identifier("rearguard".to_owned())
                    .with_field_prefix(None);
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => eprintln!("cannot log to the journal, logging to stderr instead: {e}"),
        }
    }
    let filter = filter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::env::var_os("NO_COLOR").as_deref()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Whether text logs on stderr are coloured: only on a terminal, and not when `NO_COLOR`
/// is set to anything but the empty string (no-color.org).
fn colour(no_color: Option<&std::ffi::OsStr>) -> bool {
    use std::io::IsTerminal as _;
    no_color.is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Whether stderr is the stream systemd connected to the journal: `JOURNAL_STREAM` holds
/// its device and inode numbers (`DEV:INO`, decimal).
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a full `stat` into the buffer when it returns 0.
    let ok = unsafe { libc::fstat(libc::STDERR_FILENO, st.as_mut_ptr()) } == 0;
    if !ok {
        return false;
    }
    // SAFETY: initialised by the successful fstat above.
    let st = unsafe { st.assume_init() };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// `rearguard check`: validates each file, prints what it found, exits 64 on any error.
pub fn check(files: &[PathBuf], out: &mut impl std::io::Write) -> ExitCode {
    let mut bad = false;
    for file in files {
        match config::load(file) {
            Ok(cfg) => {
                let _ = write!(out, "{}", describe(file, &cfg));
            }
            Err(errors) => {
                bad = true;
                let n = errors.0.len();
                let _ = writeln!(
                    out,
                    "{}: {n} error{}",
                    file.display(),
                    if n == 1 { "" } else { "s" }
                );
                for e in &errors.0 {
                    let _ = writeln!(out, "  {e}");
                }
            }
        }
    }
    if bad {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::SUCCESS
    }
}

/// The summary `check` prints for a valid configuration.
pub fn describe(file: &Path, cfg: &Config) -> String {
    let mut s = String::new();
    let mode = match cfg.daemon.mode {
        Mode::Enforce => "enforce",
        Mode::Shadow => "shadow (decides and notifies, never acts)",
    };
    s.push_str(&format!("{}: ok, mode {mode}\n", file.display()));
    if let Some(le) = &cfg.leader_election {
        s.push_str(&format!(
            "  leader election: lease {}/{} as {:?}; held {}, renewed every {}, standbys retry every {}\n",
            le.namespace,
            le.lease,
            le.identity,
            format_duration(le.lease_duration),
            format_duration(le.renew_every),
            format_duration(le.retry_every),
        ));
    }
    for (t, target) in cfg.targets.iter().enumerate() {
        let plan = target
            .plan
            .map_or("no plan: escalate only".to_owned(), |p| {
                format!("plan {}", cfg.plans[p].name)
            });
        s.push_str(&format!(
            "  target {}: {plan}; blame window {}, cooldown {}, at most {} rollback{} per {}\n",
            target.name,
            format_duration(target.blame_window),
            format_duration(target.cooldown),
            target.max_rollbacks,
            if target.max_rollbacks == 1 { "" } else { "s" },
            format_duration(target.rollback_period),
        ));
        for rule in cfg.rules.iter().filter(|r| r.target == t) {
            let signal = &cfg.signals[rule.signal];
            let sampling = match signal.source {
                config::SourceSpec::Alertmanager(_) => {
                    "after the webhook arrives; Alertmanager's group_wait and group_interval come first".to_owned()
                }
                config::SourceSpec::CgroupOom(_) => format!(
                    "woken by the kernel at each kill; read every {} as a safety net",
                    format_duration(signal.interval)
                ),
                _ => format!(
                    "sampled every {}, timeout {}",
                    format_duration(signal.interval),
                    format_duration(signal.timeout)
                ),
            };
            if let Some(j) = &rule.judge {
                // A judge has no bound of its own: it decides when the evidence does.
                s.push_str(&format!(
                    "    rule {}: {} {} (a judge: {}x at {}); detection depends on traffic and effect, at least {} ({sampling})\n",
                    rule.name,
                    signal.name,
                    rule.when.describe(),
                    config::units::Unit::Plain.format(j.min_effect),
                    config::units::Unit::Percent.format(j.confidence),
                    format_duration(rule.worst_case_detection(signal)),
                ));
                continue;
            }
            s.push_str(&format!(
                "    rule {}: {} {} {}; worst-case detection {} ({sampling})\n",
                rule.name,
                signal.name,
                rule.when.describe(),
                rule.mode.describe(),
                format_duration(rule.worst_case_detection(signal)),
            ));
        }
    }
    s
}

/// `rearguard notify-test`: sends [`crate::notify::Message::test`] straight to one
/// notifier (not through the outbox) and reports the provider's answer. Exit 0 when it
/// was accepted, 1 when it was not, 64 for an unknown notifier or bad configuration.
pub fn notify_test(path: &Path, name: &str, out: &mut impl std::io::Write) -> ExitCode {
    use crate::notify::{Delivery, Message, Sink};
    let cfg = match load_or_exit(path) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let Some(notifier) = cfg.notifiers.iter().find(|n| n.name == name) else {
        let known: Vec<&str> = cfg.notifiers.iter().map(|n| n.name.as_str()).collect();
        eprintln!(
            "{}: no notifier is named {name:?}; configured: {}",
            path.display(),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    let sink = match Sink::new(notifier, &crate::http::client()) {
        Ok(sink) => sink,
        Err(e) => {
            eprintln!("notifier {name}: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let msg = Message::test(name, now_ms);
    let kind = notifier.kind.name();
    let bound = notifier.timeout * 3;
    let delivery = runtime().block_on(async {
        tokio::time::timeout(bound, sink.send(&msg, None))
            .await
            .unwrap_or_else(|_| Delivery::Retry {
                after: None,
                reason: format!("no answer within {}", format_duration(bound)),
            })
    });
    let (line, code) = match &delivery {
        Delivery::Accepted { answer, .. } => (
            format!("notifier {name} ({kind}): accepted the test message: {answer}"),
            ExitCode::SUCCESS,
        ),
        Delivery::Retry { after, reason } => (
            format!(
                "notifier {name} ({kind}): not accepted, a temporary failure that rearguard would retry{}: {reason}",
                after.map_or(String::new(), |a| format!(" after {}", format_duration(a)))
            ),
            ExitCode::FAILURE,
        ),
        Delivery::Rejected { reason } => (
            format!(
                "notifier {name} ({kind}): refused the test message; retrying cannot fix this, check the notifier's settings: {reason}"
            ),
            ExitCode::FAILURE,
        ),
    };
    let _ = writeln!(out, "{line}");
    code
}

/// One path segment, percent-encoded.
fn segment(text: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a valid base");
    url.path_segments_mut()
        .expect("an http url has segments")
        .push(text);
    url.path().trim_start_matches('/').to_owned()
}

fn target_path(target: Option<&str>, action: &str) -> String {
    match target {
        Some(t) => format!("/v1/targets/{}/{action}", segment(t)),
        None => format!("/v1/{action}"),
    }
}

/// Calls the running rearguard's control API and prints its answer: exit 0 when it
/// answered 2xx, 1 otherwise (64 for a bad configuration).
fn control(args: &ApiArgs, method: reqwest::Method, path: String) -> ExitCode {
    use secrecy::ExposeSecret;
    let cfg = match load_or_exit(&args.config) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let base = match &args.api {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let mut addr = cfg.daemon.listen;
            if addr.port() == 0 {
                eprintln!("daemon.listen has port 0 (any free port): give the address with --api");
                return ExitCode::from(EXIT_CONFIG);
            }
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let operator = args
        .operator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "cli".to_owned());
    let is_status = path == "/v1/status";
    let result = runtime().block_on(async {
        let mut request = crate::http::client()
            .request(method, format!("{base}{path}"))
            .header(crate::api::control::OPERATOR_HEADER, operator)
            .timeout(std::time::Duration::from_secs(15));
        if let Some(token) = &cfg.daemon.control_token {
            request = request.bearer_auth(token.expose_secret());
        }
        let response = request.send().await?;
        let status = response.status();
        Ok::<_, reqwest::Error>((status, response.text().await?))
    });
    match result {
        Err(e) => {
            eprintln!(
                "cannot reach rearguard at {base}: {}",
                crate::http::describe_error(&e.without_url())
            );
            ExitCode::FAILURE
        }
        Ok((status, body)) if status.is_success() => {
            let text = if is_status {
                match serde_json::from_str::<crate::api::control::Status>(&body) {
                    Ok(s) => render_status(&s),
                    Err(_) => body,
                }
            } else {
                body
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprint!("rearguard answered {}: {body}", status.as_u16());
            ExitCode::FAILURE
        }
    }
}

/// `rearguard status` as text.
pub fn render_status(s: &crate::api::control::Status) -> String {
    let mut out = format!("mode {}", s.mode);
    if s.paused_all {
        out.push_str("; automatic action is paused for every target");
    }
    out.push('\n');
    for t in &s.targets {
        out.push_str(&format!(
            "target {}: revision {}",
            t.name,
            t.revision.as_deref().unwrap_or("unknown")
        ));
        if t.paused {
            out.push_str("; paused");
        }
        if let Some(b) = &t.breaker {
            out.push_str(&format!("; breaker open: {b}"));
        }
        if !t.bad.is_empty() {
            out.push_str(&format!("; marked bad: {}", t.bad.join(", ")));
        }
        out.push('\n');
        for r in s.rules.iter().filter(|r| r.target == t.name) {
            match &r.silenced_until {
                Some(until) => out.push_str(&format!(
                    "  rule {}: {} (silenced until {until})\n",
                    r.name, r.phase
                )),
                None => out.push_str(&format!("  rule {}: {}\n", r.name, r.phase)),
            }
        }
    }
    if s.incidents.is_empty() {
        out.push_str("no open incident\n");
    }
    for i in &s.incidents {
        out.push_str(&format!(
            "incident {} on {}: {} since {}{}\n",
            i.id,
            i.target_name,
            i.state.name(),
            i.opened_at.rfc3339(),
            if i.acknowledged {
                " (acknowledged)"
            } else {
                ""
            }
        ));
    }
    out
}

/// `rearguard generate`: completions and man pages made from this very command line, so
/// they cannot fall behind it.
fn generate(what: &Generate) -> ExitCode {
    use clap::CommandFactory as _;
    match what {
        Generate::Completions { shell } => {
            let mut out = std::io::stdout();
            clap_complete::generate(*shell, &mut Cli::command(), "rearguard", &mut out);
            ExitCode::SUCCESS
        }
        Generate::Packaging { dir } => match write_packaging(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "cannot write completions and man pages to {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        },
    }
}

/// Writes `completions/` (bash, zsh and fish, named as clap_complete names them) and
/// `man/` (`rearguard.1` and a page per command) under `dir`. Pages already in `man/`
/// are removed first, so a command that is gone leaves no page behind.
pub fn write_packaging(dir: &Path) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    use clap_complete::Shell;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "rearguard", &completions)?;
    }
    let man = dir.join("man");
    std::fs::create_dir_all(&man)?;
    for entry in std::fs::read_dir(&man)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "1") {
            std::fs::remove_file(path)?;
        }
    }
    clap_mangen::generate_to(Cli::command(), &man)
}

/// Loads a configuration, or prints every error and gives the exit code.
fn load_or_exit(path: &Path) -> Result<Config, ExitCode> {
    config::load(path).map_err(|errors| {
        eprintln!("{}: invalid configuration", path.display());
        for e in &errors.0 {
            eprintln!("  {e}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

/// `rearguard recipes` and `rearguard recipes show NAME`.
pub fn recipes(command: Option<&RecipesCommand>, out: &mut impl std::io::Write) -> ExitCode {
    match command {
        None => {
            for name in config::recipe::names() {
                let summary = match config::recipe::get(name) {
                    Some(Ok(r)) => r.summary,
                    Some(Err(e)) => format!("(broken: {e})"),
                    None => continue,
                };
                let _ = writeln!(out, "{name:<20} {summary}");
            }
            let _ = writeln!(
                out,
                "\nUse one as a plan step: type = \"recipe\", recipe = \"NAME\", with = {{ ... }}; `rearguard recipes show NAME` for its parameters."
            );
            ExitCode::SUCCESS
        }
        Some(RecipesCommand::Show { name }) => match config::recipe::text(name) {
            Some(text) => {
                let _ = write!(out, "{text}");
                ExitCode::SUCCESS
            }
            None => usage_error(format!(
                "no recipe is named {name:?}; known: {}",
                config::recipe::names().collect::<Vec<_>>().join(", ")
            )),
        },
    }
}

fn usage_error(message: String) -> ExitCode {
    eprintln!("{message}");
    ExitCode::from(EXIT_CONFIG)
}

/// `rearguard replay`.
fn replay(
    path: &Path,
    csv: Option<&Path>,
    range: Option<(String, String)>,
    step: &str,
    output: Output,
    steps: Steps,
) -> ExitCode {
    use crate::engine::Ts;
    use crate::recording::{Row, RowError};
    let cfg = match load_or_exit(path) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    // A recording streams: a week of readings never has to fit in memory.
    let inputs: Box<dyn Iterator<Item = Result<Row, RowError>> + '_> = match (csv, range) {
        (Some(file), _) => match std::fs::File::open(file) {
            Ok(f) => Box::new(crate::recording::read(&cfg, std::io::BufReader::new(f))),
            Err(e) => return usage_error(format!("cannot open recording {}: {e}", file.display())),
        },
        (None, Some((from, to))) => {
            let (from, to, step) = match (
                crate::recording::parse_time(&from),
                crate::recording::parse_time(&to),
                config::units::parse_duration(step),
            ) {
                (Ok(f), Ok(t), Ok(s)) => (f, t, s),
                (Err(e), _, _) => return usage_error(format!("--from: {e}")),
                (_, Err(e), _) => return usage_error(format!("--to: {e}")),
                (_, _, Err(e)) => return usage_error(format!("--step: {e}")),
            };
            match runtime().block_on(crate::history::prometheus_range(&cfg, from, to, step)) {
                Ok(history) => {
                    for w in &history.warnings {
                        eprintln!("note: {w}");
                    }
                    Box::new(history.inputs.into_iter().map(|input| Ok(input.into())))
                }
                Err(e) => {
                    eprintln!("cannot read history from prometheus: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        (None, None) => {
            return usage_error(
                "replay needs --csv FILE or --prometheus --from T --to T".to_owned(),
            );
        }
    };
    let opts = crate::replay::Options {
        steps: match steps {
            Steps::Succeed => crate::replay::StepOutcome::Succeed,
            Steps::Fail => crate::replay::StepOutcome::Fail,
        },
    };
    let mut out = std::io::stdout().lock();
    let mut on_effect = |at: Ts, effect: &crate::engine::Effect| {
        let line = match output {
            Output::Text => crate::replay::render_text(&cfg, at, effect),
            Output::Json => crate::replay::render_json(&cfg, at, effect),
        };
        if let Some(line) = line {
            let _ = writeln!(out, "{line}");
        }
    };
    let summary = match crate::replay::run(&cfg, inputs, &opts, &mut on_effect) {
        Ok(summary) => summary,
        Err(e) => {
            let _ = out.flush();
            eprintln!("recording: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = match output {
        Output::Text => writeln!(out, "\n{}", summary.render_text()),
        Output::Json => writeln!(out, "{}", summary.to_json()),
    };
    ExitCode::SUCCESS
}

/// `rearguard record`.
fn record(path: &Path, out: &Path, duration: Option<&str>) -> ExitCode {
    let cfg = match load_or_exit(path) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let duration = match duration.map(config::units::parse_duration).transpose() {
        Ok(d) => d,
        Err(e) => return usage_error(format!("--duration: {e}")),
    };
    let writer: Box<dyn std::io::Write + Send> = if out == Path::new("-") {
        Box::new(std::io::stdout())
    } else {
        match std::fs::File::create(out) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return usage_error(format!("cannot create {}: {e}", out.display())),
        }
    };
    runtime().block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(stop_on_signal(shutdown.clone()));
        let result = crate::record::record(&cfg, writer, shutdown, duration).await;
        signals.abort();
        match result {
            Ok(stats) => {
                tracing::info!(
                    readings = stats.readings,
                    changes = stats.changes,
                    "recording finished"
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot record");
                ExitCode::from(if e.is_config() { EXIT_CONFIG } else { 1 })
            }
        }
    })
}

fn run(path: &Path, discard_state: bool) -> ExitCode {
    let cfg = match load_or_exit(path) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    if discard_state && let Err(code) = discard_unreadable_state(&cfg.daemon.state_dir) {
        return code;
    }
    let path = path.to_owned();
    runtime().block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(stop_on_signal(shutdown.clone()));
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let reloads = tokio::spawn(reload_on_sighup(path, reload_tx));
        let result = crate::daemon::run(
            cfg,
            crate::daemon::Options {
                shutdown,
                observer: None,
                systemd: crate::systemd::Systemd::from_env(),
                reload: Some(reload_rx),
            },
        )
        .await;
        signals.abort();
        reloads.abort();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "rearguard cannot start");
                let _ = std::io::stderr().flush();
                ExitCode::from(if e.is_config() { EXIT_CONFIG } else { 1 })
            }
        }
    })
}

/// `--discard-state`: moves aside what the state store cannot read, before the daemon
/// opens it, and says so at error level: the breakers, bad marks and open incidents it
/// held are forgotten.
fn discard_unreadable_state(state_dir: &Path) -> Result<(), ExitCode> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match crate::store::discard_unreadable(state_dir, now_ms) {
        Ok(discarded) => {
            if discarded.is_empty() {
                tracing::info!("--discard-state: the state store is readable, nothing discarded");
            }
            for d in &discarded {
                tracing::error!(discarded = %d, "state discarded at the operator's request (--discard-state); rearguard starts without it");
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot discard the unreadable state");
            Err(ExitCode::from(1))
        }
    }
}

/// On every SIGHUP, reads and validates the configuration file again and hands the
/// daemon the result: the new configuration, or every error with its path.
async fn reload_on_sighup(
    path: std::path::PathBuf,
    reloads: tokio::sync::mpsc::Sender<crate::daemon::Reload>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload by restarting");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!(path = %path.display(), "SIGHUP received: reading the configuration again");
        let path = path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| format!("cannot read the configuration: {e}"))
            .and_then(|r| {
                r.map_err(|errors| {
                    let lines: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                    format!("invalid configuration: {}", lines.join("; "))
                })
            });
        if reloads.send(loaded).await.is_err() {
            return;
        }
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
async fn stop_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    token.cancel();
}
