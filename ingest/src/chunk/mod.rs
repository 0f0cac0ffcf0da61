//! The RTMP chunk layer (RTMP 1.0 §5.3), owned by gopbus in both directions so
//! that media payloads are never copied.
//!
//! - [`ChunkDecoder`] turns the socket read buffer into messages whose payloads
//!   are short lists of slices of that buffer.
//! - [`ChunkEncoder`] writes a connection's chunk headers around shared payload
//!   slices, ready for one vectored write.

mod decoder;
mod encoder;

pub use decoder::{ChunkDecoder, RawMessage};
pub(crate) use encoder::{fill_iov, MAX_IOV};
pub use encoder::{ChunkEncoder, MessageHeader, OutQueue};

/// Message type ids (RTMP 1.0 §5.4, §7.1).
pub mod types {
    /// Set Chunk Size.
    pub const SET_CHUNK_SIZE: u8 = 1;
    /// Abort Message.
    pub const ABORT: u8 = 2;
    /// Acknowledgement.
    pub const ACK: u8 = 3;
    /// User Control Message.
    pub const USER_CONTROL: u8 = 4;
    /// Window Acknowledgement Size.
    pub const WINDOW_ACK_SIZE: u8 = 5;
    /// Set Peer Bandwidth.
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    /// Audio data.
    pub const AUDIO: u8 = 8;
    /// Video data.
    pub const VIDEO: u8 = 9;
    /// AMF3 data.
    pub const DATA_AMF3: u8 = 15;
    /// AMF3 command.
    pub const COMMAND_AMF3: u8 = 17;
    /// AMF0 data (`@setDataFrame`, `onMetaData`).
    pub const DATA_AMF0: u8 = 18;
    /// AMF0 command.
    pub const COMMAND_AMF0: u8 = 20;
}

/// Chunk stream ids gopbus sends on.
pub mod csid {
    /// Protocol control messages.
    pub const CONTROL: u32 = 2;
    /// Commands on stream 0.
    pub const COMMAND: u32 = 3;
    /// Data and status messages of a media stream.
    pub const STREAM: u32 = 5;
    /// Audio.
    pub const AUDIO: u32 = 6;
    /// Video.
    pub const VIDEO: u32 = 7;
}
