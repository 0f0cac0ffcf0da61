//! One RTMP connection: handshake, the command flow (connect, createStream,
//! publish, play), and a single driver loop that reads, writes and pulls from the
//! bus without ever blocking one on another.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gopbus_bus::{Event, SubscribeOptions, Subscriber, TrackSubscriber};
use gopbus_proto::EndReason;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::{MessagePayload, PeerBandwidthLimitType, RtmpMessage, UserControlEventType};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::chunk::{csid, types, ChunkDecoder, ChunkEncoder, MessageHeader, OutQueue, RawMessage};
use crate::error::SessionError;
use crate::play::Egress;
use crate::publish::MediaIngest;
use crate::server::{Ingest, LivePublisher};
use gopbus_store::keys::{validate_name, KeyHash};
use gopbus_store::PublishRequest;

/// Read buffer size of a publisher: payload slices keep a buffer alive while the
/// GoP window holds them, so this is also the granularity of ingest memory.
const READ_BUF: usize = 64 * 1024;
/// Read buffer size of any other connection (players send little: acks, pings).
const SMALL_READ_BUF: usize = 4 * 1024;
/// Largest message before a publish is accepted: only commands come then.
const PRE_PUBLISH_MAX_MESSAGE: usize = 64 * 1024;
/// Bytes of replies (statuses, pings) that may wait for a peer beyond a
/// player's media queue; past it the peer is not reading and is disconnected.
const OUT_SLACK: usize = 256 * 1024;
/// The one message stream id gopbus hands out.
const STREAM_ID: u32 = 1;
/// Window acknowledgement size and peer bandwidth we announce.
const WINDOW: u32 = 2_500_000;

struct Publishing {
    media: MediaIngest,
    name: String,
    revoked: CancellationToken,
    kicked: CancellationToken,
    /// Resolves when the key is revoked or another publisher takes over; made
    /// once, so the driver loop does not re-register wakers on every event.
    stop: Pin<Box<dyn Future<Output = Stop> + Send>>,
}

/// Why a publishing session must stop.
enum Stop {
    Revoked,
    Replaced,
    Kicked,
}

struct Playing {
    sub: PlaySource,
    egress: Egress,
    /// Counted in the node's audience while it plays.
    viewer: gopbus_bus::Viewer,
}

/// What a player reads: a broadcast as published, or a rendition of it (its
/// derived video track with the source's audio).
enum PlaySource {
    Published(Subscriber),
    Rendition(TrackSubscriber),
}

impl PlaySource {
    async fn next(&mut self) -> Event {
        match self {
            Self::Published(s) => s.next().await,
            Self::Rendition(s) => s.next().await,
        }
    }

    fn try_next(&mut self) -> Option<Event> {
        match self {
            Self::Published(s) => s.try_next(),
            Self::Rendition(s) => s.try_next(),
        }
    }
}

/// `alice/480p` → (`alice`, `Some("video/480p")`); `alice` → (`alice`, `None`).
/// `None` when the name is neither a valid broadcast name nor one with a
/// rendition (`HEIGHTp`) after a slash.
fn play_target(name: &str) -> Option<(&str, Option<String>)> {
    let (broadcast, rendition) = match name.split_once('/') {
        Some((b, r)) => (b, Some(r)),
        None => (name, None),
    };
    validate_name(broadcast).ok()?;
    match rendition {
        None => Some((broadcast, None)),
        Some(r) => {
            let height = r.strip_suffix('p')?;
            let ok = !height.is_empty() && height.len() <= 5 && height.bytes().all(|b| b.is_ascii_digit());
            ok.then(|| (broadcast, Some(format!("video/{r}"))))
        }
    }
}

