//! Sending one broadcast: a local subscriber's events onto GoP sub-channel streams.

use std::collections::VecDeque;
use std::time::Duration;

use gopbus_proto::wire::{Control, Message, StreamHeader, WireFrame, PREV_CUT};
use gopbus_proto::{Frame, GopHeader, TrackId, TrackKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
pub(crate) async fn send_broadcast(
    conn: quinn::Connection,
    id: u64,
    mut sub: Subscriber,
    control: mpsc::Sender<Control>,
    cancel: CancellationToken,
    viewer: Option<crate::Viewer>,
    audio_hold: Duration,
) -> Result<(), QuicError> {
    let mut s = Sending {
        conn,
        id,
        viewer,
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
    };
    // Made once: a fresh one per event would register with the token each time.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let hold_over = async {
            match s.hold_until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        // In this order: a ready event is taken without polling the cancellation
        // (a mutex) or arming the hold's timer (a timer armed and dropped per
        // frame costs the timer wheel's lock); both are looked at when idle.
        let ev = tokio::select! {
            biased;
            ev = sub.next() => ev,
            () = &mut cancelled => break,
            () = hold_over => {
                s.flush(&sub).await?;
                continue;
            }
        };
        match ev {
            Event::Frame(_) if s.abandoned => {}
            Event::Frame(frame) if !audio_hold.is_zero() && s.is_audio(frame.header.track) => {
                s.hold_until.get_or_insert_with(|| tokio::time::Instant::now() + audio_hold);
                s.held.push(frame);
            }
            Event::Frame(frame) => {
                s.flush(&sub).await?;
                s.frame(&sub, frame).await?;
            }
            Event::Gop(header) => {
                s.flush(&sub).await?;
                s.retire();
                // A GoP abandoned or cut is not whole whatever reached the peer: say so.
                s.prev_frames = if s.abandoned { PREV_CUT } else { s.index };
                (s.index, s.abandoned) = (0, false);
                for track in header.tracks.iter().map(|t| t.id) {
                    let open = open(&s.conn, &mut s.enc, s.id, track, &header, s.prev_frames).await?;
                    s.current.push(open);
                }
                s.gop = Some(header);
            }
            Event::Skipped { from, to } => {
                // The held frames belong to the GoP being abandoned.
                s.held.clear();
                s.hold_until = None;
                s.skipped += to - from;
                if let Some(v) = &s.viewer {
                    v.skipped(to - from);
                }
                tracing::debug!(id, from, to, "remote subscriber fell behind; stale GoP streams reset");
                s.abandon();
            }
            Event::CutShort { .. } => {
                s.flush(&sub).await?;
                // Cut at the source: the peer hears it with the next GoP's header.
                s.retire();
                s.abandoned = true;
            }
            Event::End(reason) => {
                s.flush(&sub).await?;
                s.retire();
                let _ = control.send(Control::End { id, reason }).await;
                break;
            }
        }
        while s.in_flight.len() > IN_FLIGHT_GOPS {
            for mut o in s.in_flight.pop_front().unwrap_or_default() {
                // Already finished: a reset only abandons data not yet acknowledged.
                let _ = o.writer.stream.reset(quinn::VarInt::from_u32(RESET_STALE));
            }
        }
    }
    if s.skipped > 0 {
        tracing::info!(id, skipped_gops = s.skipped, "remote subscriber skipped GoPs");
    }
    Ok(())
}

/// The state of one broadcast being sent.
struct Sending {
    conn: quinn::Connection,
    id: u64,
    viewer: Option<crate::Viewer>,
    current: Vec<Open>,
    /// Finished GoPs whose data may still be in flight, oldest first.
    in_flight: VecDeque<Vec<Open>>,
    gop: Option<std::sync::Arc<GopHeader>>,
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
    hold_until: Option<tokio::time::Instant>,
}

impl Sending {
    fn is_audio(&self, track: TrackId) -> bool {
        self.gop.as_ref().and_then(|g| g.track(track)).is_some_and(|t| t.kind() == TrackKind::Audio)
    }

    /// Writes the held frames, in order (none once the GoP is abandoned).
    async fn flush(&mut self, sub: &Subscriber) -> Result<(), QuicError> {
        self.hold_until = None;
        // Taken out while `frame` borrows `self`, and put back: the buffer is reused.
        let mut held = std::mem::take(&mut self.held);
        for frame in held.drain(..) {
            if self.abandoned {
                break;
            }
            self.frame(sub, frame).await?;
        }
        self.held = held;
        Ok(())
    }

    /// Writes one frame on its track's stream of the current GoP.
    async fn frame(&mut self, sub: &Subscriber, frame: Frame) -> Result<(), QuicError> {
        let track = frame.header.track;
        let idx = match self.current.iter().position(|o| o.track == track) {
            Some(i) => i,
            None => {
                // A track the GoP header did not list: carried all the same.
                let Some(h) = self.gop.as_ref() else { return Ok(()) };
                let open = open(&self.conn, &mut self.enc, self.id, track, h, self.prev_frames).await?;
                self.current.push(open);
                self.current.len() - 1
            }
        };
        let msg = Message::Frame(WireFrame { index: self.index, header: frame.header });
        let write = self.current[idx].writer.send(&mut self.enc, &msg, frame.payload.parts());
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
        let len = frame.payload.len() as u64;
        // The write first: most complete at once, before the watch arms its timer.
        tokio::select! {
            biased;
            r = write => {
                r?;
                self.index += 1;
                if let Some(v) = &self.viewer {
                    v.sent_frame(len);
                }
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
