//! Property tests: what gopbus writes, it reads back the same — FLV video tag
//! headers, AVCC ↔ Annex B, and bus wire messages — for any values, not only
//! the ones a fixture happens to have.

use bytes::BytesMut;
use gopbus_proto::avc::{annexb_to_avcc, avcc_to_annexb};
use gopbus_proto::flv::{AvcPacketType, VideoTagHeader};
use gopbus_proto::wire::{decode, encode, Control, ErrorCode, Message, StartAt, WireFrame};
use gopbus_proto::{EndReason, FrameFlags, FrameHeader, TrackId};
use proptest::prelude::*;

/// A NAL unit as encoders write them: no `00 00 0x` (x ≤ 3) inside (emulation
/// prevention), not ending in a zero byte (the RBSP stop bit).
fn nalu() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 1..300).prop_map(|mut v| {
        for i in 2..v.len() {
            if v[i - 2] == 0 && v[i - 1] == 0 && v[i] <= 3 {
                v[i] = 4;
            }
        }
        if let Some(last) = v.last_mut() {
            if *last == 0 {
                *last = 0x80;
            }
        }
        v
    })
}

fn control() -> impl Strategy<Value = Control> {
    let name = "[a-z0-9_-]{1,64}";
    prop_oneof![
        (any::<u8>(), ".{0,80}").prop_map(|(version, token)| Control::Hello { version, token }),
        (any::<u64>(), name, proptest::option::of(any::<[u8; 32]>()))
            .prop_map(|(id, broadcast, proof)| Control::Announce { id, broadcast, proof }),
        (any::<u64>(), name, any::<bool>()).prop_map(|(id, broadcast, next)| Control::Subscribe {
            id,
            broadcast,
            start: if next { StartAt::NextGop } else { StartAt::CurrentGop },
        }),
        (any::<u64>(), name, "(audio|video)/[a-z0-9]{1,8}").prop_map(|(id, broadcast, track)| Control::AddTrack {
            id,
            broadcast,
            track
        }),
        any::<u64>().prop_map(|id| Control::Unsubscribe { id }),
        (any::<u64>(), ".{0,200}").prop_map(|(id, why)| Control::End { id, reason: EndReason::Error(why) }),
        (any::<u64>(), ".{0,200}").prop_map(|(id, message)| Control::Error { id, code: ErrorCode::Refused, message }),
    ]
}

proptest! {
    #[test]
    fn flv_video_tag_headers_round_trip(keyframe: bool, kind in 0u8..3, cts in -(1i32 << 23)..(1i32 << 23)) {
        let packet_type = [AvcPacketType::SequenceHeader, AvcPacketType::Nalu, AvcPacketType::EndOfSequence][kind as usize];
        let h = VideoTagHeader::parse(&VideoTagHeader::write(keyframe, packet_type, cts)).unwrap();
        prop_assert_eq!(h.is_keyframe(), keyframe);
        prop_assert_eq!(h.packet_type, packet_type);
        prop_assert_eq!(h.composition_time, cts);
    }

    #[test]
    fn avcc_and_annex_b_round_trip(nalus in proptest::collection::vec(nalu(), 1..8)) {
        let mut avcc = Vec::new();
        for n in &nalus {
            avcc.extend_from_slice(&(n.len() as u32).to_be_bytes());
            avcc.extend_from_slice(n);
        }
        let mut annexb = Vec::new();
        avcc_to_annexb(&avcc, 4, &mut annexb).unwrap();
        let mut back = Vec::new();
        annexb_to_avcc(&annexb, &mut back);
        prop_assert_eq!(back, avcc);
    }

    #[test]
    fn wire_messages_round_trip(messages in proptest::collection::vec(
        prop_oneof![
            control().prop_map(Message::Control),
            (any::<u32>(), any::<u8>(), any::<i64>(), any::<i32>(), any::<u8>(), any::<u32>()).prop_map(
                |(index, track, dts, cts, flags, len)| Message::Frame(WireFrame {
                    index,
                    header: FrameHeader { track: TrackId(track), dts, cts, flags: FrameFlags(flags), len },
                })
            ),
        ],
        1..10,
    ), split in 1usize..64) {
        // Sent back to back, read in pieces: every message whole, in order.
        let mut wire = BytesMut::new();
        for m in &messages {
            encode(m, &mut wire);
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in wire.chunks(split) {
            buf.extend_from_slice(piece);
            while let Ok(m) = decode(&mut buf) {
                got.push(m);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, messages);
    }
}
