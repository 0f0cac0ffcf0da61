//! The test streams: a real H.264 + AAC stream made once with ffmpeg and cached,
//! and synthetic GoP headers for bus-level load, where nothing decodes the media.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

use crate::flv::{self, Tag};

/// Parameters of the stream the bench publishes.
#[derive(Debug, Clone, Copy)]
pub struct StreamSpec {
    /// Video width.
    pub width: u32,
    /// Video height.
    pub height: u32,
    /// Video bitrate in kb/s.
    pub kbps: u32,
    /// Length in seconds (publishers loop it).
    pub seconds: u32,
    /// Seconds between keyframes.
    pub gop: u32,
    /// B-frames (as OBS and x264 by default); WebRTC viewers need none.
    pub bframes: bool,
}

impl Default for StreamSpec {
    fn default() -> Self {
        Self { width: 640, height: 360, kbps: 1000, seconds: 10, gop: 1, bframes: true }
    }
}

impl StreamSpec {
    /// Makes (once) and reads the stream: H.264 High, 30 fps, a keyframe every
    /// `gop` seconds, B-frames unless told not to, AAC 48 kHz stereo 128 kb/s.
    pub fn tags(&self) -> anyhow::Result<Vec<Tag>> {
        let (w, h, kbps, secs, gop) = (self.width, self.height, self.kbps, self.seconds, self.gop.max(1));
        let bf = if self.bframes { 2 } else { 0 };
        let path = made_once(&format!("{w}x{h}-{kbps}k-{secs}s-g{gop}-bf{bf}.flv"), |c| {
            c.args(["-f", "lavfi", "-i"])
                .arg(format!("testsrc2=size={}x{}:rate=30", self.width, self.height))
                .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t"])
                .arg(self.seconds.to_string())
                .args(["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-bf", &bf.to_string(), "-g"])
                .arg((30 * gop).to_string())
                .args(["-keyint_min", &(30 * gop).to_string(), "-sc_threshold", "0", "-pix_fmt", "yuv420p", "-b:v"])
                .arg(format!("{}k", self.kbps))
                .args(["-maxrate", &format!("{}k", self.kbps), "-bufsize", &format!("{}k", self.kbps)])
                .args(["-c:a", "aac", "-ac", "2", "-b:a", "128k", "-f", "flv"]);
        })?;
        flv::read(&path)
    }
}

/// A file made once by ffmpeg and kept in the temp directory: `args` adds
/// the inputs, codecs and format; the output path comes last. Written to a
/// temporary name first, so a failed run never leaves a half file behind.
pub fn made_once(name: &str, args: impl FnOnce(&mut Command)) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join("gopbus-bench-media");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    if !path.exists() {
        let tmp = dir.join(format!("tmp-{name}"));
        let mut c = Command::new("ffmpeg");
        c.args(["-v", "error", "-y"]);
        args(&mut c);
        let out = c.arg(&tmp).output().context("running ffmpeg (install it: apt-get install ffmpeg)")?;
        if !out.status.success() {
            bail!("ffmpeg failed making {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::rename(&tmp, &path)?;
    }
    Ok(path)
}

/// A GoP header for synthetic bus load starting at `dts`: 1080p H.264 High and
/// AAC-LC 48 kHz stereo configs (the bus carries them; nothing decodes them).
pub fn synthetic_gop_header(dts: i64) -> gopbus_proto::GopHeader {
    gopbus_proto::GopHeader {
        seq: 0,
        start_dts: dts,
        tracks: vec![
            gopbus_proto::TrackInfo::video(gopbus_proto::VideoConfig {
                avcc: vec![1, 0x64, 0, 0x28, 0xff, 0xe0, 0],
                width: 1920,
                height: 1080,
                profile: 100,
                level: 40,
            }),
            gopbus_proto::TrackInfo::audio(gopbus_proto::AudioConfig {
                asc: vec![0x11, 0x90],
                object_type: 2,
                sample_rate: 48000,
                channels: 2,
            }),
        ],
        metadata: None,
    }
}
