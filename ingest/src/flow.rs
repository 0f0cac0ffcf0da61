//! The RTMP command flow of one connection, sans-IO: bytes and time in,
//! replies (queued chunks) and [`Action`]s out.
//!
//! It decodes chunks, checks and parses commands, answers `connect`,
//! `createStream`, FMLE's `releaseStream`/`FCPublish`, pings and window
//! acknowledgements itself, and keeps the connection's deadlines (a role must
//! be taken within `command_timeout`; a player waits for a publisher at most
//! `play_wait_timeout`). What needs the world — a stream key looked up, a bus
//! publication or subscription made, media handed on — comes out as an
//! [`Action`] for the driver (`session.rs`), which answers a key check with
//! [`Flow::publish_started`] or [`Flow::publish_refused`]. No socket, no
//! clock, no task: every rule here is unit-tested on plain values.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gopbus_store::keys::validate_name;
use rml_rtmp::messages::{MessagePayload, PeerBandwidthLimitType, RtmpMessage, UserControlEventType};
use rml_rtmp::rml_amf0::Amf0Value;
use rml_rtmp::time::RtmpTimestamp;

use crate::chunk::{csid, types, ChunkDecoder, ChunkEncoder, MessageHeader, OutQueue, RawMessage};
use crate::error::SessionError;

/// The one message stream id gopbus hands out.
pub const STREAM_ID: u32 = 1;
/// Window acknowledgement size and peer bandwidth we announce.
const WINDOW: u32 = 2_500_000;
/// Largest message before a publish is accepted: only commands come then.
const PRE_PUBLISH_MAX_MESSAGE: usize = 64 * 1024;

/// What the command flow needs to know of the server's configuration.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    /// The one application name accepted (`live`).
    pub app: String,
    /// Chunk size of what we send.
    pub out_chunk_size: usize,
    /// Largest message a publisher may send.
    pub max_message: usize,
    /// `connect` and then `publish` or `play` must come within this.
    pub command_timeout: Duration,
    /// How long a player waits for a broadcast that is not live.
    pub play_wait_timeout: Duration,
}

/// A publish the driver must check: look the key up, ask the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishCheck {
    /// The stream key, without a `?query`.
    pub key: String,
    /// The application as the client named it (`live`, or `live/PREFIX`).
    pub app: String,
}

/// What the driver must do for the flow.
#[derive(Debug)]
pub enum Action {
    /// A video message of the publisher (FLV video tag body, as slices).
    Video {
        /// RTMP timestamp, ms.
        timestamp: u32,
        /// The body.
        parts: Vec<Bytes>,
        /// Its length.
        len: usize,
    },
    /// An audio message of the publisher.
    Audio {
        /// RTMP timestamp, ms.
        timestamp: u32,
        /// The body.
        parts: Vec<Bytes>,
        /// Its length.
        len: usize,
    },
    /// Metadata (`@setDataFrame`/`onMetaData`) of the publisher.
    Data(Vec<Amf0Value>),
    /// The peer asks to publish: check the key, then answer with
    /// [`Flow::publish_started`] or [`Flow::publish_refused`]. The flow reads
    /// nothing more until then.
    Authorize(PublishCheck),
    /// The peer plays `broadcast` (a rendition's track when `rendition` is set):
    /// subscribe. The flow has queued the replies; it waits for a publisher
    /// until [`Flow::play_started`] is called.
    Play {
        /// The name as asked (`alice`, `alice/480p`).
        name: String,
        /// The broadcast.
        broadcast: String,
        /// `video/480p` for a rendition.
        rendition: Option<String>,
    },
    /// The publisher said it is done (`FCUnpublish`, `deleteStream`): end the
    /// broadcast cleanly.
    StopPublishing,
    /// The player closed its stream, or gave up waiting.
    StopPlaying,
    /// Close the connection once what is queued is written, with this result.
    Close(Result<(), SessionError>),
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such stream key.
    InvalidKey,
    /// The key store could not be asked.
    LookupFailed(String),
    /// The authorization hook said no.
    Hook(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// No publish or play yet (or the last one was closed).
    None,
    /// A publish waits for its key check.
    Authorizing,
    Publishing,
    Playing,
}

/// The command flow of one connection.
pub struct Flow {
    config: FlowConfig,
    dec: ChunkDecoder,
    enc: ChunkEncoder,
    out: OutQueue,
    received: u64,
    acked: u64,
    peer_window: u64,
    connected: bool,
    /// The part of the application after `live/` (see `on_connect`).
    app_prefix: Option<String>,
    role: Role,
    /// `connect` and a role must come before this; `None` once one did.
    role_deadline: Option<Instant>,
    /// A player waiting for a broadcast gives up at this time.
    play_wait: Option<Instant>,
    /// Set once the connection is to close: nothing more is read.
    closing: bool,
    /// Actions decided outside [`Flow::next`] (time, the driver's answers), handed out by it first.
    pending: VecDeque<Action>,
}

impl Flow {
    /// A flow for a connection whose handshake completed at `now`.
    pub fn new(config: FlowConfig, now: Instant) -> Self {
        let dec = ChunkDecoder::new(PRE_PUBLISH_MAX_MESSAGE.min(config.max_message));
        Self {
            role_deadline: Some(now + config.command_timeout),
            config,
            dec,
            enc: ChunkEncoder::new(),
            out: OutQueue::default(),
            received: 0,
            acked: 0,
            peer_window: 0,
            connected: false,
            app_prefix: None,
            role: Role::None,
            play_wait: None,
            closing: false,
            pending: VecDeque::new(),
        }
    }

