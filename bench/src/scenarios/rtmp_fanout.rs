//! `rtmp-fanout`: one publisher of a real H.264+AAC stream, N RTMP players that
//! read and count. Server CPU and RSS, delivered throughput, whether every
//! player kept up, and the frames players missed.

use std::time::{Duration, Instant};

use super::{connect_publish, start_players, Params, PlayerStats, DRAIN};
use crate::procstat;
use crate::report::{Report, Row, Spread};

struct RunResult {
    cpu: Option<f64>,
    /// Percent of `cpu` in the kernel.
    kernel: Option<f64>,
    rss_mib: Option<f64>,
    mbps: f64,
    keeping_up: usize,
    dropped: u64,
    failed: usize,
    max_lag_ms: f64,
}

async fn once(p: &Params, n: usize) -> anyhow::Result<RunResult> {
    let tags = p.spec.tags()?;
    let target = p.target(1)?;
    let duration = Duration::from_secs_f64(p.seconds);
    // Players join first, so each should receive every frame.
    let deadline = Instant::now() + duration + DRAIN + Duration::from_secs(30);
    let players = start_players(&target.play[0], n, deadline, false).await;

    let mut publisher = connect_publish(&target.publish[0]).await?;
    let cpu0 = target.pid.and_then(procstat::cpu);
    let start = Instant::now();
    let mut sent_frames = 0u64;
    let mut last_sent = 0u32;
    publisher
        .publish_loop(&tags, duration, 1.0, |ts, video| {
            if video {
                sent_frames += 1;
                last_sent = ts;
            }
        })
        .await?;
    let elapsed = start.elapsed();
    let cpu1 = target.pid.and_then(procstat::cpu);
    let rss = target.pid.and_then(procstat::rss_kib);
    drop(publisher);
    let mut stats: Vec<PlayerStats> = Vec::with_capacity(n);
    for h in players {
        stats.push(h.await?);
    }
    let received: u64 = stats.iter().map(|s| s.bytes).sum();
    let failed = stats.iter().filter(|s| s.error.is_some()).count();
    let keeping_up = stats.iter().filter(|s| s.error.is_none() && s.video_frames >= sent_frames).count();
    let dropped = stats.iter().map(|s| sent_frames.saturating_sub(s.video_frames)).sum();
    let max_lag_ms = stats
        .iter()
        .map(|s| s.last_video_ts.map_or(f64::from(last_sent), |t| f64::from(last_sent.saturating_sub(t))))
        .fold(0.0, f64::max);
    Ok(RunResult {
        cpu: cpu0.zip(cpu1).map(|(a, b)| procstat::cpu_percent(a, b)),
        kernel: cpu0.zip(cpu1).map(|(a, b)| procstat::kernel_percent(a, b)),
        rss_mib: rss.map(|k| k as f64 / 1024.0),
        mbps: received as f64 * 8.0 / elapsed.as_secs_f64() / 1e6,
        keeping_up,
        dropped,
        failed,
        max_lag_ms,
    })
}

pub(super) async fn run(p: &Params) -> anyhow::Result<Report> {
    let sizes = p.sizes_or(&[1, 10, 100, 1000]);
    let mut params = p.describe();
    params["players"] = serde_json::json!(sizes);
    let mut report = Report::new("rtmp-fanout", params);
    let sides = p.sides();
    // RSS of the smallest N, per server: the base that "per player" figures are above.
    let mut base_rss: Vec<Option<(usize, f64)>> = vec![None; sides.len()];
    for &n in &sizes {
        // Runs alternate between the servers, so both see the same machine state.
        let mut results: Vec<Vec<RunResult>> = sides.iter().map(|_| Vec::new()).collect();
        for _ in 0..p.runs {
            for (i, (_, side)) in sides.iter().enumerate() {
                results[i].push(once(side, n).await?);
            }
        }
        let cpu_of = |r: &[RunResult]| Spread::of(&r.iter().filter_map(|r| r.cpu).collect::<Vec<_>>());
        let other_cpu = (sides.len() == 2).then(|| cpu_of(&results[1]).median);
        for (i, ((name, _), results)) in sides.iter().zip(&results).enumerate() {
            let cpu = cpu_of(results);
            let rss = Spread::of(&results.iter().filter_map(|r| r.rss_mib).collect::<Vec<_>>());
            let mbps = Spread::of(&results.iter().map(|r| r.mbps).collect::<Vec<_>>());
            let worst = results.iter().min_by_key(|r| r.keeping_up).expect("runs >= 1");
            let base = *base_rss[i].get_or_insert((n, rss.median));
            let rss_per_player =
                if n > base.0 { (rss.median - base.1) * 1024.0 / (n - base.0) as f64 } else { f64::NAN };
            let mut row = Row::new().col("players", n as u64);
            if sides.len() > 1 {
                row = row.col("server", name.as_str());
            }
            row = row
                .col("delivered Mb/s", mbps.median)
                .col("server CPU % of a core", cpu.median)
                .col("CPU spread", cpu.range())
                .col("of it in the kernel %", procstat::kernel_median(results.iter().map(|r| r.kernel)))
                .col("server RSS MiB", rss.median)
                .col("RSS KiB per player above the smallest N", rss_per_player);
            if let Some(other) = other_cpu {
                let ratio = if i == 0 && other > 0.0 { cpu.median / other } else { f64::NAN };
                row = row.col("CPU gopbus ÷ other", ratio);
            }
            report.rows.push(
                row.col("players keeping up (worst run)", format!("{}/{}", worst.keeping_up, n))
                    .col("frames missed (all players, all runs)", results.iter().map(|r| r.dropped).sum::<u64>())
                    .col("max lag at end ms", results.iter().map(|r| r.max_lag_ms).fold(0.0, f64::max))
                    .col("failed players", results.iter().map(|r| r.failed as u64).sum::<u64>()),
            );
        }
    }
    report.notes.push(
        "'In the kernel' is the server's system time over its user + system time (/proc/PID/stat), the \
         median over the runs: on loopback a socket write also runs the receiving side of TCP. \
         Players are the bench's light RTMP clients (rml_rtmp's client session), all in the bench process, \
         on the same 2-core machine as the server: at large N they compete with the server for CPU. A player \
         keeps up when it received every video frame published after it joined; 'frames missed' counts the \
         frames it did not get (gopbus skips whole GoPs for a player that falls behind). 'max lag' is how far \
         behind the publisher the slowest player's last frame was when publishing stopped."
            .into(),
    );
    Ok(report)
}
