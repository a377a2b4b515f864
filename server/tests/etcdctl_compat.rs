//! Debian's etcdctl 3.4 (ETCDCTL_API=3) against the server, through every command group that
//! applies to one node, asserting on etcdctl's output. Each test starts its own fresh server, so
//! revisions are predictable (a fresh store is at revision 1).
//!
//! Run against the reference to check the expectations: `FERRITE_TEST_TARGET=etcd cargo test -p
//! ferrite --test etcdctl_compat`; without the variable the target is the ferrite binary.

mod common;

use common::{err_text, ok_text, Server};
use std::time::Duration;

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn b64(s: &str) -> String {
    // Minimal standard base64 encoder (etcdctl -w json prints bytes as base64).
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_helper_matches_known_values() {
    assert_eq!(b64("a"), "YQ==");
    assert_eq!(b64("k1"), "azE=");
    assert_eq!(b64("abc"), "YWJj");
}

#[test]
fn put_and_get_with_every_flag() {
    let s = Server::start();
    for (k, v) in [
        ("a", "3"),
        ("b", "1"),
        ("c", "2"),
        ("foo1", "x"),
        ("foo2", "y"),
    ] {
        assert_eq!(ok_text(&s.etcdctl(&["put", k, v]), "put"), "OK\n");
    }
    // Revisions: a=2, b=3, c=4, foo1=5, foo2=6.
    assert_eq!(ok_text(&s.etcdctl(&["get", "a"]), "get"), "a\n3\n");
    assert_eq!(ok_text(&s.etcdctl(&["get", "missing"]), "get"), "");
    let out = ok_text(
        &s.etcdctl(&["put", "b", "10", "--prev-kv"]),
        "put --prev-kv",
    );
    assert_eq!(out, "OK\nb\n1\n"); // b now at revision 7
    assert_eq!(
        ok_text(&s.etcdctl(&["get", "foo", "--prefix"]), "prefix"),
        "foo1\nx\nfoo2\ny\n"
    );
    assert_eq!(
        ok_text(
            &s.etcdctl(&["get", "c", "--from-key", "--keys-only"]),
            "from-key"
        ),
        "c\n\nfoo1\n\nfoo2\n\n"
    );
    assert_eq!(
        ok_text(&s.etcdctl(&["get", "a", "c"]), "range a..c"),
        "a\n3\nb\n10\n"
    );
    assert_eq!(
        ok_text(&s.etcdctl(&["get", "", "--from-key", "--limit=2"]), "limit"),
        "a\n3\nb\n10\n"
    );
    assert_eq!(
        ok_text(&s.etcdctl(&["get", "b", "--rev=3"]), "rev"),
        "b\n1\n"
    );
    assert_eq!(
        ok_text(
            &s.etcdctl(&[
                "get",
                "",
                "--from-key",
                "--sort-by=VALUE",
                "--order=DESCEND",
                "--print-value-only"
            ]),
            "sort by value"
        ),
        "y\nx\n3\n2\n10\n"
    );
    assert_eq!(
        ok_text(
            &s.etcdctl(&[
                "get",
                "",
                "--from-key",
                "--sort-by=MODIFY",
                "--order=ASCEND",
                "--keys-only"
            ]),
            "sort by modify"
        ),
        "a\n\nc\n\nfoo1\n\nfoo2\n\nb\n\n"
    );
    assert_eq!(
        ok_text(
            &s.etcdctl(&[
                "get",
                "",
                "--from-key",
                "--sort-by=VERSION",
                "--order=DESCEND",
                "--keys-only",
                "--limit=1"
            ]),
            "sort by version"
        ),
        "b\n\n"
    );
    assert_eq!(
        ok_text(
            &s.etcdctl(&[
                "get",
                "",
                "--from-key",
                "--sort-by=CREATE",
                "--order=DESCEND",
                "--keys-only"
            ]),
            "sort by create"
        ),
        "foo2\n\nfoo1\n\nc\n\nb\n\na\n\n"
    );
    assert_eq!(
        ok_text(&s.etcdctl(&["get", "a", "--consistency=s"]), "serializable"),
        "a\n3\n"
    );

    let j = json(&ok_text(
        &s.etcdctl(&["get", "b", "-w", "json"]),
        "get -w json",
    ));
    assert_eq!(j["header"]["revision"], 7);
    assert_eq!(j["count"], 1);
    let kv = &j["kvs"][0];
    assert_eq!(kv["key"], b64("b"));
    assert_eq!(kv["value"], b64("10"));
    assert_eq!(kv["create_revision"], 3);
    assert_eq!(kv["mod_revision"], 7);
    assert_eq!(kv["version"], 2);
    assert!(j["header"]["cluster_id"].as_u64().unwrap() != 0);
    assert!(j["header"]["member_id"].as_u64().unwrap() != 0);
    assert!(j["header"]["raft_term"].as_u64().unwrap() >= 1);
    let j = json(&ok_text(
        &s.etcdctl(&["get", "foo", "--prefix", "--limit=1", "-w", "json"]),
        "limit json",
    ));
    assert_eq!(j["count"], 2);
    assert_eq!(j["more"], true);
    assert_eq!(j["kvs"].as_array().unwrap().len(), 1);

    // --ignore-value keeps the value; on a missing key it is an error.
    assert_eq!(
        ok_text(&s.etcdctl(&["put", "a", "--ignore-value"]), "ignore-value"),
        "OK\n"
    );
    assert_eq!(ok_text(&s.etcdctl(&["get", "a"]), "get"), "a\n3\n");
    let e = err_text(
        &s.etcdctl(&["put", "nope", "--ignore-value"]),
        "ignore-value missing",
    );
    assert!(e.contains("etcdserver: key not found"), "{e}");
    // Fields output.
    let f = ok_text(&s.etcdctl(&["get", "a", "-w", "fields"]), "fields");
    assert!(
        f.contains("\"Key\" : \"a\"") && f.contains("\"Value\" : \"3\""),
        "{f}"
    );
}

#[test]
fn delete_and_txn() {
    let s = Server::start();
    for (k, v) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3"), ("z", "zz")] {
        ok_text(&s.etcdctl(&["put", k, v]), "put");
    }
    assert_eq!(
        ok_text(&s.etcdctl(&["del", "k1", "--prev-kv"]), "del --prev-kv"),
        "1\nk1\nv1\n"
    );
    assert_eq!(ok_text(&s.etcdctl(&["del", "k1"]), "del missing"), "0\n");
    assert_eq!(
        ok_text(&s.etcdctl(&["del", "k", "--prefix"]), "del --prefix"),
        "2\n"
    );
    assert_eq!(
        ok_text(&s.etcdctl(&["get", "", "--from-key"]), "left"),
        "z\nzz\n"
    );

    ok_text(&s.etcdctl(&["put", "k1", "v1"]), "put");
    let txn = "value(\"k1\") = \"v1\"\n\nput k2 v2\nget k1\n\nput k3 v3\n\n";
    let out = ok_text(
        &s.etcdctl_with(&["txn", "-i"], Some(txn), Duration::from_secs(15)),
        "txn",
    );
    assert!(out.ends_with("SUCCESS\n\nOK\n\nk1\nv1\n"), "{out}");
    assert_eq!(ok_text(&s.etcdctl(&["get", "k3"]), "k3"), "");
    let txn =
        "value(\"k1\") != \"v1\"\nversion(\"k2\") > \"0\"\n\nput k2 no\n\nput k3 v3\nget k2\n\n";
    let out = ok_text(
        &s.etcdctl_with(&["txn", "-i"], Some(txn), Duration::from_secs(15)),
        "txn",
    );
    assert!(out.ends_with("FAILURE\n\nOK\n\nk2\nv2\n"), "{out}");
    let txn = "mod(\"k1\") > \"0\"\ncreate(\"k3\") > \"0\"\n\ndel k3\n\n\n";
    let out = ok_text(
        &s.etcdctl_with(
            &["txn", "-i", "-w", "json"],
            Some(txn),
            Duration::from_secs(15),
        ),
        "txn json",
    );
    let j = json(out.rsplit("requests (get, put, del):\n").next().unwrap());
    assert_eq!(j["succeeded"], true);
    assert_eq!(
        j["responses"][0]["Response"]["ResponseDeleteRange"]["deleted"],
        1
    );
    // Two puts of one key in a txn are refused.
    let txn = "\nput d 1\nput d 2\n\n\n";
    let e = err_text(
        &s.etcdctl_with(&["txn", "-i"], Some(txn), Duration::from_secs(15)),
        "dup txn",
    );
    assert!(
        e.contains("etcdserver: duplicate key given in txn request"),
        "{e}"
    );
}

