//! Receiving one broadcast: GoP sub-channel streams read and replayed, through
//! the [`Merger`], into a local publisher.

use gopbus_proto::wire::Message;
use gopbus_proto::{Frame, GopHeader, TrackId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::io::Reader;
pub(crate) use super::merge::Piece;
use super::merge::{Merger, Sink, Step};
use super::QuicError;
use crate::Publisher;

/// Reads one GoP sub-channel stream (its header already read) into `tx`.
pub(crate) async fn read_stream(
    mut reader: Reader,
    seq: u64,
    track: TrackId,
    tx: mpsc::Sender<Piece>,
    pacer: Option<std::sync::Arc<super::conn::Pacer>>,
) {
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

/// Replays pieces into `publisher` until the broadcast ends or the senders go away.
pub(crate) async fn merge_into(mut rx: mpsc::Receiver<Piece>, publisher: Publisher) -> Result<(), QuicError> {
    let name = publisher.name().to_owned();
    let mut sink = PublisherSink(publisher);
    let mut merger = Merger::default();
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
    // Connection gone (`None`): dropping the publisher ends the broadcast, its GoP cut short.
    if let Some(reason) = result? {
        sink.0.end(reason);
    }
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
