//! The `ferrite` binary's command line and its HTTP routes, run as a user runs them.
//!
//! - Flag and environment errors: the message and exit status etcd 3.4 gives (2 for flag
//!   syntax, 1 for verification), `--version`, `--help`. Where Debian's `etcd` is installed
//!   the same command lines also run against it and the first stderr line and exit status
//!   are compared (otherwise that comparison is skipped with a note).
//! - A real server on free local ports: `/health`, `/version`, `/livez`, `/readyz`,
//!   `/metrics`, and the JSON gateway (KV, errors, lease, lock with contention, election,
//!   streaming watch) checked against the shapes captured from etcd 3.4's gateway.
//!
//! Run: `cargo test -p ferrite --test cli`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ferrite");

type Args = &'static [&'static str];
type Env = &'static [(&'static str, &'static str)];

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let dir = tempdir("cli");
    cmd.current_dir(&dir);
    let out = cmd.output().expect("run ferrite");
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("ferrite-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// The etcd 3.4 messages and statuses, asserted for ferrite, and compared with Debian's etcd
/// when it is installed.
#[test]
fn flag_errors_mirror_etcd() {
    // (args, env, exit status, first stderr line)
    let cases: &[(Args, Env, i32, &str)] = &[
        (&["--bogus"], &[], 2, "flag provided but not defined: -bogus"),
        (&["-bogus=1"], &[], 2, "flag provided but not defined: -bogus"),
        (&["--snapshot-count=abc"], &[], 2, "invalid value \"abc\" for flag -snapshot-count: parse error"),
        (&["-snapshot-count", "abc"], &[], 2, "invalid value \"abc\" for flag -snapshot-count: parse error"),
        (&["--name"], &[], 2, "flag needs an argument: -name"),
        (&["--client-cert-auth=maybe"], &[], 2, "invalid boolean value \"maybe\" for -client-cert-auth: parse error"),
        (&["--listen-client-urls", "foo"], &[], 2, "invalid value \"foo\" for flag -listen-client-urls: URL scheme must be http, https, unix, or unixs: foo"),
        (&["--initial-cluster-state", "bogus"], &[], 2, "invalid value \"bogus\" for flag -initial-cluster-state: invalid value"),
    ];
    let etcd = etcd_available();
    for (args, env, code, line) in cases {
        let out = run(args, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert_eq!(first_line(&err), *line, "{args:?}");
        assert!(
            err.contains("Usage:"),
            "{args:?}: usage follows a flag error"
        );
        assert!(out.stdout.is_empty());
        if etcd {
            let theirs = Command::new("etcd")
                .args(*args)
                .env_clear()
                .output()
                .unwrap();
            assert_eq!(theirs.status.code(), Some(*code), "etcd {args:?}");
            assert_eq!(first_line(&stderr(&theirs)), *line, "etcd {args:?}");
        }
    }
    if !etcd {
        eprintln!("note: etcd not installed; compared with the recorded etcd 3.4 messages only");
    }
}

fn etcd_available() -> bool {
    Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn verification_errors_exit_1() {
    let cases: &[(Args, Env, &str)] = &[
        (&["extra-arg"], &[], "'extra-arg' is not a valid flag"),
        (&["--force-new-cluster", "false"], &[], "'false' is not a valid flag"),
        (&[], &[("ETCD_SNAPSHOT_COUNT", "abc")], "invalid value \\\"abc\\\" for ETCD_SNAPSHOT_COUNT: parse error"),
        (&["--name", "b"], &[("ETCD_NAME", "a")], "conflicting environment variable \\\"ETCD_NAME\\\" is shadowed"),
        (&["--auto-compaction-mode", "foo"], &[], "unknown auto-compaction-mode \\\"foo\\\""),
        (&["--heartbeat-interval", "1000", "--election-timeout", "500"], &[], "--election-timeout[500ms] should be at least as 5 times as --heartbeat-interval[1000ms]"),
        (&["--listen-client-urls", "http://127.0.0.1:2379"], &[], "--advertise-client-urls is required when --listen-client-urls is set explicitly"),
        (&["--name", "x", "--initial-cluster", "y=http://localhost:2380"], &[], "couldn't find local name \\\"x\\\" in the initial cluster configuration"),
        (&["--listen-client-urls", "https://127.0.0.1:2379", "--advertise-client-urls", "https://127.0.0.1:2379"], &[], "TLS key/cert (--cert-file, --key-file) must be provided for client url https://127.0.0.1:2379 with HTTPS scheme"),
        (&["--client-cert-auth"], &[], "--client-cert-auth needs --trusted-ca-file"),
    ];
    for (args, env, needle) in cases {
        let out = run(args, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?} {env:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?} {env:?}: expected {needle:?} in {err}"
        );
        // One JSON line, zap-shaped.
        let v: serde_json::Value = serde_json::from_str(first_line(&err)).expect("zap JSON");
        assert_eq!(v["level"], "fatal");
        assert_eq!(v["msg"], "failed to verify flags");
    }
}

#[test]
fn version_and_help() {
    let out = run(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(first_line(&text), "etcd Version: 3.4.23");
    assert!(text.contains("ferrite Version: "));
    let out = run(&["-version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    for h in ["--help", "-h", "-help"] {
        let out = run(&[h], &[]);
        assert_eq!(out.status.code(), Some(0), "{h}");
        let text = String::from_utf8(out.stdout).unwrap();
        for flag in [
            "--listen-client-urls",
            "--initial-cluster",
            "--quota-backend-bytes",
            "--cores",
            "--log-level",
        ] {
            assert!(text.contains(flag), "{h}: {flag} missing from help");
        }
    }
}

// ---------------------------------------------------------------------------------------
// A running server.

struct Server {
    child: Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server(extra_args: &[&str]) -> Server {
    let dir = tempdir("srv");
    let (client, peer) = (free_port(), free_port());
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    let mut child = Command::new(BIN)
        .args([
            "--data-dir",
            dir.join("data").to_str().unwrap(),
            "--listen-client-urls",
            &c,
            "--advertise-client-urls",
            &c,
            "--listen-peer-urls",
            &p,
            "--initial-advertise-peer-urls",
            &p,
            "--initial-cluster",
            &format!("default={p}"),
            "--cores",
            "1",
        ])
        .args(extra_args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start ferrite");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            lines.push(line.clone());
            if line.contains("ready to serve client requests") {
                let _ = tx.send(Ok(lines.clone()));
            }
        }
        let _ = tx.send(Err(lines));
    });
    let server = Server {
        child,
        addr: format!("127.0.0.1:{client}"),
        dir,
    };
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(lines)) => {
            // The startup messages etcd prints, in zap's JSON shape.
            for msg in [
                "starting an etcd server",
                "published local member to cluster through raft",
                "enabled capabilities for version",
                "ready to serve client requests",
            ] {
                let line = lines
                    .iter()
                    .find(|l| l.contains(msg))
                    .unwrap_or_else(|| panic!("no {msg:?} in {lines:?}"));
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["msg"], msg);
                assert!(v["ts"].as_str().unwrap().ends_with('Z'));
                assert!(v["caller"].as_str().unwrap().contains(".rs:"));
            }
            server
        }
        Ok(Err(lines)) => panic!("ferrite exited before becoming ready: {lines:#?}"),
        Err(_) => panic!("ferrite did not become ready within 60 s"),
    }
}

