//! `[[signal]]` and its sources: what each signal reads (HTTP probe, command, Prometheus
//! query, scrape, Alertmanager webhook, cgroup OOM kills, Kubernetes pod events), its
//! target (resolved by name) and its timings. It must not look at rules: what a signal's
//! readings mean is decided in `rules.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use super::ctx::{Ctx, each_item, kube_name};
use crate::config::raw::{RawAuth, RawErrorRate, RawLatency, RawSecret, RawSignal, RawTls};
use crate::config::selector;
use crate::config::{
    AlertmanagerSpec, CgroupOomSpec, ExecSpec, HttpAuth, HttpProbeSpec, KubePodsSpec, PodEvent,
    PromQuery, PrometheusSpec, ScrapeQuery, ScrapeSpec, Signal, SourceSpec, TlsSpec,
};
use crate::kube::Access;

/// Every signal whose item, target and source are valid, in file order, its target
/// resolved through `target_index` (each target name's position in the file).
pub(super) fn signals(
    ctx: &mut Ctx,
    raws: &[Option<RawSignal>],
    target_index: &HashMap<&str, usize>,
    default_blind_after: Duration,
    kube_access: &Access,
) -> Vec<Signal> {
    each_item(raws, |i, raw| {
        signal(ctx, i, raw, target_index, default_blind_after, kube_access)
    })
}

fn signal(
    ctx: &mut Ctx,
    i: usize,
    raw: &RawSignal,
    target_index: &HashMap<&str, usize>,
    default_blind_after: Duration,
    kube_access: &Access,
) -> Option<Signal> {
    let p = format!("signal[{i}]");
    let common = raw.common();
    let Some(target) = target_index.get(common.target).copied() else {
        ctx.err(
            format!("{p}.target"),
            format!("no target is named {:?}", common.target),
        );
        return None;
    };
    let interval = ctx.positive_duration(
        format!("{p}.interval"),
        common.interval,
        Duration::from_secs(10),
    );
    let timeout = ctx.positive_duration(
        format!("{p}.timeout"),
        common.timeout,
        Duration::from_secs(5).min(interval),
    );
    let blind_after = ctx.positive_duration(
        format!("{p}.blind_after"),
        common.blind_after,
        default_blind_after,
    );
    let source = source(ctx, &p, raw, kube_access)?;
    Some(Signal {
        name: common.name.to_owned(),
        target,
        interval,
        timeout,
        blind_after,
        source,
    })
}

fn source(ctx: &mut Ctx, p: &str, raw: &RawSignal, kube_access: &Access) -> Option<SourceSpec> {
    Some(match raw {
        RawSignal::HttpProbe {
            url,
            method,
            expect_status,
            body_contains,
            json_pointer,
            json_equals,
            ..
        } => {
            let url = ctx.url(format!("{p}.url"), url);
            let method = ctx.method(format!("{p}.method"), method, reqwest::Method::GET);
            let expect_status = ctx.statuses(format!("{p}.expect_status"), expect_status, &[200]);
            SourceSpec::HttpProbe(HttpProbeSpec {
                url: url?,
                method,
                expect_status,
                body_contains: body_contains.clone(),
                json: json_check(ctx, p, json_pointer, json_equals),
            })
        }
        RawSignal::Exec {
            command, env, cwd, ..
        } => SourceSpec::Exec(ExecSpec {
            command: ctx.argv(&format!("{p}.command"), command, false),
            env: env.clone(),
            cwd: cwd.as_ref().map(PathBuf::from),
        }),
        RawSignal::Prometheus {
            url,
            error_rate,
            latency,
            query,
            window,
            auth,
            tls,
            ..
        } => {
            let url = ctx.url(format!("{p}.url"), url);
            let query = prom_query(ctx, p, error_rate, latency, query)?;
            let (window, auth, tls) = endpoint(ctx, p, window, auth, tls);
            SourceSpec::Prometheus(PrometheusSpec {
                url: url?,
                query,
                window,
                auth,
                tls,
            })
        }
        RawSignal::Scrape {
            url,
            error_rate,
            latency,
            value,
            window,
            auth,
            tls,
            ..
        } => {
            let url = ctx.url(format!("{p}.url"), url);
            let query = scrape_query(ctx, p, error_rate, latency, value)?;
            let (window, auth, tls) = endpoint(ctx, p, window, auth, tls);
            SourceSpec::Scrape(ScrapeSpec {
                url: url?,
                query,
                window,
                auth,
                tls,
            })
        }
        RawSignal::Alertmanager {
            matchers, token, ..
        } => SourceSpec::Alertmanager(alertmanager(ctx, p, matchers, token)?),
        RawSignal::CgroupOom {
            cgroup,
            unit,
            slice,
            ..
        } => SourceSpec::CgroupOom(cgroup_oom(ctx, p, cgroup, unit, slice)?),
        RawSignal::KubePods {
            namespace,
            selector,
            event,
            ..
        } => SourceSpec::KubePods(kube_pods(ctx, p, namespace, selector, event, kube_access)),
    })
}

