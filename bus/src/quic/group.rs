//! Remote subscribers of one broadcast served together.
//!
//! A remote subscriber's task ([`send_broadcast`](super::egress::send_broadcast))
//! that has sent everything its cursor had hands its state to a *group*: one
//! task per broadcast (and per [`Groups`] size) that wakes once per published
//! frame and, for each of its subscribers, takes the frame from the
//! subscriber's own cursor and writes it on the subscriber's connection
//! without waiting. Before, every subscriber's task woke on every frame, and
//! with hundreds of subscribers those wake-ups cost more than the writes.
//! The same shape as the RTMP player groups (`ingest`'s `fanout`).
//!
//! A subscriber goes back to its own task, which keeps every rule of the
//! single-subscriber path, when its group meets anything but a frame its
//! stream takes at once: a write that waits for flow control, a new GoP
//! (streams to open), a skip, a cut, the end, an error. The own task rejoins
//! a group once it has caught up again — for a healthy subscriber that is once
//! per GoP. A cancelled subscription takes its state back from the group.
//!
//! Held audio (`--bus-audio-hold-ms`) stays per subscriber; the group wakes
//! for the earliest hold that runs out, one timer per group instead of one
//! per subscriber.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::egress::{Headers, Pass, Sending};
use crate::groups::{lock, Group, Registry};
use crate::BroadcastWake;

/// Remote subscribers per group by default.
pub const GROUP_SIZE: usize = 64;

/// The groups of one bus server.
pub(crate) type Groups = Registry<Arc<Member>>;

impl Default for Groups {
    fn default() -> Self {
        Self::new(GROUP_SIZE)
    }
}

/// One subscriber's state while a group may serve it.
pub(crate) struct Member {
    slot: Mutex<Slot>,
    /// Wakes the subscriber's own task when its group hands it back.
    handed_back: Notify,
}

struct Slot {
    /// The state, while the group serves it.
    grouped: Option<Box<Sending>>,
    /// The state the group handed back, for the own task.
    back: Option<Box<Sending>>,
    /// The group, told when the own task takes the state back.
    group: Option<Arc<Group<Arc<Member>>>>,
}

/// Hands `sending` (caught up) to a group of its broadcast.
pub(crate) fn join(groups: &Arc<Groups>, sending: Box<Sending>) -> Arc<Member> {
    let wake = sending.sub.wake_handle();
    let key = wake.broadcast_id();
    let name = sending.sub.name().to_owned();
    groups.join(
        key,
        |group| {
            Arc::new(Member {
                slot: Mutex::new(Slot { grouped: Some(sending), back: None, group: Some(group.clone()) }),
                handed_back: Notify::new(),
            })
        },
        |group| {
            tracing::debug!(broadcast = %name, "remote subscriber group started");
            tokio::spawn(run(groups.clone(), key, group.clone(), wake));
        },
    )
}

impl Member {
    /// Waits until the group hands the state back (it left the group).
    pub(crate) async fn handed_back(&self) -> Box<Sending> {
        loop {
            if let Some(s) = lock(&self.slot).back.take() {
                return s;
            }
            // A hand-back between the look and the wait leaves a permit: not missed.
            self.handed_back.notified().await;
        }
    }

    /// Takes the state back from the group (or as the group handed it back).
    /// The group notices on its next pass and forgets the subscriber.
    pub(crate) fn take_back(&self) -> Option<Box<Sending>> {
        let mut slot = lock(&self.slot);
        let group = slot.group.take();
        if let Some(s) = slot.grouped.take() {
            drop(slot);
            if let Some(g) = group {
                g.wake();
            }
            return Some(s);
        }
        slot.back.take()
    }
}

/// One group's task: serves its subscribers until none is left.
async fn run(groups: Arc<Groups>, key: usize, group: Arc<Group<Arc<Member>>>, wake: BroadcastWake) {
    let mut members: Vec<Arc<Member>> = Vec::new();
    let mut headers = Headers::default();
    loop {
        // Register for the next change before looking, so none is missed.
        let changed = wake.notified();
        tokio::pin!(changed);
        wake.enable(changed.as_mut());
        let joined = group.joined();
        tokio::pin!(joined);
        joined.as_mut().enable();
        group.take_joined(&mut members);
        let now = Instant::now();
        let mut hold_over: Option<Instant> = None;
        let before = members.len();
        headers.clear();
        members.retain(|m| match serve(m, now, &mut headers) {
            Some(until) => {
                hold_over = match (hold_over, until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                true
            }
            None => false,
        });
        if groups.left(key, &group, before - members.len()) {
            return;
        }
        if members.is_empty() {
            // One joined as the last left: take it in.
            continue;
        }
        let hold = async {
            match hold_over {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = changed => {}
            () = joined => {}
            () = hold => {}
        }
    }
}

/// One pass over one subscriber: `Some(hold)` while it stays (with the end
/// of its audio hold, if it holds audio), `None` once it left the group.
fn serve(member: &Member, now: Instant, headers: &mut Headers) -> Option<Option<Instant>> {
    let mut slot = lock(&member.slot);
    let sending = slot.grouped.as_mut()?;
    match sending.pass(now, headers) {
        Pass::Done => Some(sending.hold_until),
        Pass::Back => {
            slot.back = slot.grouped.take();
            slot.group = None;
            drop(slot);
            member.handed_back.notify_one();
            None
        }
    }
}
