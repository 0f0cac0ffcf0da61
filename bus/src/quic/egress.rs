//! Sending one broadcast: a local subscriber's events onto GoP sub-channel streams.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use gopbus_proto::wire::{Control, Message, StreamHeader, WireFrame, PREV_CUT};
use gopbus_proto::{Frame, GopHeader, TrackId, TrackKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::group::Groups;
use super::io::{Encoder, Writer};
use super::{QuicError, IN_FLIGHT_GOPS};
use crate::{Event, Subscriber};

/// Error code on streams reset because the subscriber fell behind.
const RESET_STALE: u32 = 1;

/// Stream priority: newer GoPs first, and within a GoP audio before the rest.
fn priority(seq: u64, kind: TrackKind) -> i32 {
    let base = (seq.min((i32::MAX / 2 - 1) as u64) as i32) * 2;
    if kind == TrackKind::Audio {
        base + 1
    } else {
        base
    }
}

struct Open {
    track: TrackId,
    writer: Writer,
}

/// Sends `sub`'s broadcast on `conn` as request `id` until it ends, the peer
/// goes away or `cancel` fires. The end (with its reason) goes to `control`.
/// A `viewer` (a remote subscriber) is told the bytes sent and GoPs skipped.
///
/// With a non-zero `audio_hold`, an audio frame waits for the next frame of
/// another track (at most `audio_hold`) and goes out just before it, so the
/// two leave in the same datagrams: a 48 kHz AAC track has ~47 frames a
/// second against 30 of video, and each write on its own costs the peer's
/// connection a packet (and a send call) of a few hundred bytes. Order is
/// kept: a held frame is written before anything that came after it.
///
/// With `groups`, a subscriber that has caught up (nothing more to send now)
/// is handed to its broadcast's [group](super::group): one task that wakes
/// once per published frame and writes it for all its subscribers. This task
/// then sleeps until the group hands the subscriber back (a new GoP, a write
/// that waits for flow control, the end) or `cancel` fires.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_broadcast(
    conn: quinn::Connection,
    id: u64,
    sub: Subscriber,
    control: mpsc::Sender<Control>,
    cancel: CancellationToken,
    viewer: Option<crate::Viewer>,
    audio_hold: Duration,
    groups: Option<Arc<Groups>>,
) -> Result<(), QuicError> {
    let mut s = Box::new(Sending {
        conn,
        id,
        sub,
        viewer,
        audio_hold,
        current: Vec::new(),
        in_flight: VecDeque::new(),
        gop: None,
        skipped: 0,
        abandoned: false,
        index: 0,
        prev_frames: 0,
        enc: Encoder::default(),
        held: Vec::new(),
        hold_until: None,
        writing: None,
        stashed: None,
        failed: None,
    });
    // Made once: a fresh one per event would register with the token each time.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        // What a group left unfinished comes first, in order: a write, then an event.
        if let Some((idx, len)) = s.writing.take() {
            s.finish_write(idx, len).await?;
        }
        let ev = match s.stashed.take() {
            Some(ev) => ev,
            None => {
                let hold_until = s.hold_until;
                let hold_over = async {
                    match hold_until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                };
                // In this order: a ready event is taken without polling the cancellation
                // (a mutex) or arming the hold's timer (a timer armed and dropped per
                // frame costs the timer wheel's lock); both are looked at when idle.
                tokio::select! {
                    biased;
                    ev = s.sub.next() => ev,
                    () = &mut cancelled => break,
                    () = hold_over => {
                        s.flush().await?;
                        continue;
                    }
                }
            }
        };
        if s.event(ev, &control).await? {
            break;
        }
        s.prune();
        let Some(groups) = &groups else { continue };
        // Caught up: the group sends from now on, until it hands the subscriber back.
        match s.sub.try_next() {
            Some(ev) => s.stashed = Some(ev),
            None => {
                let member = super::group::join(groups, s);
                s = tokio::select! {
                    biased;
                    back = member.handed_back() => back,
                    () = &mut cancelled => {
                        // From the group, or as the group handed it back: it ends now.
                        if let Some(s) = member.take_back() {
                            log_skipped(&s);
                        }
                        return Ok(());
                    }
                };
                if let Some(e) = s.failed.take() {
                    return Err(e);
                }
            }
        }
    }
    log_skipped(&s);
    Ok(())
}

