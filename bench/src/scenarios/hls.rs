//! `hls-latency`: how far behind the publisher hls.js plays gopbus's
//! Low-Latency HLS, in headless Chromium.
//!
//! The bench publishes over RTMP and notes the wall-clock time each timestamp
//! is due (one machine, one clock). gopbus stamps every segment with
//! `#EXT-X-PROGRAM-DATE-TIME`; the page reads `hls.playingDate` (the wall-clock
//! time of the frame on screen, from those stamps) next to `Date.now()`.
//! gopbus's stamp is checked against the bench's own record (the first
//! segment's stamp minus the moment the bench sent its first frame: the
//! "stamp error" column) and the figures are corrected by it, so they are
//! publisher → screen.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use super::{connect_publish, Params};
use crate::report::{quantile, Report, Row, Spread};
use crate::target::{default_gopbus, Target};
use crate::web::{page_server, web_dir};

fn wall_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1000.0
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    Some((head.split_whitespace().nth(1)?.parse().ok()?, body.to_owned()))
}

/// What one playback measured.
struct Measured {
    /// Publisher → screen, ms, one per sample.
    behind: Vec<f64>,
    /// gopbus's first stamp minus the bench's first send, ms.
    stamp_error: f64,
    errors: Vec<String>,
    blocking_reloads: usize,
    parts: usize,
}

