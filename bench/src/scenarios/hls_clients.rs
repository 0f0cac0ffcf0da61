//! `hls-clients`: what Low-Latency HLS costs the server. One broadcast is
//! published; N clients each do what an LL-HLS player does at the live edge
//! — a blocking playlist reload for the next part, then that part, on one
//! keep-alive connection — and the server's CPU is measured, against the same
//! broadcast with no client (the segmenter alone) in the same run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{connect_publish, Params};
use crate::procstat;
use crate::report::{Report, Row, Spread};
use crate::target::{default_gopbus, Target};

/// One response on a keep-alive connection: status and body.
async fn get(conn: &mut BufReader<TcpStream>, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    conn.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes()).await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let status: u16 = line.split_whitespace().nth(1).context("status line")?.parse()?;
    let mut len = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse()?;
            }
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await?;
    Ok((status, body))
}

/// The last part a playlist lists: (msn, part index, URI).
fn last_part(text: &str) -> Option<(u64, u64, String)> {
    let line = text.lines().rfind(|l| l.starts_with("#EXT-X-PART:"))?;
    let uri = line.split("URI=\"").nth(1)?.split('"').next()?.to_owned();
    let name = uri.rsplit('/').next()?.strip_prefix("part-")?.strip_suffix(".m4s")?;
    let (m, p) = name.split_once('.')?;
    Some((m.parse().ok()?, p.parse().ok()?, uri))
}

#[derive(Default)]
struct Counts {
    playlists: AtomicU64,
    parts: AtomicU64,
    bytes: AtomicU64,
    failed: AtomicU64,
}

