//! Stream keys in SQLite: `DATA/gopbus.db`, for a single node.
//!
//! The database is a file other processes may open too (`gopbus streams ...`
//! while `gopbus serve` runs): WAL mode and a busy timeout make that safe, and
//! [`KeyStore::data_version`] lets a server notice changes made by others.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{new_key, now, validate_name, KeyHash, StreamRecord};
use crate::StoreError;

/// The stream-key database.
pub struct KeyStore {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// Changes made through this store (SQLite's `data_version` counts only other connections').
    writes: std::sync::atomic::AtomicI64,
}

/// The database file name inside the data directory.
pub const DB_FILE: &str = "gopbus.db";

impl KeyStore {
    /// Opens (creating if needed) `DIR/gopbus.db`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS streams (
                name TEXT PRIMARY KEY NOT NULL,
                key_hash BLOB NOT NULL UNIQUE,
                created_at INTEGER NOT NULL,
                rotated_at INTEGER
            );",
        )?;
        Ok(Self { conn: Mutex::new(conn), path, writes: 0.into() })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a stream and returns its record and its new secret key.
    pub fn create(&self, name: &str) -> Result<(StreamRecord, String), StoreError> {
        validate_name(name)?;
        let key = new_key()?;
        let now = now();
        let res = self.conn().execute(
            "INSERT INTO streams (name, key_hash, created_at) VALUES (?1, ?2, ?3)",
            params![name, KeyHash::of(&key).0.as_slice(), now],
        );
        match res {
            Ok(_) => Ok((StreamRecord { name: name.to_owned(), created_at: now, rotated_at: None }, key)),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StoreError::Exists(name.to_owned()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// All streams, by name.
    pub fn list(&self) -> Result<Vec<StreamRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT name, created_at, rotated_at FROM streams ORDER BY name")?;
        let rows =
            stmt.query_map([], |r| Ok(StreamRecord { name: r.get(0)?, created_at: r.get(1)?, rotated_at: r.get(2)? }))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One stream.
    pub fn get(&self, name: &str) -> Result<Option<StreamRecord>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT name, created_at, rotated_at FROM streams WHERE name = ?1", [name], |r| {
                Ok(StreamRecord { name: r.get(0)?, created_at: r.get(1)?, rotated_at: r.get(2)? })
            })
            .optional()?)
    }

    /// Deletes a stream; its key stops working.
    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        match self.conn().execute("DELETE FROM streams WHERE name = ?1", [name])? {
            0 => Err(StoreError::NotFound(name.to_owned())),
            _ => {
                self.wrote();
                Ok(())
            }
        }
    }

    /// Gives a stream a new key; the old one stops working. Returns the new key.
    pub fn rotate(&self, name: &str) -> Result<String, StoreError> {
        let key = new_key()?;
        let n = self.conn().execute(
            "UPDATE streams SET key_hash = ?2, rotated_at = ?3 WHERE name = ?1",
            params![name, KeyHash::of(&key).0.as_slice(), now()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        self.wrote();
        Ok(key)
    }

    /// The stream a key publishes to, if the key is valid.
    pub fn authorize(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.name_for(KeyHash::of(key))
    }

    /// The stream a key hash belongs to now.
    pub fn name_for(&self, hash: KeyHash) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT name FROM streams WHERE key_hash = ?1", [hash.0.as_slice()], |r| r.get(0))
            .optional()?)
    }

    /// The hash of the key of stream `name` now.
    pub fn key_hash(&self, name: &str) -> Result<Option<KeyHash>, StoreError> {
        let hash: Option<Vec<u8>> =
            self.conn().query_row("SELECT key_hash FROM streams WHERE name = ?1", [name], |r| r.get(0)).optional()?;
        Ok(hash.and_then(|h| <[u8; 32]>::try_from(h.as_slice()).ok()).map(KeyHash))
    }

    /// Changes whenever keys may have changed: another connection (another
    /// process) committed to the database, or this store rotated or deleted
    /// one (the API in this process).
    pub fn data_version(&self) -> Result<i64, StoreError> {
        let others: i64 = self.conn().pragma_query_value(None, "data_version", |r| r.get(0))?;
        Ok(others.wrapping_add(self.writes.load(std::sync::atomic::Ordering::Acquire)))
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether there are no streams at all.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        let n: i64 = self.conn().query_row("SELECT COUNT(*) FROM streams", [], |r| r.get(0))?;
        Ok(n == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).unwrap();
        std::env::temp_dir().join(format!("gopbus-keys-{}", u64::from_le_bytes(raw)))
    }

    #[test]
    fn create_authorize_rotate_delete() {
        let dir = tmp();
        let store = KeyStore::open(&dir).unwrap();
        let (rec, key) = store.create("alice").unwrap();
        assert_eq!(rec.name, "alice");
        assert!(key.starts_with("sk_") && key.len() == 43);
        assert_eq!(store.authorize(&key).unwrap().as_deref(), Some("alice"));
        assert_eq!(store.authorize("alice").unwrap(), None, "the name is not a key");
        assert!(matches!(store.create("alice"), Err(StoreError::Exists(_))));
        let new = store.rotate("alice").unwrap();
        assert_ne!(new, key);
        assert_eq!(store.authorize(&key).unwrap(), None);
        assert_eq!(store.authorize(&new).unwrap().as_deref(), Some("alice"));
        // The key is not stored in the clear.
        drop(store);
        let raw = std::fs::read(dir.join(DB_FILE)).unwrap();
        let wal = std::fs::read(dir.join("gopbus.db-wal")).unwrap_or_default();
        for hay in [&raw, &wal] {
            assert!(!hay.windows(new.len()).any(|w| w == new.as_bytes()));
        }
        let store = KeyStore::open(&dir).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        store.delete("alice").unwrap();
        assert_eq!(store.authorize(&new).unwrap(), None);
        assert!(matches!(store.delete("alice"), Err(StoreError::NotFound(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn other_connections_changes_are_visible_in_data_version() {
        let dir = tmp();
        let server = KeyStore::open(&dir).unwrap();
        let v0 = server.data_version().unwrap();
        let cli = KeyStore::open(&dir).unwrap();
        cli.create("bob").unwrap();
        assert_ne!(server.data_version().unwrap(), v0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn its_own_rotations_and_deletions_change_data_version_too() {
        let dir = tmp();
        let server = KeyStore::open(&dir).unwrap();
        server.create("bob").unwrap();
        let v0 = server.data_version().unwrap();
        server.rotate("bob").unwrap();
        let v1 = server.data_version().unwrap();
        assert_ne!(v1, v0, "a rotation through the API's own connection");
        server.delete("bob").unwrap();
        assert_ne!(server.data_version().unwrap(), v1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
