//! AAC → Opus, once per broadcast, published back on the bus as the
//! broadcast's `audio/opus` track.
//!
//! [`AacToOpus`] is the codec work without I/O: raw AAC access units in (with
//! the AudioSpecificConfig from the GoP header), 20 ms Opus packets out, with
//! bus timestamps. fdk-aac decodes (to stereo), rubato resamples when the
//! source is not at 48 kHz, libopus encodes. [`encode`] is the task: it reads
//! the source's audio from any [`EventSource`] and publishes on the derived
//! track's [`Publisher`], one Opus GoP per source GoP with the same
//! `start_dts`, so viewers merge it with the video GoP by GoP.

use bytes::Bytes;
use gopbus_bus::{Event, EventSource, Publisher};
use gopbus_proto::{
    AudioConfig, Codec, EndReason, Frame, FrameFlags, FrameHeader, GopHeader, OpusConfig, Payload, TrackId, TrackInfo,
};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

/// The derived track's name.
pub const TRACK: &str = "audio/opus";

const RATE: u32 = 48_000;
const CHANNELS: usize = 2;
/// 20 ms at 48 kHz.
const FRAME: usize = 960;
/// Samples of silence AAC encoders put first (the decoder outputs them).
const ENCODER_PRIMING: f64 = 1024.0;
/// A gap in the source's timestamps larger than this restarts the clock.
const MAX_DRIFT_MS: f64 = 200.0;

/// Why transcoding stopped or a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    /// The AudioSpecificConfig was refused by the decoder.
    #[error("AAC decoder refused the AudioSpecificConfig: {0}")]
    Config(String),
    /// An access unit did not decode.
    #[error("AAC frame did not decode: {0}")]
    Decode(String),
    /// The resampler could not be built or failed.
    #[error("resampler: {0}")]
    Resample(String),
    /// libopus failed.
    #[error("Opus encoder: {0}")]
    Opus(#[from] opus::Error),
}

/// Settings of the Opus encoder.
#[derive(Debug, Clone, Copy)]
pub struct OpusSettings {
    /// Bits per second (default 128 000).
    pub bitrate: i32,
}

impl Default for OpusSettings {
    fn default() -> Self {
        Self { bitrate: 128_000 }
    }
}

/// Decodes AAC and encodes Opus, keeping the source's clock.
pub struct AacToOpus {
    decoder: fdk_aac::dec::Decoder,
    resampler: Option<Fft<f32>>,
    /// Resampler output still to drop (its delay), in frames.
    delay_left: usize,
    encoder: opus::Encoder,
    in_rate: u32,
    pcm: Vec<i16>,
    input: Vec<f32>,
    /// 48 kHz stereo samples not yet encoded, interleaved.
    fifo: Vec<f32>,
    /// The clock: (dts of sample 0 in ms, input frames decoded, output frames encoded).
    anchor: Option<(i64, u64, u64)>,
    packet: Vec<u8>,
    lookahead: u16,
    /// What the codecs delay the sound by, taken off the Opus timestamps (ms).
    delay_ms: i64,
}

impl AacToOpus {
    /// A transcoder for AAC with `asc`.
    pub fn new(asc: &[u8], settings: OpusSettings) -> Result<Self, TranscodeError> {
        if asc.len() < 2 {
            return Err(TranscodeError::Config(format!("{} bytes; an AudioSpecificConfig has at least 2", asc.len())));
        }
        let mut decoder = fdk_aac::dec::Decoder::new(fdk_aac::dec::Transport::Raw);
        decoder.config_raw(asc).map_err(|e| TranscodeError::Config(e.message().to_owned()))?;
        // Always stereo out (mono is upmixed, more channels downmixed).
        decoder.set_min_output_channels(CHANNELS).map_err(|e| TranscodeError::Config(e.message().to_owned()))?;
        decoder.set_max_output_channels(CHANNELS).map_err(|e| TranscodeError::Config(e.message().to_owned()))?;
        let mut encoder = opus::Encoder::new(RATE, opus::Channels::Stereo, opus::Application::Audio)?;
        encoder.set_bitrate(opus::Bitrate::Bits(settings.bitrate))?;
        let lookahead = u16::try_from(encoder.get_lookahead()?).unwrap_or(0);
        Ok(Self {
            decoder,
            resampler: None,
            delay_left: 0,
            encoder,
            in_rate: 0,
            pcm: vec![0; 8192],
            input: Vec::new(),
            fifo: Vec::with_capacity(4 * FRAME * CHANNELS),
            anchor: None,
            packet: vec![0; 4000],
            lookahead,
            delay_ms: 0,
        })
    }