struct Conn {
    ingest: Arc<Ingest>,
    id: u64,
    peer: std::net::SocketAddr,
    dec: ChunkDecoder,
    enc: ChunkEncoder,
    out: OutQueue,
    received: u64,
    acked: u64,
    peer_window: u64,
    connected: bool,
    /// The part of the application after `live/` (see `on_connect`).
    app_prefix: Option<String>,
    publishing: Option<Publishing>,
    playing: Option<Playing>,
    /// Set when the connection should close once `out` is flushed.
    close: Option<Result<(), SessionError>>,
    /// While a player waits for a broadcast that is not live: when it gives up.
    play_wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Runs one connection to its end.
pub(crate) async fn run(
    ingest: Arc<Ingest>,
    stream: TcpStream,
    id: u64,
    shutdown: CancellationToken,
) -> Result<(), SessionError> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let (mut rd, mut wr) = stream.into_split();
    let leftover = tokio::time::timeout(ingest.config.handshake_timeout, handshake(&mut rd, &mut wr))
        .await
        .map_err(|_| SessionError::HandshakeTimeout)??;
    let mut rbuf = BytesMut::with_capacity(SMALL_READ_BUF.max(leftover.len()));
    rbuf.extend_from_slice(&leftover);
    let mut conn = Conn {
        peer,
        dec: ChunkDecoder::new(PRE_PUBLISH_MAX_MESSAGE.min(ingest.config.max_message)),
        enc: ChunkEncoder::new(),
        out: OutQueue::default(),
        ingest,
        id,
        received: 0,
        acked: 0,
        peer_window: 0,
        connected: false,
        app_prefix: None,
        publishing: None,
        playing: None,
        close: None,
        play_wait: None,
    };
    let result = conn.drive(&mut rd, &mut wr, &mut rbuf, &shutdown).await;
    let reason = match &result {
        _ if shutdown.is_cancelled() => EndReason::Shutdown,
        Ok(()) => EndReason::PublisherLeft,
        Err(SessionError::Refused(_)) if conn.publishing.as_ref().is_some_and(|p| p.revoked.is_cancelled()) => {
            EndReason::KeyRevoked
        }
        Err(SessionError::Refused(_)) if conn.publishing.as_ref().is_some_and(|p| p.kicked.is_cancelled()) => {
            EndReason::Kicked
        }
        Err(e) => EndReason::Error(e.to_string()),
    };
    conn.stop_publishing(reason, false);
    let _ = wr.shutdown().await;
    result
}

async fn handshake(rd: &mut OwnedReadHalf, wr: &mut OwnedWriteHalf) -> Result<Vec<u8>, SessionError> {
    let mut hs = Handshake::new(PeerType::Server);
    let mut buf = vec![0u8; 4096];
    let mut total = 0;
    loop {
        let n = rd.read(&mut buf).await?;
        total += n;
        if total == 0 {
            return Err(SessionError::ClosedEarly);
        }
        if n == 0 {
            return Err(SessionError::Handshake("connection closed during the handshake".into()));
        }
        match hs.process_bytes(&buf[..n]).map_err(|e| SessionError::Handshake(e.to_string()))? {
            HandshakeProcessResult::InProgress { response_bytes } => wr.write_all(&response_bytes).await?,
            HandshakeProcessResult::Completed { response_bytes, remaining_bytes } => {
                wr.write_all(&response_bytes).await?;
                return Ok(remaining_bytes);
            }
        }
    }
}

