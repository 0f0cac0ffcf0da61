//! fMP4 (CMAF) boxes with mp4-atom: the init segment of a GoP header's H.264
//! and AAC (or Opus) tracks, and one `moof` + `mdat` fragment per media segment.
//!
//! Timescales: video 90 kHz, audio its sample rate (Opus: 48 kHz). Bus
//! timestamps are milliseconds and are converted here, once.

use bytes::Bytes;
use gopbus_proto::{AudioConfig, Codec, GopHeader, OpusConfig, Payload, VideoConfig};
use mp4_atom::{
    Audio, Avc1, Avcc, Decode, Dinf, Dops, Dref, Encode, Esds, Ftyp, Hdlr, Mdat, Mdhd, Mdia, Mfhd, Minf, Moof, Moov,
    Mp4a, Mvex, Mvhd, Opus, Smhd, Stbl, Stco, Stsc, Stsd, Stsz, Stts, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun,
    TrunEntry, TrunSamples, Url, Visual, Vmhd,
};

/// Video timescale (90 kHz, as MPEG).
pub const VIDEO_TIMESCALE: u32 = 90_000;
/// Samples per AAC-LC frame.
pub const AAC_FRAME: u32 = 1024;
/// Opus's timescale: it always decodes at 48 kHz.
pub const OPUS_TIMESCALE: u32 = 48_000;

/// Why a box could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// mp4-atom refused the structure.
    #[error("mp4: {0}")]
    Mp4(#[from] mp4_atom::Error),
    /// The GoP header has nothing HLS can carry.
    #[error("no H.264, AAC or Opus track")]
    NoTracks,
}

/// The tracks of one init segment: which bus track each MP4 track is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The H.264 track (MP4 track 1), if any.
    pub video: Option<(gopbus_proto::TrackId, VideoConfig)>,
    /// The AAC or Opus track (MP4 track 1 or 2), if any.
    pub audio: Option<(gopbus_proto::TrackId, AudioCodec)>,
}

/// The audio codecs HLS carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioCodec {
    /// AAC, with its AudioSpecificConfig.
    Aac(AudioConfig),
    /// Opus (RFC 7845's `dOps` fields).
    Opus(OpusConfig),
}

impl AudioCodec {
    /// The MP4 track's timescale.
    pub const fn timescale(&self) -> u32 {
        match self {
            Self::Aac(a) => a.sample_rate,
            Self::Opus(_) => OPUS_TIMESCALE,
        }
    }

    /// The duration of one access unit in the timescale: AAC's is fixed,
    /// Opus's is read from the packet's TOC byte (2.5 to 120 ms).
    pub fn frame_duration(&self, packet: &Payload) -> u32 {
        match self {
            Self::Aac(_) => AAC_FRAME,
            Self::Opus(_) => {
                let mut head = [0u8; 2];
                let mut n = 0;
                for part in packet.parts() {
                    for &b in part.iter().take(2 - n) {
                        head[n] = b;
                        n += 1;
                    }
                    if n == 2 {
                        break;
                    }
                }
                opus_samples(&head[..n]).unwrap_or(960)
            }
        }
    }
}

/// Samples at 48 kHz in an Opus packet, from its TOC byte (and the frame
/// count byte of code-3 packets), RFC 6716 §3.1; `None` for an empty packet.
pub fn opus_samples(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    // SILK-only 10/20/40/60 ms, hybrid 10/20 ms, CELT-only 2.5/5/10/20 ms.
    let per_frame = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(packet.get(1).map_or(1, |c| (c & 0x3f).max(1))),
    };
    Some((per_frame * frames).min(5760))
}

impl Layout {
    /// The first H.264 and the first AAC (else Opus) track of a GoP header.
    pub fn of(h: &GopHeader) -> Result<Self, MuxError> {
        let mut layout = Self { video: None, audio: None };
        for t in &h.tracks {
            match &t.codec {
                Codec::H264(v) if layout.video.is_none() => layout.video = Some((t.id, v.clone())),
                Codec::Aac(a) if !matches!(layout.audio, Some((_, AudioCodec::Aac(_)))) => {
                    layout.audio = Some((t.id, AudioCodec::Aac(a.clone())));
                }
                Codec::Opus(o) if layout.audio.is_none() => layout.audio = Some((t.id, AudioCodec::Opus(o.clone()))),
                _ => {}
            }
        }
        if layout.video.is_none() && layout.audio.is_none() {
            return Err(MuxError::NoTracks);
        }
        Ok(layout)
    }

