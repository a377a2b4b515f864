//! etcd's auth through Debian's etcdctl 3.4 (`--user`) and the JSON gateway: the full
//! lifecycle (users, roles, grants, enable, allowed and denied operations including a Txn
//! with a denied branch, watch and lock denied, password change, token invalidation, disable),
//! the auth store surviving a restart, and a differential run of one command sequence against
//! Debian's etcd 3.4 and ferrite (outputs compared after dropping etcdctl's timestamped log
//! lines).
//!
//! The lifecycle test also runs against the reference: `FERRITE_TEST_TARGET=etcd cargo test
//! --release -p ferrite --test auth_etcdctl lifecycle`. The differential test skips when
//! /usr/bin/etcd is missing unless FERRITE_REQUIRE_ETCD=1.

mod common;

use common::{curl, Server, Target};
use std::process::Output;
use std::time::Duration;

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";

/// One etcdctl run's observable result: exit success, stdout, and the `Error:` lines of
/// stderr (etcdctl's JSON log lines carry timestamps and client ids: dropped).
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    ok: bool,
    out: String,
    err: String,
}

fn seen(o: &Output) -> Seen {
    let err = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.starts_with('{'))
        .collect::<Vec<_>>()
        .join("\n");
    Seen {
        ok: o.status.success(),
        out: String::from_utf8_lossy(&o.stdout).into_owned(),
        err,
    }
}

fn ctl(s: &Server, user: Option<&str>, args: &[&str], stdin: Option<&str>) -> Seen {
    let mut all: Vec<String> = Vec::new();
    if let Some(u) = user {
        all.push(format!("--user={u}"));
    }
    all.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    seen(&s.etcdctl_with(&refs, stdin, Duration::from_secs(20)))
}

#[track_caller]
fn ok(s: &Server, user: Option<&str>, args: &[&str]) -> String {
    let r = ctl(s, user, args, None);
    assert!(r.ok, "{args:?} as {user:?} failed: {r:?}");
    r.out
}

#[track_caller]
fn fails(s: &Server, user: Option<&str>, args: &[&str], msg: &str) {
    let r = ctl(s, user, args, None);
    assert!(!r.ok, "{args:?} as {user:?} should fail: {r:?}");
    assert!(
        r.err.contains(msg),
        "{args:?} as {user:?}: expected {msg:?}, got {r:?}"
    );
}

const DENIED: &str = "etcdserver: permission denied";

fn setup_users(s: &Server) {
    ok(s, None, &["user", "add", ROOT]);
    ok(s, None, &["role", "add", "root"]);
    ok(s, None, &["user", "grant-role", "root", "root"]);
    ok(s, None, &["user", "add", ALICE]);
    ok(s, None, &["role", "add", "r1"]);
    ok(
        s,
        None,
        &[
            "role",
            "grant-permission",
            "r1",
            "readwrite",
            "/a/",
            "--prefix=true",
        ],
    );
    ok(s, None, &["role", "grant-permission", "r1", "read", "/ro"]);
    ok(s, None, &["user", "grant-role", "alice", "r1"]);
}

