//! Real TLS handshakes over loopback TCP with certificates made here by rcgen: a good client
//! certificate passes and yields its CN; expired, wrongly signed, revoked (CRL) and wrong-CN
//! certificates are refused with a clear reason; the server keeps serving the next client.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use ferrite_auth::rustls::{
    self, ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned,
};
use ferrite_auth::tls::{
    auto_tls, cipher_suites, client_config, peer_common_name, server_config, AllowedPeer,
    ClientTlsOptions, ServerTlsOptions, AUTO_TLS_VALIDITY,
};
use rustls::pki_types::ServerName;

// The certificate helpers are the server tests' (one copy in the workspace).
#[path = "../../server/tests/common/certs.rs"]
mod certs;
use certs::{Ca, Leaf, Usage};

#[derive(Clone, Copy)]
enum Validity {
    Good,
    Expired,
}

fn make_ca(name: &str) -> Ca {
    Ca::new(name)
}

/// A leaf for server auth (`server`) or client auth.
fn make_leaf(
    ca: &Ca,
    cn: &str,
    sans: &[&str],
    serial: u64,
    validity: Validity,
    server: bool,
) -> Leaf {
    let usage = if server { Usage::Server } else { Usage::Client };
    ca.leaf(
        cn,
        sans,
        serial,
        matches!(validity, Validity::Expired),
        usage,
    )
}

fn make_crl(ca: &Ca, revoked_serials: &[u64]) -> String {
    ca.crl_pem(revoked_serials)
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
    fn leaf(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        (
            self.write(&format!("{name}.crt"), &leaf.cert_pem),
            self.write(&format!("{name}.key"), &leaf.key_pem),
        )
    }
}