async fn once(p: &Params, gop: u32, part: f64, catch_up: bool, watch: Duration) -> anyhow::Result<Measured> {
    let web = web_dir()?;
    // Long enough not to loop while watched: the loop point is a jump in the
    // timestamps that a real encoder never makes.
    let warmup = Duration::from_secs(4);
    // The player starts once the first segment is complete (up to one GoP in).
    let total = Duration::from_secs(u64::from(gop)) + warmup + watch + Duration::from_secs(6);
    let seconds = (total.as_secs() as u32).max(p.spec.seconds);
    let spec = crate::media::StreamSpec { gop, seconds: gop * seconds.div_ceil(gop).max(2), ..p.spec };
    let tags = spec.tags()?;
    let bin = match &p.gopbus {
        Some(b) => b.clone(),
        None => default_gopbus()?,
    };
    let flags = ["--hls-part".to_owned(), part.to_string()];
    let target = Target::start_gopbus_with(&bin, 1, &flags)?;
    let http = target.http.context("gopbus's HTTP address")?;
    // The wall-clock time timestamp 0 was due: the earliest (send time − timestamp).
    let zero = Arc::new(Mutex::new(f64::MAX));
    let publish = target.publish[0].clone();
    let z = zero.clone();
    let publisher = tokio::spawn(async move {
        let mut c = connect_publish(&publish).await?;
        c.publish_loop(&tags, total, 1.0, |ts, _| {
            let mut z = z.lock().unwrap_or_else(|e| e.into_inner());
            *z = z.min(wall_ms() - f64::from(ts));
        })
        .await
    });
    // gopbus's stamp of segment 1 (its first frame), read while it is still listed.
    let name = target.play[0].name.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first_stamp = loop {
        let got = tokio::task::spawn_blocking({
            let path = format!("/hls/{name}/index.m3u8");
            move || http_get(http, &path)
        })
        .await?;
        if let Some((200, text)) = got {
            if text.contains("#EXT-X-MEDIA-SEQUENCE:1\n") {
                let stamp = text.lines().find_map(|l| l.strip_prefix("#EXT-X-PROGRAM-DATE-TIME:"));
                if let Some(s) = stamp {
                    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)?;
                    break t.unix_timestamp_nanos() as f64 / 1e6;
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no HLS playlist from gopbus within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stamp_error = first_stamp - *zero.lock().unwrap_or_else(|e| e.into_inner());
    let hls_js = std::fs::read(web.join("node_modules/hls.js/dist/hls.min.js"))?;
    let rate = if catch_up { 1.5 } else { 1.0 };
    let page = page_server(&format!("http://{http}/hls/{name}/index.m3u8"), hls_js, rate)?;
    let seconds = (warmup + watch).as_secs_f64().ceil().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node").arg("play_hls.mjs").arg(&page).arg(seconds).current_dir(&web).output()
    })
    .await?
    .context("running node (apt-get install nodejs)")?;
    publisher.abort();
    if !out.status.success() {
        bail!("the player failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    if let Some(dump) = std::env::var_os("GOPBUS_BENCH_DUMP") {
        std::fs::write(PathBuf::from(dump).join(format!("hls-{gop}-{part}-{catch_up}.json")), &out.stdout)?;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let samples = v["samples"].as_array().context("samples")?;
    let skip = (warmup.as_millis() / 500) as usize;
    let behind: Vec<f64> =
        samples.iter().skip(skip).filter_map(|s| s["behindMs"].as_f64()).map(|b| b + stamp_error).collect();
    let mut errors: Vec<String> = v["errors"].as_array().into_iter().flatten().map(ToString::to_string).collect();
    errors
        .extend(samples.last().and_then(|s| s["hlsErrors"].as_array()).into_iter().flatten().map(ToString::to_string));
    let requests: Vec<&str> = v["requests"].as_array().context("requests")?.iter().filter_map(|r| r.as_str()).collect();
    Ok(Measured {
        behind,
        stamp_error,
        errors,
        blocking_reloads: requests.iter().filter(|r| r.contains("_HLS_msn=")).count(),
        parts: requests.iter().filter(|r| r.contains("/part-")).count(),
    })
}

pub(super) async fn run(p: &Params) -> anyhow::Result<Report> {
    if p.external.is_some() {
        bail!("hls-latency plays gopbus's own HLS; it cannot run against --target");
    }
    let watch = Duration::from_secs_f64((p.seconds * 2.0).max(2.0));
    let mut params = p.describe();
    params["watched per run, s"] = serde_json::json!(watch.as_secs_f64());
    let mut report = Report::new("hls-latency", params);
    // `--sizes` lists keyframe intervals (s), each played with 0.5 s parts, hls.js as configured by default.
    let cases: Vec<(u32, f64, bool)> = match &p.sizes {
        Some(gops) => gops.iter().map(|&g| (g as u32, 0.5, false)).collect(),
        None => vec![(2, 0.5, false), (2, 0.5, true), (8, 0.5, false), (8, 0.5, true), (8, 0.25, true)],
    };
    for (gop, part, catch_up) in cases {
        let (mut all, mut p50s, mut stamp) = (Vec::new(), Vec::new(), Vec::new());
        let (mut errors, mut reloads, mut parts) = (Vec::new(), 0, 0);
        for _ in 0..p.runs {
            let mut m = once(p, gop, part, catch_up, watch).await?;
            m.behind.sort_by(f64::total_cmp);
            p50s.push(quantile(&m.behind, 0.5));
            stamp.push(m.stamp_error);
            all.extend(m.behind);
            errors.extend(m.errors);
            reloads += m.blocking_reloads;
            parts += m.parts;
        }
        all.sort_by(f64::total_cmp);
        report.rows.push(
            Row::new()
                .col("keyframe interval s", u64::from(gop))
                .col("part target s", part)
                .col("hls.js maxLiveSyncPlaybackRate", if catch_up { 1.5 } else { 1.0 })
                .col("samples", all.len() as u64)
                .col("p50 ms", quantile(&all, 0.5))
                .col("p90 ms", quantile(&all, 0.9))
                .col("p50 spread across runs", Spread::of(&p50s).range())
                .col("stamp error ms (mean)", stamp.iter().sum::<f64>() / stamp.len().max(1) as f64)
                .col("blocking reloads", reloads as u64)
                .col("parts loaded", parts as u64)
                .col("player errors", errors.len() as u64),
        );
        if !errors.is_empty() {
            report.notes.push(format!("keyframes {gop} s, parts {part} s: player errors {errors:?}"));
        }
    }
    report.notes.push(
        "Publisher → screen: Date.now() minus hls.playingDate (the PROGRAM-DATE-TIME of the frame on screen), \
         corrected by the stamp error (gopbus's stamp of the first frame minus when the bench sent it). The \
         bench publishes a pre-encoded stream, so encoder delay is not included. hls.js in low-latency mode \
         aims at PART-HOLD-BACK (3 part targets) behind the newest part, but starts at a part that begins \
         with a keyframe, up to one GoP further back; with maxLiveSyncPlaybackRate 1 (its default) it never \
         catches up, with 1.5 it plays faster until it reaches the target. \
         nginx-rtmp is not compared: it has no LL-HLS and is not installed here."
            .into(),
    );
    Ok(report)
}
