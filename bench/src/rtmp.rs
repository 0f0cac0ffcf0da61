//! Light RTMP clients on rml_rtmp's `ClientSession`: a publisher that sends FLV
//! tags, and a player that counts what it receives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult, PublishRequestType,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::flv::{Tag, TAG_AUDIO, TAG_VIDEO};

/// A media message received by a player.
#[derive(Debug, Clone)]
pub struct Media {
    /// 8 audio, 9 video.
    pub kind: u8,
    /// RTMP timestamp.
    pub timestamp: u32,
    /// The FLV tag body.
    pub data: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Media {
    /// Whether this is an H.264 keyframe NALU message.
    pub fn is_video_keyframe(&self) -> bool {
        self.kind == TAG_VIDEO && self.data.len() > 1 && self.data[0] >> 4 == 1 && self.data[1] == 1
    }
}

/// One RTMP client connection.
pub struct Client {
    stream: TcpStream,
    session: ClientSession,
    buf: Vec<u8>,
    events: std::collections::VecDeque<ClientSessionEvent>,
    closed: bool,
    /// The last `onMetaData` the server sent, if any.
    pub metadata: Option<rml_rtmp::sessions::StreamMetadata>,
    /// Bytes read from the socket after the handshake.
    pub bytes_received: u64,
}

impl Client {
    /// Connects, handshakes and connects to `app`.
    pub async fn connect(addr: SocketAddr, app: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        Self::handshake(stream, app).await
    }

    /// Connects with a small socket receive buffer: a player whose kernel buffer
    /// fills quickly, to test what a server does with a viewer that stops reading.
    pub async fn connect_small_buffer(addr: SocketAddr, app: &str) -> anyhow::Result<Self> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_recv_buffer_size(4096)?;
        let stream = socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        Self::handshake(stream, app).await
    }

