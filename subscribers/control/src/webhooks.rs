//! Webhooks: `stream.started`, `stream.ended` and `recording.ready`, signed as
//! the Standard Webhooks specification says, delivered at least once from a
//! persistent outbox.
//!
//! # Contract
//!
//! - An event is written to the outbox (SQLite, `DATA/webhooks.db`, one row
//!   per endpoint) before any delivery is tried; the bus's announcement
//!   reader only queues it for the writer, so media never waits on the
//!   database or a receiver.
//! - Per endpoint and stream, events are delivered one at a time in the order
//!   they happened: the next waits until the one before is delivered or given
//!   up. Different streams and endpoints do not wait for each other.
//! - A failed attempt (no connection, a timeout, a status other than 2xx) is
//!   retried with backoff (1 s doubling to 5 min) until `retry_for` after the
//!   event; then it is given up (logged) and the stream's next event goes.
//! - Pending events survive a restart; the outbox holds at most
//!   `max_pending` undelivered rows (past it a new event is dropped, logged)
//!   and keeps the newest `keep_done` finished ones for the API.
//! - Each attempt is signed afresh: `webhook-id` (the event's, the same on
//!   every attempt and endpoint), `webhook-timestamp` (the attempt's, Unix
//!   seconds), `webhook-signature: v1,BASE64(HMAC-SHA256(key, id.timestamp.body))`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use gopbus_bus::{Announcement, Bus, Catalog};
use gopbus_proto::EndReason;
use hmac::{Hmac, Mac};
use rusqlite::{params, Connection};
use serde::Serialize;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

/// Settings of the webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where events are POSTed (each gets every event).
    pub urls: Vec<String>,
    /// The signing key (the secret's base64 part, decoded; see [`decode_secret`]).
    pub key: Vec<u8>,
    /// How long an event is retried before it is given up.
    pub retry_for: Duration,
    /// Time allowed for one attempt.
    pub timeout: Duration,
    /// Undelivered rows the outbox holds at most.
    pub max_pending: usize,
    /// Finished (delivered or given up) rows kept for the API.
    pub keep_done: usize,
    /// The outbox database file.
    pub db: PathBuf,
}

impl WebhookConfig {
    /// Endpoints `urls` signed with `key`, the outbox in `data/webhooks.db`, defaults for the rest.
    pub fn new(urls: Vec<String>, key: Vec<u8>, data: &Path) -> Self {
        Self {
            urls,
            key,
            retry_for: Duration::from_secs(24 * 3600),
            timeout: Duration::from_secs(10),
            max_pending: 100_000,
            keep_done: 10_000,
            db: data.join("webhooks.db"),
        }
    }
}

/// Why the webhooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The outbox database failed.
    #[error("webhook outbox: {0}")]
    Db(#[from] rusqlite::Error),
    /// The secret is not `whsec_` + base64.
    #[error("webhook secret: {0}")]
    Secret(String),
    /// The HTTP client could not be built.
    #[error("webhook client: {0}")]
    Client(String),
}

/// The signing key of a Standard Webhooks secret: `whsec_` (optional)
/// followed by base64 of at least 24 bytes.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, WebhookError> {
    let b64 = secret.trim().strip_prefix("whsec_").unwrap_or(secret.trim());
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| WebhookError::Secret(format!("not whsec_ + base64 ({e})")))?;
    if key.len() < 24 {
        return Err(WebhookError::Secret(format!("{} bytes; at least 24 are needed", key.len())));
    }
    Ok(key)
}

