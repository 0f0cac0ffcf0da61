//! The shared state of one broadcast: a sliding window of GoPs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use gopbus_proto::{EndReason, Frame, GopHeader};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::broker::BusConfig;

/// How a GoP ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum GopState {
    /// Frames may still be appended.
    Open = 0,
    /// The next GoP opened, or the publisher stopped cleanly.
    Complete = 1,
    /// The publisher vanished or was replaced mid-GoP.
    CutShort = 2,
}

/// One GoP channel: its header and the frames so far, in decode order.
pub(crate) struct Gop {
    pub(crate) header: Arc<GopHeader>,
    pub(crate) frames: RwLock<Vec<Frame>>,
    state: AtomicU8,
    pub(crate) bytes: AtomicUsize,
}

impl Gop {
    pub(crate) fn new(header: GopHeader) -> Self {
        Self {
            header: Arc::new(header),
            frames: RwLock::new(Vec::new()),
            state: AtomicU8::new(GopState::Open as u8),
            bytes: AtomicUsize::new(0),
        }
    }

    pub(crate) fn state(&self) -> GopState {
        match self.state.load(Ordering::Acquire) {
            0 => GopState::Open,
            1 => GopState::Complete,
            _ => GopState::CutShort,
        }
    }

    pub(crate) fn close(&self, how: GopState) {
        // Only the first close counts.
        let _ = self.state.compare_exchange(GopState::Open as u8, how as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(crate) fn frames(&self) -> RwLockReadGuard<'_, Vec<Frame>> {
        // A poisoned lock means a panic while pushing a clone into a Vec; the Vec is still valid.
        self.frames.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn frames_mut(&self) -> RwLockWriteGuard<'_, Vec<Frame>> {
        self.frames.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Mutable state of a broadcast, behind one lock that is held only for O(1) work.
pub(crate) struct State {
    /// Past GoPs and the current one (at the back); at most `window + 1`.
    pub(crate) gops: VecDeque<Arc<Gop>>,
    /// The next GoP's sequence number.
    pub(crate) next_seq: u64,
    /// Set once, when the broadcast ends.
    pub(crate) ended: Option<EndReason>,
    /// Incremented at each takeover; a publisher handle with an older epoch is dead.
    pub(crate) epoch: u64,
    /// Cancelled when the current publisher is replaced or the broadcast ends.
    pub(crate) publisher_token: Option<CancellationToken>,
}

/// Counters of one broadcast, readable without locks.
#[derive(Debug, Default)]
pub struct BroadcastStats {
    /// Frames pushed.
    pub frames: AtomicU64,
    /// Payload bytes pushed.
    pub bytes: AtomicU64,
    /// GoPs opened.
    pub gops: AtomicU64,
    /// Subscribers attached now.
    pub subscribers: AtomicUsize,
    /// GoPs skipped by lagging subscribers, summed over all subscribers.
    pub skipped_gops: AtomicU64,
    /// Publisher takeovers.
    pub takeovers: AtomicU64,
    /// Frames pushed on the video track ([`TrackId::VIDEO`](gopbus_proto::TrackId::VIDEO)).
    pub video_frames: AtomicU64,
    /// When the first publisher attached, in milliseconds since the Unix epoch (0 before).
    pub since_ms: AtomicU64,
}

/// Shared between the broker, the publisher and every subscriber of one broadcast.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) config: BusConfig,
    state: RwLock<State>,
    /// Woken after every change; subscribers wait on one shard each, so that
    /// re-registering after a wake-up does not contend on one lock.
    notify: [Notify; NOTIFY_SHARDS],
    /// Set by a subscriber about to wait (after registering, before looking),
    /// cleared by the next wake-up: a push nobody waits for wakes nobody.
    armed: AtomicBool,
    /// Sequence number of the newest GoP, or `u64::MAX` before the first one.
    pub(crate) newest_seq: AtomicU64,
    /// Set (under the state's lock) when [`State::ended`] is: a caught-up
    /// subscriber asks after every frame whether the broadcast ended, and this
    /// answers without the lock, which the publisher takes per frame.
    ended: AtomicBool,
    /// Highest decode timestamp pushed so far, or `i64::MIN`.
    pub(crate) last_dts: AtomicI64,
    pub(crate) stats: BroadcastStats,
    /// Derived tracks ever added to this broadcast, with their ids: a track
    /// added again (a new worker) keeps its id.
    pub(crate) derived_ids: std::sync::Mutex<Vec<(String, gopbus_proto::TrackId)>>,
}

pub(crate) const NO_GOP: u64 = u64::MAX;

/// Wake-up shards per broadcast.
pub(crate) const NOTIFY_SHARDS: usize = 8;

impl Shared {
    pub(crate) fn new(name: Arc<str>, config: BusConfig) -> Self {
        Self {
            name,
            config,
            state: RwLock::new(State {
                gops: VecDeque::with_capacity(config.window + 1),
                next_seq: 0,
                ended: None,
                epoch: 0,
                publisher_token: None,
            }),
            notify: std::array::from_fn(|_| Notify::new()),
            armed: AtomicBool::new(false),
            newest_seq: AtomicU64::new(NO_GOP),
            ended: AtomicBool::new(false),
            last_dts: AtomicI64::new(i64::MIN),
            stats: BroadcastStats::default(),
            derived_ids: std::sync::Mutex::default(),
        }
    }

    /// Wakes every waiting subscriber (after the change is made).
    ///
    /// Both sides swap `armed`, so one of them sees the other: if this swap
    /// comes after a waiter's [`arm`](Self::arm), it reads its `true` and wakes
    /// it (the waiter registered before arming); if before, the waiter's swap
    /// acquires this one, so the waiter's look after arming sees the change.
    pub(crate) fn wake_all(&self) {
        if self.armed.swap(false, Ordering::AcqRel) {
            for n in &self.notify {
                n.notify_waiters();
            }
        }
    }

    /// Says a subscriber waits: call after registering with its shard
    /// (`Notified::enable`) and before looking for the change it waits for.
    pub(crate) fn arm(&self) {
        self.armed.swap(true, Ordering::AcqRel);
    }

    /// The wake-up shard of subscriber `id`.
    pub(crate) fn waker(&self, id: usize) -> &Notify {
        &self.notify[id % NOTIFY_SHARDS]
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the end in `st`, the state behind this broadcast's lock.
    pub(crate) fn mark_ended(&self, st: &mut State, reason: EndReason) {
        st.ended = Some(reason);
        self.ended.store(true, Ordering::Release);
    }

    /// Whether the broadcast ended; when false, it had not at some point
    /// after the call began (a wake-up follows the end).
    pub(crate) fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Whether a publisher is attached and the broadcast has not ended.
    pub(crate) fn is_live(&self) -> bool {
        let st = self.read();
        st.ended.is_none() && st.publisher_token.is_some()
    }

    /// The newest GoP's header, if any.
    pub(crate) fn newest_header(&self) -> Option<Arc<GopHeader>> {
        self.read().gops.back().map(|g| g.header.clone())
    }

    /// Ends the broadcast from outside its publisher (its source ended): the
    /// current GoP closes, the publisher handle is dead. False if it had ended.
    pub(crate) fn terminate(&self, reason: &EndReason) -> bool {
        let mut st = self.write();
        if st.ended.is_some() {
            return false;
        }
        let how = if *reason == EndReason::PublisherLeft { GopState::Complete } else { GopState::CutShort };
        if let Some(gop) = st.gops.back() {
            gop.close(how);
        }
        self.mark_ended(&mut st, reason.clone());
        let token = st.publisher_token.take();
        drop(st);
        if let Some(t) = token {
            t.cancel();
        }
        self.wake_all();
        true
    }

    /// Bytes held in the GoP window now.
    pub(crate) fn window_bytes(&self) -> usize {
        self.read().gops.iter().map(|g| g.bytes.load(Ordering::Relaxed)).sum()
    }
}
