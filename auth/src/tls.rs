//! TLS building blocks with rustls (ring provider), configured from etcd's flags with etcd's
//! semantics (`pkg/transport/listener.go`):
//!
//! - server: `--cert-file`/`--key-file` (both required), `--trusted-ca-file` (its presence, or
//!   `--client-cert-auth`, makes a verified client certificate mandatory, as in etcd),
//!   `--client-crl-file` (PEM or DER; a revoked client certificate fails the handshake),
//!   `--cipher-suites` (Go names; TLS 1.3 suites stay on, as in Go), ALPN `h2` + `http/1.1`;
//! - peers: the same with `--peer-*`, plus `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`
//!   checked on the certificate of the other side, in both directions (etcd's
//!   `VerifyPeerCertificate`);
//! - `--auto-tls` / `--peer-auto-tls`: a self-signed certificate in `<data-dir>/fixtures/{client,peer}`;
//! - [`peer_common_name`]: the CN of a verified client certificate (authenticates as that user).
//!
//! Certificate validity is checked against the system clock by rustls (the only clock here).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring as ring_provider, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    ServerConfig, SignatureScheme, SupportedCipherSuite,
};

/// Validity of an --auto-tls certificate (etcd's --self-signed-cert-validity default: 1 year).
pub const AUTO_TLS_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// A TLS configuration error, naming the flag or file at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn tls_err(msg: impl Into<String>) -> TlsError {
    TlsError(msg.into())
}

/// Go `crypto/tls` cipher suite names rustls does not implement (CBC, RC4, 3DES, static RSA).
const GO_SUITES_UNSUPPORTED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// Maps `--cipher-suites` (Go names, as etcd's `tlsutil.GetCipherSuites`) to rustls suites.
/// An empty list means rustls' defaults. TLS 1.3 suites are always enabled (Go ignores the
/// list for TLS 1.3); naming one is accepted. An unknown name fails with etcd's message
/// `unexpected TLS cipher suite "X"`; a Go suite rustls lacks fails saying so.
pub fn cipher_suites(names: &[String]) -> Result<Vec<SupportedCipherSuite>, TlsError> {
    use ring_provider::cipher_suite as cs;
    if names.is_empty() {
        return Ok(ring_provider::DEFAULT_CIPHER_SUITES.to_vec());
    }
    let mut out: Vec<SupportedCipherSuite> = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    for name in names {
        let suite = match name.as_str() {
            "TLS_AES_128_GCM_SHA256"
            | "TLS_AES_256_GCM_SHA384"
            | "TLS_CHACHA20_POLY1305_SHA256" => continue,
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => {
                cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            }
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => {
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            }
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"
            | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            }
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"
            | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
                cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            }
            other if GO_SUITES_UNSUPPORTED.contains(&other) => {
                return Err(tls_err(format!(
                    "TLS cipher suite {other:?} is not supported by ferrite (rustls implements only ECDHE AEAD suites)"
                )));
            }
            other => return Err(tls_err(format!("unexpected TLS cipher suite {other:?}"))),
        };
        if !out.iter().any(|s| s.suite() == suite.suite()) {
            out.push(suite);
        }
    }
    Ok(out)
}

fn provider(suites: &[String]) -> Result<Arc<CryptoProvider>, TlsError> {
    Ok(Arc::new(CryptoProvider {
        cipher_suites: cipher_suites(suites)?,
        ..ring_provider::default_provider()
    }))
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| {
            tls_err(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            tls_err(format!(
                "cannot parse certificates in {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(tls_err(format!(
            "no certificate found in {}",
            path.display()
        )));
    }
    Ok(certs)
}

/// Reads the private key (PKCS#1, SEC1 or PKCS#8 PEM).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        tls_err(format!(
            "cannot read a private key from {}: {e}",
            path.display()
        ))
    })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| tls_err(format!("bad CA certificate in {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// Reads a CRL file, PEM or DER (Go's `x509.ParseCRL` accepts both).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = std::fs::read(path)
        .map_err(|e| tls_err(format!("cannot read CRL file {}: {e}", path.display())))?;
    if bytes.starts_with(b"-----BEGIN") {
        let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(format!("cannot parse CRL file {}: {e}", path.display())))?;
        if crls.is_empty() {
            return Err(tls_err(format!("no CRL found in {}", path.display())));
        }
        Ok(crls)
    } else {
        Ok(vec![CertificateRevocationListDer::from(bytes)])
    }
}

/// Which certificate of the other side is acceptable beyond chain validation
/// (`--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname`, mutually exclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedPeer {
    Any,
    CommonName(String),
    Hostname(String),
}