fn log_skipped(s: &Sending) {
    if s.skipped > 0 {
        tracing::info!(id = s.id, skipped_gops = s.skipped, "remote subscriber skipped GoPs");
    }
}

/// The state of one broadcast being sent.
pub(crate) struct Sending {
    conn: quinn::Connection,
    id: u64,
    pub(crate) sub: Subscriber,
    viewer: Option<crate::Viewer>,
    audio_hold: Duration,
    current: Vec<Open>,
    /// Finished GoPs whose data may still be in flight, oldest first.
    in_flight: VecDeque<Vec<Open>>,
    gop: Option<Arc<GopHeader>>,
    skipped: u64,
    /// Set when the current GoP will not reach the peer whole: abandoned because
    /// the subscriber fell behind (its remaining frames are not sent), or cut
    /// short at the source. The next GoP's header says so (`PREV_CUT`).
    abandoned: bool,
    /// Frames sent in the current GoP, and in the previous one.
    index: u32,
    prev_frames: u32,
    enc: Encoder,
    /// Audio frames waiting for the next frame of another track, and until when
    /// they may (set with the first of them).
    held: Vec<Frame>,
    pub(crate) hold_until: Option<tokio::time::Instant>,
    /// A frame's write a group started and flow control stopped: the stream
    /// in `current` and the payload length.
    writing: Option<(usize, u64)>,
    /// An event a group took and left to this subscriber's own task.
    stashed: Option<Event>,
    /// Why a group gave the subscriber back because its connection failed.
    failed: Option<QuicError>,
}

/// Frame headers a group encoded in one pass, for its other subscribers: a
/// frame has the same index in its GoP for every subscriber that has it whole,
/// so its message header is encoded once per frame, not once per subscriber.
#[derive(Default)]
pub(crate) struct Headers {
    /// The message header's content (index, frame header) and its encoding.
    recent: Vec<(u32, gopbus_proto::FrameHeader, bytes::Bytes)>,
}

impl Headers {
    /// Headers kept per pass (the frames one wake-up brings: one or two, more after a stall).
    const KEPT: usize = 16;

    /// Forgets the last pass's headers (the next pass brings other frames).
    pub(crate) fn clear(&mut self) {
        self.recent.clear();
    }

    /// The encoded message header of `frame` at `index`, encoded with `enc` the first time.
    fn get(&mut self, index: u32, frame: &Frame, enc: &mut Encoder) -> bytes::Bytes {
        if let Some((.., b)) = self.recent.iter().find(|(i, h, _)| *i == index && *h == frame.header) {
            return b.clone();
        }
        let b = enc.encode(&Message::Frame(WireFrame { index, header: frame.header }));
        if self.recent.len() < Self::KEPT {
            self.recent.push((index, frame.header, b.clone()));
        }
        b
    }
}

/// What a group's pass over one subscriber found.
pub(crate) enum Pass {
    /// Everything there was is written (or held, until `hold_until`).
    Done,
    /// The subscriber's own task must go on: a write waits, or an event needs it.
    Back,
}

impl Sending {
    fn is_audio(&self, track: TrackId) -> bool {
        self.gop.as_ref().and_then(|g| g.track(track)).is_some_and(|t| t.kind() == TrackKind::Audio)
    }

    /// Whether `frame` waits for the next frame of another track.
    fn holds(&self, frame: &Frame) -> bool {
        !self.audio_hold.is_zero() && self.is_audio(frame.header.track)
    }

    fn hold(&mut self, frame: Frame, now: tokio::time::Instant) {
        self.hold_until.get_or_insert(now + self.audio_hold);
        self.held.push(frame);
    }

