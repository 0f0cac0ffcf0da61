//! No payload byte is copied between the socket read buffer and the bus, or
//! between the bus and a player's socket write: proved by pointer identity along
//! the whole in-process path (chunk decoder → MediaIngest → bus → Egress → OutQueue).

use bytes::{Bytes, BytesMut};
use gopbus_bus::{Bus, BusConfig, Event, SubscribeOptions};
use gopbus_ingest::chunk::{ChunkDecoder, ChunkEncoder, OutQueue};
use gopbus_ingest::play::Egress;
use gopbus_ingest::publish::MediaIngest;
use rml_rtmp::chunk_io::ChunkSerializer;
use rml_rtmp::messages::MessagePayload;
use rml_rtmp::time::RtmpTimestamp;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// An avcC written by ffmpeg/libx264 (1280x720 Main).
const AVCC: &str = "014d401fffe10019674d401feca02802dd8088000003000800000301e078c18cb001000568ebe3cb20";

/// RTMP chunks (4096-byte chunks, as OBS and ffmpeg send) for an AVC sequence
/// header, an AAC one, and `n` video frames of `size` bytes interleaved with audio.
fn publisher_wire(n: usize, size: usize) -> (Vec<u8>, usize) {
    let mut ser = ChunkSerializer::new();
    let mut out = ser.set_max_chunk_size(4096, RtmpTimestamp::new(0)).unwrap().bytes;
    let mut msg = |ts: u32, type_id: u8, data: Vec<u8>, out: &mut Vec<u8>| {
        let p = MessagePayload {
            timestamp: RtmpTimestamp::new(ts),
            type_id,
            message_stream_id: 1,
            data: Bytes::from(data),
        };
        out.extend_from_slice(&ser.serialize(&p, false, false).unwrap().bytes);
    };
    let mut seq = vec![0x17, 0, 0, 0, 0];
    seq.extend(hex(AVCC));
    msg(0, 9, seq, &mut out);
    msg(0, 8, vec![0xaf, 0x00, 0x11, 0x90], &mut out);
    for i in 0..n {
        let key = i % 10 == 0;
        let mut v = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        // One AVCC NAL unit filling the frame.
        v.extend_from_slice(&((size - 4) as u32).to_be_bytes());
        v.extend((0..size - 4).map(|j| (i * 31 + j) as u8));
        msg(i as u32 * 33, 9, v, &mut out);
        msg(i as u32 * 33, 8, vec![0xaf, 0x01, 0x21, 0x10, 0x04, 0x60], &mut out);
    }
    (out, n * 2)
}

#[test]
fn payloads_travel_from_read_buffer_to_player_queues_uncopied() {
    let (wire, frames) = publisher_wire(30, 10_000);
    // The "socket read buffer": one allocation holding everything the publisher sent.
    let mut rbuf = BytesMut::with_capacity(wire.len());
    rbuf.extend_from_slice(&wire);
    let read_start = rbuf.as_ptr() as usize;
    let read_end = read_start + wire.len();
    let in_read_buffer = |b: &Bytes| {
        let p = b.as_ptr() as usize;
        p >= read_start && p + b.len() <= read_end
    };

    let bus = Bus::new(BusConfig { window: 8, max_lag: 8 });
    let mut players: Vec<_> = (0..3).map(|_| bus.subscribe("zc", SubscribeOptions::default())).collect();
    let mut ingest = MediaIngest::new(bus.publish("zc"));
    let mut dec = ChunkDecoder::new(1 << 20);
    while let Some(m) = dec.decode(&mut rbuf).unwrap() {
        match m.type_id {
            1 => dec.set_chunk_size(u32::from_be_bytes(m.contiguous()[..4].try_into().unwrap())).unwrap(),
            8 => ingest.handle_audio(m.timestamp, m.parts, m.len).unwrap(),
            9 => ingest.handle_video(m.timestamp, m.parts, m.len).unwrap(),
            _ => {}
        }
    }
    assert_eq!(ingest.frames as usize, frames);
    drop(ingest); // ends the broadcast

    for sub in &mut players {
        let mut enc = ChunkEncoder::new();
        enc.set_chunk_size(4096);
        let mut egress = Egress::new(1);
        let mut delivered = 0;
        while let Some(ev) = sub.try_next() {
            let Event::Frame(frame) = &ev else {
                if matches!(ev, Event::End(_)) {
                    break;
                }
                let _ = egress.handle(ev, &mut enc, &mut OutQueue::default());
                continue;
            };
            let len = frame.payload.len();
            // Bus side: every payload part is a slice of the read buffer.
            assert!(frame.payload.parts().iter().all(in_read_buffer), "payload copied between socket read and bus");
            let parts: Vec<Bytes> = frame.payload.parts().to_vec();
            let mut out = OutQueue::default();
            egress.handle(ev, &mut enc, &mut out).expect("a frame queues");
            // Player side: the queued segments that carry payload are those very slices.
            let shared: usize = out
                .segments()
                .filter(|s| {
                    parts.iter().any(|p| s.as_ptr() >= p.as_ptr() && s.as_ptr() < p.as_ptr().wrapping_add(p.len()))
                })
                .map(Bytes::len)
                .sum();
            assert_eq!(shared, len, "payload copied between bus and socket write");
            // Only headers were written per player: chunk headers + the FLV tag header.
            let written = out.len() - shared;
            assert!(written <= 12 + 5 + 4, "{written} bytes of headers for one frame");
            delivered += 1;
        }
        assert_eq!(delivered, frames);
    }
}
