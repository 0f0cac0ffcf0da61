//! Optional upload of the recordings to S3-compatible storage, for a CDN.
//!
//! The local recording is the source of truth and the backlog: the segmenter
//! only marks a session "dirty" (never waits), and this task copies what is
//! new in its directory — media files first, then the playlist — so an
//! outage of the object store costs nothing but delay. A session whose
//! closed (`#EXT-X-ENDLIST`) playlist is in the bucket gets a `.uploaded`
//! marker and is not looked at again, also after a restart.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, ClientOptions, ObjectStore, PutOptions, RetryConfig};
use tokio_util::sync::CancellationToken;

/// The marker of a session that is completely in the bucket.
pub(crate) const UPLOADED: &str = ".uploaded";

/// Where recordings are uploaded.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The bucket.
    pub bucket: String,
    /// Key prefix: objects are `PREFIX/NAME/SESSION/FILE` (no prefix: `NAME/SESSION/FILE`).
    pub prefix: String,
    /// Endpoint of an S3-compatible server (`http://127.0.0.1:9000`); AWS when `None`.
    pub endpoint: Option<String>,
    /// Region; from `AWS_REGION`/`AWS_DEFAULT_REGION` or `us-east-1` when `None`.
    pub region: Option<String>,
    /// Access key; from `AWS_ACCESS_KEY_ID` (or the instance's role) when `None`.
    pub access_key: Option<String>,
    /// Secret key; from `AWS_SECRET_ACCESS_KEY` when `None`.
    pub secret_key: Option<String>,
}

/// Why the object store could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("S3 output: {0}")]
pub struct S3Error(#[from] object_store::Error);

/// A connected bucket (cheap to clone).
#[derive(Debug, Clone)]
pub struct S3Target {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `bucket` or `endpoint/bucket`, for the log.
    pub(crate) describe: String,
}

impl S3Config {
    /// Builds the client (no request is made yet). The standard `AWS_*`
    /// variables fill what is not set here.
    pub fn connect(&self) -> Result<S3Target, S3Error> {
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&self.bucket);
        // (Client options replace the builder's: plain HTTP is allowed here, for a self-hosted server.)
        let mut options =
            ClientOptions::new().with_connect_timeout(Duration::from_secs(5)).with_timeout(Duration::from_secs(60));
        if let Some(e) = &self.endpoint {
            // A self-hosted server: path-style requests.
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
            options = options.with_allow_http(e.starts_with("http://"));
        }
        if let Some(r) = &self.region {
            b = b.with_region(r);
        }
        if let Some(k) = &self.access_key {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &self.secret_key {
            b = b.with_secret_access_key(k);
        }
        // Few quick retries per request: the uploader retries the whole file later.
        let retry = RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(10), ..RetryConfig::default() };
        let store = b.with_retry(retry).with_client_options(options).build()?;
        let describe = match &self.endpoint {
            Some(e) => format!("{}/{}", e.trim_end_matches('/'), self.bucket),
            None => format!("s3://{}", self.bucket),
        };
        Ok(S3Target { store: Arc::new(store), prefix: self.prefix.trim_matches('/').to_owned(), describe })
    }
}

/// What of a session being recorded is in the bucket already.
#[derive(Default)]
struct Progress {
    media: HashSet<String>,
    /// Length and modification time of the playlist last uploaded.
    playlist: Option<(u64, SystemTime)>,
}

/// The upload task's state, shared with the segmenters that mark sessions dirty.
pub(crate) struct Uploader {
    target: S3Target,
    root: PathBuf,
    dirty: Mutex<HashSet<PathBuf>>,
    wake: tokio::sync::Notify,
}

impl Uploader {
    pub(crate) fn new(target: S3Target, root: PathBuf) -> Self {
        Self { target, root, dirty: Mutex::default(), wake: tokio::sync::Notify::new() }
    }

