//! `latency`: publisher → player latency of every video frame (the publisher
//! notes when it sends a timestamp, the player when it receives it; both in this
//! process, one clock), idle and with extra players loading the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{connect_play, connect_publish, read_until, start_players, Params, DRAIN};
use crate::report::{quantile, Report, Row, Spread};

async fn once(p: &Params, load: usize) -> anyhow::Result<(Vec<f64>, u64)> {
    let tags = p.spec.tags()?;
    let target = p.target(1)?;
    let duration = Duration::from_secs_f64(p.seconds);
    let deadline = Instant::now() + duration + DRAIN + Duration::from_secs(30);
    let sent: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let loaders = start_players(&target.play[0], load, deadline).await;
    let measuring = connect_play(&target.play[0]).await?;
    let (s, l) = (sent.clone(), latencies.clone());
    let reader = tokio::spawn(read_until(measuring, deadline, move |ts, at| {
        // Unwrap: a poisoned lock only follows a panic in the other closure, which has none.
        if let Some(t0) = s.lock().unwrap().get(&ts) {
            l.lock().unwrap().push(at.duration_since(*t0).as_secs_f64() * 1000.0);
        }
    }));
    let mut publisher = connect_publish(&target.publish[0]).await?;
    let s = sent.clone();
    let mut frames = 0u64;
    publisher
        .publish_loop(&tags, duration, 1.0, |ts, video| {
            if video {
                frames += 1;
                s.lock().unwrap().insert(ts, Instant::now());
            }
        })
        .await?;
    drop(publisher);
    reader.await?;
    for h in loaders {
        h.await?;
    }
    let mut v = latencies.lock().unwrap().clone();
    let unmatched = frames.saturating_sub(v.len() as u64);
    v.sort_by(f64::total_cmp);
    Ok((v, unmatched))
}

pub(super) async fn run(p: &Params) -> anyhow::Result<Report> {
    let mut params = p.describe();
    params["load players"] = serde_json::json!(p.load_players);
    let mut report = Report::new("latency", params);
    for (label, load) in [("idle", 0), ("under fan-out load", p.load_players)] {
        let mut all = Vec::new();
        let mut p50s = Vec::new();
        let mut unmatched = 0;
        for _ in 0..p.runs {
            let (v, u) = once(p, load).await?;
            p50s.push(quantile(&v, 0.5));
            unmatched += u;
            all.extend(v);
        }
        all.sort_by(f64::total_cmp);
        let spread = Spread::of(&p50s);
        report.rows.push(
            Row::new()
                .col("condition", format!("{label} ({load} other players)"))
                .col("frames", all.len() as u64)
                .col("p50 ms", quantile(&all, 0.5))
                .col("p90 ms", quantile(&all, 0.9))
                .col("p99 ms", quantile(&all, 0.99))
                .col("max ms", all.last().copied().unwrap_or(0.0))
                .col("p50 spread across runs", spread.range())
                .col("frames not received", unmatched),
        );
    }
    report.notes.push(
        "Latency is from just before the publisher writes a video message to when the player has parsed it, \
         matched by RTMP timestamp. A server that rewrites timestamps shows up as 'frames not received'."
            .into(),
    );
    Ok(report)
}
