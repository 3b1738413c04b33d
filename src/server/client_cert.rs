//! What a client certificate (mTLS) says about the sender, for sources that accept only
//! certain subjects, and the expiry of our own certificate, for the metric that warns before
//! it lapses.

use std::sync::Arc;

use x509_parser::objects::{oid_registry, oid2abbrev};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The subject attributes of the certificate a connection presented, e.g. `CN=billing`.
#[derive(Debug, Clone)]
pub struct ClientSubject(Arc<Vec<(String, String)>>);

impl ClientSubject {
    /// Parses the leaf certificate; `None` if it is not a certificate we can read (rustls
    /// already verified it, so this does not happen in practice).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let attributes = cert
            .subject()
            .iter_attributes()
            .filter_map(|a| {
                let name = oid2abbrev(a.attr_type(), oid_registry()).ok()?;
                Some((name.to_ascii_uppercase(), a.as_str().ok()?.to_owned()))
            })
            .collect();
        Some(Self(Arc::new(attributes)))
    }

    /// True if the subject has every attribute `pattern` names, with the same value.
    pub fn matches(&self, pattern: &SubjectPattern) -> bool {
        pattern.0.iter().all(|wanted| self.0.iter().any(|have| have == wanted))
    }
}

/// `CN=billing,O=Acme`: attributes a client certificate's subject must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPattern(Vec<(String, String)>);

impl SubjectPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let attributes = text
            .split(',')
            .map(|part| {
                let (name, value) = part
                    .split_once('=')
                    .ok_or_else(|| format!("{part:?} is not NAME=VALUE (e.g. CN=billing)"))?;
                let (name, value) = (name.trim().to_ascii_uppercase(), value.trim().to_owned());
                if name.is_empty() || value.is_empty() {
                    return Err(format!("{part:?} has an empty name or value"));
                }
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(attributes))
    }
}

/// The `notAfter` of a certificate, in seconds since the epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_on_every_named_attribute() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "billing");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let subject = ClientSubject::from_der(cert.der()).unwrap();
        let yes = |p: &str| subject.matches(&SubjectPattern::parse(p).unwrap());
        assert!(yes("CN=billing"));
        assert!(yes("cn = billing , O=Acme"));
        assert!(!yes("CN=billing,O=Other"));
        assert!(!yes("CN=bill"));
        assert!(SubjectPattern::parse("billing").is_err());
        assert!(SubjectPattern::parse("CN=").is_err());
        assert!(not_after(cert.der()).is_some_and(|t| t > 1_700_000_000));
    }
}
