//! `webrtc-viewers`: what WebRTC viewers cost gopbus. One 720p 3 Mb/s
//! broadcast without B-frames is published; N light WHEP viewers
//! (webrtc-rs, in the bench process) watch it; the server's CPU and memory
//! are measured against the same broadcast with no viewer (RTMP ingest and
//! the Opus encoder alone) in the same run. Packets lost are counted from
//! sequence-number gaps at the viewers; the send latency (room bus → RTP
//! handed to the viewer's connection) is gopbus's own histogram.
//!
//! `opus-transcode`: AAC → Opus as gopbus does it once per broadcast
//! (fdk-aac, rubato, libopus), in this process: streams per core at 48 kHz
//! and at 44.1 kHz (resampled).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{connect_publish, Params};
use crate::media::StreamSpec;
use crate::procstat;
use crate::report::{Report, Row, Spread};
use crate::target::{default_gopbus, Target};

struct Measured {
    cpu: f64,
    rss_mib: f64,
    connected: u64,
    failed: u64,
    lost: u64,
    packets: u64,
    mbps: f64,
    p50: Option<f64>,
    p99: Option<f64>,
}

fn spec(p: &Params) -> StreamSpec {
    // The issue's stream: 720p at 3 Mb/s, unless --video says otherwise; never B-frames.
    let s = if p.spec.width == StreamSpec::default().width && p.spec.kbps == StreamSpec::default().kbps {
        StreamSpec { width: 1280, height: 720, kbps: 3000, ..p.spec }
    } else {
        p.spec
    };
    StreamSpec { bframes: false, gop: 2, ..s }
}