#[test]
fn compaction_and_revision_errors() {
    let s = Server::start();
    for v in ["1", "2", "3", "4"] {
        ok_text(&s.etcdctl(&["put", "k", v]), "put");
    }
    // k at revisions 2..=5.
    assert_eq!(
        ok_text(&s.etcdctl(&["get", "k", "--rev=3"]), "rev 3"),
        "k\n2\n"
    );
    let e = err_text(&s.etcdctl(&["get", "k", "--rev=99"]), "future rev");
    assert!(
        e.contains("etcdserver: mvcc: required revision is a future revision"),
        "{e}"
    );
    assert_eq!(
        ok_text(&s.etcdctl(&["compaction", "4", "--physical"]), "compaction"),
        "compacted revision 4\n"
    );
    let e = err_text(&s.etcdctl(&["get", "k", "--rev=3"]), "compacted rev");
    assert!(
        e.contains("etcdserver: mvcc: required revision has been compacted"),
        "{e}"
    );
    assert_eq!(
        ok_text(&s.etcdctl(&["get", "k", "--rev=4"]), "rev 4"),
        "k\n3\n"
    );
    let e = err_text(&s.etcdctl(&["compaction", "3"]), "compact again");
    assert!(
        e.contains("etcdserver: mvcc: required revision has been compacted"),
        "{e}"
    );
    let e = err_text(&s.etcdctl(&["compaction", "100"]), "compact future");
    assert!(
        e.contains("etcdserver: mvcc: required revision is a future revision"),
        "{e}"
    );
    // A watch from before the compaction is canceled with the compact revision.
    let o = s.etcdctl_with(&["watch", "k", "--rev=2"], None, Duration::from_secs(5));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        all.contains("required revision has been compacted"),
        "{all}"
    );
}

