//! CPU time and memory of a process, from `/proc` (Linux).

use std::time::{Duration, Instant};

/// A sample of one process's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    /// Of `ticks`, those spent in the kernel on the process's behalf.
    system: u64,
    at: Instant,
}

fn clock_ticks_per_second() -> f64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on.
    100.0
}

/// CPU time (user + system) of `pid` so far.
pub fn cpu(pid: u32) -> Option<CpuSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(CpuSample { ticks: utime + stime, system: stime, at: Instant::now() })
}

/// CPU used between two samples, in percent of one core.
pub fn cpu_percent(a: CpuSample, b: CpuSample) -> f64 {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    (b.ticks.saturating_sub(a.ticks)) as f64 / clock_ticks_per_second() / secs * 100.0
}

/// The share of the CPU used between two samples that was spent in the
/// kernel (system time), in percent; NaN when no CPU was used.
pub fn kernel_percent(a: CpuSample, b: CpuSample) -> f64 {
    let total = b.ticks.saturating_sub(a.ticks);
    if total == 0 {
        return f64::NAN;
    }
    b.system.saturating_sub(a.system) as f64 / total as f64 * 100.0
}

/// The median of the runs' [`kernel_percent`] figures (NaN when none).
pub fn kernel_median(runs: impl Iterator<Item = Option<f64>>) -> f64 {
    let mut k: Vec<f64> = runs.flatten().filter(|k| k.is_finite()).collect();
    k.sort_by(f64::total_cmp);
    k.get(k.len() / 2).copied().unwrap_or(f64::NAN)
}

/// CPU seconds between two samples.
pub fn cpu_seconds(a: CpuSample, b: CpuSample) -> Duration {
    Duration::from_secs_f64(b.ticks.saturating_sub(a.ticks) as f64 / clock_ticks_per_second())
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Peak resident set size of `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
}
