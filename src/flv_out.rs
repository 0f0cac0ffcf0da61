//! Writing a broadcast as an FLV file (`gopbus dump`).

use bytes::Bytes;
use gopbus_bus::Event;
use gopbus_proto::flv::{ConfigTracker, TAG_SCRIPT};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// An FLV writer (FLV spec v10.1 §E.2–E.4) fed with bus events.
pub(crate) struct FlvWriter<W> {
    out: W,
    config: ConfigTracker,
    pub(crate) frames: u64,
}

impl<W: AsyncWrite + Unpin> FlvWriter<W> {
    /// Writes the file header announcing audio and video.
    pub(crate) async fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(&[b'F', b'L', b'V', 1, 0x05, 0, 0, 0, 9, 0, 0, 0, 0]).await?;
        Ok(Self { out, config: ConfigTracker::default(), frames: 0 })
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
                for tag in self.config.changes(h) {
                    // onMetaData at timestamp 0, as FLV muxers write it: ffmpeg reads a
                    // script tag at any other time as a data stream, not as metadata.
                    let ts = if tag.tag_type == TAG_SCRIPT { 0 } else { h.start_dts };
                    self.tag(tag.tag_type, ts, tag.prefix, &[tag.body]).await?;
                }
            }
            Event::Frame(f) => {
                let Some(tag) = self.config.tag_of(&f.header) else { return Ok(()) };
                self.tag(tag.tag_type, f.header.dts, tag.prefix(), f.payload.parts()).await?;
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
