//! gopbus benchmarks and the light RTMP clients they (and the end-to-end tests) use.
//!
//! - [`flv`]: reads an FLV file into tags, to publish a real stream made once by ffmpeg.
//! - [`rtmp`]: a light RTMP publisher and player on rml_rtmp's client session:
//!   one task each, no decoding, so hundreds fit on one machine.
#![warn(missing_docs)]

pub mod flv;
pub mod rtmp;
