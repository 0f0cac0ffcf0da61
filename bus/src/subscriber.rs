//! The subscribing handle of a broadcast: one cursor into the GoP window.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use gopbus_proto::{EndReason, Frame, GopHeader};

use crate::broadcast::{Gop, GopState, Shared, NO_GOP};
use crate::broker::Bus;
use gopbus_proto::wire::StartAt;

/// How a subscriber starts and how far it may fall behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// Start at the current GoP or the next one.
    pub start: StartAt,
    /// Allowed lag in GoPs; `None` takes the bus default.
    pub max_lag: Option<u64>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self { start: StartAt::CurrentGop, max_lag: None }
    }
}

/// What a subscriber receives, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// A GoP starts; its frames follow.
    Gop(Arc<GopHeader>),
    /// The next frame of the current GoP.
    Frame(Frame),
    /// The GoP `seq` ended before its natural end (the publisher vanished or was
    /// replaced); its frames so far were all delivered.
    CutShort {
        /// The GoP's sequence number.
        seq: u64,
    },
    /// The subscriber fell behind and jumped from GoP `from` to GoP `to`; the GoPs
    /// in between (and the rest of `from`) were not delivered.
    Skipped {
        /// The GoP it was in.
        from: u64,
        /// The GoP it continues with.
        to: u64,
    },
    /// The broadcast ended; nothing follows.
    End(EndReason),
}

struct Cursor {
    seq: u64,
    gop: Weak<Gop>,
    index: usize,
    header_sent: bool,
    cut_reported: bool,
}

impl Cursor {
    fn new(seq: u64, gop: &Arc<Gop>) -> Self {
        Self { seq, gop: Arc::downgrade(gop), index: 0, header_sent: false, cut_reported: false }
    }
}

/// One subscriber's cursor. Memory is O(1) whatever it does: it holds a GoP number,
/// an index, and a weak reference that does not keep an evicted GoP's frames alive.
///
/// Drive it with [`next`](Self::next) (waits) or [`try_next`](Self::try_next)
/// (returns `None` when nothing is ready). After [`Event::End`] it only returns
/// `End` again.
pub struct Subscriber {
    bus: Bus,
    shared: Arc<Shared>,
    start: StartAt,
    max_lag: u64,
    /// The first GoP it may start at.
    first_seq: u64,
    cursor: Option<Cursor>,
    skipped_gops: u64,
    ended: Option<EndReason>,
    /// Picks the wake-up shard.
    id: usize,
}

impl Subscriber {
    pub(crate) fn new(bus: Bus, shared: Arc<Shared>, opts: SubscribeOptions) -> Self {
        let max_lag = opts.max_lag.unwrap_or(shared.config.max_lag).min(shared.config.window as u64);
        // Decided now, not at the first read: "current" is the GoP current at subscribe
        // time; before the first GoP, it is the first one.
        let first_seq = match (shared.newest_seq.load(Ordering::Acquire), opts.start) {
            (NO_GOP, _) => 0,
            (newest, StartAt::CurrentGop) => newest,
            (newest, StartAt::NextGop) => newest + 1,
        };
        static NEXT_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Self { bus, shared, start: opts.start, max_lag, first_seq, cursor: None, skipped_gops: 0, ended: None, id }
    }

    /// The broadcast's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// GoPs this subscriber skipped because it fell behind.
    pub const fn skipped_gops(&self) -> u64 {
        self.skipped_gops
    }

    /// How many GoPs the newest GoP is ahead of this subscriber's (0 when it is
    /// in the newest GoP or has not started).
    pub fn behind(&self) -> u64 {
        let newest = self.shared.newest_seq.load(Ordering::Acquire);
        match (&self.cursor, newest) {
            (Some(c), n) if n != NO_GOP => n.saturating_sub(c.seq),
            _ => 0,
        }
    }

    /// Resolves once the newest GoP is more than `gops` GoPs ahead of this
    /// subscriber's (see [`behind`](Self::behind)); woken by the publisher, no timer.
    pub async fn until_behind(&self, gops: u64) {
        loop {
            let notified = self.shared.waker(self.id).notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.shared.arm();
            if self.behind() > gops {
                return;
            }
            notified.await;
        }
    }

    /// A handle that wakes whenever this subscriber's broadcast changes (a frame,
    /// a GoP, the end): what one task serving many subscribers of a broadcast
    /// waits on instead of each of them waiting (see [`BroadcastWake`]).
    pub fn wake_handle(&self) -> BroadcastWake {
        BroadcastWake { shared: self.shared.clone(), id: self.id }
    }

    /// Identifies the broadcast instance this subscriber reads: equal for two
    /// subscribers of the same broadcast, different after it ended and was
    /// published anew under the same name.
    pub fn broadcast_id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// Where this subscriber asked to start.
    pub const fn start(&self) -> StartAt {
        self.start
    }

