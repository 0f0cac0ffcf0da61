//! Sequence parameter set, H.264 §7.3.2.1.1: the fields gopbus needs (size, profile, level).

use crate::bits::BitReader;
use crate::Error;

const WHAT: &str = "H.264 SPS";

/// The parts of an SPS that describe the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sps {
    /// `profile_idc`.
    pub profile: u8,
    /// `constraint_set` flags byte.
    pub constraints: u8,
    /// `level_idc`.
    pub level: u8,
    /// `chroma_format_idc` (1 = 4:2:0).
    pub chroma_format: u32,
    /// Width in pixels after frame cropping.
    pub width: u32,
    /// Height in pixels after frame cropping.
    pub height: u32,
}

impl Sps {
    /// Parses an SPS NAL unit, header byte included.
    pub fn parse(nal: &[u8]) -> Result<Self, Error> {
        let header = *nal.first().ok_or(Error::invalid(WHAT, "empty"))?;
        if header & 0x1f != super::nal::SPS {
            return Err(Error::invalid(WHAT, "NAL unit type is not 7"));
        }
        let rbsp = unescape(&nal[1..]);
        let mut r = BitReader::new(&rbsp, WHAT);
        let profile = r.bits(8)? as u8;
        let constraints = r.bits(8)? as u8;
        let level = r.bits(8)? as u8;
        let _sps_id = r.ue()?;
        let mut chroma_format = 1;
        let mut separate_colour_plane = false;
        if matches!(profile, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135) {
            chroma_format = r.ue()?;
            if chroma_format > 3 {
                return Err(Error::invalid(WHAT, "chroma_format_idc > 3"));
            }
            if chroma_format == 3 {
                separate_colour_plane = r.flag()?;
            }
            let _bit_depth_luma = r.ue()?;
            let _bit_depth_chroma = r.ue()?;
            let _qpprime_bypass = r.flag()?;
            if r.flag()? {
                let lists = if chroma_format == 3 { 12 } else { 8 };
                for i in 0..lists {
                    if r.flag()? {
                        skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                    }
                }
            }
        }
        let _log2_max_frame_num = r.ue()?;
        match r.ue()? {
            0 => {
                let _log2_max_poc_lsb = r.ue()?;
            }
            1 => {
                let _delta_always_zero = r.flag()?;
                let _offset_non_ref = r.se()?;
                let _offset_top_bottom = r.se()?;
                let n = r.ue()?;
                if n > 255 {
                    return Err(Error::invalid(WHAT, "num_ref_frames_in_pic_order_cnt_cycle > 255"));
                }
                for _ in 0..n {
                    r.se()?;
                }
            }
            2 => {}
            _ => return Err(Error::invalid(WHAT, "pic_order_cnt_type > 2")),
        }
        let _max_num_ref_frames = r.ue()?;
        let _gaps_allowed = r.flag()?;
        let width_mbs = u64::from(r.ue()?) + 1;
        let height_map_units = u64::from(r.ue()?) + 1;
        let frame_mbs_only = r.flag()?;
        if !frame_mbs_only {
            let _mbaff = r.flag()?;
        }
        let _direct_8x8 = r.flag()?;
        let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0u64, 0u64, 0u64, 0u64);
        if r.flag()? {
            crop_l = r.ue()?.into();
            crop_r = r.ue()?.into();
            crop_t = r.ue()?.into();
            crop_b = r.ue()?.into();
        }
        // §7.4.2.1.1, Table 6-1: crop units depend on ChromaArrayType.
        let chroma_array_type = if separate_colour_plane { 0 } else { chroma_format };
        let field_factor = if frame_mbs_only { 1 } else { 2 };
        let (sub_w, sub_h) = match chroma_array_type {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        let (crop_x, crop_y) = if chroma_array_type == 0 { (1, field_factor) } else { (sub_w, sub_h * field_factor) };
        let full_w = width_mbs * 16;
        let full_h = field_factor * height_map_units * 16;
        let cut_w = crop_x * (crop_l + crop_r);
        let cut_h = crop_y * (crop_t + crop_b);
        if cut_w >= full_w || cut_h >= full_h || full_w > 1 << 16 || full_h > 1 << 16 {
            return Err(Error::invalid(WHAT, "picture size out of range"));
        }
        Ok(Self {
            profile,
            constraints,
            level,
            chroma_format,
            width: (full_w - cut_w) as u32,
            height: (full_h - cut_h) as u32,
        })
    }
}

/// §7.3.2.1.1.1: scaling lists are skipped, their values are not needed.
fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), Error> {
    let mut last = 8i32;
    let mut next = 8i32;
    for _ in 0..size {
        if next != 0 {
            let delta = r.se()?;
            // delta_scale is -128..=127 (§7.4.2.1.1.1); anything else is not an SPS
            // (and would overflow the sum below).
            if !(-128..=127).contains(&delta) {
                return Err(Error::invalid(WHAT, "delta_scale out of range"));
            }
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

/// Removes emulation prevention bytes (`00 00 03` → `00 00`), §7.4.1.
fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut zeros = 0;
    for &byte in b {
        if zeros >= 2 && byte == 3 {
            zeros = 0;
            continue;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        out.push(byte);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_of_range_scaling_delta_is_an_error_not_an_overflow() {
        // Found by the `records` fuzz target (an i32 overflow in skip_scaling_list).
        let nal = [
            0x87, 0x87, 0xff, 0xff, 0xff, 0x00, 0x1a, 0x01, 0x18, 0x07, 0x82, 0x18, 0x2b, 0x0f, 0, 0, 0, 0, 0xff, 0xff,
            0xff, 0xfe, 0xff, 0xff, 0xf6,
        ];
        let _ = Sps::parse(&nal);
    }

    #[test]
    fn unescape_removes_emulation_prevention() {
        assert_eq!(unescape(&[0, 0, 3, 1, 0, 0, 3, 0, 0, 3]), vec![0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Sps::parse(&[]).is_err());
        assert!(Sps::parse(&[0x68, 0xee]).is_err()); // a PPS
        assert!(Sps::parse(&[0x67, 0x64]).is_err()); // truncated
        assert!(Sps::parse(&[0x67, 0x64, 0, 0x1f, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
