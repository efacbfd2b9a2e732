//! Sources: what rearguard reads. Each variant of [`Source`] turns one configured signal
//! into readings in one of the four states the engine knows; `change` observes the
//! current revision of a target. `alertmanager` is received and `cgroup_oom` watched
//! rather than sampled: the daemon runs them itself.
//!
//! A source only measures. It never decides whether a reading is a breach (the engine
//! does), never retries on its own, and never lets a failure of the watched service look
//! like a failure of the watchdog or the other way round: what the service does wrong is
//! a failed check, what keeps us from looking is a source error. What rearguard runs out
//! of itself (descriptors, memory, ports, processes: [`own_resource`]) keeps it from
//! looking, whatever the source.

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

/// What rearguard itself ran out of, when an error's chain says so: descriptors, memory
/// or buffers, local ports, processes. A reading that failed for such a reason is a
/// source error of rearguard's own (blind after `blind_after`), never a failed check of
/// the service: the daemon must not act on what was done to it.
pub(crate) fn own_resource(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(what) = io.raw_os_error().and_then(exhausted) {
                return Some(what);
            }
            // A wrapped error is not its own source: look inside it too.
            if let Some(what) = io.get_ref().and_then(|inner| own_resource(inner)) {
                return Some(what);
            }
        }
        next = e.source();
    }
    None
}

/// The local resource an OS error code says is exhausted, if it says one is.
fn exhausted(code: i32) -> Option<&'static str> {
    match code {
        libc::EMFILE => Some("too many open files in rearguard"),
        libc::ENFILE => Some("too many open files on the host"),
        libc::ENOMEM => Some("out of memory"),
        libc::ENOBUFS => Some("out of socket buffers"),
        libc::EADDRNOTAVAIL => Some("no local port free"),
        libc::EAGAIN => Some("out of processes or threads"),
        _ => None,
    }
}

/// A source error for a reading that `error` kept rearguard from taking, for lack of
/// `what` (see [`own_resource`]).
pub(crate) fn own_resource_error(what: &str, error: impl std::fmt::Display) -> ReadingState {
    let detail = format!("rearguard's own resources: {what}: {error}");
    ReadingState::SourceError(clip(&detail, DETAIL_LIMIT))
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
    use super::{Source, clip, clip_start, own_resource};
    use crate::engine::{Measure, ReadingState};

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_on_a_character_boundary() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdefgh", 6), "abc...");
        assert_eq!(clip("ééééé", 6), "é...");
        assert_eq!(clip_start("abcdefgh", 6), "...fgh");
        assert_eq!(clip_start("ééééé", 6), "...é");
    }

    #[derive(Debug)]
    struct Wrapper(std::io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("connect failed")
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn own_resources_are_found_anywhere_in_an_error_chain() {
        let os = std::io::Error::from_raw_os_error;
        let chained = Wrapper(os(libc::EMFILE));
        assert_eq!(
            own_resource(&chained),
            Some("too many open files in rearguard")
        );
        let wrapped = std::io::Error::other(Wrapper(os(libc::ENFILE)));
        assert_eq!(
            own_resource(&wrapped),
            Some("too many open files on the host")
        );
        assert_eq!(own_resource(&os(libc::ENOMEM)), Some("out of memory"));
        // What the service or the network does is not rearguard's own.
        for code in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
        ] {
            assert_eq!(own_resource(&Wrapper(os(code))), None, "{code}");
        }
        assert_eq!(own_resource(&std::io::Error::other("no os error")), None);
    }

    /// Set in the child process of the test below, which runs only that test.
    const OUT_OF_FILES_CHILD: &str = "REARGUARD_TEST_OUT_OF_FILES";

    /// Lowering the limit of open files is process-wide, so the test runs in a process of
    /// its own: this test binary again, with only this test.
    #[test]
    fn checks_rearguard_has_no_descriptor_for_are_source_errors_not_failed_checks() {
        if std::env::var_os(OUT_OF_FILES_CHILD).is_some() {
            out_of_files_child();
            return;
        }
        let name = "source::tests::checks_rearguard_has_no_descriptor_for_are_source_errors_not_failed_checks";
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new(exe)
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(OUT_OF_FILES_CHILD, "1")
            .output()
            .expect("the test binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
        assert!(text.contains("out of files: checked"), "{text}");
    }

    /// A healthy service on loopback that closes every connection after its answer.
    fn healthy_service() -> std::net::SocketAddr {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                );
            }
        });
        addr
    }

    fn out_of_files_child() {
        let addr = healthy_service();
        let text = format!(
            r#"
[[target]]
name = "shop"

[[signal]]
name = "health"
target = "shop"
type = "http_probe"
url = "http://{addr}/health"
timeout = "2s"

[[signal]]
name = "smoke"
target = "shop"
type = "exec"
command = ["true"]
timeout = "2s"
"#
        );
        let cfg = crate::config::load_str(
            &text,
            crate::config::Format::Toml,
            std::iter::empty(),
            std::path::Path::new("."),
        )
        .expect("valid configuration");
        let client = crate::http::client();
        let probe = Source::new(&cfg.signals[0], &client).expect("a probe");
        let exec = Source::new(&cfg.signals[1], &client).expect("an exec check");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let passes = |state: &ReadingState| {
            matches!(state, ReadingState::Value(Measure::Check { ok: true, .. }))
        };
        let starved = |state: &ReadingState| matches!(state, ReadingState::SourceError(d) if d.contains("too many open files in rearguard"));

        let held = exhaust_descriptors();
        let (probed, ran) = rt.block_on(async { (probe.sample().await, exec.sample().await) });
        assert!(starved(&probed), "{probed:?}");
        assert!(starved(&ran), "{ran:?}");
        drop(held);
        let (probed, ran) = rt.block_on(async { (probe.sample().await, exec.sample().await) });
        assert!(passes(&probed), "{probed:?}");
        assert!(passes(&ran), "{ran:?}");
        println!("out of files: checked");
    }

    /// Lowers the soft limit of open files to a little above what is open and opens
    /// `/dev/null` until no descriptor is left; they are free again when dropped.
    fn exhaust_descriptors() -> Vec<std::fs::File> {
        let open = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count() as u64);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the rlimit passed; this
        // process runs this one test.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
            lim.rlim_cur = (open + 64).min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
        let mut held = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => held.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => return held,
                Err(e) => panic!("opening /dev/null: {e}"),
            }
        }
    }
}
