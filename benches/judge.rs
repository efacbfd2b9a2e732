//! Judges against the runbook's threshold rules on the same generated deploys (issue
//! "statistical judges", "Measured, in a benchmark"): 1,000 healthy deploys and 1,000
//! bad ones (error ratio x2 or x3, p95 +30% or +50%), each an hour of readings every
//! 15 s before the change and an hour after, from a fixed seed. For each rule: the share
//! of healthy deploys it fires on after the change, the share of bad deploys (of the kind
//! it watches) it catches within the hour, and the median time from the change to its
//! firing. The method and the results are in `BENCHMARKS.md` ("Judges").
//!
//! The traces (per deploy; every draw from one xorshift generator seeded with 2026):
//! traffic log-uniform from 20 to 2,000 requests a minute; an error ratio log-uniform
//! from 0.2% to 3%, each 15 s slice's ratio wandering by a lognormal factor (sigma 0.2:
//! overdispersion, as real traffic has) and its errors binomial; a rate reading sums the
//! last 4 slices (`increase(...[1m])`). p95 around a level uniform from 100 ms to
//! 190 ms (the runbook's bar is 200 ms), with a slow AR(1) drift (sd 3%) and per-reading
//! noise of 5% plus 0.5/sqrt(requests in the window).
//!
//! `harness = false`: it does nothing unless cargo runs it with `--bench`.

use rearguard::config::{Config, Format, load_str};
use rearguard::engine::{Effect, Engine, Input, Measure, Phase, Reading, ReadingState, Ts};

const DEPLOYS: usize = 1000;
const STEP_S: u64 = 15;
const HOUR_S: u64 = 3600;
const T0: u64 = 1_795_305_600;

const CONFIG: &str = r#"
[[target]]
name = "shop"

[[signal]]
name = "errors"
target = "shop"
type = "prometheus"
url = "http://prometheus:9090"
error_rate = { requests = 'http_requests_total', errors = 'code=~"5.."' }
window = "1m"
interval = "15s"

[[signal]]
name = "p95"
target = "shop"
type = "prometheus"
url = "http://prometheus:9090"
latency = { histogram = "http_request_duration_seconds_bucket" }
window = "1m"
interval = "15s"

[[rule]]
name = "runbook: errors > 5% for 5m"
signal = "errors"
when = "> 5%"
for = "5m"
min_requests = 20

[[rule]]
name = "judge: errors > baseline (99%, 1.5x)"
signal = "errors"
when = "> baseline"
confidence = "99%"
min_effect = "1.5x"
baseline_window = "1h"

[[rule]]
name = "runbook: p95 > 200ms for 10m"
signal = "p95"
when = "> 200ms"
for = "10m"

[[rule]]
name = "runbook: p95 > 1.5x baseline for 10m"
signal = "p95"
when = "> 1.5x baseline"
for = "10m"
baseline_window = "1h"

[[rule]]
name = "judge: p95 > baseline (99%, 1.2x)"
signal = "p95"
when = "> baseline"
confidence = "99%"
min_effect = "1.2x"
baseline_window = "1h"
"#;

struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-12);
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * self.uniform()).cos()
    }

    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n < 50 {
            return (0..n).filter(|_| self.uniform() < p).count() as u64;
        }
        let (m, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        (m + sd * self.normal()).round().clamp(0.0, n as f64) as u64
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    Errors(f64),
    Latency(f64),
}

/// One deploy's readings, in time order: (seconds from the start, signal, state).
fn trace(rng: &mut Rng, fault: Fault) -> Vec<(u64, usize, ReadingState)> {
    let per_minute = 20.0 * 100f64.powf(rng.uniform());
    let ratio = 0.002 * 15f64.powf(rng.uniform());
    let level = 0.100 + 0.090 * rng.uniform();
    let mut out = Vec::new();
    let mut slices: Vec<(u64, u64)> = Vec::new();
    let mut drift = 0.0;
    for s in (STEP_S..=2 * HOUR_S).step_by(STEP_S as usize) {
        let after = s > HOUR_S;
        let n = rng.binomial((per_minute * 4.0) as u64, 0.0625);
        let mut p = ratio * (0.2 * rng.normal()).exp();
        if let (true, Fault::Errors(x)) = (after, fault) {
            p *= x;
        }
        slices.push((rng.binomial(n, p.min(1.0)), n));
        let window = &slices[slices.len().saturating_sub(4)..];
        let errors: u64 = window.iter().map(|w| w.0).sum();
        let requests: u64 = window.iter().map(|w| w.1).sum();
        out.push((
            s,
            0,
            ReadingState::Value(Measure::Rate {
                errors: errors as f64,
                requests: requests as f64,
            }),
        ));
        drift = 0.995 * drift + 0.003 * rng.normal();
        let noise = (0.05 + 0.5 / (requests.max(1) as f64).sqrt()) * rng.normal();
        let mut p95 = level * (drift + noise).exp();
        if let (true, Fault::Latency(x)) = (after, fault) {
            p95 *= x;
        }
        out.push((s, 1, ReadingState::Value(Measure::Number(p95))));
    }
    out
}

