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

use common::certs::Ca;
use common::{free_port, run_bounded, TempDir};

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
    let ca = Ca::new("ferrite test ca");
    let other = Ca::new("some other ca");
    let (srv_c, srv_k) = ca.loopback_leaf(d, "server", "server", 1, false);
    let (root_c, root_k) = ca.loopback_leaf(d, "root", "root", 2, false);
    let (alice_c, alice_k) = ca.loopback_leaf(d, "alice", "alice", 3, false);
    let (rev_c, rev_k) = ca.loopback_leaf(d, "revoked", "root", 4, false);
    let (exp_c, exp_k) = ca.loopback_leaf(d, "expired", "root", 5, true);
    let (for_c, for_k) = other.loopback_leaf(d, "foreign", "root", 6, false);
    let ca_file = ca.write(d, "ca");
    let crl_file = d.join("ca.crl");
    std::fs::write(&crl_file, ca.crl_pem(&[4])).unwrap();
    let crl_file = crl_file.display().to_string();

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
        let url = format!("{https}{path}");
        let mut args = vec!["--cacert", &ca_file, "--cert", &root_c, "--key", &root_k];
        if let Some(b) = body {
            args.extend(["-X", "POST", "-d", b]);
        }
        args.push(&url);
        common::curl(&args)
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
