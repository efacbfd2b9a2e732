//! Footprint benchmark: resident memory and CPU of rearguard watching N targets, beside
//! the usual alternatives doing the same job (Prometheus scraping N targets every 1 s with
//! an alerting rule, plus Alertmanager; monit checking N HTTP endpoints every 1 s), in the
//! same run on the same machine.
//!
//! One tiny HTTP server in this process serves `/health/{i}` (probed by rearguard) and
//! `/metrics/{i}` (scraped by Prometheus) for every target i. For each N the two sides
//! run one after the other, each alone:
//! - rearguard: the real release binary (`rearguard run --config FILE`) with, per target,
//!   one `http_probe` signal every 1 s, a rule `consecutive = 3`, a `release_symlink`
//!   change read every 5 s and a plan with one exec step;
//! - Prometheus: N targets scraped every 1 s and evaluated every 1 s, one alerting rule
//!   `up{job="fleet"} == 0` for 3s over all of them, sending to a real Alertmanager;
//! - monit: `set daemon 1`, per target one `check host` with
//!   `if failed port P protocol http request "/health/{i}" status = 200 for 3 cycles then
//!   exec`, in the foreground (`-I`) with its control, pid, state and id files in a
//!   temporary directory. monit checks its services one after the other in one thread, so
//!   at large N its cycle takes longer than 1 s: the checks it answered per second are
//!   reported beside its footprint.
//!
//! After a warm-up (`WARMUP`, default 10 s), each process's VmRSS (and RssAnon, RssFile,
//! threads) is read from `/proc/PID/status` every second for `MEASURE` seconds (default
//! 30), and its CPU is utime + stime from `/proc/PID/stat` over the same window, as % of
//! one core. `FOOTPRINT_N` sets the sizes (default "1,100,1000"); `FOOTPRINT_SIDES` the
//! sides (default "rearguard,prometheus,monit").
//!
//! The peak resident set since the start (VmHWM, start-up included) is read at the end of
//! the window. `FOOTPRINT_BEFORE=PATH` names another rearguard binary (an earlier build,
//! copied aside) that runs as one more side, "before", right after this build's, so that a
//! change is measured before and after in one run on the same machine; the last table
//! judges the footprint issue's goals against monit in the same run. `FOOTPRINT_BIN=PATH`
//! measures that binary instead of the one cargo built with the bench (the release
//! build, when the bench itself is built with `--profile dev` to save a build).
//!
//! `cargo bench --bench footprint` (needs the Debian packages `prometheus`,
//! `prometheus-alertmanager` and `monit`). Under `cargo test` it does nothing.

#[path = "../tests/it/support.rs"]
mod support;

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use tokio::process::{Child, Command};

/// Counters of what the local server answered, to check that every side did its job.
#[derive(Default)]
struct Hits {
    health: AtomicUsize,
    metrics: AtomicUsize,
    firing: AtomicUsize,
}

async fn health(State(hits): State<Arc<Hits>>) -> &'static str {
    hits.health.fetch_add(1, Ordering::Relaxed);
    "ok"
}

async fn metrics(State(hits): State<Arc<Hits>>) -> &'static str {
    hits.metrics.fetch_add(1, Ordering::Relaxed);
    "# TYPE app_healthy gauge\napp_healthy 1\n"
}

async fn hook(State(hits): State<Arc<Hits>>, body: String) -> &'static str {
    if body.contains("\"firing\"") {
        hits.firing.fetch_add(1, Ordering::Relaxed);
    }
    "ok"
}