#[test]
fn watch_history_and_live_events() {
    let s = Server::start();
    ok_text(&s.etcdctl(&["put", "w1", "a"]), "put");
    ok_text(&s.etcdctl(&["put", "w2", "b"]), "put");
    ok_text(&s.etcdctl(&["put", "w1", "c"]), "put");
    ok_text(&s.etcdctl(&["del", "w2"]), "del");
    // History replay: etcdctl watch runs until killed; bound it.
    let o = s.etcdctl_with(
        &["watch", "w", "--prefix", "--rev=1", "--prev-kv"],
        None,
        Duration::from_secs(3),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        out,
        "PUT\nw1\na\nPUT\nw2\nb\nPUT\nw1\na\nw1\nc\nDELETE\nw2\nb\nw2\n\n",
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Live: start a watcher, then write.
    let ep = s.endpoint.clone();
    let watcher = std::thread::spawn(move || {
        let mut cmd = std::process::Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={ep}"))
            .args(["watch", "live"]);
        common::run_bounded(cmd, None, Duration::from_secs(4))
    });
    std::thread::sleep(Duration::from_millis(1500));
    ok_text(&s.etcdctl(&["put", "live", "1"]), "put");
    ok_text(&s.etcdctl(&["put", "other", "1"]), "put");
    ok_text(&s.etcdctl(&["put", "live", "2"]), "put");
    let o = watcher.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "PUT\nlive\n1\nPUT\nlive\n2\n"
    );
    // JSON output carries the header and events.
    let o = s.etcdctl_with(
        &["watch", "w1", "--rev=1", "-w", "json"],
        None,
        Duration::from_secs(3),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let first = out.lines().next().unwrap_or_default();
    let j = json(first);
    assert_eq!(j["Events"][0]["kv"]["key"], b64("w1"));
    assert_eq!(j["Events"][0]["kv"]["mod_revision"], 2);
}

#[test]
fn lease_commands() {
    let s = Server::start();
    let out = ok_text(&s.etcdctl(&["lease", "grant", "100"]), "grant");
    // "lease 694d77aa9e1b7a0c granted with TTL(100s)"
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 5, "{out}");
    assert_eq!(
        (words[0], words[2], words[3], words[4]),
        ("lease", "granted", "with", "TTL(100s)")
    );
    let id = words[1].to_string();
    assert!(i64::from_str_radix(&id, 16).unwrap() > 0);
    ok_text(
        &s.etcdctl(&["put", "lk", "v", &format!("--lease={id}")]),
        "put --lease",
    );
    ok_text(
        &s.etcdctl(&["put", "lk2", "v", &format!("--lease={id}")]),
        "put --lease",
    );
    let out = ok_text(
        &s.etcdctl(&["lease", "timetolive", &id, "--keys"]),
        "timetolive",
    );
    let prefix = format!("lease {id} granted with TTL(100s), remaining(");
    assert!(out.starts_with(&prefix), "{out}");
    assert!(
        out.trim_end().ends_with("s), attached keys([lk lk2])"),
        "{out}"
    );
    let out = ok_text(&s.etcdctl(&["lease", "list"]), "list");
    assert_eq!(out, format!("found 1 leases\n{id}\n"));
    let out = ok_text(
        &s.etcdctl(&["lease", "keep-alive", "--once", &id]),
        "keep-alive",
    );
    assert_eq!(out, format!("lease {id} keepalived with TTL(100)\n"));
    let j = json(&ok_text(
        &s.etcdctl(&["lease", "timetolive", &id, "-w", "json"]),
        "ttl json",
    ));
    assert_eq!(j["granted-ttl"], 100);
    assert_eq!(
        ok_text(&s.etcdctl(&["lease", "revoke", &id]), "revoke"),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok_text(&s.etcdctl(&["get", "lk", "--prefix"]), "gone"), "");
    let out = ok_text(&s.etcdctl(&["lease", "timetolive", &id]), "ttl revoked");
    assert_eq!(out, format!("lease {id} already expired\n"));
    let e = err_text(&s.etcdctl(&["lease", "revoke", &id]), "revoke again");
    assert!(e.contains("etcdserver: requested lease not found"), "{e}");
    // A lease that expires takes its keys with it.
    let out = ok_text(&s.etcdctl(&["lease", "grant", "2"]), "grant 2");
    let short = out.split_whitespace().nth(1).unwrap().to_string();
    ok_text(
        &s.etcdctl(&["put", "ephemeral", "v", &format!("--lease={short}")]),
        "put",
    );
    assert_eq!(
        ok_text(&s.etcdctl(&["get", "ephemeral"]), "get"),
        "ephemeral\nv\n"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if ok_text(&s.etcdctl(&["get", "ephemeral"]), "get").is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lease with TTL 2 s still holds its key after 10 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        ok_text(&s.etcdctl(&["lease", "list"]), "list"),
        "found 0 leases\n"
    );
}

