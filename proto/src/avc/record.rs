//! AVCDecoderConfigurationRecord, ISO/IEC 14496-15 §5.3.3.1 ("avcC").

use crate::Error;

const WHAT: &str = "AVCDecoderConfigurationRecord";

/// A parsed avcC. Parameter sets are kept as copies: the record is tiny and rare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderConfigurationRecord {
    /// `AVCProfileIndication`.
    pub profile: u8,
    /// `profile_compatibility`.
    pub compatibility: u8,
    /// `AVCLevelIndication`.
    pub level: u8,
    /// Size in bytes of the NAL unit length prefix (1, 2 or 4).
    pub length_size: u8,
    /// Sequence parameter sets, as NAL units (with their header byte).
    pub sps: Vec<Vec<u8>>,
    /// Picture parameter sets, as NAL units.
    pub pps: Vec<Vec<u8>>,
}

impl DecoderConfigurationRecord {
    /// Parses an avcC.
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        if b.len() < 6 {
            return Err(Error::invalid(WHAT, "shorter than 6 bytes"));
        }
        if b[0] != 1 {
            return Err(Error::Unsupported { what: "avcC configurationVersion", value: u32::from(b[0]) });
        }
        let length_size = (b[4] & 0x03) + 1;
        if length_size == 3 {
            return Err(Error::invalid(WHAT, "lengthSizeMinusOne of 2"));
        }
        let mut pos = 5;
        let n_sps = usize::from(b[pos] & 0x1f);
        pos += 1;
        let sps = read_sets(b, &mut pos, n_sps)?;
        let n_pps = usize::from(*b.get(pos).ok_or(Error::invalid(WHAT, "missing PPS count"))?);
        pos += 1;
        let pps = read_sets(b, &mut pos, n_pps)?;
        if sps.is_empty() {
            return Err(Error::invalid(WHAT, "no SPS"));
        }
        Ok(Self { profile: b[1], compatibility: b[2], level: b[3], length_size, sps, pps })
    }

    /// Builds an avcC with 4-byte NAL lengths from one SPS and one PPS.
    pub fn build(sps: &[u8], pps: &[u8]) -> Result<Vec<u8>, Error> {
        if sps.len() < 4 || sps.len() > 0xffff || pps.len() > 0xffff || pps.is_empty() {
            return Err(Error::invalid(WHAT, "parameter set size out of range"));
        }
        let mut out = Vec::with_capacity(11 + sps.len() + pps.len());
        out.extend_from_slice(&[1, sps[1], sps[2], sps[3], 0xff, 0xe1]);
        out.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        out.extend_from_slice(sps);
        out.push(1);
        out.extend_from_slice(&(pps.len() as u16).to_be_bytes());
        out.extend_from_slice(pps);
        Ok(out)
    }
}

fn read_sets(b: &[u8], pos: &mut usize, n: usize) -> Result<Vec<Vec<u8>>, Error> {
    let mut sets = Vec::with_capacity(n);
    for _ in 0..n {
        let len_bytes = b.get(*pos..*pos + 2).ok_or(Error::invalid(WHAT, "truncated parameter set length"))?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        *pos += 2;
        let set = b.get(*pos..*pos + len).ok_or(Error::invalid(WHAT, "truncated parameter set"))?;
        if set.is_empty() {
            return Err(Error::invalid(WHAT, "empty parameter set"));
        }
        sets.push(set.to_vec());
        *pos += len;
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avc::Sps;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// avcC records written by ffmpeg 5.1 / libx264 into FLV (`-f flv`), with the
    /// picture size each encode was asked for.
    const FFMPEG: &[(&str, u32, u32, u8, u8)] = &[
        (
            "01640028ffe1001b67640028acd940780227e5c044000003000400000300f03c60c65801000668ebe3cb22c0fdf8f800",
            1920,
            1080,
            100,
            40,
        ),
        ("014d401fffe10019674d401feca02802dd8088000003000800000301e078c18cb001000568ebe3cb20", 1280, 720, 77, 31),
        ("0142c00dffe100186742c00dd90141fb0110000003001000000303c0f142a48001000568cb83cb20", 320, 240, 66, 13),
        (
            "01f4001effe1001b67f4001e919b281405ff138088000003000800000301e078b16cb001000668ebe3c44844fff8f800",
            640,
            360,
            244,
            30,
        ),
    ];

    #[test]
    fn ffmpeg_records_and_their_sps() {
        for &(h, w, ht, profile, level) in FFMPEG {
            let rec = DecoderConfigurationRecord::parse(&hex(h)).unwrap();
            assert_eq!(rec.length_size, 4);
            assert_eq!((rec.profile, rec.level), (profile, level));
            assert_eq!((rec.sps.len(), rec.pps.len()), (1, 1));
            let sps = Sps::parse(&rec.sps[0]).unwrap();
            assert_eq!((sps.width, sps.height, sps.profile, sps.level), (w, ht, profile, level), "{h}");
            // Rebuilding from the parameter sets gives a record that parses the same.
            let again = DecoderConfigurationRecord::parse(
                &DecoderConfigurationRecord::build(&rec.sps[0], &rec.pps[0]).unwrap(),
            )
            .unwrap();
            assert_eq!(again.sps, rec.sps);
            assert_eq!(again.pps, rec.pps);
        }
        assert_eq!(
            Sps::parse(&DecoderConfigurationRecord::parse(&hex(FFMPEG[3].0)).unwrap().sps[0]).unwrap().chroma_format,
            3
        );
    }

    #[test]
    fn truncations_are_errors_not_panics() {
        let full = hex(FFMPEG[0].0);
        for n in 0..full.len() - 1 {
            let r = DecoderConfigurationRecord::parse(&full[..n]);
            if let Ok(rec) = r {
                // Truncation inside the optional high-profile tail is fine; the sets are whole.
                assert_eq!(rec.sps.len(), 1);
            }
        }
        let mut bad = full.clone();
        bad[0] = 2;
        assert!(DecoderConfigurationRecord::parse(&bad).is_err());
    }
}