/// The path of an installed server binary, or a panic that says how to install it.
fn binary(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = PathBuf::from(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed; install it with `apt-get install -y {package}`");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A measured child process, killed when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    pid: u32,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, bin: &Path, args: &[String], dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let pid = child.id().expect("a running child has a pid");
        Proc {
            name,
            child,
            pid,
            log,
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Polls `url` until it answers 2xx, or panics with the process's log.
async fn wait_ready(client: &reqwest::Client, url: &str, proc: &Proc) {
    let ok = support::poll_until_async(Duration::from_secs(60), || async {
        client
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    if ok.is_err() {
        panic!("{} not ready within 60 s; log:\n{}", proc.name, proc.log());
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let rest = stat.rsplit_once(')').expect("stat has a command name").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// (VmRSS, RssAnon, RssFile in kB, Threads) from `/proc/PID/status`.
fn status(pid: u32) -> (u64, u64, u64, u64) {
    let f = status_fields(pid, &["VmRSS:", "RssAnon:", "RssFile:", "Threads:"]);
    (f[0], f[1], f[2], f[3])
}

/// The values of `keys` in `/proc/PID/status` (kB for sizes), 0 for one it lacks.
fn status_fields(pid: u32, keys: &[&str]) -> Vec<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    keys.iter().map(|k| field(k)).collect()
}

/// Resident memory by kind of mapping, from `/proc/PID/smaps`, in kB.
fn smaps_summary(pid: u32) -> String {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return String::new();
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let (mut bin, mut libs, mut heap, mut anon, mut anon_n, mut stack) = (0, 0, 0, 0, 0, 0);
    // Pages of the binary's own mappings that were written (relocated data, .data, .bss).
    let mut bin_written = 0;
    let mut kind = 0;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            kind = if path.is_empty() {
                anon_n += 1;
                3
            } else if path == "[heap]" {
                2
            } else if path == "[stack]" {
                4
            } else if Path::new(path) == exe {
                0
            } else {
                1
            };
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            if kind == 0 {
                bin_written += kb_value(v);
            }
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let kb = kb_value(v);
            match kind {
                0 => bin += kb,
                1 => libs += kb,
                2 => heap += kb,
                3 => anon += kb,
                _ => stack += kb,
            }
        }
    }
    format!(
        "binary {bin} kB (of it written {bin_written} kB), other files {libs} kB, [heap] {heap} kB, anonymous {anon} kB in {anon_n} mappings, [stack] {stack} kB"
    )
}

fn kb_value(v: &str) -> u64 {
    v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0)
}

struct Measured {
    name: &'static str,
    rss_median_kb: u64,
    rss_max_kb: u64,
    anon_median_kb: u64,
    file_median_kb: u64,
    threads_max: u64,
    /// VmHWM at the end of the window: the peak resident set since the start.
    hwm_kb: u64,
    cpu_pct: f64,
    /// Checks (probes, scrapes) answered per second during the window, 0 if not counted.
    rate: f64,
    smaps: String,
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

/// Samples every process once a second for `window`; CPU over the whole window.
async fn measure(procs: &[&Proc], window: Duration) -> (Vec<Measured>, f64) {
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let self_pid = std::process::id();
    let start_self = cpu_ticks(self_pid);
    let start: Vec<u64> = procs.iter().map(|p| cpu_ticks(p.pid)).collect();
    let t0 = Instant::now();
    let mut samples: Vec<Vec<(u64, u64, u64, u64)>> = vec![Vec::new(); procs.len()];
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let n = window.as_secs();
    for _ in 0..n {
        ticker.tick().await;
        for (i, p) in procs.iter().enumerate() {
            samples[i].push(status(p.pid));
        }
    }
    // The last sample is taken at n-1 s; wait out the last second of the window.
    ticker.tick().await;
    let wall = t0.elapsed().as_secs_f64();
    let end: Vec<u64> = procs.iter().map(|p| cpu_ticks(p.pid)).collect();
    let self_cpu = (cpu_ticks(self_pid) - start_self) as f64 / tck / wall * 100.0;
    let out = procs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let s = &samples[i];
            Measured {
                name: p.name,
                rss_median_kb: median(s.iter().map(|x| x.0).collect()),
                rss_max_kb: s.iter().map(|x| x.0).max().unwrap_or(0),
                anon_median_kb: median(s.iter().map(|x| x.1).collect()),
                file_median_kb: median(s.iter().map(|x| x.2).collect()),
                threads_max: s.iter().map(|x| x.3).max().unwrap_or(0),
                hwm_kb: status_fields(p.pid, &["VmHWM:"])[0],
                cpu_pct: (end[i] - start[i]) as f64 / tck / wall * 100.0,
                rate: 0.0,
                smaps: smaps_summary(p.pid),
            }
        })
        .collect();
    (out, self_cpu)
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn describe(m: &Measured) -> String {
    format!(
        "  {}: RSS median {} max {} (anon {}, file {}), peak since start (VmHWM) {}, threads max {}, CPU {:.2}% of one core\n    smaps at the end: {}",
        m.name,
        mb(m.rss_median_kb),
        mb(m.rss_max_kb),
        mb(m.anon_median_kb),
        mb(m.file_median_kb),
        mb(m.hwm_kb),
        m.threads_max,
        m.cpu_pct,
        m.smaps
    )
}

fn rearguard_config(n: usize, dir: &Path, base: &str) -> String {
    let d = dir.display();
    let mut text = format!(
        "[daemon]\nstate_dir = \"{d}/state\"\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"2s\"\n\n[[plan]]\nname = \"back\"\n[[plan.step]]\ntype = \"exec\"\ncommand = [\"true\"]\n\n"
    );
    for i in 0..n {
        let _ = write!(
            text,
            r#"[[target]]
name = "t{i}"
plan = "back"
change = {{ type = "release_symlink", path = "{d}/links/current{i}", interval = "5s" }}
[[signal]]
name = "h{i}"
target = "t{i}"
type = "http_probe"
url = "{base}/health/{i}"
interval = "1s"
[[rule]]
name = "down{i}"
signal = "h{i}"
consecutive = 3

"#
        );
    }
    text
}

fn prometheus_config(n: usize, server: &str, am: &str) -> String {
    let mut text = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{am}']\nscrape_configs:\n  - job_name: fleet\n    static_configs:\n"
    );
    // One group per target: the same host:port, its own path and its own instance label,
    // so that there are N targets and N series of `up`.
    for i in 0..n {
        let _ = write!(
            text,
            "      - targets: ['{server}']\n        labels: {{ instance: 't{i}', __metrics_path__: '/metrics/{i}' }}\n"
        );
    }
    text
}

const RULES: &str = "groups:\n  - name: fleet\n    interval: 1s\n    rules:\n      - alert: TargetDown\n        expr: up{job=\"fleet\"} == 0\n        for: 3s\n";

struct Row {
    n: usize,
    rearguard: Option<Measured>,
    rearguard_note: String,
    /// The binary of `FOOTPRINT_BEFORE`, for a before-and-after in one run.
    before: Option<Measured>,
    stack: Option<(Measured, Measured)>,
    stack_note: String,
    monit: Option<Measured>,
    monit_note: String,
    /// Health checks monit answered per second during its window.
    monit_rate: f64,
}

/// monit's control file: one `check host` per target, each an HTTP check of
/// `/health/{i}` every cycle (1 s), failing after 3 cycles.
fn monit_config(n: usize, dir: &Path, port: u16) -> String {
    let d = dir.display();
    let mut text = format!(
        "set daemon 1\nset logfile {d}/monit.log\nset pidfile {d}/monit.pid\nset statefile {d}/monit.state\nset idfile {d}/monit.id\n\n"
    );
    for i in 0..n {
        let _ = write!(
            text,
            "check host t{i} with address 127.0.0.1\n  if failed port {port} protocol http request \"/health/{i}\" status = 200 for 3 cycles then exec \"/bin/true\"\n"
        );
    }
    text
}

async fn run_monit(
    n: usize,
    port: u16,
    hits: &Hits,
    warmup: Duration,
    window: Duration,
) -> (Option<Measured>, String, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let control = dir.path().join("monitrc");
    std::fs::write(&control, monit_config(n, dir.path(), port)).unwrap();
    // monit refuses a control file that others can read.
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o600)).unwrap();
    let args = vec![
        "-I".to_owned(),
        "-c".to_owned(),
        control.display().to_string(),
    ];
    let before = hits.health.load(Ordering::Relaxed);
    let mut proc = Proc::spawn("monit", &binary("monit", "monit"), &args, dir.path());
    // Started: every target has been checked once (its first cycle may take long).
    let started = support::poll_until(Duration::from_secs(120), || {
        hits.health.load(Ordering::Relaxed) >= before + n
    })
    .await;
    if started.is_err() || !proc.alive() {
        let log = proc.log();
        proc.kill().await;
        return (None, format!("did not start: {log}"), 0.0);
    }
    tokio::time::sleep(warmup).await;
    let h0 = hits.health.load(Ordering::Relaxed);
    let (mut m, self_cpu) = measure(&[&proc], window).await;
    let checks = (hits.health.load(Ordering::Relaxed) - h0) as f64 / window.as_secs_f64();
    m.iter_mut().for_each(|m| m.rate = checks);
    let alive = proc.alive();
    proc.kill().await;
    let log = std::fs::read_to_string(dir.path().join("monit.log")).unwrap_or_default();
    let failed = log.lines().filter(|l| l.contains("failed")).count();
    let note = format!(
        "checks answered {checks:.1}/s (expected {n}/s), alive to the end: {alive}, failed checks in its log {failed}, this bench process (HTTP server) CPU {self_cpu:.2}%"
    );
    (m.pop(), note, checks)
}