#[test]
fn maintenance_and_cluster() {
    let s = Server::start();
    ok_text(&s.etcdctl(&["put", "m", "1"]), "put");
    let out = ok_text(&s.etcdctl(&["member", "list"]), "member list");
    let f: Vec<&str> = out.trim_end().split(", ").collect();
    assert_eq!(f.len(), 6, "{out}");
    assert!(u64::from_str_radix(f[0], 16).unwrap() != 0);
    assert_eq!(
        &f[1..],
        [
            "started",
            "n0",
            &format!("http://127.0.0.1:{}", s.peer_port),
            &s.endpoint,
            "false"
        ]
    );
    let j = json(&ok_text(
        &s.etcdctl(&["member", "list", "-w", "json"]),
        "member list json",
    ));
    assert_eq!(j["members"].as_array().unwrap().len(), 1);
    assert_eq!(j["members"][0]["name"], "n0");
    assert_eq!(j["members"][0]["clientURLs"][0], s.endpoint.as_str());

    // etcdctl 3.4 prints the health line on stderr.
    let o = s.etcdctl(&["endpoint", "health"]);
    ok_text(&o, "health");
    let out = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(" is healthy: successfully committed proposal: took = "),
        "{out}"
    );
    let j = json(&ok_text(
        &s.etcdctl(&["endpoint", "status", "-w", "json"]),
        "status",
    ));
    let st = &j[0]["Status"];
    let version = st["version"].as_str().unwrap();
    assert!(
        version.starts_with("3."),
        "kube-apiserver needs a 3.x version, got {version}"
    );
    assert!(st["dbSize"].as_i64().unwrap() > 0);
    assert_eq!(st["leader"], st["header"]["member_id"]);
    // Boot: the member conf change, the leader's empty entry, the publish and the cluster
    // version (etcd 3.4's four entries); then the put.
    assert_eq!(st["raftIndex"].as_u64().unwrap(), 5);
    assert!(st["raftTerm"].as_u64().unwrap() >= 1);
    assert_eq!(st["header"]["revision"], 2);
    let out = ok_text(&s.etcdctl(&["endpoint", "status"]), "status table");
    assert!(out.contains(&format!(", {version}, ")), "{out}");

    let j = json(&ok_text(
        &s.etcdctl(&["endpoint", "hashkv", "-w", "json"]),
        "hashkv",
    ));
    let h1 = j[0]["HashKV"]["hash"].as_u64().unwrap();
    let j = json(&ok_text(
        &s.etcdctl(&["endpoint", "hashkv", "-w", "json"]),
        "hashkv",
    ));
    assert_eq!(
        j[0]["HashKV"]["hash"].as_u64().unwrap(),
        h1,
        "hashkv is stable without writes"
    );
    ok_text(&s.etcdctl(&["put", "m", "2"]), "put");
    let j = json(&ok_text(
        &s.etcdctl(&["endpoint", "hashkv", "-w", "json"]),
        "hashkv",
    ));
    assert_ne!(
        j[0]["HashKV"]["hash"].as_u64().unwrap(),
        h1,
        "hashkv changes with a write"
    );

    assert_eq!(ok_text(&s.etcdctl(&["alarm", "list"]), "alarm list"), "");
    let out = ok_text(&s.etcdctl(&["defrag"]), "defrag");
    assert_eq!(
        out,
        format!("Finished defragmenting etcd member[{}]\n", s.endpoint)
    );
    assert_eq!(ok_text(&s.etcdctl(&["get", "m"]), "after defrag"), "m\n2\n");

    let snap = s.scratch().join("snap.db");
    let out = ok_text(
        &s.etcdctl_with(
            &["snapshot", "save", snap.to_str().unwrap()],
            None,
            Duration::from_secs(30),
        ),
        "snapshot save",
    );
    assert_eq!(out, format!("Snapshot saved at {}\n", snap.display()));
    assert!(std::fs::metadata(&snap).unwrap().len() > 0);

    let out = ok_text(&s.etcdctl(&["version"]), "version");
    assert!(out.starts_with("etcdctl version: 3.4"), "{out}");
}

