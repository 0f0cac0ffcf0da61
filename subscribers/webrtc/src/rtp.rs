//! H.264 into RTP payloads (RFC 6184, packetization mode 1), once per frame
//! and shared by every viewer; the SDP `profile-level-id` of a source; and
//! B-frame detection from the stream's timestamps.
//!
//! No I/O: a frame's AVCC payload in, RTP payloads (`Bytes`) out. A NAL unit
//! that fits the payload budget is sent as it is (a slice of the frame, no
//! copy); a larger one is split into FU-A fragments (one copy, made once for
//! every viewer). Every keyframe is preceded by the SPS and PPS of the
//! decoder configuration, in one STAP-A when they fit.

use bytes::{BufMut, Bytes, BytesMut};
use gopbus_proto::avc::{avcc_nalus, nal, DecoderConfigurationRecord};
use gopbus_proto::{Payload, VideoConfig};

/// The most payload bytes in one RTP packet: with the RTP header, header
/// extensions and the SRTP tag it stays well under a 1500-byte path MTU.
pub const MAX_PAYLOAD: usize = 1200;

const STAP_A: u8 = 24;
const FU_A: u8 = 28;
const FILLER: u8 = 12;

/// Turns the frames of one H.264 configuration into RTP payloads.
#[derive(Debug, Clone)]
pub struct H264Packetizer {
    length_size: u8,
    /// The parameter sets as packets: one STAP-A, or one packet each.
    parameter_sets: Vec<Bytes>,
    max_payload: usize,
}

impl H264Packetizer {
    /// A packetizer for the configuration in `avcc`, with payloads of at most
    /// `max_payload` bytes (at least 64).
    pub fn new(avcc: &[u8], max_payload: usize) -> Result<Self, gopbus_proto::Error> {
        let record = DecoderConfigurationRecord::parse(avcc)?;
        let max_payload = max_payload.max(64);
        let sets: Vec<&[u8]> =
            record.sps.iter().chain(&record.pps).map(Vec::as_slice).filter(|s| !s.is_empty()).collect();
        let stap_len = 1 + sets.iter().map(|s| 2 + s.len()).sum::<usize>();
        let parameter_sets = if stap_len <= max_payload {
            let nri = sets.iter().map(|s| s[0] & 0x60).max().unwrap_or(0x60);
            let mut b = BytesMut::with_capacity(stap_len);
            b.put_u8(nri | STAP_A);
            for s in &sets {
                b.put_u16(s.len() as u16);
                b.put_slice(s);
            }
            vec![b.freeze()]
        } else {
            // Too big to aggregate: each on its own, fragmented if it must be.
            let mut out = Vec::new();
            for s in &sets {
                push_nal(&Bytes::copy_from_slice(s), max_payload, &mut out);
            }
            out
        };
        Ok(Self { length_size: record.length_size, parameter_sets, max_payload })
    }

    /// Appends the RTP payloads of one frame (AVCC) to `out`, in order; the
    /// last one carries the marker bit. A keyframe starts with the parameter
    /// sets. Access unit delimiters and filler data are left out.
    pub fn packetize(&self, frame: &Payload, keyframe: bool, out: &mut Vec<Bytes>) -> Result<(), gopbus_proto::Error> {
        let data = frame.contiguous();
        if keyframe {
            out.extend(self.parameter_sets.iter().cloned());
        }
        for unit in avcc_nalus(&data, self.length_size) {
            let unit = unit?;
            match nal::unit_type(unit) {
                None | Some(nal::AUD) | Some(FILLER) => continue,
                // Parameter sets come from the configuration before every keyframe.
                Some(nal::SPS) | Some(nal::PPS) if keyframe => continue,
                Some(_) => push_nal(&data.slice_ref(unit), self.max_payload, out),
            }
        }
        Ok(())
    }
}

/// One NAL unit as one packet, or as FU-A fragments when it does not fit.
fn push_nal(unit: &Bytes, max_payload: usize, out: &mut Vec<Bytes>) {
    if unit.len() <= max_payload {
        out.push(unit.clone());
        return;
    }
    let header = unit[0];
    let indicator = (header & 0xe0) | FU_A;
    let kind = header & 0x1f;
    let body = &unit[1..];
    let step = max_payload - 2;
    let count = body.len().div_ceil(step);
    for (i, chunk) in body.chunks(step).enumerate() {
        let mut fu = kind;
        if i == 0 {
            fu |= 0x80;
        }
        if i + 1 == count {
            fu |= 0x40;
        }
        let mut b = BytesMut::with_capacity(2 + chunk.len());
        b.put_u8(indicator);
        b.put_u8(fu);
        b.put_slice(chunk);
        out.push(b.freeze());
    }
}

