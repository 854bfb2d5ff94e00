//! The server certificate: the operator's files, or a self-signed certificate made on first
//! start and kept in the data directory (so clients can pin it across restarts).

use std::io;
use std::path::{Path, PathBuf};

use axum_server::tls_rustls::RustlsConfig;

use crate::config::TlsSource;

pub const SELF_SIGNED_CERT: &str = "tls/cert.pem";
pub const SELF_SIGNED_KEY: &str = "tls/key.pem";

/// Names the self-signed certificate is valid for: loopback, the host's name, and the listen
/// address when it is a specific one.
fn subject_names(listen: std::net::SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() && host != "localhost" {
            names.push(host.to_owned());
        }
    }
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    names
}

/// Makes the self-signed certificate unless it exists; returns its paths.
pub fn ensure_self_signed(data_dir: &Path, listen: std::net::SocketAddr) -> io::Result<(PathBuf, PathBuf)> {
    let cert_path = data_dir.join(SELF_SIGNED_CERT);
    let key_path = data_dir.join(SELF_SIGNED_KEY);
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let mut params = rcgen::CertificateParams::new(subject_names(listen)).map_err(io::Error::other)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "edgelb appliance");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let key = rcgen::KeyPair::generate().map_err(io::Error::other)?;
    let cert = params.self_signed(&key).map_err(io::Error::other)?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem())?;
    tracing::info!(cert = %cert_path.display(), "made a self-signed TLS certificate");
    Ok((cert_path, key_path))
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// The rustls configuration to serve with.
pub async fn server_config(
    source: &TlsSource,
    data_dir: &Path,
    listen: std::net::SocketAddr,
) -> io::Result<RustlsConfig> {
    let (cert, key) = match source {
        TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
        TlsSource::SelfSigned => ensure_self_signed(data_dir, listen)?,
    };
    RustlsConfig::from_pem_file(&cert, &key).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "loading TLS certificate {} and key {}: {e}",
                cert.display(),
                key.display()
            ),
        )
    })
}

/// Installs ring as the process's rustls crypto provider (exactly one provider must exist).
pub fn install_crypto_provider() {
    // Err means one is installed already (tests call this repeatedly): fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
