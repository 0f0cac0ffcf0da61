//! Redis: one connection helper with bounded waits, and the directory of which
//! node holds which broadcast.

use std::time::Duration;

use gopbus_bus::directory::{BoxFut, Directory};
use gopbus_bus::quic::QuicError;

/// A Redis connection that reconnects by itself, with bounded waits: connecting
/// and each command time out after 2 s, and a lost connection is retried twice,
/// at most 500 ms apart, per failing command. Every Redis user in gopbus (this
/// directory, the stream keys) connects through it.
///
/// redis 0.32's defaults would wait 1 s and then 100 s between reconnection
/// attempts (`set_factor` multiplies backon's 1 s minimum delay; redis-rs issue
/// #1556), so a Redis restart would leave a node without its directory for
/// minutes.
pub async fn connect_redis(url: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2))
        .set_factor(2)
        .set_max_delay(500)
        .set_number_of_retries(2);
    redis::aio::ConnectionManager::new_with_config(client, config).await
}

/// The Redis directory.
pub struct RedisDirectory {
    conn: redis::aio::ConnectionManager,
    ttl: Duration,
}

impl RedisDirectory {
    /// Connects to `url` (`redis://HOST:PORT`); entries live for `ttl` unless refreshed.
    pub async fn connect(url: &str, ttl: Duration) -> Result<Self, QuicError> {
        let conn = connect_redis(url).await.map_err(|e| QuicError::Connect(format!("redis {url}: {e}")))?;
        Ok(Self { conn, ttl })
    }

    /// The TTL entries are written with.
    pub const fn ttl(&self) -> Duration {
        self.ttl
    }

    fn key(broadcast: &str) -> String {
        format!("gopbus:broadcast:{broadcast}")
    }
}

impl Directory for RedisDirectory {
    fn lookup<'a>(&'a self, broadcast: &'a str) -> BoxFut<'a, Option<String>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            redis::cmd("GET")
                .arg(Self::key(broadcast))
                .query_async::<Option<String>>(&mut c)
                .await
                .map_err(|e| QuicError::Directory(e.to_string()))
        })
    }

    fn register<'a>(&'a self, broadcast: &'a str, node: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            redis::cmd("SET")
                .arg(Self::key(broadcast))
                .arg(node)
                .arg("PX")
                .arg(self.ttl.as_millis() as u64)
                .query_async::<()>(&mut c)
                .await
                .map_err(|e| QuicError::Directory(e.to_string()))
        })
    }
}

/// Transcoder job leases in Redis: `gopbus:lease:JOB → holder` written with
/// `SET NX PX`, renewed and released only by their holder (a compare in a Lua
/// script, so a lease that ran out and went to another worker is never
/// extended or deleted by the old one); worker announcements under
/// `gopbus:worker:ID` with a TTL, their ids in the set `gopbus:workers`.
pub struct RedisLeases {
    conn: redis::aio::ConnectionManager,
}

impl RedisLeases {
    /// Connects to `url` (`redis://HOST:PORT`).
    pub async fn connect(url: &str) -> Result<Self, QuicError> {
        let conn = connect_redis(url).await.map_err(|e| QuicError::Connect(format!("redis {url}: {e}")))?;
        Ok(Self { conn })
    }

    fn key(job: &str) -> String {
        format!("gopbus:lease:{job}")
    }
}

/// The set of worker ids that announced themselves.
const WORKERS: &str = "gopbus:workers";

const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
     return redis.call('DEL', KEYS[1]) else return 0 end";

fn dir_err(e: redis::RedisError) -> QuicError {
    QuicError::Directory(e.to_string())
}

impl gopbus_bus::lease::Leases for RedisLeases {
    fn acquire<'a>(&'a self, job: &'a str, holder: &'a str, ttl: Duration) -> BoxFut<'a, bool> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let set: Option<String> = redis::cmd("SET")
                .arg(Self::key(job))
                .arg(holder)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async(&mut c)
                .await
                .map_err(dir_err)?;
            Ok(set.is_some())
        })
    }

    fn renew<'a>(&'a self, job: &'a str, holder: &'a str, ttl: Duration) -> BoxFut<'a, bool> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let n: i64 = redis::Script::new(RENEW)
                .key(Self::key(job))
                .arg(holder)
                .arg(ttl.as_millis() as u64)
                .invoke_async(&mut c)
                .await
                .map_err(dir_err)?;
            Ok(n == 1)
        })
    }

    fn release<'a>(&'a self, job: &'a str, holder: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let _: i64 = redis::Script::new(RELEASE)
                .key(Self::key(job))
                .arg(holder)
                .invoke_async(&mut c)
                .await
                .map_err(dir_err)?;
            Ok(())
        })
    }

    fn announce<'a>(&'a self, holder: &'a str, info: &'a str, ttl: Duration) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            redis::cmd("SET")
                .arg(format!("gopbus:worker:{holder}"))
                .arg(info)
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .query_async::<()>(&mut c)
                .await
                .map_err(dir_err)?;
            redis::cmd("SADD").arg(WORKERS).arg(holder).query_async::<()>(&mut c).await.map_err(dir_err)
        })
    }

    fn workers(&self) -> BoxFut<'_, Vec<String>> {
        Box::pin(async move {
            let mut c = self.conn.clone();
            let ids: Vec<String> = redis::cmd("SMEMBERS").arg(WORKERS).query_async(&mut c).await.map_err(dir_err)?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = ids.iter().map(|id| format!("gopbus:worker:{id}")).collect();
            let values: Vec<Option<String>> =
                redis::cmd("MGET").arg(&keys).query_async(&mut c).await.map_err(dir_err)?;
            // Forget the workers whose announcement ran out.
            let gone: Vec<&String> = ids.iter().zip(&values).filter(|(_, v)| v.is_none()).map(|(id, _)| id).collect();
            if !gone.is_empty() {
                let _: i64 = redis::cmd("SREM").arg(WORKERS).arg(&gone).query_async(&mut c).await.map_err(dir_err)?;
            }
            Ok(values.into_iter().flatten().collect())
        })
    }
}
