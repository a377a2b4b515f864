//! Test certificates made by rcgen at run time (test-only keys, never committed): a CA, leaves
//! it signs (for server auth, client auth or both, optionally expired), and CRLs. Shared by the
//! server's TLS tests and, through `#[path]`, by ferrite-auth's TLS tests.
#![allow(dead_code)]

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use time::OffsetDateTime;

/// A certificate authority.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
}

/// What a leaf certificate may be used for (its extended key usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    Both,
}

/// A leaf certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (String, String) {
        let c = dir.join(format!("{name}.crt"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, &self.cert_pem).expect("write certificate");
        std::fs::write(&k, &self.key_pem).expect("write key");
        (c.display().to_string(), k.display().to_string())
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate to `<dir>/<name>.crt`; returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> String {
        let p = dir.join(format!("{name}.crt"));
        std::fs::write(&p, self.pem()).expect("write CA certificate");
        p.display().to_string()
    }

    /// A leaf with common name `cn`, subject alternative names `sans` (IP addresses or DNS
    /// names), serial `serial`; valid from yesterday for 30 days, or expired yesterday.
    pub fn leaf(&self, cn: &str, sans: &[&str], serial: u64, expired: bool, usage: Usage) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.serial_number = Some(SerialNumber::from(serial));
        let now = OffsetDateTime::now_utc();
        if expired {
            p.not_before = now - time::Duration::days(30);
            p.not_after = now - time::Duration::days(1);
        } else {
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(30);
        }
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Both => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A leaf for loopback servers and clients (SANs 127.0.0.1 and localhost, both usages),
    /// written to `<dir>/<name>.crt` / `.key`; returns their paths.
    pub fn loopback_leaf(
        &self,
        dir: &Path,
        name: &str,
        cn: &str,
        serial: u64,
        expired: bool,
    ) -> (String, String) {
        self.leaf(
            cn,
            &["127.0.0.1", "localhost"],
            serial,
            expired,
            Usage::Both,
        )
        .write(dir, name)
    }

    /// A CRL revoking `revoked` serials, as PEM.
    pub fn crl_pem(&self, revoked: &[u64]) -> String {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: now - time::Duration::hours(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .unwrap()
            .pem()
            .unwrap()
    }
}
