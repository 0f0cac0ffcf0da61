//! The merger of one received broadcast, without I/O: it takes the pieces that
//! GoP stream readers report (a stream opened, a frame, a stream closed, the
//! end notice) and the time, and tells a [`Sink`] what to publish.
//!
//! Each track of a GoP arrives on its own stream, in order within the stream;
//! every frame carries its index in the GoP across tracks. Frame `k` is released
//! once frames `0..k` are out. The contract it keeps is the bus's: a subscriber
//! of the local copy gets every frame of a GoP, in order, or is told that the
//! GoP was cut short (the sink's [`Sink::cut`]). Never a GoP with a hole in it:
//!
//! - A gap is **permanent** when no stream of the GoP can still carry the
//!   missing frame (every track's stream is closed, or has already delivered a
//!   later index): the GoP is cut at the gap.
//! - The next GoP's header says how many frames the previous one had
//!   (`prev_frames`), or that the sender abandoned it part way (then it is cut
//!   at once). When the next GoP is ready to start and the current one is
//!   still short of that count, it is cut: at once when a third GoP opens or
//!   every stream of the current one has closed, otherwise after [`MAX_WAIT`]
//!   (the sender gives newer GoPs priority, so a lagging receiver's old tail may
//!   never come).
//!
//! Frames of a cut GoP that arrive later are dropped and counted.

use std::collections::BTreeMap;
use std::time::Duration;

use gopbus_proto::wire::PREV_CUT;
use gopbus_proto::{EndReason, Frame, GopHeader, TrackId};
use tokio::time::Instant;

use super::QuicError;

/// Longest the next GoP waits for the rest of the current one.
pub(crate) const MAX_WAIT: Duration = Duration::from_millis(200);

/// Whether a GoP starting at `start_dts`, seen when resuming after the GoP
/// that started at `after`, is one already delivered (the sender replays its
/// current GoP). One that starts more than a minute earlier is a new timeline
/// (the publisher started over while the link was down), not a replay.
pub(crate) fn replayed(start_dts: i64, after: i64) -> bool {
    start_dts <= after && start_dts >= after.saturating_sub(60_000)
}

/// What stream readers tell the merger of one broadcast.
#[derive(Debug)]
pub(crate) enum Piece {
    /// A GoP sub-channel opened.
    Open { track: TrackId, gop: GopHeader, prev_frames: u32 },
    /// Frame `index` of GoP `seq`.
    Frame { seq: u64, index: u32, frame: Frame },
    /// The sub-channel of `track` in GoP `seq` ended: `finished` when the
    /// sender finished it (everything it wrote arrived), not when it was reset
    /// (a GoP the sender abandoned, or whose unacknowledged tail it dropped)
    /// or a reading error. Whether frames are missing follows from the indexes
    /// and the next GoP's count; at the end of the broadcast, from this.
    Close { seq: u64, track: TrackId, finished: bool },
    /// The broadcast ended (from the control stream).
    End(EndReason),
}

/// Where merged GoPs go (a local publisher).
pub(crate) trait Sink {
    fn open_gop(&mut self, header: GopHeader) -> Result<(), QuicError>;
    fn frame(&mut self, frame: Frame) -> Result<(), QuicError>;
    /// The current GoP ends here, short of its natural end.
    fn cut(&mut self);
}

/// What the merger says after a piece.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    Continue,
    /// The broadcast ended: the sink's publisher ends with this reason.
    End(EndReason),
}

/// Counters of one merged broadcast.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct MergeStats {
    pub(crate) gops: u64,
    pub(crate) frames: u64,
    /// GoPs cut short because frames did not arrive.
    pub(crate) cut_gops: u64,
    /// Frames not published: dropped at or after a cut, or known (from the next
    /// GoP's header) never to have arrived.
    pub(crate) lost_frames: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct TrackState {
    /// The last index received on this track's stream.
    last: Option<u32>,
    /// Its stream has ended.
    closed: bool,
    /// It ended without being finished: frames after `last` may be lost.
    reset: bool,
}

/// One GoP being received.
struct GopState {
    seq: u64,
    tracks: BTreeMap<TrackId, TrackState>,
    queue: BTreeMap<u32, Frame>,
    /// The next index to release.
    next: u32,
    /// Frames received (published, queued or dropped).
    received: u32,
    /// Cut short: nothing more of it is published.
    cut: bool,
}

