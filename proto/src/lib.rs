//! Wire types and media formats for gopbus. No I/O, no async.
//!
//! # Role
//!
//! `proto` is the vocabulary every other crate shares: the [`media`] model that
//! travels on the bus (GoP headers, frame headers, payloads that are slices of the
//! buffers they arrived in), the parsers for what an RTMP publisher sends ([`flv`],
//! [`avc`], [`aac`]), and the hand-framed rkyv encoding of bus messages ([`wire`]).
//!
//! # Contract
//!
//! Every parser takes bytes from the network: invalid input yields an [`Error`],
//! never a panic. `proto` knows nothing about sockets.
//!
//! # Layout
//!
//! - [`media`]: `Payload`, `FrameHeader`, `Frame`, `GopHeader`, track configs.
//! - [`flv`]: FLV audio/video tag headers as carried in RTMP messages.
//! - [`avc`]: AVCDecoderConfigurationRecord, SPS, AVCC ↔ Annex B.
//! - [`aac`]: AudioSpecificConfig, ADTS headers.
//! - [`catalog`]: a broadcast's tracks, and the announcements of what is live.
//! - [`wire`]: version + length framing around rkyv-archived messages.
#![warn(missing_docs)]

pub mod aac;
pub mod avc;
mod bits;
pub mod catalog;
mod error;
pub mod flv;
pub mod media;
// rkyv generates resolver types for `Control` whose fields cannot carry docs.
#[allow(missing_docs)]
pub mod wire;

pub use error::Error;
pub use media::{
    check_track_name, AudioConfig, Codec, EndReason, Frame, FrameFlags, FrameHeader, GopHeader, OpusConfig, OtherCodec,
    Payload, TrackId, TrackInfo, TrackKind, VideoConfig,
};
