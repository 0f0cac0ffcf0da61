//! RTMP players of one broadcast served together.
//!
//! A player whose connection task pulled every frame the bus has (it caught up
//! from the GoP cache) and whose socket took everything is handed to a *group*:
//! one task per broadcast (and per [`IngestConfig::player_group`] players) that
//! wakes once per published frame and, for each of its players, pulls the frame
//! from the player's own bus cursor, queues its chunks and writes them with one
//! non-blocking `writev`. The players' own tasks then only wake for what their
//! peers send (acknowledgements, pings, a close). This is what nginx-rtmp does
//! from its event loop; before it, every player's task woke on every frame,
//! and those wake-ups cost more CPU than the writes.
//!
//! A player leaves its group — back to its own task, which is the slow-player
//! path and keeps its semantics (queue limit, GoP skipping on the bus, idle
//! timeout) — as soon as one write does not take everything it had queued, when
//! its broadcast ends, or when its connection takes it back (a command, a
//! shutdown, the close).
//!
//! Audio held for video: in a group, audio messages wait for the next video
//! message and go out in the same `writev`, which halves the writes per player
//! of a 30 fps stream with 48 kHz AAC; audio held longer than
//! [`IngestConfig::audio_hold`] goes out with the next message of any kind (an
//! audio-only stream: every few AAC frames). No timer is involved — arming one
//! per held frame cost more than the writes it saved. Video is never held: what
//! a player sees is not delayed.
//!
//! [`IngestConfig::player_group`]: crate::IngestConfig::player_group
//! [`IngestConfig::audio_hold`]: crate::IngestConfig::audio_hold

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gopbus_bus::groups::Registry;
use gopbus_bus::BroadcastWake;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::chunk::{ChunkEncoder, OutQueue};
use crate::play::{Playing, Queued};

/// The sending side of one connection, shared between its task and, while it
/// plays in a group, the group's task. Whoever holds the lock may write:
/// writes take whole queued messages from the front, so the stream stays in
/// order whoever writes.
pub(crate) struct Link {
    wr: OwnedWriteHalf,
    state: Mutex<LinkState>,
    /// Wakes the connection's task when its group hands the player back.
    handed_back: Notify,
}

/// What the lock of a [`Link`] guards.
pub(crate) struct LinkState {
    /// Bytes waiting for the peer, in order.
    pub(crate) out: OutQueue,
    /// The encoder of the player's media (always type 0 headers: no state but the chunk size).
    pub(crate) enc: ChunkEncoder,
    /// The player, while a group serves it.
    grouped: Option<Playing>,
    /// Set by the group when it hands the player back; taken by the connection.
    back: Option<Playing>,
    /// The group serving the player, told when the connection takes it back.
    group: Option<Arc<Group>>,
    /// Frames the group encoded for all its players, queued for this one after `out`.
    pending: Vec<Arc<Encoded>>,
    pending_len: usize,
}

impl LinkState {
    /// Bytes waiting for the peer.
    pub(crate) fn queued(&self) -> usize {
        self.out.len() + self.pending_len
    }

    /// Moves the shared frames into the player's own queue, in order.
    pub(crate) fn materialize(&mut self) {
        materialize(&mut self.pending, &mut self.pending_len, &mut self.out);
    }
}

fn materialize(pending: &mut Vec<Arc<Encoded>>, pending_len: &mut usize, out: &mut OutQueue) {
    for e in pending.drain(..) {
        for seg in &e.segs {
            out.push(seg.clone());
        }
    }
    *pending_len = 0;
}

/// One frame's RTMP message, encoded once for every player of a group:
/// chunk headers and the frame's payload slices.
struct Encoded {
    key: FrameKey,
    segs: Vec<bytes::Bytes>,
    len: usize,
}

/// Identifies a frame's message while the frame is alive: its payload's
/// address and length, and what is encoded around it — the message header
/// (timestamp, type, the player's message stream) and the FLV tag bytes.
/// Entries of the cache hold the payload, so the address is not reused
/// meanwhile.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FrameKey {
    at: usize,
    len: usize,
    header: crate::chunk::MessageHeader,
    tag: gopbus_proto::flv::FrameTag,
}

