//! Stream keys: the secret a publisher presents, stored hashed.
//!
//! A stream has a public name (`alice`, what players use) and a secret key (what
//! the publisher puts in OBS). Only SHA-256 of the key is stored: keys are 160
//! random bits, so a fast hash is enough (no dictionary to attack), and a lookup
//! by hash is an index probe.
//!
//! Two stores hold the same records: [`KeyStore`] (SQLite in the data
//! directory, for one node) and [`RedisKeys`] (Redis, shared by every ingest node
//! of a cluster). [`Keys`] is whichever one a server was started with; both have
//! a change counter a server polls to disconnect publishers whose key was rotated
//! or whose stream was deleted by another process.

mod redis_store;
mod sqlite;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

pub use self::redis_store::RedisKeys;
pub use self::sqlite::{KeyStore, DB_FILE};
use crate::StoreError;

/// A stream as stored (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    /// Public name.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: i64,
    /// Last key rotation, seconds since the Unix epoch.
    pub rotated_at: Option<i64>,
}

/// SHA-256 of a stream key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Lower-case hex, as Redis stores it.
    pub fn hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses [`KeyHash::hex`]'s form; `None` if it is not 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(out))
    }
}

/// The stream-key store a server or the `streams` command works with.
#[derive(Clone)]
pub enum Keys {
    /// SQLite in the data directory.
    Sqlite(Arc<KeyStore>),
    /// Redis, shared by a cluster's ingest nodes.
    Redis(RedisKeys),
}

impl Keys {
    /// Runs a blocking SQLite call off the async runtime.
    async fn blocking<T: Send + 'static>(
        store: &Arc<KeyStore>,
        f: impl FnOnce(&KeyStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("key store task: {e}"))))?
    }

    /// Creates a stream and returns its record and its new secret key.
    pub async fn create(&self, name: &str) -> Result<(StreamRecord, String), StoreError> {
        match self {
            Self::Sqlite(s) => {
                let name = name.to_owned();
                Self::blocking(s, move |s| s.create(&name)).await
            }
            Self::Redis(r) => r.create(name).await,
        }
    }

    /// All streams, by name.
    pub async fn list(&self) -> Result<Vec<StreamRecord>, StoreError> {
        match self {
            Self::Sqlite(s) => Self::blocking(s, KeyStore::list).await,
            Self::Redis(r) => r.list().await,
        }
    }

    /// Deletes a stream; its key stops working.
    pub async fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => {
                let name = name.to_owned();
                Self::blocking(s, move |s| s.delete(&name)).await
            }
            Self::Redis(r) => r.delete(name).await,
        }
    }

    /// Gives a stream a new key; the old one stops working. Returns the new key.
    pub async fn rotate(&self, name: &str) -> Result<String, StoreError> {
        match self {
            Self::Sqlite(s) => {
                let name = name.to_owned();
                Self::blocking(s, move |s| s.rotate(&name)).await
            }
            Self::Redis(r) => r.rotate(name).await,
        }
    }

    /// The stream a key publishes to, if the key is valid.
    pub async fn authorize(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.name_for(KeyHash::of(key)).await
    }

    /// The stream a key hash belongs to now.
    pub async fn name_for(&self, hash: KeyHash) -> Result<Option<String>, StoreError> {
        match self {
            Self::Sqlite(s) => Self::blocking(s, move |s| s.name_for(hash)).await,
            Self::Redis(r) => r.name_for(hash).await,
        }
    }

    /// The hash of the key of stream `name` now (`None`: no such stream).
    pub async fn key_hash(&self, name: &str) -> Result<Option<KeyHash>, StoreError> {
        match self {
            Self::Sqlite(s) => {
                let name = name.to_owned();
                Self::blocking(s, move |s| s.key_hash(&name)).await
            }
            Self::Redis(r) => r.key_hash(name).await,
        }
    }

    /// A value that changes whenever any process changes the keys.
    pub async fn version(&self) -> Result<i64, StoreError> {
        match self {
            Self::Sqlite(s) => Self::blocking(s, KeyStore::data_version).await,
            Self::Redis(r) => r.version().await,
        }
    }

    /// Whether there are no streams at all.
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        match self {
            Self::Sqlite(s) => Self::blocking(s, KeyStore::is_empty).await,
            Self::Redis(r) => r.is_empty().await,
        }
    }
}

/// The naming rule for streams: 1–64 of `a-z 0-9 - _`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod hash_tests {
    use super::KeyHash;

    #[test]
    fn hex_round_trips() {
        let h = KeyHash::of("sk_test");
        assert_eq!(KeyHash::from_hex(&h.hex()), Some(h));
        assert_eq!(KeyHash::from_hex("00"), None);
        assert_eq!(KeyHash::from_hex(&"zz".repeat(32)), None);
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn new_key() -> Result<String, StoreError> {
    let mut raw = [0u8; 20];
    getrandom::fill(&mut raw).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(format!("sk_{}", hex(&raw)))
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for bad in ["", "-x", "Alice", "a b", "a/b", "ä", &"x".repeat(65)] {
            assert!(matches!(validate_name(bad), Err(StoreError::InvalidName(_))), "{bad:?}");
        }
        for good in ["a", "alice", "cam-2", "x_y", "0"] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn keys_are_160_random_bits_in_hex() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a[3..].bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(KeyHash([0xab; 32]).hex(), "ab".repeat(32));
    }
}
