//! A 3-member cluster on loopback with TLS on both ports, certificates made here by rcgen:
//! client-certificate auth on the client port (`--client-cert-auth`), mutual TLS between
//! members (`--peer-client-cert-auth`, `--peer-cert-allowed-cn`), https metrics. Driven by
//! etcdctl 3.4 with `--cacert/--cert/--key` and by the etcd-client crate over TLS: writes on
//! one member read on the others, `member list`, `endpoint status/health --cluster`, /metrics
//! and /health on the https metrics URL, auth enabled on one member and a user's permissions
//! enforced on the others (certificate CN users and password users), and two members that
//! cannot join — one with a peer certificate of another CA, one with a certificate of the
//! right CA but the wrong CN — refused with a log line saying why, while the cluster keeps
//! serving.
//!
//! `FERRITE_TEST_TARGET=etcd cargo test --release -p ferrite --test cluster_tls` runs the same
//! scenario against Debian's etcd 3.4 (the expectations are etcd's; only the wording of the
//! refusal log lines differs by target).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::certs::{Ca, Usage};
use common::member::{etcdctl_at, initial_cluster, output_text as text, wait_until, Member};
use common::{ok_text, run_bounded, Target, TempDir};

/// Bound on one etcdctl call.
const CTL_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on waiting for a cluster condition.
const WAIT_MAX: Duration = Duration::from_secs(40);
/// Bound on a refused member giving up (ferrite's join fetch timeout is 10 s).
const EXIT_MAX: Duration = Duration::from_secs(60);
const TOKEN: &str = "cluster-tls";
/// The CN every member certificate carries (`--peer-cert-allowed-cn`).
const MEMBER_CN: &str = "member";

/// A certificate and key file pair.
#[derive(Clone)]
struct Cred {
    cert: String,
    key: String,
}

impl Cred {
    fn new((cert, key): (String, String)) -> Cred {
        Cred { cert, key }
    }
    fn pem(&self) -> (String, String) {
        (
            std::fs::read_to_string(&self.cert).unwrap(),
            std::fs::read_to_string(&self.key).unwrap(),
        )
    }
}

/// A member with TLS on the client and peer ports, optionally with an https metrics URL.
fn tls_member(dir: &Path, name: &str, metrics: bool) -> Member {
    let m = Member::new(dir, name, TOKEN)
        .client_scheme("https")
        .peer_scheme("https");
    if metrics {
        m.with_metrics("https")
    } else {
        m
    }
}

/// Starts `m` with TLS on both ports: `cred` for both, `ca_file` trusted on both, client
/// certificates required on both, peers must carry [`MEMBER_CN`].
fn start_tls(
    m: &mut Member,
    target: Target,
    initial_cluster: &str,
    state: &str,
    cred: &Cred,
    ca_file: &str,
) {
    let tls = [
        format!("--cert-file={}", cred.cert),
        format!("--key-file={}", cred.key),
        format!("--trusted-ca-file={ca_file}"),
        "--client-cert-auth".to_string(),
        format!("--peer-cert-file={}", cred.cert),
        format!("--peer-key-file={}", cred.key),
        format!("--peer-trusted-ca-file={ca_file}"),
        "--peer-client-cert-auth".to_string(),
        format!("--peer-cert-allowed-cn={MEMBER_CN}"),
    ];
    m.start_with(target, initial_cluster, state, &tls);
}

/// etcdctl over TLS as the holder of `cred` (optionally also with `--user`).
fn ctl(endpoints: &str, ca: &str, cred: &Cred, user: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={ca}"))
        .arg(format!("--cert={}", cred.cert))
        .arg(format!("--key={}", cred.key))
        .arg("--dial-timeout=3s")
        .arg("--command-timeout=10s");
    if let Some(u) = user {
        cmd.arg(format!("--user={u}"));
    }
    cmd.args(args);
    run_bounded(cmd, None, CTL_TIMEOUT)
}

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_until(what, WAIT_MAX, f)
}

/// curl over TLS; the body (empty when the handshake or request failed).
fn curl(url: &str, ca: &str, cred: Option<&Cred>) -> String {
    let mut args = vec!["--cacert", ca];
    if let Some(cr) = cred {
        args.extend(["--cert", cr.cert.as_str(), "--key", cr.key.as_str()]);
    }
    args.push(url);
    common::curl(&args)
}

