//! Sending one broadcast: a local subscriber's events onto GoP sub-channel streams.

use std::collections::VecDeque;
use std::time::Duration;

use gopbus_proto::wire::{Control, Message, StreamHeader, WireFrame, PREV_CUT};
use gopbus_proto::{GopHeader, TrackId, TrackKind};
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
pub(crate) async fn send_broadcast(
    conn: quinn::Connection,
    id: u64,
    mut sub: Subscriber,
    control: mpsc::Sender<Control>,
    cancel: CancellationToken,
    viewer: Option<crate::Viewer>,
) -> Result<(), QuicError> {
    let mut current: Vec<Open> = Vec::new();
    // Finished GoPs whose data may still be in flight, oldest first.
    let mut in_flight: VecDeque<Vec<Open>> = VecDeque::new();
    let mut gop: Option<std::sync::Arc<GopHeader>> = None;
    let mut skipped: u64 = 0;
    // Set when the current GoP will not reach the peer whole: abandoned because
    // the subscriber fell behind (its remaining frames are not sent), or cut
    // short at the source. The next GoP's header says so (`PREV_CUT`).
    let mut abandoned = false;
    // Frames sent in the current GoP, and in the previous one.
    let (mut index, mut prev_frames) = (0u32, 0u32);
    let mut enc = Encoder::default();
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = sub.next() => ev,
        };
        match ev {
            Event::Gop(header) => {
                retire(&mut current, &mut in_flight);
                // A GoP abandoned or cut is not whole whatever reached the peer: say so.
                prev_frames = if abandoned { PREV_CUT } else { index };
                (index, abandoned) = (0, false);
                for track in header.tracks.iter().map(|t| t.id) {
                    current.push(open(&conn, &mut enc, id, track, &header, prev_frames).await?);
                }
                gop = Some(header);
            }
            Event::Frame(_) if abandoned => {}
            Event::Frame(frame) => {
                let track = frame.header.track;
                let idx = match current.iter().position(|o| o.track == track) {
                    Some(i) => i,
                    None => {
                        // A track the GoP header did not list: carried all the same.
                        let Some(h) = gop.as_ref() else { continue };
                        current.push(open(&conn, &mut enc, id, track, h, prev_frames).await?);
                        current.len() - 1
                    }
                };
                let msg = Message::Frame(WireFrame { index, header: frame.header });
                let write = current[idx].writer.send(&mut enc, &msg, frame.payload.parts());
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
                tokio::select! {
                    r = write => {
                        r?;
                        index += 1;
                        if let Some(v) = &viewer {
                            v.sent_frame(len);
                        }
                    }
                    () = stale => {
                        for mut o in current.drain(..) {
                            let _ = o.writer.stream.reset(quinn::VarInt::from_u32(RESET_STALE));
                        }
                        abandoned = true;
                        skipped += 1;
                        if let Some(v) = &viewer {
                            v.skipped(1);
                        }
                        tracing::debug!(id, "remote subscriber fell behind; stale GoP abandoned");
                    }
                }
            }
            Event::Skipped { from, to } => {
                skipped += to - from;
                if let Some(v) = &viewer {
                    v.skipped(to - from);
                }
                tracing::debug!(id, from, to, "remote subscriber fell behind; stale GoP streams reset");
                for mut o in current.drain(..) {
                    let _ = o.writer.stream.reset(quinn::VarInt::from_u32(RESET_STALE));
                }
                abandoned = true;
            }
            Event::CutShort { .. } => {
                // Cut at the source: the peer hears it with the next GoP's header.
                retire(&mut current, &mut in_flight);
                abandoned = true;
            }
            Event::End(reason) => {
                retire(&mut current, &mut in_flight);
                let _ = control.send(Control::End { id, reason }).await;
                break;
            }
        }
        while in_flight.len() > IN_FLIGHT_GOPS {
            for mut o in in_flight.pop_front().unwrap_or_default() {
                // Already finished: a reset only abandons data not yet acknowledged.
                let _ = o.writer.stream.reset(quinn::VarInt::from_u32(RESET_STALE));
            }
        }
    }
    if skipped > 0 {
        tracing::info!(id, skipped_gops = skipped, "remote subscriber skipped GoPs");
    }
    Ok(())
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
}
