//! The media ingest (FLV-in-RTMP audio, video and metadata to bus GoPs) over
//! arbitrary message sequences: no panic, and what a subscriber reads is in
//! order: every frame inside a GoP, and the broadcast ends.
#![no_main]

use bytes::Bytes;
use gopbus_bus::{Bus, BusConfig, Event, SubscribeOptions};
use gopbus_ingest::publish::{GopLimits, MediaIngest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bus = Bus::new(BusConfig { window: 64, max_lag: 64 });
    let mut sub = bus.subscribe("fuzz", SubscribeOptions::default());
    let mut ingest = MediaIngest::with_limits(bus.publish("fuzz"), GopLimits { max_bytes: 1 << 20, max_ms: 60_000 });
    // Messages: type (even: video, odd: audio), timestamp (3 bytes), length (2 bytes), body.
    let mut rest = data;
    while rest.len() >= 6 {
        let kind = rest[0];
        let ts = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) << (kind >> 5);
        let len = usize::from(u16::from_be_bytes([rest[4], rest[5]])).min(rest.len() - 6);
        let body = Bytes::copy_from_slice(&rest[6..6 + len]);
        rest = &rest[6 + len..];
        // Split the body as the chunk decoder would: in 128-byte slices.
        let parts: Vec<Bytes> = (0..len).step_by(128).map(|at| body.slice(at..(at + 128).min(len))).collect();
        let result =
            if kind & 1 == 0 { ingest.handle_video(ts, parts, len) } else { ingest.handle_audio(ts, parts, len) };
        if result.is_err() {
            break;
        }
    }
    drop(ingest);
    let mut in_gop = false;
    while let Some(ev) = sub.try_next() {
        match ev {
            Event::Gop(_) => in_gop = true,
            Event::Frame(_) => assert!(in_gop, "a frame outside any GoP"),
            Event::CutShort { .. } | Event::Skipped { .. } => in_gop = false,
            Event::End(_) => break,
        }
    }
});
