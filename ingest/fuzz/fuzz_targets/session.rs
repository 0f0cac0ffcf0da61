//! A whole RTMP connection after the handshake, as the server runs it: the
//! sans-IO command flow (chunks, AMF, connect/publish/play, deadlines) over
//! arbitrary bytes in arbitrary pieces, its media handed to the ingest onto an
//! in-process bus, on simulated time (a millisecond per byte). No panic; what waits to be sent stays
//! bounded; a publish is asked of the driver before any media flows.
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use gopbus_bus::{Bus, BusConfig};
use gopbus_ingest::flow::{Action, Flow, FlowConfig, Refusal};
use gopbus_ingest::publish::{GopLimits, MediaIngest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let step = usize::from(split).max(1);
    let t0 = Instant::now();
    let config = FlowConfig {
        app: "live".into(),
        out_chunk_size: 4096,
        max_message: 1 << 20,
        command_timeout: Duration::from_secs(10),
        play_wait_timeout: Duration::from_secs(30),
    };
    let mut flow = Flow::new(config, t0);
    let bus = Bus::new(BusConfig { window: 4, max_lag: 4 });
    let limits = GopLimits { max_bytes: 4 << 20, max_ms: 60_000 };
    let mut media: Option<MediaIngest> = None;
    let mut buf = BytesMut::new();
    for (i, piece) in data.chunks(step).enumerate() {
        buf.extend_from_slice(piece);
        flow.received(piece.len());
        loop {
            let action = match flow.next(&mut buf) {
                Ok(Some(action)) => action,
                Ok(None) => break,
                Err(_) => return,
            };
            let result = match action {
                Action::Authorize(check) => {
                    if check.key.starts_with('x') {
                        flow.publish_refused(Refusal::InvalidKey);
                    } else {
                        media = Some(MediaIngest::with_limits(bus.publish("fuzz"), limits));
                        flow.publish_started();
                    }
                    Ok(())
                }
                Action::Video { timestamp, parts, len } => {
                    let m = media.as_mut().expect("media before the publish was accepted");
                    m.handle_video(timestamp, parts, len)
                }
                Action::Audio { timestamp, parts, len } => {
                    let m = media.as_mut().expect("media before the publish was accepted");
                    m.handle_audio(timestamp, parts, len)
                }
                Action::Data(values) => {
                    media.as_mut().expect("metadata before the publish was accepted").handle_data(values);
                    Ok(())
                }
                Action::Play { .. } => {
                    flow.play_waits(t0);
                    Ok(())
                }
                Action::StopPublishing => {
                    media = None;
                    Ok(())
                }
                Action::StopPlaying => Ok(()),
                Action::Close(_) => return,
            };
            if result.is_err() {
                return;
            }
        }
        // Replies are small and few per message read.
        assert!(flow.queued() < 1 << 20, "{} bytes queued", flow.queued());
        let n = flow.queued();
        flow.out().consume(n);
        flow.handle_timeout(t0 + Duration::from_millis((i * step) as u64));
    }
});