async fn run_rearguard(
    side: &'static str,
    bin: &Path,
    n: usize,
    base: &str,
    hits: &Hits,
    warmup: Duration,
    window: Duration,
) -> (Option<Measured>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("links/releases/v1")).unwrap();
    for i in 0..n {
        std::os::unix::fs::symlink(
            "releases/v1",
            dir.path().join("links").join(format!("current{i}")),
        )
        .unwrap();
    }
    let config = dir.path().join("rearguard.toml");
    std::fs::write(&config, rearguard_config(n, dir.path(), base)).unwrap();
    let args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ];
    let before = hits.health.load(Ordering::Relaxed);
    let mut proc = Proc::spawn(side, bin, &args, dir.path());
    // Started: every probe has reached the server once.
    let started = support::poll_until(Duration::from_secs(60), || {
        hits.health.load(Ordering::Relaxed) >= before + n
    })
    .await;
    if started.is_err() || !proc.alive() {
        let log = proc.log();
        proc.kill().await;
        return (None, format!("did not start: {log}"));
    }
    tokio::time::sleep(warmup).await;
    let h0 = hits.health.load(Ordering::Relaxed);
    let (mut m, self_cpu) = measure(&[&proc], window).await;
    let probes = (hits.health.load(Ordering::Relaxed) - h0) as f64 / window.as_secs_f64();
    m.iter_mut().for_each(|m| m.rate = probes);
    let alive = proc.alive();
    let log = proc.log();
    proc.kill().await;
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    let incidents = log.lines().filter(|l| l.contains("incident")).count();
    let note = format!(
        "probes answered {probes:.1}/s (expected {n}/s), alive to the end: {alive}, log lines {} (warn/error {warnings}, mentioning an incident {incidents}), this bench process (HTTP server) CPU {self_cpu:.2}%",
        log.lines().count()
    );
    (m.pop(), note)
}

