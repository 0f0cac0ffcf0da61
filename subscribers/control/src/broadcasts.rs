//! `/api/v1/broadcasts`: what is live on this node, and kicking a publisher.

use std::collections::VecDeque;
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use dashmap::DashMap;
use gopbus_bus::{BroadcastInfo, Catalog, Counts, Protocol};
use gopbus_proto::Codec;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::store_error;
use crate::streams::not_found;
use crate::Control;

/// A node, as the broadcasts API names it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct NodeInfo {
    /// Its id (`serve`: the QUIC bus address it listens on).
    pub id: String,
    /// Where its QUIC bus is reached, if it has one.
    pub quic: Option<String>,
}

/// A live publisher on this node.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PublisherInfo {
    /// How it publishes (`rtmp`).
    pub protocol: String,
    /// Its address.
    pub peer: String,
    /// Its connection's id in the log.
    pub session: u64,
}

/// One track of a broadcast.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Track {
    /// `video`, `audio`, or a derived track's name (`audio/opus`, `video/480p`).
    pub name: String,
    /// `h264`, `aac`, `opus`, or the name of a codec carried as is.
    pub codec: String,
    /// Width in pixels (video).
    pub width: Option<u32>,
    /// Height in pixels (video).
    pub height: Option<u32>,
    /// Sample rate in Hz (audio).
    pub sample_rate: Option<u32>,
    /// Channels (audio).
    pub channels: Option<u8>,
}

/// The source video of a broadcast.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VideoInfo {
    /// `h264`.
    pub codec: String,
    /// H.264 `profile_idc` (66 Baseline, 77 Main, 100 High).
    pub profile: u8,
    /// H.264 `level_idc` (31 = 3.1).
    pub level: u8,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second over the last few seconds.
    pub fps: f64,
}

/// A count per protocol, and their sum.
#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct ViewerCounts {
    /// RTMP players.
    pub rtmp: u64,
    /// WebRTC viewers.
    pub webrtc: u64,
    /// HLS clients (addresses that fetched a playlist or media in the last 10 s).
    pub hls: u64,
    /// QUIC bus subscribers (edges, subscriber nodes).
    pub quic: u64,
    /// The sum.
    pub total: u64,
}

impl ViewerCounts {
    fn of(audience: &[(Protocol, Counts)], field: impl Fn(&Counts) -> u64) -> Self {
        let mut out = Self::default();
        for (p, c) in audience {
            let n = field(c);
            match p {
                Protocol::Rtmp => out.rtmp = n,
                Protocol::WebRtc => out.webrtc = n,
                Protocol::Hls => out.hls = n,
                Protocol::Quic => out.quic = n,
            }
            out.total += n;
        }
        out
    }
}

/// A live broadcast held by another node of the cluster (found in the directory).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RemoteBroadcast {
    /// Its name.
    pub name: String,
    /// Always false: not on this node; ask `node` for the details.
    pub local: bool,
    /// The node that holds it.
    pub node: NodeInfo,
}

/// What `GET /api/v1/broadcasts/NAME` answers: the broadcast, or where it is.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum BroadcastAnswer {
    /// Held here.
    Local(Box<Broadcast>),
    /// Held by another node.
    Remote(RemoteBroadcast),
}

/// A live broadcast.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Broadcast {
    /// Its name.
    pub name: String,
    /// Always true: held by this node.
    pub local: bool,
    /// When it went live, RFC 3339.
    pub since: String,
    /// The node that holds it.
    pub node: NodeInfo,
    /// Its publisher, when it publishes to this node over RTMP.
    pub publisher: Option<PublisherInfo>,
    /// Its tracks as of its newest GoP: published, then derived.
    pub tracks: Vec<Track>,
    /// The published video, if any.
    pub video: Option<VideoInfo>,
    /// Bits per second in (all published tracks) over the last few seconds, in kb/s.
    pub bitrate_in_kbps: f64,
    /// Media bytes published so far.
    pub bytes_in: u64,
    /// Frames published so far.
    pub frames_in: u64,
    /// GoPs published so far.
    pub gops: u64,
    /// Times another publisher took over.
    pub takeovers: u64,
    /// Viewers now, per protocol.
    pub viewers: ViewerCounts,
    /// Media bytes sent to viewers, per protocol.
    pub bytes_out: ViewerCounts,
    /// GoPs viewers skipped because they fell behind, per protocol.
    pub skipped_gops: ViewerCounts,
}

