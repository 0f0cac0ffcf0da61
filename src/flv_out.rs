//! Writing a broadcast as an FLV file (`gopbus dump`).

use bytes::Bytes;
use gopbus_bus::Event;
use gopbus_proto::flv::{AacPacketType, AudioTagHeader, AvcPacketType, VideoTagHeader};
use gopbus_proto::TrackId;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// An FLV writer (FLV spec v10.1 §E.2–E.4) fed with bus events.
pub(crate) struct FlvWriter<W> {
    out: W,
    avcc: Option<Vec<u8>>,
    asc: Option<Vec<u8>>,
    metadata: Option<Vec<u8>>,
    pub(crate) frames: u64,
}

impl<W: AsyncWrite + Unpin> FlvWriter<W> {
    /// Writes the file header announcing audio and video.
    pub(crate) async fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(&[b'F', b'L', b'V', 1, 0x05, 0, 0, 0, 9, 0, 0, 0, 0]).await?;
        Ok(Self { out, avcc: None, asc: None, metadata: None, frames: 0 })
    }

    async fn tag(&mut self, kind: u8, ts: i64, prefix: &[u8], body: &[Bytes]) -> std::io::Result<()> {
        let size = prefix.len() + body.iter().map(Bytes::len).sum::<usize>();
        let ts = ts.max(0) as u32;
        let mut h = [0u8; 11];
        h[0] = kind;
        h[1..4].copy_from_slice(&(size as u32).to_be_bytes()[1..]);
        h[4..7].copy_from_slice(&ts.to_be_bytes()[1..]);
        h[7] = (ts >> 24) as u8;
        self.out.write_all(&h).await?;
        self.out.write_all(prefix).await?;
        for b in body {
            self.out.write_all(b).await?;
        }
        self.out.write_all(&((size + 11) as u32).to_be_bytes()).await
    }

    /// Writes what `ev` means in FLV; configuration tags only when they change.
    pub(crate) async fn event(&mut self, ev: &Event) -> std::io::Result<()> {
        match ev {
            Event::Gop(h) => {
                if h.metadata.is_some() && h.metadata != self.metadata {
                    self.metadata.clone_from(&h.metadata);
                    let m = Bytes::from(h.metadata.clone().unwrap_or_default());
                    // At timestamp 0, as FLV muxers write it: ffmpeg reads a script
                    // tag at any other time as a data stream, not as metadata.
                    self.tag(18, 0, &[], &[m]).await?;
                }
                if let Some(v) = &h.video {
                    if self.avcc.as_ref() != Some(&v.avcc) {
                        self.avcc = Some(v.avcc.clone());
                        let prefix = VideoTagHeader::write(true, AvcPacketType::SequenceHeader, 0);
                        self.tag(9, h.start_dts, &prefix, &[Bytes::from(v.avcc.clone())]).await?;
                    }
                }
                if let Some(a) = &h.audio {
                    if self.asc.as_ref() != Some(&a.asc) {
                        self.asc = Some(a.asc.clone());
                        let prefix = AudioTagHeader::write(AacPacketType::SequenceHeader);
                        self.tag(8, h.start_dts, &prefix, &[Bytes::from(a.asc.clone())]).await?;
                    }
                }
            }
            Event::Frame(f) => {
                match f.header.track {
                    TrackId::VIDEO => {
                        let prefix = VideoTagHeader::write(f.header.is_keyframe(), AvcPacketType::Nalu, f.header.cts);
                        self.tag(9, f.header.dts, &prefix, f.payload.parts()).await?;
                    }
                    TrackId::AUDIO => {
                        let prefix = AudioTagHeader::write(AacPacketType::Raw);
                        self.tag(8, f.header.dts, &prefix, f.payload.parts()).await?;
                    }
                    _ => return Ok(()),
                }
                self.frames += 1;
            }
            _ => {}
        }
        Ok(())
    }

    /// Flushes and closes the output.
    pub(crate) async fn finish(mut self) -> std::io::Result<u64> {
        self.out.flush().await?;
        self.out.shutdown().await?;
        Ok(self.frames)
    }
}
