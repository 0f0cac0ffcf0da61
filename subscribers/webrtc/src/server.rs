//! HTTP: WHEP, WebSocket signaling, the watch page, the list of broadcasts,
//! and the status JSON the page reads.

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;

use crate::{WebRtc, WebRtcError};

const WATCH: &str = include_str!("../web/watch.html");
const INDEX: &str = include_str!("../web/index.html");

pub(crate) fn router(webrtc: WebRtc) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/watch/{name}", get(|| async { Html(WATCH) }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/webrtc", get(list))
        .route("/webrtc/{name}", get(status))
        .route("/whep/{name}", axum::routing::post(whep_post).options(preflight))
        .route("/whep/{name}/{id}", delete(whep_delete).patch(whep_patch).options(preflight))
        .route("/ws/{name}", get(ws))
        .with_state(webrtc)
}

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Location, Link, ETag"));
    r
}

async fn preflight() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, DELETE, PATCH, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type, Authorization, If-Match"));
    h.insert("Accept-Post", HeaderValue::from_static("application/sdp"));
    cors(r)
}

fn error(status: StatusCode, message: String) -> Response {
    cors((status, Json(serde_json::json!({ "error": message }))).into_response())
}

impl IntoResponse for WebRtcError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::NotLive(_) => StatusCode::NOT_FOUND,
            Self::BadOffer(_) => StatusCode::BAD_REQUEST,
            Self::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        error(status, self.to_string())
    }
}

async fn list(State(w): State<WebRtc>) -> Response {
    cors(Json(w.statuses()).into_response())
}

async fn status(State(w): State<WebRtc>, Path(name): Path<String>, uri: Uri) -> Response {
    match rendition_of(&uri) {
        Ok(r) => cors(Json(w.status(&name, r.as_deref())).into_response()),
        Err(why) => error(StatusCode::BAD_REQUEST, why),
    }
}

/// `?rendition=480p` → `video/480p`: a rendition chosen by the viewer (an
/// error for 400 when malformed).
fn rendition_of(uri: &Uri) -> Result<Option<String>, String> {
    let Some(value) = uri.query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("rendition=")) else {
        return Ok(None);
    };
    let digits = value.strip_suffix('p').unwrap_or("");
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("rendition {value:?}: expected HEIGHTp, like 480p"));
    }
    Ok(Some(format!("video/{value}")))
}

/// `Link` header values for the ICE servers (RFC 9725 §4.4).
fn links(w: &WebRtc) -> Vec<HeaderValue> {
    w.config()
        .ice
        .ice_servers
        .iter()
        .filter_map(|s| {
            let mut v = format!("<{}>; rel=\"ice-server\"", s.urls);
            if let (Some(u), Some(c)) = (&s.username, &s.credential) {
                v.push_str(&format!("; username=\"{u}\"; credential=\"{c}\"; credential-type=\"password\""));
            }
            HeaderValue::from_str(&v).ok()
        })
        .collect()
}

/// The client's address, when the server was given it (`gopbus`'s is;
/// `0.0.0.0` otherwise).
struct ClientIp(std::net::IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|ConnectInfo(a)| a.ip());
        Ok(Self(ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))))
    }
}

fn too_many() -> Response {
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, "too many offers from this address; retry in a minute".into());
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    r
}

async fn whep_post(
    State(w): State<WebRtc>,
    Path(name): Path<String>,
    ClientIp(ip): ClientIp,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !w.allow_offer(ip) {
        return too_many();
    }
    let rendition = match rendition_of(&uri) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let sdp_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !sdp_type.starts_with("application/sdp") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be sent as Content-Type: application/sdp".into(),
        );
    }
    if body.len() > w.config().max_offer_bytes {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("offer of {} bytes; the limit is {}", body.len(), w.config().max_offer_bytes),
        );
    }
    let Ok(offer) = String::from_utf8(body.to_vec()) else {
        return error(StatusCode::BAD_REQUEST, "the offer is not UTF-8".into());
    };
    match w.add_viewer(&name, rendition.as_deref(), offer, None).await {
        Ok((id, answer, _)) => {
            let mut r = (StatusCode::CREATED, answer).into_response();
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
            if let Ok(loc) = HeaderValue::from_str(&format!("/whep/{name}/{id}")) {
                h.insert(header::LOCATION, loc);
            }
            for l in links(&w) {
                h.append(header::LINK, l);
            }
            cors(r)
        }
        Err(e) => {
            if matches!(e, WebRtcError::BadOffer(_)) {
                tracing::info!(broadcast = %name, error = %e, "WHEP offer refused");
            }
            e.into_response()
        }
    }
}

