//! Sources: what rearguard reads. Each variant of [`Source`] turns one configured signal
//! into readings in one of the four states the engine knows; `change` observes the
//! current revision of a target. `alertmanager` is received and `cgroup_oom` watched
//! rather than sampled: the daemon runs them itself.
//!
//! A source only measures. It never decides whether a reading is a breach (the engine
//! does), never retries on its own, and never lets a failure of the watched service look
//! like a failure of the watchdog or the other way round: what the service does wrong is
//! a failed check, what keeps us from looking is a source error.

pub mod alertmanager;
pub mod cgroup_oom;
pub mod change;
pub mod exec;
pub mod http_probe;
pub mod kube_deployment;
pub mod kube_pods;
pub mod prometheus;
pub mod scrape;

use crate::config::{Signal, SourceSpec};
use crate::engine::ReadingState;

/// The longest detail text a reading carries, in bytes.
pub const DETAIL_LIMIT: usize = 300;

/// A configured signal's source, ready to be sampled.
#[derive(Debug, Clone)]
pub enum Source {
    HttpProbe(http_probe::HttpProbe),
    Exec(exec::ExecCheck),
    Prometheus(prometheus::PrometheusSource),
    Scrape(scrape::ScrapeSource),
}

/// A source type the configuration accepts but this build cannot sample: types not built
/// yet, push sources (`alertmanager`), which the daemon receives instead, and watched
/// sources (`cgroup_oom`, see [`cgroup_oom::OomWatch`]), which the daemon watches.
#[derive(Debug, Clone, thiserror::Error)]
#[error("source type {type_name:?} is not available in this version of rearguard")]
pub struct UnsupportedSource {
    /// The `type` of the signal in the configuration.
    pub type_name: &'static str,
}

impl Source {
    /// The source of one signal. HTTP sources share `client` (see [`crate::http::client`]).
    pub fn new(signal: &Signal, client: &reqwest::Client) -> Result<Source, UnsupportedSource> {
        match &signal.source {
            SourceSpec::HttpProbe(spec) => Ok(Source::HttpProbe(http_probe::HttpProbe::new(
                spec,
                signal.timeout,
                client,
            ))),
            SourceSpec::Exec(spec) => Ok(Source::Exec(exec::ExecCheck::new(spec, signal.timeout))),
            SourceSpec::Prometheus(spec) => Ok(Source::Prometheus(
                prometheus::PrometheusSource::new(spec, signal.timeout),
            )),
            SourceSpec::Scrape(spec) => Ok(Source::Scrape(scrape::ScrapeSource::new(
                spec,
                signal.timeout,
            ))),
            // kube_pods is watched, not sampled: the daemon runs `kube_pods::watch`.
            other @ (SourceSpec::Alertmanager(_)
            | SourceSpec::CgroupOom { .. }
            | SourceSpec::KubePods(_)) => Err(UnsupportedSource {
                type_name: other.type_name(),
            }),
        }
    }

    /// Takes one reading, with a safety net one second past the source's own timeout: a
    /// source that overruns it anyway gives a source error instead of stalling its
    /// sampler. What the daemon and `record` call.
    pub async fn sample_within(&self, timeout: std::time::Duration) -> ReadingState {
        let net = timeout + std::time::Duration::from_secs(1);
        tokio::time::timeout(net, self.sample())
            .await
            .unwrap_or_else(|_| {
                ReadingState::SourceError(format!(
                    "sample did not finish within {}",
                    crate::config::units::format_duration(timeout)
                ))
            })
    }

    /// Takes one reading. Bounded by the signal's timeout; never fails: every outcome is
    /// one of the reading states.
    pub async fn sample(&self) -> ReadingState {
        match self {
            Source::HttpProbe(probe) => probe.sample().await,
            Source::Exec(check) => check.sample().await,
            Source::Prometheus(p) => p.sample().await,
            Source::Scrape(s) => s.sample().await,
        }
    }
}

/// `text` cut to at most `limit` bytes on a character boundary, with `...` when cut.
pub(crate) fn clip(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The end of `text`, at most `limit` bytes on a character boundary, with `...` in front
/// when cut: for command output, where the error is usually last.
pub(crate) fn clip_start(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut start = text.len() - limit.saturating_sub(3);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::{clip, clip_start};

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_character_boundary() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdefgh", 6), "abc...");
        assert_eq!(clip("ééééé", 6), "é...");
        assert_eq!(clip_start("abcdefgh", 6), "...fgh");
        assert_eq!(clip_start("ééééé", 6), "...é");
    }
}