/// What a group's players share: the encoder and the frames encoded lately.
struct Shared {
    enc: ChunkEncoder,
    cache: std::collections::VecDeque<Arc<Encoded>>,
}

/// Frames kept encoded (a pass over the players needs the last few; players
/// that joined late may lag by a few more).
const CACHE: usize = 64;

impl Shared {
    /// The message of the frame `key` describes, whose payload is `parts`.
    fn encoded(&mut self, key: FrameKey, parts: &[bytes::Bytes]) -> Arc<Encoded> {
        if let Some(e) = self.cache.iter().rev().find(|e| e.key == key) {
            return e.clone();
        }
        let mut q = OutQueue::default();
        self.enc.encode(key.header, key.tag.prefix(), parts, &mut q);
        let len = q.len();
        let e = Arc::new(Encoded { key, segs: q.take_segments(), len });
        if self.cache.len() == CACHE {
            self.cache.pop_front();
        }
        self.cache.push_back(e.clone());
        e
    }
}

impl Link {
    pub(crate) fn new(wr: OwnedWriteHalf) -> Arc<Self> {
        Arc::new(Self {
            wr,
            state: Mutex::new(LinkState {
                out: OutQueue::default(),
                enc: ChunkEncoder::new(),
                grouped: None,
                back: None,
                group: None,
                pending: Vec::new(),
                pending_len: 0,
            }),
            handed_back: Notify::new(),
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LinkState> {
        // A panic while queuing leaves a valid queue; keep serving the connection.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The socket's writing half (for readiness and the final shutdown).
    pub(crate) const fn writer(&self) -> &OwnedWriteHalf {
        &self.wr
    }

    /// Writes what the socket takes now; true when nothing is left.
    pub(crate) fn try_flush(&self, st: &mut LinkState) -> std::io::Result<bool> {
        if !st.out.try_write_with(|iov| self.wr.try_write_vectored(iov))? {
            return Ok(false);
        }
        if st.pending.is_empty() {
            return Ok(true);
        }
        // The shared frames straight from the group's encoding: nothing is
        // queued per player unless the socket does not take it all.
        let mut iov = [std::io::IoSlice::new(&[]); crate::chunk::MAX_IOV];
        let (count, offered) = crate::chunk::fill_iov(st.pending.iter().flat_map(|e| e.segs.iter()), &mut iov);
        let written = match self.wr.try_write_vectored(&iov[..count]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written == st.pending_len {
            st.pending.clear();
            st.pending_len = 0;
            return Ok(true);
        }
        st.materialize();
        st.out.consume(written);
        if written < offered {
            return Ok(false);
        }
        // More slices than one write takes.
        st.out.try_write_with(|iov| self.wr.try_write_vectored(iov))
    }

    /// The player its group handed back, if it did (a wake-up of
    /// [`Link::handed_back`] may be left over from an earlier hand-back).
    pub(crate) fn reclaim(&self) -> Option<Playing> {
        self.lock().back.take()
    }

    /// Waits until the group hands the player back (see [`Link::reclaim`]).
    pub(crate) async fn handed_back(&self) {
        self.handed_back.notified().await;
    }

    /// Takes the player back from its group, if it is in one or was just handed
    /// back. The group notices on its next pass and forgets the link.
    pub(crate) fn take_back(&self) -> Option<Playing> {
        let mut st = self.lock();
        st.materialize();
        let group = st.group.take();
        let taken = st.grouped.take();
        if taken.is_some() {
            drop(st);
            if let Some(g) = group {
                g.wake();
            }
            return taken;
        }
        st.back.take()
    }
}

/// Settings of the groups.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupConfig {
    /// Most players per group (0: no groups).
    pub(crate) size: usize,
    /// Longest time audio waits for video (zero: written at once).
    pub(crate) audio_hold: Duration,
    /// The player queue limit ([`IngestConfig::player_queue`](crate::IngestConfig::player_queue)).
    pub(crate) player_queue: usize,
    /// The chunk size every connection sends with.
    pub(crate) chunk_size: usize,
    /// Event loops ([`IngestConfig::threads`](crate::IngestConfig::threads);
    /// 0, connections on the caller's runtime, counts as one): each has its
    /// own groups, run on it.
    pub(crate) loops: usize,
}

/// The groups of one RTMP server, by event loop and broadcast instance.
pub(crate) struct Groups {
    config: GroupConfig,
    /// One registry per event loop.
    registries: Vec<Registry<Arc<Link>>>,
    /// The event loops' runtimes, shared with `loops::Loops` (unset: groups
    /// run where they are started).
    loops: std::sync::OnceLock<Arc<[tokio::runtime::Handle]>>,
}

type Group = gopbus_bus::groups::Group<Arc<Link>>;

impl Groups {
    pub(crate) fn new(config: GroupConfig) -> Self {
        Self {
            config,
            registries: (0..config.loops.max(1)).map(|_| Registry::new(config.size)).collect(),
            loops: std::sync::OnceLock::new(),
        }
    }

    /// Groups run on these loops from now on.
    pub(crate) fn set_loops(&self, handles: Arc<[tokio::runtime::Handle]>) {
        let _ = self.loops.set(handles);
    }

    /// Players in a group now, and the groups.
    pub(crate) fn counts(&self) -> (usize, usize) {
        self.registries.iter().fold((0, 0), |(m, r), reg| (m + reg.members(), r + reg.running()))
    }

    /// Hands `playing` (caught up, its queue written) to a group of its
    /// broadcast; gives it back if it cannot be grouped. `publisher` is the
    /// loop of the broadcast's publisher when it is on this node.
    pub(crate) fn join(
        self: &Arc<Self>,
        link: &Arc<Link>,
        playing: Playing,
        publisher: Option<usize>,
    ) -> Option<Playing> {
        let crate::play::PlaySource::Published(sub) = &playing.sub else { return Some(playing) };
        if self.config.size == 0 || link.lock().enc.chunk_size() != self.config.chunk_size {
            return Some(playing);
        }
        let wake = sub.wake_handle();
        let key = wake.broadcast_id();
        let name = sub.name().to_owned();
        let here = crate::loops::current().min(self.registries.len() - 1);
        let players: Vec<usize> = self.registries.iter().map(|r| r.members_of(key)).collect();
        let totals: Vec<usize> = self.registries.iter().map(|r| r.members()).collect();
        let on = pick_loop(&players, &totals, publisher, here, self.config.size);
        self.registries[on].join(
            key,
            |group| {
                let mut st = link.lock();
                st.grouped = Some(playing);
                st.group = Some(group.clone());
                link.clone()
            },
            |group| {
                tracing::debug!(broadcast = %name, "RTMP player group started");
                let task = run(self.clone(), on, key, group.clone(), wake);
                match self.loops.get().and_then(|h| h.get(on)) {
                    Some(handle) => drop(handle.spawn(task)),
                    None => drop(tokio::spawn(task)),
                }
            },
        );
        None
    }
}

/// The loop a caught-up player's group runs on, given the players of its
/// broadcast grouped on each loop now, the players of all broadcasts grouped
/// on each loop, the loop of the broadcast's publisher (when on this node),
/// the player's own loop and the group size.
///
/// The broadcast's first group's worth of players is served on the
/// publisher's loop (the one its frames come from: no thread to cross; one
/// player costs as much as on a single runtime) — while that loop serves less
/// than a group's worth of players more than the loop with the fewest, so
/// that publishers gathered on one loop (`--rtmp-loop-fill`) do not bring
/// every broadcast's players there. Otherwise, on the loop with the fewest
/// players of all broadcasts, then of this one (the publisher's, then the
/// player's own, on a tie): the loops write in parallel, so a frame of one
/// large broadcast reaches its last player after about players ÷ loops
/// writes, not after all of them, and many broadcasts spread over the loops.
fn pick_loop(players: &[usize], totals: &[usize], publisher: Option<usize>, here: usize, first: usize) -> usize {
    let n = players.len().min(totals.len());
    let publisher = publisher.filter(|&p| p < n);
    let fewest = totals[..n].iter().copied().min().unwrap_or(0);
    match publisher {
        Some(p) if players[p] < first && totals[p] < fewest + first => p,
        _ => (0..n).min_by_key(|&i| (totals[i], players[i], Some(i) != publisher, i != here)).unwrap_or(here),
    }
}

/// What a pass over one player found.
enum Pass {
    /// Everything queued was written.
    Written,
    /// Audio waits for video.
    Holding,
    /// The player left the group.
    Left,
}

/// One group's task: serves its players until none is left.
async fn run(groups: Arc<Groups>, on: usize, key: usize, group: Arc<Group>, wake: BroadcastWake) {
    let config = groups.config;
    let mut players: Vec<Arc<Link>> = Vec::new();
    let mut flush_at: Option<Instant> = None;
    let mut enc = ChunkEncoder::new();
    enc.set_chunk_size(config.chunk_size);
    let mut shared = Shared { enc, cache: std::collections::VecDeque::with_capacity(CACHE) };
    loop {
        // Register for the next change before looking, so none is missed.
        let changed = wake.notified();
        tokio::pin!(changed);
        wake.enable(changed.as_mut());
        let joined = group.joined();
        tokio::pin!(joined);
        joined.as_mut().enable();
        group.take_joined(&mut players);
        let now = Instant::now();
        let flush_all = flush_at.is_some_and(|at| now >= at);
        let mut holding = false;
        let before = players.len();
        players.retain(|link| match serve(link, &config, &mut shared, flush_all) {
            Pass::Written => true,
            Pass::Holding => {
                holding = true;
                true
            }
            Pass::Left => false,
        });
        if groups.registries[on].left(key, &group, before - players.len()) {
            return;
        }
        if players.is_empty() {
            // One joined as the last left: take it in.
            continue;
        }
        flush_at = match (holding, flush_at) {
            (false, _) => None,
            (true, Some(at)) if !flush_all => Some(at),
            (true, _) => Some(now + config.audio_hold),
        };
        tokio::select! {
            () = changed => {}
            () = joined => {}
        }
    }
}

/// Pulls what the player's cursor has, queues it and writes it.
fn serve(link: &Link, config: &GroupConfig, shared: &mut Shared, flush_all: bool) -> Pass {
    let mut guard = link.lock();
    let st = &mut *guard;
    let Some(playing) = st.grouped.as_mut() else { return Pass::Left };
    let mut urgent = false;
    while st.out.len() + st.pending_len < config.player_queue {
        let Some(ev) = playing.sub.try_next() else { break };
        match ev {
            gopbus_bus::Event::Frame(f) => {
                let Some(tag) = playing.egress.frame_tag(&f.header) else { continue };
                let header = playing.egress.frame_header(tag.tag_type, f.header.dts);
                let key = FrameKey {
                    at: f.payload.parts().first().map_or(0, |p| p.as_ptr() as usize),
                    len: f.payload.len(),
                    header,
                    tag,
                };
                let e = shared.encoded(key, f.payload.parts());
                playing.viewer.sent_frame(f.payload.len() as u64);
                playing.egress.frames += 1;
                st.pending_len += e.len;
                st.pending.push(e);
                urgent |= tag.tag_type != crate::chunk::types::AUDIO;
            }
            // The connection reads the end itself (a subscriber repeats it) and tells its peer.
            gopbus_bus::Event::End(_) => return hand_back(link, guard),
            ev => {
                // Configuration (per player: what it was sent before) goes behind the frames queued.
                materialize(&mut st.pending, &mut st.pending_len, &mut st.out);
                if let Ok(Queued::Other) = playing.queue(ev, &mut st.enc, &mut st.out) {
                    urgent = true;
                }
            }
        }
    }
    if st.queued() == 0 {
        return Pass::Written;
    }
    if !urgent && !flush_all && !config.audio_hold.is_zero() {
        return Pass::Holding;
    }
    match link.try_flush(st) {
        Ok(true) => Pass::Written,
        // Not all taken, or the socket failed: its own task deals with it.
        Ok(false) | Err(_) => hand_back(link, guard),
    }
}

fn hand_back(link: &Link, mut st: MutexGuard<'_, LinkState>) -> Pass {
    st.materialize();
    st.back = st.grouped.take();
    st.group = None;
    drop(st);
    link.handed_back.notify_one();
    Pass::Left
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::{csid, types, ChunkDecoder, MessageHeader};
    use bytes::{Bytes, BytesMut};

    /// An inter frame's message on stream 1 (the tag bytes `27 01 00 00 00`).
    fn key(at: &Bytes, timestamp: u32) -> FrameKey {
        let frame = gopbus_proto::FrameHeader {
            track: gopbus_proto::TrackId::VIDEO,
            dts: i64::from(timestamp),
            cts: 0,
            flags: gopbus_proto::FrameFlags::default(),
            len: at.len() as u32,
        };
        FrameKey {
            at: at.as_ptr() as usize,
            len: at.len(),
            header: MessageHeader { csid: csid::VIDEO, timestamp, type_id: types::VIDEO, stream_id: 1 },
            tag: gopbus_proto::flv::FrameTag::video(&frame),
        }
    }

    /// Joins `n` players of one broadcast whose connections alternate over
    /// `loops` loops and counts where their groups run.
    fn place(n: usize, loops: usize, publisher: Option<usize>) -> Vec<usize> {
        let mut players = vec![0; loops];
        for i in 0..n {
            let on = pick_loop(&players, &players, publisher, i % loops, 64);
            players[on] += 1;
        }
        players
    }

    /// Joins the players of several broadcasts, `(players, publisher's loop)`
    /// each, one broadcast after the other (or round-robin when `interleave`),
    /// and counts where their groups run: per broadcast, and in all.
    fn place_many(
        broadcasts: &[(usize, Option<usize>)],
        loops: usize,
        interleave: bool,
    ) -> (Vec<Vec<usize>>, Vec<usize>) {
        let mut players = vec![vec![0; loops]; broadcasts.len()];
        let mut totals = vec![0; loops];
        let mut joins: Vec<usize> = Vec::new();
        if interleave {
            let most = broadcasts.iter().map(|b| b.0).max().unwrap_or(0);
            for round in 0..most {
                joins.extend((0..broadcasts.len()).filter(|&b| broadcasts[b].0 > round));
            }
        } else {
            for (b, &(n, _)) in broadcasts.iter().enumerate() {
                joins.extend(std::iter::repeat_n(b, n));
            }
        }
        for (i, b) in joins.into_iter().enumerate() {
            let on = pick_loop(&players[b], &totals, broadcasts[b].1, i % loops, 64);
            players[b][on] += 1;
            totals[on] += 1;
        }
        (players, totals)
    }

    #[test]
    fn groups_fill_the_publishers_loop_first_then_spread_evenly() {
        // One player, or a group's worth: on the publisher's loop, whichever
        // loop their connections are on.
        assert_eq!(place(1, 2, Some(1)), vec![0, 1]);
        assert_eq!(place(64, 2, Some(0)), vec![64, 0]);
        // Past the first group the other loop takes players until even.
        assert_eq!(place(100, 2, Some(0)), vec![64, 36]);
        assert_eq!(place(128, 2, Some(1)), vec![64, 64]);
        assert_eq!(place(1000, 2, Some(0)), vec![500, 500]);
        assert_eq!(place(1000, 4, Some(2)), vec![250, 250, 250, 250]);
        // No publisher here (a broadcast from the bus): even from the start,
        // each on its own loop while the counts tie.
        assert_eq!(place(3, 2, None), vec![2, 1]);
        assert_eq!(pick_loop(&[0, 0], &[0, 0], None, 1, 64), 1);
        // One registry (connections on the shared runtime).
        assert_eq!(place(100, 1, Some(0)), vec![100]);
        // A publisher index past the loops (cannot happen) counts as none.
        assert_eq!(pick_loop(&[5, 3], &[5, 3], Some(7), 0, 64), 1);
    }

    #[test]
    fn publishers_on_one_loop_do_not_bring_every_broadcasts_players_there() {
        // Twenty broadcasts of 30 players, every publisher on loop 0 (the
        // loops fill in order): the loops end within a group's worth of each
        // other, whether the players come broadcast by broadcast or mixed.
        for interleave in [false, true] {
            let (_, totals) = place_many(&[(30, Some(0)); 20], 2, interleave);
            assert_eq!(totals.iter().sum::<usize>(), 600);
            assert!(totals[0].abs_diff(totals[1]) <= 64, "{totals:?} (interleaved: {interleave})");
        }
        // The first broadcasts' players are all on their publisher's loop
        // while it is less than a group's worth ahead.
        // Past that, the loop with the fewest takes players until it is less
        // than a group's worth behind.
        let (per, totals) = place_many(&[(30, Some(0)), (30, Some(0)), (30, Some(0))], 2, false);
        assert_eq!(per, vec![vec![30, 0], vec![30, 0], vec![17, 13]]);
        assert_eq!(totals, vec![77, 13]);
        // Publishers spread over the loops: each broadcast stays on its own.
        let (per, _) = place_many(&[(30, Some(0)), (30, Some(1)), (30, Some(0)), (30, Some(1))], 2, true);
        assert_eq!(per, vec![vec![30, 0], vec![0, 30], vec![30, 0], vec![0, 30]]);
        // One large broadcast among small ones still spreads over both loops.
        let (per, totals) = place_many(&[(30, Some(0)), (30, Some(0)), (400, Some(0))], 2, false);
        assert!(per[2][1] >= 150, "{per:?}");
        assert!(totals[0].abs_diff(totals[1]) <= 64, "{totals:?}");
    }

    #[test]
    fn a_frame_is_encoded_once_for_a_group_around_its_own_payload() {
        let mut enc = ChunkEncoder::new();
        enc.set_chunk_size(4096);
        let mut shared = Shared { enc, cache: std::collections::VecDeque::new() };
        let payload = Bytes::from((0..10_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let a = shared.encoded(key(&payload, 40), std::slice::from_ref(&payload));
        let b = shared.encoded(key(&payload, 40), std::slice::from_ref(&payload));
        assert!(Arc::ptr_eq(&a, &b), "the second player got a second encoding");
        // The payload goes out as slices of the frame's own buffer: no byte copied.
        let (start, end) = (payload.as_ptr() as usize, payload.as_ptr() as usize + payload.len());
        let shared_bytes: usize = a
            .segs
            .iter()
            .filter(|s| (s.as_ptr() as usize) >= start && (s.as_ptr() as usize) < end)
            .map(Bytes::len)
            .sum();
        assert_eq!(shared_bytes, payload.len());
        // And it is the message a player decodes.
        let wire: Vec<u8> = a.segs.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(wire.len(), a.len);
        let mut dec = ChunkDecoder::new(1 << 20);
        dec.set_chunk_size(4096).unwrap();
        let m = dec.decode(&mut BytesMut::from(&wire[..])).unwrap().unwrap();
        assert_eq!((m.timestamp, m.type_id, m.len), (40, types::VIDEO, 5 + payload.len()));
        assert_eq!(&m.contiguous()[..5], &[0x27, 1, 0, 0, 0]);
        assert_eq!(&m.contiguous()[5..], &payload[..]);
        // A player on another message stream gets its own encoding, on its stream.
        let mut other = key(&payload, 40);
        other.header.stream_id = 2;
        let c = shared.encoded(other, std::slice::from_ref(&payload));
        assert!(!Arc::ptr_eq(&a, &c), "a player on stream 2 got stream 1's message");
        let wire: Vec<u8> = c.segs.iter().flat_map(|s| s.iter().copied()).collect();
        let m = dec.decode(&mut BytesMut::from(&wire[..])).unwrap().unwrap();
        assert_eq!(m.stream_id, 2);
        // Another frame is another encoding; the cache keeps the last CACHE frames.
        for ts in 0..CACHE as u32 + 1 {
            let p = Bytes::from(vec![ts as u8; 100]);
            shared.encoded(key(&p, ts), std::slice::from_ref(&p));
        }
        assert_eq!(shared.cache.len(), CACHE);
        assert!(!shared.cache.iter().any(|e| Arc::ptr_eq(e, &a)), "the oldest entry was not dropped");
    }
}