/// How many one-second samples rates are computed over.
const RATE_SAMPLES: usize = 5;

/// Recent (time, bytes, video frames) samples per broadcast.
#[derive(Default)]
pub(crate) struct Rates {
    samples: DashMap<String, VecDeque<(Instant, u64, u64)>>,
}

impl Rates {
    pub(crate) fn sample(&self, live: &[BroadcastInfo]) {
        let now = Instant::now();
        self.samples.retain(|name, _| live.iter().any(|b| &b.name == name));
        for b in live {
            let mut s = self.samples.entry(b.name.clone()).or_default();
            s.push_back((now, b.bytes, b.video_frames));
            while s.len() > RATE_SAMPLES + 1 {
                s.pop_front();
            }
        }
    }

    /// (kb/s, video frames/s) of `name` over the samples kept.
    fn of(&self, name: &str) -> (f64, f64) {
        let Some(s) = self.samples.get(name) else { return (0.0, 0.0) };
        let (Some(first), Some(last)) = (s.front(), s.back()) else { return (0.0, 0.0) };
        let secs = last.0.duration_since(first.0).as_secs_f64();
        if secs < 0.5 {
            return (0.0, 0.0);
        }
        let round = |x: f64| (x * 10.0).round() / 10.0;
        (round((last.1 - first.1) as f64 * 8.0 / 1000.0 / secs), round((last.2 - first.2) as f64 / secs))
    }
}

fn track(t: &gopbus_proto::TrackInfo) -> Track {
    let mut out = Track {
        name: t.name.clone(),
        codec: t.codec.name().to_owned(),
        width: None,
        height: None,
        sample_rate: None,
        channels: None,
    };
    match &t.codec {
        Codec::H264(v) => (out.width, out.height) = (Some(v.width), Some(v.height)),
        Codec::Aac(a) => (out.sample_rate, out.channels) = (Some(a.sample_rate), Some(a.channels)),
        Codec::Opus(o) => (out.sample_rate, out.channels) = (Some(48_000), Some(o.channels)),
        Codec::Other(_) => {}
    }
    out
}

impl Control {
    fn broadcast(&self, info: &BroadcastInfo, catalog: Option<Catalog>) -> Broadcast {
        let inner = &self.inner;
        let (kbps, fps) = inner.rates.of(&info.name);
        let tracks: Vec<Track> = catalog.as_ref().map(|c| c.tracks.iter().map(track).collect()).unwrap_or_default();
        let video =
            catalog.as_ref().and_then(|c| c.track(gopbus_proto::TrackInfo::VIDEO)).and_then(|t| match &t.codec {
                Codec::H264(v) => Some(VideoInfo {
                    codec: "h264".into(),
                    profile: v.profile,
                    level: v.level,
                    width: v.width,
                    height: v.height,
                    fps,
                }),
                _ => None,
            });
        let audience = inner.bus.audience().of(&info.name);
        let since = UNIX_EPOCH + Duration::from_millis(info.since_ms);
        Broadcast {
            name: info.name.clone(),
            local: true,
            since: time::OffsetDateTime::from(since)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            node: inner.config.node.clone(),
            publisher: inner.publishers.as_ref().and_then(|p| p.publisher(&info.name)),
            tracks,
            video,
            bitrate_in_kbps: kbps,
            bytes_in: info.bytes,
            frames_in: info.frames,
            gops: info.gops,
            takeovers: info.takeovers,
            viewers: ViewerCounts::of(&audience, |c| c.viewers),
            bytes_out: ViewerCounts::of(&audience, |c| c.bytes),
            skipped_gops: ViewerCounts::of(&audience, |c| c.skipped_gops),
        }
    }

    /// The live broadcasts (sources, not their derived tracks), by name.
    fn live(&self) -> Vec<Broadcast> {
        let bus = &self.inner.bus;
        bus.broadcasts()
            .iter()
            // A derived track lives on the bus as `NAME/TRACK`: listed in its source's tracks.
            .filter(|b| !b.name.contains('/'))
            .map(|b| self.broadcast(b, bus.catalog(&b.name)))
            .collect()
    }
}