#[test]
fn three_members_tls_on_both_ports_auth_and_refused_peers() {
    let target = Target::from_env();
    let tmp = TempDir::new(&format!("cluster-tls-{}", target.name()));
    let d = tmp.path();
    let ca = Ca::new("ferrite cluster ca");
    let other = Ca::new("some other ca");
    let ca_file = ca.write(d, "ca");
    let member_creds: Vec<Cred> = (1..=3)
        .map(|i| Cred::new(ca.loopback_leaf(d, &format!("m{i}"), MEMBER_CN, i, false)))
        .collect();
    let root = Cred::new(ca.loopback_leaf(d, "root", "root", 10, false));
    let alice = Cred::new(ca.loopback_leaf(d, "alice", "alice", 11, false));
    // Right CN, wrong CA; right CA, wrong CN.
    let foreign = Cred::new(other.loopback_leaf(d, "foreign", MEMBER_CN, 20, false));
    let intruder = Cred::new(ca.loopback_leaf(d, "intruder", "intruder", 21, false));

    let mut ms: Vec<Member> = (1..=3)
        .map(|i| tls_member(d, &format!("m{i}"), i == 1))
        .collect();
    let initial = initial_cluster(&ms);
    for (m, cred) in ms.iter_mut().zip(&member_creds) {
        start_tls(m, target, &initial, "new", cred, &ca_file);
    }
    let clients: Vec<String> = ms.iter().map(|m| m.client.clone()).collect();
    let as_root = |ep: &str, args: &[&str]| ctl(ep, &ca_file, &root, None, args);

    // A leader everyone agrees on (peer traffic is TLS both ways).
    wait_for("an agreed leader", || {
        let mut leader = None;
        for ep in &clients {
            let o = as_root(ep, &["endpoint", "status", "-w", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            let l = v[0]["Status"]["leader"].as_u64()?;
            if l == 0 || leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        leader
    });

    // A write on one member is read (linearizably) on the others.
    ok_text(&as_root(&clients[0], &["put", "k1", "v1"]), "put on m1");
    for ep in &clients[1..] {
        let o = as_root(ep, &["get", "k1", "--print-value-only"]);
        assert_eq!(ok_text(&o, "get").trim(), "v1", "on {ep}");
    }

    // member list shows the https URLs of every member.
    let o = as_root(&clients[2], &["member", "list", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&ok_text(&o, "member list")).unwrap();
    let members = v["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{v}");
    for m in &ms {
        assert!(
            members.iter().any(|x| x["name"] == m.name.as_str()
                && x["peerURLs"][0] == m.peer.as_str()
                && x["clientURLs"][0] == m.client.as_str()),
            "{} missing from {v}",
            m.name
        );
    }

    // endpoint status / health --cluster reach every member over TLS.
    let o = as_root(
        &clients[1],
        &["endpoint", "status", "--cluster", "-w", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&ok_text(&o, "status --cluster")).unwrap();
    let rows = v.as_array().expect("rows");
    assert_eq!(rows.len(), 3, "{v}");
    let leaders: Vec<u64> = rows
        .iter()
        .map(|r| r["Status"]["leader"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]),
        "{v}"
    );
    wait_for("endpoint health --cluster", || {
        let o = as_root(&clients[0], &["endpoint", "health", "--cluster"]);
        let t = text(&o);
        (o.status.success() && t.matches("is healthy").count() == 3).then_some(())
    });

    // /metrics and /health on the https metrics URL, with the client port's TLS (a client
    // certificate is required there too).
    let murl = ms[0].metrics.clone().unwrap();
    let metrics = curl(&format!("{murl}/metrics"), &ca_file, Some(&root));
    assert!(metrics.contains("etcd_server_has_leader 1"), "{metrics}");
    let health = curl(&format!("{murl}/health"), &ca_file, Some(&root));
    assert!(health.contains(r#""health":"true""#), "{health}");
    let anon = curl(&format!("{murl}/metrics"), &ca_file, None);
    assert!(
        !anon.contains("etcd_server"),
        "no client certificate: {anon}"
    );

    // Auth, enabled through m1: certificate users (CN) and a password user.
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["role", "add", "root"],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice", "--no-password"],
        &["user", "add", "bob:bobpw"],
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
        &["user", "grant-role", "bob", "r1"],
        &["auth", "enable"],
    ] {
        let o = as_root(&clients[0], args);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
    }
    let as_alice = |ep: &str, args: &[&str]| ctl(ep, &ca_file, &alice, None, args);
    let as_bob = |ep: &str, args: &[&str]| ctl(ep, &ca_file, &alice, Some("bob:bobpw"), args);
    const DENIED: &str = "etcdserver: permission denied";
    // Granted on m1, enforced on m2 and m3 (the auth store is replicated through Raft).
    wait_for("alice's put on m2", || {
        as_alice(&clients[1], &["put", "/a/1", "x"])
            .status
            .success()
            .then_some(())
    });
    let o = as_alice(&clients[1], &["put", "/b", "x"]);
    assert!(text(&o).contains(DENIED), "{}", text(&o));
    let o = as_alice(&clients[2], &["get", "/a/1", "--print-value-only"]);
    assert_eq!(ok_text(&o, "alice get on m3").trim(), "x");
    let o = as_alice(&clients[2], &["get", "k1"]);
    assert!(text(&o).contains(DENIED), "{}", text(&o));
    let o = as_bob(&clients[2], &["put", "/a/2", "y"]);
    ok_text(&o, "bob put on m3");
    let o = as_bob(&clients[1], &["put", "/b", "y"]);
    assert!(text(&o).contains(DENIED), "{}", text(&o));
    // Revoked on m1: refused on m3 as soon as m3 applied it.
    ok_text(
        &as_root(
            &clients[0],
            &["role", "revoke-permission", "r1", "/a/", "--prefix=true"],
        ),
        "revoke",
    );
    wait_for("the revoke on m3", || {
        text(&as_alice(&clients[2], &["put", "/a/3", "z"]))
            .contains(DENIED)
            .then_some(())
    });
    ok_text(
        &as_root(
            &clients[0],
            &[
                "role",
                "grant-permission",
                "r1",
                "readwrite",
                "/c/",
                "--prefix=true",
            ],
        ),
        "grant /c/",
    );

    // The same flows through the etcd-client crate over TLS.
    etcd_client_flows(&clients, &ca_file, &root, &alice);

    // Members that cannot join: m4's peer certificate is from another CA (added as a learner
    // first, so only TLS stands in its way); m5's is from the right CA with the wrong CN.
    let mut m4 = tls_member(d, "m4", false);
    let mut m5 = tls_member(d, "m5", false);
    let peer4 = format!("--peer-urls={}", m4.peer);
    // (etcd refuses reconfiguration until its peers were connected for 5 s: retried.)
    wait_for("member add m4", || {
        let o = as_root(&clients[0], &["member", "add", "m4", &peer4, "--learner"]);
        o.status.success().then_some(())
    });
    let initial4 = format!("{initial},m4={}", m4.peer);
    start_tls(&mut m4, target, &initial4, "existing", &foreign, &ca_file);
    let initial5 = format!("{initial},m5={}", m5.peer);
    start_tls(&mut m5, target, &initial5, "existing", &intruder, &ca_file);
    assert!(
        m4.exits_with_failure(EXIT_MAX),
        "m4 (certificate of another CA) did not fail"
    );
    assert!(
        m5.exits_with_failure(EXIT_MAX),
        "m5 (wrong CN) did not fail"
    );
    let logs: String = ms.iter().map(Member::log_text).collect();
    assert!(logs.contains("rejected connection"), "no refusal logged");
    let (wrong_ca, wrong_cn) = match target {
        Target::Ferrite => ("UnknownIssuer", "is not the allowed CN"),
        Target::Etcd => (
            "certificate signed by unknown authority",
            "client certificate authentication failed",
        ),
    };
    assert!(logs.contains(wrong_ca), "wrong-CA refusal not logged");
    assert!(logs.contains(wrong_cn), "wrong-CN refusal not logged");
    if target == Target::Ferrite {
        for m in [&m4, &m5] {
            let l = m.log_text();
            assert!(
                l.contains("cannot fetch cluster info from peer urls"),
                "{}: {l}",
                m.name
            );
        }
    }

    // The cluster keeps serving, and drops the learner that never came.
    ok_text(&as_root(&clients[2], &["put", "k2", "v2"]), "put after");
    for ep in &clients {
        let o = as_root(ep, &["get", "k2", "--print-value-only"]);
        assert_eq!(ok_text(&o, "get after").trim(), "v2", "on {ep}");
    }
    let o = as_root(&clients[0], &["member", "list", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&ok_text(&o, "member list")).unwrap();
    let id4 = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["peerURLs"][0] == m4.peer.as_str())
        .and_then(|m| m["ID"].as_u64())
        .expect("m4 listed");
    ok_text(
        &as_root(&clients[0], &["member", "remove", &format!("{id4:x}")]),
        "member remove m4",
    );
}

/// etcd-client with TLS: root (certificate CN) writes on one member and reads on another,
/// lists members and asks each member's status; alice (CN) and bob (password, over alice's
/// certificate) are held to r1's permissions on every member.
fn etcd_client_flows(clients: &[String], ca_file: &str, root: &Cred, alice: &Cred) {
    use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
    let ca_pem = std::fs::read_to_string(ca_file).unwrap();
    let opts = |cred: &Cred| {
        let (c, k) = cred.pem();
        ConnectOptions::new()
            .with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(ca_pem.clone()))
                    .identity(Identity::from_pem(c, k)),
            )
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let connect = |ep: &str, o: ConnectOptions| {
            let ep = ep.to_string();
            async move {
                tokio::time::timeout(Duration::from_secs(15), Client::connect([ep], Some(o)))
                    .await
                    .expect("connect timed out")
                    .expect("connect over TLS")
            }
        };
        let mut r1 = connect(&clients[0], opts(root)).await;
        let mut r2 = connect(&clients[1], opts(root)).await;
        r1.put("ec/k", "v", None).await.expect("root put on m1");
        let got = r2.get("ec/k", None).await.expect("root get on m2");
        assert_eq!(got.kvs()[0].value(), b"v");
        let ml = r2.member_list().await.expect("member list");
        assert_eq!(ml.members().len(), 3);
        assert!(ml
            .members()
            .iter()
            .all(|m| m.peer_urls().iter().all(|u| u.starts_with("https://"))));
        let mut ids = Vec::new();
        for ep in clients {
            let mut c = connect(ep, opts(root)).await;
            let st = c.status().await.expect("status");
            assert_ne!(st.leader(), 0, "{ep}");
            ids.push(st.header().expect("header").member_id());
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "three distinct members");

        let mut a3 = connect(&clients[2], opts(alice)).await;
        let mut a2 = connect(&clients[1], opts(alice)).await;
        a3.put("/c/1", "x", None)
            .await
            .expect("alice put /c/1 on m3");
        let got = a2.get("/c/1", None).await.expect("alice get on m2");
        assert_eq!(got.kvs()[0].value(), b"x");
        let e = a2.put("/b", "x", None).await.expect_err("alice put /b");
        assert!(e.to_string().contains("permission denied"), "{e}");
        let e = a3.get("ec/k", None).await.expect_err("alice get ec/k");
        assert!(e.to_string().contains("permission denied"), "{e}");
        let mut b1 = connect(&clients[0], opts(alice).with_user("bob", "bobpw")).await;
        b1.put("/c/2", "y", None).await.expect("bob put on m1");
        let e = b1.put("/a/9", "y", None).await.expect_err("bob put /a/9");
        assert!(e.to_string().contains("permission denied"), "{e}");
        let got = r1.get("/c/2", None).await.expect("root get /c/2");
        assert_eq!(got.kvs()[0].value(), b"y");
    });
}

/// `--peer-auto-tls`: each member generates a self-signed peer certificate at start (under
/// `<data-dir>/fixtures/peer`) and peers talk TLS without verifying each other, as etcd; the
/// client port stays plain http.
#[test]
fn peer_auto_tls_cluster() {
    let target = Target::from_env();
    let tmp = TempDir::new(&format!("cluster-autotls-{}", target.name()));
    let d = tmp.path();
    let mut ms: Vec<Member> = (1..=3)
        .map(|i| Member::new(d, &format!("a{i}"), TOKEN).peer_scheme("https"))
        .collect();
    let initial = initial_cluster(&ms);
    for m in ms.iter_mut() {
        m.start_with(target, &initial, "new", &["--peer-auto-tls".to_string()]);
    }
    let plain = |ep: &str, args: &[&str]| etcdctl_at(ep, args, CTL_TIMEOUT);
    wait_for("a write through a3", || {
        plain(&ms[2].client, &["put", "k", "v"])
            .status
            .success()
            .then_some(())
    });
    for m in &ms {
        let o = plain(&m.client, &["get", "k", "--print-value-only"]);
        assert_eq!(ok_text(&o, "get").trim(), "v", "on {}", m.name);
        assert!(
            m.data_dir.join("fixtures/peer/cert.pem").exists(),
            "{}: no generated peer certificate",
            m.name
        );
    }
    let o = plain(&ms[0].client, &["member", "list", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&ok_text(&o, "member list")).unwrap();
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3), "{v}");
    // The peer port speaks TLS: curl completes a handshake with it (exit 35 would be a TLS
    // failure, 7 no listener); what follows is not HTTP for ferrite, so only the handshake
    // is checked.
    let mut c = Command::new("curl");
    c.args(["-s", "-k", "-m", "5", "-o", "/dev/null", &ms[0].peer]);
    let out = run_bounded(c, None, Duration::from_secs(10));
    let code = out.status.code();
    assert!(
        !matches!(code, Some(7) | Some(35)),
        "TLS handshake with the peer port failed: curl exit {code:?}"
    );
}

/// `--peer-cert-allowed-hostname`: a member whose peer certificate is valid for the allowed
/// hostname joins (as a learner); one whose certificate (same CA, same CN) names another host
/// is refused, with the reason in the log.
#[test]
fn peer_cert_allowed_hostname() {
    let target = Target::from_env();
    let tmp = TempDir::new(&format!("cluster-hostname-{}", target.name()));
    let d = tmp.path();
    let ca = Ca::new("ferrite hostname ca");
    let ca_file = ca.write(d, "ca");
    let good: Vec<Cred> = (1..=2)
        .map(|i| Cred::new(ca.loopback_leaf(d, &format!("h{i}"), MEMBER_CN, i, false)))
        .collect();
    let (c, k) = ca
        .leaf(MEMBER_CN, &["other.example"], 9, false, Usage::Both)
        .write(d, "elsewhere");
    let elsewhere = Cred { cert: c, key: k };
    let tls = |cred: &Cred| {
        vec![
            format!("--peer-cert-file={}", cred.cert),
            format!("--peer-key-file={}", cred.key),
            format!("--peer-trusted-ca-file={ca_file}"),
            "--peer-client-cert-auth".to_string(),
            "--peer-cert-allowed-hostname=localhost".to_string(),
        ]
    };
    let mut h1 = Member::new(d, "h1", TOKEN).peer_scheme("https");
    let mut h2 = Member::new(d, "h2", TOKEN).peer_scheme("https");
    let mut h3 = Member::new(d, "h3", TOKEN).peer_scheme("https");
    let plain = |ep: &str, args: &[&str]| etcdctl_at(ep, args, CTL_TIMEOUT);
    h1.start_with(target, &format!("h1={}", h1.peer), "new", &tls(&good[0]));
    wait_for("h1 serving", || {
        plain(&h1.client, &["put", "k", "v"])
            .status
            .success()
            .then_some(())
    });
    let peer2 = format!("--peer-urls={}", h2.peer);
    wait_for("member add h2", || {
        let o = plain(&h1.client, &["member", "add", "h2", &peer2, "--learner"]);
        o.status.success().then_some(())
    });
    h2.start_with(
        target,
        &format!("h1={},h2={}", h1.peer, h2.peer),
        "existing",
        &tls(&good[1]),
    );
    // h2 joined: it published its name through Raft.
    wait_for("h2 published", || {
        let o = plain(&h1.client, &["member", "list", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v["members"]
            .as_array()?
            .iter()
            .any(|m| m["name"] == "h2")
            .then_some(())
    });
    h3.start_with(
        target,
        &format!("h1={},h3={}", h1.peer, h3.peer),
        "existing",
        &tls(&elsewhere),
    );
    assert!(
        h3.exits_with_failure(EXIT_MAX),
        "h3 (certificate for another host) did not fail"
    );
    let log = h1.log_text();
    assert!(log.contains("rejected connection"), "no refusal logged");
    let why = match target {
        Target::Ferrite => "is not valid for the allowed hostname \\\"localhost\\\"",
        Target::Etcd => "client certificate authentication failed",
    };
    assert!(log.contains(why), "refusal reason {why:?} not logged");
    let o = plain(&h1.client, &["put", "k", "v2"]);
    ok_text(&o, "put after the refusal");
}