/// One LL-HLS client at the live edge until `until`.
async fn client(http: SocketAddr, name: String, until: Instant, counts: Arc<Counts>) {
    let base = format!("/hls/{name}");
    let run = async {
        let mut conn = BufReader::new(TcpStream::connect(http).await?);
        let (_, body) = get(&mut conn, &format!("{base}/index.m3u8")).await?;
        let mut at = last_part(&String::from_utf8_lossy(&body)).context("no parts")?;
        // The part after the last one listed: the next of its segment, or, when
        // that segment turns out to be complete, the first of the next one.
        let mut want = (at.0, at.1 + 1);
        while Instant::now() < until {
            let path = format!("{base}/index.m3u8?_HLS_msn={}&_HLS_part={}", want.0, want.1);
            let (status, body) = get(&mut conn, &path).await?;
            if status != 200 {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counts.playlists.fetch_add(1, Ordering::Relaxed);
            let Some(next) = last_part(&String::from_utf8_lossy(&body)) else { continue };
            if (next.0, next.1) <= (at.0, at.1) {
                want = (at.0 + 1, 0);
                continue;
            }
            want = (next.0, next.1 + 1);
            {
                let (status, part) = get(&mut conn, &format!("{base}/{}", next.2)).await?;
                if status == 200 {
                    counts.parts.fetch_add(1, Ordering::Relaxed);
                    counts.bytes.fetch_add(part.len() as u64, Ordering::Relaxed);
                } else {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                }
                at = next;
            }
        }
        anyhow::Ok(())
    };
    if run.await.is_err() {
        counts.failed.fetch_add(1, Ordering::Relaxed);
    }
}

struct Measured {
    cpu: f64,
    rss_mib: f64,
    playlists: u64,
    parts: u64,
    mbps: f64,
    failed: u64,
}

async fn once(p: &Params, clients: usize) -> anyhow::Result<Measured> {
    let bin = match &p.gopbus {
        Some(b) => b.clone(),
        None => default_gopbus()?,
    };
    let flags = ["--hls-max-waiting".to_owned(), (clients * 2 + 16).to_string()];
    let target = Target::start_gopbus_with(&bin, 1, &flags)?;
    let http = target.http.context("gopbus's HTTP address")?;
    let pid = target.pid.context("gopbus's pid")?;
    let tags = p.spec.tags()?;
    let measure = Duration::from_secs_f64(p.seconds);
    let warmup = Duration::from_secs(5);
    let publish = target.publish[0].clone();
    let total = warmup + measure + Duration::from_secs(3);
    let publisher = tokio::spawn(async move {
        let mut c = connect_publish(&publish).await?;
        c.publish_loop(&tags, total, 1.0, |_, _| {}).await
    });
    // The first segment (the stream's GoP is 1 s; segments 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let counts = Arc::new(Counts::default());
    let until = Instant::now() + warmup - Duration::from_secs(3) + measure;
    let name = target.play[0].name.clone();
    let tasks: Vec<_> = (0..clients).map(|_| tokio::spawn(client(http, name.clone(), until, counts.clone()))).collect();
    tokio::time::sleep(warmup - Duration::from_secs(3)).await;
    let (p0, a) = (counts.parts.load(Ordering::Relaxed), counts.playlists.load(Ordering::Relaxed));
    let b0 = counts.bytes.load(Ordering::Relaxed);
    let c0 = procstat::cpu(pid).context("server CPU")?;
    tokio::time::sleep(measure).await;
    let c1 = procstat::cpu(pid).context("server CPU")?;
    let rss = procstat::rss_kib(pid).unwrap_or(0);
    let secs = measure.as_secs_f64();
    let m = Measured {
        cpu: procstat::cpu_percent(c0, c1),
        rss_mib: rss as f64 / 1024.0,
        playlists: counts.playlists.load(Ordering::Relaxed) - a,
        parts: counts.parts.load(Ordering::Relaxed) - p0,
        mbps: (counts.bytes.load(Ordering::Relaxed) - b0) as f64 * 8.0 / secs / 1e6,
        failed: 0,
    };
    for t in tasks {
        let _ = t.await;
    }
    publisher.abort();
    Ok(Measured { failed: counts.failed.load(Ordering::Relaxed), ..m })
}

pub(super) async fn run(p: &Params) -> anyhow::Result<Report> {
    if p.external.is_some() {
        bail!("hls-clients loads gopbus's own HLS; it cannot run against --target");
    }
    let mut report = Report::new("hls-clients", p.describe());
    let sizes = p.sizes_or(&[0, 100, 500]);
    let sizes: Vec<usize> = if sizes.contains(&0) { sizes } else { [0].into_iter().chain(sizes).collect() };
    let mut baseline = 0.0;
    for n in sizes {
        let mut runs = Vec::new();
        for _ in 0..p.runs {
            runs.push(once(p, n).await?);
        }
        let cpus: Vec<f64> = runs.iter().map(|m| m.cpu).collect();
        let cpu = cpus.iter().sum::<f64>() / cpus.len() as f64;
        if n == 0 {
            baseline = cpu;
        }
        let secs = p.seconds * runs.len() as f64;
        let sum = |f: fn(&Measured) -> u64| runs.iter().map(f).sum::<u64>();
        report.rows.push(
            Row::new()
                .col("LL-HLS clients", n as u64)
                .col("server CPU % of a core", cpu)
                .col("CPU spread across runs", Spread::of(&cpus).range())
                .col("CPU per 100 clients above none", if n == 0 { 0.0 } else { (cpu - baseline) * 100.0 / n as f64 })
                .col("blocking reloads/s", sum(|m| m.playlists) as f64 / secs)
                .col("parts/s per client", if n == 0 { 0.0 } else { sum(|m| m.parts) as f64 / secs / n as f64 })
                .col("delivered Mb/s", runs.iter().map(|m| m.mbps).sum::<f64>() / runs.len() as f64)
                .col("server RSS MiB", runs.iter().map(|m| m.rss_mib).fold(0.0, f64::max))
                .col("failed requests", sum(|m| m.failed)),
        );
    }
    report.notes.push(
        "Each client is one keep-alive connection doing a blocking playlist reload for the next part \
         (_HLS_msn/_HLS_part), then GET of that part, as hls.js does at the live edge. The 0-client row is \
         the broadcast segmented with nobody watching (RTMP ingest + the segmenter). The clients run in the \
         bench process on the same two cores."
            .into(),
    );
    Ok(report)
}
