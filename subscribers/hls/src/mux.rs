//! fMP4 (CMAF) boxes with mp4-atom: the init segment of a GoP header's H.264
//! and AAC tracks, and one `moof` + `mdat` fragment per media segment.
//!
//! Timescales: video 90 kHz, audio its sample rate. Bus timestamps are
//! milliseconds and are converted here, once.

use bytes::Bytes;
use gopbus_proto::{AudioConfig, Codec, GopHeader, Payload, VideoConfig};
use mp4_atom::{
    Audio, Avc1, Avcc, Decode, Dinf, Dref, Encode, Esds, Ftyp, Hdlr, Mdat, Mdhd, Mdia, Mfhd, Minf, Moof, Moov, Mp4a,
    Mvex, Mvhd, Smhd, Stbl, Stco, Stsc, Stsd, Stsz, Stts, Tfdt, Tfhd, Tkhd, Traf, Trak, Trex, Trun, TrunEntry,
    TrunSamples, Url, Visual, Vmhd,
};

/// Video timescale (90 kHz, as MPEG).
pub const VIDEO_TIMESCALE: u32 = 90_000;
/// Samples per AAC-LC frame.
pub const AAC_FRAME: u32 = 1024;

/// Why a box could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// mp4-atom refused the structure.
    #[error("mp4: {0}")]
    Mp4(#[from] mp4_atom::Error),
    /// The GoP header has nothing HLS can carry.
    #[error("no H.264 or AAC track")]
    NoTracks,
}

/// The tracks of one init segment: which bus track each MP4 track is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The H.264 track (MP4 track 1), if any.
    pub video: Option<(gopbus_proto::TrackId, VideoConfig)>,
    /// The AAC track (MP4 track 1 or 2), if any.
    pub audio: Option<(gopbus_proto::TrackId, AudioConfig)>,
}

impl Layout {
    /// The first H.264 and first AAC track of a GoP header.
    pub fn of(h: &GopHeader) -> Result<Self, MuxError> {
        let mut layout = Self { video: None, audio: None };
        for t in &h.tracks {
            match &t.codec {
                Codec::H264(v) if layout.video.is_none() => layout.video = Some((t.id, v.clone())),
                Codec::Aac(a) if layout.audio.is_none() => layout.audio = Some((t.id, a.clone())),
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

    /// The RFC 6381 `CODECS` of this layout (`avc1.64001f,mp4a.40.2`).
    pub fn codecs(&self) -> String {
        let mut out = Vec::new();
        if let Some((_, v)) = &self.video {
            let compat = v.avcc.get(2).copied().unwrap_or(0);
            out.push(format!("avc1.{:02x}{:02x}{:02x}", v.profile, compat, v.level));
        }
        if let Some((_, a)) = &self.audio {
            out.push(format!("mp4a.40.{}", a.object_type));
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
    if let Some((_, a)) = &layout.audio {
        let id = layout.audio_id();
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
        let codec = Mp4a {
            audio: Audio {
                data_reference_index: 1,
                channel_count: u16::from(a.channels),
                sample_size: 16,
                sample_rate: (a.sample_rate.min(u32::from(u16::MAX)) as u16).into(),
            },
            esds,
            btrt: None,
            taic: None,
        };
        let minf = Minf { smhd: Some(Smhd::default()), dinf: dinf(), stbl: stbl(codec.into()), ..Default::default() };
        traks.push(trak(id, a.sample_rate, b"soun", minf, 0, 0));
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
    /// The bytes (AVCC NAL units or a raw AAC frame).
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
