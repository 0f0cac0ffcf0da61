//! `bus-publish`: the cost of one `Publisher::push` with 0 and N stalled
//! subscribers (subscribed, never reading). The bus promises the publisher never
//! waits on a subscriber: the figure should not grow with N.

use std::time::{Duration, Instant};

use bytes::Bytes;
use gopbus_bus::{Bus, BusConfig, SubscribeOptions};
use gopbus_proto::{Frame, FrameFlags, FrameHeader, GopHeader, Payload, TrackId};

use super::Params;
use crate::report::{Report, Row, Spread};

/// Pushes `frames` 4 kB frames (a GoP every 30); the mean time per push.
fn push_cost(frames: usize, subscribers: usize) -> Duration {
    let bus = Bus::new(BusConfig::default());
    let mut publisher = bus.publish("bench");
    let stalled: Vec<_> = (0..subscribers).map(|_| bus.subscribe("bench", SubscribeOptions::default())).collect();
    let payload = Bytes::from(vec![0u8; 4000]);
    let start = Instant::now();
    for i in 0..frames {
        if i % 30 == 0 {
            let header = GopHeader { seq: 0, start_dts: i as i64, tracks: Vec::new(), metadata: None };
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

pub(super) fn run(p: &Params) -> anyhow::Result<Report> {
    let sizes = p.sizes_or(&[0, 1, 10, 100, 1000]);
    let frames = if p.runs == 1 && p.seconds < 2.0 { 3_000 } else { 300_000 };
    let mut report = Report::new(
        "bus-publish",
        serde_json::json!({"runs": p.runs, "stalled subscribers": sizes, "frames per run": frames, "frame": "4000 B, GoP 30, window 2"}),
    );
    push_cost(frames / 10, 0); // warm-up
    let mut base = None;
    for &n in &sizes {
        let samples: Vec<f64> = (0..p.runs).map(|_| push_cost(frames, n).as_nanos() as f64).collect();
        let s = Spread::of(&samples);
        let base = *base.get_or_insert(s.median);
        report.rows.push(
            Row::new()
                .col("stalled subscribers", n as u64)
                .col("ns per push", s.median)
                .col("spread", s.range())
                .col("ratio to the first row", s.median / base),
        );
    }
    report.notes.push(
        "A subscriber that does not read holds only a cursor and registers no waker, so a push costs the same \
         with none or a thousand of them. Subscribers that are waiting (caught up) are woken by each push: that \
         cost is fan-out itself, measured by bus-local."
            .into(),
    );
    Ok(report)
}