    /// The next thing for the driver to do, decoding from `buf` as needed.
    /// `Ok(None)`: more bytes are needed, or a key check is outstanding, or the
    /// connection is closing. An error ends the connection at once.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Action>, SessionError> {
        loop {
            if let Some(action) = self.pending.pop_front() {
                return Ok(Some(action));
            }
            if self.closing || self.role == Role::Authorizing {
                return Ok(None);
            }
            let Some(msg) = self.dec.decode(buf)? else { return Ok(None) };
            if let Some(action) = self.handle_message(msg)? {
                return Ok(Some(action));
            }
        }
    }

    /// Counts `n` bytes read from the peer, acknowledging them when its window says so.
    pub fn received(&mut self, n: usize) {
        self.received += n as u64;
        if self.peer_window > 0 && self.received - self.acked >= self.peer_window {
            self.acked = self.received;
            // The sequence number is the byte count modulo 2^32, by the spec.
            let sequence_number = (self.received & u64::from(u32::MAX)) as u32;
            self.send(csid::CONTROL, 0, RtmpMessage::Acknowledgement { sequence_number });
        }
    }

    /// When [`Flow::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.role_deadline, self.play_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies the deadlines that passed by `now`; what follows comes out of [`Flow::next`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        if self.role_deadline.is_some_and(|d| now >= d) {
            self.role_deadline = None;
            let why =
                format!("no publish or play within {} s of connecting", self.config.command_timeout.as_secs_f64());
            self.close(Err(SessionError::Refused(why)));
        } else if self.play_wait.is_some_and(|d| now >= d) {
            self.play_wait = None;
            let wait = self.config.play_wait_timeout.as_secs();
            tracing::info!(wait_s = wait, "player gave up: nothing published under this name");
            self.send_status("error", "NetStream.Play.StreamNotFound", &format!("nothing published within {wait} s"));
            self.role = Role::None;
            self.pending.push_back(Action::StopPlaying);
            self.close(Ok(()));
        }
    }

    /// The key check of [`Action::Authorize`] passed: `name` is live now.
    pub fn publish_started(&mut self) {
        debug_assert_eq!(self.role, Role::Authorizing);
        self.role = Role::Publishing;
        // Media comes now: messages up to the configured size.
        self.dec.set_max_message(self.config.max_message);
        self.stream_begin();
        self.send_status("status", "NetStream.Publish.Start", "publishing");
    }

    /// The key check of [`Action::Authorize`] failed: the peer is told and the
    /// connection closes (the next [`Flow::next`] returns the close).
    pub fn publish_refused(&mut self, why: Refusal) {
        let (code, description, reason) = match why {
            Refusal::InvalidKey => (
                "NetStream.Publish.BadName",
                "invalid stream key".to_owned(),
                "publish with an invalid stream key".to_owned(),
            ),
            Refusal::LookupFailed(e) => {
                ("NetStream.Publish.Failed", "stream key lookup failed".to_owned(), format!("key lookup failed: {e}"))
            }
            Refusal::Hook(why) => (
                "NetStream.Publish.BadName",
                format!("publish refused: {why}"),
                format!("publish refused by the authorization hook: {why}"),
            ),
        };
        self.send_status("error", code, &description);
        self.role = Role::None;
        self.close(Err(SessionError::Refused(reason)));
    }

    /// The played broadcast sent its first event: the player no longer waits.
    pub fn play_started(&mut self) {
        self.play_wait = None;
    }

    /// The played broadcast ended (`reason` as the bus gives it): the player is
    /// told, and the connection closes once that is written.
    pub fn play_ended(&mut self, reason: &str) {
        // User Control "Stream EOF" (event 1) for our stream.
        let header = MessageHeader { csid: csid::CONTROL, timestamp: 0, type_id: types::USER_CONTROL, stream_id: 0 };
        self.enc.encode(header, &[0, 1, 0, 0, 0, STREAM_ID as u8], &[], &mut self.out);
        self.send_status("status", "NetStream.Play.UnpublishNotify", &format!("broadcast ended: {reason}"));
        self.send_status("status", "NetStream.Play.Stop", "stopped");
        self.role = Role::None;
        self.close(Ok(()));
    }

    /// The server shuts down: a player is told, and the connection closes.
    pub fn shutdown(&mut self) {
        if self.closing {
            return;
        }
        if self.role == Role::Playing {
            self.send_status("status", "NetStream.Play.UnpublishNotify", "server shutting down");
        }
        self.close(Ok(()));
    }

    /// What waits to be written to the peer.
    pub fn out(&mut self) -> &mut OutQueue {
        &mut self.out
    }

    /// The encoder and queue a player's media is written with.
    pub fn media_out(&mut self) -> (&mut ChunkEncoder, &mut OutQueue) {
        (&mut self.enc, &mut self.out)
    }

    /// The chunk size we send with.
    pub fn chunk_size(&self) -> usize {
        self.enc.chunk_size()
    }

    /// Whether the peer is still in its command exchange (no publish or play
    /// accepted yet): each of its commands waits for our answer.
    pub fn in_commands(&self) -> bool {
        // The deadline stands until a publish or play is asked for.
        !self.closing && self.role_deadline.is_some()
    }

    /// Whether the connection publishes (its key check passed).
    pub fn is_publishing(&self) -> bool {
        self.role == Role::Publishing
    }

    /// Bytes waiting to be written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Ends the flow: nothing more is read; the close comes out of [`Flow::next`].
    fn close(&mut self, result: Result<(), SessionError>) {
        self.closing = true;
        self.role_deadline = None;
        self.play_wait = None;
        self.pending.push_back(Action::Close(result));
    }

    fn handle_message(&mut self, msg: RawMessage) -> Result<Option<Action>, SessionError> {
        match msg.type_id {
            types::VIDEO | types::AUDIO => {
                if self.role != Role::Publishing {
                    tracing::debug!("media from a connection that is not publishing; ignored");
                    return Ok(None);
                }
                let (timestamp, parts, len) = (msg.timestamp, msg.parts, msg.len);
                Ok(Some(if msg.type_id == types::VIDEO {
                    Action::Video { timestamp, parts, len }
                } else {
                    Action::Audio { timestamp, parts, len }
                }))
            }
            types::SET_CHUNK_SIZE => {
                let b = msg.contiguous();
                let size = b.get(..4).ok_or_else(|| malformed("Set Chunk Size", "shorter than 4 bytes"))?;
                self.dec.set_chunk_size(u32::from_be_bytes([size[0], size[1], size[2], size[3]]) & 0x7fff_ffff)?;
                Ok(None)
            }
            types::ABORT => {
                let b = msg.contiguous();
                if let Some(c) = b.get(..4) {
                    self.dec.abort(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                }
                Ok(None)
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
                self.handle_control(parsed)
            }
        }
    }

    fn handle_control(&mut self, msg: RtmpMessage) -> Result<Option<Action>, SessionError> {
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
            RtmpMessage::Amf0Data { values } if self.role == Role::Publishing => return Ok(Some(Action::Data(values))),
            RtmpMessage::Amf0Command { command_name, transaction_id, command_object, additional_arguments } => {
                return self.handle_command(&command_name, transaction_id, &command_object, &additional_arguments);
            }
            _ => {}
        }
        Ok(None)
    }

    fn handle_command(
        &mut self,
        name: &str,
        txn: f64,
        object: &Amf0Value,
        args: &[Amf0Value],
    ) -> Result<Option<Action>, SessionError> {
        tracing::debug!(command = name, "command");
        match name {
            "connect" => Ok(self.on_connect(txn, object)),
            "createStream" => {
                self.require_connected()?;
                self.result(txn, vec![Amf0Value::Null, Amf0Value::Number(f64::from(STREAM_ID))]);
                Ok(None)
            }
            "releaseStream" | "FCPublish" | "getStreamLength" | "FCSubscribe" => {
                if txn != 0.0 {
                    self.result(txn, vec![Amf0Value::Null, Amf0Value::Undefined]);
                }
                Ok(None)
            }
            "publish" => self.on_publish(args).map(Some),
            "play" => self.on_play(args),
            "deleteStream" | "closeStream" | "FCUnpublish" => {
                let was = std::mem::replace(&mut self.role, Role::None);
                Ok(match was {
                    Role::Publishing => Some(Action::StopPublishing),
                    Role::Playing => {
                        self.play_wait = None;
                        Some(Action::StopPlaying)
                    }
                    Role::None | Role::Authorizing => None,
                })
            }
            _ => Ok(None),
        }
    }

    fn on_connect(&mut self, txn: f64, object: &Amf0Value) -> Option<Action> {
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
        if app != self.config.app {
            let why = format!("unknown application {app:?}; use rtmp://HOST/{}/...", self.config.app);
            self.command(
                "_error",
                txn,
                vec![Amf0Value::Null, status_object("error", "NetConnection.Connect.Rejected", &why)],
            );
            self.close(Err(SessionError::Refused(why)));
            return None;
        }
        self.send(csid::CONTROL, 0, RtmpMessage::WindowAcknowledgement { size: WINDOW });
        self.send(
            csid::CONTROL,
            0,
            RtmpMessage::SetPeerBandwidth { size: WINDOW, limit_type: PeerBandwidthLimitType::Dynamic },
        );
        let chunk = self.config.out_chunk_size;
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
        None
    }

    fn on_publish(&mut self, args: &[Amf0Value]) -> Result<Action, SessionError> {
        self.require_connected()?;
        if self.role != Role::None {
            return Err(SessionError::Refused("publish on a connection that already publishes or plays".into()));
        }
        let app = match &self.app_prefix {
            Some(prefix) => format!("{}/{prefix}", self.config.app),
            None => self.config.app.clone(),
        };
        self.role = Role::Authorizing;
        self.role_deadline = None;
        Ok(Action::Authorize(PublishCheck { key: stream_arg(args), app }))
    }

    fn on_play(&mut self, args: &[Amf0Value]) -> Result<Option<Action>, SessionError> {
        self.require_connected()?;
        let name = match &self.app_prefix {
            Some(prefix) => format!("{prefix}/{}", stream_arg(args)),
            None => stream_arg(args),
        };
        let Some((broadcast, rendition)) = play_target(&name) else {
            self.send_status("error", "NetStream.Play.StreamNotFound", &format!("no stream named {name:?}"));
            self.close(Err(SessionError::Refused(format!("play of invalid name {name:?}"))));
            return Ok(None);
        };
        if self.role != Role::None {
            return Err(SessionError::Refused("play on a connection that already publishes or plays".into()));
        }
        let broadcast = broadcast.to_owned();
        self.role = Role::Playing;
        self.role_deadline = None;
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
        Ok(Some(Action::Play { name, broadcast, rendition }))
    }

    /// Arms the wait for a publisher: the driver calls it when the played
    /// broadcast is not live, with the time of the play.
    pub fn play_waits(&mut self, now: Instant) {
        if self.role == Role::Playing {
            self.play_wait = Some(now + self.config.play_wait_timeout);
        }
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
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn config() -> FlowConfig {
        FlowConfig {
            app: "live".into(),
            out_chunk_size: 4096,
            max_message: 1 << 20,
            command_timeout: 10 * SEC,
            play_wait_timeout: 30 * SEC,
        }
    }

    /// A client on the other end: encodes what it sends, decodes what the flow queued.
    struct Peer {
        enc: ChunkEncoder,
        wire: BytesMut,
        dec: ChunkDecoder,
    }

    impl Peer {
        fn new() -> Self {
            Self { enc: ChunkEncoder::new(), wire: BytesMut::new(), dec: ChunkDecoder::new(1 << 20) }
        }

        fn send(&mut self, csid: u32, stream_id: u32, msg: RtmpMessage) {
            let p = msg.into_message_payload(RtmpTimestamp::new(0), stream_id).unwrap();
            self.raw(MessageHeader { csid, timestamp: 0, type_id: p.type_id, stream_id }, &p.data);
        }

        fn raw(&mut self, header: MessageHeader, body: &[u8]) {
            let mut q = OutQueue::default();
            self.enc.encode(header, &[], &[Bytes::copy_from_slice(body)], &mut q);
            for seg in q.segments() {
                self.wire.extend_from_slice(seg);
            }
        }

        fn command(&mut self, name: &str, txn: f64, object: Amf0Value, args: Vec<Amf0Value>) {
            let msg = RtmpMessage::Amf0Command {
                command_name: name.into(),
                transaction_id: txn,
                command_object: object,
                additional_arguments: args,
            };
            self.send(csid::COMMAND, if matches!(name, "publish" | "play" | "deleteStream") { 1 } else { 0 }, msg);
        }

        fn connect(&mut self, app: &str) {
            let mut props = HashMap::new();
            props.insert("app".to_owned(), Amf0Value::Utf8String(app.into()));
            self.command("connect", 1.0, Amf0Value::Object(props), vec![]);
        }

        /// Everything the flow queued for us, parsed; applies its Set Chunk Size.
        fn replies(&mut self, flow: &mut Flow) -> Vec<RtmpMessage> {
            let mut bytes = BytesMut::new();
            let out = flow.out();
            for seg in out.segments() {
                bytes.extend_from_slice(seg);
            }
            let n = out.len();
            out.consume(n);
            let mut msgs = Vec::new();
            while let Some(m) = self.dec.decode(&mut bytes).unwrap() {
                let payload = MessagePayload {
                    timestamp: RtmpTimestamp::new(m.timestamp),
                    type_id: m.type_id,
                    message_stream_id: m.stream_id,
                    data: m.contiguous(),
                };
                let msg = payload.to_rtmp_message().unwrap();
                if let RtmpMessage::SetChunkSize { size } = msg {
                    self.dec.set_chunk_size(size).unwrap();
                }
                msgs.push(msg);
            }
            assert!(bytes.is_empty(), "a partial message was queued");
            msgs
        }
    }

    /// Runs the flow over what the peer sent until it needs more.
    fn drain(flow: &mut Flow, peer: &mut Peer) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some(a) = flow.next(&mut peer.wire).unwrap() {
            actions.push(a);
        }
        actions
    }

    /// (`_result`/`_error`/`onStatus`, transaction, code of the status object if any)
    fn commands(msgs: &[RtmpMessage]) -> Vec<(String, f64, Option<String>)> {
        msgs.iter()
            .filter_map(|m| match m {
                RtmpMessage::Amf0Command { command_name, transaction_id, additional_arguments, .. } => {
                    let code = additional_arguments.iter().find_map(|v| match v {
                        Amf0Value::Object(p) => match p.get("code") {
                            Some(Amf0Value::Utf8String(c)) => Some(c.clone()),
                            _ => None,
                        },
                        _ => None,
                    });
                    Some((command_name.clone(), *transaction_id, code))
                }
                _ => None,
            })
            .collect()
    }

    fn codes(msgs: &[RtmpMessage]) -> Vec<String> {
        commands(msgs).into_iter().filter_map(|(_, _, c)| c).collect()
    }

    fn connected(now: Instant) -> (Flow, Peer) {
        let mut flow = Flow::new(config(), now);
        let mut peer = Peer::new();
        peer.connect("live");
        assert!(drain(&mut flow, &mut peer).is_empty());
        let replies = peer.replies(&mut flow);
        assert!(matches!(replies[0], RtmpMessage::WindowAcknowledgement { size: WINDOW }), "{replies:?}");
        assert!(matches!(replies[1], RtmpMessage::SetPeerBandwidth { .. }));
        assert!(matches!(replies[2], RtmpMessage::SetChunkSize { size: 4096 }));
        assert_eq!(
            commands(&replies[3..]),
            vec![("_result".into(), 1.0, Some("NetConnection.Connect.Success".into()))]
        );
        (flow, peer)
    }

    fn is_close(a: &Action, ok: bool) -> bool {
        matches!(a, Action::Close(r) if r.is_ok() == ok)
    }

    /// OBS's FMLE-style publish, start to end: every command answered, the key
    /// check asked of the driver, nothing read while it is outstanding, media
    /// handed on, FCUnpublish ends the broadcast cleanly.
    #[test]
    fn fmle_publish_flow() {
        let t0 = Instant::now();
        let (mut flow, mut peer) = connected(t0);
        let key = Amf0Value::Utf8String("sk_secret?bw=1".into());
        peer.command("releaseStream", 2.0, Amf0Value::Null, vec![key.clone()]);
        peer.command("FCPublish", 3.0, Amf0Value::Null, vec![key.clone()]);
        peer.command("createStream", 4.0, Amf0Value::Null, vec![]);
        peer.command("publish", 5.0, Amf0Value::Null, vec![key, Amf0Value::Utf8String("live".into())]);
        // Sent before the answer to the key check: must wait for it.
        peer.raw(
            MessageHeader { csid: csid::VIDEO, timestamp: 40, type_id: types::VIDEO, stream_id: 1 },
            &[0x17, 0, 0, 0, 0, 1, 2],
        );
        let actions = drain(&mut flow, &mut peer);
        let [Action::Authorize(check)] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!(check, &PublishCheck { key: "sk_secret".into(), app: "live".into() });
        assert!(flow.next(&mut peer.wire).unwrap().is_none(), "read on while the key check is outstanding");
        assert!(!peer.wire.is_empty());
        let replies = peer.replies(&mut flow);
        assert_eq!(
            commands(&replies),
            vec![("_result".into(), 2.0, None), ("_result".into(), 3.0, None), ("_result".into(), 4.0, None),]
        );
        let RtmpMessage::Amf0Command { additional_arguments, .. } = &replies[2] else { unreachable!() };
        assert!(matches!(additional_arguments[0], Amf0Value::Number(n) if n == f64::from(STREAM_ID)));

        flow.publish_started();
        assert!(flow.is_publishing());
        let replies = peer.replies(&mut flow);
        assert!(matches!(
            replies[0],
            RtmpMessage::UserControl { event_type: UserControlEventType::StreamBegin, stream_id: Some(STREAM_ID), .. }
        ));
        assert_eq!(codes(&replies), ["NetStream.Publish.Start"]);
        let actions = drain(&mut flow, &mut peer);
        let [Action::Video { timestamp: 40, parts, len: 7 }] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!(parts.concat(), [0x17, 0, 0, 0, 0, 1, 2]);

        // A publisher's metadata and a media message larger than commands may be.
        let meta = RtmpMessage::Amf0Data {
            values: vec![Amf0Value::Utf8String("@setDataFrame".into()), Amf0Value::Utf8String("onMetaData".into())],
        };
        peer.send(csid::STREAM, 1, meta);
        let big = vec![0xaf; 200_000];
        peer.raw(MessageHeader { csid: csid::AUDIO, timestamp: 41, type_id: types::AUDIO, stream_id: 1 }, &big);
        let actions = drain(&mut flow, &mut peer);
        assert!(matches!(&actions[0], Action::Data(v) if v.len() == 2), "{actions:?}");
        assert!(matches!(&actions[1], Action::Audio { timestamp: 41, len: 200_000, .. }));

        peer.command("FCUnpublish", 6.0, Amf0Value::Null, vec![]);
        peer.command("deleteStream", 7.0, Amf0Value::Null, vec![Amf0Value::Number(1.0)]);
        let actions = drain(&mut flow, &mut peer);
        assert!(matches!(actions.as_slice(), [Action::StopPublishing]), "{actions:?}");
        assert!(!flow.is_publishing());
        // No deadline is left once a role was taken.
        assert_eq!(flow.poll_timeout(), None);
    }

    #[test]
    fn a_refused_key_is_told_and_closes() {
        for (refusal, code) in [
            (Refusal::InvalidKey, "NetStream.Publish.BadName"),
            (Refusal::LookupFailed("redis down".into()), "NetStream.Publish.Failed"),
            (Refusal::Hook("banned".into()), "NetStream.Publish.BadName"),
        ] {
            let (mut flow, mut peer) = connected(Instant::now());
            peer.command("publish", 5.0, Amf0Value::Null, vec![Amf0Value::Utf8String("wrong".into())]);
            assert!(matches!(drain(&mut flow, &mut peer).as_slice(), [Action::Authorize(_)]));
            flow.publish_refused(refusal);
            assert_eq!(codes(&peer.replies(&mut flow)), [code]);
            let actions = drain(&mut flow, &mut peer);
            assert!(matches!(actions.as_slice(), [a] if is_close(a, false)), "{actions:?}");
            // Nothing more is read from a closing connection.
            peer.command("publish", 6.0, Amf0Value::Null, vec![Amf0Value::Utf8String("again".into())]);
            assert!(drain(&mut flow, &mut peer).is_empty());
        }
    }

    #[test]
    fn a_wrong_application_is_rejected() {
        let mut flow = Flow::new(config(), Instant::now());
        let mut peer = Peer::new();
        peer.connect("vod");
        let actions = drain(&mut flow, &mut peer);
        assert!(matches!(&actions[..], [Action::Close(Err(SessionError::Refused(why)))] if why.contains("\"vod\"")));
        assert_eq!(
            commands(&peer.replies(&mut flow)),
            vec![("_error".into(), 1.0, Some("NetConnection.Connect.Rejected".into()))]
        );
    }

    #[test]
    fn commands_before_connect_are_refused() {
        for name in ["createStream", "publish", "play"] {
            let mut flow = Flow::new(config(), Instant::now());
            let mut peer = Peer::new();
            peer.command(name, 2.0, Amf0Value::Null, vec![Amf0Value::Utf8String("x".into())]);
            let err = flow.next(&mut peer.wire).unwrap_err();
            assert!(matches!(&err, SessionError::Refused(w) if w == "command before connect"), "{name}: {err}");
        }
    }

    #[test]
    fn a_connection_that_takes_no_role_is_closed_at_its_deadline() {
        let t0 = Instant::now();
        let (mut flow, _peer) = connected(t0);
        assert_eq!(flow.poll_timeout(), Some(t0 + 10 * SEC));
        flow.handle_timeout(t0 + 9 * SEC);
        assert!(flow.next(&mut BytesMut::new()).unwrap().is_none());
        flow.handle_timeout(t0 + 10 * SEC);
        let a = flow.next(&mut BytesMut::new()).unwrap().unwrap();
        assert!(
            matches!(&a, Action::Close(Err(SessionError::Refused(w))) if w.contains("no publish or play")),
            "{a:?}"
        );
        assert_eq!(flow.poll_timeout(), None);
    }

    #[test]
    fn a_player_waits_for_a_publisher_then_gives_up() {
        let t0 = Instant::now();
        let (mut flow, mut peer) = connected(t0);
        peer.command("play", 4.0, Amf0Value::Null, vec![Amf0Value::Utf8String("alice?token=x".into())]);
        let actions = drain(&mut flow, &mut peer);
        let [Action::Play { name, broadcast, rendition: None }] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!((name.as_str(), broadcast.as_str()), ("alice", "alice"));
        assert_eq!(codes(&peer.replies(&mut flow)), ["NetStream.Play.Reset", "NetStream.Play.Start"]);
        let t1 = t0 + SEC;
        flow.play_waits(t1);
        assert_eq!(flow.poll_timeout(), Some(t1 + 30 * SEC));
        flow.handle_timeout(t1 + 29 * SEC);
        assert!(drain(&mut flow, &mut peer).is_empty());
        flow.handle_timeout(t1 + 30 * SEC);
        let actions = drain(&mut flow, &mut peer);
        assert!(matches!(&actions[..], [Action::StopPlaying, a] if is_close(a, true)), "{actions:?}");
        assert_eq!(codes(&peer.replies(&mut flow)), ["NetStream.Play.StreamNotFound"]);
    }

    #[test]
    fn a_player_whose_broadcast_starts_stops_waiting_and_is_told_when_it_ends() {
        let t0 = Instant::now();
        let (mut flow, mut peer) = connected(t0);
        peer.command("play", 4.0, Amf0Value::Null, vec![Amf0Value::Utf8String("alice".into())]);
        drain(&mut flow, &mut peer);
        peer.replies(&mut flow);
        flow.play_waits(t0);
        flow.play_started();
        assert_eq!(flow.poll_timeout(), None);
        flow.play_ended("publisher left");
        let replies = peer.replies(&mut flow);
        assert!(
            matches!(replies[0], RtmpMessage::UserControl { event_type: UserControlEventType::StreamEof, .. }),
            "{replies:?}"
        );
        assert_eq!(codes(&replies), ["NetStream.Play.UnpublishNotify", "NetStream.Play.Stop"]);
        let actions = drain(&mut flow, &mut peer);
        assert!(matches!(&actions[..], [a] if is_close(a, true)), "{actions:?}");
    }

    #[test]
    fn renditions_are_played_through_the_application_prefix() {
        // ffmpeg splits rtmp://HOST/live/alice/480p into app `live/alice`, stream `480p`.
        let mut flow = Flow::new(config(), Instant::now());
        let mut peer = Peer::new();
        peer.connect("live/alice");
        drain(&mut flow, &mut peer);
        peer.command("play", 2.0, Amf0Value::Null, vec![Amf0Value::Utf8String("480p".into())]);
        let actions = drain(&mut flow, &mut peer);
        let [Action::Play { name, broadcast, rendition }] = actions.as_slice() else { panic!("{actions:?}") };
        assert_eq!(
            (name.as_str(), broadcast.as_str(), rendition.as_deref()),
            ("alice/480p", "alice", Some("video/480p"))
        );
    }

    #[test]
    fn a_bad_play_name_is_told_and_closes() {
        let (mut flow, mut peer) = connected(Instant::now());
        peer.command("play", 2.0, Amf0Value::Null, vec![Amf0Value::Utf8String("../etc".into())]);
        let actions = drain(&mut flow, &mut peer);
        assert!(matches!(&actions[..], [a] if is_close(a, false)), "{actions:?}");
        assert_eq!(codes(&peer.replies(&mut flow)), ["NetStream.Play.StreamNotFound"]);
    }

    #[test]
    fn one_role_per_stream() {
        let (mut flow, mut peer) = connected(Instant::now());
        peer.command("play", 2.0, Amf0Value::Null, vec![Amf0Value::Utf8String("alice".into())]);
        peer.command("publish", 3.0, Amf0Value::Null, vec![Amf0Value::Utf8String("key".into())]);
        assert!(matches!(flow.next(&mut peer.wire).unwrap(), Some(Action::Play { .. })));
        let err = flow.next(&mut peer.wire).unwrap_err();
        assert!(err.to_string().contains("already publishes or plays"), "{err}");
        // After the player closes its stream, the connection may publish.
        let (mut flow, mut peer) = connected(Instant::now());
        peer.command("play", 2.0, Amf0Value::Null, vec![Amf0Value::Utf8String("alice".into())]);
        peer.command("closeStream", 3.0, Amf0Value::Null, vec![]);
        peer.command("publish", 4.0, Amf0Value::Null, vec![Amf0Value::Utf8String("key".into())]);
        let actions = drain(&mut flow, &mut peer);
        assert!(
            matches!(&actions[..], [Action::Play { .. }, Action::StopPlaying, Action::Authorize(_)]),
            "{actions:?}"
        );
    }

    #[test]
    fn media_from_a_connection_that_does_not_publish_is_ignored() {
        let (mut flow, mut peer) = connected(Instant::now());
        peer.raw(MessageHeader { csid: csid::VIDEO, timestamp: 0, type_id: types::VIDEO, stream_id: 1 }, &[0x17, 0]);
        assert!(drain(&mut flow, &mut peer).is_empty());
        assert!(peer.wire.is_empty());
    }

    #[test]
    fn pings_are_answered_and_bytes_acknowledged_by_the_peers_window() {
        let (mut flow, mut peer) = connected(Instant::now());
        let ping = RtmpMessage::UserControl {
            event_type: UserControlEventType::PingRequest,
            stream_id: None,
            buffer_length: None,
            timestamp: Some(RtmpTimestamp::new(1234)),
        };
        peer.send(csid::CONTROL, 0, ping);
        peer.send(csid::CONTROL, 0, RtmpMessage::WindowAcknowledgement { size: 1000 });
        drain(&mut flow, &mut peer);
        let replies = peer.replies(&mut flow);
        assert!(
            matches!(&replies[..], [RtmpMessage::UserControl { event_type: UserControlEventType::PingResponse, timestamp: Some(t), .. }] if t.value == 1234),
            "{replies:?}"
        );
        flow.received(999);
        assert!(peer.replies(&mut flow).is_empty());
        flow.received(1);
        assert!(matches!(&peer.replies(&mut flow)[..], [RtmpMessage::Acknowledgement { sequence_number: 1000 }]));
        flow.received(500);
        assert!(peer.replies(&mut flow).is_empty());
    }

    #[test]
    fn the_peers_chunk_size_applies_and_commands_stay_small_before_publish() {
        let (mut flow, mut peer) = connected(Instant::now());
        peer.send(csid::CONTROL, 0, RtmpMessage::SetChunkSize { size: 4096 });
        peer.enc.set_chunk_size(4096);
        peer.command("createStream", 2.0, Amf0Value::Null, vec![Amf0Value::Utf8String("x".repeat(3000))]);
        drain(&mut flow, &mut peer);
        assert_eq!(commands(&peer.replies(&mut flow)), vec![("_result".into(), 2.0, None)]);
        // Before a publish is accepted, no message may exceed 64 KiB.
        peer.raw(
            MessageHeader { csid: csid::VIDEO, timestamp: 0, type_id: types::VIDEO, stream_id: 1 },
            &vec![0; 70_000],
        );
        let err = flow.next(&mut peer.wire).unwrap_err();
        assert!(matches!(err, SessionError::Chunk(crate::ChunkError::MessageTooLarge(70_000))), "{err}");
        // A chunk size below 128 is refused.
        let (mut flow, mut peer) = connected(Instant::now());
        peer.raw(
            MessageHeader { csid: csid::CONTROL, timestamp: 0, type_id: types::SET_CHUNK_SIZE, stream_id: 0 },
            &[0, 0, 0, 1],
        );
        assert!(matches!(flow.next(&mut peer.wire), Err(SessionError::Chunk(crate::ChunkError::BadChunkSize(1)))));
    }

    #[test]
    fn malformed_commands_are_errors_not_panics() {
        // Nested strict arrays deeper than the AMF check allows.
        let mut body = vec![0x02, 0x00, 0x07];
        body.extend_from_slice(b"connect");
        body.extend_from_slice(&[0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
        for _ in 0..10_000 {
            body.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        // A command with its name only (the library panics on it).
        let short = [0x02, 0x00, 0x07, b'c', b'o', b'n', b'n', b'e', b'c', b't'];
        for body in [&body[..], &short[..]] {
            let mut flow = Flow::new(config(), Instant::now());
            let mut peer = Peer::new();
            peer.raw(
                MessageHeader { csid: csid::COMMAND, timestamp: 0, type_id: types::COMMAND_AMF0, stream_id: 0 },
                body,
            );
            let err = flow.next(&mut peer.wire).unwrap_err();
            assert!(matches!(err, SessionError::Malformed { .. }), "{err}");
        }
    }

    #[test]
    fn a_player_is_told_of_a_shutdown() {
        let (mut flow, mut peer) = connected(Instant::now());
        peer.command("play", 2.0, Amf0Value::Null, vec![Amf0Value::Utf8String("alice".into())]);
        drain(&mut flow, &mut peer);
        peer.replies(&mut flow);
        flow.shutdown();
        assert_eq!(codes(&peer.replies(&mut flow)), ["NetStream.Play.UnpublishNotify"]);
        assert!(matches!(&drain(&mut flow, &mut peer)[..], [a] if is_close(a, true)));
    }

    #[test]
    fn play_names() {
        assert_eq!(play_target("alice"), Some(("alice", None)));
        assert_eq!(play_target("alice/480p"), Some(("alice", Some("video/480p".to_owned()))));
        for bad in ["alice/480", "alice/p", "alice/audio/opus", "Alice/480p", "../480p", "alice/4800000p"] {
            assert_eq!(play_target(bad), None, "{bad}");
        }
    }
}
