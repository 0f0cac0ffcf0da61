//! Pinning the server under test and the bench to CPU lists, so that a
//! latency or CPU figure on a small machine can be taken with the server on
//! cores of its own and the players on others (`--server-cpus`, `--bench-cpus`).
//!
//! Done with util-linux's `taskset -a`, which sets every thread of a process;
//! threads made later inherit the mask of the thread that makes them. The
//! same call pins gopbus (once it listens) and any other server (`--server-pid`),
//! so both sides of a comparison are pinned alike.

use std::process::Command;

use anyhow::{bail, Context};

/// Restricts every thread of `pid` to `cpus` (a list as taskset takes it:
/// `0`, `0-1`, `0,2`).
pub fn pin(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-c", "-p", cpus, &pid.to_string()])
        .output()
        .context("running taskset (util-linux) to pin a process to CPUs")?;
    if !out.status.success() {
        bail!("taskset could not pin pid {pid} to CPUs {cpus}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}