    /// The Opus track's configuration.
    pub fn config(&self) -> OpusConfig {
        OpusConfig { channels: CHANNELS as u8, input_sample_rate: self.in_rate.max(RATE), pre_skip: self.lookahead }
    }

    /// Transcodes one AAC access unit with decode timestamp `dts` (ms),
    /// appending the finished Opus packets with their timestamps to `out`.
    pub fn push(&mut self, dts: i64, aac: &[u8], out: &mut Vec<(i64, Bytes)>) -> Result<(), TranscodeError> {
        self.decoder.fill(aac).map_err(|e| TranscodeError::Decode(e.message().to_owned()))?;
        self.decoder.decode_frame(&mut self.pcm).map_err(|e| TranscodeError::Decode(e.message().to_owned()))?;
        let info = self.decoder.stream_info();
        let (rate, frames, channels) =
            (info.sampleRate.max(1) as u32, info.frameSize.max(0) as usize, info.numChannels.max(1) as usize);
        if channels != CHANNELS || frames == 0 {
            return Err(TranscodeError::Decode(format!("{channels} channels, {frames} samples")));
        }
        if rate != self.in_rate || self.resampler.as_ref().is_some_and(|r| r.input_frames_next() != frames) {
            self.in_rate = rate;
            // The sound comes out of the decoder after the AAC encoder's priming
            // (1024 samples: ffmpeg, fdk-aac and OBS's encoders) and out of
            // libopus after its lookahead; timestamps say when it was heard.
            self.delay_ms = ((ENCODER_PRIMING * 1000.0 / f64::from(rate))
                + f64::from(self.lookahead) * 1000.0 / f64::from(RATE))
            .round() as i64;
            self.restart_resampler(frames)?;
            self.anchor = None;
        }
        // Keep the source's clock: a jump in its timestamps restarts ours.
        match self.anchor {
            Some((start, decoded, _)) => {
                let expected = start as f64 + decoded as f64 * 1000.0 / f64::from(rate);
                if (dts as f64 - expected).abs() > MAX_DRIFT_MS {
                    self.fifo.clear();
                    self.restart_resampler(frames)?;
                    self.anchor = Some((dts, 0, 0));
                }
            }
            None => self.anchor = Some((dts, 0, 0)),
        }
        if let Some(a) = self.anchor.as_mut() {
            a.1 += frames as u64;
        }
        self.input.clear();
        self.input.extend(self.pcm[..frames * CHANNELS].iter().map(|&s| f32::from(s) / 32768.0));
        match self.resampler.as_mut() {
            None => self.fifo.extend_from_slice(&self.input),
            Some(r) => {
                let adapter = InterleavedSlice::new(&self.input, CHANNELS, frames)
                    .map_err(|e| TranscodeError::Resample(e.to_string()))?;
                let resampled = r.process(&adapter, None).map_err(|e| TranscodeError::Resample(e.to_string()))?;
                let data = resampled.take_data();
                let drop = self.delay_left.min(data.len() / CHANNELS);
                self.delay_left -= drop;
                self.fifo.extend_from_slice(&data[drop * CHANNELS..]);
            }
        }
        let (start, _, encoded) = self.anchor.as_mut().expect("set above");
        let mut used = 0;
        while self.fifo.len() - used >= FRAME * CHANNELS {
            let n = self.encoder.encode_float(&self.fifo[used..used + FRAME * CHANNELS], &mut self.packet)?;
            let at = *start + (*encoded * 1000 / u64::from(RATE)) as i64 - self.delay_ms;
            out.push((at, Bytes::copy_from_slice(&self.packet[..n])));
            *encoded += FRAME as u64;
            used += FRAME * CHANNELS;
        }
        self.fifo.drain(..used);
        Ok(())
    }

