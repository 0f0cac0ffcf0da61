//! The codec work of one rendition, without I/O: H.264 (AVCC, B-frames allowed)
//! in, decoded by libavcodec, scaled by libswscale, encoded by x264 (through
//! libavcodec) without B-frames, out as AVCC frames grouped in GoPs that start
//! at the source GoPs' timestamps.
//!
//! Timestamps are the bus's milliseconds. A rendition frame keeps the source
//! picture's presentation time; its decode time is the presentation time minus
//! the source keyframe's composition offset, so the keyframe that opens
//! rendition GoP `k` has the decode time of source GoP `k`'s keyframe — the
//! `start_dts` a [`gopbus_bus::TrackSubscriber`] matches GoPs on — and every
//! rendition picture shows at the same instant as the source picture it came
//! from.

use std::collections::VecDeque;
use std::sync::Once;

use bytes::Bytes;
use ff::format::Pixel;
use ff::software::scaling;
use ffmpeg_next as ff;
use gopbus_proto::VideoConfig;

use crate::ladder::Rung;

/// What can go wrong setting a codec up or running it.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// libavcodec or libswscale refused.
    #[error("{what}: {source}")]
    Ffmpeg {
        /// What was being done.
        what: &'static str,
        /// libav's error.
        source: ff::Error,
    },
    /// The build of libavcodec has no libx264 encoder.
    #[error("this libavcodec has no libx264 encoder (install Debian's libavcodec with x264 support)")]
    NoEncoder,
    /// The encoder's parameter sets could not be read.
    #[error("the encoder gave no usable SPS/PPS")]
    NoParameterSets,
}

fn ff_err(what: &'static str) -> impl FnOnce(ff::Error) -> CodecError {
    move |source| CodecError::Ffmpeg { what, source }
}

/// Initialises libav once and keeps its logging to errors.
pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        ff::init().expect("libav initialises");
        ff::util::log::set_level(ff::util::log::Level::Fatal);
    });
}

/// How the encoder is set up, beyond the rung.
#[derive(Debug, Clone)]
pub struct EncoderSettings {
    /// x264 preset (`ultrafast` … `veryslow`).
    pub preset: String,
    /// x264 profile of the output (`baseline`, `main`, `high`).
    pub profile: String,
    /// Encoder threads per rendition (1 keeps per-core cost lowest; the
    /// worker runs renditions in parallel).
    pub threads: u32,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        Self { preset: "veryfast".into(), profile: "main".into(), threads: 1 }
    }
}

/// Source H.264 decoder: AVCC access units in, pictures out in presentation order.
pub struct Decoder {
    dec: ff::decoder::Video,
    frame: ff::frame::Video,
    /// Frames whose decode failed, since the start.
    pub errors: u64,
}

impl Decoder {
    /// A decoder for the stream whose avcC is `config.avcc`.
    pub fn new(config: &VideoConfig) -> Result<Self, CodecError> {
        init();
        let codec = ff::decoder::find(ff::codec::Id::H264)
            .ok_or(CodecError::Ffmpeg { what: "finding the H.264 decoder", source: ff::Error::DecoderNotFound })?;
        let mut ctx = ff::codec::Context::new_with_codec(codec);
        set_extradata(&mut ctx, &config.avcc);
        // One thread: frame threading adds a frame of delay per thread, and the
        // worker runs renditions side by side on the other cores.
        let mut threading = ff::threading::Config::kind(ff::threading::Type::Slice);
        threading.count = 1;
        ctx.set_threading(threading);
        let mut dec = ctx.decoder();
        dec.set_packet_time_base(ff::Rational(1, 1000));
        let dec = dec.open_as(codec).map_err(ff_err("opening the H.264 decoder"))?;
        let dec = dec.video().map_err(ff_err("opening the H.264 decoder"))?;
        Ok(Self { dec, frame: ff::frame::Video::empty(), errors: 0 })
    }

