//! Receiving one broadcast: GoP sub-channel streams read and replayed, through
//! the [`Merger`], into a local publisher.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gopbus_proto::wire::Message;
use gopbus_proto::{EndReason, Frame, GopHeader, TrackId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::io::Reader;
pub(crate) use super::merge::Merger;
pub(crate) use super::merge::Piece;
use super::merge::{Sink, Step};
use super::QuicError;
use crate::Publisher;

/// Reads one GoP sub-channel stream (its header already read) into `tx`.
pub(crate) async fn read_stream(
    mut reader: Reader,
    seq: u64,
    track: TrackId,
    tx: mpsc::Sender<Piece>,
    pacer: Option<Arc<super::conn::Pacer>>,
) {
    // Whether the sender finished the stream (not reset it, and no error).
    let mut finished = false;
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
            Ok(None) => {
                finished = true;
                break;
            }
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
    let _ = tx.send(Piece::Close { seq, track, finished }).await;
}

/// The local publisher a merged broadcast goes into.
struct PublisherSink(Publisher);

impl Sink for PublisherSink {
    fn open_gop(&mut self, header: GopHeader) -> Result<(), QuicError> {
        self.0.open_gop(header).map(drop).map_err(|e| QuicError::Protocol(e.to_string()))
    }

    fn frame(&mut self, frame: Frame) -> Result<(), QuicError> {
        self.0.push(frame).map_err(|e| QuicError::Protocol(e.to_string()))
    }

    fn cut(&mut self) {
        self.0.cut_gop();
    }
}

/// One held broadcast: the hold's id, and the start dts of the last GoP it published.
type HeldEntry = (u64, Option<i64>);

/// Broadcasts whose upstream link dropped, held open for it to come back, by name.
#[derive(Clone, Default)]
pub(crate) struct Held(Arc<Mutex<HashMap<String, HeldEntry>>>);

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HeldEntry>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `name` is held, and where it resumes: after the GoP starting at the dts given.
    pub(crate) fn resume_point(&self, name: &str) -> Option<Option<i64>> {
        self.lock().get(name).map(|(_, dts)| *dts)
    }

    /// `name` resumed (or ended): no longer held.
    pub(crate) fn release(&self, name: &str) {
        self.lock().remove(name);
    }

    fn hold(&self, name: &str, last_start: Option<i64>) -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(name.to_owned(), (id, last_start));
        id
    }

    fn release_if(&self, name: &str, id: u64) {
        let mut map = self.lock();
        if map.get(name).is_some_and(|(i, _)| *i == id) {
            map.remove(name);
        }
    }
}

/// What a merge does when its link drops without an end notice: keep the
/// local broadcast open (its GoP cut short) for `grace`, for the link to come
/// back and a new merge to take the broadcast over where it stopped.
#[derive(Clone)]
pub(crate) struct Hold {
    pub(crate) grace: Duration,
    pub(crate) held: Held,
}

/// Replays pieces into `publisher` until the broadcast ends or the senders go
/// away. `merger` may be resuming a held broadcast; with `hold`, a lost link
/// holds the broadcast open instead of ending it.
pub(crate) async fn merge_into(
    mut rx: mpsc::Receiver<Piece>,
    publisher: Publisher,
    mut merger: Merger,
    hold: Option<Hold>,
) -> Result<(), QuicError> {
    let name = publisher.name().to_owned();
    let mut sink = PublisherSink(publisher);
    let result = loop {
        let step = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => merger.piece(p, Instant::now(), &mut sink),
                None => break merger.closed(&mut sink).map(|()| None),
            },
            _ = sleep_until(merger.deadline()) => merger.timeout(Instant::now(), &mut sink),
        };
        match step {
            Ok(Step::Continue) => {}
            Ok(Step::End(reason)) => break Ok(Some(reason)),
            Err(e) => break Err(e),
        }
    };
    let stats = merger.stats();
    if stats.cut_gops > 0 {
        tracing::info!(
            broadcast = %name,
            gops = stats.gops,
            cut_gops = stats.cut_gops,
            lost_frames = stats.lost_frames,
            "received GoPs cut short: their frames did not all arrive (this receiver fell behind); subscribers were told"
        );
    }
    match (result?, hold) {
        (Some(reason), _) => sink.0.end(reason),
        (None, Some(hold)) if !hold.grace.is_zero() && sink.0.is_active() => {
            hold_open(sink.0, merger.last_start(), hold).await;
        }
        // Connection gone: dropping the publisher ends the broadcast, its GoP cut short.
        (None, _) => {}
    }
    Ok(())
}

/// Holds a broadcast whose link dropped: subscribers stay attached (their GoP
/// cut short) until a new merge takes it over, or `grace` passes and it ends.
async fn hold_open(mut publisher: Publisher, last_start: Option<i64>, hold: Hold) {
    let name = publisher.name().to_owned();
    publisher.cut_gop();
    let id = hold.held.hold(&name, last_start);
    tracing::warn!(broadcast = %name, grace = ?hold.grace, "upstream lost; the broadcast is held open for it to resume");
    let replaced = publisher.replaced_owned();
    tokio::select! {
        () = replaced => {
            hold.held.release_if(&name, id);
            tracing::info!(broadcast = %name, "upstream back; the broadcast resumes at its next GoP");
        }
        () = tokio::time::sleep(hold.grace) => {
            hold.held.release_if(&name, id);
            tracing::warn!(broadcast = %name, grace = ?hold.grace, "upstream did not come back in time; the broadcast ends");
            publisher.end(EndReason::Error(format!("upstream lost and not back within {} s", hold.grace.as_secs_f32())));
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
