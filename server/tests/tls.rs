//! TLS on the client port with certificates made here by rcgen (test-only keys, never
//! committed): etcdctl 3.4 with --cacert/--cert/--key over https, the JSON gateway and /health
//! on the same TLS port, plain http on a second URL of the same server, client-certificate CN
//! authentication (--client-cert-auth with auth enabled), and refused certificates (revoked by
//! the CRL, signed by another CA, expired, missing) while a good client keeps being served;
//! --auto-tls.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, run_bounded, TempDir};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use time::OffsetDateTime;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn make_ca(name: &str) -> Ca {
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

/// Writes `<name>.crt` / `<name>.key` for a leaf signed by `ca`.
fn leaf(dir: &Path, ca: &Ca, name: &str, cn: &str, serial: u64, expired: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
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
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

fn crl(dir: &Path, ca: &Ca, revoked: &[u64]) -> String {
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
    let p = dir.join("ca.crl");
    std::fs::write(
        &p,
        params.signed_by(&ca.cert, &ca.key).unwrap().pem().unwrap(),
    )
    .unwrap();
    p.display().to_string()
}

/// A ferrite process with its own flags (the shared harness speaks plain http only).
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(dir: &Path, client_urls: &str, extra: &[String]) -> Proc {
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log = dir.join("server.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let advertise = client_urls.split(',').next().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
            .arg("--name=n0")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client_urls}"))
            .arg(format!("--advertise-client-urls={advertise}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=n0={peer}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- ferrite log ----\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcdctl(endpoint: &str, tls: &[&str], args: &[&str]) -> Output {
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=10s")
        .args(tls)
        .args(args);
    run_bounded(c, None, Duration::from_secs(20))
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls until `f` holds (the server is starting).
fn wait_until(what: &str, proc: &Proc, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} not true after 60 s; log:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn client_certificates_cn_auth_and_refusals() {
    let tmp = TempDir::new("tls");
    let d = tmp.path();
    let ca = make_ca("ferrite test ca");
    let other = make_ca("some other ca");
    let (srv_c, srv_k) = leaf(d, &ca, "server", "server", 1, false);
    let (root_c, root_k) = leaf(d, &ca, "root", "root", 2, false);
    let (alice_c, alice_k) = leaf(d, &ca, "alice", "alice", 3, false);
    let (rev_c, rev_k) = leaf(d, &ca, "revoked", "root", 4, false);
    let (exp_c, exp_k) = leaf(d, &ca, "expired", "root", 5, true);
    let (for_c, for_k) = leaf(d, &other, "foreign", "root", 6, false);
    let ca_file = d.join("ca.crt");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let ca_file = ca_file.display().to_string();
    let crl_file = crl(d, &ca, &[4]);

    let (tls_port, plain_port) = (free_port(), free_port());
    let https = format!("https://127.0.0.1:{tls_port}");
    let http = format!("http://127.0.0.1:{plain_port}");
    let proc = Proc::start(
        d,
        &format!("{https},{http}"),
        &[
            format!("--cert-file={srv_c}"),
            format!("--key-file={srv_k}"),
            format!("--trusted-ca-file={ca_file}"),
            "--client-cert-auth".into(),
            format!("--client-crl-file={crl_file}"),
        ],
    );
    let as_cert = |c: &str, k: &str, args: &[&str]| {
        let cacert = format!("--cacert={ca_file}");
        let cert = format!("--cert={c}");
        let key = format!("--key={k}");
        etcdctl(&https, &[&cacert, &cert, &key], args)
    };
    let root = |args: &[&str]| as_cert(&root_c, &root_k, args);
    let alice = |args: &[&str]| as_cert(&alice_c, &alice_k, args);
    wait_until("TLS put", &proc, || {
        root(&["put", "k", "v"]).status.success()
    });

    // Plain http on the other URL of the same server.
    let o = etcdctl(&http, &[], &["get", "k", "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "v",
        "{}",
        text(&o)
    );

    // The JSON gateway and /health over the same TLS port.
    let curl = |path: &str, body: Option<&str>| {
        let mut c = Command::new("curl");
        c.args([
            "-s", "-m", "10", "--cacert", &ca_file, "--cert", &root_c, "--key", &root_k,
        ]);
        if let Some(b) = body {
            c.args(["-X", "POST", "-d", b]);
        }
        c.arg(format!("{https}{path}"));
        String::from_utf8_lossy(&run_bounded(c, None, Duration::from_secs(15)).stdout).into_owned()
    };
    assert!(curl("/health", None).contains(r#""health":"true""#));
    assert!(curl("/v3/kv/range", Some(r#"{"key":"aw=="}"#)).contains(r#""value":"dg==""#));
    assert!(curl("/metrics", None).contains("etcd_server_has_leader"));

    // Refused certificates: each is logged, and the good client keeps being served.
    for (what, c, k) in [
        ("revoked", &rev_c, &rev_k),
        ("expired", &exp_c, &exp_k),
        ("foreign", &for_c, &for_k),
    ] {
        let o = as_cert(c, k, &["get", "k"]);
        assert!(
            !o.status.success(),
            "{what} certificate accepted: {}",
            text(&o)
        );
        let o = root(&["get", "k", "--print-value-only"]);
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "v",
            "{what}: {}",
            text(&o)
        );
    }
    let o = etcdctl(&https, &[&format!("--cacert={ca_file}")], &["get", "k"]);
    assert!(
        !o.status.success(),
        "no client certificate accepted: {}",
        text(&o)
    );
    let log = proc.log();
    assert!(log.contains("rejected connection"), "{log}");
    assert!(log.contains("Revoked"), "{log}");

    // CN authentication: with auth on, the certificate's CN is the user.
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice", "--no-password"],
        &["role", "add", "r1"],
        &[
            "role",
            "grant-permission",
            "r1",
            "readwrite",
            "/a/",
            "--prefix=true",
        ],
        &["user", "grant-role", "alice", "r1"],
        &["auth", "enable"],
    ] {
        let o = root(args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    }
    let o = alice(&["put", "/a/1", "x"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = alice(&["put", "/b", "x"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("etcdserver: permission denied"),
        "{}",
        text(&o)
    );
    let o = alice(&["user", "list"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("permission denied"),
        "{}",
        text(&o)
    );
    let o = root(&["user", "list"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("alice"),
        "{}",
        text(&o)
    );
    // The plain URL has no certificate: no user.
    let o = etcdctl(&http, &[], &["get", "k"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("etcdserver: user name is empty"),
        "{}",
        text(&o)
    );
}

#[test]
fn auto_tls_serves_a_generated_certificate() {
    let tmp = TempDir::new("autotls");
    let https = format!("https://127.0.0.1:{}", free_port());
    let proc = Proc::start(tmp.path(), &https, &["--auto-tls".to_string()]);
    let ctl = |args: &[&str]| {
        etcdctl(
            &https,
            &["--insecure-transport=false", "--insecure-skip-tls-verify"],
            args,
        )
    };
    wait_until("auto-tls put", &proc, || {
        ctl(&["put", "k", "v"]).status.success()
    });
    let o = ctl(&["get", "k", "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "v",
        "{}",
        text(&o)
    );
    // Without skipping verification the self-signed certificate is not trusted.
    let o = etcdctl(&https, &[], &["get", "k"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(tmp.path().join("data/fixtures/client/cert.pem").exists());
}
