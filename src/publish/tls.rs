//! TLS towards a broker: the files of a `tls:` section, read and checked.
//!
//! RabbitMQ connects through rustls with the ring provider (as the ingest listener does):
//! TLS 1.2 and 1.3 only, hostname verification on, the CA file's certificates as the only
//! trust anchors when one is given, the system's trust store otherwise. Kafka's librdkafka
//! does its own TLS with OpenSSL, from the same files; they are checked here too, so that
//! `check-config` and a reload refuse a missing file or a key that does not match its
//! certificate before a connection is tried.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};

use crate::config::BrokerTlsConfig;

/// The contents of a `tls:` section's files.
pub struct TlsMaterial {
    ca: Option<Vec<CertificateDer<'static>>>,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// SHA-256 over every file's bytes: a reload reconnects only when something changed.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").field("client_key", &"[redacted]").finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Reads and parses the files; the error names the file and what is wrong with it.
    pub fn read(config: &BrokerTlsConfig) -> Result<Self, String> {
        let mut hash = Sha256::new();
        let mut read = |path: &Path| -> Result<Vec<u8>, String> {
            let bytes =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            hash.update(path.as_os_str().as_encoded_bytes());
            hash.update(&bytes);
            Ok(bytes)
        };
        let ca = match &config.ca {
            None => None,
            Some(path) => Some(certificates(path, &read(path)?)?),
        };
        let client = match (&config.cert, &config.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let chain = certificates(cert, &read(cert)?)?;
                let key_pem = read(key)?;
                let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                    .map_err(|e| format!("{}: not a PEM private key ({e})", key.display()))?;
                Some((chain, key_der))
            }
            _ => return Err("cert and key go together (a client certificate needs its key)".into()),
        };
        let material = TlsMaterial { ca, client, fingerprint: hash.finalize().into() };
        // Build once now, so that a key that does not match its certificate is refused here.
        material.client_config()?;
        Ok(material)
    }

    /// The rustls settings of a connection to the broker.
    pub fn client_config(&self) -> Result<ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(self.roots()?);
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| format!("client certificate and key: {e}")),
        }
    }

    fn roots(&self) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        match &self.ca {
            Some(ca) => {
                for cert in ca {
                    roots.add(cert.clone()).map_err(|e| format!("CA certificate: {e}"))?;
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    return Err("no CA file given and no system trust store found".into());
                }
            }
        }
        Ok(roots)
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in the file", path.display()));
    }
    Ok(certs)
}
