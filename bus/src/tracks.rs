//! Subscribing to a chosen set of tracks: the published ones and derived ones,
//! merged GoP by GoP in decode order.
//!
//! A broadcast's derived tracks are broadcasts of their own on the bus
//! (`alice/audio/opus`), whose GoPs start at the timestamps of the source GoPs
//! they render. A [`TrackSubscriber`] reads one [`Subscriber`] per bus
//! broadcast involved (a *lane*) and merges them:
//!
//! - The lane of the first chosen track drives: a merged GoP starts at each of
//!   its GoPs (for a video track, at its keyframe), and its lag rules apply.
//! - Another lane joins a GoP when it has a GoP starting at the same timestamp.
//!   The merger waits for a lane that is live but behind (a transcoder
//!   finishing the GoP), until the driving lane is more than one GoP behind its
//!   newest (a stalled worker must not freeze the driving track); a lane that has no GoP for that timestamp, or whose
//!   broadcast is not live (no worker publishes it now), is left out of that GoP
//!   and its GoP header does not list its tracks. A lane whose worker went away
//!   is picked up again at the first GoP a new worker publishes; so is the
//!   driving lane's, as long as the source is live.
//! - Inside a GoP, frames come in decode-timestamp order across lanes, each
//!   lane's frames in its own order.
//!
//! A subscriber of the published tracks only has one lane and never waits for
//! anything: it is a [`Subscriber`] with a track filter.

use std::sync::Arc;

use gopbus_proto::catalog::derived_name;
use gopbus_proto::{EndReason, GopHeader, TrackId, TrackInfo};

use crate::{Bus, Event, SubscribeOptions, Subscriber};

struct Lane {
    /// The bus broadcast this lane reads (`alice` or `alice/audio/opus`).
    bus_name: String,
    /// The chosen tracks it carries, by name.
    names: Vec<String>,
    sub: Subscriber,
    /// The next event, read ahead.
    head: Option<Event>,
    /// Ids of the chosen tracks in the current GoP.
    ids: Vec<TrackId>,
    /// Still has frames of the current merged GoP to give.
    in_gop: bool,
}

impl Lane {
    fn takes(&self, track: TrackId) -> bool {
        self.ids.contains(&track)
    }
}

enum Phase {
    /// Between GoPs: the next event is a GoP header.
    Align,
    /// Inside GoP `seq` (the driving lane's number).
    InGop {
        seq: u64,
    },
    Ended(EndReason),
}

/// Subscribes to chosen tracks of a broadcast ([`Bus::subscribe_tracks`]). Emits
/// the same [`Event`]s as a [`Subscriber`]: each [`Event::Gop`] header lists the
/// chosen tracks present in that GoP, with their decoder configuration;
/// `CutShort`, `Skipped` and `End` are the driving lane's.
///
/// Memory: one cursor per lane, one read-ahead event per lane.
pub struct TrackSubscriber {
    bus: Bus,
    /// The broadcast.
    name: String,
    lanes: Vec<Lane>,
    phase: Phase,
    /// The driving lane's GoP was cut short; reported at the end of the merged GoP.
    cut: bool,
    /// The driving lane's allowed lag, and the other lanes'.
    lead_lag: Option<u64>,
    secondary_lag: u64,
    /// Longest wait for a live but silent derived lane (none: a GoP).
    max_wait: Option<std::time::Duration>,
    /// The start of the last merged GoP given out.
    last_start: Option<i64>,
    /// The driving (derived) lane was picked up again from a new worker: its
    /// GoPs up to this start were given out already and are passed over.
    resumed_after: Option<i64>,
}

impl TrackSubscriber {
    pub(crate) fn new(bus: Bus, name: &str, tracks: &[&str], opts: SubscribeOptions) -> Self {
        let tracks: Vec<&str> =
            if tracks.is_empty() { vec![TrackInfo::VIDEO, TrackInfo::AUDIO] } else { tracks.to_vec() };
        let secondary_lag = bus.config().window as u64;
        let mut lanes: Vec<Lane> = Vec::new();
        for track in tracks {
            let bus_name = if track == TrackInfo::VIDEO || track == TrackInfo::AUDIO {
                name.to_owned()
            } else {
                derived_name(name, track)
            };
            if let Some(lane) = lanes.iter_mut().find(|l| l.bus_name == bus_name) {
                lane.names.push(track.to_owned());
                continue;
            }
            let lane_opts = if lanes.is_empty() {
                opts
            } else {
                SubscribeOptions { start: gopbus_proto::wire::StartAt::CurrentGop, max_lag: Some(secondary_lag) }
            };
            let sub = bus.subscribe(&bus_name, lane_opts);
            lanes.push(Lane {
                bus_name,
                names: vec![track.to_owned()],
                sub,
                head: None,
                ids: Vec::new(),
                in_gop: false,
            });
        }
        Self {
            bus,
            name: name.to_owned(),
            lanes,
            phase: Phase::Align,
            cut: false,
            lead_lag: opts.max_lag,
            secondary_lag,
            max_wait: None,
            last_start: None,
            resumed_after: None,
        }
    }

