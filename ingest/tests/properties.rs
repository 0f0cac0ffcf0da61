//! Property tests of the RTMP layers: the chunk encoder and decoder agree on
//! every message sequence at every chunk size and read split, and the timeline
//! recovers any 32-bit timestamp walk, across wraps and takeovers.

use bytes::{Bytes, BytesMut};
use gopbus_ingest::chunk::{ChunkDecoder, ChunkEncoder, MessageHeader, OutQueue};
use gopbus_ingest::timeline::Timeline;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Msg {
    csid: u32,
    timestamp: u32,
    type_id: u8,
    stream_id: u32,
    body: Vec<u8>,
}

fn message() -> impl Strategy<Value = Msg> {
    (
        2u32..64,
        // Extended timestamps (≥ 0xFFFFFF) as often as short ones.
        prop_oneof![0u32..0xff_ffff, 0xff_fff0u32..=u32::MAX],
        prop_oneof![Just(8u8), Just(9u8), Just(18u8), Just(20u8)],
        0u32..4,
        proptest::collection::vec(any::<u8>(), 0..3000),
    )
        .prop_map(|(csid, timestamp, type_id, stream_id, body)| Msg { csid, timestamp, type_id, stream_id, body })
}

proptest! {
    #[test]
    fn chunks_round_trip(
        messages in proptest::collection::vec(message(), 1..20),
        chunk_size in prop_oneof![Just(128usize), 128usize..5000, Just(65536usize)],
        split in 1usize..700,
    ) {
        let mut enc = ChunkEncoder::new();
        enc.set_chunk_size(chunk_size);
        let mut out = OutQueue::default();
        for m in &messages {
            let header = MessageHeader { csid: m.csid, timestamp: m.timestamp, type_id: m.type_id, stream_id: m.stream_id };
            enc.encode(header, &[], &[Bytes::from(m.body.clone())], &mut out);
        }
        let wire: Vec<u8> = out.segments().flat_map(|s| s.iter().copied()).collect();

        let mut dec = ChunkDecoder::new(1 << 20);
        dec.set_chunk_size(chunk_size as u32).unwrap();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(split) {
            buf.extend_from_slice(piece);
            while let Some(m) = dec.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got.len(), messages.len());
        for (m, g) in messages.iter().zip(&got) {
            prop_assert_eq!((g.csid, g.timestamp, g.type_id, g.stream_id), (m.csid, m.timestamp, m.type_id, m.stream_id));
            prop_assert_eq!(&g.contiguous()[..], &m.body[..]);
        }
    }

    #[test]
    fn the_timeline_recovers_any_walk(
        start in any::<u32>(),
        // Steps of a real stream: mostly forward, a little backward (interleaving), any size below 2^31.
        steps in proptest::collection::vec(prop_oneof![4 => 0i64..100_000, 1 => -5_000i64..0, 1 => 0i64..(1 << 31) - 1], 1..200),
        rebase in proptest::option::of(0i64..(1 << 40)),
    ) {
        let mut t = Timeline::new(rebase);
        let mut truth = i64::from(start);
        let first = t.map(start);
        if let Some(after) = rebase {
            prop_assert!(first > after, "{first} not after {after}");
        }
        // Whatever the first output is, the walk is the true one shifted by a constant.
        let offset = first - truth;
        for step in steps {
            truth += step;
            let raw = (truth & 0xffff_ffff) as u32; // what a 32-bit RTMP timestamp carries
            prop_assert_eq!(t.map(raw) - offset, truth);
        }
    }
}