/// The SDP `profile-level-id` for a source: its profile and level, with the
/// constraint flags browsers offer for that profile (an answer must match the
/// offer's profile and flags; the level may differ with
/// `level-asymmetry-allowed`).
pub fn profile_level_id(video: &VideoConfig) -> String {
    let (profile, flags) = match video.profile {
        // Baseline as Constrained Baseline, which is what browsers decode.
        66 => (0x42, 0xe0),
        77 => (0x4d, 0x00),
        100 => (0x64, 0x00),
        other => (other, 0x00),
    };
    let level = if video.level == 0 { 0x1f } else { video.level };
    format!("{profile:02x}{flags:02x}{level:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use gopbus_proto::avc::DecoderConfigurationRecord as Record;

    fn avcc() -> Vec<u8> {
        Record::build(&[0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9], &[0x68, 0xeb, 0xe3, 0xcb]).unwrap()
    }

    fn frame(nals: &[&[u8]]) -> Payload {
        let mut b = Vec::new();
        for n in nals {
            b.extend_from_slice(&(n.len() as u32).to_be_bytes());
            b.extend_from_slice(n);
        }
        Payload::from_bytes(Bytes::from(b))
    }

    #[test]
    fn small_nal_units_are_slices_of_the_frame_and_keyframes_get_the_parameter_sets() {
        let p = H264Packetizer::new(&avcc(), MAX_PAYLOAD).unwrap();
        let payload = frame(&[&[0x09, 0xf0], &[0x65, 1, 2, 3], &[0x06, 9, 9]]);
        let mut out = Vec::new();
        p.packetize(&payload, true, &mut out).unwrap();
        assert_eq!(out.len(), 3, "STAP-A, IDR, SEI (AUD left out)");
        assert_eq!(out[0][0] & 0x1f, STAP_A);
        assert_eq!(&out[0][1..3], &[0, 6]);
        assert_eq!(&out[0][3..9], &[0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9]);
        assert_eq!(&out[0][9..11], &[0, 4]);
        assert_eq!(&out[1][..], &[0x65, 1, 2, 3]);
        // Zero copy: the IDR packet points into the frame's buffer.
        let base = payload.parts()[0].as_ptr() as usize;
        let at = out[1].as_ptr() as usize;
        assert!(at >= base && at < base + payload.len(), "not a slice of the frame");
        out.clear();
        p.packetize(&frame(&[&[0x41, 7]]), false, &mut out).unwrap();
        assert_eq!(out, vec![Bytes::from_static(&[0x41, 7])], "no parameter sets on a non-keyframe");
    }

    #[test]
    fn a_large_nal_unit_is_split_into_fu_a_fragments_that_reassemble() {
        let p = H264Packetizer::new(&avcc(), 100).unwrap();
        let mut unit = vec![0x65];
        unit.extend((0..1000u32).map(|i| i as u8));
        let mut out = Vec::new();
        p.packetize(&frame(&[&unit]), false, &mut out).unwrap();
        assert_eq!(out.len(), 1000usize.div_ceil(98));
        assert!(out.iter().all(|pk| pk.len() <= 100));
        assert_eq!(out[0][0], 0x60 | FU_A);
        assert_eq!(out[0][1], 0x80 | 5, "start bit and type");
        assert_eq!(out.last().unwrap()[1], 0x40 | 5, "end bit");
        assert!(out[1..out.len() - 1].iter().all(|pk| pk[1] == 5));
        let mut back = vec![(out[0][0] & 0xe0) | (out[0][1] & 0x1f)];
        for pk in &out {
            back.extend_from_slice(&pk[2..]);
        }
        assert_eq!(back, unit);
    }

    #[test]
    fn a_truncated_frame_is_an_error() {
        let p = H264Packetizer::new(&avcc(), MAX_PAYLOAD).unwrap();
        let bad = Payload::from_bytes(Bytes::from_static(&[0, 0, 0, 9, 0x65]));
        assert!(p.packetize(&bad, false, &mut Vec::new()).is_err());
    }

    #[test]
    fn profile_level_ids_match_what_browsers_offer() {
        let v = |profile, level| VideoConfig { avcc: vec![], width: 0, height: 0, profile, level };
        assert_eq!(profile_level_id(&v(100, 40)), "640028");
        assert_eq!(profile_level_id(&v(66, 30)), "42e01e");
        assert_eq!(profile_level_id(&v(77, 31)), "4d001f");
    }
}
