//! Receiving one broadcast: GoP sub-channel streams replayed, in the sender's
//! order, into a local publisher.
//!
//! Each track of a GoP arrives on its own stream. Every frame carries its index in
//! the GoP (across tracks), so the merger releases frame `k` as soon as frames
//! `0..k` are out: no waiting for other tracks beyond what is actually in flight.
//! The next GoP's header says how many frames the previous GoP had, so the merger
//! moves on as soon as those are out, without waiting for the streams to finish.
//! A gap that does not fill within [`MAX_WAIT`] (a stream reset because this
//! receiver fell behind) is skipped.

use std::collections::BTreeMap;
use std::time::Duration;

use gopbus_proto::wire::Message;
use gopbus_proto::{EndReason, Frame, GopHeader, TrackId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::io::Reader;
use super::QuicError;
use crate::Publisher;

/// Longest the merger waits for a missing frame or a stream's end.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// What stream readers tell the merger of one broadcast.
#[derive(Debug)]
pub(crate) enum Piece {
    /// A GoP sub-channel opened.
    Open { track: TrackId, gop: GopHeader, prev_frames: u32 },
    /// Frame `index` of GoP `seq`.
    Frame { seq: u64, index: u32, frame: Frame },
    /// The sub-channel of `track` in GoP `seq` ended (finished or reset).
    Close { seq: u64, track: TrackId },
    /// The broadcast ended (from the control stream).
    End(EndReason),
}

/// Reads one GoP sub-channel stream (its header already read) into `tx`.
pub(crate) async fn read_stream(
    mut reader: Reader,
    seq: u64,
    track: TrackId,
    tx: mpsc::Sender<Piece>,
    pacer: Option<std::sync::Arc<super::conn::Pacer>>,
) {
    loop {
        let (index, frame) = match reader.message().await {
            Ok(Some(Message::Frame(wf))) => {
                if wf.header.len as usize > gopbus_proto::wire::MAX_FRAME {
                    tracing::warn!(
                        len = wf.header.len,
                        limit = gopbus_proto::wire::MAX_FRAME,
                        "frame longer than the limit announced on a GoP stream; stream dropped"
                    );
                    reader.stop();
                    break;
                }
                if let Some(p) = &pacer {
                    p.take(wf.header.len as usize).await;
                }
                match reader.payload(wf.header.len as usize).await {
                    Ok(parts) => {
                        (wf.index, Frame { header: wf.header, payload: gopbus_proto::Payload::from_parts(parts) })
                    }
                    Err(_) => break,
                }
            }
            Ok(None) => break,
            Ok(Some(other)) => {
                tracing::warn!(?other, "unexpected message on a GoP stream");
                reader.stop();
                break;
            }
            Err(_) => break, // reset by the sender (stale GoP) or connection lost
        };
        if frame.header.track != track {
            tracing::warn!("frame of another track on a GoP stream; stream dropped");
            reader.stop();
            break;
        }
        if tx.send(Piece::Frame { seq, index, frame }).await.is_err() {
            reader.stop();
            return;
        }
    }
    let _ = tx.send(Piece::Close { seq, track }).await;
}

/// One GoP being received.
struct GopState {
    seq: u64,
    /// Tracks announced or seen, and whether their stream has ended.
    tracks: BTreeMap<TrackId, bool>,
    queue: BTreeMap<u32, Frame>,
    /// The next index to release.
    next: u32,
    /// Since when the head of `queue` has waited for a missing frame.
    gap_since: Option<Instant>,
}

impl GopState {
    fn new(gop: &GopHeader, opened: TrackId) -> Self {
        let mut tracks: BTreeMap<TrackId, bool> = gop.tracks.iter().map(|t| (t.id, false)).collect();
        tracks.insert(opened, false);
        Self { seq: gop.seq, tracks, queue: BTreeMap::new(), next: 0, gap_since: None }
    }

    fn all_done(&self) -> bool {
        self.tracks.values().all(|d| *d)
    }

    /// Releases frames in index order while there is no gap.
    fn release(&mut self, publisher: &mut Publisher) -> Result<(), QuicError> {
        while let Some(f) = self.queue.remove(&self.next) {
            publisher.push(f).map_err(|e| QuicError::Protocol(e.to_string()))?;
            self.next += 1;
        }
        self.gap_since = if self.queue.is_empty() { None } else { Some(self.gap_since.unwrap_or_else(Instant::now)) };
        Ok(())
    }

    /// Releases everything queued, skipping gaps.
    fn flush(&mut self, publisher: &mut Publisher) -> Result<(), QuicError> {
        while let Some((i, f)) = self.queue.pop_first() {
            publisher.push(f).map_err(|e| QuicError::Protocol(e.to_string()))?;
            self.next = i + 1;
        }
        self.gap_since = None;
        Ok(())
    }
}

/// The next GoP, seen while frames of the current one may still be in flight.
struct Staged {
    gop: GopHeader,
    state: GopState,
    prev_frames: u32,
    since: Instant,
}

/// Replays pieces into `publisher` until the broadcast ends or the senders go away.
pub(crate) async fn merge_into(mut rx: mpsc::Receiver<Piece>, mut publisher: Publisher) -> Result<(), QuicError> {
    let mut cur: Option<GopState> = None;
    let mut staged: Option<Staged> = None;
    let mut ending: Option<EndReason> = None;
    loop {
        let wait =
            [cur.as_ref().and_then(|c| c.gap_since).map(|t| t + MAX_WAIT), staged.as_ref().map(|s| s.since + MAX_WAIT)]
                .into_iter()
                .flatten()
                .min();
        let piece = tokio::select! {
            p = rx.recv() => p,
            _ = sleep_until(wait) => {
                let now = Instant::now();
                if let Some(c) = cur.as_mut() {
                    if c.gap_since.is_some_and(|t| t + MAX_WAIT <= now) {
                        c.flush(&mut publisher)?;
                    }
                }
                if staged.as_ref().is_some_and(|s| s.since + MAX_WAIT <= now) {
                    advance(&mut cur, &mut staged, &mut publisher)?;
                }
                continue;
            }
        };
        let Some(piece) = piece else {
            // Connection gone: whatever is queued goes out, then the broadcast ends (cut short).
            if let Some(c) = cur.as_mut() {
                c.flush(&mut publisher)?;
            }
            if staged.is_some() {
                advance(&mut cur, &mut staged, &mut publisher)?;
                if let Some(c) = cur.as_mut() {
                    c.flush(&mut publisher)?;
                }
            }
            return Ok(());
        };
        match piece {
            Piece::Open { track, gop, prev_frames } => {
                let cur_seq = cur.as_ref().map(|c| c.seq);
                match (cur_seq, staged.as_mut()) {
                    (None, _) => {
                        cur = Some(GopState::new(&gop, track));
                        publisher.open_gop(gop).map_err(|e| QuicError::Protocol(e.to_string()))?;
                    }
                    (Some(c), _) if gop.seq < c => {}
                    (Some(c), _) if gop.seq == c => {
                        if let Some(cs) = cur.as_mut() {
                            cs.tracks.entry(track).or_insert(false);
                        }
                    }
                    (Some(_), Some(st)) if st.gop.seq == gop.seq => {
                        st.state.tracks.entry(track).or_insert(false);
                    }
                    (Some(_), Some(st)) if gop.seq < st.gop.seq => {}
                    (Some(_), st) => {
                        if st.is_some() {
                            // Two GoPs ahead: this receiver is behind; move on.
                            advance(&mut cur, &mut staged, &mut publisher)?;
                        }
                        let state = GopState::new(&gop, track);
                        staged = Some(Staged { gop, state, prev_frames, since: Instant::now() });
                    }
                }
            }
            Piece::Frame { seq, index, frame } => {
                if let Some(c) = cur.as_mut().filter(|c| c.seq == seq) {
                    if index >= c.next {
                        c.queue.insert(index, frame);
                        c.release(&mut publisher)?;
                    }
                } else if let Some(st) = staged.as_mut().filter(|s| s.gop.seq == seq) {
                    st.state.queue.insert(index, frame);
                }
            }
            Piece::Close { seq, track } => {
                if let Some(c) = cur.as_mut().filter(|c| c.seq == seq) {
                    c.tracks.insert(track, true);
                    if c.all_done() {
                        c.flush(&mut publisher)?;
                    }
                } else if let Some(st) = staged.as_mut().filter(|s| s.gop.seq == seq) {
                    st.state.tracks.insert(track, true);
                }
            }
            Piece::End(reason) => ending = Some(reason),
        }
        if let (Some(c), Some(st)) = (cur.as_ref(), staged.as_ref()) {
            if c.next >= st.prev_frames || c.all_done() {
                advance(&mut cur, &mut staged, &mut publisher)?;
            }
        }
        if let Some(reason) = &ending {
            // The end notice travels on the control stream and can overtake the last
            // GoP's data: end once every track of the current GoP has finished.
            if staged.is_none() && cur.as_ref().is_none_or(GopState::all_done) {
                if let Some(c) = cur.as_mut() {
                    c.flush(&mut publisher)?;
                }
                publisher.end(reason.clone());
                return Ok(());
            }
        }
    }
}

/// Finishes the current GoP and makes the staged one current.
fn advance(
    cur: &mut Option<GopState>,
    staged: &mut Option<Staged>,
    publisher: &mut Publisher,
) -> Result<(), QuicError> {
    if let Some(c) = cur.as_mut() {
        c.flush(publisher)?;
    }
    let Some(st) = staged.take() else { return Ok(()) };
    publisher.open_gop(st.gop).map_err(|e| QuicError::Protocol(e.to_string()))?;
    let mut state = st.state;
    state.release(publisher)?;
    *cur = Some(state);
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
