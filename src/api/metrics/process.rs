//! The process's own series, read at each scrape as every Prometheus client library
//! names them: `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds` and
//! `process_start_time_seconds`, without rearguard's prefix, so that the dashboards and
//! alerts written for any exporter work unchanged.
//!
//! It only reads what the kernel says of this process (`getrusage`, `getrlimit`,
//! `/proc/self`); a value it cannot read is left out of that scrape, never made up.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// The collector, registered once per registry; `started` is when the daemon started,
/// in seconds since the epoch.
#[derive(Debug)]
pub(super) struct Process {
    pub(super) started: f64,
}

/// What one scrape read; `None` where the kernel did not say.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Reading {
    pub(super) cpu_seconds: Option<f64>,
    pub(super) resident_bytes: Option<f64>,
    pub(super) virtual_bytes: Option<f64>,
    pub(super) open_fds: Option<f64>,
    pub(super) max_fds: Option<f64>,
}

impl Reading {
    pub(super) fn now() -> Reading {
        let (virtual_bytes, resident_bytes) = memory().unzip();
        Reading {
            cpu_seconds: cpu_seconds(),
            resident_bytes,
            virtual_bytes,
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as f64),
            max_fds: max_fds(),
        }
    }
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let r = Reading::now();
        if let Some(cpu) = r.cpu_seconds {
            let help = "Total user and system CPU time spent, in seconds";
            let counter = ConstCounter::new(cpu);
            let metric = encoder.encode_descriptor(
                "process_cpu",
                help,
                Some(&Unit::Seconds),
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size, in bytes",
                Some(Unit::Bytes),
                r.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size, in bytes",
                Some(Unit::Bytes),
                r.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                r.open_fds,
            ),
            (
                "process_max_fds",
                "The most open file descriptors allowed (the soft limit)",
                None,
                r.max_fds,
            ),
            (
                "process_start_time",
                "When the daemon started, in seconds since the Unix epoch",
                Some(Unit::Seconds),
                Some(self.started),
            ),
        ];
        for (name, help, unit, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            let metric =
                encoder.encode_descriptor(name, help, unit.as_ref(), gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// User and system CPU time of the whole process, all threads.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage only writes the struct passed, which is zeroed plain data.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut usage) == 0).then_some(usage)
    }?;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// Virtual and resident size in bytes, from `/proc/self/statm` (in pages).
fn memory() -> Option<(f64, f64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut pages = statm.split_whitespace().map(str::parse::<f64>);
    let (size, resident) = (pages.next()?.ok()?, pages.next()?.ok()?);
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then_some((size * page as f64, resident * page as f64))
}

/// The soft limit of open files.
fn max_fds() -> Option<f64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the rlimit passed.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    ok.then_some(lim.rlim_cur as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_is_read_from_the_kernel() {
        let before = Reading::now();
        // Work the next reading must see.
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = Reading::now();
        let (Some(cpu0), Some(cpu1)) = (before.cpu_seconds, after.cpu_seconds) else {
            panic!("no CPU time: {after:?}");
        };
        assert!(cpu1 > cpu0, "{cpu0} then {cpu1}");
        let resident = after.resident_bytes.expect("resident memory");
        let size = after.virtual_bytes.expect("virtual memory");
        assert!(resident > 1e5 && size >= resident, "{after:?}");
        assert!(after.open_fds.expect("open fds") >= 3.0, "{after:?}");
        assert!(after.max_fds.expect("max fds") >= after.open_fds.unwrap_or(0.0));
    }
}