    /// Decodes one access unit, given as the slices it arrived in (copied
    /// once, into libavcodec's padded packet); calls `out` with every picture
    /// that comes out (presentation order) and its presentation time.
    pub fn decode(
        &mut self,
        parts: &[Bytes],
        dts: i64,
        pts: i64,
        key: bool,
        mut out: impl FnMut(&ff::frame::Video, i64),
    ) {
        let len = parts.iter().map(Bytes::len).sum();
        let mut packet = ff::Packet::new(len);
        if let Some(data) = packet.data_mut() {
            let mut at = 0;
            for p in parts {
                data[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
        }
        packet.set_dts(Some(dts));
        packet.set_pts(Some(pts));
        if key {
            packet.set_flags(ff::packet::Flags::KEY);
        }
        if self.dec.send_packet(&packet).is_err() {
            self.errors += 1;
        }
        self.drain(&mut out);
    }

    fn drain(&mut self, out: &mut impl FnMut(&ff::frame::Video, i64)) {
        while self.dec.receive_frame(&mut self.frame).is_ok() {
            let pts = self.frame.timestamp().or(self.frame.pts());
            match pts {
                Some(pts) if !self.frame.has_decode_errors() => out(&self.frame, pts),
                _ => self.errors += 1,
            }
        }
    }

    /// Gives out the pictures still held for reordering.
    pub fn finish(&mut self, mut out: impl FnMut(&ff::frame::Video, i64)) {
        let _ = self.dec.send_eof();
        self.drain(&mut out);
        self.dec.flush();
    }

    /// Forgets everything held (after a jump in the source).
    pub fn reset(&mut self) {
        self.dec.flush();
    }
}

/// Copies `data` into the codec context's extradata (libav's allocation, padded).
fn set_extradata(ctx: &mut ff::codec::Context, data: &[u8]) {
    // SAFETY: the context is not open yet; extradata is owned by it from here on
    // and freed by avcodec_free_context. The buffer is allocated with the padding
    // libavcodec requires and zeroed.
    unsafe {
        let raw = ctx.as_mut_ptr();
        let len = data.len();
        let buf = ff::ffi::av_mallocz(len + ff::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize) as *mut u8;
        assert!(!buf.is_null(), "av_mallocz failed");
        std::ptr::copy_nonoverlapping(data.as_ptr(), buf, len);
        (*raw).extradata = buf;
        (*raw).extradata_size = len as i32;
    }
}

/// Scales pictures to one output size (bilinear, libswscale's SIMD paths).
pub struct Scaler {
    ctx: Option<(scaling::Context, (Pixel, u32, u32))>,
    out: ff::frame::Video,
    width: u32,
    height: u32,
}

impl Scaler {
    /// A scaler to `width`×`height` 4:2:0.
    pub fn new(width: u32, height: u32) -> Self {
        Self { ctx: None, out: ff::frame::Video::empty(), width, height }
    }

    /// Scales `input`; the result lives until the next call.
    pub fn scale(&mut self, input: &ff::frame::Video) -> Result<&mut ff::frame::Video, CodecError> {
        let key = (input.format(), input.width(), input.height());
        if self.ctx.as_ref().is_none_or(|(_, k)| *k != key) {
            let ctx = scaling::Context::get(
                key.0,
                key.1,
                key.2,
                Pixel::YUV420P,
                self.width,
                self.height,
                scaling::Flags::BILINEAR,
            )
            .map_err(ff_err("setting up the scaler"))?;
            self.ctx = Some((ctx, key));
            self.out = ff::frame::Video::new(Pixel::YUV420P, self.width, self.height);
        }
        let (ctx, _) = self.ctx.as_mut().expect("set above");
        ctx.run(input, &mut self.out).map_err(ff_err("scaling"))?;
        Ok(&mut self.out)
    }
}

/// One encoded access unit, AVCC.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Presentation time, ms.
    pub pts: i64,
    /// An IDR picture.
    pub key: bool,
    /// Length-prefixed NAL units.
    pub data: Bytes,
}

/// x264 through libavcodec: no B-frames, no scene-cut or periodic keyframes
/// (keyframes only where asked for), constant-ish bitrate under a 1 s VBV, so
/// one picture in gives one access unit out at once.
pub struct Encoder {
    enc: ff::encoder::Video,
    packet: ff::Packet,
    config: VideoConfig,
}

impl Encoder {
    /// An encoder of `width`×`height` at `rung`'s bitrate.
    pub fn new(width: u32, height: u32, rung: &Rung, fps: u32, settings: &EncoderSettings) -> Result<Self, CodecError> {
        init();
        let codec = ff::encoder::find_by_name("libx264").ok_or(CodecError::NoEncoder)?;
        let ctx = ff::codec::Context::new_with_codec(codec);
        let mut enc = ctx.encoder().video().map_err(ff_err("making the encoder"))?;
        enc.set_width(width);
        enc.set_height(height);
        enc.set_format(Pixel::YUV420P);
        enc.set_time_base(ff::Rational(1, 1000));
        enc.set_frame_rate(Some(ff::Rational(fps.max(1) as i32, 1)));
        enc.set_bit_rate(rung.bitrate_kbps as usize * 1000);
        enc.set_max_b_frames(0);
        enc.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        let kbps = rung.bitrate_kbps;
        let mut opts = ff::Dictionary::new();
        opts.set("preset", &settings.preset);
        opts.set("tune", "zerolatency");
        opts.set("profile", &settings.profile);
        opts.set("threads", &settings.threads.to_string());
        opts.set("forced-idr", "1");
        opts.set(
            "x264-params",
            &format!("keyint=infinite:scenecut=0:bframes=0:vbv-maxrate={kbps}:vbv-bufsize={kbps}:repeat-headers=0"),
        );
        let enc = enc.open_with(opts).map_err(ff_err("opening the x264 encoder"))?;
        let config = avcc_config(extradata(&enc), width, height)?;
        Ok(Self { enc, packet: ff::Packet::empty(), config })
    }

