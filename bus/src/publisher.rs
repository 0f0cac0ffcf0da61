//! The publishing handle of a broadcast.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use gopbus_proto::{EndReason, Frame, GopHeader, TrackId};
use tokio_util::sync::CancellationToken;

use crate::broadcast::{Gop, GopState, Shared};
use crate::broker::Bus;
use crate::error::BusError;

/// Publishes one broadcast: [`open_gop`](Self::open_gop) at each keyframe, then
/// [`push`](Self::push) frames. Never waits for subscribers.
///
/// Dropping the handle ends the broadcast with [`EndReason::PublisherLeft`] and
/// marks the current GoP cut short, unless [`end`](Self::end) was called or
/// another publisher took over.
pub struct Publisher {
    bus: Bus,
    shared: Arc<Shared>,
    epoch: u64,
    token: CancellationToken,
    previous_last_dts: Option<i64>,
    current: Option<Arc<Gop>>,
    /// Set for a derived track: its id and name, stamped on every GoP header and frame.
    track: Option<(TrackId, Arc<str>)>,
    done: bool,
    cut: bool,
}

impl Publisher {
    pub(crate) fn new(
        bus: Bus,
        shared: Arc<Shared>,
        epoch: u64,
        token: CancellationToken,
        previous_last_dts: Option<i64>,
    ) -> Self {
        Self { bus, shared, epoch, token, previous_last_dts, current: None, track: None, done: false, cut: false }
    }

    /// Makes this the publisher of a derived track.
    pub(crate) fn for_track(mut self, id: TrackId, name: Arc<str>) -> Self {
        self.track = Some((id, name));
        self
    }

    /// The id of the derived track this publishes (`None` for a published broadcast).
    pub fn track_id(&self) -> Option<TrackId> {
        self.track.as_ref().map(|(id, _)| *id)
    }

    /// The broadcast's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The highest timestamp the previous publisher pushed, if this one took over:
    /// a new publisher rebases its timestamps after it so players see them rise.
    pub const fn previous_last_dts(&self) -> Option<i64> {
        self.previous_last_dts
    }

    /// Resolves when this handle is replaced by a takeover or the broadcast ends.
    pub async fn replaced(&self) {
        self.token.cancelled().await;
    }

    /// Like [`replaced`](Self::replaced), as an owned future: create it once and
    /// poll it from a driver loop without re-registering each time.
    pub fn replaced_owned(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// Whether this handle is still the broadcast's publisher.
    pub fn is_active(&self) -> bool {
        !self.token.is_cancelled()
    }

    /// Closes the current GoP and opens a new one. The bus assigns `header.seq`.
    /// Returns the new GoP's sequence number.
    ///
    /// A derived track's header lists exactly one track; the bus sets its id and name.
    pub fn open_gop(&mut self, mut header: GopHeader) -> Result<u64, BusError> {
        if let Some((id, name)) = &self.track {
            let [track] = header.tracks.as_mut_slice() else {
                return Err(BusError::InvalidTrack(format!(
                    "a derived track's GoP header lists exactly one track, not {}",
                    header.tracks.len()
                )));
            };
            track.id = *id;
            if *track.name != **name {
                track.name = name.to_string();
            }
        }
        let mut st = self.shared.write();
        self.check(&st)?;
        let first = st.next_seq == 0;
        let tracks_changed = st.gops.back().is_some_and(|g| g.header.tracks != header.tracks);
        header.seq = st.next_seq;
        st.next_seq += 1;
        let seq = header.seq;
        if let Some(prev) = st.gops.back() {
            prev.close(GopState::Complete);
        }
        let gop = Arc::new(Gop::new(header));
        st.gops.push_back(gop.clone());
        while st.gops.len() > self.shared.config.window + 1 {
            st.gops.pop_front();
        }
        self.shared.newest_seq.store(seq, Ordering::Release);
        drop(st);
        self.current = Some(gop);
        self.shared.stats.gops.fetch_add(1, Ordering::Relaxed);
        self.shared.wake_all();
        self.bus.gop_opened(&self.shared.name, first, tracks_changed);
        Ok(seq)
    }

    /// Appends a frame to the current GoP.
    pub fn push(&mut self, mut frame: Frame) -> Result<(), BusError> {
        if self.token.is_cancelled() {
            return Err(self.dead_reason());
        }
        let gop = self.current.as_ref().ok_or(BusError::NoGop)?;
        if let Some((id, _)) = &self.track {
            frame.header.track = *id;
        }
        let len = frame.payload.len();
        let dts = frame.header.dts;
        let frame_is_video = frame.header.track == TrackId::VIDEO;
        gop.frames_mut().push(frame);
        gop.bytes.fetch_add(len, Ordering::Relaxed);
        self.shared.last_dts.fetch_max(dts, Ordering::Relaxed);
        self.shared.stats.frames.fetch_add(1, Ordering::Relaxed);
        if frame_is_video {
            self.shared.stats.video_frames.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.stats.bytes.fetch_add(len as u64, Ordering::Relaxed);
        self.bus.count_published(len);
        self.shared.wake_all();
        Ok(())
    }

    /// Cuts the current GoP short (subscribers get [`Event::CutShort`](crate::Event::CutShort)
    /// at its end); frames are refused until the next [`open_gop`](Self::open_gop).
    /// For a GoP that grew past a limit: its memory stays bounded by that limit
    /// and goes when it leaves the window.
    pub fn cut_gop(&mut self) {
        if let Some(gop) = self.current.take() {
            gop.close(GopState::CutShort);
            self.shared.wake_all();
        }
    }

    /// Ends the broadcast. [`EndReason::PublisherLeft`] closes the current GoP as
    /// complete (a clean stop); any other reason marks it cut short.
    pub fn end(mut self, reason: EndReason) {
        self.finish(reason);
    }

    fn finish(&mut self, reason: EndReason) {
        if self.done {
            return;
        }
        self.done = true;
        let mut st = self.shared.write();
        if st.epoch != self.epoch || st.ended.is_some() {
            return;
        }
        let how = if reason == EndReason::PublisherLeft && !self.cut { GopState::Complete } else { GopState::CutShort };
        if let Some(gop) = st.gops.back() {
            gop.close(how);
        }
        tracing::info!(broadcast = %self.shared.name, %reason, "broadcast ended");
        self.shared.mark_ended(&mut st, reason.clone());
        st.publisher_token = None;
        let had_gop = st.next_seq > 0;
        drop(st);
        self.token.cancel();
        self.shared.wake_all();
        self.bus.remove_if_same(&self.shared);
        self.bus.ended(&self.shared.name, &reason, had_gop);
    }

    fn check(&self, st: &crate::broadcast::State) -> Result<(), BusError> {
        if st.ended.is_some() {
            return Err(BusError::Ended);
        }
        if st.epoch != self.epoch {
            return Err(BusError::TakenOver);
        }
        Ok(())
    }

    fn dead_reason(&self) -> BusError {
        if self.shared.read().ended.is_some() {
            BusError::Ended
        } else {
            BusError::TakenOver
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.cut = true;
        self.finish(EndReason::PublisherLeft);
    }
}