/// How many targets Prometheus sees as up, from its own API ("?" if it cannot say).
async fn targets_up(client: &reqwest::Client, prom_url: &str) -> String {
    let body = match client
        .get(format!("{prom_url}/api/v1/query"))
        .query(&[("query", "count(up{job=\"fleet\"} == 1)")])
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    body.split("\"value\":[")
        .nth(1)
        .and_then(|v| v.split('"').nth(1))
        .unwrap_or("?")
        .to_owned()
}

async fn run_stack(
    n: usize,
    server: &str,
    hits: &Hits,
    warmup: Duration,
    window: Duration,
) -> (Option<(Measured, Measured)>, String) {
    let client = rearguard::http::client();
    let am_dir = tempfile::tempdir().expect("temp dir");
    let am_port = free_port();
    std::fs::write(
        am_dir.path().join("alertmanager.yml"),
        format!(
            "route:\n  receiver: hook\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://{server}/hook\n"
        ),
    )
    .unwrap();
    let am_args = vec![
        format!(
            "--config.file={}",
            am_dir.path().join("alertmanager.yml").display()
        ),
        format!("--storage.path={}", am_dir.path().join("data").display()),
        format!("--web.listen-address=127.0.0.1:{am_port}"),
        "--cluster.listen-address=".to_owned(),
    ];
    let am = Proc::spawn(
        "alertmanager",
        &binary("prometheus-alertmanager", "prometheus-alertmanager"),
        &am_args,
        am_dir.path(),
    );
    wait_ready(&client, &format!("http://127.0.0.1:{am_port}/-/ready"), &am).await;

    let prom_dir = tempfile::tempdir().expect("temp dir");
    let prom_port = free_port();
    std::fs::write(prom_dir.path().join("rules.yml"), RULES).unwrap();
    std::fs::write(
        prom_dir.path().join("prometheus.yml"),
        prometheus_config(n, server, &format!("127.0.0.1:{am_port}")),
    )
    .unwrap();
    let prom_args = vec![
        format!(
            "--config.file={}",
            prom_dir.path().join("prometheus.yml").display()
        ),
        format!(
            "--storage.tsdb.path={}",
            prom_dir.path().join("data").display()
        ),
        format!("--web.listen-address=127.0.0.1:{prom_port}"),
        "--storage.tsdb.retention.time=1h".to_owned(),
    ];
    let prom = Proc::spawn(
        "prometheus",
        &binary("prometheus", "prometheus"),
        &prom_args,
        prom_dir.path(),
    );
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    wait_ready(&client, &format!("{prom_url}/-/ready"), &prom).await;
    // Started: every target has been scraped and is up.
    let all_up = support::poll_until_async(Duration::from_secs(60), || async {
        targets_up(&client, &prom_url).await == n.to_string()
    })
    .await;
    if all_up.is_err() {
        println!(
            "  not all {n} targets up within 60 s (up: {}); measuring anyway",
            targets_up(&client, &prom_url).await
        );
    }
    tokio::time::sleep(warmup).await;
    let m0 = hits.metrics.load(Ordering::Relaxed);
    let (mut m, self_cpu) = measure(&[&prom, &am], window).await;
    let scrapes = (hits.metrics.load(Ordering::Relaxed) - m0) as f64 / window.as_secs_f64();
    let up = targets_up(&client, &prom_url).await;
    let (mut prom, mut am) = (prom, am);
    let alive = prom.alive() && am.alive();
    prom.kill().await;
    am.kill().await;
    let am_m = m.pop().unwrap();
    let prom_m = m.pop().unwrap();
    let note = format!(
        "scrapes answered {scrapes:.1}/s (expected {n}/s), targets up {up} of {n}, firing webhooks {}, alive to the end: {alive}, this bench process (HTTP server) CPU {self_cpu:.2}%",
        hits.firing.load(Ordering::Relaxed)
    );
    (Some((prom_m, am_m)), note)
}