/// What is live on this node.
#[utoipa::path(
    get, path = "/api/v1/broadcasts", tag = "broadcasts", security(("admin" = [])),
    responses(
        (status = 200, description = "The live broadcasts, by name", body = [Broadcast]),
        (status = 401, description = "Missing or wrong admin token", body = crate::api::Error),
    )
)]
pub(crate) async fn list(State(c): State<Control>, headers: HeaderMap) -> Response {
    if let Err(r) = c.admit(&headers, None) {
        return r;
    }
    Json(c.live()).into_response()
}

/// One live broadcast; in a cluster, one held by another node is answered
/// with that node (from the Redis directory).
#[utoipa::path(
    get, path = "/api/v1/broadcasts/{name}", tag = "broadcasts", security(("admin" = [])),
    params(("name" = String, Path, description = "The broadcast's name")),
    responses(
        (status = 200, description = "The broadcast, or the node that holds it", body = BroadcastAnswer),
        (status = 400, description = "Invalid name", body = crate::api::Error),
        (status = 401, description = "Missing or wrong admin token", body = crate::api::Error),
        (status = 404, description = "Not live (here, nor in the cluster's directory)", body = crate::api::Error),
        (status = 502, description = "The cluster's directory did not answer", body = crate::api::Error),
    )
)]
pub(crate) async fn get_one(State(c): State<Control>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = c.admit(&headers, Some(&name)) {
        return r;
    }
    if let Some(b) = c.live().into_iter().find(|b| b.name == name) {
        return Json(BroadcastAnswer::Local(Box::new(b))).into_response();
    }
    let Some(directory) = c.inner.directory.get() else {
        return not_found(&format!("broadcast {name:?} is not live on this node"));
    };
    match directory.lookup(&name).await {
        Ok(Some(node)) => {
            let remote = RemoteBroadcast { name, local: false, node: NodeInfo { id: node.clone(), quic: Some(node) } };
            Json(BroadcastAnswer::Remote(remote)).into_response()
        }
        Ok(None) => not_found(&format!("broadcast {name:?} is not live in the cluster")),
        Err(e) => {
            tracing::warn!(error = %e, "API: the directory failed");
            crate::json_error(StatusCode::BAD_GATEWAY, &format!("the cluster's directory did not answer: {e}"))
        }
    }
}

/// Options of a kick.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KickOptions {
    /// Also give the stream a new key (which is not returned), so the
    /// publisher cannot come back with the old one.
    #[serde(default)]
    revoke: bool,
}

/// Disconnects the broadcast's publisher (on this node); the broadcast ends
/// with the reason "publisher kicked". With `revoke=true` its stream key is
/// also replaced, so it cannot publish again until given the new one.
#[utoipa::path(
    delete, path = "/api/v1/broadcasts/{name}/publisher", tag = "broadcasts", security(("admin" = [])),
    params(
        ("name" = String, Path, description = "The broadcast's name"),
        ("revoke" = Option<bool>, Query, description = "Also give the stream a new key (not returned), so the publisher cannot come back with the old one"),
    ),
    responses(
        (status = 204, description = "Disconnected"),
        (status = 400, description = "Invalid name or query", body = crate::api::Error),
        (status = 401, description = "Missing or wrong admin token", body = crate::api::Error),
        (status = 404, description = "No publisher of this name on this node", body = crate::api::Error),
    )
)]
pub(crate) async fn kick(
    State(c): State<Control>,
    headers: HeaderMap,
    Path(name): Path<String>,
    query: Result<Query<KickOptions>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(r) = c.admit(&headers, Some(&name)) {
        return r;
    }
    let options = match query {
        Ok(Query(o)) => o,
        Err(e) => return crate::json_error(StatusCode::BAD_REQUEST, &format!("bad query: {}", e.body_text())),
    };
    let kicked = c.inner.publishers.as_ref().is_some_and(|p| p.kick(&name));
    if !kicked {
        return not_found(&format!("no publisher of {name:?} on this node"));
    }
    if options.revoke {
        if let Err(e) = c.inner.keys.rotate(&name).await {
            return store_error(&e);
        }
        tracing::info!(broadcast = %name, "stream key revoked with the kick");
    }
    StatusCode::NO_CONTENT.into_response()
}