    /// The output's decoder configuration.
    pub fn config(&self) -> &VideoConfig {
        &self.config
    }

    /// Encodes `picture` (4:2:0 at the encoder's size) shown at `pts`, as an
    /// IDR when `key`; calls `out` with what comes out.
    pub fn encode(
        &mut self,
        picture: &mut ff::frame::Video,
        pts: i64,
        key: bool,
        mut out: impl FnMut(Packet),
    ) -> Result<(), CodecError> {
        picture.set_pts(Some(pts));
        picture.set_kind(if key { ff::picture::Type::I } else { ff::picture::Type::None });
        self.enc.send_frame(picture).map_err(ff_err("encoding"))?;
        while self.enc.receive_packet(&mut self.packet).is_ok() {
            let data = self.packet.data().unwrap_or_default();
            out(Packet {
                pts: self.packet.pts().unwrap_or(pts),
                key: self.packet.is_key(),
                data: annexb_to_avcc(data),
            });
        }
        Ok(())
    }
}

fn extradata(enc: &ff::encoder::Video) -> &[u8] {
    // SAFETY: the encoder is open; extradata/extradata_size describe a buffer it
    // owns for its lifetime, and the borrow of `enc` keeps it alive.
    unsafe {
        let raw = enc.as_ptr();
        if (*raw).extradata.is_null() || (*raw).extradata_size <= 0 {
            return &[];
        }
        std::slice::from_raw_parts((*raw).extradata, (*raw).extradata_size as usize)
    }
}

/// Annex B → 4-byte length-prefixed NAL units.
pub fn annexb_to_avcc(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 16);
    gopbus_proto::avc::annexb_to_avcc(data, &mut out);
    Bytes::from(out)
}

/// The avcC record of the first SPS and PPS in an Annex B header.
pub fn avcc_config(headers: &[u8], width: u32, height: u32) -> Result<VideoConfig, CodecError> {
    use gopbus_proto::avc::{annexb_nalus, nal, DecoderConfigurationRecord};
    let find = |t: u8| annexb_nalus(headers).find(|n| n[0] & 0x1f == t);
    let (Some(sps), Some(pps)) = (find(nal::SPS), find(nal::PPS)) else { return Err(CodecError::NoParameterSets) };
    let avcc = DecoderConfigurationRecord::build(sps, pps).map_err(|_| CodecError::NoParameterSets)?;
    Ok(VideoConfig { avcc, width, height, profile: sps[1], level: sps[3] })
}

/// The output size for `rung` from a `width`×`height` source: the rung's height
/// (never above the source's), the source's aspect, both even.
pub fn output_size(width: u32, height: u32, rung: &Rung) -> (u32, u32) {
    let h = rung.height.min(height).max(2) & !1;
    let w = ((u64::from(width) * u64::from(h) + u64::from(height) / 2) / u64::from(height.max(1))) as u32;
    ((w.max(2) + 1) & !1, h)
}

/// Where a source GoP starts: the decode time the bus knows it by, and the
/// presentation time of its keyframe.
#[derive(Debug, Clone, Copy)]
struct Mark {
    start_dts: i64,
    key_pts: i64,
}

