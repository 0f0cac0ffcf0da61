//! Stream keys in Redis, shared by every ingest node of a cluster.
//!
//! Layout (plain keys; one Redis, not Redis Cluster):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `gopbus:stream:NAME` | hash | `key_hash` (hex SHA-256), `created_at`, `rotated_at` |
//! | `gopbus:streamkey:HASH` | string | the stream name: the lookup a publish makes |
//! | `gopbus:streams` | set | every stream name |
//! | `gopbus:streams:version` | integer | incremented by every change |
//!
//! Every change is one Lua script, so the hash, the index and the set never
//! disagree, and concurrent `gopbus streams` commands on different machines
//! cannot both create the same name.

use redis::aio::ConnectionManager;

use super::{new_key, now, validate_name, KeyHash, StreamRecord};
use crate::StoreError;

const STREAMS: &str = "gopbus:streams";
const VERSION: &str = "gopbus:streams:version";
const INDEX_PREFIX: &str = "gopbus:streamkey:";

fn stream_key(name: &str) -> String {
    format!("gopbus:stream:{name}")
}

fn index_key(hash: &str) -> String {
    format!("{INDEX_PREFIX}{hash}")
}

/// KEYS: stream, index, set, version. ARGV: name, hash, now. Returns 1, or 0 if the name exists.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'key_hash', ARGV[2], 'created_at', ARGV[3])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('INCR', KEYS[4])
return 1
";

/// KEYS: stream, new index, version. ARGV: name, new hash, now, index prefix.
/// Returns 1, or 0 if there is no such stream.
const ROTATE: &str = r"
local old = redis.call('HGET', KEYS[1], 'key_hash')
if not old then return 0 end
redis.call('DEL', ARGV[4] .. old)
redis.call('HSET', KEYS[1], 'key_hash', ARGV[2], 'rotated_at', ARGV[3])
redis.call('SET', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
";

/// KEYS: stream, set, version. ARGV: name, index prefix. Returns 1, or 0 if there is no such stream.
const DELETE: &str = r"
local old = redis.call('HGET', KEYS[1], 'key_hash')
if not old then return 0 end
redis.call('DEL', ARGV[2] .. old, KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('INCR', KEYS[3])
return 1
";

/// The Redis stream-key store. Cheap to clone (one multiplexed connection that
/// reconnects by itself).
#[derive(Clone)]
pub struct RedisKeys {
    conn: ConnectionManager,
}

impl RedisKeys {
    /// Connects to `url` (`redis://HOST:PORT[/DB]`). Fails if Redis cannot be reached now.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        // Bounded waits: a publish must be refused with an error, not hang, while Redis is away.
        let conn = crate::cluster::connect_redis(url).await.map_err(|e| StoreError::Redis(format!("{url}: {e}")))?;
        Ok(Self { conn })
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut c = self.conn.clone();
        cmd.query_async(&mut c).await.map_err(|e| StoreError::Redis(e.to_string()))
    }

    fn script(body: &str, keys: &[&str], args: &[&str]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(body).arg(keys.len()).arg(keys).arg(args);
        cmd
    }

    /// Creates a stream and returns its record and its new secret key.
    pub async fn create(&self, name: &str) -> Result<(StreamRecord, String), StoreError> {
        validate_name(name)?;
        let key = new_key()?;
        let (hash, at) = (KeyHash::of(&key).hex(), now());
        let cmd = Self::script(
            CREATE,
            &[&stream_key(name), &index_key(&hash), STREAMS, VERSION],
            &[name, &hash, &at.to_string()],
        );
        match self.query::<i64>(&cmd).await? {
            1 => Ok((StreamRecord { name: name.to_owned(), created_at: at, rotated_at: None }, key)),
            _ => Err(StoreError::Exists(name.to_owned())),
        }
    }

    /// All streams, by name.
    pub async fn list(&self) -> Result<Vec<StreamRecord>, StoreError> {
        let mut names: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(STREAMS)).await?;
        names.sort();
        let mut pipe = redis::pipe();
        for n in &names {
            pipe.cmd("HMGET").arg(stream_key(n)).arg("created_at").arg("rotated_at");
        }
        let mut c = self.conn.clone();
        let times: Vec<(Option<i64>, Option<i64>)> =
            pipe.query_async(&mut c).await.map_err(|e| StoreError::Redis(e.to_string()))?;
        Ok(names
            .into_iter()
            .zip(times)
            .map(|(name, (created, rotated))| StreamRecord {
                name,
                created_at: created.unwrap_or(0),
                rotated_at: rotated,
            })
            .collect())
    }

    /// Deletes a stream; its key stops working.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let cmd = Self::script(DELETE, &[&stream_key(name), STREAMS, VERSION], &[name, INDEX_PREFIX]);
        match self.query::<i64>(&cmd).await? {
            1 => Ok(()),
            _ => Err(StoreError::NotFound(name.to_owned())),
        }
    }

    /// Gives a stream a new key; the old one stops working. Returns the new key.
    pub async fn rotate(&self, name: &str) -> Result<String, StoreError> {
        let key = new_key()?;
        let hash = KeyHash::of(&key).hex();
        let cmd = Self::script(
            ROTATE,
            &[&stream_key(name), &index_key(&hash), VERSION],
            &[name, &hash, &now().to_string(), INDEX_PREFIX],
        );
        match self.query::<i64>(&cmd).await? {
            1 => Ok(key),
            _ => Err(StoreError::NotFound(name.to_owned())),
        }
    }

    /// The stream a key hash belongs to now.
    pub async fn name_for(&self, hash: KeyHash) -> Result<Option<String>, StoreError> {
        self.query(redis::cmd("GET").arg(index_key(&hash.hex()))).await
    }

    /// The hash of the key of stream `name` now.
    pub async fn key_hash(&self, name: &str) -> Result<Option<KeyHash>, StoreError> {
        let hex: Option<String> = self.query(redis::cmd("HGET").arg(stream_key(name)).arg("key_hash")).await?;
        Ok(hex.and_then(|h| KeyHash::from_hex(&h)))
    }

    /// The change counter.
    pub async fn version(&self) -> Result<i64, StoreError> {
        Ok(self.query::<Option<i64>>(redis::cmd("GET").arg(VERSION)).await?.unwrap_or(0))
    }

    /// Whether there are no streams at all.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.query::<i64>(redis::cmd("SCARD").arg(STREAMS)).await? == 0)
    }
}
