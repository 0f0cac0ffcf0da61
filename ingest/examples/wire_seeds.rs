//! Writes the `wire` fuzz target's seeds (`ingest/fuzz/seeds/wire/`): real bus
//! messages — a publisher's and a subscriber's control streams, and a GoP
//! stream as a relay sends it — made by running the captured publish
//! (`seeds/media/ffmpeg-publish`, from `capture.py`) through the media ingest.
//!
//! `cargo run -p gopbus-ingest --example wire_seeds`

use std::path::Path;

use bytes::{Bytes, BytesMut};
use gopbus_bus::{Bus, BusConfig, Event, StartAt, SubscribeOptions};
use gopbus_ingest::publish::MediaIngest;
use gopbus_proto::wire::{encode, Control, ErrorCode, Message, StreamHeader, WireFrame, PREV_CUT};
use gopbus_proto::EndReason;

fn main() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let media = std::fs::read(seeds.join("media/ffmpeg-publish")).expect("run capture.py first");
    let bus = Bus::new(BusConfig { window: 8, max_lag: 8 });
    let mut sub = bus.subscribe("alice", SubscribeOptions::default());
    let mut ingest = MediaIngest::new(bus.publish("alice"));
    let mut rest = &media[..];
    while rest.len() >= 6 {
        let ts = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]);
        let len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
        let body = Bytes::copy_from_slice(&rest[6..6 + len]);
        let result = if rest[0] == 0 {
            ingest.handle_video(ts, vec![body], len)
        } else {
            ingest.handle_audio(ts, vec![body], len)
        };
        result.expect("the captured media is accepted");
        rest = &rest[6 + len..];
    }
    ingest.into_publisher().end(EndReason::PublisherLeft);

    // One GoP stream per track, as a sender writes them: header, then frames with payloads.
    let mut streams: Vec<BytesMut> = Vec::new();
    let mut index = 0;
    let mut catalog = None;
    // The current GoP's streams: (track, index in `streams`).
    let mut open = Vec::new();
    while let Some(ev) = sub.try_next() {
        match ev {
            Event::Gop(header) => {
                catalog = bus.catalog("alice");
                open.clear();
                index = 0;
                for (i, track) in header.tracks.iter().enumerate() {
                    let mut s = BytesMut::new();
                    let prev_frames = if i == 0 { 0 } else { PREV_CUT };
                    encode(
                        &Message::Stream(StreamHeader { id: 7, track: track.id, gop: (*header).clone(), prev_frames }),
                        &mut s,
                    );
                    open.push((track.id, streams.len()));
                    streams.push(s);
                }
            }
            Event::Frame(f) => {
                let &(_, at) = open.iter().find(|(t, _)| *t == f.header.track).expect("a GoP was opened");
                let s = &mut streams[at];
                if s.len() < 24 * 1024 {
                    encode(&Message::Frame(WireFrame { index, header: f.header }), s);
                    s.extend_from_slice(&f.payload.to_vec());
                }
                index += 1;
            }
            Event::End(_) => break,
            _ => {}
        }
    }
    let dir = seeds.join("wire");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in streams.iter().take(2).enumerate() {
        std::fs::write(dir.join(format!("gop-stream-{i}")), s).unwrap();
    }
    let publisher = [
        Control::Hello { version: 1, token: "0123456789abcdef".into() },
        Control::Announce { id: 1, broadcast: "alice".into(), proof: Some([7; 32]) },
        Control::AddTrack { id: 2, broadcast: "alice".into(), track: "audio/opus".into() },
        Control::End { id: 1, reason: EndReason::PublisherLeft },
    ];
    let subscriber = [
        Control::Hello { version: 1, token: "0123456789abcdef".into() },
        Control::Subscribe { id: 1, broadcast: "alice".into(), start: StartAt::CurrentGop },
        Control::List { id: 2 },
        Control::Watch { id: 3 },
        Control::Unsubscribe { id: 1 },
    ];
    let server = [
        Control::Welcome,
        Control::Ok { id: 1 },
        Control::Listing { id: 2, live: catalog.into_iter().collect() },
        Control::Error { id: 4, code: ErrorCode::NotFound, message: "no broadcast named bob".into() },
        Control::End { id: 1, reason: EndReason::Error("upstream lost".into()) },
    ];
    for (name, messages) in [
        ("control-publisher", &publisher[..]),
        ("control-subscriber", &subscriber[..]),
        ("control-server", &server[..]),
    ] {
        let mut out = BytesMut::new();
        for m in messages {
            encode(&Message::Control(m.clone()), &mut out);
        }
        std::fs::write(dir.join(name), out).unwrap();
    }
    println!("wrote {}", dir.display());
}
