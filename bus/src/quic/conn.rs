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

/// Writes control messages from `rx` until it closes or the stream breaks.
pub(crate) async fn write_control(mut writer: Writer, mut rx: mpsc::Receiver<Control>) {
    let mut enc = Encoder::default();
    while let Some(msg) = rx.recv().await {
        if writer.send(&mut enc, &Message::Control(msg), &[]).await.is_err() {
            return;
        }
    }
    let _ = writer.stream.finish();
}
