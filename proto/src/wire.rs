//! Bus wire messages: rkyv-archived bodies inside a hand-written frame.
//!
//! ```text
//! +---------+------+----------------+------------------------+
//! | version | kind | length (u32be) | rkyv archive (length)  |
//! +---------+------+----------------+------------------------+
//! ```
//!
//! The archive is validated once, when the message arrives ([`decode`]); after that
//! callers hold typed values. A truncated buffer answers [`Error::Incomplete`] so
//! one reader can loop on `read_buf`.

use bytes::{Buf, BufMut, BytesMut};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::catalog::{Announcement, Catalog};
use crate::media::{EndReason, FrameHeader, GopHeader};
use crate::Error;

/// The framing version this build speaks.
pub const VERSION: u8 = 3;
/// Bytes before the archive.
pub const PREFIX_LEN: usize = 6;
/// Largest archive accepted; bus messages are headers, never media payloads.
pub const MAX_BODY: usize = 1 << 20;
/// Largest frame payload a peer may announce (twice RTMP ingest's largest
/// message): checked before any of it is buffered.
pub const MAX_FRAME: usize = 16 << 20;

/// Where a new subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum StartAt {
    /// At the start of the current GoP (its keyframe is already there).
    CurrentGop,
    /// At the start of the next GoP.
    NextGop,
}

/// Messages on a connection's control stream. Requests carry an `id` chosen by
/// the requester; answers and the GoP streams of that request carry it back.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub enum Control {
    /// First message of a client: protocol version and bus token.
    Hello {
        /// The client's framing version.
        version: u8,
        /// The shared bus token.
        token: String,
    },
    /// The server accepted the hello.
    Welcome,
    /// A publisher announces a broadcast it will send on GoP streams tagged `id`.
    Announce {
        /// Request id.
        id: u64,
        /// Broadcast name.
        broadcast: String,
        /// Proof that the announcer holds the broadcast's stream key: HMAC-SHA256
        /// keyed by the SHA-256 of the key, over 32 bytes of keying material
        /// exported from this connection's TLS session (label
        /// [`ANNOUNCE_PROOF_LABEL`], context the broadcast name), so it cannot
        /// be replayed on another connection or for another name. A node checks
        /// it for names it has a key for.
        proof: Option<[u8; 32]>,
    },
    /// A subscriber asks for a broadcast, to arrive on GoP streams tagged `id`.
    Subscribe {
        /// Request id.
        id: u64,
        /// Broadcast name.
        broadcast: String,
        /// Where to start.
        start: StartAt,
    },
    /// A worker adds the derived track `track` to the live broadcast `broadcast`
    /// and will send its GoPs on streams tagged `id` (no stream key, no takeover:
    /// refused with [`ErrorCode::Taken`] while another worker holds the track).
    AddTrack {
        /// Request id.
        id: u64,
        /// The source broadcast.
        broadcast: String,
        /// The derived track's name (`audio/opus`, `video/480p`).
        track: String,
    },
    /// Asks for every live broadcast with its catalog: answered by `Listing`.
    List {
        /// Request id.
        id: u64,
    },
    /// The live broadcasts (answer to `List`).
    Listing {
        /// Request id.
        id: u64,
        /// Their catalogs.
        live: Vec<Catalog>,
    },
    /// Asks for announcements: answered by `Ok`, then `Announced` messages,
    /// the first an [`Announcement::Live`], until `Unsubscribe { id }`.
    Watch {
        /// Request id.
        id: u64,
    },
    /// One announcement of watch `id`.
    Announced {
        /// Request id.
        id: u64,
        /// What changed.
        announcement: Announcement,
    },
    /// The subscriber no longer wants request `id`.
    Unsubscribe {
        /// Request id.
        id: u64,
    },
    /// Request `id` succeeded.
    Ok {
        /// Request id.
        id: u64,
    },
    /// The broadcast of request `id` ended.
    End {
        /// Request id.
        id: u64,
        /// Why.
        reason: EndReason,
    },
    /// Request `id` failed (`id` 0: the connection itself, e.g. a bad token).
    Error {
        /// Request id.
        id: u64,
        /// What kind of failure.
        code: ErrorCode,
        /// What went wrong, for the peer's log.
        message: String,
    },
}

/// The TLS exporter label of [`Control::Announce`]'s proof.
pub const ANNOUNCE_PROOF_LABEL: &[u8] = b"EXPORTER-gopbus-announce-proof";

