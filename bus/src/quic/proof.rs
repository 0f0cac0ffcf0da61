//! Name-scoped publishing on the bus: an announce proves that the announcer
//! holds the broadcast's stream key, bound to the connection it is sent on.
//!
//! The proof is HMAC-SHA256 keyed by the SHA-256 of the stream key (what a key
//! store keeps) over keying material exported from the connection's TLS
//! session: both ends derive the same material, nobody else can, and it
//! differs per connection and per broadcast name, so a proof seen by a relay
//! cannot be replayed elsewhere.

use std::future::Future;
use std::pin::Pin;

use gopbus_proto::wire::ANNOUNCE_PROOF_LABEL;
use subtle::ConstantTimeEq;

/// Which announces a server accepts from holders of the bus token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AnnouncePolicy {
    /// Any name (the bus token is enough).
    Any,
    /// A name this node has a stream key for only with a valid proof of that
    /// key; other names with the bus token alone.
    #[default]
    Keyed,
    /// Every name only with a valid proof: names without a key here are refused.
    Strict,
}

/// The answer of [`AnnounceKeys::key_hash`].
pub type KeyHashFut<'a> = Pin<Box<dyn Future<Output = Result<Option<[u8; 32]>, String>> + Send + 'a>>;

/// Where a server finds the stream key of a broadcast name.
pub trait AnnounceKeys: Send + Sync + 'static {
    /// The SHA-256 of the stream key of `broadcast`, `None` when this node has
    /// no key for that name; `Err` when the store could not be asked.
    fn key_hash<'a>(&'a self, broadcast: &'a str) -> KeyHashFut<'a>;
}

/// The proof for announcing `broadcast` on `conn` with the key whose SHA-256 is `key_hash`.
pub(crate) fn announce_proof(conn: &quinn::Connection, broadcast: &str, key_hash: &[u8; 32]) -> Option<[u8; 32]> {
    let mut material = [0u8; 32];
    conn.export_keying_material(&mut material, ANNOUNCE_PROOF_LABEL, broadcast.as_bytes()).ok()?;
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key_hash), &material);
    let mut proof = [0u8; 32];
    proof.copy_from_slice(tag.as_ref());
    Some(proof)
}

/// Whether `proof` proves the key `key_hash` for `broadcast` on `conn` (constant time).
pub(crate) fn check_proof(conn: &quinn::Connection, broadcast: &str, key_hash: &[u8; 32], proof: &[u8; 32]) -> bool {
    announce_proof(conn, broadcast, key_hash).is_some_and(|expected| bool::from(expected.ct_eq(proof)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::tls;

    /// Two real QUIC connections to one endpoint on loopback: (server side, client side) of each.
    async fn pairs() -> [(quinn::Connection, quinn::Connection); 2] {
        tls::install_crypto_provider();
        let dir = std::env::temp_dir().join(format!("gopbus-proof-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let identity = tls::server_identity(None, None, &dir, &[]).unwrap();
        let ca = identity.cert_path.clone();
        let server =
            quinn::Endpoint::server(tls::server_config(identity).unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        client.set_default_client_config(tls::client_config(Some(&ca)).unwrap());
        let addr = server.local_addr().unwrap();
        let mut out = Vec::new();
        for _ in 0..2 {
            let connecting = client.connect(addr, "localhost").unwrap();
            let (accepted, connected) =
                tokio::join!(async { server.accept().await.unwrap().await.unwrap() }, connecting);
            out.push((accepted, connected.unwrap()));
        }
        out.try_into().unwrap()
    }

    #[tokio::test]
    async fn a_proof_holds_for_its_key_name_and_connection_only() {
        let [(server_a, client_a), (server_b, client_b)] = pairs().await;
        let key = [7u8; 32];
        let proof = announce_proof(&client_a, "alice", &key).unwrap();
        assert!(check_proof(&server_a, "alice", &key, &proof), "the two ends derive the same proof");
        assert!(!check_proof(&server_a, "alice", &[8u8; 32], &proof), "another key");
        assert!(!check_proof(&server_a, "bob", &key, &proof), "another name");
        assert!(!check_proof(&server_b, "alice", &key, &proof), "replayed on another connection");
        let proof_b = announce_proof(&client_b, "alice", &key).unwrap();
        assert_ne!(proof, proof_b);
        assert!(check_proof(&server_b, "alice", &key, &proof_b));
    }
}