async fn status(http: std::net::SocketAddr, name: &str) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(http).await?;
    c.write_all(format!("GET /webrtc/{name} HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut text = String::new();
    c.read_to_string(&mut text).await?;
    let body = text.split_once("\r\n\r\n").context("no response")?.1;
    Ok(serde_json::from_str(body)?)
}

async fn once(p: &Params, viewers: usize) -> anyhow::Result<Measured> {
    let bin = match &p.gopbus {
        Some(b) => b.clone(),
        None => default_gopbus()?,
    };
    let flags: Vec<String> = [
        "--webrtc-bind",
        "127.0.0.1",
        "--webrtc-max-viewers-per-broadcast",
        "10000",
        "--webrtc-offers-per-minute",
        "100000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let target = Target::start_gopbus_with(&bin, 1, &flags)?;
    let http = target.http.context("gopbus's HTTP address")?;
    let pid = target.pid.context("gopbus's pid")?;
    let tags = spec(p).tags()?;
    let measure = Duration::from_secs_f64(p.seconds);
    let join_spacing = Duration::from_millis(20);
    let warmup = Duration::from_secs(4) + join_spacing * viewers as u32;
    let publish = target.publish[0].clone();
    let total = warmup + measure + Duration::from_secs(6);
    let publisher = tokio::spawn(async move {
        let mut c = connect_publish(&publish).await?;
        c.publish_loop(&tags, total, 1.0, |_, _| {}).await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let name = target.play[0].name.clone();
    let until = Instant::now() + warmup + measure;
    let (counts, task) = crate::whep::viewers(http, &name, viewers, join_spacing, until);
    tokio::time::sleep(warmup).await;
    let (l0, k0, b0) = (
        counts.lost.load(Ordering::Relaxed),
        counts.video_packets.load(Ordering::Relaxed) + counts.audio_packets.load(Ordering::Relaxed),
        counts.bytes.load(Ordering::Relaxed),
    );
    let c0 = procstat::cpu(pid).context("server CPU")?;
    tokio::time::sleep(measure).await;
    let c1 = procstat::cpu(pid).context("server CPU")?;
    let rss = procstat::rss_kib(pid).unwrap_or(0);
    let st = status(http, &name).await?;
    let secs = measure.as_secs_f64();
    let m = Measured {
        cpu: procstat::cpu_percent(c0, c1),
        rss_mib: rss as f64 / 1024.0,
        connected: counts.connected.load(Ordering::Relaxed),
        failed: counts.failed.load(Ordering::Relaxed),
        lost: counts.lost.load(Ordering::Relaxed) - l0,
        packets: counts.video_packets.load(Ordering::Relaxed) + counts.audio_packets.load(Ordering::Relaxed) - k0,
        mbps: (counts.bytes.load(Ordering::Relaxed) - b0) as f64 * 8.0 / secs / 1e6,
        p50: st["send_latency_p50_ms"].as_f64(),
        p99: st["send_latency_p99_ms"].as_f64(),
    };
    let _ = task.await;
    publisher.abort();
    Ok(m)
}

pub(super) async fn viewers(p: &Params) -> anyhow::Result<Report> {
    if p.external.is_some() {
        bail!("webrtc-viewers loads gopbus's own WebRTC; it cannot run against --target");
    }
    let s = spec(p);
    let mut report = Report::new("webrtc-viewers", p.describe());
    report.notes.push(format!(
        "Stream: H.264 High {}x{} 30 fps {} kb/s, keyframe every {} s, no B-frames; AAC 48 kHz → Opus 128 kb/s made once by gopbus.",
        s.width, s.height, s.kbps, s.gop
    ));
    let sizes = p.sizes_or(&[0, 1, 10, 50, 100, 200]);
    let sizes: Vec<usize> = if sizes.contains(&0) { sizes } else { [0].into_iter().chain(sizes).collect() };
    let (mut base_cpu, mut base_rss) = (0.0, 0.0);
    for n in sizes {
        let mut runs = Vec::new();
        for _ in 0..p.runs {
            runs.push(once(p, n).await?);
        }
        let k = runs.len() as f64;
        let cpus: Vec<f64> = runs.iter().map(|m| m.cpu).collect();
        let cpu = cpus.iter().sum::<f64>() / k;
        let rss = runs.iter().map(|m| m.rss_mib).sum::<f64>() / k;
        if n == 0 {
            (base_cpu, base_rss) = (cpu, rss);
        }
        let per = |v: f64| if n == 0 { 0.0 } else { v / n as f64 };
        let lat = |f: fn(&Measured) -> Option<f64>| {
            let v: Vec<f64> = runs.iter().filter_map(f).collect();
            if v.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::json!(v.iter().sum::<f64>() / v.len() as f64)
            }
        };
        report.rows.push(
            Row::new()
                .col("viewers", n as u64)
                .col("server CPU % of a core", cpu)
                .col("CPU spread across runs", Spread::of(&cpus).range())
                .col("CPU % per viewer above none", per(cpu - base_cpu))
                .col("server RSS MiB", rss)
                .col("RSS KiB per viewer above none", per((rss - base_rss) * 1024.0))
                .col("connected", runs.iter().map(|m| m.connected).sum::<u64>() as f64 / k)
                .col("failed", runs.iter().map(|m| m.failed).sum::<u64>())
                .col("packets lost", runs.iter().map(|m| m.lost).sum::<u64>())
                .col("packets received", runs.iter().map(|m| m.packets).sum::<u64>())
                .col("delivered Mb/s", runs.iter().map(|m| m.mbps).sum::<f64>() / k)
                .col("send latency p50 ms", lat(|m| m.p50))
                .col("send latency p99 ms", lat(|m| m.p99)),
        );
    }
    report.notes.push(
        "The viewers are webrtc-rs clients in the bench process, on the same two cores as the server (they decrypt \
         SRTP and count packets; they do not decode). Send latency is from the frame's arrival on the broadcast's \
         room bus to the last RTP packet of it handed to the viewer's connection, video frames sent at the live edge \
         (from the 31st after a viewer caught up), over the whole run (gopbus's histogram in /webrtc/NAME, 0.1 ms buckets)."
            .into(),
    );
    Ok(report)
}

/// An AudioSpecificConfig and raw AAC frames with their timestamps.
type AacStream = (Vec<u8>, Vec<(i64, bytes::Bytes)>);

/// Raw AAC frames (with their AudioSpecificConfig) of a tone at `rate`, made once by ffmpeg.
fn aac_frames(rate: u32, seconds: u32) -> anyhow::Result<AacStream> {
    let path = crate::media::made_once(&format!("aac-{rate}-{seconds}s.flv"), |c| {
        c.args(["-f", "lavfi", "-i"]).arg(format!("sine=frequency=440:sample_rate={rate}")).args([
            "-t",
            &seconds.to_string(),
            "-c:a",
            "aac",
            "-ac",
            "2",
            "-b:a",
            "128k",
            "-f",
            "flv",
        ]);
    })?;
    let mut asc = Vec::new();
    let mut frames = Vec::new();
    for t in crate::flv::read(&path)? {
        if t.kind != crate::flv::TAG_AUDIO || t.data.len() < 2 {
            continue;
        }
        if t.data[1] == 0 {
            asc = t.data[2..].to_vec();
        } else {
            frames.push((i64::from(t.timestamp), t.data.slice(2..)));
        }
    }
    if asc.is_empty() {
        bail!("no AAC sequence header in {}", path.display());
    }
    Ok((asc, frames))
}

pub(super) fn opus(p: &Params) -> anyhow::Result<Report> {
    let mut report = Report::new("opus-transcode", p.describe());
    let seconds = if p.seconds < 5.0 { 2 } else { 20u32 };
    for rate in [48_000u32, 44_100] {
        let (asc, frames) = aac_frames(rate, seconds)?;
        let mut cpus = Vec::new();
        let mut packets = 0;
        for _ in 0..p.runs {
            let mut t = gopbus_webrtc::AacToOpus::new(&asc, gopbus_webrtc::OpusSettings::default())?;
            let mut out = Vec::new();
            let c0 = procstat::cpu(std::process::id()).context("own CPU")?;
            for (dts, f) in &frames {
                t.push(*dts, f, &mut out)?;
            }
            let c1 = procstat::cpu(std::process::id()).context("own CPU")?;
            packets = out.len();
            cpus.push(procstat::cpu_seconds(c0, c1).as_secs_f64());
        }
        let cpu = cpus.iter().sum::<f64>() / cpus.len() as f64;
        let audio = f64::from(seconds);
        report.rows.push(
            Row::new()
                .col("AAC input", format!("{} kHz stereo 128 kb/s", f64::from(rate) / 1000.0))
                .col("audio seconds", audio)
                .col("CPU seconds", cpu)
                .col("CPU spread across runs", Spread::of(&cpus).range())
                .col("% of a core per stream", cpu / audio * 100.0)
                .col("streams per core", audio / cpu.max(1e-9))
                .col("Opus packets", packets as u64),
        );
    }
    report.notes.push(
        "One AacToOpus per stream, as gopbus runs it once per broadcast: fdk-aac decode to stereo, rubato FFT \
         resampling when the input is not 48 kHz, libopus 20 ms frames at 128 kb/s (complexity 10, its default). \
         Single-threaded; CPU time of this process."
            .into(),
    );
    Ok(report)
}

/// Paints `stamp` as 32 blocks (MSB first, 20×40 px, white = 1) at the top of a gray 640×360 frame.
fn stamped_frame(frame: &mut [u8], stamp: u32, n: u64) {
    const W: usize = 640;
    // A moving bar below the blocks, so the encoder has something to code.
    for (y, row) in frame.chunks_mut(W).enumerate() {
        for (x, px) in row.iter_mut().enumerate() {
            *px = if y < 40 {
                let bit = 31 - (x / 20);
                if stamp >> bit & 1 == 1 {
                    235
                } else {
                    16
                }
            } else if (x + n as usize * 4) % 160 < 20 {
                200
            } else {
                90
            };
        }
    }
}

/// For the browser scenarios: refuses `--target`; the npm packages and the gopbus binary.
fn browser_setup(p: &Params, scenario: &str) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    if p.external.is_some() {
        bail!("{scenario} measures gopbus's own WebRTC; it cannot run against --target");
    }
    let bin = match &p.gopbus {
        Some(b) => b.clone(),
        None => default_gopbus()?,
    };
    Ok((crate::web::web_dir()?, bin))
}

/// A `gopbus serve` whose WebRTC binds loopback: it, its HTTP address and the publish URL.
fn webrtc_target(bin: &std::path::Path) -> anyhow::Result<(Target, std::net::SocketAddr, String)> {
    let target = Target::start_gopbus_with(bin, 1, &["--webrtc-bind".to_owned(), "127.0.0.1".to_owned()])?;
    let http = target.http.context("gopbus's HTTP address")?;
    let publish = &target.publish[0];
    let url = format!("rtmp://{}/{}/{}", publish.addr, publish.app, publish.name);
    Ok((target, http, url))
}

/// Runs `tests/web/SCRIPT PAGE SECONDS` and parses what it prints.
fn run_page(web: &std::path::Path, script: &str, page: &str, seconds: f64) -> anyhow::Result<serde_json::Value> {
    let out = std::process::Command::new("node")
        .arg(script)
        .arg(page)
        .arg(seconds.to_string())
        .current_dir(web)
        .output()
        .context("node")?;
    if !out.status.success() {
        bail!("the page failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// `webrtc-g2g`: glass-to-glass latency in Chromium. The bench paints the
/// wall clock into each frame it hands ffmpeg (x264 ultrafast, zerolatency,
/// no B-frames, a keyframe every 2 s), which publishes over RTMP; the watch
/// page's video frames are read back in Chromium (`tests/web/g2g_webrtc.mjs`).
pub(super) fn g2g(p: &Params) -> anyhow::Result<Report> {
    use std::io::Write;
    let (web, bin) = browser_setup(p, "webrtc-g2g")?;
    let mut report = Report::new("webrtc-g2g", p.describe());
    let seconds = p.seconds.max(5.0) * 2.0;
    let mut all = Vec::new();
    let mut unreadable = 0u64;
    for _ in 0..p.runs {
        let (target, http, url) = webrtc_target(&bin)?;
        let mut ffmpeg = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-f", "rawvideo", "-pix_fmt", "gray", "-s", "640x360", "-r", "30", "-i", "-"])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-bf", "0", "-g", "60"])
            .args(["-pix_fmt", "yuv420p", "-f", "flv", &url])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .context("running ffmpeg")?;
        let mut stdin = ffmpeg.stdin.take().context("ffmpeg's stdin")?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let painter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut frame = vec![0u8; 640 * 360];
                let start = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = start + Duration::from_micros(n * 33_333);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    stamped_frame(&mut frame, wall_ms() as u32, n);
                    if stdin.write_all(&frame).is_err() {
                        break;
                    }
                    n += 1;
                }
            })
        };
        std::thread::sleep(Duration::from_secs(3));
        let page = format!("http://{http}/watch/{}", target.play[0].name);
        let v = run_page(&web, "g2g_webrtc.mjs", &page, seconds);
        stop.store(true, Ordering::Relaxed);
        let _ = painter.join();
        let _ = ffmpeg.kill();
        let _ = ffmpeg.wait();
        let v = v?;
        let samples = v["latencies"].as_array().context("latencies")?;
        let first = samples.first().and_then(|s| s[0].as_f64()).unwrap_or(0.0);
        // The first 3 s are the join (the catch-up fast-forward); the rest is steady state.
        all.extend(
            samples.iter().filter(|s| s[0].as_f64().unwrap_or(0.0) >= first + 3000.0).filter_map(|s| s[1].as_f64()),
        );
        unreadable += v["unreadable"].as_u64().unwrap_or(0);
    }
    all.sort_by(f64::total_cmp);
    let q = |x| if all.is_empty() { 0.0 } else { crate::report::quantile(&all, x) };
    report.rows.push(
        Row::new()
            .col("frames read", all.len() as u64)
            .col("unreadable frames", unreadable)
            .col("p50 ms", q(0.5))
            .col("p90 ms", q(0.9))
            .col("p99 ms", q(0.99))
            .col("min ms", all.first().copied().unwrap_or(0.0))
            .col("max ms", all.last().copied().unwrap_or(0.0)),
    );
    report.notes.push(format!(
        "Publisher → screen in headless Chromium over loopback, per presented frame, {seconds} s per run after a 3 s \
         join: the bench paints the wall clock into each raw frame it hands ffmpeg (x264 ultrafast, zerolatency, \
         640x360 30 fps, no B-frames), which publishes over RTMP to gopbus; the watch page (WHEP) reads the stamp \
         of every frame the video element presents. Includes x264's encode, RTMP, gopbus, RTP over loopback, \
         Chromium's jitter buffer, decode and compositing (no display: headless)."
    ));
    Ok(report)
}