    /// Something changed in a session's directory.
    pub(crate) fn mark(&self, dir: &Path) {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).insert(dir.to_owned());
        self.wake.notify_one();
    }

    /// Uploads until `stop`, then makes one last pass (bounded by 10 s).
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        // What a previous process did not finish.
        for s in crate::recordings(&self.root) {
            if !s.dir.join(UPLOADED).exists() {
                self.mark(&s.dir);
            }
        }
        tracing::info!(bucket = %self.target.describe, "HLS recordings upload to S3");
        let mut progress: HashMap<PathBuf, Progress> = HashMap::new();
        let mut delay = Duration::from_secs(1);
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            let stopping = stop.is_cancelled();
            let batch: Vec<PathBuf> = {
                let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
                let mut v: Vec<PathBuf> = dirty.drain().collect();
                v.sort();
                v
            };
            let mut failed = None;
            for dir in batch {
                if failed.is_some() {
                    self.mark_quietly(&dir);
                    continue;
                }
                let p = progress.entry(dir.clone()).or_default();
                match self.sync(&dir, p).await {
                    Ok(true) => {
                        progress.remove(&dir);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        self.mark_quietly(&dir);
                        failed = Some(e);
                    }
                }
            }
            match failed {
                Some(e) => {
                    if failing_since.is_none() {
                        failing_since = Some(tokio::time::Instant::now());
                        let e = chain(&e);
                        tracing::warn!(
                            bucket = %self.target.describe, error = %e,
                            "S3 upload failing; recordings stay on disk and are uploaded when it is back"
                        );
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                None => {
                    if let Some(since) = failing_since.take() {
                        tracing::info!(bucket = %self.target.describe, after = ?since.elapsed(), "S3 upload working again");
                    }
                    delay = Duration::from_secs(1);
                }
            }
            if stopping {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    // The segmenters close their recordings as the broadcasts end: give that a moment.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                _ = self.wake.notified(), if failing_since.is_none() => {}
                _ = tokio::time::sleep(delay), if failing_since.is_some() => {}
            }
        }
    }

    fn mark_quietly(&self, dir: &Path) {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).insert(dir.to_owned());
    }

    /// Uploads what is new in `dir`; true once the closed session is all in the bucket.
    async fn sync(&self, dir: &Path, p: &mut Progress) -> Result<bool, object_store::Error> {
        let (Some(session), Some(name)) = (dir.file_name(), dir.parent().and_then(Path::file_name)) else {
            return Ok(true);
        };
        let (name, session) = (name.to_string_lossy().into_owned(), session.to_string_lossy().into_owned());
        if dir.join(UPLOADED).exists() {
            return Ok(true);
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            // Deleted (retention) before it was uploaded.
            tracing::warn!(recording = %dir.display(), "recording gone before it was completely uploaded");
            return Ok(true);
        };
        let mut media: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| !f.starts_with('.') && (f.ends_with(".m4s") || f.ends_with(".mp4")))
            .filter(|f| !p.media.contains(f))
            .collect();
        // Init segments first, then segments in order: a reader never finds a playlist entry missing.
        media.sort_by_key(|f| (!f.starts_with("init-"), f.len(), f.clone()));
        for f in media {
            let Ok(data) = tokio::fs::read(dir.join(&f)).await else { continue };
            let kind = if f.ends_with(".mp4") { "video/mp4" } else { "video/iso.segment" };
            self.put(&name, &session, &f, data, kind, "public, max-age=31536000, immutable").await?;
            p.media.insert(f);
        }
        let playlist = dir.join("index.m3u8");
        let Ok(meta) = tokio::fs::metadata(&playlist).await else { return Ok(false) };
        let stamp = (meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
        if p.playlist == Some(stamp) {
            return Ok(false);
        }
        let Ok(text) = tokio::fs::read(&playlist).await else { return Ok(false) };
        let closed = text.ends_with(b"#EXT-X-ENDLIST\n");
        let cache = if closed { "public, max-age=31536000" } else { "no-cache" };
        self.put(&name, &session, "index.m3u8", text, "application/vnd.apple.mpegurl", cache).await?;
        p.playlist = Some(stamp);
        if closed {
            // Media written after the playlist was read are picked up by the next pass (none: it is closed).
            let _ = tokio::fs::write(dir.join(UPLOADED), b"").await;
            tracing::info!(recording = %dir.display(), bucket = %self.target.describe, files = p.media.len() + 1, "recording uploaded");
        }
        Ok(closed)
    }

    async fn put(
        &self,
        name: &str,
        session: &str,
        file: &str,
        data: Vec<u8>,
        kind: &'static str,
        cache: &'static str,
    ) -> Result<(), object_store::Error> {
        let key = if self.target.prefix.is_empty() {
            format!("{name}/{session}/{file}")
        } else {
            format!("{}/{name}/{session}/{file}", self.target.prefix)
        };
        let attributes: Attributes =
            [(Attribute::ContentType, kind), (Attribute::CacheControl, cache)].into_iter().collect();
        let options = PutOptions { attributes, ..PutOptions::default() };
        self.target.store.put_opts(&Key::from(key), data.into(), options).await?;
        Ok(())
    }
}

/// An error with its causes: `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
