//! `cargo run -p bench --release -- SCENARIO [options]`: gopbus benchmarks.
//!
//! Scenarios so far:
//!
//! - `bus-publish`: the cost of one `Publisher::push` on the in-process bus with
//!   0 and N stalled subscribers (subscribed, never reading). The bus contract says
//!   the publisher never waits on a subscriber: the figures should not grow with N.
//!
//! Each scenario repeats its measurement (`--runs`, default 5) and prints the
//! median and the spread (min–max) as a markdown table, with the machine and the
//! parameters.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use gopbus_bus::{Bus, BusConfig, SubscribeOptions};
use gopbus_proto::{Frame, FrameFlags, FrameHeader, GopHeader, Payload, TrackId};

struct Args {
    scenario: String,
    runs: usize,
    frames: usize,
    subscribers: Vec<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut it = std::env::args().skip(1);
    let scenario = it.next().unwrap_or_else(|| "help".into());
    let mut args = Args { scenario, runs: 5, frames: 300_000, subscribers: vec![0, 1, 10, 100, 1000] };
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runs" => args.runs = value.parse()?,
            "--frames" => args.frames = value.parse()?,
            "--subscribers" => args.subscribers = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    match args.scenario.as_str() {
        "bus-publish" => bus_publish(&args),
        _ => {
            eprintln!("usage: bench bus-publish [--runs N] [--frames N] [--subscribers 0,1,10,100,1000]");
            Ok(())
        }
    }
}

/// Pushes `frames` 4 kB frames (a GoP every 30) and returns the mean time per push.
fn push_cost(frames: usize, subscribers: usize) -> Duration {
    let bus = Bus::new(BusConfig::default());
    let mut publisher = bus.publish("bench");
    let stalled: Vec<_> = (0..subscribers).map(|_| bus.subscribe("bench", SubscribeOptions::default())).collect();
    let payload = Bytes::from(vec![0u8; 4000]);
    let start = Instant::now();
    for i in 0..frames {
        if i % 30 == 0 {
            let header = GopHeader { seq: 0, start_dts: i as i64, video: None, audio: None, metadata: None };
            publisher.open_gop(header).expect("sole publisher");
        }
        let flags = if i % 30 == 0 { FrameFlags::KEYFRAME } else { FrameFlags::default() };
        let header = FrameHeader { track: TrackId::VIDEO, dts: i as i64, cts: 0, flags, len: 4000 };
        publisher.push(Frame { header, payload: Payload::from_bytes(payload.clone()) }).expect("sole publisher");
    }
    let elapsed = start.elapsed();
    drop(stalled);
    elapsed / frames as u32
}

fn bus_publish(args: &Args) -> anyhow::Result<()> {
    print_machine();
    println!(
        "scenario: bus-publish, frames per run: {}, runs: {}, GoP: 30 frames, window: 2 GoPs\n",
        args.frames, args.runs
    );
    println!("| stalled subscribers | ns per push (median) | min–max | ratio to 0 |");
    println!("| ---: | ---: | ---: | ---: |");
    // Warm up allocator and caches.
    push_cost(args.frames / 10, 0);
    let mut base = None;
    for &n in &args.subscribers {
        let mut samples: Vec<f64> = (0..args.runs).map(|_| push_cost(args.frames, n).as_nanos() as f64).collect();
        samples.sort_by(f64::total_cmp);
        let median = samples[samples.len() / 2];
        let base = *base.get_or_insert(median);
        println!("| {n} | {median:.0} | {:.0}–{:.0} | {:.2} |", samples[0], samples[samples.len() - 1], median / base);
    }
    Ok(())
}

fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "machine: {cores} cores, {cpu}; load average {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("gopbus commit: {commit}");
}