    /// MP4 track id of the video track.
    pub const VIDEO_ID: u32 = 1;

    /// MP4 track id of the audio track.
    pub const fn audio_id(&self) -> u32 {
        if self.video.is_some() {
            2
        } else {
            1
        }
    }

    /// The RFC 6381 `CODECS` of this layout (`avc1.64001f,mp4a.40.2`, `opus`).
    pub fn codecs(&self) -> String {
        let mut out = Vec::new();
        if let Some((_, v)) = &self.video {
            let compat = v.avcc.get(2).copied().unwrap_or(0);
            out.push(format!("avc1.{:02x}{:02x}{:02x}", v.profile, compat, v.level));
        }
        match &self.audio {
            Some((_, AudioCodec::Aac(a))) => out.push(format!("mp4a.40.{}", a.object_type)),
            Some((_, AudioCodec::Opus(_))) => out.push("opus".to_owned()),
            None => {}
        }
        out.join(",")
    }
}

fn encode<T: Encode>(atom: &T, out: &mut Vec<u8>) -> Result<(), MuxError> {
    atom.encode(out)?;
    Ok(())
}

/// The avcC record as mp4-atom's structure (it is parsed from the box bytes).
fn avcc(record: &[u8]) -> Result<Avcc, MuxError> {
    let mut boxed = Vec::with_capacity(record.len() + 8);
    boxed.extend_from_slice(&((record.len() + 8) as u32).to_be_bytes());
    boxed.extend_from_slice(b"avcC");
    boxed.extend_from_slice(record);
    Ok(Avcc::decode(&mut std::io::Cursor::new(boxed.as_slice()))?)
}

fn trak(id: u32, timescale: u32, handler: &[u8; 4], media: Minf, width: u32, height: u32) -> Trak {
    Trak {
        tkhd: Tkhd {
            track_id: id,
            enabled: true,
            in_movie: true,
            width: (width as u16).into(),
            height: (height as u16).into(),
            volume: if handler == b"soun" { 1.into() } else { 0.into() },
            ..Default::default()
        },
        mdia: Mdia {
            mdhd: Mdhd { timescale, language: "und".into(), ..Default::default() },
            hdlr: Hdlr { handler: handler.into(), name: "gopbus".into() },
            minf: media,
        },
        ..Default::default()
    }
}

fn stbl(codec: mp4_atom::Codec) -> Stbl {
    Stbl {
        stsd: Stsd { codecs: vec![codec] },
        stts: Stts::default(),
        stsc: Stsc::default(),
        stsz: Stsz::default(),
        stco: Some(Stco::default()),
        ..Default::default()
    }
}

fn dinf() -> Dinf {
    Dinf { dref: Dref { entries: vec![Url { location: String::new() }.into()] } }
}

