//! TLS for the bus: a self-signed certificate made on first start (or a real one),
//! and client trust from a CA file or the web PKI roots.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{server_transport, transport, QuicError, ALPN};

/// Installs the ring crypto provider for the whole process, once. With quinn,
/// webrtc and reqwest in one binary both ring and aws-lc-rs get compiled in and
/// rustls cannot pick one by itself.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The server's certificate chain and key, and where the certificate is.
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The certificate file (clients trust it with `--bus-ca`).
    pub cert_path: PathBuf,
    /// Whether it was created just now.
    pub created: bool,
}

/// Loads `cert`/`key` if given; otherwise `DIR/bus-cert.pem` and `DIR/bus-key.pem`,
/// creating a self-signed pair for `localhost`, `127.0.0.1`, `::1` and `extra_names`
/// on first use.
pub fn server_identity(
    cert: Option<&Path>,
    key: Option<&Path>,
    dir: &Path,
    extra_names: &[String],
) -> Result<ServerIdentity, QuicError> {
    let (cert_path, key_path, created) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf(), false),
        (None, None) => {
            let c = dir.join("bus-cert.pem");
            let k = dir.join("bus-key.pem");
            let mut created = false;
            if !c.exists() || !k.exists() {
                let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
                names.extend(extra_names.iter().cloned());
                let made = rcgen::generate_simple_self_signed(names).map_err(|e| QuicError::Tls(e.to_string()))?;
                std::fs::create_dir_all(dir).map_err(|e| QuicError::Config(format!("{}: {e}", dir.display())))?;
                write_private(&k, made.signing_key.serialize_pem().as_bytes())?;
                std::fs::write(&c, made.cert.pem()).map_err(|e| QuicError::Config(format!("{}: {e}", c.display())))?;
                created = true;
            }
            (c, k, created)
        }
        _ => return Err(QuicError::Config("--tls-cert and --tls-key go together".into())),
    };
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| QuicError::Config(format!("{}: {e}", cert_path.display())))?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| QuicError::Config(format!("{}: {e}", key_path.display())))?;
    Ok(ServerIdentity { chain, key, cert_path, created })
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), QuicError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).map_err(|e| QuicError::Config(format!("{}: {e}", path.display())))?;
    f.write_all(data).map_err(|e| QuicError::Config(format!("{}: {e}", path.display())))
}

/// A quinn server configuration for `identity`.
pub fn server_config(identity: ServerIdentity) -> Result<quinn::ServerConfig, QuicError> {
    install_crypto_provider();
    let mut crypto = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(crypto).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(server_transport()));
    Ok(config)
}

/// A quinn client configuration trusting the certificates in `ca` (PEM), or the
/// web PKI roots when `None`.
pub fn client_config(ca: Option<&Path>) -> Result<quinn::ClientConfig, QuicError> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| QuicError::Config(format!("{}: {e}", path.display())))?;
            for c in certs {
                roots.add(c).map_err(|e| QuicError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut crypto = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(crypto).map_err(|e| QuicError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}