async fn whep_delete(State(w): State<WebRtc>, Path((name, id)): Path<(String, String)>) -> Response {
    if w.end_session(&name, &id) {
        cors(StatusCode::OK.into_response())
    } else {
        error(StatusCode::NOT_FOUND, format!("no WHEP session {id:?} of {name:?}"))
    }
}

/// Trickle ICE and ICE restarts over PATCH are not supported (RFC 9725
/// allows a 405): the answer carries every candidate of the server.
async fn whep_patch() -> Response {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "trickle ICE is not supported; send a complete offer".into());
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("DELETE, OPTIONS"));
    r
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Offer { sdp: String },
    Candidate { candidate: webrtc::peer_connection::RTCIceCandidateInit },
}

async fn ws(
    State(w): State<WebRtc>,
    Path(name): Path<String>,
    ClientIp(ip): ClientIp,
    uri: Uri,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !w.allow_offer(ip) {
        return too_many();
    }
    let rendition = match rendition_of(&uri) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let limit = w.config().max_offer_bytes;
    upgrade.max_message_size(limit + 1024).on_upgrade(move |socket| ws_session(w, name, rendition, socket))
}

async fn send_json(socket: &mut WebSocket, v: serde_json::Value) -> bool {
    socket.send(Message::Text(v.to_string().into())).await.is_ok()
}

/// One WebSocket: hello → offer → answer (+ candidates both ways); the
/// viewer lives as long as the socket.
async fn ws_session(w: WebRtc, name: String, rendition: Option<String>, mut socket: WebSocket) {
    let rendition = rendition.as_deref();
    let hello = serde_json::json!({ "type": "hello", "iceServers": w.config().ice.ice_servers, "status": w.status(&name, rendition) });
    if !send_json(&mut socket, hello).await {
        return;
    }
    let mut session: Option<(String, std::sync::Arc<dyn webrtc::peer_connection::PeerConnection>)> = None;
    let (cand_tx, mut cand_rx) = tokio::sync::mpsc::channel(16);
    let mut cand_tx = Some(cand_tx);
    let mut status_tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tokio::select! {
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { break };
                let text = match msg {
                    Message::Text(t) => t,
                    Message::Close(_) => break,
                    _ => continue,
                };
                match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(ClientMessage::Offer { sdp }) if session.is_none() => {
                        match w.add_viewer(&name, rendition, sdp, cand_tx.take()).await {
                            Ok((id, answer, pc)) => {
                                if !send_json(&mut socket, serde_json::json!({ "type": "answer", "sdp": answer, "session": id })).await {
                                    w.end_session(&name, &id);
                                    return;
                                }
                                session = Some((id, pc));
                            }
                            Err(e) => {
                                let _ = send_json(&mut socket, serde_json::json!({ "type": "error", "message": e.to_string() })).await;
                                break;
                            }
                        }
                    }
                    Ok(ClientMessage::Offer { .. }) => {
                        let _ = send_json(&mut socket, serde_json::json!({ "type": "error", "message": "one offer per socket" })).await;
                    }
                    Ok(ClientMessage::Candidate { candidate }) => {
                        if let Some((_, pc)) = &session {
                            if let Err(e) = pc.add_ice_candidate(candidate).await {
                                tracing::debug!(error = %e, "bad ICE candidate from a WebSocket viewer");
                            }
                        }
                    }
                    Err(e) => {
                        let _ = send_json(&mut socket, serde_json::json!({ "type": "error", "message": format!("bad message: {e}") })).await;
                        break;
                    }
                }
            }
            Some(c) = cand_rx.recv() => {
                if !send_json(&mut socket, serde_json::json!({ "type": "candidate", "candidate": c })).await {
                    break;
                }
            }
            _ = status_tick.tick() => {
                if !send_json(&mut socket, serde_json::json!({ "type": "status", "status": w.status(&name, rendition) })).await {
                    break;
                }
            }
        }
    }
    if let Some((id, _)) = session {
        w.end_session(&name, &id);
    }
}
