//! `latency`: publisher → player latency of every video frame (the publisher
//! notes when it sends a timestamp, the player when it receives it; both in this
//! process, one clock), idle and with extra players loading the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{connect_play, connect_publish, read_until, start_players, Params, DRAIN};
use crate::report::{quantile, Report, Row, Spread};

/// One run's latencies in ms: the player that joined last, and every player
/// (it and the load) by frame kind.
#[derive(Default)]
struct Run {
    last: Vec<f64>,
    keyframes: Vec<f64>,
    others: Vec<f64>,
    /// Frames the player that joined last did not get, and all players together.
    unmatched: u64,
    every_unmatched: u64,
}

async fn once(p: &Params, load: usize) -> anyhow::Result<Run> {
    let tags = p.spec.tags()?;
    let target = p.target(1)?;
    let duration = Duration::from_secs_f64(p.seconds);
    let deadline = Instant::now() + duration + DRAIN + Duration::from_secs(30);
    let sent: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
    let loaders = start_players(&target.play[0], load, deadline, true).await;
    let measuring = connect_play(&target.play[0]).await?;
    let reader = tokio::spawn(read_until(measuring, deadline, true));
    let mut publisher = connect_publish(&target.publish[0]).await?;
    let s = sent.clone();
    let mut frames = 0u64;
    publisher
        .publish_loop(&tags, duration, 1.0, |ts, video| {
            if video {
                frames += 1;
                // Unwrap: nothing else holds the lock while publishing.
                s.lock().unwrap().insert(ts, Instant::now());
            }
        })
        .await?;
    drop(publisher);
    let mut players = vec![reader.await?.arrivals];
    for h in loaders {
        players.push(h.await?.arrivals);
    }
    let sent = sent.lock().unwrap();
    let mut run = Run::default();
    for (i, arrivals) in players.iter().enumerate() {
        for &(ts, at, key) in arrivals {
            let Some(t0) = sent.get(&ts) else { continue };
            let ms = at.duration_since(*t0).as_secs_f64() * 1000.0;
            if i == 0 {
                run.last.push(ms);
            }
            if key {
                run.keyframes.push(ms);
            } else {
                run.others.push(ms);
            }
        }
    }
    run.unmatched = frames.saturating_sub(run.last.len() as u64);
    let got = (run.keyframes.len() + run.others.len()) as u64;
    run.every_unmatched = (frames * players.len() as u64).saturating_sub(got);
    Ok(run)
}

fn row(condition: String, mut all: Vec<f64>, p50s: Option<&[f64]>, unmatched: u64) -> Row {
    all.sort_by(f64::total_cmp);
    Row::new()
        .col("condition", condition)
        .col("frames", all.len() as u64)
        .col("p50 ms", quantile(&all, 0.5))
        .col("p90 ms", quantile(&all, 0.9))
        .col("p99 ms", quantile(&all, 0.99))
        .col("max ms", all.last().copied().unwrap_or(0.0))
        .col("p50 spread across runs", p50s.map_or_else(|| "–".to_owned(), |p| Spread::of(p).range()))
        .col("frames not received", unmatched)
}

pub(super) async fn run(p: &Params) -> anyhow::Result<Report> {
    let mut params = p.describe();
    params["load players"] = serde_json::json!(p.load_players);
    let mut report = Report::new("latency", params);
    for (label, load) in [("idle", 0), ("under fan-out load", p.load_players)] {
        let (mut last, mut keyframes, mut others) = (Vec::new(), Vec::new(), Vec::new());
        let (mut p50s, mut every_p50s) = (Vec::new(), Vec::new());
        let (mut unmatched, mut every_unmatched) = (0, 0);
        for _ in 0..p.runs {
            let mut r = once(p, load).await?;
            r.last.sort_by(f64::total_cmp);
            p50s.push(quantile(&r.last, 0.5));
            let mut every: Vec<f64> = r.keyframes.iter().chain(&r.others).copied().collect();
            every.sort_by(f64::total_cmp);
            every_p50s.push(quantile(&every, 0.5));
            unmatched += r.unmatched;
            every_unmatched += r.every_unmatched;
            last.extend(r.last);
            keyframes.extend(r.keyframes);
            others.extend(r.others);
        }
        if load == 0 {
            report.rows.push(row(format!("{label} (one player)"), last, Some(&p50s), unmatched));
            continue;
        }
        let players = load + 1;
        report.rows.push(row(format!("{label}: the player that joined last"), last, Some(&p50s), unmatched));
        let every: Vec<f64> = keyframes.iter().chain(&others).copied().collect();
        report.rows.push(row(format!("{label}: all {players} players"), every, Some(&every_p50s), every_unmatched));
        report.rows.push(row(format!("{label}: all {players} players, keyframes"), keyframes, None, 0));
        report.rows.push(row(format!("{label}: all {players} players, other frames"), others, None, 0));
    }
    report.notes.push(
        "Latency is from just before the publisher writes a video message to when the player has parsed it, \
         matched by RTMP timestamp. A server that rewrites timestamps shows up as 'frames not received'. \
         'All players' pools every player's frames: a server that serves its players in a fixed order \
         gives the first and the last very different figures, and which one the player that joined last \
         is depends on the server. Keyframes are shown apart: many times the size of the other frames, \
         their copy to every player takes longest."
            .into(),
    );
    Ok(report)
}
