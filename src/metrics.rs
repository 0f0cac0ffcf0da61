//! The metrics of the parts the control plane does not know (ingest, the
//! QUIC server, the transcoder), as `/metrics` sources.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use gopbus_control::{Family, Kind, MetricsSource};

/// RTMP connections and bytes read.
pub(crate) fn ingest(ingest: Arc<gopbus_ingest::Ingest>) -> Arc<dyn MetricsSource> {
    Arc::new(move |out: &mut Vec<Family>| {
        let s = ingest.stats();
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        out.push(Family::one(
            "gopbus_rtmp_connections",
            "RTMP connections open now",
            Kind::Gauge,
            s.connections.load(Ordering::Relaxed) as f64,
        ));
        out.push(Family::one(
            "gopbus_rtmp_connections_accepted",
            "RTMP connections accepted",
            Kind::Counter,
            n(&s.accepted),
        ));
        out.push(Family::one(
            "gopbus_rtmp_connections_refused",
            "RTMP connections refused at the connection limit",
            Kind::Counter,
            n(&s.refused),
        ));
        let loops = ingest.loop_connections();
        if !loops.is_empty() {
            out.push(Family {
                name: "gopbus_rtmp_loop_connections",
                help: "RTMP connections on each event loop now",
                kind: Kind::Gauge,
                samples: loops.iter().enumerate().map(|(i, n)| (vec![("loop", i.to_string())], *n as f64)).collect(),
            });
        }
        let (grouped, groups) = ingest.grouped_players();
        out.push(Family::one(
            "gopbus_rtmp_grouped_players",
            "RTMP players written to by a player group (one task per broadcast, once per frame) now",
            Kind::Gauge,
            grouped as f64,
        ));
        out.push(Family::one(
            "gopbus_rtmp_player_groups",
            "RTMP player groups running now",
            Kind::Gauge,
            groups as f64,
        ));
        out.push(Family::one(
            "gopbus_rtmp_received_bytes",
            "Bytes read from RTMP connections",
            Kind::Counter,
            n(&s.bytes_in),
        ));
    })
}

/// QUIC bus connections and packet losses.
pub(crate) fn quic(stats: gopbus_bus::quic::ServerStats) -> Arc<dyn MetricsSource> {
    Arc::new(move |out: &mut Vec<Family>| {
        out.push(Family::one(
            "gopbus_quic_connections",
            "QUIC bus connections open now",
            Kind::Gauge,
            stats.connections() as f64,
        ));
        out.push(Family::one(
            "gopbus_quic_connections_accepted",
            "QUIC bus connections accepted",
            Kind::Counter,
            stats.accepted() as f64,
        ));
        out.push(Family::one(
            "gopbus_quic_grouped_subscribers",
            "QUIC subscribers written to by a subscriber group now",
            Kind::Gauge,
            stats.grouped_subscribers() as f64,
        ));
        out.push(Family::one(
            "gopbus_quic_subscriber_groups",
            "QUIC subscriber groups running now",
            Kind::Gauge,
            stats.subscriber_groups() as f64,
        ));
        out.push(Family::one(
            "gopbus_quic_lost_packets",
            "Packets QUIC declared lost",
            Kind::Counter,
            stats.lost_packets() as f64,
        ));
    })
}

/// The transcoder's jobs and frames.
pub(crate) fn transcoder(t: gopbus_transcode::Transcoder) -> Arc<dyn MetricsSource> {
    Arc::new(move |out: &mut Vec<Family>| {
        out.push(Family::one(
            "gopbus_transcode_jobs",
            "Rendition jobs running on this worker",
            Kind::Gauge,
            t.jobs() as f64,
        ));
        out.push(Family::one(
            "gopbus_transcode_frames",
            "Rendition frames published by this worker (rate() gives frames per second)",
            Kind::Counter,
            t.frames_out() as f64,
        ));
        out.push(Family::one(
            "gopbus_transcode_load_mpxs",
            "Work taken on, megapixels per second",
            Kind::Gauge,
            t.load(),
        ));
        out.push(Family::one(
            "gopbus_transcode_capacity_mpxs",
            "Work this worker takes on at most",
            Kind::Gauge,
            t.capacity(),
        ));
    })
}
