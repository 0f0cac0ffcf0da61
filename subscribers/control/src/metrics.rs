//! `/metrics` (OpenMetrics text, which Prometheus scrapes) and `/readyz`.
//!
//! Every value is read at scrape time from counters the parts keep anyway
//! (atomics: the bus's, the audience's, ingest's, the QUIC server's, the
//! transcoder's, the webhooks'); nothing is recorded for metrics on the
//! media path. `prometheus-client` writes the text.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::Control;

/// Whether a family only grows (a counter; its name gets `_total`) or goes
/// up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One metric family and its samples (each with its labels).
#[derive(Debug, Clone)]
pub struct Family {
    /// Its name (`gopbus_…`, without `_total`).
    pub name: &'static str,
    /// What it measures.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// (labels, value) per sample.
    pub samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

impl Family {
    /// A family with one unlabelled sample.
    pub fn one(name: &'static str, help: &'static str, kind: Kind, value: f64) -> Self {
        Self { name, help, kind, samples: vec![(Vec::new(), value)] }
    }
}

/// A part of the node that has metrics of its own (ingest, the QUIC server,
/// the transcoder), read at each scrape.
pub trait MetricsSource: Send + Sync {
    /// Appends its families.
    fn collect(&self, out: &mut Vec<Family>);
}

impl<F: Fn(&mut Vec<Family>) + Send + Sync> MetricsSource for F {
    fn collect(&self, out: &mut Vec<Family>) {
        self(out)
    }
}

/// One scrape's families, encoded by prometheus-client.
#[derive(Debug)]
struct Scrape(Vec<Family>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let kind = match f.kind {
                Kind::Counter => ConstCounter::new(0u64).metric_type(),
                Kind::Gauge => ConstGauge::new(0i64).metric_type(),
            };
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, value) in &f.samples {
                let labels: Vec<(Cow<'static, str>, Cow<'static, str>)> =
                    labels.iter().map(|(k, v)| (Cow::Borrowed(*k), Cow::Owned(v.clone()))).collect();
                let sample = metric.encode_family(&labels)?;
                match f.kind {
                    Kind::Counter => ConstCounter::new(*value).encode(sample)?,
                    Kind::Gauge => ConstGauge::new(*value).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

impl Control {
    /// Every family: the control plane's own (bus, audience, webhooks) and its sources'.
    pub fn metrics(&self) -> Vec<Family> {
        let inner = &self.inner;
        let bus = &inner.bus;
        let mut out = Vec::new();
        let live = bus.broadcasts();
        let sources = live.iter().filter(|b| !b.name.contains('/')).count();
        out.push(Family::one(
            "gopbus_broadcasts",
            "Live broadcasts (sources, without their derived tracks)",
            Kind::Gauge,
            sources as f64,
        ));
        out.push(Family::one(
            "gopbus_tracks_derived",
            "Live derived tracks (renditions, Opus)",
            Kind::Gauge,
            (live.len() - sources) as f64,
        ));
        let (frames, bytes) = bus.published();
        out.push(Family::one("gopbus_ingest_frames", "Frames published on the bus", Kind::Counter, frames as f64));
        out.push(Family::one("gopbus_ingest_bytes", "Media bytes published on the bus", Kind::Counter, bytes as f64));
        let totals = bus.audience().totals();
        let per = |name, help, kind, value: fn(&gopbus_bus::Counts) -> u64| Family {
            name,
            help,
            kind,
            samples: totals.iter().map(|(p, c)| (vec![("protocol", p.name().to_owned())], value(c) as f64)).collect(),
        };
        out.push(per(
            "gopbus_viewers",
            "Viewers now, per protocol (HLS: clients seen in the last 10 s)",
            Kind::Gauge,
            |c| c.viewers,
        ));
        out.push(per("gopbus_egress_bytes", "Media bytes sent to viewers, per protocol", Kind::Counter, |c| c.bytes));
        out.push(per("gopbus_egress_frames", "Frames sent to viewers, per protocol (not HLS)", Kind::Counter, |c| {
            c.frames
        }));
        out.push(per(
            "gopbus_skipped_gops",
            "GoPs skipped by viewers that fell behind, per protocol",
            Kind::Counter,
            |c| c.skipped_gops,
        ));
        if let Some(w) = &inner.webhooks {
            let c = w.counts();
            let samples = [
                ("delivered", &c.delivered),
                ("failed", &c.failed_attempts),
                ("given_up", &c.given_up),
                ("dropped", &c.dropped),
            ]
            .into_iter()
            .map(|(outcome, n)| (vec![("outcome", outcome.to_owned())], n.load(Ordering::Relaxed) as f64))
            .collect();
            out.push(Family {
                name: "gopbus_webhook_attempts",
                help: "Webhook attempts by outcome (failed: retried later; dropped: never queued)",
                kind: Kind::Counter,
                samples,
            });
        }
        for s in inner.metrics.read().unwrap_or_else(|e| e.into_inner()).iter() {
            s.collect(&mut out);
        }
        out
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(c): State<Control>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(c.metrics())));
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::warn!(error = %e, "metrics could not be encoded");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    r
}

/// `GET /readyz`: 200 once the node can take publishers (its key store
/// answers), 503 with the reason otherwise.
pub(crate) async fn ready(State(c): State<Control>) -> Response {
    match c.inner.keys.version().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: key store: {e}\n")).into_response(),
    }
}

/// The sources the binary adds (ingest, QUIC server, transcoder).
pub(crate) type Sources = Vec<Arc<dyn MetricsSource>>;
