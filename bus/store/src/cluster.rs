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
