//! `ingest`: N publishers at maximum rate (no pacing, no players): bytes per
//! second accepted and server CPU per stream.

use std::time::{Duration, Instant};

use super::{connect_publish, Params};
use crate::procstat;
use crate::report::{Report, Row, Spread};

struct RunResult {
    mbytes_per_s: f64,
    cpu: Option<f64>,
    /// Percent of `cpu` in the kernel.
    kernel: Option<f64>,
    bench_cpu: Option<f64>,
}

async fn once(p: &Params, n: usize) -> anyhow::Result<RunResult> {
    let tags = std::sync::Arc::new(p.spec.tags()?);
    let target = p.target(n)?;
    let duration = Duration::from_secs_f64(p.seconds);
    let mut publishers = Vec::new();
    for url in &target.publish {
        publishers.push(connect_publish(url).await?);
    }
    let me = std::process::id();
    let (cpu0, self0) = (target.pid.and_then(procstat::cpu), procstat::cpu(me));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for mut c in publishers {
        let tags = tags.clone();
        tasks.push(tokio::spawn(async move { c.publish_loop(&tags, duration, 0.0, |_, _| {}).await }));
    }
    let mut bytes = 0u64;
    for t in tasks {
        bytes += t.await??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (cpu1, self1) = (target.pid.and_then(procstat::cpu), procstat::cpu(me));
    Ok(RunResult {
        mbytes_per_s: bytes as f64 / elapsed / 1e6,
        cpu: cpu0.zip(cpu1).map(|(a, b)| procstat::cpu_percent(a, b)),
        kernel: cpu0.zip(cpu1).map(|(a, b)| procstat::kernel_percent(a, b)),
        bench_cpu: self0.zip(self1).map(|(a, b)| procstat::cpu_percent(a, b)),
    })
}

pub(super) async fn run(p: &Params) -> anyhow::Result<Report> {
    let sizes = p.sizes_or(&[1, 4, 16]);
    let mut params = p.describe();
    params["publishers"] = serde_json::json!(sizes);
    let mut report = Report::new("ingest", params);
    let sides = p.sides();
    for &n in &sizes {
        // Runs alternate between the servers, so both see the same machine state.
        let mut results: Vec<Vec<RunResult>> = sides.iter().map(|_| Vec::new()).collect();
        for _ in 0..p.runs {
            for (i, (_, side)) in sides.iter().enumerate() {
                results[i].push(once(side, n).await?);
            }
        }
        let per_gb = |r: &[RunResult]| {
            let mbs = Spread::of(&r.iter().map(|r| r.mbytes_per_s).collect::<Vec<_>>());
            let cpu = Spread::of(&r.iter().filter_map(|r| r.cpu).collect::<Vec<_>>());
            if mbs.median > 0.0 {
                cpu.median / 100.0 / (mbs.median / 1000.0)
            } else {
                0.0
            }
        };
        let other = (sides.len() == 2).then(|| per_gb(&results[1]));
        for (i, ((name, _), results)) in sides.iter().zip(&results).enumerate() {
            let mbs = Spread::of(&results.iter().map(|r| r.mbytes_per_s).collect::<Vec<_>>());
            let cpu = Spread::of(&results.iter().filter_map(|r| r.cpu).collect::<Vec<_>>());
            let bench = Spread::of(&results.iter().filter_map(|r| r.bench_cpu).collect::<Vec<_>>());
            let mut row = Row::new().col("publishers", n as u64);
            if sides.len() > 1 {
                row = row.col("server", name.as_str());
            }
            row = row
                .col("MB/s accepted", mbs.median)
                .col("MB/s spread", mbs.range())
                .col("MB/s per stream", mbs.median / n as f64)
                .col("server CPU % of a core", cpu.median)
                .col("server CPU % per stream", cpu.median / n as f64)
                .col("of it in the kernel %", procstat::kernel_median(results.iter().map(|r| r.kernel)))
                .col("server CPU-seconds per GB", per_gb(results));
            if let Some(other) = other {
                let ratio = if i == 0 && other > 0.0 { per_gb(results) / other } else { f64::NAN };
                row = row.col("CPU per GB gopbus ÷ other", ratio);
            }
            report.rows.push(row.col("bench (publishers) CPU %", bench.median));
        }
    }
    report.notes.push(
        "Publishers send the stream in a loop as fast as TCP takes it. The light publishers serialize every \
         message (rml_rtmp) and share the 2 cores with the server, so the figure that compares servers is \
         'server CPU-seconds per GB' rather than the raw MB/s, which is bounded by the publishers here. \
         'In the kernel' is the server's system time over its user + system time (/proc/PID/stat)."
            .into(),
    );
    Ok(report)
}