    /// Handles one event; `true` when the broadcast ended.
    async fn event(&mut self, ev: Event, control: &mpsc::Sender<Control>) -> Result<bool, QuicError> {
        match ev {
            Event::Frame(_) if self.abandoned => {}
            Event::Frame(frame) if self.holds(&frame) => self.hold(frame, tokio::time::Instant::now()),
            Event::Frame(frame) => {
                self.flush().await?;
                self.frame(frame).await?;
            }
            Event::Gop(header) => {
                self.flush().await?;
                self.retire();
                // A GoP abandoned or cut is not whole whatever reached the peer: say so.
                self.prev_frames = if self.abandoned { PREV_CUT } else { self.index };
                (self.index, self.abandoned) = (0, false);
                for track in header.tracks.iter().map(|t| t.id) {
                    let open = open(&self.conn, &mut self.enc, self.id, track, &header, self.prev_frames).await?;
                    self.current.push(open);
                }
                self.gop = Some(header);
            }
            Event::Skipped { from, to } => {
                // The held frames belong to the GoP being abandoned.
                self.held.clear();
                self.hold_until = None;
                self.skipped += to - from;
                if let Some(v) = &self.viewer {
                    v.skipped(to - from);
                }
                tracing::debug!(id = self.id, from, to, "remote subscriber fell behind; stale GoP streams reset");
                self.abandon();
            }
            Event::CutShort { .. } => {
                self.flush().await?;
                // Cut at the source: the peer hears it with the next GoP's header.
                self.retire();
                self.abandoned = true;
            }
            Event::End(reason) => {
                self.flush().await?;
                self.retire();
                let _ = control.send(Control::End { id: self.id, reason }).await;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Resets the streams of GoPs beyond the in-flight allowance.
    fn prune(&mut self) {
        while self.in_flight.len() > IN_FLIGHT_GOPS {
            for mut o in self.in_flight.pop_front().unwrap_or_default() {
                // Already finished: a reset only abandons data not yet acknowledged.
                let _ = o.writer.stream.reset(quinn::VarInt::from_u32(RESET_STALE));
            }
        }
    }

    /// Writes the held frames, in order (none once the GoP is abandoned).
    async fn flush(&mut self) -> Result<(), QuicError> {
        self.hold_until = None;
        // Taken out while `frame` borrows `self`, and put back: the buffer is reused.
        let mut held = std::mem::take(&mut self.held);
        for frame in held.drain(..) {
            if self.abandoned {
                break;
            }
            self.frame(frame).await?;
        }
        self.held = held;
        Ok(())
    }

    /// The stream of `track` in the current GoP.
    fn stream_of(&self, track: TrackId) -> Option<usize> {
        self.current.iter().position(|o| o.track == track)
    }

    /// Queues `frame` on stream `idx` of the current GoP; returns its length.
    fn queue(&mut self, idx: usize, frame: &Frame) -> u64 {
        let msg = Message::Frame(WireFrame { index: self.index, header: frame.header });
        self.current[idx].writer.queue(&mut self.enc, &msg, frame.payload.parts());
        frame.payload.len() as u64
    }

    /// Counts a frame written.
    fn sent(&mut self, len: u64) {
        self.index += 1;
        if let Some(v) = &self.viewer {
            v.sent_frame(len);
        }
    }

    /// Writes one frame on its track's stream of the current GoP.
    async fn frame(&mut self, frame: Frame) -> Result<(), QuicError> {
        let idx = match self.stream_of(frame.header.track) {
            Some(i) => i,
            None => {
                // A track the GoP header did not list: carried all the same.
                let Some(h) = self.gop.as_ref() else { return Ok(()) };
                let open = open(&self.conn, &mut self.enc, self.id, frame.header.track, h, self.prev_frames).await?;
                self.current.push(open);
                self.current.len() - 1
            }
        };
        let len = self.queue(idx, &frame);
        self.finish_write(idx, len).await
    }

    /// Finishes the queued write of a frame on stream `idx`.
    async fn finish_write(&mut self, idx: usize, len: u64) -> Result<(), QuicError> {
        let Self { current, sub, .. } = self;
        let write = current[idx].writer.flush();
        // While blocked on flow control, watch whether this subscriber fell
        // behind: then stop writing this stale GoP and move on.
        let stale = async {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if sub.behind() > 0 {
                    return;
                }
            }
        };
        // The write first: most complete at once, before the watch arms its timer.
        tokio::select! {
            biased;
            r = write => {
                r?;
                self.sent(len);
            }
            () = stale => {
                self.abandon();
                self.skipped += 1;
                if let Some(v) = &self.viewer {
                    v.skipped(1);
                }
                tracing::debug!(id = self.id, "remote subscriber fell behind; stale GoP abandoned");
            }
        }
        Ok(())
    }

    /// A group's pass: takes the ready events and writes what the streams take
    /// now, without waiting. Whatever needs waiting (flow control, a stream to
    /// open) or more than a write (a new GoP, a skip, the end) is left to the
    /// subscriber's own task: [`Pass::Back`].
    pub(crate) fn pass(&mut self, now: tokio::time::Instant, headers: &mut Headers) -> Pass {
        match self.try_pass(now, headers) {
            Ok(pass) => pass,
            Err(e) => {
                self.failed = Some(e);
                Pass::Back
            }
        }
    }

    fn try_pass(&mut self, now: tokio::time::Instant, headers: &mut Headers) -> Result<Pass, QuicError> {
        if self.hold_until.is_some_and(|t| t <= now) && !self.try_flush(now, headers)? {
            return Ok(Pass::Back);
        }
        while let Some(ev) = self.sub.try_next() {
            match ev {
                Event::Frame(_) if self.abandoned => {}
                Event::Frame(frame) if self.holds(&frame) => self.hold(frame, now),
                Event::Frame(frame) => {
                    if !self.try_flush(now, headers)? || self.stream_of(frame.header.track).is_none() {
                        self.stashed = Some(Event::Frame(frame));
                        return Ok(Pass::Back);
                    }
                    if !self.try_frame(&frame, headers)? {
                        return Ok(Pass::Back);
                    }
                }
                ev => {
                    self.stashed = Some(ev);
                    return Ok(Pass::Back);
                }
            }
        }
        Ok(Pass::Done)
    }

    /// Writes the held frames if the streams take them now; `false` when one
    /// waits (it and the frames after it are left for the own task).
    fn try_flush(&mut self, now: tokio::time::Instant, headers: &mut Headers) -> Result<bool, QuicError> {
        self.hold_until = None;
        // Taken out while `try_frame` borrows `self`, and put back: the buffer is reused.
        let mut held = std::mem::take(&mut self.held);
        let (mut taken, mut all) = (0, true);
        let mut result = Ok(());
        for frame in &held {
            if self.abandoned {
                taken = held.len();
                break;
            }
            if self.stream_of(frame.header.track).is_none() {
                // Needs a stream opened: the own task writes it and the rest.
                all = false;
                break;
            }
            taken += 1;
            match self.try_frame(frame, headers) {
                Ok(true) => {}
                Ok(false) => {
                    all = false;
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        held.drain(..taken);
        if !held.is_empty() {
            // Due at once: the own task writes them first.
            self.hold_until = Some(now);
        }
        self.held = held;
        result.map(|()| all)
    }

    /// Writes `frame` on its stream (which exists) if the stream takes it now;
    /// otherwise leaves the rest of the write to the own task.
    fn try_frame(&mut self, frame: &Frame, headers: &mut Headers) -> Result<bool, QuicError> {
        let idx = self.stream_of(frame.header.track).expect("the caller checked");
        let head = headers.get(self.index, frame, &mut self.enc);
        self.current[idx].writer.queue_encoded(head, frame.payload.parts());
        let len = frame.payload.len() as u64;
        if self.current[idx].writer.try_flush()? {
            self.sent(len);
            return Ok(true);
        }
        self.writing = Some((idx, len));
        Ok(false)
    }

    /// Resets the current GoP's streams: the rest of it is not sent.
    fn abandon(&mut self) {
        for mut o in self.current.drain(..) {
            let _ = o.writer.stream.reset(quinn::VarInt::from_u32(RESET_STALE));
        }
        self.abandoned = true;
    }

    /// Finishes the current GoP's streams and keeps them as in flight.
    fn retire(&mut self) {
        retire(&mut self.current, &mut self.in_flight);
    }
}

/// Finishes the current GoP's streams and keeps them as in flight.
fn retire(current: &mut Vec<Open>, in_flight: &mut VecDeque<Vec<Open>>) {
    if current.is_empty() {
        return;
    }
    for o in current.iter_mut() {
        let _ = o.writer.stream.finish();
    }
    in_flight.push_back(std::mem::take(current));
}

async fn open(
    conn: &quinn::Connection,
    enc: &mut Encoder,
    id: u64,
    track: TrackId,
    gop: &GopHeader,
    prev_frames: u32,
) -> Result<Open, QuicError> {
    let stream = conn.open_uni().await?;
    let kind = gop.track(track).map_or(TrackKind::Data, |t| t.kind());
    let _ = stream.set_priority(priority(gop.seq, kind));
    let mut writer = Writer::new(stream);
    let header = StreamHeader { id, track, gop: gop.clone(), prev_frames };
    writer.send(enc, &Message::Stream(header), &[]).await?;
    Ok(Open { track, writer })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_gops_and_audio_first() {
        assert!(priority(5, TrackKind::Video) > priority(4, TrackKind::Audio));
        assert!(priority(5, TrackKind::Audio) > priority(5, TrackKind::Video));
        assert!(priority(5, TrackKind::Audio) > priority(5, TrackKind::Data));
        assert!(priority(u64::MAX, TrackKind::Audio) > priority(u64::MAX - 1, TrackKind::Video) - 2);
    }

    /// A group encodes a frame's message header once per (index, header) and
    /// hands the same bytes to every subscriber; anything else is encoded anew.
    #[test]
    fn a_frame_header_is_encoded_once_per_pass() {
        use gopbus_proto::{FrameFlags, FrameHeader, Payload};
        let frame = |dts| Frame {
            header: FrameHeader { track: TrackId::VIDEO, dts, cts: 0, flags: FrameFlags::default(), len: 3 },
            payload: Payload::from_bytes(bytes::Bytes::from_static(b"abc")),
        };
        let (mut headers, mut enc) = (Headers::default(), Encoder::default());
        let a = headers.get(7, &frame(40), &mut enc);
        let again = headers.get(7, &frame(40), &mut enc);
        assert_eq!(a.as_ptr(), again.as_ptr(), "shared, not encoded again");
        let other_index = headers.get(8, &frame(40), &mut enc);
        let other_frame = headers.get(7, &frame(41), &mut enc);
        for (bytes, index, dts) in [(&a, 7, 40), (&other_index, 8, 40), (&other_frame, 7, 41)] {
            let mut buf = bytes::BytesMut::from(&bytes[..]);
            match gopbus_proto::wire::decode(&mut buf).unwrap() {
                Message::Frame(f) => assert_eq!((f.index, f.header.dts), (index, dts)),
                other => panic!("{other:?}"),
            }
        }
        headers.clear();
        assert_ne!(headers.get(7, &frame(40), &mut enc).as_ptr(), a.as_ptr(), "a new pass encodes anew");
    }

    /// Requests and answers on the control stream go before any GoP data (a
    /// subscription's `Ok` is queued just before its catch-up burst); the
    /// notices that end a request go after all of it.
    #[test]
    fn answers_before_every_gop_stream_and_end_notices_after() {
        use super::super::conn::{control_priority, CONTROL_PRIORITY};
        use gopbus_proto::wire::ErrorCode;
        use gopbus_proto::EndReason;
        let kinds = [TrackKind::Video, TrackKind::Audio, TrackKind::Data];
        let gops = [0, 1, 1000, u64::MAX - 1, u64::MAX];
        let all: Vec<i32> = gops.iter().flat_map(|&g| kinds.iter().map(move |&k| priority(g, k))).collect();
        let (lowest, highest) = (*all.iter().min().unwrap(), *all.iter().max().unwrap());
        let answers = [
            Control::Welcome,
            Control::Ok { id: 1 },
            Control::Subscribe { id: 2, broadcast: "b".into(), start: gopbus_proto::wire::StartAt::CurrentGop },
            Control::Unsubscribe { id: 2 },
        ];
        for a in &answers {
            assert!(control_priority(a) > highest, "{a:?}");
        }
        assert!(CONTROL_PRIORITY > highest, "the control stream opens above every GoP stream");
        let ends = [
            Control::End { id: 1, reason: EndReason::PublisherLeft },
            Control::Error { id: 1, code: ErrorCode::NotFound, message: "gone".into() },
        ];
        for e in &ends {
            assert!(control_priority(e) < lowest, "{e:?}");
        }
    }
}
