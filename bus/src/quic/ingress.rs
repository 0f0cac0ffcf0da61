//! Receiving one broadcast: GoP sub-channel streams replayed, in decode order,
//! into a local publisher.
//!
//! Each track of a GoP arrives on its own stream, so the merger holds a short
//! queue per track and releases the frame with the smallest timestamp once every
//! other open track has a frame queued (or has finished). A track that stays
//! silent for [`MAX_WAIT`] does not hold the others back.

use std::collections::BTreeMap;
use std::time::Duration;

use gopbus_proto::{EndReason, Frame, GopHeader, TrackId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::io::Reader;
use super::QuicError;
use crate::Publisher;
use gopbus_proto::wire::Message;

/// Longest a frame waits for another track's next frame.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// What stream readers tell the merger of one broadcast.
#[derive(Debug)]
pub(crate) enum Piece {
    /// A GoP sub-channel opened.
    Open { track: TrackId, gop: GopHeader },
    /// A frame of GoP `seq`.
    Frame { seq: u64, frame: Frame },
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
        let frame = match reader.message().await {
            Ok(Some(Message::Frame(header))) => {
                if let Some(p) = &pacer {
                    p.take(header.len as usize).await;
                }
                match reader.payload(header.len as usize).await {
                    Ok(parts) => Frame { header, payload: gopbus_proto::Payload::from_parts(parts) },
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
        if tx.send(Piece::Frame { seq, frame }).await.is_err() {
            reader.stop();
            return;
        }
    }
    let _ = tx.send(Piece::Close { seq, track }).await;
}

struct TrackQueue {
    frames: std::collections::VecDeque<(Frame, Instant)>,
    done: bool,
}

impl TrackQueue {
    fn new() -> Self {
        Self { frames: Default::default(), done: false }
    }
}

type Tracks = BTreeMap<TrackId, TrackQueue>;

fn tracks_for(gop: &GopHeader, opened: TrackId) -> Tracks {
    let mut t = Tracks::new();
    if gop.video.is_some() {
        t.insert(TrackId::VIDEO, TrackQueue::new());
    }
    if gop.audio.is_some() {
        t.insert(TrackId::AUDIO, TrackQueue::new());
    }
    t.entry(opened).or_insert_with(TrackQueue::new);
    t
}

/// The next GoP, seen while the current one's last frames may still be arriving
/// on its other sub-channels (the sender finishes a GoP's streams as the next
/// GoP starts, so they race).
struct Staged {
    gop: GopHeader,
    tracks: Tracks,
    since: Instant,
}

/// Replays pieces into `publisher` until the broadcast ends or the senders go away.
pub(crate) async fn merge_into(mut rx: mpsc::Receiver<Piece>, mut publisher: Publisher) -> Result<(), QuicError> {
    let mut seq: Option<u64> = None;
    let mut tracks = Tracks::new();
    let mut staged: Option<Staged> = None;
    let mut ending: Option<EndReason> = None;
    loop {
        let wait = [next_deadline(&tracks), staged.as_ref().map(|s| s.since + MAX_WAIT)].into_iter().flatten().min();
        let piece = tokio::select! {
            p = rx.recv() => p,
            _ = sleep_until(wait) => {
                if staged.as_ref().is_some_and(|s| s.since + MAX_WAIT <= Instant::now()) {
                    advance(&mut seq, &mut tracks, &mut staged, &mut publisher)?;
                }
                release(&mut tracks, &mut publisher, true)?;
                continue;
            }
        };
        let Some(piece) = piece else {
            // Connection gone: whatever is queued goes out, then the broadcast ends (cut short).
            flush(&mut tracks, &mut publisher)?;
            if staged.is_some() {
                advance(&mut seq, &mut tracks, &mut staged, &mut publisher)?;
                flush(&mut tracks, &mut publisher)?;
            }
            return Ok(());
        };
        match piece {
            Piece::Open { track, gop } => match (seq, staged.as_mut()) {
                (Some(cur), _) if gop.seq < cur => {}
                (Some(cur), _) if gop.seq == cur => {
                    tracks.entry(track).or_insert_with(TrackQueue::new);
                }
                (None, _) => {
                    seq = Some(gop.seq);
                    tracks = tracks_for(&gop, track);
                    publisher.open_gop(gop).map_err(|e| QuicError::Protocol(e.to_string()))?;
                }
                (Some(_), Some(st)) if st.gop.seq == gop.seq => {
                    st.tracks.entry(track).or_insert_with(TrackQueue::new);
                }
                (Some(_), Some(st)) if gop.seq < st.gop.seq => {}
                (Some(_), Some(_)) => {
                    // Two GoPs ahead: this receiver is behind; give up on the current one.
                    advance(&mut seq, &mut tracks, &mut staged, &mut publisher)?;
                    staged = Some(Staged { tracks: tracks_for(&gop, track), gop, since: Instant::now() });
                }
                (Some(_), None) => {
                    staged = Some(Staged { tracks: tracks_for(&gop, track), gop, since: Instant::now() });
                }
            },
            Piece::Frame { seq: s, frame } => {
                if Some(s) == seq {
                    tracks
                        .entry(frame.header.track)
                        .or_insert_with(TrackQueue::new)
                        .frames
                        .push_back((frame, Instant::now()));
                    release(&mut tracks, &mut publisher, false)?;
                } else if let Some(st) = staged.as_mut().filter(|st| st.gop.seq == s) {
                    st.tracks
                        .entry(frame.header.track)
                        .or_insert_with(TrackQueue::new)
                        .frames
                        .push_back((frame, Instant::now()));
                }
            }
            Piece::Close { seq: s, track } => {
                if Some(s) == seq {
                    if let Some(q) = tracks.get_mut(&track) {
                        q.done = true;
                    }
                    release(&mut tracks, &mut publisher, false)?;
                } else if let Some(q) =
                    staged.as_mut().filter(|st| st.gop.seq == s).and_then(|st| st.tracks.get_mut(&track))
                {
                    q.done = true;
                }
            }
            Piece::End(reason) => ending = Some(reason),
        }
        if staged.is_some() && tracks.values().all(|q| q.done) {
            advance(&mut seq, &mut tracks, &mut staged, &mut publisher)?;
        }
        if let Some(reason) = &ending {
            // The end notice travels on the control stream and can overtake the last
            // GoP's data: end once every track of the current GoP has finished.
            if staged.is_none() && tracks.values().all(|q| q.done) {
                flush(&mut tracks, &mut publisher)?;
                publisher.end(reason.clone());
                return Ok(());
            }
        }
    }
}

/// Finishes the current GoP and makes the staged one current.
fn advance(
    seq: &mut Option<u64>,
    tracks: &mut Tracks,
    staged: &mut Option<Staged>,
    publisher: &mut Publisher,
) -> Result<(), QuicError> {
    flush(tracks, publisher)?;
    let Some(st) = staged.take() else { return Ok(()) };
    *seq = Some(st.gop.seq);
    *tracks = st.tracks;
    publisher.open_gop(st.gop).map_err(|e| QuicError::Protocol(e.to_string()))?;
    release(tracks, publisher, false)
}

fn next_deadline(tracks: &Tracks) -> Option<Instant> {
    tracks.values().filter_map(|q| q.frames.front().map(|(_, at)| *at + MAX_WAIT)).min()
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Pushes frames in timestamp order while it is safe to (or, with `force`, the
/// frames that waited too long).
fn release(tracks: &mut Tracks, publisher: &mut Publisher, force: bool) -> Result<(), QuicError> {
    loop {
        let ready = tracks.values().all(|q| q.done || !q.frames.is_empty());
        let oldest = tracks.values().filter_map(|q| q.frames.front().map(|(_, at)| *at)).min();
        let overdue = force && oldest.is_some_and(|t| t + MAX_WAIT <= Instant::now());
        if !(ready || overdue) {
            return Ok(());
        }
        let next = tracks.iter().filter_map(|(t, q)| q.frames.front().map(|(f, _)| (f.header.dts, *t))).min();
        let Some((_, track)) = next else { return Ok(()) };
        let (frame, _) = tracks.get_mut(&track).and_then(|q| q.frames.pop_front()).expect("non-empty queue");
        publisher.push(frame).map_err(|e| QuicError::Protocol(e.to_string()))?;
    }
}

/// Pushes everything queued, in timestamp order.
fn flush(tracks: &mut Tracks, publisher: &mut Publisher) -> Result<(), QuicError> {
    for q in tracks.values_mut() {
        q.done = true;
    }
    release(tracks, publisher, false)
}