/// The usual setup: a CA, a server certificate for localhost/127.0.0.1, files on disk.
struct Pki {
    files: Files,
    ca: Ca,
    ca_file: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn pki() -> Pki {
    let files = Files::new();
    let ca = make_ca("ferrite test CA");
    let ca_file = files.write("ca.crt", &ca.cert.pem());
    let server = make_leaf(
        &ca,
        "server",
        &["localhost", "127.0.0.1"],
        1,
        Validity::Good,
        true,
    );
    let (server_cert, server_key) = files.leaf("server", &server);
    Pki {
        files,
        ca,
        ca_file,
        server_cert,
        server_key,
    }
}

impl Pki {
    fn server_opts(&self) -> ServerTlsOptions {
        ServerTlsOptions {
            cert_file: self.server_cert.clone(),
            key_file: self.server_key.clone(),
            trusted_ca_file: Some(self.ca_file.clone()),
            client_cert_auth: true,
            ..Default::default()
        }
    }
    fn client(&self, name: &str, leaf: Option<&Leaf>) -> Arc<ClientConfig> {
        let (cert_file, key_file) = match leaf {
            Some(l) => {
                let (c, k) = self.files.leaf(name, l);
                (Some(c), Some(k))
            }
            None => (None, None),
        };
        client_config(&ClientTlsOptions {
            cert_file,
            key_file,
            trusted_ca_file: Some(self.ca_file.clone()),
            ..Default::default()
        })
        .unwrap()
    }
}

/// Per connection: the server's result (Ok(peer CN) or its error), the client's result.
type Outcome = (Result<Option<String>, String>, Result<(), String>);

/// One client connection against a server accepting `connections` clients in turn. Returns,
/// per connection, the server's outcome (Ok(peer CN) or the error) and the client's.
fn serve(
    server: Arc<ServerConfig>,
    clients: Vec<(Arc<ClientConfig>, &'static str)>,
) -> Vec<Outcome> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let n = clients.len();
    let server_thread = thread::spawn(move || {
        let mut outcomes = vec![];
        for _ in 0..n {
            let (sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let conn = ServerConnection::new(server.clone()).unwrap();
            let mut tls = StreamOwned::new(conn, sock);
            let mut buf = [0u8; 4];
            let r = tls
                .read_exact(&mut buf)
                .and_then(|_| tls.write_all(b"pong"))
                .and_then(|_| tls.flush())
                .map(|_| {
                    assert_eq!(&buf, b"ping");
                    peer_common_name(&tls.conn)
                })
                .map_err(|e| e.to_string());
            outcomes.push(r);
        }
        outcomes
    });
    let mut client_results = vec![];
    for (cfg, name) in clients {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let conn = ClientConnection::new(cfg, ServerName::try_from(name).unwrap()).unwrap();
        let mut tls = StreamOwned::new(conn, sock);
        let mut buf = [0u8; 4];
        let r = tls
            .write_all(b"ping")
            .and_then(|_| tls.flush())
            .and_then(|_| tls.read_exact(&mut buf))
            .map(|_| assert_eq!(&buf, b"pong"))
            .map_err(|e| e.to_string());
        client_results.push(r);
    }
    let server_results = server_thread.join().unwrap();
    server_results.into_iter().zip(client_results).collect()
}

fn expect_refused(outcome: &Outcome, reason: &str) {
    let server_err = outcome
        .0
        .as_ref()
        .expect_err("server accepted a bad certificate");
    assert!(
        server_err.contains(reason),
        "server error {server_err:?} lacks {reason:?}"
    );
    eprintln!("refused as expected: {server_err}");
    assert!(outcome.1.is_err(), "client should see the handshake fail");
}

#[test]
fn good_cert_passes_and_bad_ones_are_refused_while_serving_others() {
    let p = pki();
    let good = make_leaf(&p.ca, "alice", &[], 10, Validity::Good, false);
    let expired = make_leaf(&p.ca, "alice", &[], 11, Validity::Expired, false);
    let revoked = make_leaf(&p.ca, "mallory", &[], 12, Validity::Good, false);
    let other_ca = make_ca("evil CA");
    let foreign = make_leaf(&other_ca, "alice", &[], 10, Validity::Good, false);
    let mut opts = p.server_opts();
    opts.crl_file = Some(p.files.write("ca.crl", &make_crl(&p.ca, &[12])));
    let server = server_config(&opts).unwrap();
    let out = serve(
        server,
        vec![
            (p.client("good", Some(&good)), "localhost"),
            (p.client("expired", Some(&expired)), "localhost"),
            (p.client("foreign", Some(&foreign)), "localhost"),
            (p.client("revoked", Some(&revoked)), "localhost"),
            (p.client("none", None), "localhost"),
            (p.client("good2", Some(&good)), "127.0.0.1"),
        ],
    );
    assert_eq!(out[0].0, Ok(Some("alice".to_string())));
    assert_eq!(out[0].1, Ok(()));
    expect_refused(&out[1], "certificate expired");
    expect_refused(&out[2], "UnknownIssuer");
    expect_refused(&out[3], "Revoked");
    expect_refused(&out[4], "peer sent no certificates");
    assert_eq!(
        out[5].0,
        Ok(Some("alice".to_string())),
        "server still serves after refusals"
    );
}

#[test]
fn client_verifies_server_name_and_ca() {
    let p = pki();
    let server = server_config(&ServerTlsOptions {
        cert_file: p.server_cert.clone(),
        key_file: p.server_key.clone(),
        ..Default::default()
    })
    .unwrap();
    let stranger = Files::new();
    let other = make_ca("other");
    let untrusting = client_config(&ClientTlsOptions {
        trusted_ca_file: Some(stranger.write("other.crt", &other.cert.pem())),
        ..Default::default()
    })
    .unwrap();
    let out = serve(
        server,
        vec![
            (p.client("c", None), "localhost"),
            (p.client("c", None), "wrong.example"),
            (untrusting, "localhost"),
        ],
    );
    assert_eq!(
        out[0].0,
        Ok(None),
        "no client certificate without --trusted-ca-file"
    );
    assert!(
        out[1]
            .1
            .as_ref()
            .unwrap_err()
            .contains("not valid for name \"wrong.example\""),
        "{:?}",
        out[1].1
    );
    assert!(
        out[2].1.as_ref().unwrap_err().contains("UnknownIssuer"),
        "{:?}",
        out[2].1
    );
}

#[test]
fn peer_allowed_cn_and_hostname() {
    let p = pki();
    let alice = make_leaf(
        &p.ca,
        "alice",
        &["peer1.example"],
        20,
        Validity::Good,
        false,
    );
    let bob = make_leaf(&p.ca, "bob", &["peer2.example"], 21, Validity::Good, false);

    let mut opts = p.server_opts();
    opts.allowed = Some(AllowedPeer::from_flags("alice", "").unwrap());
    let out = serve(
        server_config(&opts).unwrap(),
        vec![
            (p.client("a", Some(&alice)), "localhost"),
            (p.client("b", Some(&bob)), "localhost"),
        ],
    );
    assert_eq!(out[0].0, Ok(Some("alice".into())));
    expect_refused(&out[1], "is not the allowed CN \"alice\"");

    opts.allowed = Some(AllowedPeer::from_flags("", "peer2.example").unwrap());
    let out = serve(
        server_config(&opts).unwrap(),
        vec![
            (p.client("a", Some(&alice)), "localhost"),
            (p.client("b", Some(&bob)), "localhost"),
        ],
    );
    expect_refused(
        &out[0],
        "not valid for the allowed hostname \"peer2.example\"",
    );
    assert_eq!(out[1].0, Ok(Some("bob".into())));

    // The client side checks the server's certificate the same way.
    let (c, k) = p.files.leaf("a", &alice);
    let strict = client_config(&ClientTlsOptions {
        cert_file: Some(c),
        key_file: Some(k),
        trusted_ca_file: Some(p.ca_file.clone()),
        allowed: Some(AllowedPeer::CommonName("not-server".into())),
        ..Default::default()
    })
    .unwrap();
    let out = serve(
        server_config(&p.server_opts()).unwrap(),
        vec![(strict, "localhost")],
    );
    assert!(
        out[0]
            .1
            .as_ref()
            .unwrap_err()
            .contains("is not the allowed CN"),
        "{:?}",
        out[0].1
    );

    let e = AllowedPeer::from_flags("a", "b").unwrap_err();
    assert!(e.to_string().contains("mutually exclusive"), "{e}");
}

#[test]
fn cipher_suite_names() {
    let one = cipher_suites(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()]).unwrap();
    assert!(one
        .iter()
        .any(|s| format!("{:?}", s.suite()) == "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"));
    assert_eq!(
        one.iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .count(),
        1
    );
    assert!(
        cipher_suites(&["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305".into()]).is_ok(),
        "Go's short alias"
    );
    let e = cipher_suites(&["TLS_BOGUS".into()]).unwrap_err();
    assert_eq!(e.to_string(), "unexpected TLS cipher suite \"TLS_BOGUS\"");
    let e = cipher_suites(&["TLS_RSA_WITH_AES_128_CBC_SHA".into()]).unwrap_err();
    assert!(e.to_string().contains("not supported by ferrite"), "{e}");

    // A TLS 1.2-only client negotiates the one configured suite.
    let p = pki();
    let mut opts = p.server_opts();
    opts.trusted_ca_file = None;
    opts.client_cert_auth = false;
    opts.cipher_suites = vec!["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".into()];
    let server = server_config(&opts).unwrap();
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: cipher_suites(&["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()]).unwrap(),
        ..rustls::crypto::ring::default_provider()
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(p.ca.cert.der().clone()).unwrap();
    let tls12_only = Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let out = serve(server, vec![(tls12_only, "localhost")]);
    assert!(
        out[0]
            .0
            .as_ref()
            .unwrap_err()
            .contains("no ciphersuites in common")
            || out[0].1.is_err(),
        "{out:?}"
    );
}

#[test]
fn configuration_errors_name_the_flag_or_file() {
    let p = pki();
    let e = server_config(&ServerTlsOptions::default()).unwrap_err();
    assert!(e.to_string().contains("--cert-file"), "{e}");
    let mut opts = p.server_opts();
    opts.cert_file = PathBuf::from("/nonexistent/server.crt");
    assert!(server_config(&opts)
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/server.crt"));
    let mut opts = p.server_opts();
    opts.trusted_ca_file = None;
    assert!(server_config(&opts)
        .unwrap_err()
        .to_string()
        .contains("--trusted-ca-file"));
    let mut opts = p.server_opts();
    opts.crl_file = Some(p.files.write(
        "junk.crl",
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    ));
    assert!(
        server_config(&opts).is_err(),
        "a malformed CRL is refused at start"
    );
    // Key that does not match the certificate.
    let mut opts = p.server_opts();
    opts.key_file = p.files.write(
        "other.key",
        &rcgen::KeyPair::generate().unwrap().serialize_pem(),
    );
    assert!(server_config(&opts).is_err());
}

#[test]
fn auto_tls_generates_once_and_serves() {
    let data_dir = tempfile::tempdir().unwrap();
    let files = auto_tls(
        data_dir.path(),
        "peer",
        &["127.0.0.1".into(), "localhost".into()],
        AUTO_TLS_VALIDITY,
    )
    .unwrap();
    assert_eq!(
        files.cert_file,
        data_dir.path().join("fixtures/peer/cert.pem")
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&files.key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let first = std::fs::read(&files.cert_file).unwrap();
    let again = auto_tls(
        data_dir.path(),
        "peer",
        &["other".into()],
        AUTO_TLS_VALIDITY,
    )
    .unwrap();
    assert_eq!(again, files);
    assert_eq!(
        std::fs::read(&files.cert_file).unwrap(),
        first,
        "existing files are reused"
    );

    let server = server_config(&ServerTlsOptions {
        cert_file: files.cert_file.clone(),
        key_file: files.key_file.clone(),
        ..Default::default()
    })
    .unwrap();
    let insecure = client_config(&ClientTlsOptions {
        insecure_skip_verify: true,
        ..Default::default()
    })
    .unwrap();
    let out = serve(server, vec![(insecure, "127.0.0.1")]);
    assert_eq!(out[0], (Ok(None), Ok(())));
}

/// The async path the server uses on glommio: futures-rustls over any AsyncRead + AsyncWrite.
#[test]
fn futures_rustls_acceptor_yields_the_client_cn() {
    use futures_util::io::{AllowStdIo, AsyncReadExt, AsyncWriteExt};
    let p = pki();
    let good = make_leaf(&p.ca, "carol", &[], 30, Validity::Good, false);
    let server = server_config(&p.server_opts()).unwrap();
    let client = p.client("carol", Some(&good));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let t = thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        futures_executor::block_on(async move {
            let acceptor = ferrite_auth::futures_rustls::TlsAcceptor::from(server);
            let mut tls = acceptor.accept(AllowStdIo::new(sock)).await.unwrap();
            let cn = peer_common_name(tls.get_ref().1);
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(b"pong").await.unwrap();
            tls.flush().await.unwrap();
            cn
        })
    });
    let sock = TcpStream::connect(addr).unwrap();
    let conn = ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut tls = StreamOwned::new(conn, sock);
    tls.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    assert_eq!(t.join().unwrap(), Some("carol".into()));
}