/// An HTTP probe's `json_pointer` and `json_equals`, which go together.
fn json_check(
    ctx: &mut Ctx,
    p: &str,
    json_pointer: &Option<String>,
    json_equals: &Option<serde_json::Value>,
) -> Option<(String, serde_json::Value)> {
    match (json_pointer, json_equals) {
        (None, None) => None,
        (Some(ptr), Some(v)) => {
            if !ptr.is_empty() && !ptr.starts_with('/') {
                ctx.err(
                    format!("{p}.json_pointer"),
                    format!("expected a JSON pointer like \"/status\", got {ptr:?}"),
                );
            }
            Some((ptr.clone(), v.clone()))
        }
        (Some(_), None) => {
            ctx.err(
                format!("{p}.json_equals"),
                "json_pointer needs json_equals: the value the field must have",
            );
            None
        }
        (None, Some(_)) => {
            ctx.err(
                format!("{p}.json_pointer"),
                "json_equals needs json_pointer: which field to compare, like \"/status\"",
            );
            None
        }
    }
}

/// A prometheus signal's query: a built-in one, or its own PromQL `query`.
fn prom_query(
    ctx: &mut Ctx,
    p: &str,
    error_rate: &Option<RawErrorRate>,
    latency: &Option<RawLatency>,
    query: &Option<String>,
) -> Option<PromQuery> {
    let choice = metric(
        ctx,
        p,
        "prometheus",
        error_rate,
        latency,
        ("query", query.is_some()),
    )?;
    Some(match choice {
        Metric::ErrorRate(requests, errors) => PromQuery::ErrorRate { requests, errors },
        Metric::Latency(histogram, quantile) => PromQuery::Latency {
            histogram,
            quantile,
        },
        Metric::Other => {
            let q = query.clone().unwrap_or_default();
            if q.trim().is_empty() {
                ctx.err(format!("{p}.query"), "must be a PromQL expression");
            }
            PromQuery::Expr(q)
        }
    })
}

/// A scrape signal's query: a built-in one, or the series selector of its `value`.
fn scrape_query(
    ctx: &mut Ctx,
    p: &str,
    error_rate: &Option<RawErrorRate>,
    latency: &Option<RawLatency>,
    value: &Option<String>,
) -> Option<ScrapeQuery> {
    let choice = metric(
        ctx,
        p,
        "scrape",
        error_rate,
        latency,
        ("value", value.is_some()),
    )?;
    Some(match choice {
        Metric::ErrorRate(requests, errors) => ScrapeQuery::ErrorRate { requests, errors },
        Metric::Latency(histogram, quantile) => ScrapeQuery::Latency {
            histogram,
            quantile,
        },
        Metric::Other => {
            let text = value.clone().unwrap_or_default();
            match selector::parse_selector(&text) {
                Ok(sel) => ScrapeQuery::Value(sel),
                Err(m) => {
                    ctx.err(format!("{p}.value"), m);
                    return None;
                }
            }
        }
    })
}

fn alertmanager(
    ctx: &mut Ctx,
    p: &str,
    matchers: &BTreeMap<String, String>,
    token: &RawSecret,
) -> Option<AlertmanagerSpec> {
    if matchers.is_empty() {
        ctx.err(
            format!("{p}.matchers"),
            "must name at least one label, e.g. { alertname = \"CheckoutErrors\" }: an empty matcher would take every alert",
        );
    }
    let token = ctx.secret(format!("{p}.token"), token)?;
    Some(AlertmanagerSpec {
        matchers: matchers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        token,
    })
}

