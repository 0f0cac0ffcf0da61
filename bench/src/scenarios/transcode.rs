//! `transcode`: the rendition pipeline as a worker runs it, in this process,
//! on one thread: an OBS-like 720p30 source (High, 3 B-frames, 2.5 Mb/s)
//! decoded, scaled and encoded for each rung, each stage timed on its own
//! (CPU time of this process), then the default-ladder pair (480p + 360p, each
//! with its own decoder, as two jobs run) against real time.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gopbus_proto::avc::{DecoderConfigurationRecord, Sps};
use gopbus_proto::VideoConfig;
use gopbus_transcode::codec::{output_size, Decoder, Encoder, Pipeline, Scaler};
use gopbus_transcode::{EncoderSettings, Rung};

use super::Params;
use crate::procstat;
use crate::report::{Report, Row, Spread};

/// One source access unit: dts, pts, keyframe, AVCC data.
type Unit = (i64, i64, bool, bytes::Bytes);

/// The source: its configuration and access units in decode order.
fn source(size: &str, seconds: u32) -> anyhow::Result<(VideoConfig, Vec<Unit>)> {
    let path = crate::media::made_once(&format!("obs-like-{size}-{seconds}s.flv"), |c| {
        c.args(["-f", "lavfi", "-i"]).arg(format!("testsrc2=size={size}:rate=30")).args([
            "-t",
            &seconds.to_string(),
            "-c:v",
            "libx264",
            "-profile:v",
            "high",
            "-bf",
            "3",
            "-g",
            "150",
            "-b:v",
            "2500k",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "flv",
        ]);
    })?;
    let mut config = None;
    let mut units = Vec::new();
    for t in crate::flv::read(&path)? {
        if t.kind != crate::flv::TAG_VIDEO || t.data.len() < 5 {
            continue;
        }
        let cts = i64::from(i32::from_be_bytes([0, t.data[2], t.data[3], t.data[4]]) << 8 >> 8);
        if t.data[1] == 0 {
            let avcc = t.data[5..].to_vec();
            let record = DecoderConfigurationRecord::parse(&avcc)?;
            let sps = Sps::parse(&record.sps[0])?;
            config = Some(VideoConfig {
                avcc,
                width: sps.width,
                height: sps.height,
                profile: sps.profile,
                level: sps.level,
            });
        } else {
            let dts = i64::from(t.timestamp);
            units.push((dts, dts + cts, t.is_video_keyframe(), t.data.slice(5..)));
        }
    }
    let Some(config) = config else { bail!("no AVC sequence header in {}", path.display()) };
    Ok((config, units))
}

/// CPU seconds `f` takes on this process.
fn cpu(f: impl FnOnce()) -> anyhow::Result<f64> {
    let c0 = procstat::cpu(std::process::id()).context("own CPU")?;
    f();
    let c1 = procstat::cpu(std::process::id()).context("own CPU")?;
    Ok(procstat::cpu_seconds(c0, c1).as_secs_f64())
}

fn decode_all(config: &VideoConfig, units: &[Unit], mut each: impl FnMut(&ffmpeg_next::frame::Video, i64)) -> u64 {
    let mut d = Decoder::new(config).expect("decoder");
    let mut n = 0;
    for (dts, pts, key, data) in units {
        d.decode(std::slice::from_ref(data), *dts, *pts, *key, |f, p| {
            n += 1;
            each(f, p);
        });
    }
    d.finish(|f, p| {
        n += 1;
        each(f, p);
    });
    n
}