#[test]
fn lock_and_election() {
    let s = Server::start();
    let out = ok_text(
        &s.etcdctl_with(
            &["lock", "mylock", "echo", "held"],
            None,
            Duration::from_secs(15),
        ),
        "lock",
    );
    assert_eq!(out, "held\n");
    // The lock is released after the command: it can be taken again.
    let out = ok_text(
        &s.etcdctl_with(
            &["lock", "mylock", "echo", "again"],
            None,
            Duration::from_secs(15),
        ),
        "lock again",
    );
    assert_eq!(out, "again\n");
    assert_eq!(
        ok_text(&s.etcdctl(&["get", "mylock", "--prefix"]), "lock keys"),
        ""
    );

    // A campaign that wins prints the leader key and proposal, then holds until killed.
    let ep = s.endpoint.clone();
    let leader = std::thread::spawn(move || {
        let mut cmd = std::process::Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={ep}"))
            .args(["elect", "myelection", "p1"]);
        common::run_bounded(cmd, None, Duration::from_secs(4))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let o = s.etcdctl_with(
        &["elect", "--listen", "myelection"],
        None,
        Duration::from_secs(2),
    );
    let listened = String::from_utf8_lossy(&o.stdout).into_owned();
    let o = leader.join().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let l = lines(&out);
    assert_eq!(l.len(), 2, "{out} / {}", String::from_utf8_lossy(&o.stderr));
    assert!(l[0].starts_with("myelection/"), "{out}");
    assert_eq!(l[1], "p1");
    assert_eq!(lines(&listened), l, "listener sees the leader");
}