fn kube_pods(
    ctx: &mut Ctx,
    p: &str,
    namespace: &str,
    selector: &str,
    event: &str,
    kube_access: &Access,
) -> KubePodsSpec {
    let event = match event {
        "oom_killed" => PodEvent::OomKilled,
        "crash_loop" => PodEvent::CrashLoop,
        "not_ready" => PodEvent::NotReady,
        "evicted" => PodEvent::Evicted,
        _ => {
            ctx.err(
                format!("{p}.event"),
                format!("expected \"oom_killed\", \"crash_loop\", \"not_ready\" or \"evicted\", got {event:?}"),
            );
            PodEvent::OomKilled
        }
    };
    kube_name(ctx, format!("{p}.namespace"), namespace);
    if let Err(e) = crate::kube::check_selector(selector) {
        ctx.err(format!("{p}.selector"), e);
    }
    KubePodsSpec {
        access: kube_access.clone(),
        namespace: namespace.to_owned(),
        selector: selector.to_owned(),
        event,
    }
}

/// The built-in query chosen in a prometheus or scrape signal.
enum Metric {
    ErrorRate(selector::Selector, Vec<selector::Matcher>),
    Latency(selector::Selector, f64),
    /// The type's own third key: `query` for prometheus, `value` for scrape.
    Other,
}

/// The built-in query of a prometheus or scrape signal: exactly one of `error_rate`,
/// `latency` or the type's own third key (`other`, with whether it is set).
fn metric(
    ctx: &mut Ctx,
    p: &str,
    kind: &str,
    error_rate: &Option<RawErrorRate>,
    latency: &Option<RawLatency>,
    other: (&str, bool),
) -> Option<Metric> {
    let chosen = [error_rate.is_some(), latency.is_some(), other.1]
        .iter()
        .filter(|x| **x)
        .count();
    if chosen != 1 {
        ctx.err(
            p.to_owned(),
            format!(
                "a {kind} signal takes exactly one of `error_rate`, `latency` or `{}`",
                other.0
            ),
        );
        return None;
    }
    if let Some(e) = error_rate {
        let (requests, errors) = error_rate_query(ctx, p, e)?;
        return Some(Metric::ErrorRate(requests, errors));
    }
    if let Some(l) = latency {
        let (histogram, quantile) = latency_query(ctx, p, l)?;
        return Some(Metric::Latency(histogram, quantile));
    }
    Some(Metric::Other)
}

/// The window, credentials and TLS settings of a prometheus or scrape signal.
fn endpoint(
    ctx: &mut Ctx,
    p: &str,
    window: &Option<String>,
    auth: &Option<RawAuth>,
    tls: &Option<RawTls>,
) -> (Duration, Option<HttpAuth>, TlsSpec) {
    (
        ctx.positive_duration(format!("{p}.window"), window, Duration::from_secs(60)),
        http_auth(ctx, p, auth.as_ref()),
        tls_spec(ctx, tls.as_ref()),
    )
}

fn error_rate_query(
    ctx: &mut Ctx,
    p: &str,
    e: &RawErrorRate,
) -> Option<(selector::Selector, Vec<selector::Matcher>)> {
    let requests = selector::parse_selector(&e.requests)
        .map_err(|m| ctx.err(format!("{p}.error_rate.requests"), m))
        .ok();
    // The errors are the requests that also match these label matchers. A full
    // selector here is the most likely mistake, so it gets its own message.
    let looks_like_selector = e
        .errors
        .trim_start()
        .starts_with(|c: char| c.is_ascii_alphabetic())
        && e.errors
            .find('{')
            .is_some_and(|b| !e.errors[..b].contains(['=', '!', '~']));
    let errors = if looks_like_selector {
        ctx.err(
            format!("{p}.error_rate.errors"),
            format!(
                "expected label matchers that pick the errors out of `requests`, like 'code=~\"5..\"', got the selector {:?}",
                e.errors
            ),
        );
        None
    } else {
        selector::parse_matchers(&e.errors)
            .map_err(|m| ctx.err(format!("{p}.error_rate.errors"), m))
            .ok()
    };
    if errors.as_ref().is_some_and(|e| e.is_empty()) {
        ctx.err(
            format!("{p}.error_rate.errors"),
            "must select the errors, e.g. 'code=~\"5..\"'",
        );
        return None;
    }
    Some((requests?, errors?))
}