impl GopState {
    fn new(gop: &GopHeader, opened: TrackId) -> Self {
        let mut tracks: BTreeMap<TrackId, TrackState> =
            gop.tracks.iter().map(|t| (t.id, TrackState::default())).collect();
        tracks.entry(opened).or_default();
        Self { seq: gop.seq, tracks, queue: BTreeMap::new(), next: 0, received: 0, cut: false }
    }

    fn all_closed(&self) -> bool {
        self.tracks.values().all(|t| t.closed)
    }

    /// No stream can still carry frame `next`.
    fn gap_is_permanent(&self) -> bool {
        self.tracks.values().all(|t| t.closed || t.last.is_some_and(|l| l > self.next))
    }
}

/// The next GoP, seen while frames of the current one may still be in flight.
struct Staged {
    state: GopState,
    gop: GopHeader,
    prev_frames: u32,
    since: Instant,
}

/// The merger of one broadcast.
#[derive(Default)]
pub(crate) struct Merger {
    cur: Option<GopState>,
    staged: Option<Staged>,
    ending: Option<EndReason>,
    stats: MergeStats,
    /// Resuming a held broadcast: GoPs starting at or before this dts were
    /// delivered (or cut) before the link dropped and are not published again.
    resume_after: Option<i64>,
    /// The sender's sequence numbers of GoPs passed over for `resume_after`.
    passed_over: Option<u64>,
    /// Start dts of the last GoP published.
    last_start: Option<i64>,
}

impl Merger {
    /// A merger resuming a broadcast whose last GoP published started at `start_dts`:
    /// it starts with the first GoP that starts later.
    pub(crate) fn resuming_after(start_dts: Option<i64>) -> Self {
        Self { resume_after: start_dts, ..Self::default() }
    }

    /// Start dts of the last GoP published.
    pub(crate) fn last_start(&self) -> Option<i64> {
        self.last_start
    }

    pub(crate) fn stats(&self) -> MergeStats {
        self.stats
    }

