//! `ttff`: time to first frame. While a publisher streams (GoP 1 s), players join
//! at random points of the GoP; for each, the time from its `play` request to
//! the first video message and to the first keyframe.

use std::time::{Duration, Instant};

use super::{connect_publish, Params};
use crate::report::{quantile, Report, Row, Spread};
use crate::rtmp::Client;

/// A small xorshift generator: join offsets need no cryptographic quality.
struct Rng(u64);

impl Rng {
    fn next_ms(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

async fn once(p: &Params, seed: u64) -> anyhow::Result<(Vec<f64>, Vec<f64>, usize)> {
    let tags = p.spec.tags()?;
    let target = p.target(1)?;
    let total = Duration::from_secs_f64(2.0 + p.joins as f64 * 1.3);
    let publish = target.publish[0].clone();
    let feeder = tokio::spawn(async move {
        let mut c = connect_publish(&publish).await?;
        c.publish_loop(&tags, total, 1.0, |_, _| {}).await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut rng = Rng(seed | 1);
    let (mut first, mut key, mut failed) = (Vec::new(), Vec::new(), 0);
    let url = &target.play[0];
    for _ in 0..p.joins {
        tokio::time::sleep(Duration::from_millis(rng.next_ms(1000))).await;
        let mut c = Client::connect(url.addr, &url.app).await?;
        let t0 = Instant::now();
        c.play(&url.name).await?;
        let (mut fv, mut fk) = (None, None);
        let deadline = t0 + Duration::from_secs(5);
        while fk.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, c.next_media()).await {
                Ok(Ok(Some(m))) if m.kind == crate::flv::TAG_VIDEO && m.data.get(1) == Some(&1) => {
                    fv.get_or_insert(m.at);
                    if m.is_video_keyframe() {
                        fk = Some(m.at);
                    }
                }
                Ok(Ok(Some(_))) => {}
                _ => break,
            }
        }
        match (fv, fk) {
            (Some(v), Some(k)) => {
                first.push(v.duration_since(t0).as_secs_f64() * 1000.0);
                key.push(k.duration_since(t0).as_secs_f64() * 1000.0);
            }
            _ => failed += 1,
        }
    }
    feeder.abort();
    Ok((first, key, failed))
}

pub(super) async fn run(p: &Params) -> anyhow::Result<Report> {
    let mut params = p.describe();
    params["joins per run"] = serde_json::json!(p.joins);
    let mut report = Report::new("ttff", params);
    let (mut first, mut key, mut failed) = (Vec::new(), Vec::new(), 0);
    let (mut p50_first, mut p50_key) = (Vec::new(), Vec::new());
    for run in 0..p.runs {
        let (mut f, mut k, x) = once(p, 0x9e37_79b9_7f4a_7c15 ^ run as u64).await?;
        f.sort_by(f64::total_cmp);
        k.sort_by(f64::total_cmp);
        p50_first.push(quantile(&f, 0.5));
        p50_key.push(quantile(&k, 0.5));
        first.extend(f);
        key.extend(k);
        failed += x;
    }
    first.sort_by(f64::total_cmp);
    key.sort_by(f64::total_cmp);
    for (label, v, spread) in
        [("first video message", &first, Spread::of(&p50_first)), ("first keyframe", &key, Spread::of(&p50_key))]
    {
        report.rows.push(
            Row::new()
                .col("time from play to", label)
                .col("joins", v.len() as u64)
                .col("p50 ms", quantile(v, 0.5))
                .col("p90 ms", quantile(v, 0.9))
                .col("max ms", v.last().copied().unwrap_or(0.0))
                .col("p50 spread across runs", spread.range())
                .col("joins without a keyframe in 5 s", failed as u64),
        );
    }
    report.notes.push(
        "Measured from the moment the player sends createStream+play (after connect) to the first video \
         message it parses. gopbus starts every player at the current GoP's keyframe from its window, so the \
         first video message is a keyframe and both rows match; a server without a GoP cache makes the player \
         wait for the next keyframe (up to one GoP, 1 s here)."
            .into(),
    );
    Ok(report)
}