    /// Waits for the next event. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Event {
        let shared = self.shared.clone();
        loop {
            let notified = shared.waker(self.id).notified();
            tokio::pin!(notified);
            // Register before looking, so a push between the look and the wait wakes us.
            notified.as_mut().enable();
            shared.arm();
            if let Some(ev) = self.try_next() {
                return ev;
            }
            notified.await;
        }
    }

    /// The next event if one is ready.
    pub fn try_next(&mut self) -> Option<Event> {
        if let Some(reason) = &self.ended {
            return Some(Event::End(reason.clone()));
        }
        loop {
            let Some(cursor) = self.cursor.as_mut() else {
                return self.begin();
            };
            let newest = self.shared.newest_seq.load(Ordering::Acquire);
            if newest != NO_GOP && newest.saturating_sub(cursor.seq) > self.max_lag {
                return Some(self.jump(newest));
            }
            let Some(gop) = cursor.gop.upgrade() else {
                // Evicted from the window while we were in it.
                return Some(self.jump(newest));
            };
            if !cursor.header_sent {
                cursor.header_sent = true;
                return Some(Event::Gop(gop.header.clone()));
            }
            // Load the state before the frames: frames pushed before a close are visible.
            let state = gop.state();
            if let Some(frame) = gop.frames().get(cursor.index) {
                cursor.index += 1;
                return Some(Event::Frame(frame.clone()));
            }
            if state == GopState::Open {
                return self.pending_end();
            }
            if state == GopState::CutShort && !cursor.cut_reported {
                cursor.cut_reported = true;
                return Some(Event::CutShort { seq: cursor.seq });
            }
            let seq = cursor.seq;
            match self.find(seq + 1) {
                Some(next) => self.cursor = Some(Cursor::new(seq + 1, &next)),
                // Park on the finished GoP; a later `open_gop` or `end` wakes us.
                None => return self.pending_end(),
            }
        }
    }

    /// Picks the starting GoP.
    fn begin(&mut self) -> Option<Event> {
        let st = self.shared.read();
        let first = self.first_seq;
        let pick = st.gops.iter().find(|g| g.header.seq >= first).cloned();
        if let Some(gop) = pick {
            let seq = gop.header.seq;
            drop(st);
            self.cursor = Some(Cursor { header_sent: true, ..Cursor::new(seq, &gop) });
            return Some(Event::Gop(gop.header.clone()));
        }
        let ended = st.ended.clone();
        drop(st);
        ended.map(|r| {
            self.ended = Some(r.clone());
            Event::End(r)
        })
    }

    fn find(&self, seq: u64) -> Option<Arc<Gop>> {
        let st = self.shared.read();
        let front = st.gops.front()?.header.seq;
        let idx = seq.checked_sub(front)?;
        st.gops.get(idx as usize).cloned()
    }

    fn jump(&mut self, newest: u64) -> Event {
        let from = self.cursor.as_ref().map_or(newest, |c| c.seq);
        let skipped = newest.saturating_sub(from);
        self.skipped_gops += skipped;
        self.shared.stats.skipped_gops.fetch_add(skipped, Ordering::Relaxed);
        tracing::debug!(broadcast = %self.shared.name, from, to = newest, "subscriber fell behind, skipped");
        let gop = self.find(newest);
        self.cursor = Some(Cursor {
            seq: newest,
            gop: gop.as_ref().map(Arc::downgrade).unwrap_or_default(),
            index: 0,
            header_sent: false,
            cut_reported: false,
        });
        Event::Skipped { from, to: newest }
    }

    /// `Some(End)` if the broadcast has ended (and latches it).
    fn pending_end(&mut self) -> Option<Event> {
        if !self.shared.has_ended() {
            return None;
        }
        let reason = self.shared.read().ended.clone()?;
        self.ended = Some(reason.clone());
        Some(Event::End(reason))
    }
}

/// Wakes on every change of one broadcast, without reading it: see
/// [`Subscriber::wake_handle`]. It keeps no frame alive and is not counted as a
/// subscriber.
#[derive(Clone)]
pub struct BroadcastWake {
    shared: Arc<Shared>,
    id: usize,
}

impl BroadcastWake {
    /// A future that resolves at the broadcast's next change. Pin it and pass
    /// it to [`enable`](Self::enable) before looking at the subscribers, so
    /// that a change in between is not missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.waker(self.id).notified()
    }

    /// Registers `notified` for the next change (a change after this call
    /// wakes it; look at the subscribers after it, not before).
    pub fn enable(&self, notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) {
        notified.enable();
        self.shared.arm();
    }

    /// The broadcast's [`Subscriber::broadcast_id`].
    pub fn broadcast_id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.shared.stats.subscribers.fetch_sub(1, Ordering::AcqRel);
        self.bus.release_if_idle(&self.shared);
    }
}