    /// Waits at most `wait` for a derived lane whose worker is live but
    /// sends nothing, instead of until the driving lane is a GoP behind; the
    /// lane is then left out of the rest of that GoP. For players that must
    /// not freeze (WebRTC): with OBS's 5–8 s keyframes a GoP is a long stall.
    pub fn with_max_wait(mut self, wait: std::time::Duration) -> Self {
        self.max_wait = Some(wait);
        self
    }

    /// The bus broadcasts read (the source first, then derived tracks).
    pub fn lanes(&self) -> impl Iterator<Item = &str> {
        self.lanes.iter().map(|l| l.bus_name.as_str())
    }

    /// GoPs the driving lane skipped because this subscriber fell behind.
    pub fn skipped_gops(&self) -> u64 {
        self.lanes[0].sub.skipped_gops()
    }

    /// The next event if one is ready now, without waiting (as
    /// [`Subscriber::try_next`]); relies on [`next`](Self::next) being cancel-safe.
    pub fn try_next(&mut self) -> Option<Event> {
        use std::future::Future;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::pin!(self.next()).poll(&mut cx) {
            std::task::Poll::Ready(ev) => Some(ev),
            std::task::Poll::Pending => None,
        }
    }

    /// Waits for the next event. Cancel-safe: events read ahead are kept.
    pub async fn next(&mut self) -> Event {
        loop {
            match &self.phase {
                Phase::Ended(r) => return Event::End(r.clone()),
                Phase::Align => {
                    if let Some(ev) = self.align().await {
                        return ev;
                    }
                }
                Phase::InGop { seq } => {
                    let seq = *seq;
                    if let Some(ev) = self.in_gop(seq).await {
                        return ev;
                    }
                }
            }
        }
    }

    /// Starts the next merged GoP; `None` to go round again.
    async fn align(&mut self) -> Option<Event> {
        // The driving lane's next GoP header.
        let lead = loop {
            let lane = &mut self.lanes[0];
            let ev = match lane.head.take() {
                Some(ev) => ev,
                None => lane.sub.next().await,
            };
            match ev {
                Event::Gop(h) => break h,
                Event::Skipped { from, to } => return Some(Event::Skipped { from, to }),
                Event::End(_) if lane.bus_name != self.name && self.bus.is_live(&self.name) => {
                    // A derived track's worker went away while its source goes on:
                    // wait for the worker that takes the track over. It may
                    // start at the GoP given out last: that one is passed over.
                    self.resumed_after = self.last_start;
                    let opts =
                        SubscribeOptions { start: gopbus_proto::wire::StartAt::CurrentGop, max_lag: self.lead_lag };
                    lane.sub = self.bus.subscribe(&lane.bus_name, opts);
                }
                Event::End(r) => {
                    self.phase = Phase::Ended(r.clone());
                    return Some(Event::End(r));
                }
                Event::Frame(_) | Event::CutShort { .. } => {}
            }
        };
        let target = lead.start_dts;
        if let Some(after) = self.resumed_after {
            if target <= after {
                // Its frames are passed over as this goes round again.
                return None;
            }
            self.resumed_after = None;
        }
        self.last_start = Some(target);
        let mut tracks: Vec<TrackInfo> = Vec::new();
        let mut present = vec![true];
        for i in 1..self.lanes.len() {
            present.push(self.reach(i, target).await);
        }
        // The header lists the chosen tracks in the order they were asked for.
        let headers: Vec<Option<Arc<GopHeader>>> = self
            .lanes
            .iter_mut()
            .enumerate()
            .map(|(i, l)| match (i, l.head.take()) {
                (0, _) => Some(lead.clone()),
                (_, Some(Event::Gop(h))) if present[i] => Some(h),
                (_, other) => {
                    l.head = other;
                    None
                }
            })
            .collect();
        for (lane, header) in self.lanes.iter_mut().zip(&headers) {
            lane.ids.clear();
            lane.in_gop = header.is_some();
            let Some(h) = header else { continue };
            for name in &lane.names {
                if let Some(t) = h.tracks.iter().find(|t| &t.name == name) {
                    lane.ids.push(t.id);
                    tracks.push(t.clone());
                }
            }
        }
        self.cut = false;
        self.phase = Phase::InGop { seq: lead.seq };
        Some(Event::Gop(Arc::new(GopHeader {
            seq: lead.seq,
            start_dts: target,
            tracks,
            metadata: lead.metadata.clone(),
        })))
    }