/// When each rule fired after the change, in seconds after it (`None`: it did not
/// fire within the hour). A rule already firing at the change counts as firing at once.
fn run(cfg: &Config, readings: Vec<(u64, usize, ReadingState)>) -> Vec<Option<u64>> {
    let mut engine = Engine::new(cfg.clone());
    let mut fired = vec![None; cfg.rules.len()];
    let at = |s: u64| Ts((T0 + s) * 1000);
    engine.step(
        Input::Change {
            target: 0,
            revision: "v1".into(),
            at: at(0),
        },
        at(0),
    );
    let mut changed = false;
    for (s, signal, state) in readings {
        if !changed && s > HOUR_S {
            changed = true;
            let change = Input::Change {
                target: 0,
                revision: "v2".into(),
                at: at(HOUR_S),
            };
            engine.step(change, at(HOUR_S));
            for (r, f) in fired.iter_mut().enumerate() {
                if engine.rule_phase(r) == Phase::Firing {
                    *f = Some(0);
                }
            }
        }
        let effects = engine.step(Input::Reading(Reading { signal, state }), at(s));
        for e in effects {
            if let Effect::RuleChanged { rule, transition } = e
                && changed
                && transition.to == Phase::Firing
                && fired[rule].is_none()
            {
                fired[rule] = Some(s - HOUR_S);
            }
        }
    }
    fired
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    (!v.is_empty()).then(|| v[v.len() / 2])
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let cfg = load_str(
        CONFIG,
        Format::Toml,
        std::iter::empty(),
        std::path::Path::new("."),
    )
    .expect("the benchmark's configuration is valid");
    let mut rng = Rng(2026);
    let rules = cfg.rules.len();
    let (mut healthy, mut caught) = (vec![0usize; rules], vec![0usize; rules]);
    let mut times: Vec<Vec<u64>> = vec![Vec::new(); rules];
    let mut bad_of_kind = [0usize; 2];
    for i in 0..2 * DEPLOYS {
        let fault = match (i < DEPLOYS, i % 4) {
            (true, _) => Fault::None,
            (false, 0) => Fault::Errors(2.0),
            (false, 1) => Fault::Errors(3.0),
            (false, 2) => Fault::Latency(1.3),
            (false, _) => Fault::Latency(1.5),
        };
        let fired = run(&cfg, trace(&mut rng, fault));
        for (r, f) in fired.into_iter().enumerate() {
            let watches_errors = cfg.rules[r].signal == 0;
            match (fault, f) {
                (Fault::None, Some(_)) => healthy[r] += 1,
                (Fault::Errors(_), Some(t)) if watches_errors => {
                    caught[r] += 1;
                    times[r].push(t);
                }
                (Fault::Latency(_), Some(t)) if !watches_errors => {
                    caught[r] += 1;
                    times[r].push(t);
                }
                _ => {}
            }
        }
        match fault {
            Fault::Errors(_) => bad_of_kind[0] += 1,
            Fault::Latency(_) => bad_of_kind[1] += 1,
            Fault::None => {}
        }
    }
    println!(
        "| rule | healthy deploys fired | bad deploys caught within 1h | median time to decision |"
    );
    println!("|---|---|---|---|");
    for r in 0..rules {
        let kind = bad_of_kind[usize::from(cfg.rules[r].signal != 0)];
        let t = median(times[r].clone())
            .map_or("-".to_owned(), |s| format!("{}m{:02}s", s / 60, s % 60));
        println!(
            "| {} | {:.1}% ({}/{DEPLOYS}) | {:.1}% ({}/{kind}) | {t} |",
            cfg.rules[r].name,
            100.0 * healthy[r] as f64 / DEPLOYS as f64,
            healthy[r],
            100.0 * caught[r] as f64 / kind as f64,
            caught[r],
        );
    }
}
