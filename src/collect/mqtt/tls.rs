//! TLS for the collector's broker connection (rustls, ring provider): the
//! broker is verified against the configured CA, and a client certificate is
//! presented when one is configured (brokers that authenticate the master
//! station by certificate).

use crate::config::MqttTls;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {error}")]
    File { path: String, error: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = |error: String| TlsError::File {
        path: path.display().to_string(),
        error,
    };
    let data = std::fs::read(path).map_err(|e| file(e.to_string()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| file(e.to_string()))?;
    if certs.is_empty() {
        return Err(file("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let file = |error: String| TlsError::File {
        path: path.display().to_string(),
        error,
    };
    let data = std::fs::read(path).map_err(|e| file(e.to_string()))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| file(e.to_string()))?
        .ok_or_else(|| file("no PEM private key in the file".into()))
}

/// The rustls client configuration for `tls`, paths relative to `base`.
pub fn client_config(tls: &MqttTls, base: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&base.join(&tls.ca_file))? {
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(c), Some(k)) => builder.with_client_auth_cert(certs(&base.join(c))?, key(&base.join(k))?)?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