/// What the rendition pipeline gives out.
#[derive(Debug, Clone)]
pub enum Output {
    /// A rendition GoP opens at `start_dts` (the source GoP's), with this configuration.
    Gop {
        /// The source GoP's `start_dts`.
        start_dts: i64,
        /// The rendition's decoder configuration.
        config: VideoConfig,
    },
    /// A frame of the open GoP.
    Frame {
        /// Decode time, ms.
        dts: i64,
        /// Presentation − decode, ms.
        cts: i32,
        /// An IDR.
        key: bool,
        /// AVCC.
        data: Bytes,
    },
}

/// Counters of one rendition pipeline.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Source frames decoded.
    pub decoded: u64,
    /// Pictures encoded.
    pub encoded: u64,
    /// Pictures left out by the fps cap.
    pub capped: u64,
    /// Pictures with no source GoP to belong to (after a reset).
    pub orphans: u64,
}

/// Decode → scale → encode for one rung, GoP-aligned with the source.
pub struct Pipeline {
    rung: Rung,
    settings: EncoderSettings,
    source: Option<VideoConfig>,
    decoder: Option<Decoder>,
    scaler: Option<Scaler>,
    encoder: Option<Encoder>,
    /// Source GoPs whose keyframe has not come out of the decoder yet.
    marks: VecDeque<Mark>,
    /// The source GoP the pictures now coming out belong to, and its offset
    /// (keyframe pts − start_dts).
    current: Option<(Mark, i64)>,
    /// Asked for an IDR at this pts, opening a GoP at this `start_dts`.
    pending_open: VecDeque<(i64, i64)>,
    last_dts: i64,
    next_capped_pts: i64,
    fps: u32,
    /// Counters.
    pub counters: Counters,
}

impl Pipeline {
    /// A pipeline for `rung`.
    pub fn new(rung: Rung, settings: EncoderSettings) -> Self {
        Self {
            rung,
            settings,
            source: None,
            decoder: None,
            scaler: None,
            encoder: None,
            marks: VecDeque::new(),
            current: None,
            pending_open: VecDeque::new(),
            last_dts: i64::MIN,
            next_capped_pts: i64::MIN,
            fps: 30,
            counters: Counters::default(),
        }
    }

    /// The source frame rate guess used to configure the encoder.
    pub fn set_fps_hint(&mut self, fps: u32) {
        self.fps = fps.clamp(1, 240);
    }

    /// Source errors that made a picture undecodable.
    pub fn decode_errors(&self) -> u64 {
        self.decoder.as_ref().map_or(0, |d| d.errors)
    }

    /// A source GoP starts: `config` is its video configuration, `start_dts`
    /// its first decode time, `key_pts` its keyframe's presentation time.
    pub fn open_gop(&mut self, config: &VideoConfig, start_dts: i64, key_pts: i64) -> Result<(), CodecError> {
        if self.source.as_ref() != Some(config) {
            // A new source configuration (a new resolution): start over.
            self.decoder = Some(Decoder::new(config)?);
            self.marks.clear();
            self.current = None;
            // The encoder is made (or remade, for a new output size) at the
            // first picture that decodes: a source that never decodes costs
            // no encoder.
            self.source = Some(config.clone());
        }
        self.marks.push_back(Mark { start_dts, key_pts });
        Ok(())
    }

    /// One source video frame (decode order), as the slices of its payload.
    pub fn push(
        &mut self,
        data: &[Bytes],
        dts: i64,
        pts: i64,
        key: bool,
        out: &mut Vec<Output>,
    ) -> Result<(), CodecError> {
        let Some(mut decoder) = self.decoder.take() else { return Ok(()) };
        let mut result = Ok(());
        decoder.decode(data, dts, pts, key, |picture, pts| {
            if result.is_ok() {
                result = self.picture(picture, pts, out);
            }
        });
        self.decoder = Some(decoder);
        result
    }

    /// The source ended: pictures held by the decoder are encoded.
    pub fn finish(&mut self, out: &mut Vec<Output>) -> Result<(), CodecError> {
        let Some(mut decoder) = self.decoder.take() else { return Ok(()) };
        let mut result = Ok(());
        decoder.finish(|picture, pts| {
            if result.is_ok() {
                result = self.picture(picture, pts, out);
            }
        });
        self.decoder = Some(decoder);
        result
    }