fn gateway_token(s: &Server, user: &str, pw: &str) -> String {
    let body = format!(r#"{{"name":"{user}","password":"{pw}"}}"#);
    let out = curl(&[
        "-X",
        "POST",
        &format!("{}/v3/auth/authenticate", s.endpoint),
        "-d",
        &body,
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("authenticate: {e}: {out}"));
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_string()
}

fn gateway_range(s: &Server, token: &str, key_b64: &str) -> String {
    curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: {token}"),
        &format!("{}/v3/kv/range", s.endpoint),
        "-d",
        &format!(r#"{{"key":"{key_b64}"}}"#),
    ])
}

#[test]
fn lifecycle() {
    let s = Server::start();
    // Auth cannot be enabled before root exists with the root role.
    fails(
        &s,
        None,
        &["auth", "enable"],
        "etcdserver: root user does not exist",
    );
    setup_users(&s);
    ok(&s, None, &["put", "/a/pre", "x"]);
    assert_eq!(
        ok(&s, None, &["auth", "enable"]).trim(),
        "Authentication Enabled"
    );

    // Without credentials nothing passes; root can do everything.
    fails(
        &s,
        None,
        &["put", "k", "v"],
        "etcdserver: user name is empty",
    );
    fails(&s, None, &["get", "k"], "etcdserver: user name is empty");
    ok(&s, Some(ROOT), &["put", "k", "v"]);
    ok(&s, Some(ROOT), &["put", "/b", "secret"]);

    // alice: readwrite on /a/*, read on /ro.
    ok(&s, Some(ALICE), &["put", "/a/1", "v1"]);
    assert_eq!(
        ok(&s, Some(ALICE), &["get", "/a/", "--prefix", "--keys-only"])
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["/a/1", "/a/pre"]
    );
    fails(&s, Some(ALICE), &["put", "/b", "v"], DENIED);
    fails(&s, Some(ALICE), &["get", "/b"], DENIED);
    fails(
        &s,
        Some(ALICE),
        &["get", "/a/", "--prefix=false", "--from-key"],
        DENIED,
    );
    ok(&s, Some(ALICE), &["get", "/ro"]);
    fails(&s, Some(ALICE), &["put", "/ro", "z"], DENIED);
    fails(&s, Some(ALICE), &["del", "/b"], DENIED);
    fails(
        &s,
        Some("alice:wrong"),
        &["get", "/a/1"],
        "etcdserver: authentication failed, invalid user ID or password",
    );

    // A Txn is refused when any branch touches a denied key, whichever branch would run.
    let txn = "value(\"/a/1\") = \"v1\"\n\nput /a/2 ok\n\nput /b no\n\n";
    let r = ctl(&s, Some(ALICE), &["txn"], Some(txn));
    assert!(!r.ok && r.err.contains(DENIED), "{r:?}");
    assert_eq!(
        ok(&s, Some(ROOT), &["get", "/a/2"]),
        "",
        "a refused txn wrote nothing"
    );
    assert_eq!(
        ok(&s, Some(ROOT), &["get", "/b", "--print-value-only"]).trim(),
        "secret"
    );
    let txn = "value(\"/a/1\") = \"v1\"\n\nput /a/2 ok\n\nget /ro\n\n";
    let r = ctl(&s, Some(ALICE), &["txn"], Some(txn));
    assert!(r.ok, "{r:?}");
    assert!(r.out.starts_with("SUCCESS"), "{r:?}");
    // A compare on a key alice cannot read is refused too.
    let txn = "value(\"/b\") = \"secret\"\n\nput /a/3 ok\n\n\n";
    let r = ctl(&s, Some(ALICE), &["txn"], Some(txn));
    assert!(!r.ok && r.err.contains(DENIED), "{r:?}");

    // Watch and lock on denied keys are refused.
    let r = ctl(&s, Some(ALICE), &["watch", "/b"], None);
    assert!(
        r.err
            .contains("watch was canceled (etcdserver: permission denied)"),
        "{r:?}"
    );
    fails(&s, Some(ALICE), &["lock", "/b/l", "echo", "x"], DENIED);
    let r = ctl(&s, Some(ALICE), &["lock", "/a/l", "echo", "locked"], None);
    assert!(r.ok && r.out.contains("locked"), "{r:?}");

    // Admin-only calls.
    fails(&s, Some(ALICE), &["user", "list"], DENIED);
    fails(&s, Some(ALICE), &["user", "add", "bob:b"], DENIED);
    fails(&s, Some(ALICE), &["compaction", "1"], DENIED);
    fails(&s, Some(ALICE), &["endpoint", "hashkv"], DENIED);
    fails(&s, Some(ALICE), &["member", "remove", "1"], DENIED);
    assert!(ok(&s, Some(ALICE), &["user", "get", "alice"]).contains("Roles: r1"));
    assert!(ok(&s, Some(ALICE), &["role", "get", "r1"]).contains("[/a/, /a0) (prefix /a/)"));
    assert_eq!(
        ok(&s, Some(ROOT), &["user", "list"])
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["alice", "root"]
    );

    // The gateway: Authorization carries the token; a token dies with a password change.
    let token = gateway_token(&s, "alice", "alicepw");
    let got = gateway_range(&s, &token, "L2EvMQ==");
    assert!(got.contains(r#""value":"djE=""#), "{got}");
    let got = gateway_range(&s, &token, "L2I=");
    assert!(got.contains(DENIED), "{got}");
    let r = ctl(
        &s,
        Some(ROOT),
        &["user", "passwd", "alice", "--interactive=false"],
        Some("newpw\n"),
    );
    assert!(r.ok, "{r:?}");
    let got = gateway_range(&s, &token, "L2EvMQ==");
    assert!(got.contains("etcdserver: invalid auth token"), "{got}");
    fails(&s, Some(ALICE), &["get", "/a/1"], "authentication failed");
    assert_eq!(
        ok(
            &s,
            Some("alice:newpw"),
            &["get", "/a/1", "--print-value-only"]
        )
        .trim(),
        "v1"
    );

    // Revocations apply at once.
    ok(&s, Some(ROOT), &["user", "revoke-role", "alice", "r1"]);
    fails(&s, Some("alice:newpw"), &["get", "/a/1"], DENIED);
    fails(
        &s,
        Some(ROOT),
        &["user", "delete", "root"],
        "etcdserver: invalid auth management",
    );
    assert_eq!(
        ok(&s, Some(ROOT), &["auth", "disable"]).trim(),
        "Authentication Disabled"
    );
    ok(&s, None, &["put", "k2", "v"]);
    // A token from before the disable is refused (etcd drops simple tokens on disable).
    let got = gateway_range(&s, &token, "azI=");
    assert!(got.contains("etcdserver: invalid auth token"), "{got}");
}

#[test]
fn auth_store_survives_restart() {
    if Target::from_env() != Target::Ferrite {
        return;
    }
    let mut s = Server::start();
    setup_users(&s);
    ok(&s, None, &["auth", "enable"]);
    ok(&s, Some(ALICE), &["put", "/a/x", "1"]);
    s.restart();
    fails(&s, None, &["get", "/a/x"], "etcdserver: user name is empty");
    assert_eq!(
        ok(&s, Some(ALICE), &["get", "/a/x", "--print-value-only"]).trim(),
        "1"
    );
    fails(&s, Some(ALICE), &["put", "/b", "1"], DENIED);
    assert!(ok(&s, Some(ROOT), &["role", "get", "r1"]).contains("/ro"));
}

fn gateway_put(s: &Server, token: &str, key_b64: &str) -> String {
    curl(&[
        "-X",
        "POST",
        "-H",
        &format!("Authorization: {token}"),
        &format!("{}/v3/kv/put", s.endpoint),
        "-d",
        &format!(r#"{{"key":"{key_b64}","value":"dg=="}}"#),
    ])
}

const OLD_REVISION: &str = "etcdserver: revision of auth store is old";
const INVALID_TOKEN: &str = "etcdserver: invalid auth token";
/// `/a/1` and `/b` in base64.
const KEY_A1: &str = "L2EvMQ==";
const KEY_B: &str = "L2I=";

/// A token used again after auth changes, as etcd 3.4 answers it (checked side by side with
/// /usr/bin/etcd): a simple token carries no revision (etcd resolves it at the store's current
/// revision), so it keeps working under the changed permissions until the user's password
/// changes or the user is deleted (then "invalid auth token"); a JWT carries the revision it
/// was issued at, so after any auth change it is refused with "revision of auth store is old"
/// and the client must authenticate again.
fn token_reuse_after_auth_changes(jwt: bool) {
    let keys = common::TempDir::new("jwt-keys");
    let mut extra: Vec<String> = Vec::new();
    if jwt {
        let key = rcgen::KeyPair::generate().unwrap();
        let (pubf, privf) = (keys.path().join("pub.pem"), keys.path().join("priv.pem"));
        std::fs::write(&pubf, key.public_key_pem()).unwrap();
        std::fs::write(&privf, key.serialize_pem()).unwrap();
        extra.push(format!(
            "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256,ttl=10m",
            pubf.display(),
            privf.display()
        ));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let s = Server::start_target(Target::from_env(), &extra);
    setup_users(&s);
    ok(&s, None, &["auth", "enable"]);
    let t = gateway_token(&s, "alice", "alicepw");
    assert!(
        jwt == t.starts_with("eyJ"),
        "unexpected token kind for jwt={jwt}: {t}"
    );
    let put = gateway_put(&s, &t, KEY_A1);
    assert!(put.contains(r#""header""#), "fresh token: {put}");

    // An unrelated auth change bumps the auth revision.
    ok(&s, Some(ROOT), &["role", "add", "r2"]);
    let put = gateway_put(&s, &t, KEY_A1);
    let get = gateway_range(&s, &t, KEY_A1);
    if jwt {
        assert!(put.contains(OLD_REVISION), "jwt after a change: {put}");
        assert!(get.contains(OLD_REVISION), "jwt after a change: {get}");
    } else {
        assert!(put.contains(r#""header""#), "simple after a change: {put}");
        assert!(get.contains(r#""kvs""#), "simple after a change: {get}");
    }
    let t = if jwt {
        gateway_token(&s, "alice", "alicepw")
    } else {
        t
    };

    // A grant and a revoke: the same (or, for JWT, a fresh) token sees the new permissions.
    ok(
        &s,
        Some(ROOT),
        &["role", "grant-permission", "r1", "readwrite", "/b"],
    );
    let t = if jwt {
        let put = gateway_put(&s, &t, KEY_B);
        assert!(put.contains(OLD_REVISION), "jwt after a grant: {put}");
        gateway_token(&s, "alice", "alicepw")
    } else {
        t
    };
    let put = gateway_put(&s, &t, KEY_B);
    assert!(put.contains(r#""header""#), "after the grant: {put}");
    ok(
        &s,
        Some(ROOT),
        &["role", "revoke-permission", "r1", "/a/", "--prefix=true"],
    );
    let put = gateway_put(&s, &t, KEY_A1);
    assert!(
        put.contains(if jwt { OLD_REVISION } else { DENIED }),
        "after the revoke: {put}"
    );
    let t = if jwt {
        gateway_token(&s, "alice", "alicepw")
    } else {
        t
    };
    let put = gateway_put(&s, &t, KEY_A1);
    assert!(put.contains(DENIED), "revoked: {put}");

    // A password change: simple tokens of the user are dropped; a JWT is merely old.
    let r = ctl(
        &s,
        Some(ROOT),
        &["user", "passwd", "alice", "--interactive=false"],
        Some("newpw\n"),
    );
    assert!(r.ok, "passwd: {r:?}");
    let put = gateway_put(&s, &t, KEY_B);
    assert!(
        put.contains(if jwt { OLD_REVISION } else { INVALID_TOKEN }),
        "after the password change: {put}"
    );
    // Deleting the user: the same.
    let t = gateway_token(&s, "alice", "newpw");
    assert!(gateway_put(&s, &t, KEY_B).contains(r#""header""#));
    ok(&s, Some(ROOT), &["user", "delete", "alice"]);
    let put = gateway_put(&s, &t, KEY_B);
    assert!(
        put.contains(if jwt { OLD_REVISION } else { INVALID_TOKEN }),
        "after the user was deleted: {put}"
    );
}

#[test]
fn simple_token_reuse_after_auth_changes() {
    token_reuse_after_auth_changes(false);
}

#[test]
fn jwt_reuse_after_auth_changes() {
    token_reuse_after_auth_changes(true);
}

/// Tokens past their lifetime are refused with "invalid auth token": a simple token unused for
/// longer than `--auth-token-ttl` seconds (each use extends it), and a JWT past its `ttl`.
/// Bounded: two servers, each waits 3 s for a 1 s lifetime to pass.
#[test]
fn expired_tokens_are_invalid() {
    let keys = common::TempDir::new("jwt-ttl-keys");
    let key = rcgen::KeyPair::generate().unwrap();
    let (pubf, privf) = (keys.path().join("pub.pem"), keys.path().join("priv.pem"));
    std::fs::write(&pubf, key.public_key_pem()).unwrap();
    std::fs::write(&privf, key.serialize_pem()).unwrap();
    let jwt = format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256,ttl=1s",
        pubf.display(),
        privf.display()
    );
    for flags in [vec!["--auth-token-ttl=1"], vec![jwt.as_str()]] {
        let s = Server::start_target(Target::from_env(), &flags);
        setup_users(&s);
        ok(&s, None, &["auth", "enable"]);
        let t = gateway_token(&s, "alice", "alicepw");
        let put = gateway_put(&s, &t, KEY_A1);
        assert!(put.contains(r#""header""#), "{flags:?} fresh token: {put}");
        std::thread::sleep(Duration::from_secs(3));
        let put = gateway_put(&s, &t, KEY_A1);
        assert!(
            put.contains(INVALID_TOKEN),
            "{flags:?} expired token: {put}"
        );
        // A new token works again.
        let t = gateway_token(&s, "alice", "alicepw");
        let put = gateway_put(&s, &t, KEY_A1);
        assert!(put.contains(r#""header""#), "{flags:?} new token: {put}");
    }
}

/// The same etcdctl command sequence against etcd 3.4 and ferrite.
#[test]
fn differential_against_etcd() {
    if !std::path::Path::new("/usr/bin/etcd").exists() {
        assert!(
            std::env::var("FERRITE_REQUIRE_ETCD").is_err(),
            "FERRITE_REQUIRE_ETCD is set but /usr/bin/etcd is missing"
        );
        eprintln!("skipping: /usr/bin/etcd not installed");
        return;
    }
    type Step = (
        Option<&'static str>,
        &'static [&'static str],
        Option<&'static str>,
    );
    let steps: &[Step] = &[
        (None, &["user", "add", ROOT], None),
        (None, &["auth", "enable"], None),
        (None, &["role", "add", "root"], None),
        (None, &["user", "grant-role", "root", "root"], None),
        (None, &["user", "add", ALICE], None),
        (None, &["user", "add", "alice:x"], None),
        (None, &["user", "add", ":x"], None),
        (None, &["role", "add", "r1"], None),
        (None, &["role", "add", "r1"], None),
        (
            None,
            &[
                "role",
                "grant-permission",
                "r1",
                "readwrite",
                "/a/",
                "--prefix=true",
            ],
            None,
        ),
        (
            None,
            &["role", "grant-permission", "r1", "read", "/ro"],
            None,
        ),
        (
            None,
            &["role", "grant-permission", "r1", "write", "/w", "/x"],
            None,
        ),
        (
            None,
            &["role", "grant-permission", "nosuch", "write", "/w"],
            None,
        ),
        (None, &["user", "grant-role", "alice", "r1"], None),
        (None, &["user", "grant-role", "alice", "nosuch"], None),
        (None, &["user", "grant-role", "nobody", "r1"], None),
        (None, &["user", "get", "alice"], None),
        (None, &["user", "get", "nobody"], None),
        (None, &["role", "get", "r1"], None),
        (None, &["role", "get", "nosuch"], None),
        (None, &["user", "list"], None),
        (None, &["role", "list"], None),
        (None, &["auth", "enable"], None),
        (None, &["put", "k", "v"], None),
        (None, &["get", "k"], None),
        (Some(ROOT), &["put", "k", "v"], None),
        (Some(ROOT), &["put", "/b", "secret"], None),
        (Some(ALICE), &["put", "/a/1", "v1"], None),
        (Some(ALICE), &["put", "/b", "v"], None),
        (Some(ALICE), &["get", "/a/", "--prefix"], None),
        (Some(ALICE), &["get", "/b"], None),
        (Some(ALICE), &["get", "/ro"], None),
        (Some(ALICE), &["put", "/w1", "z"], None),
        (Some(ALICE), &["get", "/w1"], None),
        (Some(ALICE), &["del", "/a/1", "--prev-kv"], None),
        (
            Some(ALICE),
            &["txn"],
            Some("value(\"/a/1\") = \"v1\"\n\nput /a/2 ok\n\nput /b no\n\n"),
        ),
        (
            Some(ALICE),
            &["txn"],
            Some("value(\"/a/1\") = \"v1\"\n\nput /a/2 ok\n\nget /ro\n\n"),
        ),
        (Some("alice:wrong"), &["get", "/a/2"], None),
        (Some("nobody:x"), &["get", "/a/2"], None),
        (Some(ALICE), &["user", "list"], None),
        (Some(ALICE), &["user", "get", "alice"], None),
        (Some(ALICE), &["user", "get", "root"], None),
        (Some(ALICE), &["role", "get", "r1"], None),
        (Some(ALICE), &["role", "get", "root"], None),
        (Some(ALICE), &["user", "add", "bob:b"], None),
        (Some(ALICE), &["watch", "/b"], None),
        (
            Some(ROOT),
            &["user", "passwd", "alice", "--interactive=false"],
            Some("newpw\n"),
        ),
        (Some(ALICE), &["get", "/a/", "--prefix"], None),
        (Some("alice:newpw"), &["get", "/a/", "--prefix"], None),
        (
            Some(ROOT),
            &["role", "revoke-permission", "r1", "/ro"],
            None,
        ),
        (
            Some(ROOT),
            &["role", "revoke-permission", "r1", "/ro"],
            None,
        ),
        (Some(ROOT), &["role", "get", "r1"], None),
        (Some(ROOT), &["user", "revoke-role", "alice", "r1"], None),
        (Some(ROOT), &["user", "revoke-role", "alice", "r1"], None),
        (Some("alice:newpw"), &["get", "/a/2"], None),
        (Some(ROOT), &["role", "delete", "r1"], None),
        (Some(ROOT), &["user", "delete", "alice"], None),
        (Some(ROOT), &["user", "delete", "alice"], None),
        (Some(ROOT), &["user", "delete", "root"], None),
        (
            Some(ROOT),
            &["role", "revoke-permission", "root", "/"],
            None,
        ),
        (Some(ROOT), &["user", "revoke-role", "root", "root"], None),
        (Some(ROOT), &["auth", "disable"], None),
        (None, &["put", "k2", "v"], None),
        (None, &["auth", "disable"], None),
        (None, &["user", "list"], None),
        (None, &["role", "list"], None),
    ];
    let etcd = Server::start_target(Target::Etcd, &[]);
    let ours = Server::start_target(Target::Ferrite, &[]);
    for (i, (user, args, stdin)) in steps.iter().enumerate() {
        let want = ctl(&etcd, *user, args, *stdin);
        let got = ctl(&ours, *user, args, *stdin);
        assert_eq!(got, want, "step {i}: {args:?} as {user:?}");
    }
}