async fn publisher_stop(p: Option<&mut Publishing>) -> Stop {
    match p {
        Some(p) => p.stop.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn expired(t: Option<&mut Pin<Box<tokio::time::Sleep>>>) {
    match t {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn next_event(p: Option<&mut Playing>) -> Event {
    match p {
        Some(p) => p.sub.next().await,
        None => std::future::pending().await,
    }
}

impl Conn {
    async fn drive(
        &mut self,
        rd: &mut OwnedReadHalf,
        wr: &mut OwnedWriteHalf,
        rbuf: &mut BytesMut,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let idle = self.ingest.config.idle_timeout;
        let queue_limit = self.ingest.config.player_queue;
        // One timer for the connection's life, pushed back lazily: re-arming a
        // timer on every event would cost more than the event.
        let mut last_activity = tokio::time::Instant::now();
        let shutdown_signal = shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown_signal);
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        // `connect` and then `publish` or `play` must come within this.
        let command_timeout = self.ingest.config.command_timeout;
        let role_deadline = tokio::time::sleep(command_timeout);
        tokio::pin!(role_deadline);
        let mut role_taken = false;
        loop {
            while self.close.is_none() {
                let Some(msg) = self.dec.decode(rbuf)? else { break };
                self.handle_message(msg).await?;
            }
            if let Some(result) = self.close.take() {
                let _ = tokio::time::timeout(Duration::from_secs(5), self.out.flush_to(wr)).await;
                return result;
            }
            let out_limit = if self.playing.is_some() { queue_limit + OUT_SLACK } else { OUT_SLACK };
            if self.out.len() > out_limit {
                return Err(SessionError::Refused(format!(
                    "{} bytes queued for a peer that does not read them (limit {out_limit})",
                    self.out.len()
                )));
            }
            role_taken |= self.publishing.is_some() || self.playing.is_some();
            let want = if self.publishing.is_some() { READ_BUF } else { SMALL_READ_BUF };
            if rbuf.capacity() - rbuf.len() < want / 8 {
                // Only a partial chunk header is left in the buffer: this copies no payload.
                rbuf.reserve(want);
            }
            // A player waiting for a publisher (nothing to send) is not idle; a
            // publisher, a connection without a role, or a player whose queue does
            // not drain is.
            let idle_armed = self.playing.is_none() || !self.out.is_empty();
            tokio::select! {
                biased;
                _ = &mut shutdown_signal => {
                    if self.playing.is_some() {
                        self.send_status("status", "NetStream.Play.UnpublishNotify", "server shutting down");
                    }
                    self.close = Some(Ok(()));
                }
                stop = publisher_stop(self.publishing.as_mut()) => {
                    let why = match stop {
                        Stop::Revoked => "stream key revoked",
                        Stop::Replaced => "another publisher took over this stream",
                        Stop::Kicked => "disconnected by the operator",
                    };
                    self.close = Some(Err(SessionError::Refused(why.into())));
                }
                r = self.out.write_to(wr), if !self.out.is_empty() => { r?; }
                ev = next_event(self.playing.as_mut()), if self.out.len() < queue_limit => self.play_event(ev),
                r = rd.read_buf(rbuf) => {
                    let n = match r {
                        Ok(n) => n,
                        // The peer went away: the same as a close, not a server error.
                        Err(e) if matches!(
                            e.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::BrokenPipe
                        ) => {
                            tracing::debug!(error = %e, "peer reset the connection");
                            0
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if n == 0 {
                        return Ok(());
                    }
                    self.received += n as u64;
                    self.ingest.stats.bytes_in.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    if self.peer_window > 0 && self.received - self.acked >= self.peer_window {
                        self.acked = self.received;
                        self.send(csid::CONTROL, 0, RtmpMessage::Acknowledgement { sequence_number: self.received as u32 });
                    }
                }
                _ = &mut role_deadline, if !role_taken => {
                    return Err(SessionError::Refused(format!(
                        "no publish or play within {} s of connecting",
                        command_timeout.as_secs_f64()
                    )));
                }
                _ = expired(self.play_wait.as_mut()) => {
                    let wait = self.ingest.config.play_wait_timeout.as_secs();
                    tracing::info!(wait_s = wait, "player gave up: nothing published under this name");
                    self.send_status("error", "NetStream.Play.StreamNotFound", &format!("nothing published within {wait} s"));
                    self.playing = None;
                    self.play_wait = None;
                    self.close = Some(Ok(()));
                }
                _ = &mut idle_timer, if idle_armed => {
                    let deadline = last_activity + idle;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(SessionError::Idle(idle));
                    }
                    idle_timer.as_mut().reset(deadline);
                    continue;
                }
            }
            last_activity = tokio::time::Instant::now();
        }
    }

    /// Queues `ev` and whatever else is ready, up to the queue limit, so that one
    /// `writev` carries as many frames as are waiting.
    fn play_event(&mut self, ev: Event) {
        let limit = self.ingest.config.player_queue;
        let mut next = Some(ev);
        while let Some(ev) = next.take() {
            self.play_one(ev);
            if self.out.len() < limit {
                next = self.playing.as_mut().and_then(|p| p.sub.try_next());
            }
        }
    }

    fn play_one(&mut self, ev: Event) {
        let Some(playing) = self.playing.as_mut() else { return };
        self.play_wait = None;
        match &ev {
            Event::Frame(f) => playing.viewer.sent_frame(f.payload.len() as u64),
            Event::Skipped { from, to } => playing.viewer.skipped(to - from),
            _ => {}
        }
        if let Some(reason) = playing.egress.handle(ev, &mut self.enc, &mut self.out) {
            tracing::info!(%reason, frames = playing.egress.frames, skipped_gops = playing.egress.skipped_gops, "broadcast ended; closing player");
            // User Control "Stream EOF" (event 1) for our stream.
            let header =
                MessageHeader { csid: csid::CONTROL, timestamp: 0, type_id: types::USER_CONTROL, stream_id: 0 };
            self.enc.encode(header, &[0, 1, 0, 0, 0, STREAM_ID as u8], &[], &mut self.out);
            self.send_status("status", "NetStream.Play.UnpublishNotify", &format!("broadcast ended: {reason}"));
            self.send_status("status", "NetStream.Play.Stop", "stopped");
            self.playing = None;
            self.close = Some(Ok(()));
        }
    }

    async fn handle_message(&mut self, msg: RawMessage) -> Result<(), SessionError> {
        match msg.type_id {
            types::VIDEO | types::AUDIO => {
                let Some(p) = self.publishing.as_mut() else {
                    tracing::debug!("media from a connection that is not publishing; ignored");
                    return Ok(());
                };
                if msg.type_id == types::VIDEO {
                    p.media.handle_video(msg.timestamp, msg.parts, msg.len)
                } else {
                    p.media.handle_audio(msg.timestamp, msg.parts, msg.len)
                }
            }
            types::SET_CHUNK_SIZE => {
                let b = msg.contiguous();
                let size = b.get(..4).ok_or_else(|| malformed("Set Chunk Size", "shorter than 4 bytes"))?;
                self.dec.set_chunk_size(u32::from_be_bytes([size[0], size[1], size[2], size[3]]) & 0x7fff_ffff)?;
                Ok(())
            }
            types::ABORT => {
                let b = msg.contiguous();
                if let Some(c) = b.get(..4) {
                    self.dec.abort(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                }
                Ok(())
            }
            _ => {
                let data = msg.contiguous();
                // AMF commands and data: checked before the library parses them
                // (it recurses without a limit and panics on short commands).
                // The library reads types 15 and 17 (AMF3) as AMF0 too, 17 after a leading zero.
                let command = matches!(msg.type_id, types::COMMAND_AMF0 | types::COMMAND_AMF3);
                if command || matches!(msg.type_id, types::DATA_AMF0 | types::DATA_AMF3) {
                    let amf = if msg.type_id == types::COMMAND_AMF3 && data.first() == Some(&0) {
                        &data[1..]
                    } else {
                        &data[..]
                    };
                    crate::amf::check(amf, crate::amf::AmfLimits::default(), command)
                        .map_err(|why| malformed(if command { "AMF command" } else { "AMF data" }, why))?;
                }
                let payload = MessagePayload {
                    timestamp: RtmpTimestamp::new(msg.timestamp),
                    type_id: msg.type_id,
                    message_stream_id: msg.stream_id,
                    data,
                };
                // A panic in the library is this connection's error, not the task's.
                let parsed = std::panic::catch_unwind(move || payload.to_rtmp_message())
                    .map_err(|_| malformed("message", "the RTMP library could not parse it"))?
                    .map_err(|e| malformed("message", e.to_string()))?;
                self.handle_control(parsed).await
            }
        }
    }

    async fn handle_control(&mut self, msg: RtmpMessage) -> Result<(), SessionError> {
        match msg {
            RtmpMessage::WindowAcknowledgement { size } => self.peer_window = u64::from(size),
            RtmpMessage::UserControl { event_type: UserControlEventType::PingRequest, timestamp, .. } => {
                let ts = timestamp.unwrap_or(RtmpTimestamp::new(0));
                let reply = RtmpMessage::UserControl {
                    event_type: UserControlEventType::PingResponse,
                    stream_id: None,
                    buffer_length: None,
                    timestamp: Some(ts),
                };
                self.send(csid::CONTROL, 0, reply);
            }
            RtmpMessage::Amf0Data { values } => {
                if let Some(p) = self.publishing.as_mut() {
                    p.media.handle_data(values);
                }
            }
            RtmpMessage::Amf0Command { command_name, transaction_id, command_object, additional_arguments } => {
                self.handle_command(&command_name, transaction_id, command_object, additional_arguments).await?;
            }
            _ => {}
        }
        Ok(())
    }

    async fn handle_command(
        &mut self,
        name: &str,
        txn: f64,
        object: Amf0Value,
        args: Vec<Amf0Value>,
    ) -> Result<(), SessionError> {
        tracing::debug!(command = name, "command");
        match name {
            "connect" => self.on_connect(txn, &object),
            "createStream" => {
                self.require_connected()?;
                self.result(txn, vec![Amf0Value::Null, Amf0Value::Number(f64::from(STREAM_ID))]);
                Ok(())
            }
            "releaseStream" | "FCPublish" | "getStreamLength" | "FCSubscribe" => {
                if txn != 0.0 {
                    self.result(txn, vec![Amf0Value::Null, Amf0Value::Undefined]);
                }
                Ok(())
            }
            "publish" => self.on_publish(&args).await,
            "play" => self.on_play(&args),
            "deleteStream" | "closeStream" | "FCUnpublish" => {
                if self.publishing.is_some() {
                    self.stop_publishing(EndReason::PublisherLeft, true);
                }
                self.playing = None;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn on_connect(&mut self, txn: f64, object: &Amf0Value) -> Result<(), SessionError> {
        let app = match object {
            Amf0Value::Object(props) => match props.get("app") {
                Some(Amf0Value::Utf8String(s)) => s.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        let app = app.split('?').next().unwrap_or_default().trim_end_matches('/');
        // ffmpeg and others take everything up to the last slash as the
        // application, so `rtmp://HOST/live/alice/480p` (a rendition) arrives
        // as application `live/alice`, stream `480p`.
        let (app, prefix) = match app.split_once('/') {
            Some((a, p)) if validate_name(p).is_ok() => (a, Some(p.to_owned())),
            _ => (app, None),
        };
        if app != self.ingest.config.app {
            let why = format!("unknown application {app:?}; use rtmp://HOST/{}/...", self.ingest.config.app);
            self.command(
                "_error",
                txn,
                vec![Amf0Value::Null, status_object("error", "NetConnection.Connect.Rejected", &why)],
            );
            self.close = Some(Err(SessionError::Refused(why)));
            return Ok(());
        }
        self.send(csid::CONTROL, 0, RtmpMessage::WindowAcknowledgement { size: WINDOW });
        self.send(
            csid::CONTROL,
            0,
            RtmpMessage::SetPeerBandwidth { size: WINDOW, limit_type: PeerBandwidthLimitType::Dynamic },
        );
        let chunk = self.ingest.config.out_chunk_size;
        self.send(csid::CONTROL, 0, RtmpMessage::SetChunkSize { size: chunk as u32 });
        self.enc.set_chunk_size(chunk);
        let mut props = HashMap::new();
        props.insert("fmsVer".to_owned(), Amf0Value::Utf8String("FMS/3,0,1,123".into()));
        props.insert("capabilities".to_owned(), Amf0Value::Number(31.0));
        let mut info = status_props("status", "NetConnection.Connect.Success", "Connection succeeded.");
        info.insert("objectEncoding".to_owned(), Amf0Value::Number(0.0));
        self.result(txn, vec![Amf0Value::Object(props), Amf0Value::Object(info)]);
        self.connected = true;
        self.app_prefix = prefix;
        Ok(())
    }

    async fn on_publish(&mut self, args: &[Amf0Value]) -> Result<(), SessionError> {
        self.require_connected()?;
        let key = stream_arg(args);
        let name = match self.ingest.keys.authorize(&key).await {
            Ok(Some(name)) => name,
            Ok(None) => {
                self.send_status("error", "NetStream.Publish.BadName", "invalid stream key");
                self.close = Some(Err(SessionError::Refused("publish with an invalid stream key".into())));
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, "stream key lookup failed");
                self.send_status("error", "NetStream.Publish.Failed", "stream key lookup failed");
                self.close = Some(Err(SessionError::Refused(format!("key lookup failed: {e}"))));
                return Ok(());
            }
        };
        if self.publishing.is_some() || self.playing.is_some() {
            return Err(SessionError::Refused("publish on a connection that already publishes or plays".into()));
        }
        if let Some(hook) = self.ingest.hook.clone() {
            let app = format!(
                "{}{}",
                self.ingest.config.app,
                self.app_prefix.as_deref().map(|p| format!("/{p}")).unwrap_or_default()
            );
            let request = PublishRequest { name: name.clone(), key: key.clone(), peer: self.peer, app };
            if let Err(why) = hook.check(request).await {
                tracing::info!(broadcast = %name, reason = %why, "publish refused by the authorization hook");
                self.send_status("error", "NetStream.Publish.BadName", &format!("publish refused: {why}"));
                self.close =
                    Some(Err(SessionError::Refused(format!("publish refused by the authorization hook: {why}"))));
                return Ok(());
            }
        }
        let publisher = self.ingest.bus.publish(&name);
        let (revoked, kicked) = (CancellationToken::new(), CancellationToken::new());
        let live = LivePublisher {
            key: KeyHash::of(&key),
            session: self.id,
            revoked: revoked.clone(),
            kicked: kicked.clone(),
            peer: self.peer,
        };
        self.ingest.live.insert(name.clone(), live);
        tracing::Span::current().record("broadcast", name.as_str());
        tracing::info!("publishing");
        let (revoked_signal, replaced_signal) = (revoked.clone().cancelled_owned(), publisher.replaced_owned());
        let kicked_signal = kicked.clone().cancelled_owned();
        let stop = Box::pin(async move {
            tokio::select! {
                _ = revoked_signal => Stop::Revoked,
                _ = replaced_signal => Stop::Replaced,
                _ = kicked_signal => Stop::Kicked,
            }
        });
        let media = MediaIngest::with_limits(publisher, self.ingest.config.gop_limits);
        self.publishing = Some(Publishing { media, name, revoked, kicked, stop });
        // Media comes now: messages up to the configured size.
        self.dec.set_max_message(self.ingest.config.max_message);
        self.stream_begin();
        self.send_status("status", "NetStream.Publish.Start", "publishing");
        Ok(())
    }

    fn on_play(&mut self, args: &[Amf0Value]) -> Result<(), SessionError> {
        self.require_connected()?;
        let name = match &self.app_prefix {
            Some(prefix) => format!("{prefix}/{}", stream_arg(args)),
            None => stream_arg(args),
        };
        let Some((broadcast, rendition)) = play_target(&name) else {
            self.send_status("error", "NetStream.Play.StreamNotFound", &format!("no stream named {name:?}"));
            self.close = Some(Err(SessionError::Refused(format!("play of invalid name {name:?}"))));
            return Ok(());
        };
        if self.publishing.is_some() || self.playing.is_some() {
            return Err(SessionError::Refused("play on a connection that already publishes or plays".into()));
        }
        tracing::Span::current().record("broadcast", name.as_str());
        let bus = &self.ingest.bus;
        tracing::info!(live = bus.is_live(broadcast), rendition = rendition.as_deref(), "playing");
        let sub = match &rendition {
            None => PlaySource::Published(bus.subscribe(broadcast, SubscribeOptions::default())),
            Some(track) => PlaySource::Rendition(bus.subscribe_tracks(
                broadcast,
                &[track, gopbus_proto::TrackInfo::AUDIO],
                SubscribeOptions::default(),
            )),
        };
        self.stream_begin();
        self.send_status("status", "NetStream.Play.Reset", "resetting");
        self.send_status("status", "NetStream.Play.Start", &format!("playing {name}"));
        self.send(
            csid::STREAM,
            STREAM_ID,
            RtmpMessage::Amf0Data {
                values: vec![
                    Amf0Value::Utf8String("|RtmpSampleAccess".into()),
                    Amf0Value::Boolean(true),
                    Amf0Value::Boolean(true),
                ],
            },
        );
        let viewer = self.ingest.bus.audience().join(broadcast, gopbus_bus::Protocol::Rtmp);
        if !self.ingest.bus.is_live(broadcast) {
            // Waits for a publisher, for a while.
            self.play_wait = Some(Box::pin(tokio::time::sleep(self.ingest.config.play_wait_timeout)));
        }
        self.playing = Some(Playing { sub, egress: Egress::new(STREAM_ID), viewer });
        Ok(())
    }

    /// Ends this connection's broadcast, if it publishes. `clean` marks the GoP complete.
    fn stop_publishing(&mut self, reason: EndReason, clean: bool) {
        let Some(p) = self.publishing.take() else { return };
        let (frames, dropped) = (p.media.frames, p.media.dropped);
        self.ingest.live.remove_if(&p.name, |_, v| v.session == self.id);
        let publisher = p.media.into_publisher();
        if !publisher.is_active() {
            tracing::info!(broadcast = %p.name, frames, dropped, "publisher replaced");
            return;
        }
        tracing::info!(broadcast = %p.name, %reason, frames, dropped, "publisher stopped");
        if clean || reason != EndReason::PublisherLeft {
            publisher.end(reason);
        }
        // Otherwise dropping the handle ends the broadcast with its GoP cut short.
    }

    fn require_connected(&self) -> Result<(), SessionError> {
        if self.connected {
            Ok(())
        } else {
            Err(SessionError::Refused("command before connect".into()))
        }
    }

    fn stream_begin(&mut self) {
        let msg = RtmpMessage::UserControl {
            event_type: UserControlEventType::StreamBegin,
            stream_id: Some(STREAM_ID),
            buffer_length: None,
            timestamp: None,
        };
        self.send(csid::CONTROL, 0, msg);
    }

    fn result(&mut self, txn: f64, values: Vec<Amf0Value>) {
        self.command("_result", txn, values);
    }

    fn command(&mut self, name: &str, txn: f64, mut values: Vec<Amf0Value>) {
        let object = if values.is_empty() { Amf0Value::Null } else { values.remove(0) };
        let msg = RtmpMessage::Amf0Command {
            command_name: name.to_owned(),
            transaction_id: txn,
            command_object: object,
            additional_arguments: values,
        };
        self.send(csid::COMMAND, 0, msg);
    }

    fn send_status(&mut self, level: &str, code: &str, description: &str) {
        let msg = RtmpMessage::Amf0Command {
            command_name: "onStatus".into(),
            transaction_id: 0.0,
            command_object: Amf0Value::Null,
            additional_arguments: vec![status_object(level, code, description)],
        };
        self.send(csid::STREAM, STREAM_ID, msg);
    }

    fn send(&mut self, chunk_stream: u32, stream_id: u32, msg: RtmpMessage) {
        match msg.into_message_payload(RtmpTimestamp::new(0), stream_id) {
            Ok(p) => {
                let header = MessageHeader { csid: chunk_stream, timestamp: 0, type_id: p.type_id, stream_id };
                self.enc.encode(header, &[], &[p.data], &mut self.out);
            }
            Err(e) => tracing::error!(error = %e, "could not serialize an outgoing message"),
        }
    }
}

fn malformed(what: &'static str, why: impl Into<String>) -> SessionError {
    SessionError::Malformed { what, why: why.into() }
}

/// The stream name or key argument of `publish`/`play`, without a `?query`.
fn stream_arg(args: &[Amf0Value]) -> String {
    let raw = args.iter().find_map(|v| if let Amf0Value::Utf8String(s) = v { Some(s.as_str()) } else { None });
    raw.unwrap_or_default().split('?').next().unwrap_or_default().to_owned()
}

fn status_props(level: &str, code: &str, description: &str) -> HashMap<String, Amf0Value> {
    let mut props = HashMap::new();
    props.insert("level".to_owned(), Amf0Value::Utf8String(level.into()));
    props.insert("code".to_owned(), Amf0Value::Utf8String(code.into()));
    props.insert("description".to_owned(), Amf0Value::Utf8String(description.into()));
    props
}

fn status_object(level: &str, code: &str, description: &str) -> Amf0Value {
    Amf0Value::Object(status_props(level, code, description))
}

#[cfg(test)]
mod tests {
    use super::play_target;

    #[test]
    fn play_names() {
        assert_eq!(play_target("alice"), Some(("alice", None)));
        assert_eq!(play_target("alice/480p"), Some(("alice", Some("video/480p".to_owned()))));
        for bad in ["alice/480", "alice/p", "alice/audio/opus", "Alice/480p", "../480p", "alice/4800000p"] {
            assert_eq!(play_target(bad), None, "{bad}");
        }
    }
}