    /// When [`Merger::timeout`] should be called, if at all.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.staged.as_ref().map(|s| s.since + MAX_WAIT)
    }

    /// Time passed: a next GoP that waited [`MAX_WAIT`] starts, cutting the current one.
    pub(crate) fn timeout(&mut self, now: Instant, sink: &mut impl Sink) -> Result<Step, QuicError> {
        if self.staged.as_ref().is_some_and(|s| s.since + MAX_WAIT <= now) {
            self.advance(sink)?;
        }
        self.check_end(sink)
    }

    /// The connection is gone: what is in order goes out; an incomplete GoP is cut.
    pub(crate) fn closed(&mut self, sink: &mut impl Sink) -> Result<(), QuicError> {
        if let Some(st) = &self.staged {
            if self.cur.as_ref().is_some_and(|c| !c.cut && c.next >= st.prev_frames) {
                self.advance(sink)?;
            }
        }
        if let Some(c) = self.cur.as_mut() {
            if !c.cut {
                Self::release(c, sink, &mut self.stats)?;
                if !c.queue.is_empty() {
                    Self::cut(c, sink, &mut self.stats);
                }
            }
        }
        Ok(())
    }

    /// Takes one piece.
    pub(crate) fn piece(&mut self, piece: Piece, now: Instant, sink: &mut impl Sink) -> Result<Step, QuicError> {
        match piece {
            Piece::Open { track, gop, prev_frames } => self.open(track, gop, prev_frames, now, sink)?,
            Piece::Frame { seq, index, frame } => {
                if let Some(c) = self.cur.as_mut().filter(|c| c.seq == seq) {
                    c.tracks.entry(frame.header.track).or_default().last = Some(index);
                    c.received = c.received.saturating_add(1);
                    if c.cut || index < c.next {
                        self.stats.lost_frames += u64::from(c.cut);
                    } else {
                        c.queue.insert(index, frame);
                        Self::release(c, sink, &mut self.stats)?;
                        if !c.queue.is_empty() && c.gap_is_permanent() {
                            Self::cut(c, sink, &mut self.stats);
                        }
                    }
                } else if let Some(st) = self.staged.as_mut().filter(|s| s.state.seq == seq) {
                    st.state.tracks.entry(frame.header.track).or_default().last = Some(index);
                    st.state.received = st.state.received.saturating_add(1);
                    st.state.queue.insert(index, frame);
                } else if self.passed_over.is_none_or(|p| seq > p) {
                    // A GoP this merger has moved past.
                    self.stats.lost_frames += 1;
                }
            }
            Piece::Close { seq, track, finished } => {
                let close = |t: &mut TrackState| {
                    t.closed = true;
                    t.reset |= !finished;
                };
                if let Some(c) = self.cur.as_mut().filter(|c| c.seq == seq) {
                    close(c.tracks.entry(track).or_default());
                    if !c.cut && !c.queue.is_empty() && c.gap_is_permanent() {
                        Self::cut(c, sink, &mut self.stats);
                    }
                } else if let Some(st) = self.staged.as_mut().filter(|s| s.state.seq == seq) {
                    close(st.state.tracks.entry(track).or_default());
                }
            }
            Piece::End(reason) => self.ending = Some(reason),
        }
        if let (Some(c), Some(st)) = (self.cur.as_ref(), self.staged.as_ref()) {
            // (An abandoned GoP's count is `PREV_CUT`: it is cut at once.)
            if c.cut || c.next >= st.prev_frames || c.all_closed() || st.prev_frames == PREV_CUT {
                self.advance(sink)?;
            }
        }
        self.check_end(sink)
    }

    fn open(
        &mut self,
        track: TrackId,
        gop: GopHeader,
        prev_frames: u32,
        now: Instant,
        sink: &mut impl Sink,
    ) -> Result<(), QuicError> {
        let Some(c) = self.cur.as_mut() else {
            if self.resume_after.is_some_and(|after| replayed(gop.start_dts, after)) {
                self.passed_over = self.passed_over.max(Some(gop.seq));
                return Ok(());
            }
            self.resume_after = None;
            self.cur = Some(GopState::new(&gop, track));
            self.stats.gops += 1;
            self.last_start = Some(gop.start_dts);
            return sink.open_gop(gop);
        };
        if gop.seq < c.seq {
            return Ok(());
        }
        if gop.seq == c.seq {
            c.tracks.entry(track).or_default();
            return Ok(());
        }
        match self.staged.as_mut() {
            Some(st) if st.state.seq == gop.seq => {
                st.state.tracks.entry(track).or_default();
                return Ok(());
            }
            Some(st) if gop.seq < st.state.seq => return Ok(()),
            // Two GoPs ahead: this receiver is behind; the current one ends here.
            Some(_) => self.advance(sink)?,
            None => {}
        }
        let state = GopState::new(&gop, track);
        self.staged = Some(Staged { state, gop, prev_frames, since: now });
        Ok(())
    }

    /// Finishes the current GoP (cut if it is short of the count the next one
    /// gave) and makes the staged one current.
    fn advance(&mut self, sink: &mut impl Sink) -> Result<(), QuicError> {
        let Some(st) = self.staged.take() else { return Ok(()) };
        if let Some(c) = self.cur.as_mut() {
            if !c.cut {
                Self::release(c, sink, &mut self.stats)?;
                if c.next < st.prev_frames {
                    Self::cut(c, sink, &mut self.stats);
                }
            }
            // Frames the sender sent in that GoP that never arrived.
            if st.prev_frames != PREV_CUT {
                self.stats.lost_frames += u64::from(st.prev_frames.saturating_sub(c.received));
            }
        }
        self.last_start = Some(st.gop.start_dts);
        sink.open_gop(st.gop)?;
        self.stats.gops += 1;
        let mut state = st.state;
        Self::release(&mut state, sink, &mut self.stats)?;
        if !state.queue.is_empty() && state.gap_is_permanent() {
            Self::cut(&mut state, sink, &mut self.stats);
        }
        self.cur = Some(state);
        Ok(())
    }

    /// Ends once the end notice came and the current GoP has nothing in flight.
    /// The notice travels on the control stream and can overtake the last GoP's data.
    /// No GoP follows the last one to give its count: it is cut when a frame
    /// is missing (queued past a hole) or may be (a stream of it was reset —
    /// a receiver that fell behind, say).
    fn check_end(&mut self, sink: &mut impl Sink) -> Result<Step, QuicError> {
        let Some(reason) = &self.ending else { return Ok(Step::Continue) };
        if self.staged.is_some() || self.cur.as_ref().is_some_and(|c| !c.cut && !c.all_closed()) {
            return Ok(Step::Continue);
        }
        if let Some(c) = self.cur.as_mut() {
            if !c.cut && (!c.queue.is_empty() || c.tracks.values().any(|t| t.reset)) {
                Self::cut(c, sink, &mut self.stats);
            }
        }
        Ok(Step::End(reason.clone()))
    }

    /// Releases frames in index order while there is no gap.
    fn release(c: &mut GopState, sink: &mut impl Sink, stats: &mut MergeStats) -> Result<(), QuicError> {
        while let Some(f) = c.queue.remove(&c.next) {
            sink.frame(f)?;
            c.next += 1;
            stats.frames += 1;
        }
        Ok(())
    }

    /// Cuts `c` at its gap: queued frames after it are dropped.
    fn cut(c: &mut GopState, sink: &mut impl Sink, stats: &mut MergeStats) {
        let dropped = c.queue.len() as u64;
        c.queue.clear();
        c.cut = true;
        stats.cut_gops += 1;
        stats.lost_frames += dropped;
        tracing::debug!(
            gop = c.seq,
            delivered = c.next,
            dropped,
            "GoP cut short: frames did not arrive (stream reset or the next GoP waited too long)"
        );
        sink.cut();
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use gopbus_proto::{AudioConfig, FrameHeader, Payload, TrackInfo, VideoConfig};

    use super::*;

    const V: TrackId = TrackId::VIDEO;
    const A: TrackId = TrackId::AUDIO;

    /// What the sink saw: `G` a GoP opened, a frame's dts, `X` a cut.
    #[derive(Default)]
    struct Rec(Vec<String>);

    impl Sink for Rec {
        fn open_gop(&mut self, header: GopHeader) -> Result<(), QuicError> {
            self.0.push(format!("G{}", header.seq));
            Ok(())
        }
        fn frame(&mut self, frame: Frame) -> Result<(), QuicError> {
            self.0.push(frame.header.dts.to_string());
            Ok(())
        }
        fn cut(&mut self) {
            self.0.push("X".into());
        }
    }

    fn gop(seq: u64) -> GopHeader {
        GopHeader {
            seq,
            start_dts: 0,
            tracks: vec![
                TrackInfo::video(VideoConfig { avcc: vec![1], width: 2, height: 2, profile: 100, level: 30 }),
                TrackInfo::audio(AudioConfig {
                    asc: vec![0x11, 0x90],
                    object_type: 2,
                    sample_rate: 48000,
                    channels: 2,
                }),
            ],
            metadata: None,
        }
    }

    /// Frame `index` of GoP `seq`; its dts is `seq * 100 + index` so the record reads as positions.
    fn frame(seq: u64, track: TrackId, index: u32) -> Piece {
        let payload = Payload::from_bytes(Bytes::from_static(b"x"));
        let dts = seq as i64 * 100 + i64::from(index);
        let header = FrameHeader { track, dts, cts: 0, flags: Default::default(), len: 1 };
        Piece::Frame { seq, index, frame: Frame { header, payload } }
    }

    fn open(seq: u64, track: TrackId, prev_frames: u32) -> Piece {
        Piece::Open { track, gop: gop(seq), prev_frames }
    }

    fn close(seq: u64, track: TrackId) -> Piece {
        Piece::Close { seq, track, finished: true }
    }

    fn reset(seq: u64, track: TrackId) -> Piece {
        Piece::Close { seq, track, finished: false }
    }

    struct Run {
        m: Merger,
        rec: Rec,
        t0: Instant,
    }

    impl Run {
        fn new() -> Self {
            Self { m: Merger::default(), rec: Rec::default(), t0: Instant::now() }
        }
        /// Feeds `pieces` at `ms` milliseconds.
        fn at(&mut self, ms: u64, pieces: Vec<Piece>) -> Step {
            let mut step = Step::Continue;
            for p in pieces {
                step = self.m.piece(p, self.t0 + Duration::from_millis(ms), &mut self.rec).unwrap();
            }
            step
        }
        fn tick(&mut self, ms: u64) -> Step {
            self.m.timeout(self.t0 + Duration::from_millis(ms), &mut self.rec).unwrap()
        }
        fn seen(&self) -> String {
            self.rec.0.join(" ")
        }
    }

    #[test]
    fn frames_from_two_streams_come_out_in_index_order() {
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), open(0, A, 0), frame(0, A, 1), frame(0, A, 2)]);
        assert_eq!(r.seen(), "G0", "frame 0 (video) not here yet: nothing released");
        r.at(1, vec![frame(0, V, 0), frame(0, V, 3)]);
        assert_eq!(r.seen(), "G0 0 1 2 3");
        r.at(2, vec![close(0, V), close(0, A), open(1, V, 4), frame(1, V, 0)]);
        assert_eq!(r.seen(), "G0 0 1 2 3 G1 100", "the next GoP starts at once: the previous one is whole");
        assert_eq!(r.m.stats(), MergeStats { gops: 2, frames: 5, cut_gops: 0, lost_frames: 0 });
    }

    #[test]
    fn the_next_gop_waits_for_frames_still_in_flight_of_the_current_one() {
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), open(0, A, 0), frame(0, V, 0), frame(0, A, 1)]);
        // The sender sent 4 frames; frames 2 and 3 (video) are still in flight.
        r.at(5, vec![close(0, A), open(1, V, 4), open(1, A, 4), frame(1, V, 0)]);
        assert_eq!(r.seen(), "G0 0 1");
        r.at(50, vec![frame(0, V, 2), frame(0, V, 3)]);
        assert_eq!(r.seen(), "G0 0 1 2 3 G1 100", "whole, then the staged GoP");
        assert_eq!(r.m.stats().cut_gops, 0);
    }

    #[test]
    fn a_reset_stream_cuts_the_gop_at_the_gap_and_never_releases_frames_after_it() {
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), open(0, A, 0), frame(0, V, 0), frame(0, A, 1), frame(0, A, 3)]);
        assert_eq!(r.seen(), "G0 0 1", "frame 2 may still come on the video stream");
        // The video stream is reset: frame 2 can come from nowhere (audio is past it).
        r.at(1, vec![close(0, V)]);
        assert_eq!(r.seen(), "G0 0 1 X", "cut at the gap; frame 3 is not released");
        r.at(2, vec![frame(0, A, 4), close(0, A)]);
        assert_eq!(r.seen(), "G0 0 1 X", "frames of a cut GoP are dropped");
        r.at(3, vec![open(1, V, 6), frame(1, V, 0)]);
        assert_eq!(r.seen(), "G0 0 1 X G1 100", "a cut GoP does not hold the next one back");
        // Not published: 3 (dropped at the cut), 4 (after it), 2 and 5 (never arrived).
        assert_eq!(r.m.stats(), MergeStats { gops: 2, frames: 3, cut_gops: 1, lost_frames: 4 });
    }

    #[test]
    fn a_gap_waits_while_an_open_stream_can_still_fill_it() {
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), open(0, A, 0), frame(0, A, 1), frame(0, A, 2), close(0, A)]);
        r.at(150, vec![]);
        assert_eq!(r.tick(10_000), Step::Continue);
        assert_eq!(r.seen(), "G0", "no timeout inside a GoP: the video stream is open and reliable");
        r.at(10_001, vec![frame(0, V, 0)]);
        assert_eq!(r.seen(), "G0 0 1 2");
    }

    #[test]
    fn a_next_gop_that_waited_too_long_cuts_the_current_one_with_an_event() {
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), open(0, A, 0), frame(0, V, 0), frame(0, A, 1)]);
        r.at(10, vec![open(1, V, 4), open(1, A, 4), frame(1, A, 1), frame(1, V, 0)]);
        assert_eq!(r.m.deadline(), Some(r.t0 + Duration::from_millis(10) + MAX_WAIT));
        assert_eq!(r.tick(100), Step::Continue);
        assert_eq!(r.seen(), "G0 0 1");
        r.tick(10 + MAX_WAIT.as_millis() as u64);
        assert_eq!(r.seen(), "G0 0 1 X G1 100 101", "cut (told), then the next GoP from its start");
        assert_eq!(r.m.deadline(), None);
        r.at(300, vec![frame(0, V, 2)]);
        assert_eq!(r.seen(), "G0 0 1 X G1 100 101", "a late frame of the cut GoP is dropped");
        assert_eq!(r.m.stats().cut_gops, 1);
        assert_eq!(r.m.stats().lost_frames, 3, "frames 2 and 3 never came in time, 2 came late");
    }

    #[test]
    fn a_third_gop_cuts_the_current_one_at_once() {
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), frame(0, V, 0)]);
        r.at(1, vec![open(1, V, 5), frame(1, V, 0)]);
        r.at(2, vec![open(2, V, 3), frame(2, V, 0)]);
        assert_eq!(r.seen(), "G0 0 X G1 100", "GoP 0 cut; GoP 1 current, GoP 2 waits for it");
        r.at(3, vec![frame(1, V, 1), frame(1, V, 2)]);
        assert_eq!(r.seen(), "G0 0 X G1 100 101 102 G2 200");
    }

    #[test]
    fn a_gop_the_sender_abandoned_is_cut_whatever_arrived() {
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), open(0, A, 0), frame(0, V, 0), frame(0, A, 1)]);
        r.at(1, vec![open(1, V, PREV_CUT), frame(1, V, 0)]);
        assert_eq!(r.seen(), "G0 0 1 X G1 100");
        assert_eq!(r.m.stats().lost_frames, 0, "how many were lost is not known");
    }

    #[test]
    fn a_gop_whose_streams_all_closed_short_of_the_count_is_cut() {
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), frame(0, V, 0), frame(0, V, 1), close(0, V), close(0, A)]);
        assert_eq!(r.seen(), "G0 0 1", "nothing queued: whether frames are missing is not known yet");
        r.at(1, vec![open(1, V, 3)]);
        assert_eq!(r.seen(), "G0 0 1 X G1", "the next header says 3: one is missing");
    }

    #[test]
    fn the_end_notice_waits_for_data_it_overtook() {
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), open(0, A, 0), frame(0, V, 0)]);
        assert_eq!(r.at(1, vec![Piece::End(EndReason::PublisherLeft)]), Step::Continue);
        assert_eq!(r.at(2, vec![frame(0, A, 1), close(0, A)]), Step::Continue);
        let step = r.at(3, vec![frame(0, V, 2), close(0, V)]);
        assert_eq!(step, Step::End(EndReason::PublisherLeft));
        assert_eq!(r.seen(), "G0 0 1 2", "every frame, no cut");
    }

    #[test]
    fn the_end_with_a_hole_left_cuts_the_last_gop() {
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), open(0, A, 0), frame(0, A, 1), close(0, A)]);
        r.at(1, vec![Piece::End(EndReason::PublisherLeft)]);
        let step = r.at(2, vec![close(0, V)]);
        assert_eq!(step, Step::End(EndReason::PublisherLeft));
        assert_eq!(r.seen(), "G0 X");
    }

    #[test]
    fn the_end_after_a_reset_stream_cuts_the_last_gop() {
        // A receiver that fell behind: the sender reset the last GoP's
        // streams, and the end notice is all that follows. Nothing is queued
        // past a hole, but the tail may be gone.
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), open(0, A, 0), frame(0, V, 0), reset(0, V), close(0, A)]);
        let step = r.at(1, vec![Piece::End(EndReason::PublisherLeft)]);
        assert_eq!(step, Step::End(EndReason::PublisherLeft));
        assert_eq!(r.seen(), "G0 0 X");
        // With no frame at all (the failure seen under load: a GoP header, then the end).
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), reset(0, V), reset(0, A), Piece::End(EndReason::PublisherLeft)]);
        assert_eq!(r.seen(), "G0 X");
    }

    #[test]
    fn a_lost_connection_releases_what_is_in_order_and_cuts_the_rest() {
        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), open(0, A, 0), frame(0, V, 0), frame(0, A, 2)]);
        r.m.closed(&mut r.rec).unwrap();
        assert_eq!(r.seen(), "G0 0 X");

        let mut r = Run::new();
        r.at(0, vec![open(0, V, 0), frame(0, V, 0), frame(0, V, 1), open(1, V, 2), frame(1, V, 0)]);
        assert_eq!(r.seen(), "G0 0 1 G1 100");
        r.m.closed(&mut r.rec).unwrap();
        assert_eq!(r.seen(), "G0 0 1 G1 100", "in order: nothing to cut (the publisher's end marks the GoP)");
    }

    #[test]
    fn a_resumed_broadcast_starts_after_the_gop_it_had_already() {
        let mut r = Run::new();
        r.m = Merger::resuming_after(Some(300));
        let mut g3 = gop(7);
        g3.start_dts = 300;
        r.at(0, vec![Piece::Open { track: V, gop: g3, prev_frames: 0 }, frame(7, V, 0), frame(7, V, 1)]);
        assert_eq!(r.seen(), "", "the GoP the broadcast had when the link dropped is not published again");
        let mut g4 = gop(8);
        g4.start_dts = 400;
        r.at(1, vec![Piece::Open { track: V, gop: g4, prev_frames: 2 }, frame(8, V, 0)]);
        assert_eq!(r.seen(), "G8 800");
        assert_eq!(r.m.last_start(), Some(400));
        assert_eq!(r.m.stats().lost_frames, 0);

        let mut r = Run::new();
        r.m = Merger::resuming_after(Some(3_600_000));
        r.at(0, vec![open(0, V, 0), frame(0, V, 0)]);
        assert_eq!(r.seen(), "G0 0", "a publisher that started over (timestamps from 0) is not a replay");
    }

    #[test]
    fn frames_of_a_gop_moved_past_are_counted_lost() {
        let mut r = Run::new();
        r.at(0, vec![open(5, V, 0), frame(5, V, 0), frame(4, V, 3), open(3, V, 0)]);
        assert_eq!(r.seen(), "G5 500");
        assert_eq!(r.m.stats().lost_frames, 1);
    }
}

