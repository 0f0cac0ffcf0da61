//! AAC: AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1) and ADTS headers (§1.A.2.2).

use crate::bits::BitReader;
use crate::Error;

const WHAT: &str = "AudioSpecificConfig";

/// Sampling frequencies by `samplingFrequencyIndex` (Table 1.18).
pub const SAMPLE_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// A parsed AudioSpecificConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    /// `audioObjectType` (2 = AAC-LC, 5 = SBR, 29 = PS).
    pub object_type: u8,
    /// `samplingFrequencyIndex`, or 15 when the rate is explicit.
    pub frequency_index: u8,
    /// The core sample rate in Hz.
    pub sample_rate: u32,
    /// `channelConfiguration` (0 = defined in-band, 1–7 per Table 1.19).
    pub channel_config: u8,
    /// The output sample rate when SBR is signalled explicitly (HE-AAC).
    pub extension_sample_rate: Option<u32>,
}

impl AudioSpecificConfig {
    /// Parses an ASC.
    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        let mut r = BitReader::new(b, WHAT);
        let mut object_type = read_object_type(&mut r)?;
        let (frequency_index, sample_rate) = read_frequency(&mut r)?;
        let channel_config = r.bits(4)? as u8;
        let mut extension_sample_rate = None;
        if object_type == 5 || object_type == 29 {
            // Explicit hierarchical SBR signalling (§1.6.2.1): the core object type follows.
            extension_sample_rate = Some(read_frequency(&mut r)?.1);
            object_type = read_object_type(&mut r)?;
        }
        if object_type == 0 {
            return Err(Error::invalid(WHAT, "audioObjectType 0"));
        }
        Ok(Self { object_type, frequency_index, sample_rate, channel_config, extension_sample_rate })
    }

    /// Channel count, from `channelConfiguration` (Table 1.19: 7 means 7.1, 8 channels).
    pub const fn channels(&self) -> u8 {
        match self.channel_config {
            7 => 8,
            n => n,
        }
    }

    /// Writes the 7-byte ADTS header (no CRC) for one raw access unit of
    /// `payload_len` bytes. ADTS can only describe AAC Main/LC/SSR/LTP with a
    /// table sample rate and a channel configuration of 1–7.
    pub fn adts_header(&self, payload_len: usize) -> Result<[u8; 7], Error> {
        if !(1..=4).contains(&self.object_type) {
            return Err(Error::Unsupported { what: "audio object type in ADTS", value: u32::from(self.object_type) });
        }
        if self.frequency_index > 12 {
            return Err(Error::invalid("ADTS", "explicit sample rate cannot be signalled"));
        }
        let frame_len = payload_len.saturating_add(7);
        if frame_len > 0x1fff {
            return Err(Error::invalid("ADTS", "frame longer than 8191 bytes"));
        }
        let profile = self.object_type - 1;
        let ch = self.channel_config;
        Ok([
            0xff,
            0xf1, // MPEG-4, layer 0, protection absent
            (profile << 6) | (self.frequency_index << 2) | ((ch >> 2) & 0x01),
            ((ch & 0x03) << 6) | ((frame_len >> 11) as u8 & 0x03),
            (frame_len >> 3) as u8,
            ((frame_len as u8 & 0x07) << 5) | 0x1f,
            0xfc, // buffer fullness 0x7FF (VBR), one raw data block
        ])
    }
}

fn read_object_type(r: &mut BitReader<'_>) -> Result<u8, Error> {
    let t = r.bits(5)?;
    Ok(if t == 31 { 32 + r.bits(6)? as u8 } else { t as u8 })
}

fn read_frequency(r: &mut BitReader<'_>) -> Result<(u8, u32), Error> {
    let index = r.bits(4)? as u8;
    if index == 0x0f {
        let rate = r.bits(24)?;
        if rate == 0 {
            return Err(Error::invalid(WHAT, "explicit sample rate 0"));
        }
        return Ok((index, rate));
    }
    let rate = *SAMPLE_RATES.get(usize::from(index)).ok_or(Error::invalid(WHAT, "reserved samplingFrequencyIndex"))?;
    Ok((index, rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lc_48k_stereo() {
        // 0x11 0x90: AOT 2 (00010), index 3 (0011 = 48000), channels 2 (0010).
        let asc = AudioSpecificConfig::parse(&[0x11, 0x90]).unwrap();
        assert_eq!(asc.object_type, 2);
        assert_eq!(asc.sample_rate, 48000);
        assert_eq!(asc.channels(), 2);
        // 0x12 0x10: AOT 2, index 4 (44100), channels 2 (as ffmpeg writes for 44.1 kHz).
        let asc = AudioSpecificConfig::parse(&[0x12, 0x10]).unwrap();
        assert_eq!(asc.sample_rate, 44100);
        assert_eq!(asc.channel_config, 2);
    }

    #[test]
    fn he_aac_explicit_sbr() {
        // AOT 5, index 6 (24000), ch 2, ext index 3 (48000), AOT 2.
        // 00101 0110 0010 0011 00010 -> 0010 1011 0001 0001 1000 10(00)
        let asc = AudioSpecificConfig::parse(&[0x2b, 0x11, 0x88]).unwrap();
        assert_eq!(asc.object_type, 2);
        assert_eq!(asc.sample_rate, 24000);
        assert_eq!(asc.extension_sample_rate, Some(48000));
    }

    #[test]
    fn adts_header_fields() {
        let asc = AudioSpecificConfig::parse(&[0x11, 0x90]).unwrap();
        let h = asc.adts_header(100).unwrap();
        // Frame length 107 = 0b000_0000_1101_011.
        assert_eq!(h, [0xff, 0xf1, 0x4c, 0x80, 0x0d, 0x7f, 0xfc]);
        assert!(asc.adts_header(9000).is_err());
        assert!(asc.adts_header(usize::MAX).is_err(), "no overflow on any length");
    }

    #[test]
    fn invalid() {
        assert!(AudioSpecificConfig::parse(&[]).is_err());
        assert!(AudioSpecificConfig::parse(&[0x11]).is_err());
        assert!(AudioSpecificConfig::parse(&[0x16, 0x90]).is_err()); // index 13 reserved
        assert!(AudioSpecificConfig::parse(&[0x00, 0x00]).is_err());
    }
}

#[cfg(test)]
mod ffmpeg_tests {
    use super::*;

    /// ASCs written by ffmpeg 5.1's native AAC encoder into FLV (with its
    /// trailing sync extension `56 e5 00`, which is ignored).
    #[test]
    fn ffmpeg_written_asc() {
        let a = AudioSpecificConfig::parse(&[0x12, 0x08, 0x56, 0xe5, 0x00]).unwrap();
        assert_eq!((a.object_type, a.sample_rate, a.channels()), (2, 44100, 1));
        let a = AudioSpecificConfig::parse(&[0x11, 0x88, 0x56, 0xe5, 0x00]).unwrap();
        assert_eq!((a.object_type, a.sample_rate, a.channels()), (2, 48000, 1));
    }
}