impl AllowedPeer {
    /// From the two flags; both set is etcd's error.
    pub fn from_flags(allowed_cn: &str, allowed_hostname: &str) -> Result<AllowedPeer, TlsError> {
        match (allowed_cn.is_empty(), allowed_hostname.is_empty()) {
            (true, true) => Ok(AllowedPeer::Any),
            (false, true) => Ok(AllowedPeer::CommonName(allowed_cn.to_string())),
            (true, false) => Ok(AllowedPeer::Hostname(allowed_hostname.to_string())),
            (false, false) => Err(tls_err(format!(
                "AllowedCN and AllowedHostname are mutually exclusive (cn={allowed_cn:?}, hostname={allowed_hostname:?})"
            ))),
        }
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let refuse = |msg: String| {
            rustls::Error::Other(OtherError(Arc::new(tls_err(format!(
                "peer certificate refused: {msg}"
            )))))
        };
        match self {
            AllowedPeer::Any => Ok(()),
            AllowedPeer::CommonName(want) => {
                let cn = common_name(end_entity);
                if cn.as_deref() == Some(want.as_str()) {
                    Ok(())
                } else {
                    let cn = cn.map_or_else(|| "(none)".to_string(), |c| format!("{c:?}"));
                    Err(refuse(format!(
                        "certificate CN {cn} is not the allowed CN {want:?}"
                    )))
                }
            }
            AllowedPeer::Hostname(want) => {
                let name = ServerName::try_from(want.as_str()).map_err(|_| {
                    refuse(format!("allowed hostname {want:?} is not a valid name"))
                })?;
                let cert = webpki::EndEntityCert::try_from(end_entity)
                    .map_err(|e| refuse(format!("cannot parse certificate: {e}")))?;
                cert.verify_is_valid_for_subject_name(&name).map_err(|_| {
                    refuse(format!(
                        "certificate is not valid for the allowed hostname {want:?}"
                    ))
                })
            }
        }
    }
}

/// The subject common name of a DER certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    Some(cn)
}

/// The common name of the verified client certificate of a finished server-side handshake
/// (`conn` is `ServerConnection`, or `futures_rustls::server::TlsStream::get_ref().1`). With
/// client certificates required, a finished handshake means the chain was verified. etcd uses
/// it as the user name when the request carries no token (and not for the JSON gateway).
pub fn peer_common_name(conn: &rustls::CommonState) -> Option<String> {
    conn.peer_certificates()?
        .first()
        .and_then(common_name)
        .filter(|cn| !cn.is_empty())
}

/// Client-certificate verifier: webpki chain + CRL, then the allowed CN / hostname.
#[derive(Debug)]
struct AllowedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: AllowedPeer,
}

impl ClientCertVerifier for AllowedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.check(end_entity)?;
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server-certificate verifier for peer clients: webpki (or nothing, for --peer-auto-tls),
/// then the allowed CN / hostname.
#[derive(Debug)]
struct PeerServerVerifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    allowed: AllowedPeer,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(inner) = &self.inner {
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        }
        self.allowed.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server side of one port, from etcd's flags (client port: `--cert-file` ...; peer port:
/// `--peer-cert-file` ...).
#[derive(Clone, Debug, Default)]
pub struct ServerTlsOptions {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// `--trusted-ca-file`: when set, clients must present a certificate signed by it.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`: requires `trusted_ca_file`.
    pub client_cert_auth: bool,
    /// `--client-crl-file`.
    pub crl_file: Option<PathBuf>,
    /// `--cipher-suites`.
    pub cipher_suites: Vec<String>,
    /// `--peer-cert-allowed-cn` / `--peer-cert-allowed-hostname` (peer port only).
    pub allowed: Option<AllowedPeer>,
}