struct HttpResponse {
    status: u16,
    headers: String,
    body: String,
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> HttpResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    HttpResponse {
        status,
        headers: head.to_string(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n..];
        s = s.strip_prefix("\r\n").unwrap_or(s);
    }
    out
}

fn post(addr: &str, path: &str, body: &str) -> serde_json::Value {
    let r = http(addr, "POST", path, body);
    assert_eq!(r.status, 200, "{path} {body}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
}

fn rev(v: &serde_json::Value) -> i64 {
    // A default (0) revision is omitted, as etcd omits defaults.
    v["header"]["revision"]
        .as_str()
        .map_or(0, |s| s.parse().unwrap())
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
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
fn http_routes_and_json_gateway() {
    let srv = start_server(&[]);
    let a = srv.addr.as_str();

    let r = http(a, "GET", "/health", "");
    assert_eq!((r.status, r.body.as_str()), (200, "{\"health\":\"true\"}"));
    let r = http(a, "POST", "/health", "");
    assert_eq!(r.status, 405);
    let r = http(a, "GET", "/version", "");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "{\"etcdserver\":\"3.4.23\",\"etcdcluster\":\"3.4.0\"}")
    );
    assert_eq!(http(a, "GET", "/livez", "").status, 200);
    assert_eq!(http(a, "GET", "/readyz", "").status, 200);

    // KV: shapes as etcd's gateway writes them.
    let base = rev(&post(
        a,
        "/v3/kv/range",
        &format!("{{\"key\":\"{}\"}}", b64("none")),
    ));
    let put = post(
        a,
        "/v3/kv/put",
        &format!(
            "{{\"key\":\"{}\",\"value\":\"{}\"}}",
            b64("foo"),
            b64("bar")
        ),
    );
    let r1 = rev(&put);
    assert_eq!(r1, base + 1);
    let hdr = put["header"].as_object().unwrap();
    assert_eq!(
        hdr.keys().collect::<Vec<_>>(),
        ["cluster_id", "member_id", "revision", "raft_term"]
    );
    assert!(
        hdr.values().all(|v| v.is_string()),
        "int64 as strings: {put}"
    );
    let range = post(
        a,
        "/v3/kv/range",
        &format!("{{\"key\":\"{}\"}}", b64("foo")),
    );
    assert_eq!(
        range["kvs"][0],
        serde_json::json!({"key": b64("foo"), "create_revision": r1.to_string(), "mod_revision": r1.to_string(), "version": "1", "value": b64("bar")})
    );
    assert_eq!(range["count"], "1");
    let put2 = post(
        a,
        "/v3/kv/put",
        &format!(
            "{{\"key\":\"{}\",\"value\":\"{}\",\"prev_kv\":true}}",
            b64("foo"),
            b64("baz")
        ),
    );
    assert_eq!(put2["prev_kv"]["value"], b64("bar"));
    let txn = post(a, "/v3/kv/txn", &format!(
        "{{\"compare\":[{{\"key\":\"{k}\",\"result\":\"EQUAL\",\"target\":\"VALUE\",\"value\":\"{v}\"}}],\"success\":[{{\"request_range\":{{\"key\":\"{k}\"}}}}]}}",
        k = b64("foo"), v = b64("baz")));
    assert_eq!(txn["succeeded"], true);
    assert_eq!(
        txn["responses"][0]["response_range"]["kvs"][0]["version"],
        "2"
    );
    let del = post(
        a,
        "/v3/kv/deleterange",
        &format!("{{\"key\":\"{}\",\"prev_kv\":true}}", b64("foo")),
    );
    assert_eq!(del["deleted"], "1");
    assert_eq!(del["prev_kvs"][0]["value"], b64("baz"));
    // etcd 3.4 answers the 3.3 gateway's `/v3beta/` paths as `/v3/` ones; `/v3alpha/` is gone.
    let beta = post(
        a,
        "/v3beta/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("beta"), b64("b")),
    );
    let range = post(
        a,
        "/v3beta/kv/range",
        &format!(r#"{{"key":"{}"}}"#, b64("beta")),
    );
    assert_eq!(rev(&range), rev(&beta));
    assert_eq!(range["kvs"][0]["value"], b64("b"));
    assert_eq!(http(a, "POST", "/v3alpha/kv/range", "{}").status, 404);

    // Errors: grpc-gateway's body and HTTP status.
    let r = http(
        a,
        "POST",
        "/v3/kv/range",
        &format!("{{\"key\":\"{}\",\"revision\":100000}}", b64("foo")),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.body, "{\"error\":\"etcdserver: mvcc: required revision is a future revision\",\"message\":\"etcdserver: mvcc: required revision is a future revision\",\"code\":11}");
    let r = http(a, "POST", "/v3/kv/range", "{}");
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("\"etcdserver: key is not provided\"") && r.body.ends_with("\"code\":3}"),
        "{}",
        r.body
    );
    let r = http(a, "POST", "/v3/kv/range", "{bad");
    assert_eq!(r.status, 400);
    assert!(r.body.ends_with("\"code\":3}"), "{}", r.body);
    assert_eq!(http(a, "GET", "/v3/kv/range", "").status, 405);
    assert_eq!(http(a, "POST", "/v3/kv/nope", "{}").status, 404);
    let big = "A".repeat(3 * 1024 * 1024);
    let r = http(
        a,
        "POST",
        "/v3/kv/put",
        &format!("{{\"key\":\"{}\",\"value\":\"{big}\"}}", b64("big")),
    );
    assert_eq!(r.status, 400, "{}", &r.body[..r.body.len().min(200)]);
    assert!(r.body.contains("etcdserver: request is too large"));

    // Lease + lock: the key is name/<lease hex>; a second holder waits for the first.
    let lease = post(a, "/v3/lease/grant", "{\"TTL\":60,\"ID\":99}");
    assert_eq!(
        (lease["ID"].as_str(), lease["TTL"].as_str()),
        (Some("99"), Some("60"))
    );
    let lease2 = post(a, "/v3/lease/grant", "{\"TTL\":60,\"ID\":100}");
    assert_eq!(lease2["ID"], "100");
    let lock = post(
        a,
        "/v3/lock/lock",
        &format!("{{\"name\":\"{}\",\"lease\":99}}", b64("mylock")),
    );
    assert_eq!(lock["key"], b64("mylock/63"));
    let addr = a.to_string();
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let v = post(
            &addr,
            "/v3/lock/lock",
            &format!("{{\"name\":\"{}\",\"lease\":100}}", b64("mylock")),
        );
        (v, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !waiter.is_finished(),
        "second Lock must wait for the first holder"
    );
    post(
        a,
        "/v3/lock/unlock",
        &format!("{{\"key\":\"{}\"}}", b64("mylock/63")),
    );
    let (second, waited) = waiter.join().unwrap();
    assert_eq!(second["key"], b64("mylock/64"));
    assert!(waited >= Duration::from_millis(400));

    // Election.
    let c = post(
        a,
        "/v3/election/campaign",
        &format!(
            "{{\"name\":\"{}\",\"lease\":99,\"value\":\"{}\"}}",
            b64("el"),
            b64("v1")
        ),
    );
    assert_eq!(c["leader"]["key"], b64("el/63"));
    assert_eq!(c["leader"]["lease"], "99");
    let l = post(
        a,
        "/v3/election/leader",
        &format!("{{\"name\":\"{}\"}}", b64("el")),
    );
    assert_eq!(l["kv"]["value"], b64("v1"));
    let leader = c["leader"].to_string();
    post(
        a,
        "/v3/election/proclaim",
        &format!("{{\"leader\":{leader},\"value\":\"{}\"}}", b64("v2")),
    );
    let l = post(
        a,
        "/v3/election/leader",
        &format!("{{\"name\":\"{}\"}}", b64("el")),
    );
    assert_eq!(l["kv"]["value"], b64("v2"));
    post(
        a,
        "/v3/election/resign",
        &format!("{{\"leader\":{leader}}}"),
    );
    let r = http(
        a,
        "POST",
        "/v3/election/leader",
        &format!("{{\"name\":\"{}\"}}", b64("el")),
    );
    assert_eq!(r.status, 500);
    assert!(
        r.body.contains("\"election: no leader\"") && r.body.ends_with("\"code\":2}"),
        "{}",
        r.body
    );
    let r = http(
        a,
        "POST",
        "/v3/election/proclaim",
        &format!("{{\"leader\":{leader},\"value\":\"{}\"}}", b64("v3")),
    );
    assert!(r.body.contains("election: not leader"), "{}", r.body);

    // Observe: the current leader, then each value it proclaims.
    let c = post(
        a,
        "/v3/election/campaign",
        &format!(
            "{{\"name\":\"{}\",\"lease\":100,\"value\":\"{}\"}}",
            b64("ob"),
            b64("o1")
        ),
    );
    let mut o = TcpStream::connect(a).unwrap();
    o.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let body = format!("{{\"name\":\"{}\"}}", b64("ob"));
    write!(
        o,
        "POST /v3/election/observe HTTP/1.1\r\nHost: {a}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = String::new();
    read_stream_until(&mut o, &mut seen, &b64("o1"));
    post(
        a,
        "/v3/election/proclaim",
        &format!("{{\"leader\":{},\"value\":\"{}\"}}", c["leader"], b64("o2")),
    );
    read_stream_until(&mut o, &mut seen, &b64("o2"));
    assert!(
        seen.lines()
            .filter(|l| l.starts_with("{\"result\":"))
            .count()
            >= 2,
        "{seen}"
    );
    drop(o);

    // Watch: newline-delimited {"result":...} objects.
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let body = format!(
        "{{\"create_request\":{{\"key\":\"{}\",\"prev_kv\":true}}}}",
        b64("w")
    );
    write!(
        s,
        "POST /v3/watch HTTP/1.1\r\nHost: {a}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut got = String::new();
    let mut read_until = |got: &mut String, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = [0u8; 4096];
        while !got.contains(needle) && Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(_) => {}
            }
        }
        assert!(got.contains(needle), "{needle:?} not in {got}");
    };
    read_until(&mut got, "\"created\":true");
    post(
        a,
        "/v3/kv/put",
        &format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64("w"), b64("1")),
    );
    post(
        a,
        "/v3/kv/put",
        &format!("{{\"key\":\"{}\",\"value\":\"{}\"}}", b64("w"), b64("2")),
    );
    post(
        a,
        "/v3/kv/deleterange",
        &format!("{{\"key\":\"{}\"}}", b64("w")),
    );
    read_until(&mut got, "\"type\":\"DELETE\"");
    let results: Vec<serde_json::Value> = got
        .lines()
        .filter(|l| l.starts_with("{\"result\":"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let events: Vec<&serde_json::Value> = results
        .iter()
        .flat_map(|r| r["result"]["events"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(events.len(), 3, "{got}");
    assert_eq!(events[0]["kv"]["value"], b64("1"));
    assert_eq!(events[1]["prev_kv"]["value"], b64("1"));
    assert_eq!(events[2]["type"], "DELETE");

    // Metrics: etcd's names, counters moved by what happened above.
    let m = http(a, "GET", "/metrics", "");
    assert_eq!(m.status, 200);
    assert!(m
        .headers
        .to_ascii_lowercase()
        .contains("text/plain; version=0.0.4"));
    for name in [
        "# TYPE etcd_server_has_leader gauge",
        "# TYPE etcd_server_proposals_committed_total gauge",
        "etcd_server_health_success 1",
        "etcd_server_version{server_version=\"3.4.23\"} 1",
        "# TYPE etcd_disk_wal_fsync_duration_seconds histogram",
        "# TYPE grpc_server_handled_total counter",
        "process_resident_memory_bytes ",
    ] {
        assert!(m.body.contains(name), "{name} not in /metrics");
    }
}

/// etcd 3.4's /health with an alarm: NOSPACE makes the member unhealthy (503,
/// `{"health":"false"}`) unless `?exclude=NOSPACE`.
#[test]
fn health_reports_nospace_alarm() {
    let srv = start_server(&["--quota-backend-bytes", "200000"]);
    let a = srv.addr.as_str();
    let value = b64(&"x".repeat(60_000));
    let mut refused = None;
    for i in 0..50 {
        let r = http(
            a,
            "POST",
            "/v3/kv/put",
            &format!(
                "{{\"key\":\"{}\",\"value\":\"{value}\"}}",
                b64(&format!("k{i}"))
            ),
        );
        if r.status != 200 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the quota was never hit");
    assert!(
        r.body.contains("etcdserver: mvcc: database space exceeded"),
        "{}",
        r.body
    );
    let h = http(a, "GET", "/health", "");
    assert_eq!(
        (h.status, h.body.as_str()),
        (503, "{\"health\":\"false\"}\n")
    );
    let h = http(a, "GET", "/health?exclude=NOSPACE", "");
    assert_eq!((h.status, h.body.as_str()), (200, "{\"health\":\"true\"}"));
    let alarms = post(a, "/v3/maintenance/alarm", "{}");
    assert_eq!(alarms["alarms"][0]["alarm"], "NOSPACE");
}

fn read_stream_until(s: &mut TcpStream, got: &mut String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while !got.contains(needle) && Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    assert!(got.contains(needle), "{needle:?} not in {got}");
}