/// The init segment (`ftyp` + `moov`) for `layout`.
pub fn init_segment(layout: &Layout) -> Result<Bytes, MuxError> {
    let mut traks = Vec::new();
    let mut trex = Vec::new();
    if let Some((_, v)) = &layout.video {
        let codec = Avc1 {
            visual: Visual {
                data_reference_index: 1,
                width: v.width as u16,
                height: v.height as u16,
                horizresolution: 72.into(),
                vertresolution: 72.into(),
                frame_count: 1,
                compressor: String::new().into(),
                depth: 24,
            },
            avcc: avcc(&v.avcc)?,
            ..Default::default()
        };
        let minf = Minf { vmhd: Some(Vmhd::default()), dinf: dinf(), stbl: stbl(codec.into()), ..Default::default() };
        traks.push(trak(Layout::VIDEO_ID, VIDEO_TIMESCALE, b"vide", minf, v.width, v.height));
        trex.push(Trex { track_id: Layout::VIDEO_ID, default_sample_description_index: 1, ..Default::default() });
    }
    if let Some((_, audio)) = &layout.audio {
        let id = layout.audio_id();
        let codec = match audio {
            AudioCodec::Aac(a) => mp4a(id, a).into(),
            AudioCodec::Opus(o) => opus(o).into(),
        };
        let minf = Minf { smhd: Some(Smhd::default()), dinf: dinf(), stbl: stbl(codec), ..Default::default() };
        traks.push(trak(id, audio.timescale(), b"soun", minf, 0, 0));
        trex.push(Trex { track_id: id, default_sample_description_index: 1, ..Default::default() });
    }
    let moov = Moov {
        mvhd: Mvhd {
            timescale: 1000,
            rate: 1.into(),
            volume: 1.into(),
            next_track_id: traks.len() as u32 + 1,
            ..Default::default()
        },
        mvex: Some(Mvex { trex, ..Default::default() }),
        trak: traks,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(1024);
    let ftyp = Ftyp {
        major_brand: b"iso6".into(),
        minor_version: 0,
        compatible_brands: vec![b"iso6".into(), b"cmfc".into(), b"mp41".into()],
    };
    encode(&ftyp, &mut out)?;
    encode(&moov, &mut out)?;
    Ok(out.into())
}

/// The `mp4a` sample entry of an AAC track.
fn mp4a(id: u32, a: &AudioConfig) -> Mp4a {
    let esds = Esds {
        es_desc: mp4_atom::esds::EsDescriptor {
            es_id: id as u16,
            dec_config: mp4_atom::esds::DecoderConfig {
                object_type_indication: 0x40,
                stream_type: 5,
                dec_specific: Some(mp4_atom::esds::DecoderSpecific {
                    profile: a.object_type,
                    freq_index: 0,
                    chan_conf: a.channels,
                    raw: a.asc.clone(),
                }),
                ..Default::default()
            },
            ..Default::default()
        },
    };
    Mp4a {
        audio: Audio {
            data_reference_index: 1,
            channel_count: u16::from(a.channels),
            sample_size: 16,
            sample_rate: (a.sample_rate.min(u32::from(u16::MAX)) as u16).into(),
        },
        esds,
        btrt: None,
        taic: None,
    }
}

/// The `Opus` sample entry (with `dOps`) of an Opus track, as "Encapsulation
/// of Opus in ISO Base Media File Format" lays it out: 48 kHz, the encoder's
/// pre-skip, channel mapping family 0 (mono or stereo).
fn opus(o: &OpusConfig) -> Opus {
    Opus {
        audio: Audio {
            data_reference_index: 1,
            channel_count: u16::from(o.channels.max(1)),
            sample_size: 16,
            sample_rate: (OPUS_TIMESCALE as u16).into(),
        },
        dops: Dops {
            output_channel_count: o.channels.max(1),
            pre_skip: o.pre_skip,
            input_sample_rate: o.input_sample_rate,
            output_gain: 0,
            channel_mapping: None,
        },
        btrt: None,
    }
}

/// One sample of a fragment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Decode time in the track's timescale.
    pub dts: u64,
    /// Duration in the track's timescale.
    pub duration: u32,
    /// Composition offset in the track's timescale.
    pub cts: i32,
    /// A sync sample.
    pub key: bool,
    /// The bytes (AVCC NAL units, a raw AAC frame or an Opus packet).
    pub payload: Payload,
}