async fn bench(ns: Vec<usize>, sides: Vec<String>, warmup: Duration, window: Duration) -> Vec<Row> {
    let side = |name: &str| sides.iter().any(|s| s == name);
    let before_bin = std::env::var_os("FOOTPRINT_BEFORE").map(PathBuf::from);
    let this_bin = std::env::var_os("FOOTPRINT_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_rearguard")),
        PathBuf::from,
    );
    let hits = Arc::new(Hits::default());
    let app = Router::new()
        .route("/health/{i}", get(health))
        .route("/metrics/{i}", get(metrics))
        .route("/hook", post(hook))
        .with_state(Arc::clone(&hits));
    let server = support::serve(app).await;
    let addr = server.addr.to_string();
    let base = format!("http://{addr}");
    let mut rows = Vec::new();
    for n in ns {
        let t = Instant::now();
        let (rearguard, rearguard_note) = if side("rearguard") {
            run_rearguard("rearguard", &this_bin, n, &base, &hits, warmup, window).await
        } else {
            (None, "skipped (FOOTPRINT_SIDES)".to_owned())
        };
        println!("N = {n}, rearguard ({:.0} s):", t.elapsed().as_secs_f64());
        if let Some(m) = &rearguard {
            println!("{}", describe(m));
        }
        println!("  {rearguard_note}");
        let before = match before_bin.as_deref() {
            Some(bin) if side("before") => {
                let t = Instant::now();
                let (m, note) = run_rearguard("before", bin, n, &base, &hits, warmup, window).await;
                println!(
                    "N = {n}, before: {} ({:.0} s):",
                    bin.display(),
                    t.elapsed().as_secs_f64()
                );
                if let Some(m) = &m {
                    println!("{}", describe(m));
                }
                println!("  {note}");
                m
            }
            _ => None,
        };
        let t = Instant::now();
        let (stack, stack_note) = if side("prometheus") {
            run_stack(n, &addr, &hits, warmup, window).await
        } else {
            (None, "skipped (FOOTPRINT_SIDES)".to_owned())
        };
        println!(
            "N = {n}, Prometheus + Alertmanager ({:.0} s):",
            t.elapsed().as_secs_f64()
        );
        if let Some((p, a)) = &stack {
            println!("{}\n{}", describe(p), describe(a));
        }
        println!("  {stack_note}");
        let t = Instant::now();
        let (monit, monit_note, monit_rate) = if side("monit") {
            run_monit(n, server.addr.port(), &hits, warmup, window).await
        } else {
            (None, "skipped (FOOTPRINT_SIDES)".to_owned(), 0.0)
        };
        println!("N = {n}, monit ({:.0} s):", t.elapsed().as_secs_f64());
        if let Some(m) = &monit {
            println!("{}", describe(m));
        }
        println!("  {monit_note}");
        rows.push(Row {
            n,
            rearguard,
            rearguard_note,
            before,
            stack,
            stack_note,
            monit,
            monit_note,
            monit_rate,
        });
    }
    drop(server);
    rows
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let env_secs = |key: &str, default: u64| {
        Duration::from_secs(
            std::env::var(key)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default),
        )
    };
    let warmup = env_secs("WARMUP", 10);
    let window = env_secs("MEASURE", 30);
    let ns: Vec<usize> = std::env::var("FOOTPRINT_N")
        .unwrap_or_else(|_| "1,100,1000".to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sides: Vec<String> = std::env::var("FOOTPRINT_SIDES")
        .unwrap_or_else(|_| "rearguard,prometheus,monit".to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .collect();
    let rows = rt.block_on(bench(ns, sides, warmup, window));
    drop(rt);

    println!();
    println!(
        "| N | rearguard RSS median / max | rearguard CPU | Prometheus RSS median / max | Prometheus CPU | Alertmanager RSS median / max | Alertmanager CPU | Prometheus + Alertmanager RSS median | Prometheus + Alertmanager CPU |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let rg = r.rearguard.as_ref().map_or("- | -".to_owned(), |m| {
            format!(
                "{} / {} | {:.2}%",
                mb(m.rss_median_kb),
                mb(m.rss_max_kb),
                m.cpu_pct
            )
        });
        let st = r
            .stack
            .as_ref()
            .map_or("- | - | - | - | - | -".to_owned(), |(p, a)| {
                format!(
                    "{} / {} | {:.2}% | {} / {} | {:.2}% | {} | {:.2}%",
                    mb(p.rss_median_kb),
                    mb(p.rss_max_kb),
                    p.cpu_pct,
                    mb(a.rss_median_kb),
                    mb(a.rss_max_kb),
                    a.cpu_pct,
                    mb(p.rss_median_kb + a.rss_median_kb),
                    p.cpu_pct + a.cpu_pct
                )
            });
        println!("| {} | {rg} | {st} |", r.n);
        if r.rearguard.is_none() {
            println!("  rearguard: {}", r.rearguard_note);
        }
        if r.stack.is_none() {
            println!("  stack: {}", r.stack_note);
        }
    }
    println!();
    print_beside_monit(&rows);
    println!(
        "\nwarm-up {} s, window {} s, whole run {:.0} s",
        warmup.as_secs(),
        window.as_secs(),
        started.elapsed().as_secs_f64()
    );
}

