//! A small moq-lite client (draft 02, raw QUIC, ALPN `moql`): enough to publish
//! one broadcast into a moq-relay and to subscribe to it, so the bench can load
//! moq-relay exactly as it loads a gopbus relay. Written from the protocol as
//! moq-relay speaks it; nothing of it is used outside the bench.
//!
//! The wire, as far as this client needs it:
//! - Setup, on the first bidirectional stream the client opens: `0x00` (the
//!   lite setup kind), a varint size, then the offered versions (a varint count
//!   and varints) and parameters (a varint count, here 0). The server answers with
//!   a varint size, the chosen version and its parameters. The stream then stays
//!   open as the session stream.
//! - Every later message is size-prefixed (a varint size, then the fields);
//!   strings are a varint length and UTF-8 bytes.
//! - A control stream is bidirectional and starts with its type as a varint:
//!   1 = announce (the opener sends `AnnouncePlease { prefix }`, the other side
//!   answers `AnnounceInit { suffixes }`, then `Announce` updates), 2 = subscribe
//!   (`Subscribe { id, broadcast, track, priority }`, answered by `SubscribeOk`,
//!   empty in draft 02; the subscription lasts as long as the stream).
//! - Data: a unidirectional stream per group: `0` (group), a size-prefixed
//!   `Group { subscribe id, sequence }`, then frames, each a varint size and that
//!   many bytes, until the stream finishes.
//!
//! Frames here carry, first, the send time as 8 bytes of microseconds since the
//! Unix epoch (what the subscribers time latency with), then the media bytes.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// moq-lite draft 02.
const VERSION: u64 = 0xff0d_ad02;
const ALPN: &[u8] = b"moql";
const CONTROL_ANNOUNCE: u64 = 1;
const CONTROL_SUBSCRIBE: u64 = 2;
const DATA_GROUP: u64 = 0;
/// A control message longer than this is refused (ours are a few bytes).
const MAX_MESSAGE: u64 = 64 * 1024;

/// Appends `v` as a QUIC variable-length integer.
pub fn put_varint(buf: &mut BytesMut, v: u64) {
    if v < 1 << 6 {
        buf.put_u8(v as u8);
    } else if v < 1 << 14 {
        buf.put_u16(0x4000 | v as u16);
    } else if v < 1 << 30 {
        buf.put_u32(0x8000_0000 | v as u32);
    } else {
        assert!(v < 1 << 62, "varint out of range");
        buf.put_u64(0xc000_0000_0000_0000 | v);
    }
}

/// Reads a varint from the front of `buf`, or `None` if it is not all there.
pub fn get_varint(buf: &mut impl Buf) -> Option<u64> {
    let first = *buf.chunk().first()?;
    let len = 1usize << (first >> 6);
    if buf.remaining() < len {
        return None;
    }
    let mut v = u64::from(buf.get_u8() & 0x3f);
    for _ in 1..len {
        v = v << 8 | u64::from(buf.get_u8());
    }
    Some(v)
}

fn put_string(buf: &mut BytesMut, s: &str) {
    put_varint(buf, s.len() as u64);
    buf.put_slice(s.as_bytes());
}

fn get_string(buf: &mut Bytes) -> anyhow::Result<String> {
    let len = get_varint(buf).context("short string length")? as usize;
    anyhow::ensure!(buf.remaining() >= len, "short string");
    Ok(String::from_utf8(buf.split_to(len).to_vec())?)
}

/// `body` with its varint size in front.
fn message(body: &BytesMut) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 8);
    put_varint(&mut out, body.len() as u64);
    out.put_slice(body);
    out.freeze()
}

/// Reads a QUIC receive stream in the chunks quinn hands out (no copy of frame
/// bodies: they are skipped or sliced).
pub struct StreamReader {
    recv: quinn::RecvStream,
    buf: Bytes,
}

impl StreamReader {
    /// Reads `recv`.
    pub fn new(recv: quinn::RecvStream) -> Self {
        Self { recv, buf: Bytes::new() }
    }

