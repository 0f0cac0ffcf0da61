//! The bus contract (DESIGN.md, "The bus contract"), point by point, in process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gopbus_bus::{Bus, BusConfig, BusError, Event, StartAt, SubscribeOptions, Subscriber};
use gopbus_proto::{EndReason, Frame, FrameFlags, FrameHeader, GopHeader, Payload, TrackId};

fn header() -> GopHeader {
    GopHeader { seq: 0, start_dts: 0, tracks: Vec::new(), metadata: None }
}

fn frame(dts: i64, key: bool, payload: Bytes) -> Frame {
    let flags = if key { FrameFlags::KEYFRAME } else { FrameFlags::default() };
    let len = payload.len() as u32;
    Frame {
        header: FrameHeader { track: TrackId::VIDEO, dts, cts: 0, flags, len },
        payload: Payload::from_bytes(payload),
    }
}

/// Pushes GoP `g` with `n` frames, dts = g * 100 + i.
fn push_gop(p: &mut gopbus_bus::Publisher, g: i64, n: i64) {
    p.open_gop(GopHeader { start_dts: g * 100, ..header() }).unwrap();
    for i in 0..n {
        p.push(frame(g * 100 + i, i == 0, Bytes::from(vec![g as u8; 10]))).unwrap();
    }
}

fn drain(s: &mut Subscriber) -> Vec<Event> {
    std::iter::from_fn(|| s.try_next()).take_while(|e| !matches!(e, Event::End(_))).collect()
}

fn dts_of(events: &[Event]) -> Vec<i64> {
    events.iter().filter_map(|e| if let Event::Frame(f) = e { Some(f.header.dts) } else { None }).collect()
}

#[test]
fn late_joiner_starts_at_current_gop_keyframe() {
    let bus = Bus::new(BusConfig::default());
    let mut p = bus.publish("a");
    push_gop(&mut p, 0, 5);
    push_gop(&mut p, 1, 3);
    let mut s = bus.subscribe("a", SubscribeOptions::default());
    let ev = drain(&mut s);
    assert!(matches!(&ev[0], Event::Gop(h) if h.seq == 1 && h.start_dts == 100));
    assert_eq!(dts_of(&ev), vec![100, 101, 102]);
    let Event::Frame(first) = &ev[1] else { panic!("frame expected") };
    assert!(first.header.is_keyframe());
}

#[test]
fn next_gop_start_waits_for_the_next_keyframe() {
    let bus = Bus::new(BusConfig::default());
    let mut p = bus.publish("a");
    push_gop(&mut p, 0, 5);
    let mut s = bus.subscribe("a", SubscribeOptions { start: StartAt::NextGop, max_lag: None });
    assert!(s.try_next().is_none());
    push_gop(&mut p, 1, 2);
    let ev = drain(&mut s);
    assert_eq!(dts_of(&ev), vec![100, 101]);
}

#[test]
fn every_subscriber_gets_every_frame_in_order_with_shared_payloads() {
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let mut p = bus.publish("a");
    let mut subs: Vec<_> = (0..10).map(|_| bus.subscribe("a", SubscribeOptions::default())).collect();
    let payload = Bytes::from_static(b"shared payload");
    p.open_gop(header()).unwrap();
    for i in 0..20 {
        p.push(frame(i, i == 0, payload.clone())).unwrap();
    }
    push_gop(&mut p, 1, 3);
    p.end(EndReason::PublisherLeft);
    for s in &mut subs {
        let ev: Vec<Event> = std::iter::from_fn(|| s.try_next()).take(100).collect();
        let mut expected: Vec<i64> = (0..20).collect();
        expected.extend([100, 101, 102]);
        assert_eq!(dts_of(&ev), expected);
        assert!(matches!(ev.last(), Some(Event::End(EndReason::PublisherLeft))));
        // Zero-copy fan-out: the payload is the very same memory.
        let Event::Frame(f) = &ev[1] else { panic!() };
        assert_eq!(f.payload.parts()[0].as_ptr(), payload.as_ptr());
        assert!(!ev.iter().any(|e| matches!(e, Event::CutShort { .. } | Event::Skipped { .. })));
    }
}

#[test]
fn lagging_subscriber_jumps_to_newest_and_the_skip_is_counted() {
    let bus = Bus::new(BusConfig { window: 3, max_lag: 1 });
    let mut p = bus.publish("a");
    let mut slow = bus.subscribe("a", SubscribeOptions::default());
    let mut fast = bus.subscribe("a", SubscribeOptions::default());
    push_gop(&mut p, 0, 3);
    assert!(matches!(slow.try_next(), Some(Event::Gop(_))));
    assert!(matches!(slow.try_next(), Some(Event::Frame(_))));
    let mut fast_events = drain(&mut fast);
    for g in 1..6 {
        push_gop(&mut p, g, 3);
        fast_events.extend(drain(&mut fast));
    }
    // The fast one saw everything.
    assert_eq!(dts_of(&fast_events).len(), 18);
    // The slow one jumps from GoP 0 to GoP 5 and continues there.
    assert!(matches!(slow.try_next(), Some(Event::Skipped { from: 0, to: 5 })));
    let ev = drain(&mut slow);
    assert!(matches!(&ev[0], Event::Gop(h) if h.seq == 5));
    assert_eq!(dts_of(&ev), vec![500, 501, 502]);
    assert_eq!(slow.skipped_gops(), 5);
    assert_eq!(bus.broadcasts()[0].skipped_gops, 5);
}