/// A new random secret, `whsec_` + base64 of 32 bytes.
pub fn new_secret() -> String {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).expect("the system random source");
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// The `webhook-signature` header value for one attempt.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// One event to one endpoint, as the API lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Delivery {
    /// The row's id (increases with time).
    pub id: i64,
    /// The event's `webhook-id`.
    pub event_id: String,
    /// `stream.started`, `stream.ended` or `recording.ready`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The stream it is about.
    pub stream: String,
    /// The endpoint.
    pub url: String,
    /// `pending`, `delivered` or `failed` (given up).
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// The last attempt's HTTP status, if it got one.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the event happened (ms since the Unix epoch).
    pub created_ms: i64,
    /// When it was delivered or given up (ms since the Unix epoch).
    pub done_ms: Option<i64>,
    /// The event as sent (JSON).
    pub body: serde_json::Value,
}

/// A closed recording, for `recording.ready`.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingReady {
    /// The broadcast's name.
    pub name: String,
    /// The session (its start in ms since the Unix epoch).
    pub session: String,
    /// Its VOD playlist's path on the HTTP port.
    pub playlist: String,
    /// Seconds of media.
    pub duration: f64,
    /// Media segments.
    pub segments: usize,
    /// Bytes on disk.
    pub bytes: u64,
}

/// The webhooks of a node. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    config: WebhookConfig,
    db: Mutex<Connection>,
    client: reqwest::Client,
    /// Events for the outbox writer.
    queue: mpsc::Sender<(String, String, serde_json::Value)>,
    queue_rx: Mutex<Option<mpsc::Receiver<(String, String, serde_json::Value)>>>,
    /// Woken when rows were written.
    written: Notify,
    /// Attempts by outcome, for metrics.
    counts: WebhookCounts,
}

/// Webhook attempts by outcome since the start.
#[derive(Debug, Default)]
pub struct WebhookCounts {
    /// Delivered (2xx).
    pub delivered: std::sync::atomic::AtomicU64,
    /// Failed and to be retried.
    pub failed_attempts: std::sync::atomic::AtomicU64,
    /// Given up after the retry time.
    pub given_up: std::sync::atomic::AtomicU64,
    /// Events dropped (the queue or the outbox was full).
    pub dropped: std::sync::atomic::AtomicU64,
}