    /// Makes the buffer hold at least `n` bytes; false at the stream's end.
    async fn fill(&mut self, n: usize) -> anyhow::Result<bool> {
        while self.buf.len() < n {
            match self.recv.read_chunk(usize::MAX, true).await? {
                Some(chunk) if self.buf.is_empty() => self.buf = chunk.bytes,
                Some(chunk) => {
                    let mut joined = BytesMut::with_capacity(self.buf.len() + chunk.bytes.len());
                    joined.put_slice(&self.buf);
                    joined.put_slice(&chunk.bytes);
                    self.buf = joined.freeze();
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The next varint, or `None` at a clean end of the stream.
    pub async fn varint(&mut self) -> anyhow::Result<Option<u64>> {
        if !self.fill(1).await? {
            return Ok(None);
        }
        let len = 1usize << (self.buf[0] >> 6);
        anyhow::ensure!(self.fill(len).await?, "stream ended inside a varint");
        Ok(get_varint(&mut self.buf))
    }

    /// The next size-prefixed message's body.
    pub async fn message(&mut self) -> anyhow::Result<Bytes> {
        let size = self.varint().await?.context("stream ended before a message")?;
        anyhow::ensure!(size <= MAX_MESSAGE, "a {size}-byte control message");
        anyhow::ensure!(self.fill(size as usize).await?, "stream ended inside a message");
        Ok(self.buf.split_to(size as usize))
    }

    /// Takes `n` bytes (they may span chunks: then they are joined).
    pub async fn take(&mut self, n: usize) -> anyhow::Result<Bytes> {
        anyhow::ensure!(self.fill(n).await?, "stream ended inside a frame");
        Ok(self.buf.split_to(n))
    }

    /// Skips `n` bytes without keeping them.
    pub async fn skip(&mut self, mut n: usize) -> anyhow::Result<()> {
        while n > 0 {
            if self.buf.is_empty() {
                match self.recv.read_chunk(n, true).await? {
                    Some(chunk) => self.buf = chunk.bytes,
                    None => bail!("stream ended inside a frame"),
                }
            }
            let k = n.min(self.buf.len());
            self.buf.advance(k);
            n -= k;
        }
        Ok(())
    }
}

/// A quinn client config for moq-relay: its certificate (a PEM file) trusted,
/// ALPN `moql`, and moq-native's client transport settings (path MTU discovery
/// off, 10 s idle timeout, 4 s keep-alive), so its peers look as its own would.
pub fn client_config(ca: &Path) -> anyhow::Result<quinn::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut crypto = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(std::time::Duration::from_secs(10).try_into()?));
    t.keep_alive_interval(Some(std::time::Duration::from_secs(4)));
    t.mtu_discovery_config(None);
    config.transport_config(Arc::new(t));
    Ok(config)
}

/// A moq-lite session: the QUIC connection, its endpoint and the session stream.
pub struct Session {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    _setup: (quinn::SendStream, StreamReader),
}

impl Session {
    /// Connects to `addr` (server name `localhost`) and sets the session up.
    /// `announce` are the broadcasts this side publishes: they are what it
    /// answers when the relay asks (the relay asks every peer).
    pub async fn connect(
        addr: SocketAddr,
        config: quinn::ClientConfig,
        announce: Vec<String>,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>, tokio::sync::mpsc::Receiver<Subscription>)> {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        endpoint.set_default_client_config(config);
        let conn = endpoint.connect(addr, "localhost")?.await.context("connecting to moq-relay")?;
        let (mut send, recv) = conn.open_bi().await?;
        let mut body = BytesMut::new();
        put_varint(&mut body, 1);
        put_varint(&mut body, VERSION);
        put_varint(&mut body, 0); // no parameters
        let mut setup = BytesMut::new();
        put_varint(&mut setup, 0); // the lite setup kind
        setup.put_slice(&message(&body));
        send.write_all(&setup).await?;
        let mut reader = StreamReader::new(recv);
        let mut answer = reader.message().await.context("no answer to setup")?;
        let version = get_varint(&mut answer).context("short server setup")?;
        anyhow::ensure!(version == VERSION, "moq-relay chose version {version:#x}, not draft 02");
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let control = tokio::spawn(serve_control(conn.clone(), announce, tx));
        Ok((Self { conn, _endpoint: endpoint, _setup: (send, reader) }, control, rx))
    }

    /// Subscribes to `broadcast`/`track` as subscription `id`; the groups come on
    /// unidirectional streams. The returned stream ends the subscription when dropped.
    pub async fn subscribe(
        &self,
        id: u64,
        broadcast: &str,
        track: &str,
    ) -> anyhow::Result<(quinn::SendStream, StreamReader)> {
        let (mut send, recv) = self.conn.open_bi().await?;
        let mut body = BytesMut::new();
        put_varint(&mut body, id);
        put_string(&mut body, broadcast);
        put_string(&mut body, track);
        body.put_u8(0); // priority
        let mut msg = BytesMut::new();
        put_varint(&mut msg, CONTROL_SUBSCRIBE);
        msg.put_slice(&message(&body));
        send.write_all(&msg).await?;
        let mut reader = StreamReader::new(recv);
        reader.message().await.with_context(|| format!("subscribing to {broadcast}/{track}"))?;
        Ok((send, reader))
    }
}

/// A subscription the relay opened toward a publisher.
pub struct Subscription {
    /// The relay's subscription id (it names the subscription in group headers).
    pub id: u64,
    /// The track asked for.
    pub track: String,
    /// Closed (finished or reset) when the relay unsubscribes.
    pub stream: (quinn::SendStream, StreamReader),
}

/// Answers the relay's control streams: announce requests with `announce`,
/// subscriptions by handing them to `subs`.
async fn serve_control(conn: quinn::Connection, announce: Vec<String>, subs: tokio::sync::mpsc::Sender<Subscription>) {
    let mut held = Vec::new();
    while let Ok((mut send, recv)) = conn.accept_bi().await {
        let mut reader = StreamReader::new(recv);
        let r: anyhow::Result<()> = async {
            match reader.varint().await?.context("empty control stream")? {
                CONTROL_ANNOUNCE => {
                    let mut please = reader.message().await?;
                    let prefix = get_string(&mut please)?;
                    let mut body = BytesMut::new();
                    let ours: Vec<&String> = announce.iter().filter(|b| b.starts_with(&prefix)).collect();
                    put_varint(&mut body, ours.len() as u64);
                    for b in ours {
                        put_string(&mut body, &b[prefix.len()..]);
                    }
                    send.write_all(&message(&body)).await?;
                    held.push((send, reader));
                }
                CONTROL_SUBSCRIBE => {
                    let mut sub = reader.message().await?;
                    let id = get_varint(&mut sub).context("short subscribe")?;
                    let _broadcast = get_string(&mut sub)?;
                    let track = get_string(&mut sub)?;
                    send.write_all(&message(&BytesMut::new())).await?; // SubscribeOk: empty in draft 02
                    let _ = subs.send(Subscription { id, track, stream: (send, reader) }).await;
                }
                other => bail!("control stream of unknown type {other}"),
            }
            Ok(())
        }
        .await;
        if let Err(e) = r {
            eprintln!("moq: control stream: {e:#}");
        }
    }
}

/// The group stream being written to one relay subscription.
struct Out {
    id: u64,
    track: String,
    group: Option<(u64, quinn::SendStream)>,
    /// Set when the subscription's control stream ends: the relay unsubscribed.
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// Our half of that stream, kept open while the subscription lasts.
    _control: quinn::SendStream,
}

/// Publishes one broadcast into a moq-relay: a group per GoP on every track.
pub struct Publisher {
    session: Session,
    control: tokio::task::JoinHandle<()>,
    subs: tokio::sync::mpsc::Receiver<Subscription>,
    outs: Vec<Out>,
    sequence: u64,
}

impl Publisher {
    /// Connects and announces `broadcast` (the relay asks every peer what it announces).
    pub async fn connect(addr: SocketAddr, config: quinn::ClientConfig, broadcast: &str) -> anyhow::Result<Self> {
        let (session, control, subs) = Session::connect(addr, config, vec![broadcast.to_owned()]).await?;
        Ok(Self { session, control, subs, outs: Vec::new(), sequence: 0 })
    }

    /// Starts a new group on every track (at a keyframe).
    pub fn new_group(&mut self) {
        self.sequence += 1;
        for o in &mut self.outs {
            if let Some((_, mut s)) = o.group.take() {
                let _ = s.finish();
            }
        }
    }

    /// Sends `payload` (already stamped) on `track` to whoever the relay subscribed.
    pub async fn frame(&mut self, track: &str, payload: &Bytes) -> anyhow::Result<()> {
        while let Ok(sub) = self.subs.try_recv() {
            let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let (send, mut reader) = sub.stream;
            let flag = closed.clone();
            tokio::spawn(async move {
                while reader.varint().await.is_ok_and(|v| v.is_some()) {}
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            self.outs.push(Out { id: sub.id, track: sub.track, group: None, closed, _control: send });
        }
        self.outs.retain(|o| !o.closed.load(std::sync::atomic::Ordering::Relaxed));
        let mut i = 0;
        while i < self.outs.len() {
            let o = &mut self.outs[i];
            if o.track != track {
                i += 1;
                continue;
            }
            if o.group.as_ref().is_none_or(|(seq, _)| *seq != self.sequence) {
                let mut s = self.session.conn.open_uni().await?;
                let mut head = BytesMut::new();
                put_varint(&mut head, DATA_GROUP);
                let mut g = BytesMut::new();
                put_varint(&mut g, o.id);
                put_varint(&mut g, self.sequence);
                head.put_slice(&message(&g));
                s.write_all(&head).await?;
                o.group = Some((self.sequence, s));
            }
            let (_, s) = o.group.as_mut().expect("opened above");
            let mut size = BytesMut::new();
            put_varint(&mut size, payload.len() as u64);
            let sent = async {
                s.write_all(&size).await?;
                s.write_chunk(payload.clone()).await
            };
            if sent.await.is_err() {
                // The relay stopped this group (it moved on, or unsubscribed): the
                // next group opens a new stream; an ended subscription is dropped.
                o.group = None;
            }
            i += 1;
        }
        Ok(())
    }

    /// How many subscriptions the relay holds on this publisher.
    pub fn subscriptions(&self) -> usize {
        self.outs.len()
    }

    /// Closes the connection.
    pub fn close(self) {
        self.control.abort();
        self.session.conn.close(0u32.into(), b"done");
    }
}

/// A frame a subscriber received.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// On the video track.
    pub video: bool,
    /// Not in the group the subscriber joined in (whose first frames were
    /// sent before it joined: not transport latency).
    pub timed: bool,
    /// The send time at the frame's front.
    pub stamp: [u8; 8],
    /// Media bytes (after the stamp).
    pub len: usize,
}

/// A subscriber of one broadcast's `video` and `audio` tracks.
pub struct Subscriber {
    session: Session,
    control: tokio::task::JoinHandle<()>,
    /// The two subscriptions' control streams (dropping them unsubscribes).
    _tracks: [(quinn::SendStream, StreamReader); 2],
}

impl Subscriber {
    /// Connects and subscribes to `video` (subscription 0) and `audio` (1) of `broadcast`.
    pub async fn connect(addr: SocketAddr, config: quinn::ClientConfig, broadcast: &str) -> anyhow::Result<Self> {
        let (session, control, _subs) = Session::connect(addr, config, Vec::new()).await?;
        let video = session.subscribe(0, broadcast, "video").await?;
        let audio = session.subscribe(1, broadcast, "audio").await?;
        Ok(Self { session, control, _tracks: [video, audio] })
    }

    /// Reads every group until `stop` fires or the connection ends, telling
    /// `seen` of each frame.
    pub async fn read(self, stop: tokio_util::sync::CancellationToken, seen: Arc<dyn Fn(Seen) + Send + Sync>) {
        // The first video group seen is the one joined in.
        let joined_group = Arc::new(Mutex::new(None::<u64>));
        loop {
            let recv = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.session.conn.accept_uni() => match r {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            let (seen, joined_group) = (seen.clone(), joined_group.clone());
            tokio::spawn(async move {
                // A group the relay gave up on ends early: what was missed shows in the counts.
                let _ = read_group(recv, &joined_group, &*seen).await;
            });
        }
        self.control.abort();
        self.session.conn.close(0u32.into(), b"done");
    }
}

async fn read_group(
    recv: quinn::RecvStream,
    joined: &Mutex<Option<u64>>,
    seen: &(dyn Fn(Seen) + Send + Sync),
) -> anyhow::Result<()> {
    let mut reader = StreamReader::new(recv);
    anyhow::ensure!(reader.varint().await? == Some(DATA_GROUP), "not a group stream");
    let mut g = reader.message().await?;
    let sub = get_varint(&mut g).context("short group")?;
    let seq = get_varint(&mut g).context("short group")?;
    let video = sub == 0;
    let timed = video && *joined.lock().unwrap().get_or_insert(seq) != seq;
    while let Some(size) = reader.varint().await? {
        let size = size as usize;
        anyhow::ensure!(size >= 8, "a frame without its stamp");
        let head = reader.take(8).await?;
        reader.skip(size - 8).await?;
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&head);
        seen(Seen { video, timed, stamp, len: size - 8 });
    }
    Ok(())
}

/// Microseconds since the Unix epoch, as the stamp at the front of every frame.
pub fn stamp_now() -> [u8; 8] {
    let us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    us.to_be_bytes()
}

/// Milliseconds since `stamp` (8 bytes of microseconds since the epoch).
pub fn since_stamp(stamp: [u8; 8]) -> f64 {
    let then = u64::from_be_bytes(stamp);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
    now.saturating_sub(then) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length() {
        for v in [0u64, 63, 64, 16_383, 16_384, (1 << 30) - 1, 1 << 30, VERSION, (1 << 62) - 1] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            let mut r = b.freeze();
            assert_eq!(get_varint(&mut r), Some(v));
            assert!(r.is_empty());
        }
        let mut short = Bytes::from_static(&[0x80, 1]);
        assert_eq!(get_varint(&mut short), None);
    }
}