/// A payload whose owner counts how many are alive.
fn counted(live: &Arc<AtomicUsize>) -> Bytes {
    struct Owner(Arc<AtomicUsize>, Vec<u8>);
    impl AsRef<[u8]> for Owner {
        fn as_ref(&self) -> &[u8] {
            &self.1
        }
    }
    impl Drop for Owner {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    live.fetch_add(1, Ordering::SeqCst);
    Bytes::from_owner(Owner(live.clone(), vec![0; 1000]))
}

#[test]
fn stalled_subscribers_do_not_grow_memory_beyond_the_window() {
    let window = 2;
    let bus = Bus::new(BusConfig { window, max_lag: 1 });
    let mut p = bus.publish("a");
    let live = Arc::new(AtomicUsize::new(0));
    // Subscribers that read a little and then never again, each stuck in a different GoP.
    let mut stalled = Vec::new();
    for g in 0..50 {
        p.open_gop(GopHeader { start_dts: g * 100, ..header() }).unwrap();
        let mut s = bus.subscribe("a", SubscribeOptions::default());
        assert!(matches!(s.try_next(), Some(Event::Gop(_))));
        stalled.push(s);
        for i in 0..10 {
            p.push(frame(g * 100 + i, i == 0, counted(&live))).unwrap();
        }
        // Only the window plus the current GoP hold payloads.
        assert!(live.load(Ordering::SeqCst) <= (window + 1) * 10, "{} payloads alive", live.load(Ordering::SeqCst));
    }
    assert_eq!(live.load(Ordering::SeqCst), (window + 1) * 10);
    assert_eq!(bus.broadcasts()[0].window_bytes, (window + 1) * 10 * 1000);
    drop(p);
    assert_eq!(
        live.load(Ordering::SeqCst),
        (window + 1) * 10,
        "ended broadcast still serves its window to subscribers"
    );
    drop(stalled);
    assert_eq!(live.load(Ordering::SeqCst), 0);
    assert_eq!(bus.slots(), 0);
}

#[test]
fn publisher_drop_mid_gop_cuts_short_and_ends_once() {
    let bus = Bus::new(BusConfig::default());
    let mut p = bus.publish("a");
    let mut s = bus.subscribe("a", SubscribeOptions::default());
    push_gop(&mut p, 0, 3);
    drop(p);
    let ev: Vec<Event> = std::iter::from_fn(|| s.try_next()).take(10).collect();
    assert_eq!(dts_of(&ev), vec![0, 1, 2]);
    assert!(matches!(ev[4], Event::CutShort { seq: 0 }));
    assert!(matches!(ev[5], Event::End(EndReason::PublisherLeft)));
    assert!(!bus.is_live("a"));
    // Explicit end with a reason.
    let mut p = bus.publish("b");
    let mut s = bus.subscribe("b", SubscribeOptions::default());
    push_gop(&mut p, 0, 1);
    p.end(EndReason::KeyRevoked);
    let ev = drain(&mut s);
    assert_eq!(dts_of(&ev), vec![0]);
    assert!(matches!(s.try_next(), Some(Event::End(EndReason::KeyRevoked))));
}

#[test]
fn takeover_keeps_subscribers_and_kills_the_old_handle() {
    let bus = Bus::new(BusConfig::default());
    let mut old = bus.publish("a");
    let mut s = bus.subscribe("a", SubscribeOptions::default());
    push_gop(&mut old, 0, 3);
    let mut new = bus.publish("a");
    assert_eq!(new.previous_last_dts(), Some(2));
    assert!(!old.is_active());
    assert_eq!(old.push(frame(3, false, Bytes::new())), Err(BusError::TakenOver));
    assert_eq!(old.open_gop(header()), Err(BusError::TakenOver));
    drop(old); // must not end the broadcast
    assert!(bus.is_live("a"));
    push_gop(&mut new, 1, 2);
    let ev = drain(&mut s);
    assert_eq!(dts_of(&ev), vec![0, 1, 2, 100, 101]);
    assert!(ev.iter().any(|e| matches!(e, Event::CutShort { seq: 0 })));
}

#[test]
fn push_before_gop_is_an_error() {
    let bus = Bus::new(BusConfig::default());
    let mut p = bus.publish("a");
    assert_eq!(p.push(frame(0, true, Bytes::new())), Err(BusError::NoGop));
}

#[tokio::test]
async fn subscriber_before_publisher_waits_for_it() {
    let bus = Bus::new(BusConfig::default());
    let mut s = bus.subscribe("a", SubscribeOptions::default());
    let waiter = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match s.next().await {
                Event::End(r) => return (got, r),
                Event::Frame(f) => got.push(f.header.dts),
                _ => {}
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut p = bus.publish("a");
    push_gop(&mut p, 0, 4);
    p.end(EndReason::PublisherLeft);
    let (got, reason) = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(got, vec![0, 1, 2, 3]);
    assert_eq!(reason, EndReason::PublisherLeft);
}

#[tokio::test]
async fn a_waiting_subscriber_that_leaves_frees_its_slot() {
    let bus = Bus::new(BusConfig::default());
    let s = bus.subscribe("nobody", SubscribeOptions::default());
    assert_eq!(bus.slots(), 1);
    drop(s);
    assert_eq!(bus.slots(), 0);
}

#[test]
fn the_bus_counts_every_published_frame_and_byte_at_once() {
    let bus = Bus::new(BusConfig::default());
    let mut a = bus.publish("a");
    let mut b = bus.publish("b");
    push_gop(&mut a, 0, 40);
    push_gop(&mut b, 0, 3);
    // Counted as pushed: a publisher that pauses while connected is not under-counted
    // (`gopbus_ingest_frames_total` is read from this).
    assert_eq!(bus.published(), (43, 43 * 10));
    push_gop(&mut b, 1, 2);
    a.end(EndReason::PublisherLeft);
    drop(b);
    assert_eq!(bus.published(), (45, 45 * 10));
}
