//! The HTTP side: live playlists, segments and parts from memory (blocking
//! reloads and preload hints held open), recordings from disk.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;

use crate::segmenter::{Variant, Waited};
use crate::Hls;

const PLAYLIST: &str = "application/vnd.apple.mpegurl";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// How long a first playlist request waits for the first segment (players give up after about 20 s).
const FIRST_SEGMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

pub(crate) fn router(hls: Hls) -> axum::Router {
    axum::Router::new()
        .route("/hls/{name}/index.m3u8", get(live_playlist))
        .route("/hls/{name}/master.m3u8", get(multivariant))
        .route("/hls/{name}/{session}/{file}", get(live_file))
        .route("/hls/{name}/r/{rendition}/index.m3u8", get(rendition_playlist))
        .route("/hls/{name}/r/{rendition}/{session}/{file}", get(rendition_file))
        .route("/recordings/{name}/{session}/{file}", get(recorded_file))
        .layer(axum::middleware::from_fn_with_state(hls.clone(), count))
        .with_state(hls)
}

/// Counts a live broadcast's HLS clients and the bytes served to them.
async fn count(State(hls): State<Hls>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let name = request.uri().path().strip_prefix("/hls/").and_then(|p| p.split('/').next()).map(str::to_owned);
    let ip = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let response = next.run(request).await;
    if let Some(name) = name.filter(|_| response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED)
    {
        let bytes = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .or_else(|| axum::body::HttpBody::size_hint(response.body()).exact())
            .unwrap_or(0);
        hls.served(&name, ip, bytes);
    }
    response
}

/// A response with its type, caching and ETag; 304 when the client has it.
fn reply(req: &HeaderMap, parts: Vec<Bytes>, kind: &'static str, cache: &'static str, etag: &str) -> Response {
    let fresh = req
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        let mut r = Response::new(axum::body::Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else if parts.len() == 1 {
        Response::new(axum::body::Body::from(parts.into_iter().next().unwrap_or_default()))
    } else {
        // A segment is its parts: sent one after the other, not joined.
        let len: usize = parts.iter().map(Bytes::len).sum();
        let body = futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::convert::Infallible>));
        let mut r = Response::new(axum::body::Body::from_stream(body));
        r.headers_mut().insert(header::CONTENT_LENGTH, len.into());
        r
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    // Players on other origins (a page served elsewhere) may read it.
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("etag"));
    r
}

fn status(code: StatusCode, why: &'static str) -> Response {
    let mut r = (code, why).into_response();
    r.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

fn kind_of(file: &str) -> Option<&'static str> {
    if file.ends_with(".m3u8") {
        Some(PLAYLIST)
    } else if file.ends_with(".m4s") {
        Some("video/iso.segment")
    } else if file.ends_with(".mp4") {
        Some("video/mp4")
    } else {
        None
    }
}

/// A path segment that names a file or directory of ours: no separators, no dot-dot.
pub(crate) fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The LL-HLS delivery directives of a playlist request: `_HLS_msn` and `_HLS_part`.
/// `Err` for a malformed one.
fn directives(query: Option<&str>) -> Result<Option<(u64, Option<u64>)>, ()> {
    let (mut msn, mut part) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "_HLS_msn" => msn = Some(v.parse::<u64>().map_err(|_| ())?),
            "_HLS_part" => part = Some(v.parse::<u64>().map_err(|_| ())?),
            _ => {}
        }
    }
    match (msn, part) {
        (None, Some(_)) => Err(()),
        (None, None) => Ok(None),
        (Some(m), p) => Ok(Some((m, p))),
    }
}

impl Hls {
    /// A permit to hold a request open, or `None` (logged at most once a second) at the limit.
    fn hold(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let permit = self.inner.waiting.clone().try_acquire_owned().ok();
        if permit.is_none() {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
            let last = self.inner.waiting_logged.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= 1000
                && self.inner.waiting_logged.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
            {
                tracing::warn!(
                    max_waiting = self.inner.config.max_waiting,
                    "too many HLS requests held open (blocking reloads, preload hints); refusing more with 503 (--hls-max-waiting)"
                );
            }
        }
        permit
    }
}

async fn live_playlist(
    State(hls): State<Hls>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    playlist_of(&hls, &name, query.as_deref(), &headers).await
}