const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Attempts in flight at once (all endpoints and streams).
const MAX_IN_FLIGHT: usize = 32;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl Webhooks {
    /// Opens (creating if needed) the outbox; pending events from a previous
    /// run are delivered once [`run`](Self::run) starts.
    pub fn open(config: WebhookConfig) -> Result<Self, WebhookError> {
        if let Some(dir) = config.db.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let db = Connection::open(&config.db)?;
        db.busy_timeout(Duration::from_secs(5))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                event_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                stream TEXT NOT NULL,
                url TEXT NOT NULL,
                body TEXT NOT NULL,
                created_ms INTEGER NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_ms INTEGER NOT NULL,
                last_status INTEGER,
                last_error TEXT,
                state TEXT NOT NULL DEFAULT 'pending',
                done_ms INTEGER
            );
            CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (state, url, stream, id);",
        )?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("gopbus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let (queue, rx) = mpsc::channel(4096);
        let inner = Inner {
            config,
            db: Mutex::new(db),
            client,
            queue,
            queue_rx: Mutex::new(Some(rx)),
            written: Notify::new(),
            counts: WebhookCounts::default(),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// Attempts by outcome since the start.
    pub fn counts(&self) -> &WebhookCounts {
        &self.inner.counts
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.inner.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event of `kind` about `stream` (never waits; a full queue drops it, logged).
    pub fn emit(&self, kind: &str, stream: &str, data: serde_json::Value) {
        if let Err(e) = self.inner.queue.try_send((kind.to_owned(), stream.to_owned(), data)) {
            tracing::warn!(kind, stream, error = %e, "webhook event dropped: the outbox writer is 4096 events behind");
            self.inner.counts.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes an event to the outbox, one row per endpoint.
    fn write(&self, kind: &str, stream: &str, data: &serde_json::Value) -> Result<(), rusqlite::Error> {
        let mut raw = [0u8; 12];
        getrandom::fill(&mut raw).expect("the system random source");
        let event_id = format!("msg_{}", raw.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let created = now_ms();
        let body = serde_json::json!({ "type": kind, "timestamp": rfc3339(created), "data": data }).to_string();
        let mut db = self.db();
        let pending: i64 = db.query_row("SELECT COUNT(*) FROM outbox WHERE state = 'pending'", [], |r| r.get(0))?;
        if pending as usize + self.inner.config.urls.len() > self.inner.config.max_pending {
            tracing::warn!(
                kind,
                stream,
                pending,
                limit = self.inner.config.max_pending,
                "webhook outbox full; event dropped"
            );
            self.inner.counts.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        let tx = db.transaction()?;
        for url in &self.inner.config.urls {
            tx.execute(
                "INSERT INTO outbox (event_id, kind, stream, url, body, created_ms, next_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                params![event_id, kind, stream, url, body, created],
            )?;
        }
        tx.commit()?;
        tracing::debug!(kind, stream, event_id, "webhook event queued");
        Ok(())
    }

    /// Deliveries, newest first (of `stream`, if given), at most `limit`.
    pub fn deliveries(&self, stream: Option<&str>, limit: usize) -> Result<Vec<Delivery>, rusqlite::Error> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT id, event_id, kind, stream, url, state, attempts, last_status, last_error, created_ms, done_ms, body
             FROM outbox WHERE (?1 IS NULL OR stream = ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = q.query_map(params![stream, limit as i64], |r| {
            let body: String = r.get(11)?;
            Ok(Delivery {
                id: r.get(0)?,
                event_id: r.get(1)?,
                kind: r.get(2)?,
                stream: r.get(3)?,
                url: r.get(4)?,
                state: r.get(5)?,
                attempts: r.get(6)?,
                last_status: r.get(7)?,
                last_error: r.get(8)?,
                created_ms: r.get(9)?,
                done_ms: r.get(10)?,
                body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
            })
        })?;
        rows.collect()
    }

    /// Follows `bus`'s announcements (and `recordings`, closed HLS recordings)
    /// into events and delivers the outbox, until `stop`; then writes what
    /// the bus announced meanwhile (the broadcasts that ended with the
    /// shutdown) before it returns. Pending deliveries wait for the next run.
    pub async fn run(
        self,
        bus: Bus,
        mut recordings: Option<tokio::sync::broadcast::Receiver<RecordingReady>>,
        stop: CancellationToken,
    ) {
        let Some(mut rx) = self.inner.queue_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            tracing::error!("webhooks: run called twice");
            return;
        };
        let writer = {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some((kind, stream, data)) = rx.recv().await {
                    let me2 = me.clone();
                    let r = tokio::task::spawn_blocking(move || me2.write(&kind, &stream, &data)).await;
                    match r {
                        Ok(Ok(())) => me.inner.written.notify_one(),
                        Ok(Err(e)) => tracing::warn!(error = %e, "webhook event could not be written to the outbox"),
                        Err(e) => tracing::warn!(error = %e, "webhook outbox writer failed"),
                    }
                }
            })
        };
        let deliver_stop = CancellationToken::new();
        let deliverer = tokio::spawn(self.clone().deliver(deliver_stop.clone()));
        let mut announcements = bus.announcements();
        let mut live: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                a = announcements.next() => self.announced(a, &mut live),
                r = next_recording(&mut recordings) => match r {
                    Some(rec) => {
                        let data = serde_json::to_value(&rec).unwrap_or_default();
                        self.emit("recording.ready", &rec.name, data);
                    }
                    None => recordings = None,
                },
            }
        }
        // What was announced up to now (the broadcasts the shutdown ended) still goes to the outbox.
        while let Ok(a) = tokio::time::timeout(Duration::from_millis(300), announcements.next()).await {
            self.announced(a, &mut live);
        }
        while let Some(Ok(rec)) = recordings.as_mut().map(|r| r.try_recv()) {
            self.emit("recording.ready", &rec.name.clone(), serde_json::to_value(&rec).unwrap_or_default());
        }
        let queue = self.inner.queue.clone();
        drop(self);
        drop(queue);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        deliver_stop.cancel();
        let _ = deliverer.await;
    }

    fn announced(&self, a: Announcement, live: &mut HashSet<String>) {
        match a {
            Announcement::Started(c) if !c.name.contains('/') => {
                live.insert(c.name.clone());
                self.emit("stream.started", &c.name, started(&c));
            }
            Announcement::Ended(e) if !e.name.contains('/') && live.remove(&e.name) => {
                self.emit("stream.ended", &e.name, ended(&e.name, Some(&e.reason)));
            }
            Announcement::Live(list) => {
                // Resynchronised (the first announcement, or after falling behind).
                let now: HashMap<String, &Catalog> =
                    list.iter().filter(|c| !c.name.contains('/')).map(|c| (c.name.clone(), c)).collect();
                let gone: Vec<String> = live.iter().filter(|n| !now.contains_key(*n)).cloned().collect();
                for name in gone {
                    live.remove(&name);
                    self.emit("stream.ended", &name, ended(&name, None));
                }
                for (name, c) in now {
                    if live.insert(name.clone()) {
                        self.emit("stream.started", &name, started(c));
                    }
                }
            }
            _ => {}
        }
    }

    /// Delivers due events until `stop`: each (endpoint, stream)'s oldest
    /// pending event, when its next attempt is due.
    async fn deliver(self, stop: CancellationToken) {
        let mut failing: HashSet<String> = HashSet::new();
        loop {
            let me = self.clone();
            let due = tokio::task::spawn_blocking(move || me.due()).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "webhook outbox read failed");
                Ok(Vec::new())
            });
            let due = due.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "webhook outbox read failed");
                Vec::new()
            });
            let attempts = due.into_iter().take(MAX_IN_FLIGHT).map(|row| {
                let me = self.clone();
                async move {
                    let outcome = me.attempt(&row).await;
                    (row, outcome)
                }
            });
            let results = futures_util::future::join_all(attempts).await;
            for (row, outcome) in results {
                let url = row.url.clone();
                match &outcome {
                    Ok(_) if failing.remove(&url) => tracing::info!(url, "webhook endpoint answers again"),
                    Err(e) if failing.insert(url.clone()) => {
                        tracing::warn!(url, error = %e.1, "webhook delivery failing; retrying with backoff");
                    }
                    _ => {}
                }
                let me = self.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || me.record(&row, outcome)).await {
                    tracing::warn!(error = %e, "webhook outbox update failed");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.inner.written.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// The head of every (endpoint, stream) queue whose attempt is due.
    fn due(&self) -> Result<Vec<Row>, rusqlite::Error> {
        let db = self.db();
        let mut q = db.prepare(
            "SELECT o.id, o.event_id, o.url, o.body, o.created_ms, o.attempts, o.kind, o.stream FROM outbox o
             JOIN (SELECT MIN(id) AS id FROM outbox WHERE state = 'pending' GROUP BY url, stream) h ON h.id = o.id
             WHERE o.next_ms <= ?1 ORDER BY o.id",
        )?;
        let rows = q.query_map([now_ms()], |r| {
            Ok(Row {
                id: r.get(0)?,
                event_id: r.get(1)?,
                url: r.get(2)?,
                body: r.get(3)?,
                created_ms: r.get(4)?,
                attempts: r.get(5)?,
                kind: r.get(6)?,
                stream: r.get(7)?,
            })
        })?;
        rows.collect()
    }

    /// One attempt: `Ok(status)` on 2xx, `Err((status, why))` otherwise.
    async fn attempt(&self, row: &Row) -> Result<u16, (Option<u16>, String)> {
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let signature = sign(&self.inner.config.key, &row.event_id, timestamp, &row.body);
        let sent = self
            .inner
            .client
            .post(&row.url)
            .header("content-type", "application/json")
            .header("webhook-id", &row.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(row.body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(r.status().as_u16()),
            Ok(r) => Err((Some(r.status().as_u16()), format!("HTTP {}", r.status()))),
            Err(e) => Err((None, error_chain(&e))),
        }
    }

    /// Writes an attempt's outcome: delivered, retried later, or given up.
    fn record(&self, row: &Row, outcome: Result<u16, (Option<u16>, String)>) -> Result<(), rusqlite::Error> {
        let db = self.db();
        let now = now_ms();
        let attempts = row.attempts + 1;
        match outcome {
            Ok(status) => {
                db.execute(
                    "UPDATE outbox SET state = 'delivered', attempts = ?2, last_status = ?3, last_error = NULL, done_ms = ?4 WHERE id = ?1",
                    params![row.id, attempts, status, now],
                )?;
                tracing::info!(kind = %row.kind, stream = %row.stream, url = %row.url, attempts, "webhook delivered");
                self.inner.counts.delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err((status, why)) => {
                let age = Duration::from_millis((now - row.created_ms).max(0) as u64);
                if age >= self.inner.config.retry_for {
                    db.execute(
                        "UPDATE outbox SET state = 'failed', attempts = ?2, last_status = ?3, last_error = ?4, done_ms = ?5 WHERE id = ?1",
                        params![row.id, attempts, status, why, now],
                    )?;
                    tracing::warn!(kind = %row.kind, stream = %row.stream, url = %row.url, attempts, error = %why,
                        "webhook given up after its retry time; the stream's next event goes");
                    self.inner.counts.given_up.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    self.inner.counts.failed_attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let backoff = Duration::from_secs(1u64 << (attempts - 1).min(16)).min(BACKOFF_MAX);
                    db.execute(
                        "UPDATE outbox SET attempts = ?2, last_status = ?3, last_error = ?4, next_ms = ?5 WHERE id = ?1",
                        params![row.id, attempts, status, why, now + backoff.as_millis() as i64],
                    )?;
                }
            }
        }
        // Keep the newest finished rows only.
        db.execute(
            "DELETE FROM outbox WHERE state != 'pending' AND id <= (SELECT id FROM outbox WHERE state != 'pending' ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            [self.inner.config.keep_done as i64],
        )?;
        Ok(())
    }
}

struct Row {
    id: i64,
    event_id: String,
    url: String,
    body: String,
    created_ms: i64,
    attempts: u32,
    kind: String,
    stream: String,
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

async fn next_recording(r: &mut Option<tokio::sync::broadcast::Receiver<RecordingReady>>) -> Option<RecordingReady> {
    let Some(rx) = r.as_mut() else { return std::future::pending().await };
    loop {
        match rx.recv().await {
            Ok(rec) => return Some(rec),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "webhooks fell behind the recordings; recording.ready events lost");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        }
    }
}

fn started(c: &Catalog) -> serde_json::Value {
    let tracks: Vec<serde_json::Value> =
        c.tracks.iter().map(|t| serde_json::json!({ "name": t.name, "codec": t.codec.name() })).collect();
    serde_json::json!({ "name": c.name, "tracks": tracks })
}

fn ended(name: &str, reason: Option<&EndReason>) -> serde_json::Value {
    let (code, message) = match reason {
        Some(EndReason::PublisherLeft) => ("publisher_left", None),
        Some(EndReason::KeyRevoked) => ("key_revoked", None),
        Some(EndReason::Kicked) => ("kicked", None),
        Some(EndReason::Shutdown) => ("shutdown", None),
        Some(EndReason::Error(m)) => ("error", Some(m.clone())),
        None => ("unknown", None),
    };
    serde_json::json!({ "name": name, "reason": code, "message": message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The specification's example: secret, id, timestamp, body and signature.
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(decode_secret("whsec_%%%").is_err());
        assert!(decode_secret("whsec_c2hvcnQ=").is_err(), "too short");
        assert_eq!(decode_secret(&new_secret()).unwrap().len(), 32);
    }
}