/// Why a request failed, for the requester's code to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug))]
pub enum ErrorCode {
    /// The broadcast does not exist (nobody publishes it, no node has it).
    NotFound,
    /// Not allowed: a wrong bus token.
    Refused,
    /// The derived track is held by another worker.
    Taken,
    /// The request is malformed (a bad track name, an unexpected message).
    Invalid,
    /// Something else failed on the peer.
    Internal,
}

/// Opens one GoP sub-channel stream: which request, which track, which GoP.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct StreamHeader {
    /// The request (subscription or announce) the stream belongs to.
    pub id: u64,
    /// The track this sub-channel carries.
    pub track: crate::media::TrackId,
    /// The GoP header, identical on every track's stream of the GoP.
    pub gop: GopHeader,
    /// How many frames (all tracks) the sender sent of the previous GoP of this
    /// request: once that many are out, the receiver may start this GoP without
    /// waiting for the previous GoP's streams to finish. [`PREV_CUT`] when
    /// the previous GoP did not end whole: the sender stopped sending it part way
    /// (this receiver fell behind) or it was cut short at the source. The
    /// receiver reports it cut short.
    pub prev_frames: u32,
}

/// [`StreamHeader::prev_frames`] of a GoP whose predecessor did not end whole.
pub const PREV_CUT: u32 = u32::MAX;

/// A frame on a GoP sub-channel: its place in the GoP across all tracks, so the
/// receiver restores the exact interleaving of the tracks' streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
#[rkyv(derive(Debug), attr(allow(missing_docs)))]
pub struct WireFrame {
    /// Index of the frame within its GoP, counting every track, from 0.
    pub index: u32,
    /// The frame header; `header.len` payload bytes follow the message.
    pub header: FrameHeader,
}

/// Any bus message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A control-stream message.
    Control(Control),
    /// Opens a GoP sub-channel stream.
    Stream(StreamHeader),
    /// Precedes a frame payload of `header.len` bytes on a sub-channel stream.
    Frame(WireFrame),
}

const KIND_CONTROL: u8 = 1;
const KIND_STREAM: u8 = 2;
const KIND_FRAME: u8 = 3;

/// Appends one framed message to `out`.
pub fn encode(msg: &Message, out: &mut BytesMut) {
    encode_with(msg, out, &mut AlignedVec::new());
}

/// Like [`encode`], archiving into `arena`, which is kept for the next call: a
/// sender that reuses one arena allocates nothing per message once it is warm.
pub fn encode_with(msg: &Message, out: &mut BytesMut, arena: &mut AlignedVec) {
    let mut buf = std::mem::take(arena);
    buf.clear();
    // Serializing our own plain structs cannot fail: no shared pointers, no limits hit.
    let (kind, body) = match msg {
        Message::Control(c) => (KIND_CONTROL, rkyv::api::high::to_bytes_in::<_, rancor::Error>(c, buf)),
        Message::Stream(g) => (KIND_STREAM, rkyv::api::high::to_bytes_in::<_, rancor::Error>(g, buf)),
        Message::Frame(f) => (KIND_FRAME, rkyv::api::high::to_bytes_in::<_, rancor::Error>(f, buf)),
    };
    let body = body.expect("serializing owned plain data is infallible");
    out.reserve(PREFIX_LEN + body.len());
    out.put_u8(VERSION);
    out.put_u8(kind);
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    *arena = body;
}

/// Takes one framed message off the front of `buf`, validating its archive.
/// Leaves `buf` untouched and answers [`Error::Incomplete`] when it holds less than one message.
pub fn decode(buf: &mut BytesMut) -> Result<Message, Error> {
    decode_with(buf, &mut AlignedVec::new())
}