    /// Brings lane `i` to its GoP starting at `target`; false if it has none.
    async fn reach(&mut self, i: usize, target: i64) -> bool {
        loop {
            match &self.lanes[i].head {
                Some(Event::Gop(h)) if h.start_dts == target => return true,
                Some(Event::Gop(h)) if h.start_dts > target => return false,
                Some(_) => self.lanes[i].head = None,
                None => {}
            }
            // Take what is ready without waiting; wait only for a lane that has a publisher.
            let ev = match self.lanes[i].sub.try_next() {
                Some(ev) => ev,
                None if !self.bus.is_live(&self.lanes[i].bus_name) => return false,
                None => match self.pull(i).await {
                    Some(ev) => ev,
                    None => return false,
                },
            };
            let lane = &mut self.lanes[i];
            match ev {
                Event::Gop(h) => lane.head = Some(Event::Gop(h)),
                Event::End(_) => {
                    // Its worker went away: watch for the next one.
                    let opts = SubscribeOptions {
                        start: gopbus_proto::wire::StartAt::CurrentGop,
                        max_lag: Some(self.secondary_lag),
                    };
                    lane.sub = self.bus.subscribe(&lane.bus_name, opts);
                    return false;
                }
                Event::Frame(_) | Event::CutShort { .. } | Event::Skipped { .. } => {}
            }
        }
    }

    /// Lane `i`'s next event; `None` if it is not the driving lane and stalls:
    /// a live worker that produces nothing may not hold the driving track back
    /// forever, so once the driving lane is more than one GoP behind its source
    /// the waiting stops (the lane is then left out of the current GoP).
    async fn pull(&mut self, i: usize) -> Option<Event> {
        let (lead, rest) = self.lanes.split_at_mut(1);
        if i == 0 {
            return Some(lead[0].sub.next().await);
        }
        let lead = &lead[0].sub;
        let lane = &mut rest[i - 1];
        let max_wait = self.max_wait;
        // A timer only when asked for: this is also polled without a runtime
        // (the zero-copy bench drives it by hand), where none can be made.
        let silent = async move {
            match max_wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased; // what the lane has ready is taken first
            ev = lane.sub.next() => Some(ev),
            () = lead.until_behind(1) => {
                tracing::debug!(track = %lane.bus_name, "derived track stalled; left out of this GoP");
                None
            }
            () = silent => {
                tracing::debug!(track = %lane.bus_name, "derived track silent too long; left out of this GoP");
                None
            }
        }
    }

    /// The next frame of merged GoP `seq`; `None` when it is over.
    async fn in_gop(&mut self, seq: u64) -> Option<Event> {
        for i in 0..self.lanes.len() {
            while self.lanes[i].in_gop && self.lanes[i].head.is_none() {
                let Some(ev) = self.pull(i).await else {
                    self.lanes[i].in_gop = false;
                    continue;
                };
                let lane = &mut self.lanes[i];
                match ev {
                    Event::Frame(f) if lane.takes(f.header.track) => lane.head = Some(Event::Frame(f)),
                    Event::Frame(_) => {}
                    Event::CutShort { .. } => {
                        lane.in_gop = false;
                        if i == 0 {
                            self.cut = true;
                        }
                    }
                    Event::Skipped { from, to } if i == 0 => {
                        // The driving lane fell behind: this GoP is abandoned.
                        for l in &mut self.lanes {
                            l.in_gop = false;
                            if matches!(l.head, Some(Event::Frame(_))) {
                                l.head = None;
                            }
                        }
                        self.phase = Phase::Align;
                        return Some(Event::Skipped { from, to });
                    }
                    ev @ (Event::Gop(_) | Event::Skipped { .. } | Event::End(_)) => {
                        lane.in_gop = false;
                        lane.head = Some(ev);
                    }
                }
            }
        }
        let pick = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match &l.head {
                Some(Event::Frame(f)) if l.in_gop => Some((f.header.dts, i)),
                _ => None,
            })
            .min();
        if let Some((_, i)) = pick {
            return self.lanes[i].head.take();
        }
        // Every lane is done with this GoP.
        self.phase = Phase::Align;
        if self.cut {
            self.cut = false;
            return Some(Event::CutShort { seq });
        }
        None
    }
}