/// The merger's contract on any interleaving of any GoP streams, on any
/// timing: what it publishes of a GoP is a prefix of its frames in index
/// order, never with a hole, and a GoP that ended short (the sender reset a
/// stream, or abandoned the GoP) is reported cut before the next one opens.
#[cfg(test)]
mod properties {
    use super::*;
    use bytes::Bytes;
    use gopbus_proto::{FrameHeader, Payload, TrackInfo, VideoConfig};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct GopSpec {
        /// The track of each frame, in index order (true: video).
        video: Vec<bool>,
        /// Sent frames per track before its stream ends (the rest never sent): all, or a cut.
        sent_video: usize,
        sent_audio: usize,
    }

    fn gop_spec() -> impl Strategy<Value = GopSpec> {
        (proptest::collection::vec(any::<bool>(), 1..12), any::<bool>(), 0usize..12, 0usize..12).prop_map(
            |(mut video, whole, cv, ca)| {
                video[0] = true; // a GoP starts on its keyframe
                let (nv, na) = (video.iter().filter(|v| **v).count(), video.iter().filter(|v| !**v).count());
                let (sent_video, sent_audio) = if whole { (nv, na) } else { (cv.min(nv), ca.min(na)) };
                GopSpec { video, sent_video, sent_audio }
            },
        )
    }

