//! H.264 as carried in FLV/MP4: the decoder configuration record, the SPS, and
//! conversion between AVCC (length-prefixed) and Annex B (start codes) framing.

mod annexb;
mod record;
mod reorder;
mod sps;

pub use annexb::{annexb_nalus, annexb_to_avcc, avcc_nalus, avcc_to_annexb, AvccNalus};
pub use record::DecoderConfigurationRecord;
pub use reorder::{reorders, Reorder, ReorderDetector};
pub use sps::Sps;

/// NAL unit types used by gopbus (H.264 Table 7-1).
pub mod nal {
    /// Coded slice of a non-IDR picture.
    pub const SLICE: u8 = 1;
    /// Coded slice of an IDR picture.
    pub const IDR: u8 = 5;
    /// Supplemental enhancement information.
    pub const SEI: u8 = 6;
    /// Sequence parameter set.
    pub const SPS: u8 = 7;
    /// Picture parameter set.
    pub const PPS: u8 = 8;
    /// Access unit delimiter.
    pub const AUD: u8 = 9;

    /// The `nal_unit_type` of a NAL unit (its first byte's low 5 bits).
    pub fn unit_type(nal: &[u8]) -> Option<u8> {
        nal.first().map(|b| b & 0x1f)
    }
}