/// The table beside monit: resident set (median over the window, and the peak since the
/// start, VmHWM) and CPU of rearguard, of the `FOOTPRINT_BEFORE` binary when it ran, and
/// of monit, then the issue's goals judged on this run.
fn print_beside_monit(rows: &[Row]) {
    let cell = |m: Option<&Measured>| {
        m.map_or("- | -".to_owned(), |m| {
            format!(
                "{} / {} | {:.2}%",
                mb(m.rss_median_kb),
                mb(m.hwm_kb),
                m.cpu_pct
            )
        })
    };
    println!(
        "| N | rearguard RSS median / peak | rearguard CPU | before RSS median / peak | before CPU | monit RSS median / peak | monit CPU | monit checks per second (of N) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.1} |",
            r.n,
            cell(r.rearguard.as_ref()),
            cell(r.before.as_ref()),
            cell(r.monit.as_ref()),
            r.monit_rate
        );
        if r.monit.is_none() {
            println!("  monit: {}", r.monit_note);
        }
    }
    for r in rows {
        let (Some(rg), Some(m)) = (&r.rearguard, &r.monit) else {
            continue;
        };
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        if r.n == 1 {
            let ok = rg.hwm_kb <= m.hwm_kb && rg.hwm_kb <= 8 * 1024;
            println!(
                "goal at N = 1, peak at most monit's and 8 MB: {} ({} against monit's {})",
                verdict(ok),
                mb(rg.hwm_kb),
                mb(m.hwm_kb)
            );
        } else if r.n == 1000 {
            let ok = rg.rss_max_kb <= 20 * 1024 && rg.cpu_pct <= m.cpu_pct;
            // monit's cycle outgrows 1 s at this size, so CPU per check is shown too.
            let per_check = |m: &Measured| m.cpu_pct / 100.0 * 1e6 / m.rate.max(1.0);
            println!(
                "goal at N = 1000, at most 20 MB and no more CPU than monit: {} ({} max, {:.2}% against monit's {:.2}%; {:.0} against {:.0} us of CPU per check)",
                verdict(ok),
                mb(rg.rss_max_kb),
                rg.cpu_pct,
                m.cpu_pct,
                per_check(rg),
                per_check(m)
            );
        }
    }
}