fn run_pipeline(config: &VideoConfig, units: &[Unit], rung: Rung) -> u64 {
    let mut p = Pipeline::new(rung, EncoderSettings::default());
    let mut out = Vec::new();
    for (dts, pts, key, data) in units {
        if *key {
            p.open_gop(config, *dts, *pts).expect("open GoP");
        }
        p.push(std::slice::from_ref(data), *dts, *pts, *key, &mut out).expect("push");
        out.clear();
    }
    p.finish(&mut out).expect("finish");
    p.counters.encoded
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

pub(super) fn run(p: &Params) -> anyhow::Result<Report> {
    let mut report = Report::new("transcode", p.describe());
    let tiny = p.seconds < 5.0;
    let (size, seconds) = if tiny { ("320x240", 2) } else { ("1280x720", 20) };
    let (config, units) = source(size, seconds)?;
    let media = f64::from(seconds);
    let frames = units.len() as f64;
    let rungs: Vec<Rung> = if tiny {
        vec!["240p@300k".parse()?, "120p@100k".parse()?]
    } else {
        vec!["720p@2500k".parse()?, "480p@1200k".parse()?, "360p@700k".parse()?]
    };
    let row = |stage: &str, rung: &str, secs: &[f64]| {
        let c = mean(secs);
        Row::new()
            .col("stage", stage.to_owned())
            .col("rendition", rung.to_owned())
            .col("CPU seconds", c)
            .col("spread across runs", Spread::of(secs).range())
            .col("frames/s per core", frames / c.max(1e-9))
            .col("% of a core at 30 fps", c / media * 100.0)
            .col("real-time factor on one core", media / c.max(1e-9))
    };
    // One pass per rung and run, each stage timed around its own calls
    // (monotonic clock, one thread: its CPU time on an idle core).
    let mut decode = Vec::new();
    for rung in &rungs {
        let (w, h) = output_size(config.width, config.height, rung);
        let (mut scale, mut encode, mut all) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..p.runs {
            let mut scaler = Scaler::new(w, h);
            let mut encoder = Encoder::new(w, h, rung, 30, &EncoderSettings::default())?;
            let (mut t_scale, mut t_encode) = (Duration::ZERO, Duration::ZERO);
            let mut first = true;
            let started = Instant::now();
            decode_all(&config, &units, |f, pts| {
                let t0 = Instant::now();
                let s = scaler.scale(f).expect("scale");
                let t1 = Instant::now();
                encoder.encode(s, pts, std::mem::take(&mut first), |_| {}).expect("encode");
                t_scale += t1 - t0;
                t_encode += t1.elapsed();
            });
            let total = started.elapsed();
            decode.push((total - t_scale - t_encode).as_secs_f64());
            scale.push(t_scale.as_secs_f64());
            encode.push(t_encode.as_secs_f64());
            all.push(cpu(|| {
                run_pipeline(&config, &units, *rung);
            })?);
        }
        let label = format!("{rung} ({w}x{h})");
        report.rows.push(row("scale", &label, &scale));
        report.rows.push(row("encode", &label, &encode));
        report.rows.push(row("decode + scale + encode (one job, CPU time)", &label, &all));
    }
    report.rows.insert(0, row("decode", &format!("source {}x{}", config.width, config.height), &decode));
    // The default ladder's lower two rungs, two jobs (two decoders), one after the other on one thread.
    let pair: Vec<Rung> = rungs.iter().skip(1).copied().collect();
    let mut both = Vec::new();
    for _ in 0..p.runs {
        both.push(cpu(|| {
            for r in &pair {
                run_pipeline(&config, &units, *r);
            }
        })?);
    }
    let names: Vec<String> = pair.iter().map(Rung::to_string).collect();
    report.rows.push(row("two jobs", &names.join(" + "), &both));
    report.notes.push(format!(
        "Source: {} s of testsrc2 {size} 30 fps, x264 High, 3 B-frames, 2.5 Mb/s, keyframes every 5 s (made once by \
         ffmpeg). Stages on one thread, timed around their own calls in one pass (decode: libavcodec H.264, 1 \
         thread, over every rung's pass; scale: libswscale bilinear to 4:2:0; encode: x264 veryfast, zerolatency, no \
         B-frames, Main, 1 thread), then the whole job as the worker runs it (Pipeline), CPU time of this process. \
         \"two jobs\" is what 720p → 480p + 360p costs one worker (each job decodes the source itself); \
         the target is a real-time factor ≥ 1 on one core.",
        seconds
    ));
    Ok(report)
}