    fn restart_resampler(&mut self, frames: usize) -> Result<(), TranscodeError> {
        self.resampler = None;
        self.delay_left = 0;
        if self.in_rate != RATE {
            let r = Fft::<f32>::new(self.in_rate as usize, RATE as usize, frames, CHANNELS, FixedSync::Input)
                .map_err(|e| TranscodeError::Resample(e.to_string()))?;
            self.delay_left = r.output_delay();
            self.resampler = Some(r);
        }
        Ok(())
    }
}

/// What an encoder task did.
#[derive(Debug, Clone, Default)]
pub struct EncodeSummary {
    /// AAC frames read.
    pub aac_frames: u64,
    /// Opus packets published.
    pub opus_packets: u64,
    /// AAC frames that did not decode (logged, skipped).
    pub bad_frames: u64,
}

/// Reads the source's AAC from `source` and publishes it as Opus on
/// `publisher` (from `add_track(name, TRACK)`) until the source ends or
/// `stop` fires. A frame that does not decode is skipped with a log line;
/// the broadcast carries on.
pub async fn encode(
    mut source: impl EventSource,
    mut publisher: Publisher,
    settings: OpusSettings,
    stop: tokio_util::sync::CancellationToken,
) -> EncodeSummary {
    let name = publisher.name().to_owned();
    let mut summary = EncodeSummary::default();
    let mut codec: Option<(AudioConfig, AacToOpus)> = None;
    let mut out = Vec::new();
    let mut open = false;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => { publisher.end(EndReason::Shutdown); break }
            e = source.next_event() => e,
        };
        match event {
            Event::Gop(h) => {
                let Some(asc) = h.audio().cloned() else {
                    // No AAC in this GoP: no Opus GoP either.
                    open = false;
                    continue;
                };
                if codec.as_ref().is_none_or(|(c, _)| c.asc != asc.asc) {
                    match AacToOpus::new(&asc.asc, settings) {
                        Ok(t) => codec = Some((asc, t)),
                        Err(e) => {
                            tracing::warn!(track = %name, error = %e, "cannot transcode this AAC to Opus");
                            codec = None;
                            open = false;
                            continue;
                        }
                    }
                }
                let config = codec.as_ref().map(|(_, t)| t.config()).expect("set above");
                let header = GopHeader {
                    seq: 0,
                    start_dts: h.start_dts,
                    tracks: vec![TrackInfo { id: TrackId(0), name: TRACK.to_owned(), codec: Codec::Opus(config) }],
                    metadata: None,
                };
                if publisher.open_gop(header).is_err() {
                    break;
                }
                open = true;
            }
            Event::Frame(f) if f.header.track == TrackId::AUDIO && open => {
                let Some((_, t)) = codec.as_mut() else { continue };
                summary.aac_frames += 1;
                let aac = f.payload.contiguous();
                if let Err(e) = t.push(f.header.dts, &aac, &mut out) {
                    summary.bad_frames += 1;
                    tracing::warn!(track = %name, dts = f.header.dts, error = %e, "AAC frame skipped");
                    continue;
                }
                for (dts, packet) in out.drain(..) {
                    let header = FrameHeader {
                        track: TrackId(0),
                        dts,
                        cts: 0,
                        flags: FrameFlags::KEYFRAME,
                        len: packet.len() as u32,
                    };
                    if publisher.push(Frame { header, payload: Payload::from_bytes(packet) }).is_err() {
                        return summary;
                    }
                    summary.opus_packets += 1;
                }
            }
            Event::Frame(_) => {}
            Event::CutShort { .. } | Event::Skipped { .. } => {}
            Event::End(reason) => {
                publisher.end(reason);
                break;
            }
        }
    }
    tracing::info!(
        track = %name,
        aac = summary.aac_frames,
        opus = summary.opus_packets,
        bad = summary.bad_frames,
        "Opus encoder stopped"
    );
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a 440 Hz tone with libfdk's encoder to raw AAC frames.
    fn aac_tone(rate: u32, seconds: u32) -> (Vec<u8>, Vec<Vec<u8>>) {
        use fdk_aac::enc::{BitRate, ChannelMode, Encoder, EncoderParams, Transport};
        let enc = Encoder::new(EncoderParams {
            bit_rate: BitRate::Cbr(128_000),
            sample_rate: rate,
            transport: Transport::Raw,
            channels: ChannelMode::Stereo,
            audio_object_type: fdk_aac::enc::AudioObjectType::Mpeg4LowComplexity,
        })
        .unwrap();
        let asc = enc.info().unwrap().confBuf[..enc.info().unwrap().confSize as usize].to_vec();
        let total = (rate * seconds) as usize;
        let pcm: Vec<i16> = (0..total)
            .flat_map(|i| {
                let s = ((i as f64 * 440.0 * std::f64::consts::TAU / f64::from(rate)).sin() * 12000.0) as i16;
                [s, s]
            })
            .collect();
        let mut frames = Vec::new();
        let mut out = vec![0u8; 8192];
        for chunk in pcm.chunks(2048) {
            let r = enc.encode(chunk, &mut out).unwrap();
            if r.output_size > 0 {
                frames.push(out[..r.output_size].to_vec());
            }
        }
        (asc, frames)
    }

    fn transcode(rate: u32) -> (Vec<(i64, Bytes)>, f64) {
        let (asc, frames) = aac_tone(rate, 2);
        let mut t = AacToOpus::new(&asc, OpusSettings::default()).unwrap();
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let dts = 5000 + (i as f64 * 1024.0 * 1000.0 / f64::from(rate)) as i64;
            t.push(dts, f, &mut out).unwrap();
        }
        // Decode the Opus back and measure its level.
        let mut dec = opus::Decoder::new(48_000, opus::Channels::Stereo).unwrap();
        let mut pcm = vec![0f32; 5760 * 2];
        let (mut sum, mut n) = (0.0, 0usize);
        for (_, p) in out.iter().skip(10) {
            let k = dec.decode_float(p, &mut pcm, false).unwrap();
            sum += pcm[..k * 2].iter().map(|s| f64::from(*s).powi(2)).sum::<f64>();
            n += k * 2;
        }
        (out, (sum / n as f64).sqrt())
    }

    #[test]
    fn aac_at_48k_becomes_20ms_opus_frames_on_the_source_clock_and_keeps_its_level() {
        let (out, rms) = transcode(48_000);
        assert!(out.len() >= 90, "{} packets for ~2 s", out.len());
        // The first AAC frame's dts, less AAC priming (21.3 ms) and Opus lookahead (6.5 ms).
        assert_eq!(out[0].0, 5000 - 28, "starts at the first AAC frame's dts, less the codec delays");
        assert!(out.windows(2).all(|w| w[1].0 - w[0].0 == 20), "20 ms apart");
        // A sine of amplitude 12000/32768 has an RMS of about 0.26.
        assert!(rms > 0.15 && rms < 0.4, "level {rms}");
    }

    #[test]
    fn aac_at_44k1_is_resampled_to_48k() {
        let (out, rms) = transcode(44_100);
        assert!(out.len() >= 90, "{} packets", out.len());
        assert!(out.windows(2).all(|w| w[1].0 - w[0].0 == 20));
        assert!(rms > 0.15 && rms < 0.4, "level {rms}");
    }

    #[test]
    fn a_jump_in_the_source_clock_restarts_ours() {
        let (asc, frames) = aac_tone(48_000, 1);
        let mut t = AacToOpus::new(&asc, OpusSettings::default()).unwrap();
        let mut out = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            let base = if i < 20 { 0 } else { 60_000 };
            t.push(base + i as i64 * 21, f, &mut out).unwrap();
        }
        let after: Vec<i64> = out.iter().map(|(d, _)| *d).filter(|d| *d >= 60_000).collect();
        assert_eq!(after.first(), Some(&(60_000 + 20 * 21 - 28)), "re-anchored at the frame after the jump");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let (asc, _) = aac_tone(48_000, 1);
        let mut t = AacToOpus::new(&asc, OpusSettings::default()).unwrap();
        // Whatever the decoder makes of it, it returns instead of panicking.
        let _ = t.push(0, &[0xff; 7], &mut Vec::new());
        let _ = t.push(0, &[0x00; 3], &mut Vec::new());
        assert!(AacToOpus::new(&[], OpusSettings::default()).is_err());
    }
}