/// `moof` + `mdat` for one segment: a track run per MP4 track id, in that order.
pub fn fragment(sequence: u32, runs: &[(u32, &[Sample])]) -> Result<Bytes, MuxError> {
    let runs: Vec<&(u32, &[Sample])> = runs.iter().filter(|(_, s)| !s.is_empty()).collect();
    let build = |offsets: &[i32]| Moof {
        mfhd: Mfhd { sequence_number: sequence },
        traf: runs
            .iter()
            .zip(offsets)
            .map(|((id, samples), &offset)| Traf {
                tfhd: Tfhd { track_id: *id, default_base_is_moof: true, ..Default::default() },
                tfdt: Some(Tfdt { base_media_decode_time: samples[0].dts }),
                trun: vec![Trun {
                    data_offset: Some(offset),
                    samples: TrunSamples::Explicit(
                        samples
                            .iter()
                            .map(|s| TrunEntry {
                                duration: Some(s.duration),
                                size: Some(s.payload.len() as u32),
                                // sample_depends_on = 2 (no other sample) and not non-sync for keyframes.
                                flags: Some(if s.key { 0x0200_0000 } else { 0x0101_0000 }),
                                cts: Some(i64::from(s.cts)),
                            })
                            .collect(),
                    ),
                }],
                ..Default::default()
            })
            .collect(),
    };
    // The data offsets depend on the moof's size, which does not depend on their values.
    let mut probe = Vec::new();
    encode(&build(&vec![0; runs.len()]), &mut probe)?;
    let mut offsets = Vec::with_capacity(runs.len());
    let mut at = probe.len() + 8;
    for (_, samples) in &runs {
        offsets.push(at as i32);
        at += samples.iter().map(|s| s.payload.len()).sum::<usize>();
    }
    let mut out = Vec::with_capacity(at);
    encode(&build(&offsets), &mut out)?;
    // The one copy of the media: into the segment, which is then served to every viewer as is.
    let mut mdat = Vec::with_capacity(at - probe.len() - 8);
    for (_, samples) in &runs {
        for s in samples.iter() {
            for part in s.payload.parts() {
                mdat.extend_from_slice(part);
            }
        }
    }
    encode(&Mdat { data: mdat }, &mut out)?;
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gopbus_proto::{TrackId, TrackInfo};

    #[test]
    fn opus_packet_durations_come_from_the_toc() {
        // CELT-only 20 ms, one frame (libopus at 128 kb/s, what the WebRTC encoder sends).
        assert_eq!(opus_samples(&[31 << 3, 0xaa]), Some(960));
        // SILK-only 60 ms.
        assert_eq!(opus_samples(&[3 << 3]), Some(2880));
        // Hybrid 10 ms, two frames (code 1).
        assert_eq!(opus_samples(&[(12 << 3) | 1]), Some(960));
        // CELT 2.5 ms, code 3 with 4 frames.
        assert_eq!(opus_samples(&[(16 << 3) | 3, 4]), Some(480));
        // Code 3 may not claim more than 120 ms.
        assert_eq!(opus_samples(&[(3 << 3) | 3, 63]), Some(5760));
        assert_eq!(opus_samples(&[]), None);
        let codec = AudioCodec::Opus(OpusConfig { channels: 2, input_sample_rate: 48_000, pre_skip: 312 });
        let split = Payload::from_parts(vec![Bytes::from_static(&[11 << 3]), Bytes::from_static(&[0, 1])]);
        assert_eq!(codec.frame_duration(&split), 2880, "SILK 60 ms, TOC in the first slice");
    }

    #[test]
    fn an_opus_track_gets_an_opus_sample_entry_at_48_khz() {
        let opus = OpusConfig { channels: 2, input_sample_rate: 44_100, pre_skip: 312 };
        let header = GopHeader {
            seq: 0,
            start_dts: 0,
            tracks: vec![TrackInfo { id: TrackId(17), name: "audio/opus".into(), codec: Codec::Opus(opus.clone()) }],
            metadata: None,
        };
        let layout = Layout::of(&header).unwrap();
        assert_eq!(layout.codecs(), "opus");
        assert_eq!(layout.audio_id(), 1);
        let init = init_segment(&layout).unwrap();
        let mut cursor = std::io::Cursor::new(init.as_ref());
        let _ftyp = Ftyp::decode(&mut cursor).unwrap();
        let moov = Moov::decode(&mut cursor).unwrap();
        let trak = &moov.trak[0];
        assert_eq!(trak.mdia.mdhd.timescale, OPUS_TIMESCALE);
        match &trak.mdia.minf.stbl.stsd.codecs[0] {
            mp4_atom::Codec::Opus(o) => {
                assert_eq!(o.dops.pre_skip, 312);
                assert_eq!(o.dops.input_sample_rate, 44_100);
                assert_eq!(o.dops.output_channel_count, 2);
            }
            other => panic!("not an Opus sample entry: {other:?}"),
        }
    }

    #[test]
    fn aac_is_preferred_to_opus_in_a_muxed_layout() {
        let aac = AudioConfig { asc: vec![0x11, 0x90], object_type: 2, sample_rate: 48_000, channels: 2 };
        let opus = OpusConfig { channels: 2, input_sample_rate: 48_000, pre_skip: 312 };
        let track = |id: u8, name: &str, codec| TrackInfo { id: TrackId(id), name: name.into(), codec };
        let header = GopHeader {
            seq: 0,
            start_dts: 0,
            tracks: vec![track(5, "audio/opus", Codec::Opus(opus)), track(2, "audio", Codec::Aac(aac.clone()))],
            metadata: None,
        };
        assert_eq!(Layout::of(&header).unwrap().audio, Some((TrackId(2), AudioCodec::Aac(aac))));
    }
}
