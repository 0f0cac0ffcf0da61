//! The authorization hook: an external URL asked whether a publish may go
//! ahead (nginx-rtmp's `on_publish`).
//!
//! `POST URL` with `{"action":"publish","name","key","client_ip","app"}`: a
//! 2xx answer allows; any other refuses, and the publisher is told the
//! status and the first line of the body; no answer within the timeout (or
//! no connection) refuses too, unless `fail_open`. Answers (not failures) may
//! be cached for a short while per (name, key, client address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gopbus_store::{PublishHook, PublishRequest};

/// Settings of the hook.
#[derive(Debug, Clone)]
pub struct HookConfig {
    /// Where publishes are put to the question.
    pub url: String,
    /// Time allowed for an answer.
    pub timeout: Duration,
    /// Allow the publish when the hook does not answer (timeout, no connection).
    pub fail_open: bool,
    /// How long an answer is reused for the same name, key and address (zero: not at all).
    pub cache: Duration,
}

/// (name, key, client address): what an answer is cached for.
type CacheKey = (String, String, IpAddr);
/// When an answer came, and the answer.
type Cached = (Instant, Result<(), String>);

/// Answers kept at most (past it, new ones are not cached).
const CACHE_MAX: usize = 10_000;

/// The HTTP authorization hook.
pub struct HttpHook {
    config: HookConfig,
    client: reqwest::Client,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl HttpHook {
    /// A hook with `config`.
    pub fn new(config: HookConfig) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("gopbus/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { config, client, cache: Mutex::default() })
    }

    /// The hook's answer (`Ok(Ok)` allow, `Ok(Err)` refuse), or why it gave none.
    async fn ask(&self, r: &PublishRequest) -> Result<Result<(), String>, String> {
        let body = serde_json::json!({
            "action": "publish",
            "name": r.name,
            "key": r.key,
            "client_ip": r.peer.ip().to_string(),
            "app": r.app,
        });
        let response = self.client.post(&self.config.url).json(&body).send().await.map_err(|e| {
            if e.is_timeout() {
                format!("the authorization hook did not answer within {} ms", self.config.timeout.as_millis())
            } else {
                format!("the authorization hook could not be reached ({e})")
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(Ok(()));
        }
        let text = response.text().await.unwrap_or_default();
        let line: String = text.lines().next().unwrap_or("").chars().take(200).collect();
        Ok(Err(if line.is_empty() {
            format!("HTTP {}", status.as_u16())
        } else {
            format!("HTTP {}: {line}", status.as_u16())
        }))
    }
}

impl PublishHook for HttpHook {
    fn check(
        &self,
        r: PublishRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let key = (r.name.clone(), r.key.clone(), r.peer.ip());
            if !self.config.cache.is_zero() {
                let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((at, answer)) = cache.get(&key) {
                    if at.elapsed() < self.config.cache {
                        return answer.clone();
                    }
                }
            }
            let answer = match self.ask(&r).await {
                Ok(answer) => answer,
                // No answer: not cached.
                Err(why) if self.config.fail_open => {
                    tracing::warn!(broadcast = %r.name, error = %why, "authorization hook failed; publish allowed (fail open)");
                    return Ok(());
                }
                Err(why) => {
                    tracing::warn!(broadcast = %r.name, error = %why, "authorization hook failed; publish refused");
                    return Err(why);
                }
            };
            if !self.config.cache.is_zero() {
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                let ttl = self.config.cache;
                cache.retain(|_, (at, _)| at.elapsed() < ttl);
                if cache.len() < CACHE_MAX {
                    cache.insert(key, (Instant::now(), answer.clone()));
                }
            }
            answer
        })
    }
}
