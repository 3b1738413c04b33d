//! TLS for the ingest listener: rustls with the ring provider, TLS 1.2 and 1.3 only, ALPN
//! `h2` and `http/1.1`, optional client certificates (mTLS).
//!
//! The certificate and key are reloaded when their files change or on SIGHUP. A pair that
//! does not load (unreadable, not PEM, key not matching the certificate) is refused: the
//! previous one keeps serving, the reason is logged and counted. New connections use the new
//! pair; connections in flight keep the one they were opened with.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

use super::client_cert::not_after;
use crate::config::{TlsConfig, TlsVersion};
use crate::telemetry::metrics::Metrics;
use crate::watch::{parent_dir, watch_paths};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The listener's current TLS settings; swapped whole on reload.
pub struct TlsState {
    config: TlsConfig,
    current: ArcSwap<ServerConfig>,
    metrics: Arc<Metrics>,
}

impl TlsState {
    /// Loads the files; an error here stops the daemon from starting.
    pub fn load(config: &TlsConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, TlsError> {
        let (server, expires) = build(config)?;
        metrics.set_tls_cert_expiry(expires);
        Ok(Arc::new(Self {
            config: config.clone(),
            current: ArcSwap::from_pointee(server),
            metrics,
        }))
    }

    /// The settings a new connection's handshake uses.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Loads the files again; keeps the running pair if they do not load.
    pub fn reload(&self) {
        match build(&self.config) {
            Ok((server, expires)) => {
                self.current.store(Arc::new(server));
                self.metrics.set_tls_cert_expiry(expires);
                self.metrics.tls_reloads.with_label_values(&["success"]).inc();
                tracing::info!(cert = %self.config.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                self.metrics.tls_reloads.with_label_values(&["failure"]).inc();
                tracing::error!(%error, "TLS certificate reload failed; the previous certificate stays in use");
            }
        }
    }

    /// Watches the certificate, key and client CA files (their directories, so replacing a
    /// file by rename or a symlink swap is seen too); the returned future reloads on a change
    /// until `cancel`.
    pub fn watch(
        self: &Arc<Self>,
        cancel: CancellationToken,
    ) -> notify::Result<impl Future<Output = ()> + Send + 'static> {
        let files: Vec<PathBuf> =
            [Some(&self.config.cert), Some(&self.config.key), self.config.client_ca.as_ref()]
                .into_iter()
                .flatten()
                .cloned()
                .collect();
        let dirs = files.iter().map(|f| parent_dir(f)).collect();
        let names: Vec<_> =
            files.iter().filter_map(|f| f.file_name().map(|n| n.to_owned())).collect();
        // Kubernetes-style secret mounts swap a `..data` symlink: any change in the directory
        // of a file we read counts.
        let relevant = move |p: &std::path::Path| {
            p.file_name().is_some_and(|n| {
                names.iter().any(|m| m == n) || n.to_string_lossy().starts_with("..")
            })
        };
        let state = Arc::clone(self);
        watch_paths(dirs, relevant, cancel, move || state.reload())
    }
}

/// The server settings and the certificate's expiry (seconds since the epoch).
fn build(config: &TlsConfig) -> Result<(ServerConfig, i64), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)?;
    let builder = match &config.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| file_error(path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error(path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = read_certs(&config.cert)?;
    let expires = not_after(&chain[0])
        .ok_or_else(|| file_error(&config.cert, "the first certificate cannot be parsed"))?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| file_error(&config.key, e))?;
    let mut server = builder.with_single_cert(chain, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((server, expires))
}

fn read_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn file_error(path: &std::path::Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_owned(), message: e.to_string() }
}