/// Like [`decode`], aligning the archive in `arena`, which is kept for the next call.
pub fn decode_with(buf: &mut BytesMut, arena: &mut AlignedVec) -> Result<Message, Error> {
    if buf.len() < PREFIX_LEN {
        return Err(Error::Incomplete { needed: PREFIX_LEN - buf.len() });
    }
    if buf[0] != VERSION {
        return Err(Error::Unsupported { what: "bus framing version", value: u32::from(buf[0]) });
    }
    let kind = buf[1];
    let len = u32::from_be_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
    if len > MAX_BODY {
        return Err(Error::invalid("bus message", "body larger than 1 MiB"));
    }
    if buf.len() < PREFIX_LEN + len {
        return Err(Error::Incomplete { needed: PREFIX_LEN + len - buf.len() });
    }
    // rkyv needs aligned bytes; bus messages are small headers, so align by copying.
    let aligned = arena;
    aligned.clear();
    aligned.extend_from_slice(&buf[PREFIX_LEN..PREFIX_LEN + len]);
    let bad = |_| Error::invalid("bus message", "archive failed validation");
    let msg = match kind {
        KIND_CONTROL => Message::Control(rkyv::from_bytes::<Control, rancor::Error>(aligned).map_err(bad)?),
        KIND_STREAM => Message::Stream(rkyv::from_bytes::<StreamHeader, rancor::Error>(aligned).map_err(bad)?),
        KIND_FRAME => Message::Frame(rkyv::from_bytes::<WireFrame, rancor::Error>(aligned).map_err(bad)?),
        other => return Err(Error::Unsupported { what: "bus message kind", value: u32::from(other) }),
    };
    buf.advance(PREFIX_LEN + len);
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{AudioConfig, Codec, FrameFlags, OpusConfig, OtherCodec, TrackId, TrackInfo, TrackKind};

    fn samples() -> Vec<Message> {
        vec![
            Message::Control(Control::Hello { version: VERSION, token: "secret".into() }),
            Message::Control(Control::Subscribe { id: 3, broadcast: "alice".into(), start: StartAt::CurrentGop }),
            Message::Control(Control::End { id: 3, reason: EndReason::Error("boom".into()) }),
            Message::Control(Control::Error { id: 0, code: ErrorCode::Refused, message: "invalid bus token".into() }),
            Message::Control(Control::AddTrack { id: 4, broadcast: "alice".into(), track: "audio/opus".into() }),
            Message::Control(Control::Announced {
                id: 5,
                announcement: Announcement::Live(vec![Catalog {
                    name: "alice".into(),
                    tracks: vec![TrackInfo::audio(AudioConfig {
                        asc: vec![0x11, 0x90],
                        object_type: 2,
                        sample_rate: 48000,
                        channels: 2,
                    })],
                }]),
            }),
            Message::Stream(StreamHeader {
                id: 3,
                track: TrackId::AUDIO,
                gop: GopHeader {
                    seq: 7,
                    start_dts: 1 << 40,
                    tracks: vec![
                        TrackInfo::audio(AudioConfig {
                            asc: vec![0x11, 0x90],
                            object_type: 2,
                            sample_rate: 48000,
                            channels: 2,
                        }),
                        TrackInfo {
                            id: TrackId(17),
                            name: "audio/opus".into(),
                            codec: Codec::Opus(OpusConfig { channels: 2, input_sample_rate: 48000, pre_skip: 312 }),
                        },
                        TrackInfo {
                            id: TrackId(18),
                            name: "video/hevc".into(),
                            codec: Codec::Other(OtherCodec {
                                kind: TrackKind::Video,
                                name: "hvc1.1.6.L93.B0".into(),
                                config: vec![1, 2],
                            }),
                        },
                    ],
                    metadata: Some(vec![2, 0, 1, b'x']),
                },
                prev_frames: 77,
            }),
            Message::Frame(WireFrame {
                index: 9,
                header: FrameHeader { track: TrackId::VIDEO, dts: -5, cts: 40, flags: FrameFlags::KEYFRAME, len: 1234 },
            }),
        ]
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let mut all = BytesMut::new();
        for m in samples() {
            encode(&m, &mut all);
        }
        // Feed one byte at a time: every prefix is Incomplete until a message completes.
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for &b in all.iter() {
            buf.put_u8(b);
            loop {
                match decode(&mut buf) {
                    Ok(m) => out.push(m),
                    Err(Error::Incomplete { .. }) => break,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }
        assert_eq!(out, samples());
        assert!(buf.is_empty());
    }

    #[test]
    fn corrupt_input_is_an_error() {
        let mut buf = BytesMut::new();
        let stream = samples().into_iter().find(|m| matches!(m, Message::Stream(_))).unwrap();
        encode(&stream, &mut buf);
        let mut bad_version = buf.clone();
        bad_version[0] = 9;
        assert!(matches!(decode(&mut bad_version), Err(Error::Unsupported { .. })));
        let mut too_long = buf.clone();
        too_long[2] = 0xff;
        assert!(matches!(decode(&mut too_long), Err(Error::Invalid { .. })));
        // Garbage archive of a plausible length.
        let mut garbage =
            BytesMut::from(&[VERSION, KIND_STREAM, 0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(decode(&mut garbage).is_err());
    }
}