    #[derive(Default)]
    struct Rec(Vec<Ev>);

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Ev {
        Open(u64),
        Frame(u64, u32),
        Cut,
    }

    impl Sink for Rec {
        fn open_gop(&mut self, header: GopHeader) -> Result<(), QuicError> {
            self.0.push(Ev::Open(header.seq));
            Ok(())
        }
        fn frame(&mut self, frame: Frame) -> Result<(), QuicError> {
            let d = frame.header.dts;
            self.0.push(Ev::Frame((d / 100) as u64, (d % 100) as u32));
            Ok(())
        }
        fn cut(&mut self) {
            self.0.push(Ev::Cut);
        }
    }

    fn header(seq: u64) -> GopHeader {
        let video = VideoConfig { avcc: vec![1], width: 2, height: 2, profile: 100, level: 30 };
        GopHeader { seq, start_dts: seq as i64 * 100, tracks: vec![TrackInfo::video(video)], metadata: None }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn published_gops_are_whole_prefixes_or_reported_cut(
            gops in proptest::collection::vec(gop_spec(), 1..6),
            order in proptest::collection::vec(any::<u16>(), 0..400),
            waits in proptest::collection::vec(0u64..300, 0..400),
        ) {
            // Each track's stream of each GoP: its pieces in order.
            let mut streams: Vec<std::collections::VecDeque<Piece>> = Vec::new();
            let mut sent_of = Vec::new();
            let mut prev = 0u32;
            for (seq, g) in gops.iter().enumerate() {
                let seq = seq as u64;
                let whole = g.sent_video == g.video.iter().filter(|v| **v).count()
                    && g.sent_audio == g.video.iter().filter(|v| !**v).count();
                for track in [TrackId::VIDEO, TrackId::AUDIO] {
                    let is_video = track == TrackId::VIDEO;
                    let limit = if is_video { g.sent_video } else { g.sent_audio };
                    let mut s = std::collections::VecDeque::new();
                    s.push_back(Piece::Open { track, gop: header(seq), prev_frames: prev });
                    let indexes = g.video.iter().enumerate().filter(|(_, v)| **v == is_video).map(|(i, _)| i as u32);
                    for index in indexes.take(limit) {
                        let h = FrameHeader { track, dts: seq as i64 * 100 + i64::from(index), cts: 0, flags: Default::default(), len: 1 };
                        s.push_back(Piece::Frame { seq, index, frame: Frame { header: h, payload: Payload::from_bytes(Bytes::from_static(b"x")) } });
                    }
                    // A GoP sent whole has its streams finished; an abandoned one, reset.
                    s.push_back(Piece::Close { seq, track, finished: whole });
                    streams.push(s);
                }
                // Sent whole: the next header carries the count; cut: PREV_CUT.
                prev = if whole { g.video.len() as u32 } else { PREV_CUT };
                sent_of.push(g.sent_video + g.sent_audio);
            }
            // Streams open in GoP order (a sender opens them so); their pieces interleave freely.
            let mut m = Merger::default();
            let mut rec = Rec::default();
            let t0 = Instant::now();
            let mut now = t0;
            let (mut order, mut waits) = (order.into_iter(), waits.into_iter());
            let mut opened = 0;
            loop {
                let live: Vec<usize> = (0..opened.min(streams.len())).filter(|&i| !streams[i].is_empty()).collect();
                let can_open = opened < streams.len();
                if live.is_empty() && !can_open {
                    break;
                }
                let pick = order.next().unwrap_or(0) as usize;
                let i = if can_open && (live.is_empty() || pick.is_multiple_of(3)) {
                    opened += 1;
                    opened - 1
                } else {
                    live[pick % live.len()]
                };
                now += Duration::from_millis(waits.next().unwrap_or(1));
                if m.deadline().is_some_and(|d| d <= now) {
                    m.timeout(now, &mut rec).unwrap();
                }
                let piece = streams[i].pop_front().unwrap();
                prop_assert_eq!(m.piece(piece, now, &mut rec).unwrap(), Step::Continue);
            }
            m.closed(&mut rec).unwrap();

            // Check what was published, GoP by GoP.
            let mut cur: Option<(u64, u32, bool)> = None; // (seq, frames so far, cut)
            let finish = |c: Option<(u64, u32, bool)>, later: bool| -> Result<(), TestCaseError> {
                if let Some((seq, n, cut)) = c {
                    let sent = sent_of[seq as usize] as u32;
                    let total = gops[seq as usize].video.len() as u32;
                    prop_assert!(n <= sent, "GoP {} published {} frames of {} sent", seq, n, sent);
                    if later && n < total {
                        prop_assert!(cut, "GoP {} ended at {} of {} frames without a cut", seq, n, total);
                    }
                }
                Ok(())
            };
            for ev in &rec.0 {
                match *ev {
                    Ev::Open(seq) => {
                        if let Some((prev_seq, _, _)) = cur {
                            prop_assert!(seq > prev_seq, "GoP {} opened after {}", seq, prev_seq);
                        }
                        finish(cur, true)?;
                        cur = Some((seq, 0, false));
                    }
                    Ev::Frame(seq, index) => {
                        let c = cur.as_mut().expect("a frame before any GoP");
                        prop_assert!(!c.2, "a frame after its GoP was cut");
                        prop_assert_eq!((seq, index), (c.0, c.1), "a frame out of order or after a hole");
                        c.1 += 1;
                    }
                    Ev::Cut => {
                        let c = cur.as_mut().expect("a cut before any GoP");
                        c.2 = true;
                    }
                }
            }
            finish(cur, false)?;
        }
    }
}