/// The A/V sync test stream: white for the first 100 ms of every second,
/// with a 1 kHz beep at the same moments; H.264 without B-frames, AAC 48 kHz.
fn flash_beep(seconds: u32) -> anyhow::Result<std::path::PathBuf> {
    crate::media::made_once(&format!("flash-beep-{seconds}s.flv"), |c| {
        c.args(["-f", "lavfi", "-i"])
            .arg("color=c=black:s=640x360:r=30,geq=lum='if(lt(mod(T\\,1)\\,0.1)\\,235\\,16)':cb=128:cr=128")
            .args(["-f", "lavfi", "-i"])
            .arg("aevalsrc='if(lt(mod(t\\,1)\\,0.1)\\,0.5*sin(2*PI*1000*t)\\,0)':s=48000")
            .args(["-t", &seconds.to_string(), "-c:v", "libx264", "-preset", "veryfast", "-bf", "0", "-g", "60"])
            .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", "-b:a", "128k", "-f", "flv"]);
    })
}

/// `webrtc-av-sync`: when a flash is shown and when its beep is heard, in Chromium.
pub(super) fn av_sync(p: &Params) -> anyhow::Result<Report> {
    let (web, bin) = browser_setup(p, "webrtc-av-sync")?;
    let seconds = p.seconds.max(5.0) * 2.0;
    let fixture = flash_beep(seconds as u32 + 20)?;
    let mut offsets = Vec::new();
    let mut unpaired = 0u64;
    let mut output_latency = 0.0;
    for _ in 0..p.runs {
        let (target, http, url) = webrtc_target(&bin)?;
        let mut ffmpeg = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-re", "-i"])
            .arg(&fixture)
            .args(["-c", "copy", "-f", "flv", &url])
            .spawn()
            .context("running ffmpeg")?;
        std::thread::sleep(Duration::from_secs(3));
        let v = run_page(&web, "av_sync_webrtc.mjs", &format!("http://{http}/watch/{}", target.play[0].name), seconds);
        let _ = ffmpeg.kill();
        let _ = ffmpeg.wait();
        let v = v?;
        let list = |k: &str| -> Vec<f64> {
            v[k].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect()).unwrap_or_default()
        };
        let (flashes, beeps) = (list("flashes"), list("beeps"));
        output_latency = v["outputLatency"].as_f64().unwrap_or(0.0) * 1000.0;
        // Skip the join (the first 3 s); pair each flash with the beep nearest to it,
        // up to half the 1 s period (beyond it the nearest beep is another flash's).
        let start = flashes.first().copied().unwrap_or(0.0) + 3000.0;
        for f in flashes.iter().filter(|f| **f >= start) {
            match beeps.iter().map(|b| b - f).min_by(|a, b| a.abs().total_cmp(&b.abs())) {
                Some(d) if d.abs() < 500.0 => offsets.push(d),
                _ => unpaired += 1,
            }
        }
    }
    offsets.sort_by(f64::total_cmp);
    let q = |x| if offsets.is_empty() { 0.0 } else { crate::report::quantile(&offsets, x) };
    let mut report = Report::new("webrtc-av-sync", p.describe());
    report.rows.push(
        Row::new()
            .col("flash/beep pairs", offsets.len() as u64)
            .col("unpaired flashes", unpaired)
            .col("audio after video p50 ms", q(0.5))
            .col("min ms", offsets.first().copied().unwrap_or(0.0))
            .col("max ms", offsets.last().copied().unwrap_or(0.0))
            .col("WebAudio output latency ms (not included)", output_latency),
    );
    report.notes.push(
        "A stream that flashes white and beeps at the same moments every second (ffmpeg: H.264 without \
         B-frames, AAC 48 kHz), published with ffmpeg -re; gopbus turns the AAC into Opus and sends both over \
         WebRTC to the watch page in headless Chromium, which notes when each flash is presented \
         (requestVideoFrameCallback) and when each beep starts in the received audio (a WebAudio analyser \
         polled every 2 ms). Positive: the sound comes after the picture. Resolution: one frame (33 ms) for \
         the flash, ~5 ms for the beep (the analyser's 256-sample window and the poll)."
            .into(),
    );
    Ok(report)
}