    /// The source jumped (GoPs skipped or cut short): drop what is held and
    /// wait for the next GoP.
    pub fn reset(&mut self) {
        if let Some(d) = self.decoder.as_mut() {
            d.reset();
        }
        self.marks.clear();
        self.current = None;
    }

    fn picture(&mut self, picture: &ff::frame::Video, pts: i64, out: &mut Vec<Output>) -> Result<(), CodecError> {
        self.counters.decoded += 1;
        let mut opens = None;
        while let Some(m) = self.marks.front().copied() {
            if pts < m.key_pts {
                break;
            }
            self.marks.pop_front();
            opens = Some(m);
        }
        if let Some(m) = opens {
            self.current = Some((m, m.key_pts - m.start_dts));
        }
        if self.current.is_none() {
            self.counters.orphans += 1;
            return Ok(());
        }
        let key = opens.is_some();
        if !key {
            if let Some(fps) = self.rung.fps {
                if pts < self.next_capped_pts {
                    self.counters.capped += 1;
                    return Ok(());
                }
                self.next_capped_pts = self.next_capped_pts.max(pts - 1000) + 1000 / i64::from(fps.max(1));
            }
        } else if let Some(fps) = self.rung.fps {
            self.next_capped_pts = pts + 1000 / i64::from(fps.max(1));
        }
        if let Some(m) = opens {
            self.pending_open.push_back((pts, m.start_dts));
        }
        if let Some(source) = &self.source {
            let (w, h) = output_size(source.width, source.height, &self.rung);
            if self.encoder.as_ref().is_none_or(|e| (e.config.width, e.config.height) != (w, h)) {
                self.encoder = Some(Encoder::new(w, h, &self.rung, self.rung.fps.unwrap_or(self.fps), &self.settings)?);
                self.scaler = Some(Scaler::new(w, h));
            }
        }
        let (Some(scaler), Some(encoder)) = (self.scaler.as_mut(), self.encoder.as_mut()) else { return Ok(()) };
        let scaled = scaler.scale(picture)?;
        let (current, pending, last_dts, counters) =
            (&self.current, &mut self.pending_open, &mut self.last_dts, &mut self.counters);
        let config = encoder.config.clone();
        encoder.encode(scaled, pts, key, |p| {
            counters.encoded += 1;
            let offset = current.map_or(0, |(_, o)| o);
            let mut dts = p.pts - offset;
            if let Some(i) = pending.iter().position(|&(at, _)| at == p.pts) {
                let (_, start_dts) = pending.remove(i).expect("found");
                out.push(Output::Gop { start_dts, config: config.clone() });
                dts = start_dts;
            } else {
                dts = dts.max(last_dts.saturating_add(1)).min(p.pts);
            }
            *last_dts = dts;
            out.push(Output::Frame { dts, cts: (p.pts - dts) as i32, key: p.key, data: p.data });
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annexb_becomes_length_prefixed() {
        let annexb = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5, 6];
        let avcc = annexb_to_avcc(&annexb);
        assert_eq!(&avcc[..], &[0, 0, 0, 3, 0x67, 1, 2, 0, 0, 0, 2, 0x68, 3, 0, 0, 0, 4, 0x65, 4, 5, 6]);
    }

    #[test]
    fn avcc_from_headers() {
        let headers = [0, 0, 0, 1, 0x67, 0x4d, 0x40, 0x1f, 9, 0, 0, 0, 1, 0x68, 0xee, 0x3c];
        let c = avcc_config(&headers, 640, 360).unwrap();
        assert_eq!(c.profile, 0x4d);
        assert_eq!(c.level, 0x1f);
        assert_eq!(
            c.avcc,
            vec![1, 0x4d, 0x40, 0x1f, 0xff, 0xe1, 0, 5, 0x67, 0x4d, 0x40, 0x1f, 9, 1, 0, 3, 0x68, 0xee, 0x3c]
        );
        assert!(avcc_config(&headers[..9], 640, 360).is_err(), "no PPS");
    }

    #[test]
    fn sizes_keep_aspect_and_never_upscale() {
        let r = |h| Rung { height: h, bitrate_kbps: 1000, fps: None };
        assert_eq!(output_size(1280, 720, &r(480)), (854, 480));
        assert_eq!(output_size(1280, 720, &r(360)), (640, 360));
        assert_eq!(output_size(1280, 720, &r(1080)), (1280, 720));
        assert_eq!(output_size(1920, 1080, &r(720)), (1280, 720));
    }
}