    async fn handshake(mut stream: TcpStream, app: &str) -> anyhow::Result<Self> {
        stream.set_nodelay(true)?;
        let mut hs = Handshake::new(PeerType::Client);
        stream.write_all(&hs.generate_outbound_p0_and_p1().map_err(|e| anyhow!("{e:?}"))?).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let leftover = loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!("server closed the connection during the handshake");
            }
            match hs.process_bytes(&buf[..n]).map_err(|e| anyhow!("handshake: {e:?}"))? {
                HandshakeProcessResult::InProgress { response_bytes } => stream.write_all(&response_bytes).await?,
                HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                    stream.write_all(&response_bytes).await?;
                    break remaining_bytes;
                }
            }
        };
        let (session, initial) =
            ClientSession::new(ClientSessionConfig::new()).map_err(|e| anyhow!("session: {e:?}"))?;
        let mut client =
            Self { stream, session, buf, events: Default::default(), closed: false, metadata: None, bytes_received: 0 };
        client.apply(initial).await?;
        let r = client.session.handle_input(&leftover).map_err(|e| anyhow!("{e:?}"))?;
        client.apply(r).await?;
        let r = client.session.request_connection(app.to_owned()).map_err(|e| anyhow!("{e:?}"))?;
        client.apply(vec![r]).await?;
        client
            .wait_for(|e| match e {
                ClientSessionEvent::ConnectionRequestAccepted => Some(Ok(())),
                ClientSessionEvent::ConnectionRequestRejected { description } => {
                    Some(Err(anyhow!("connect rejected: {description}")))
                }
                _ => None,
            })
            .await??;
        Ok(client)
    }

    /// Asks to publish with `key`; errors with the server's status code if refused.
    pub async fn publish(&mut self, key: &str) -> anyhow::Result<()> {
        let r =
            self.session.request_publishing(key.to_owned(), PublishRequestType::Live).map_err(|e| anyhow!("{e:?}"))?;
        self.apply(vec![r]).await?;
        self.wait_for(|e| match e {
            ClientSessionEvent::PublishRequestAccepted => Some(Ok(())),
            ClientSessionEvent::UnhandleableOnStatusCode { code } => Some(Err(anyhow!("publish refused: {code}"))),
            _ => None,
        })
        .await?
    }

    /// Asks to play `name`.
    pub async fn play(&mut self, name: &str) -> anyhow::Result<()> {
        let r = self.session.request_playback(name.to_owned()).map_err(|e| anyhow!("{e:?}"))?;
        self.apply(vec![r]).await?;
        self.wait_for(|e| match e {
            ClientSessionEvent::PlaybackRequestAccepted => Some(Ok(())),
            ClientSessionEvent::UnhandleableOnStatusCode { code } if code.contains("NotFound") => {
                Some(Err(anyhow!("play refused: {code}")))
            }
            _ => None,
        })
        .await?
    }

    /// Sends one FLV tag (audio or video; other tags are skipped).
    pub async fn send_tag(&mut self, tag: &Tag) -> anyhow::Result<()> {
        let ts = RtmpTimestamp::new(tag.timestamp);
        let r = match tag.kind {
            TAG_VIDEO => self.session.publish_video_data(tag.data.clone(), ts, false),
            TAG_AUDIO => self.session.publish_audio_data(tag.data.clone(), ts, false),
            _ => return Ok(()),
        }
        .map_err(|e| anyhow!("{e:?}"))?;
        self.apply(vec![r]).await
    }

    /// Sends raw bytes (for tests of malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Publishes `tags` in a loop for `duration`, paced at real time, timestamps
    /// continuing across loops (sequence headers only once). Calls `sent` just
    /// before each message goes out, with its timestamp and whether it is a video frame.
    pub async fn publish_loop(
        &mut self,
        tags: &[Tag],
        duration: Duration,
        speed: f64,
        mut sent: impl FnMut(u32, bool),
    ) -> anyhow::Result<u64> {
        let span = tags.iter().map(|t| t.timestamp).max().unwrap_or(0) + 33;
        let start = Instant::now();
        let mut bytes = 0u64;
        for round in 0u32.. {
            for tag in tags {
                if round > 0 && tag.is_sequence_header() {
                    continue;
                }
                let ts = tag.timestamp + round * span;
                if speed > 0.0 {
                    let due = Duration::from_secs_f64(f64::from(ts) / 1000.0 / speed);
                    if due >= duration {
                        return Ok(bytes);
                    }
                    let elapsed = start.elapsed();
                    if due > elapsed {
                        tokio::time::sleep(due - elapsed).await;
                    }
                } else if start.elapsed() >= duration {
                    return Ok(bytes);
                }
                let shifted = Tag { kind: tag.kind, timestamp: ts, data: tag.data.clone() };
                sent(ts, tag.kind == TAG_VIDEO && tag.data.get(1) == Some(&1));
                self.send_tag(&shifted).await?;
                bytes += tag.data.len() as u64;
            }
        }
        Ok(bytes)
    }

    /// Publishes `tags` paced by their timestamps (`speed` 1.0 = real time; 0 = as fast as possible).
    pub async fn publish_tags(&mut self, tags: &[Tag], speed: f64) -> anyhow::Result<()> {
        let start = Instant::now();
        let first = tags.first().map_or(0, |t| t.timestamp);
        for tag in tags {
            if speed > 0.0 {
                let due = Duration::from_secs_f64(f64::from(tag.timestamp.wrapping_sub(first)) / 1000.0 / speed);
                let elapsed = start.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
            self.send_tag(tag).await?;
        }
        Ok(())
    }

    /// The next audio or video message; `None` when the server ends the stream or closes.
    pub async fn next_media(&mut self) -> anyhow::Result<Option<Media>> {
        loop {
            while let Some(ev) = self.events.pop_front() {
                match ev {
                    ClientSessionEvent::VideoDataReceived { timestamp, data } => {
                        return Ok(Some(Media {
                            kind: TAG_VIDEO,
                            timestamp: timestamp.value,
                            data,
                            at: Instant::now(),
                        }))
                    }
                    ClientSessionEvent::AudioDataReceived { timestamp, data } => {
                        return Ok(Some(Media {
                            kind: TAG_AUDIO,
                            timestamp: timestamp.value,
                            data,
                            at: Instant::now(),
                        }))
                    }
                    ClientSessionEvent::UnhandleableOnStatusCode { code }
                        if code == "NetStream.Play.Stop" || code == "NetStream.Play.UnpublishNotify" =>
                    {
                        return Ok(None)
                    }
                    ClientSessionEvent::StreamMetadataReceived { metadata } => self.metadata = Some(metadata),
                    _ => {}
                }
            }
            if self.closed || !self.read_some().await? {
                return Ok(None);
            }
        }
    }

    /// Waits until the server closes the connection (or `limit` passes); true if it closed.
    pub async fn closed_by_server(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read_some()).await {
                Err(_) => return false,
                Ok(Ok(true)) => self.events.clear(),
                Ok(_) => return true,
            }
        }
        true
    }

    async fn wait_for<T>(&mut self, mut pick: impl FnMut(&ClientSessionEvent) -> Option<T>) -> anyhow::Result<T> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            while let Some(ev) = self.events.pop_front() {
                if let Some(t) = pick(&ev) {
                    return Ok(t);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.read_some()).await {
                Err(_) => bail!("timed out waiting for the server"),
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => bail!("server closed the connection"),
                Ok(Err(e)) => return Err(e),
            }
        }
    }

    /// Reads once; false at end of stream.
    async fn read_some(&mut self) -> anyhow::Result<bool> {
        let n = match self.stream.read(&mut self.buf).await {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            self.closed = true;
            return Ok(false);
        }
        self.bytes_received += n as u64;
        let results = self.session.handle_input(&self.buf[..n]).map_err(|e| anyhow!("{e:?}"))?;
        self.apply(results).await?;
        Ok(true)
    }

    async fn apply(&mut self, results: Vec<ClientSessionResult>) -> anyhow::Result<()> {
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => self.stream.write_all(&p.bytes).await?,
                ClientSessionResult::RaisedEvent(e) => self.events.push_back(e),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }
}