fn latency_query(ctx: &mut Ctx, p: &str, l: &RawLatency) -> Option<(selector::Selector, f64)> {
    let quantile = l.quantile.unwrap_or(0.95);
    if !(quantile > 0.0 && quantile < 1.0) {
        ctx.err(
            format!("{p}.latency.quantile"),
            format!("expected a quantile between 0 and 1 like 0.95, got {quantile}"),
        );
    }
    let histogram = selector::parse_selector(&l.histogram)
        .map_err(|m| ctx.err(format!("{p}.latency.histogram"), m))
        .ok()?;
    if !histogram.metric.ends_with("_bucket") {
        ctx.err(
            format!("{p}.latency.histogram"),
            format!(
                "expected the histogram's bucket series, e.g. \"{}_bucket\"",
                histogram.metric
            ),
        );
    }
    Some((histogram, quantile))
}

fn http_auth(ctx: &mut Ctx, p: &str, raw: Option<&RawAuth>) -> Option<HttpAuth> {
    let raw = raw?;
    match (&raw.bearer, &raw.username, &raw.password) {
        (Some(token), None, None) => ctx
            .secret(format!("{p}.auth.bearer"), token)
            .map(HttpAuth::Bearer),
        (None, Some(user), Some(password)) => ctx
            .secret(format!("{p}.auth.password"), password)
            .map(|password| HttpAuth::Basic {
                username: user.clone(),
                password,
            }),
        _ => {
            ctx.err(
                format!("{p}.auth"),
                "takes either `bearer`, or `username` with `password`",
            );
            None
        }
    }
}

fn tls_spec(ctx: &mut Ctx, raw: Option<&RawTls>) -> TlsSpec {
    raw.map_or_else(TlsSpec::default, |t| TlsSpec {
        ca_file: t.ca_file.as_ref().map(|f| ctx.base_dir.join(f)),
        insecure_skip_verify: t.insecure_skip_verify.unwrap_or(false),
    })
}

/// The cgroup of a `cgroup_oom` signal: a directory or a systemd unit, never both.
fn cgroup_oom(
    ctx: &mut Ctx,
    p: &str,
    cgroup: &Option<String>,
    unit: &Option<String>,
    slice: &Option<String>,
) -> Option<CgroupOomSpec> {
    match (cgroup, unit) {
        (Some(_), Some(_)) | (None, None) => {
            let which = if cgroup.is_some() { "both" } else { "neither" };
            ctx.err(
                p.to_owned(),
                format!("give exactly one of `cgroup` (a cgroup directory) and `unit` (a systemd unit, e.g. \"shop.service\"), got {which}"),
            );
            None
        }
        (Some(dir), None) => {
            if slice.is_some() {
                ctx.err(
                    format!("{p}.slice"),
                    "goes with `unit`; with `cgroup` the directory already says where the cgroup is",
                );
            }
            if !dir.starts_with('/') {
                ctx.err(
                    format!("{p}.cgroup"),
                    format!("expected an absolute path to a cgroup directory, e.g. \"/sys/fs/cgroup/system.slice/shop.service\", got {dir:?}"),
                );
                return None;
            }
            Some(CgroupOomSpec::Path(PathBuf::from(dir)))
        }
        (None, Some(unit)) => {
            const KINDS: [&str; 6] = [".service", ".scope", ".slice", ".socket", ".mount", ".swap"];
            let stem = KINDS.iter().find_map(|k| unit.strip_suffix(k));
            let good = stem.is_some_and(|s| !s.is_empty()) && !unit.contains('/');
            if !good {
                ctx.err(
                    format!("{p}.unit"),
                    format!("expected a systemd unit name with its type, e.g. \"shop.service\" (.service, .scope, .slice, .socket, .mount or .swap), got {unit:?}"),
                );
            }
            let slice = slice.clone().unwrap_or_else(|| "system.slice".to_owned());
            let slice_ok = slice
                .strip_suffix(".slice")
                .is_some_and(|s| !s.is_empty() && !s.contains('/'));
            if !slice_ok {
                ctx.err(
                    format!("{p}.slice"),
                    format!("expected a systemd slice name, e.g. \"system.slice\" or \"-.slice\" for the root, got {slice:?}"),
                );
            }
            (good && slice_ok).then(|| CgroupOomSpec::Unit {
                unit: unit.clone(),
                slice,
            })
        }
    }
}