/// A rendition's live playlist (`/hls/NAME/r/480p/index.m3u8`): live only, not recorded.
async fn rendition_playlist(
    State(hls): State<Hls>,
    Path((name, rendition)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    playlist_of(&hls, &format!("{name}/{rendition}"), query.as_deref(), &headers).await
}

async fn rendition_file(
    State(hls): State<Hls>,
    Path((name, rendition, session, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if !plain(&rendition) {
        return status(StatusCode::NOT_FOUND, "not found\n");
    }
    match memory_file(&hls, &format!("{name}/{rendition}"), &session, &file, &headers).await {
        Some(r) => r,
        None => status(StatusCode::NOT_FOUND, "not in the live window (renditions are not recorded)\n"),
    }
}

/// The live playlist of `key` (a broadcast, or `NAME/480p` for a rendition).
async fn playlist_of(hls: &Hls, key: &str, query: Option<&str>, headers: &HeaderMap) -> Response {
    let Some(live) = hls.inner.live.get(key).map(|l| l.clone()) else {
        return status(StatusCode::NOT_FOUND, "no live HLS for this broadcast\n");
    };
    let Ok(wanted) = directives(query) else {
        return status(
            StatusCode::BAD_REQUEST,
            "_HLS_msn and _HLS_part must be numbers, _HLS_part only with _HLS_msn\n",
        );
    };
    let mut cache = "no-cache";
    if let Some((msn, part)) = wanted {
        let Some(_permit) = hls.hold() else {
            return status(StatusCode::SERVICE_UNAVAILABLE, "too many requests waiting\n");
        };
        // The Advance Part Limit: about three seconds of parts ahead.
        let part_secs = hls.inner.config.part_target.as_secs_f64().max(0.001);
        let advance = ((3.0 / part_secs).ceil() as u64).max(3);
        match live.wait_for(msn, part, advance).await {
            Waited::Ready => {}
            Waited::TooFar => {
                return status(StatusCode::BAD_REQUEST, "_HLS_msn/_HLS_part too far ahead of the live edge\n")
            }
            Waited::TimedOut => {
                return status(StatusCode::SERVICE_UNAVAILABLE, "the requested part did not come in time\n")
            }
        }
        // A blocking request's URL names one version of the playlist: a CDN may keep it.
        cache = "public, max-age=30";
    } else if !live.edge().ended && live.edge().msn == 1 {
        // Players want a complete segment in the first playlist they see (hls.js
        // fails on one with only parts): the first request waits for it.
        let Some(_permit) = hls.hold() else {
            return status(StatusCode::SERVICE_UNAVAILABLE, "too many requests waiting\n");
        };
        if live.wait_for_first_segment(FIRST_SEGMENT_WAIT).await != Waited::Ready {
            return status(StatusCode::NOT_FOUND, "no complete HLS segment for this broadcast yet\n");
        }
    }
    match live.playlist() {
        Some((text, etag)) => reply(headers, vec![Bytes::from(text)], PLAYLIST, cache, &etag),
        None => status(StatusCode::NOT_FOUND, "no live HLS for this broadcast yet\n"),
    }
}

/// The multivariant playlist. Without renditions (and without Opus asked
/// for): the source, one muxed variant (`index.m3u8`). With them: audio
/// groups — the source's AAC (`audio`, `r/audio/index.m3u8`) and, with
/// `opus`, the Opus track (`opus`, `r/opus/index.m3u8`) — and video-only
/// variants — the source's video (`r/video/index.m3u8`) and each rendition
/// (`r/480p/index.m3u8`), highest bit rate first — listed once per audio
/// group (AAC first: players take the first variant they can play).
async fn multivariant(State(hls): State<Hls>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let live = |key: &str| hls.inner.live.get(key).and_then(|l| l.variant());
    let Some(source) = live(&name) else {
        return status(StatusCode::NOT_FOUND, "no live HLS for this broadcast\n");
    };
    let prefix = format!("{name}/");
    let mut videos: Vec<(String, Variant)> = hls
        .inner
        .live
        .iter()
        .filter_map(|e| {
            let label = e.key().strip_prefix(&prefix)?;
            let height = label.strip_suffix('p')?;
            height.bytes().all(|b| b.is_ascii_digit()).then(|| Some((label.to_owned(), e.value().variant()?)))?
        })
        .collect();
    let mut text = String::from("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    let line = |v: &Variant, audio: Option<(&Variant, &str)>, uri: &str| {
        let extra = audio.map(|(a, _)| a);
        let (peak, average) = (v.peak + extra.map_or(0, |a| a.peak), v.average + extra.map_or(0, |a| a.average));
        let mut s = format!("#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={average}");
        if let Some((w, h)) = v.resolution {
            s.push_str(&format!(",RESOLUTION={w}x{h}"));
        }
        match audio {
            Some((a, group)) => s.push_str(&format!(",CODECS=\"{},{}\",AUDIO=\"{group}\"", v.codecs, a.codecs)),
            None => s.push_str(&format!(",CODECS=\"{}\"", v.codecs)),
        }
        s.push_str(&format!("\n{uri}\n"));
        s
    };
    let video = live(&format!("{name}/video"));
    let opus = if hls.inner.config.opus { live(&format!("{name}/opus")) } else { None };
    let groups: Vec<(&str, &str, Variant)> =
        [("audio", "source", live(&format!("{name}/audio"))), ("opus", "opus", opus)]
            .into_iter()
            .filter_map(|(group, label, v)| Some((group, label, v?)))
            .collect();
    let split = !videos.is_empty() || groups.iter().any(|(g, _, _)| *g == "opus");
    match video {
        Some(video) if split && !groups.is_empty() => {
            for (group, label, _) in &groups {
                text.push_str(&format!(
                    "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{group}\",NAME=\"{label}\",DEFAULT=YES,AUTOSELECT=YES,URI=\"r/{group}/index.m3u8\"\n"
                ));
            }
            videos.push(("video".to_owned(), video));
            videos.sort_by_key(|(_, v)| std::cmp::Reverse(v.peak));
            for (group, _, audio) in &groups {
                for (label, v) in &videos {
                    text.push_str(&line(v, Some((audio, group)), &format!("r/{label}/index.m3u8")));
                }
            }
        }
        // No renditions or Opus (or their streams have no segment yet): the muxed source.
        _ => text.push_str(&line(&source, None, "index.m3u8")),
    }
    let etag = format!("\"{}.{}\"", text.len(), text.bytes().map(u64::from).sum::<u64>());
    reply(&headers, vec![Bytes::from(text)], PLAYLIST, "no-cache", &etag)
}

async fn live_file(
    State(hls): State<Hls>,
    Path((name, session, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(kind) = kind_of(&file).filter(|_| plain(&name) && plain(&session) && plain(&file)) else {
        return status(StatusCode::NOT_FOUND, "not found\n");
    };
    if let Some(r) = memory_file(&hls, &name, &session, &file, &headers).await {
        return r;
    }
    // Slid out of the window (a player far behind): the recording has it.
    from_disk(&hls, &headers, &name, &session, &file, kind).await
}

/// A file of `key`'s live session from memory (a preload-hinted part is
/// waited for); `None` when it is not there.
async fn memory_file(hls: &Hls, key: &str, session: &str, file: &str, headers: &HeaderMap) -> Option<Response> {
    let kind = kind_of(file).filter(|_| plain(session) && plain(file))?;
    let live = hls.inner.live.get(key).filter(|l| l.session == session).map(|l| l.clone())?;
    let etag = format!("\"{session}/{file}\"");
    if let Some(parts) = live.file(file) {
        return Some(reply(headers, parts, kind, IMMUTABLE, &etag));
    }
    if !file.starts_with("part-") {
        return None;
    }
    // The preload hint: held open until the part exists.
    let Some(_permit) = hls.hold() else {
        return Some(status(StatusCode::SERVICE_UNAVAILABLE, "too many requests waiting\n"));
    };
    Some(match live.wait_part(file).await {
        Some(parts) => reply(headers, parts, kind, IMMUTABLE, &etag),
        None => status(StatusCode::NOT_FOUND, "no such part\n"),
    })
}

async fn recorded_file(
    State(hls): State<Hls>,
    Path((name, session, file)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    match kind_of(&file).filter(|_| plain(&name) && plain(&session) && plain(&file)) {
        Some(kind) => from_disk(&hls, &headers, &name, &session, &file, kind).await,
        None => status(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn from_disk(
    hls: &Hls,
    headers: &HeaderMap,
    name: &str,
    session: &str,
    file: &str,
    kind: &'static str,
) -> Response {
    let path = hls.inner.config.recordings.join(name).join(session).join(file);
    match tokio::fs::read(&path).await {
        Ok(data) => {
            // The playlist changes while the session records; the media files never do.
            let (cache, etag) = if kind == PLAYLIST {
                let modified = tokio::fs::metadata(&path).await.and_then(|m| m.modified()).ok();
                let ns = modified.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).unwrap_or_default().as_nanos();
                ("no-cache", format!("\"{session}/{}.{ns}\"", data.len()))
            } else {
                (IMMUTABLE, format!("\"{session}/{file}\""))
            };
            reply(headers, vec![Bytes::from(data)], kind, cache, &etag)
        }
        Err(_) => status(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn delivery_directives() {
        assert_eq!(directives(None), Ok(None));
        assert_eq!(directives(Some("_HLS_msn=7")), Ok(Some((7, None))));
        assert_eq!(directives(Some("_HLS_msn=7&_HLS_part=2&_HLS_skip=YES")), Ok(Some((7, Some(2)))));
        assert_eq!(directives(Some("_HLS_part=2")), Err(()));
        assert_eq!(directives(Some("_HLS_msn=x")), Err(()));
    }
}