/// Builds the rustls server configuration. Errors name the flag or file at fault.
pub fn server_config(opts: &ServerTlsOptions) -> Result<Arc<ServerConfig>, TlsError> {
    if opts.cert_file.as_os_str().is_empty() || opts.key_file.as_os_str().is_empty() {
        return Err(tls_err(
            "KeyFile and CertFile must both be present (--cert-file, --key-file)",
        ));
    }
    let provider = provider(&opts.cipher_suites)?;
    let certs = load_certs(&opts.cert_file)?;
    let key = load_key(&opts.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| tls_err(format!("--cipher-suites: {e}")))?;
    let require_client_cert = opts.trusted_ca_file.is_some() || opts.client_cert_auth;
    let builder = if require_client_cert {
        let ca = opts
            .trusted_ca_file
            .as_deref()
            .ok_or_else(|| tls_err("--client-cert-auth requires --trusted-ca-file"))?;
        let roots = Arc::new(load_roots(ca)?);
        let mut vb = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        if let Some(crl) = &opts.crl_file {
            // etcd checks the leaf's serial against the CRL and ignores certificates the CRL
            // does not cover; rustls additionally checks the CRL's signature.
            vb = vb
                .with_crls(load_crls(crl)?)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let inner = vb
            .build()
            .map_err(|e| tls_err(format!("client certificate verifier: {e}")))?;
        let verifier = AllowedClientVerifier {
            inner,
            allowed: opts.allowed.clone().unwrap_or(AllowedPeer::Any),
        };
        builder.with_client_cert_verifier(Arc::new(verifier))
    } else {
        if opts.crl_file.is_some() {
            return Err(tls_err(
                "--client-crl-file needs client certificates (--trusted-ca-file)",
            ));
        }
        builder.with_no_client_auth()
    };
    let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
        tls_err(format!(
            "{} / {}: {e}",
            opts.cert_file.display(),
            opts.key_file.display()
        ))
    })?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The client side of peer connections (`--peer-cert-file`, `--peer-key-file`,
/// `--peer-trusted-ca-file`), or of a test client.
#[derive(Clone, Debug, Default)]
pub struct ClientTlsOptions {
    /// Certificate to present (both or neither of cert and key).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CA to verify the server with; required unless `insecure_skip_verify`.
    pub trusted_ca_file: Option<PathBuf>,
    pub cipher_suites: Vec<String>,
    /// `--peer-auto-tls`: peers' self-signed certificates cannot be verified (etcd sets
    /// InsecureSkipVerify); `allowed` still applies.
    pub insecure_skip_verify: bool,
    pub allowed: Option<AllowedPeer>,
}

pub fn client_config(opts: &ClientTlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider(&opts.cipher_suites)?;
    let allowed = opts.allowed.clone().unwrap_or(AllowedPeer::Any);
    let webpki = if opts.insecure_skip_verify {
        None
    } else {
        let ca = opts.trusted_ca_file.as_deref().ok_or_else(|| {
            tls_err("a TLS client needs --peer-trusted-ca-file (or --peer-auto-tls)")
        })?;
        let v = WebPkiServerVerifier::builder_with_provider(
            Arc::new(load_roots(ca)?),
            provider.clone(),
        )
        .build()
        .map_err(|e| tls_err(format!("server certificate verifier: {e}")))?;
        Some(v)
    };
    let verifier = PeerServerVerifier {
        inner: webpki,
        provider: provider.clone(),
        allowed,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| tls_err(format!("--cipher-suites: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut cfg = match (&opts.cert_file, &opts.key_file) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(load_certs(c)?, load_key(k)?)
            .map_err(|e| tls_err(format!("{} / {}: {e}", c.display(), k.display())))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(tls_err("KeyFile and CertFile must both be present")),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Paths of an --auto-tls certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// etcd's `transport.SelfCert`: in `<data_dir>/fixtures/<kind>` (`kind` is "client" or
/// "peer"), reuse `cert.pem`/`key.pem` if both exist, else generate an ECDSA P-256 self-signed
/// certificate for `hosts` (host names or IPs of the listen URLs; "localhost" when empty),
/// valid from now for `validity`, for server and client auth. Files are written 0600.
pub fn auto_tls(
    data_dir: &Path,
    kind: &str,
    hosts: &[String],
    validity: Duration,
) -> Result<AutoTlsFiles, TlsError> {
    assert!(
        kind == "client" || kind == "peer",
        "auto TLS kind must be client or peer"
    );
    let dir = data_dir.join("fixtures").join(kind);
    let files = AutoTlsFiles {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
    };
    if files.cert_file.exists() && files.key_file.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| tls_err(format!("cannot create {}: {e}", dir.display())))?;
    let mut names: Vec<String> = hosts.iter().filter(|h| !h.is_empty()).cloned().collect();
    if names.is_empty() {
        names.push("localhost".into());
    }
    names.sort();
    names.dedup();
    let key = rcgen::KeyPair::generate().map_err(|e| tls_err(format!("auto TLS key: {e}")))?;
    let mut params = rcgen::CertificateParams::new(names)
        .map_err(|e| tls_err(format!("auto TLS host names: {e}")))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "etcd");
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after =
        now + time::Duration::seconds(i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params
        .self_signed(&key)
        .map_err(|e| tls_err(format!("auto TLS certificate: {e}")))?;
    write_private(&files.key_file, key.serialize_pem().as_bytes())?;
    write_private(&files.cert_file, cert.pem().as_bytes())?;
    Ok(files)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| tls_err(format!("cannot write {}: {e}", tmp.display())))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| tls_err(format!("cannot write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| tls_err(format!("cannot rename to {}: {e}", path.display())))
}
