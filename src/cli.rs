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

#[derive(Debug, Parser)]
#[command(name = "rearguard", version, about = "An autonomous rollback watchdog")]
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
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Watch a simulated service roll out a bad release and roll it back, end to end.
    Demo {
        /// Where to keep the demo's files (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Parses the process arguments and runs the chosen command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check { files } => check(&files, &mut std::io::stdout()),
        Command::Run { config } => {
            init_logging(cli.log_format, "info");
            run(&config)
        }
        Command::Demo { dir } => {
            init_logging(cli.log_format, "error");
            runtime().block_on(crate::demo::run(dir))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REARGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
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
                _ => format!(
                    "sampled every {}, timeout {}",
                    format_duration(signal.interval),
                    format_duration(signal.timeout)
                ),
            };
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

fn run(path: &Path) -> ExitCode {
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{}: invalid configuration", path.display());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    runtime().block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(stop_on_signal(shutdown.clone()));
        let result = crate::daemon::run(
            cfg,
            crate::daemon::Options {
                shutdown,
                observer: None,
            },
        )
        .await;
        signals.abort();
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
