//! Pieces both ends of a bus connection use: routing GoP streams to the
//! broadcast they belong to, and the control stream writer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gopbus_proto::wire::{Control, Message};
use tokio::sync::mpsc;

use super::ingress::{read_stream, Piece};
use super::io::{Encoder, Reader, Writer};

/// Request id → the merger of that broadcast.
#[derive(Default)]
pub(crate) struct Routes {
    map: Mutex<HashMap<u64, mpsc::Sender<Piece>>>,
    /// Limits how fast this connection's GoP streams are read (a slow subscriber).
    pub(crate) pacer: Option<Arc<Pacer>>,
}

/// A byte-rate limit shared by the readers of one connection.
pub(crate) struct Pacer {
    bytes_per_sec: f64,
    next_free: Mutex<tokio::time::Instant>,
}

impl Pacer {
    pub(crate) fn new(bytes_per_sec: u64) -> Self {
        Self { bytes_per_sec: bytes_per_sec.max(1) as f64, next_free: Mutex::new(tokio::time::Instant::now()) }
    }

    /// Waits until `n` more bytes may be consumed.
    pub(crate) async fn take(&self, n: usize) {
        let at = {
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let start = (*next).max(tokio::time::Instant::now());
            *next = start + std::time::Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            start
        };
        tokio::time::sleep_until(at).await;
    }
}

impl Routes {
    /// Routes whose streams are read no faster than `pacer` allows.
    pub(crate) fn paced(pacer: Option<Arc<Pacer>>) -> Self {
        Self { map: Mutex::default(), pacer }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Piece>>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, id: u64, tx: mpsc::Sender<Piece>) {
        self.lock().insert(id, tx);
    }

    pub(crate) fn get(&self, id: u64) -> Option<mpsc::Sender<Piece>> {
        self.lock().get(&id).cloned()
    }

    /// Routes held now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Drops every route: their mergers see the end of their input.
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}

/// Accepts the peer's GoP streams and hands each to the merger of its request.
pub(crate) async fn accept_streams(conn: quinn::Connection, routes: Arc<Routes>) {
    while let Ok(stream) = conn.accept_uni().await {
        let routes = routes.clone();
        tokio::spawn(async move {
            let mut reader = Reader::new(stream);
            match reader.message().await {
                Ok(Some(Message::Stream(h))) => {
                    let Some(tx) = routes.get(h.id) else {
                        reader.stop();
                        return;
                    };
                    let (seq, track) = (h.gop.seq, h.track);
                    if tx.send(Piece::Open { track, gop: h.gop, prev_frames: h.prev_frames }).await.is_err() {
                        reader.stop();
                        return;
                    }
                    read_stream(reader, seq, track, tx, routes.pacer.clone()).await;
                }
                Ok(_) | Err(_) => reader.stop(),
            }
        });
    }
}

/// The control stream's priority while it carries requests and answers
/// (hello, welcome, `Ok`, listings, announcements): above every GoP stream
/// (their priorities are ≥ 0, see `egress`). A subscription's `Ok` is queued
/// just before the subscription's catch-up burst (up to a whole GoP) is
/// written; at a lower priority it left only after that burst had, and the
/// subscriber, which starts with the `Ok`, waited for all of it.
pub(crate) const CONTROL_PRIORITY: i32 = i32::MAX;

/// The control stream's priority for `msg`: an `End` or `Error`, which ends a
/// request whose GoP data may still be queued, goes below every GoP stream
/// (after the data written before it; the receiver's merger also waits for
/// data an end notice overtakes, but only in GoPs whose streams it has seen);
/// everything else at [`CONTROL_PRIORITY`].
pub(crate) fn control_priority(msg: &Control) -> i32 {
    match msg {
        Control::End { .. } | Control::Error { .. } => i32::MIN,
        _ => CONTROL_PRIORITY,
    }
}

/// Writes control messages from `rx` until it closes or the stream breaks.
/// The stream was opened at [`CONTROL_PRIORITY`]; each message sets its own
/// ([`control_priority`]; quinn's priority is per stream, so a notice still
/// unsent when an answer is written goes with the answer).
pub(crate) async fn write_control(mut writer: Writer, mut rx: mpsc::Receiver<Control>) {
    let mut enc = Encoder::default();
    let mut priority = CONTROL_PRIORITY;
    while let Some(msg) = rx.recv().await {
        let wanted = control_priority(&msg);
        if wanted != priority {
            priority = wanted;
            let _ = writer.stream.set_priority(priority);
        }
        if writer.send(&mut enc, &Message::Control(msg), &[]).await.is_err() {
            return;
        }
    }
    let _ = writer.stream.finish();
}
