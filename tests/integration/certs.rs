//! Certificates made for one test: a CA, and server or client certificates it signs.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SignatureAlgorithm,
};

/// A CA made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
pub struct Leaf {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Orchestron test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A client certificate with subject `CN=name, O=org`.
    pub fn leaf_in_org(&self, name: &str, org: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationName, org);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert: format!("{}{}", cert.pem(), self.issuer.pem()), key: key.serialize_pem() }
    }

    /// A server certificate for `localhost` and `127.0.0.1`, or a client certificate.
    pub fn leaf(&self, alg: &'static SignatureAlgorithm, name: &str, client: bool) -> Leaf {
        let names =
            if client { vec![] } else { vec!["localhost".to_owned(), "127.0.0.1".to_owned()] };
        self.leaf_for(alg, name, names, client)
    }

    /// A certificate for the DNS names and IP addresses `names`.
    pub fn leaf_for(
        &self,
        alg: &'static SignatureAlgorithm,
        name: &str,
        names: Vec<String>,
        client: bool,
    ) -> Leaf {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert: format!("{}{}", cert.pem(), self.issuer.pem()), key: key.serialize_pem() }
    }
}
