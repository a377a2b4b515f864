//! Differential tests against Debian's etcd 3.4: the same auth command sequences go to a real
//! etcd through etcdctl and to `AuthStore`, and every answer (success output or exact error
//! text) must match; JWT tokens must be accepted in both directions.
//!
//! Needs `etcd` and `etcdctl` on PATH (scripts/test.sh installs them). Without them the tests
//! print a notice and pass, unless FERRITE_REQUIRE_ETCD=1. FERRITE_AUTH_DIFF_OPS sets the
//! number of random operations (default 120); FERRITE_AUTH_DIFF_SEED the seed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ferrite_auth::{
    hash_password, prefix_range_end, verify_password, AuthCommand as C, AuthError, AuthInfo,
    AuthStore, PermType, Permission, TokenCheck, TokenProvider,
};

struct Etcd {
    child: Child,
    client_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn have_etcd() -> bool {
    let ok = Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        && Command::new("etcdctl")
            .arg("version")
            .env("ETCDCTL_API", "3")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("FERRITE_REQUIRE_ETCD").is_err(),
            "FERRITE_REQUIRE_ETCD is set but etcd/etcdctl are missing"
        );
        eprintln!("etcd or etcdctl not found: differential auth test skipped");
    }
    ok
}

impl Etcd {
    fn start(extra: &[String]) -> Etcd {
        Self::start_with("http", extra)
    }

    /// `scheme` "https" serves the client port with the TLS flags in `extra`; readiness is
    /// then only awaited as an open port.
    fn start_with(scheme: &str, extra: &[String]) -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let client_port = free_port();
        let peer_port = free_port();
        let client = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "diff", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &format!("diff={peer}"),
                "--bcrypt-cost",
                "4",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        let etcd = Etcd {
            child,
            client_port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while (scheme == "http" && etcd.ctl(&["endpoint", "health"], None, "").is_err())
            || (scheme == "https" && TcpStream::connect(("127.0.0.1", client_port)).is_err())
        {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    /// Runs etcdctl; Ok(stdout) or Err(the text after "Error: ").
    fn ctl(&self, args: &[&str], user: Option<&str>, stdin: &str) -> Result<String, String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=127.0.0.1:{}", self.client_port))
            .arg("--dial-timeout=5s")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(u) = user {
            cmd.arg(format!("--user={u}"));
        }
        let mut child = cmd.spawn().expect("spawn etcdctl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let line = err
                .lines()
                .rev()
                .find(|l| l.starts_with("Error: "))
                .unwrap_or(err.trim());
            Err(line.trim_start_matches("Error: ").to_string())
        }
    }

    /// POST to the JSON gateway (HTTP/1.0: no chunking), returns the body.
    fn http_post(&self, path: &str, body: &str, token: Option<&str>) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.client_port)).unwrap();
        let auth = token
            .map(|t| format!("Authorization: {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or(resp)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Deterministic xorshift so a failing run replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next() % xs.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The ferrite side: the store plus what etcdctl does around it (authenticate first).
struct Model {
    store: AuthStore,
    passwords: HashMap<String, String>,
}

impl Model {
    /// etcdctl --user=name:pw: Authenticate first when auth is enabled.
    fn login(&self, user: &str, pw: &str) -> Result<Option<AuthInfo>, String> {
        if !self.store.is_enabled() {
            return Ok(None);
        }
        let (hash, rev) = self.store.password_hash_for(user).map_err(|e| match e {
            AuthError::NoPasswordUser => format!("rpc error: code = Unknown desc = {e}"),
            e => e.to_string(),
        })?;
        if !verify_password(pw, &hash) {
            return Err(AuthError::AuthFailed.to_string());
        }
        Ok(Some(AuthInfo {
            username: user.to_string(),
            revision: rev,
        }))
    }

    fn apply(&mut self, caller: Option<&AuthInfo>, cmd: C) -> Result<(), String> {
        self.store
            .apply(caller, &cmd)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone)]
enum Range {
    Key,
    End(String),
    Prefix,
    FromKey,
}

impl Range {
    fn args(&self, key: &str) -> Vec<String> {
        match self {
            Range::Key => vec![key.into()],
            Range::End(e) => vec![key.into(), e.clone()],
            Range::Prefix => vec![key.into(), "--prefix".into()],
            Range::FromKey => vec![key.into(), "--from-key".into()],
        }
    }
    fn range_end(&self, key: &str) -> Vec<u8> {
        match self {
            Range::Key => vec![],
            Range::End(e) => e.as_bytes().to_vec(),
            Range::Prefix => prefix_range_end(key.as_bytes()),
            Range::FromKey => vec![0],
        }
    }
}

const USERS: &[&str] = &["root", "u1", "u2"];
const ROLES: &[&str] = &["root", "r1", "r2"];
const KEYS: &[&str] = &["a", "ab", "b", "ba", "c"];

fn random_range(rng: &mut Rng, key: &str) -> Range {
    match rng.next() % 4 {
        0 => Range::Key,
        1 => {
            // A range end after the key (etcd refuses others client-side for get).
            let later: Vec<&&str> = KEYS.iter().filter(|k| **k > key).collect();
            if later.is_empty() {
                Range::FromKey
            } else {
                Range::End(rng.pick(&later).to_string())
            }
        }
        2 => Range::Prefix,
        _ => Range::FromKey,
    }
}

/// The model's answer to an operation: Ok(Some(output to compare)), Ok(None) for success
/// without output, or Err(etcd's error text).
type Expected = Box<dyn Fn(&mut Model) -> Result<Option<String>, String>>;

/// One random operation: runs it on etcd and on the model, asserts equal answers.
fn step(etcd: &Etcd, m: &mut Model, rng: &mut Rng, i: usize, stats: &mut HashMap<String, usize>) {
    let root_pw = m
        .passwords
        .get("root")
        .cloned()
        .unwrap_or_else(|| "rootpw".into());
    let as_root = format!("root:{root_pw}");
    let kind = rng.next() % 100;
    let (args, user, stdin, expected): (Vec<String>, String, String, Expected);
    macro_rules! admin {
        ($m:ident, $cmd:expr) => {{
            let caller = $m.login("root", &root_pw)?;
            $m.apply(caller.as_ref(), $cmd).map(|_| None::<String>)
        }};
    }
    match kind {
        0..=11 => {
            let name = rng.pick(USERS).to_string();
            let no_password = rng.chance(20) && name != "root";
            let pw = format!("pw-{name}");
            args = if no_password {
                vec![
                    "user".into(),
                    "add".into(),
                    name.clone(),
                    "--no-password".into(),
                ]
            } else {
                vec!["user".into(), "add".into(), format!("{name}:{pw}")]
            };
            user = as_root.clone();
            stdin = String::new();
            expected = Box::new(move |m: &mut Model| {
                let hash = if no_password {
                    vec![]
                } else {
                    hash_password(&pw, 4)
                };
                let r = admin!(
                    m,
                    C::UserAdd {
                        name: name.clone(),
                        password_hash: hash,
                        no_password
                    }
                );
                if r.is_ok() && !no_password {
                    m.passwords.insert(name.clone(), pw.clone());
                }
                r
            });
        }
        12..=15 => {
            let name = rng.pick(USERS).to_string();
            args = vec!["user".into(), "delete".into(), name.clone()];
            user = as_root.clone();
            stdin = String::new();
            expected = Box::new(move |m: &mut Model| {
                let r = admin!(m, C::UserDelete { name: name.clone() });
                if r.is_ok() {
                    m.passwords.remove(&name);
                }
                r
            });
        }
        16..=19 => {
            let name = rng.pick(USERS).to_string();
            let pw = format!("pw2-{name}-{i}");
            args = vec![
                "user".into(),
                "passwd".into(),
                name.clone(),
                "--interactive=false".into(),
            ];
            user = as_root.clone();
            stdin = format!("{pw}\n");
            expected = Box::new(move |m: &mut Model| {
                let r = admin!(
                    m,
                    C::UserChangePassword {
                        name: name.clone(),
                        password_hash: hash_password(&pw, 4)
                    }
                );
                if r.is_ok() {
                    m.passwords.insert(name.clone(), pw.clone());
                }
                r
            });
        }
        20..=31 => {
            let (u, r) = (rng.pick(USERS).to_string(), rng.pick(ROLES).to_string());
            let grant = rng.chance(70);
            args = vec![
                "user".into(),
                if grant { "grant-role" } else { "revoke-role" }.into(),
                u.clone(),
                r.clone(),
            ];
            user = as_root.clone();
            stdin = String::new();
            expected = Box::new(move |m: &mut Model| {
                if grant {
                    admin!(
                        m,
                        C::UserGrantRole {
                            user: u.clone(),
                            role: r.clone()
                        }
                    )
                } else {
                    admin!(
                        m,
                        C::UserRevokeRole {
                            name: u.clone(),
                            role: r.clone()
                        }
                    )
                }
            });
        }
        32..=39 => {
            let r = rng.pick(ROLES).to_string();
            let add = rng.chance(75);
            args = vec![
                "role".into(),
                if add { "add" } else { "delete" }.into(),
                r.clone(),
            ];
            user = as_root.clone();
            stdin = String::new();
            expected = Box::new(move |m: &mut Model| {
                if add {
                    admin!(m, C::RoleAdd { name: r.clone() })
                } else {
                    admin!(m, C::RoleDelete { role: r.clone() })
                }
            });
        }
        40..=57 => {
            let r = rng.pick(ROLES).to_string();
            let key = rng.pick(KEYS).to_string();
            let range = random_range(rng, &key);
            let grant = rng.chance(75);
            let t = *rng.pick(&[PermType::Read, PermType::Write, PermType::ReadWrite]);
            let tname = match t {
                PermType::Read => "read",
                PermType::Write => "write",
                PermType::ReadWrite => "readwrite",
            };
            let mut a: Vec<String> = if grant {
                vec![
                    "role".into(),
                    "grant-permission".into(),
                    r.clone(),
                    tname.into(),
                ]
            } else {
                vec!["role".into(), "revoke-permission".into(), r.clone()]
            };
            a.extend(range.args(&key));
            args = a;
            user = as_root.clone();
            stdin = String::new();
            let range_end = range.range_end(&key);
            expected = Box::new(move |m: &mut Model| {
                if grant {
                    let perm = Permission {
                        perm_type: t,
                        key: key.as_bytes().to_vec(),
                        range_end: range_end.clone(),
                    };
                    admin!(
                        m,
                        C::RoleGrantPermission {
                            name: r.clone(),
                            perm
                        }
                    )
                } else {
                    admin!(
                        m,
                        C::RoleRevokePermission {
                            role: r.clone(),
                            key: key.as_bytes().to_vec(),
                            range_end: range_end.clone()
                        }
                    )
                }
            });
        }
        58..=63 => {
            let enable = rng.chance(60);
            args = vec![
                "auth".into(),
                if enable { "enable" } else { "disable" }.into(),
            ];
            user = as_root.clone();
            stdin = String::new();
            expected = Box::new(move |m: &mut Model| {
                if !enable {
                    return admin!(m, C::AuthDisable);
                }
                // etcdctl's loop: on "root user does not have root role", add the role, grant
                // it, and try again.
                loop {
                    match admin!(m, C::AuthEnable) {
                        Err(e) if e == AuthError::RootRoleNotExist.to_string() => {
                            admin!(
                                m,
                                C::RoleAdd {
                                    name: "root".into()
                                }
                            )?;
                            admin!(
                                m,
                                C::UserGrantRole {
                                    user: "root".into(),
                                    role: "root".into()
                                }
                            )?;
                        }
                        other => return other,
                    }
                }
            });
        }
        64..=71 => {
            // Reads of the auth store, as root.
            let which = rng.next() % 4;
            let name = if which < 2 {
                rng.pick(USERS).to_string()
            } else {
                rng.pick(ROLES).to_string()
            };
            args = match which {
                0 => vec![
                    "user".into(),
                    "get".into(),
                    name.clone(),
                    "-w".into(),
                    "json".into(),
                ],
                1 => vec!["user".into(), "list".into(), "-w".into(), "json".into()],
                2 => vec![
                    "role".into(),
                    "get".into(),
                    name.clone(),
                    "-w".into(),
                    "json".into(),
                ],
                _ => vec!["role".into(), "list".into(), "-w".into(), "json".into()],
            };
            user = as_root.clone();
            stdin = String::new();
            expected = Box::new(move |m: &mut Model| {
                let caller = m.login("root", &root_pw)?;
                let st = &m.store;
                let c = caller.as_ref();
                let out = match which {
                    0 => {
                        st.check_user_get(c, &name).map_err(|e| e.to_string())?;
                        format!("{:?}", st.user_get(&name).map_err(|e| e.to_string())?)
                    }
                    1 => {
                        st.is_admin_permitted(c).map_err(|e| e.to_string())?;
                        format!("{:?}", st.user_list())
                    }
                    2 => {
                        st.check_role_get(c, &name).map_err(|e| e.to_string())?;
                        let perms = st.role_get(&name).map_err(|e| e.to_string())?;
                        format!(
                            "{:?}",
                            perms
                                .iter()
                                .map(|p| (p.perm_type as i64, p.key.clone(), p.range_end.clone()))
                                .collect::<Vec<_>>()
                        )
                    }
                    _ => {
                        st.is_admin_permitted(c).map_err(|e| e.to_string())?;
                        format!("{:?}", st.role_list())
                    }
                };
                Ok(Some(out))
            });
        }
        _ => {
            // Key access as a non-root user (sometimes with a wrong password).
            let u = rng.pick(&["u1", "u2"]).to_string();
            let key = rng.pick(KEYS).to_string();
            let wrong = rng.chance(10);
            let pw = if wrong {
                "wrong".to_string()
            } else {
                m.passwords
                    .get(&u)
                    .cloned()
                    .unwrap_or_else(|| format!("pw-{u}"))
            };
            let op = rng.next() % 3;
            let range = if op == 1 {
                Range::Key
            } else {
                random_range(rng, &key)
            };
            let mut a: Vec<String> = match op {
                0 => vec!["get".into()],
                1 => vec!["put".into()],
                _ => vec!["del".into()],
            };
            a.extend(range.args(&key));
            if op == 1 {
                a.push("v".into());
            }
            args = a;
            user = format!("{u}:{pw}");
            stdin = String::new();
            let range_end = range.range_end(&key);
            expected = Box::new(move |m: &mut Model| {
                let caller = m.login(&u, &pw)?;
                let st = &m.store;
                let c = caller.as_ref();
                let r = match op {
                    0 => st.is_range_permitted(c, key.as_bytes(), &range_end),
                    1 => st.is_put_permitted(c, key.as_bytes()),
                    _ => st.is_delete_range_permitted(c, key.as_bytes(), &range_end),
                };
                r.map(|_| None).map_err(|e| e.to_string())
            });
        }
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let got = etcd.ctl(&arg_refs, Some(&user), &stdin);
    let want = expected(m);
    let context = format!("op #{i}: etcdctl {} --user={user}", args.join(" "));
    let outcome = match &got {
        Ok(_) => "ok".to_string(),
        Err(e) => e.clone(),
    };
    *stats
        .entry(format!(
            "{} {} -> {outcome}",
            if m.store.is_enabled() {
                "enabled"
            } else {
                "disabled"
            },
            args[0]
        ))
        .or_default() += 1;
    match (&got, &want) {
        (Ok(out), Ok(Some(model_out))) => {
            assert_eq!(&normalize_json(&args, out), model_out, "{context}")
        }
        (Ok(_), Ok(None)) => {}
        (Err(e), Err(w)) => assert_eq!(e, w, "{context}"),
        _ => panic!("{context}: etcd answered {got:?}, ferrite {want:?}"),
    }
}

/// etcdctl -w json output, reduced to the model's Debug form.
fn normalize_json(args: &[String], out: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad json {out:?}: {e}"));
    let strings = |field: &str| -> Vec<String> {
        v.get(field)
            .and_then(|a| a.as_array())
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let b64 = |x: Option<&serde_json::Value>| -> Vec<u8> {
        x.and_then(|s| s.as_str())
            .map(|s| base64::engine::general_purpose::STANDARD.decode(s).unwrap())
            .unwrap_or_default()
    };
    match (args[0].as_str(), args[1].as_str()) {
        ("user", "get") | ("role", "list") => format!("{:?}", strings("roles")),
        ("user", "list") => format!("{:?}", strings("users")),
        ("role", "get") => {
            let perms: Vec<(i64, Vec<u8>, Vec<u8>)> = v
                .get("perm")
                .and_then(|a| a.as_array())
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            (
                                p.get("permType").and_then(|t| t.as_i64()).unwrap_or(0),
                                b64(p.get("key")),
                                b64(p.get("range_end")),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("{perms:?}")
        }
        _ => unreachable!(),
    }
}

#[test]
fn random_auth_sequences_match_etcd() {
    if !have_etcd() {
        return;
    }
    let ops: usize = std::env::var("FERRITE_AUTH_DIFF_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let seed: u64 = std::env::var("FERRITE_AUTH_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_a117);
    eprintln!("differential auth test: {ops} ops, FERRITE_AUTH_DIFF_SEED={seed}");
    // JWT tokens, so that etcd's auth revision can be read out of them as we go.
    let keys = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let opts = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=5m",
        keys.join("rsa-test-pub.pem").display(),
        keys.join("rsa-test-priv.pem").display()
    );
    let mut verifier = TokenProvider::from_flags(&opts, Duration::from_secs(300)).unwrap();
    let etcd = Etcd::start(&["--auth-token".into(), opts]);
    let mut m = Model {
        store: AuthStore::new(),
        passwords: HashMap::new(),
    };
    let mut rng = Rng(seed | 1);
    let mut stats = HashMap::new();
    let mut revisions_compared = 0;
    for i in 0..ops {
        step(&etcd, &mut m, &mut rng, i, &mut stats);
        // With auth on, root's token says which auth revision etcd is at.
        let root_pw = m.passwords.get("root").cloned();
        if let (true, Some(pw)) = (m.store.is_enabled(), root_pw) {
            let body = etcd.http_post(
                "/v3/auth/authenticate",
                &format!(r#"{{"name":"root","password":"{pw}"}}"#),
                None,
            );
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let token = v["token"]
                .as_str()
                .unwrap_or_else(|| panic!("op #{i}: {body}"));
            match verifier.info(token, 0, 0, now_ms()) {
                TokenCheck::Valid(info) => {
                    assert_eq!(
                        info.revision,
                        m.store.revision(),
                        "auth revision after op #{i}"
                    );
                    revisions_compared += 1;
                }
                other => panic!("etcd's token refused: {other:?}"),
            }
        }
    }
    eprintln!("auth revision compared with etcd's after {revisions_compared} ops");
    eprintln!(
        "final auth revision {} enabled {}",
        m.store.revision(),
        m.store.is_enabled()
    );
    let mut stats: Vec<_> = stats.into_iter().collect();
    stats.sort();
    for (k, n) in stats {
        eprintln!("{n:5} {k}");
    }
}

/// A scripted lifecycle that always reaches enabled auth with a restricted user, then checks
/// the auth revision etcd puts into its JWTs against ours, and that tokens cross both ways.
#[test]
fn jwt_tokens_and_auth_revision_match_etcd() {
    if !have_etcd() {
        return;
    }
    let keys = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let opts = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=5m",
        keys.join("rsa-test-pub.pem").display(),
        keys.join("rsa-test-priv.pem").display()
    );
    let etcd = Etcd::start(&["--auth-token".into(), opts.clone()]);
    let mut m = Model {
        store: AuthStore::new(),
        passwords: HashMap::new(),
    };
    let script: Vec<(Vec<&str>, C)> = vec![
        (
            vec!["user", "add", "root:rootpw"],
            C::UserAdd {
                name: "root".into(),
                password_hash: hash_password("rootpw", 4),
                no_password: false,
            },
        ),
        (
            vec!["user", "add", "u1:pw1"],
            C::UserAdd {
                name: "u1".into(),
                password_hash: hash_password("pw1", 4),
                no_password: false,
            },
        ),
        (vec!["role", "add", "r1"], C::RoleAdd { name: "r1".into() }),
        (
            vec![
                "role",
                "grant-permission",
                "r1",
                "readwrite",
                "/p/",
                "--prefix",
            ],
            C::RoleGrantPermission {
                name: "r1".into(),
                perm: Permission {
                    perm_type: PermType::ReadWrite,
                    key: b"/p/".to_vec(),
                    range_end: prefix_range_end(b"/p/"),
                },
            },
        ),
        (
            vec!["user", "grant-role", "u1", "r1"],
            C::UserGrantRole {
                user: "u1".into(),
                role: "r1".into(),
            },
        ),
        (
            vec!["user", "grant-role", "root", "root"],
            C::UserGrantRole {
                user: "root".into(),
                role: "root".into(),
            },
        ),
        (vec!["auth", "enable"], C::AuthEnable),
    ];
    for (args, cmd) in script {
        etcd.ctl(&args, Some("root:rootpw"), "")
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        m.store.apply_unchecked(&cmd).unwrap();
    }
    m.passwords.insert("u1".into(), "pw1".into());
    let body = etcd.http_post(
        "/v3/auth/authenticate",
        r#"{"name":"u1","password":"pw1"}"#,
        None,
    );
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
    let etcd_token = v["token"].as_str().unwrap().to_string();
    let mut ours = TokenProvider::from_flags(&opts, Duration::from_secs(300)).unwrap();
    let info = match ours.info(&etcd_token, 0, 0, now_ms()) {
        TokenCheck::Valid(i) => i,
        other => panic!("etcd's JWT refused: {other:?}"),
    };
    assert_eq!(info.username, "u1");
    assert_eq!(
        info.revision,
        m.store.revision(),
        "etcd's auth revision differs from ours"
    );
    // Our token works on etcd: a put under the granted prefix, and a refused one outside it.
    let token = ours
        .assign("u1", m.store.revision(), "", 0, now_ms())
        .unwrap();
    let ok = etcd.http_post(
        "/v3/kv/put",
        r#"{"key":"L3Avaw==","value":"dg=="}"#,
        Some(&token),
    );
    assert!(ok.contains("\"header\""), "put with our token: {ok}");
    let denied = etcd.http_post(
        "/v3/kv/put",
        r#"{"key":"eA==","value":"dg=="}"#,
        Some(&token),
    );
    assert!(denied.contains("permission denied"), "{denied}");
    assert_eq!(
        m.store.is_put_permitted(Some(&info), b"x"),
        Err(AuthError::PermissionDenied)
    );
    // A change bumps the revision on both sides; the old token is now stale.
    etcd.ctl(&["role", "add", "r2"], Some("root:rootpw"), "")
        .unwrap();
    let root = AuthInfo {
        username: "root".into(),
        revision: m.store.revision(),
    };
    m.store
        .apply(Some(&root), &C::RoleAdd { name: "r2".into() })
        .unwrap();
    let stale = etcd.http_post(
        "/v3/kv/put",
        r#"{"key":"L3Avaw==","value":"dg=="}"#,
        Some(&token),
    );
    assert!(
        stale.contains(&AuthError::AuthOldRevision.to_string()),
        "{stale}"
    );
    assert_eq!(
        m.store.is_put_permitted(Some(&info), b"/p/k"),
        Err(AuthError::AuthOldRevision)
    );
}

/// TLS interop with Go: certificates from `tls::auto_tls` and rcgen served by etcd, reached
/// with ferrite's rustls client configuration (client certificate, CA verification), and Go's
/// etcdctl verifying an --auto-tls certificate.
#[test]
fn tls_interop_with_etcd() {
    use ferrite_auth::rustls::{ClientConnection, StreamOwned};
    use ferrite_auth::tls::{auto_tls, client_config, ClientTlsOptions, AUTO_TLS_VALIDITY};
    if !have_etcd() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The --auto-tls certificate is self-signed: it serves as etcd's server certificate, as
    // the CA both sides trust, and as the client certificate.
    let files = auto_tls(
        dir.path(),
        "client",
        &["127.0.0.1".into()],
        AUTO_TLS_VALIDITY,
    )
    .unwrap();
    let etcd = Etcd::start_with(
        "https",
        &[
            "--cert-file".into(),
            files.cert_file.display().to_string(),
            "--key-file".into(),
            files.key_file.display().to_string(),
            "--trusted-ca-file".into(),
            files.cert_file.display().to_string(),
            "--client-cert-auth".into(),
        ],
    );
    let cfg = client_config(&ClientTlsOptions {
        cert_file: Some(files.cert_file.clone()),
        key_file: Some(files.key_file.clone()),
        trusted_ca_file: Some(files.cert_file.clone()),
        ..Default::default()
    })
    .unwrap();
    // etcd's HTTP mux also answers /health on the client port (ALPN h2 offered; Go accepts
    // HTTP/1.1 when ALPN is not negotiated, so ask without ALPN).
    let mut cfg = (*cfg).clone();
    cfg.alpn_protocols.clear();
    let cfg = std::sync::Arc::new(cfg);
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        let attempt = (|| -> std::io::Result<String> {
            let sock = TcpStream::connect(("127.0.0.1", etcd.client_port))?;
            sock.set_read_timeout(Some(Duration::from_secs(5)))?;
            let name = ferrite_auth::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let conn = ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
            let mut tls = StreamOwned::new(conn, sock);
            tls.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut out = String::new();
            let _ = tls.read_to_string(&mut out);
            Ok(out)
        })();
        match attempt {
            Ok(out) if out.contains("health") => break out,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("no TLS /health answer from etcd: {other:?}"),
        }
    };
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    assert!(body.contains("\"health\":\"true\""), "{body}");
    // Go's client verifies the auto-TLS certificate and presents it back.
    let mut ok = false;
    for _ in 0..50 {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints=https://127.0.0.1:{}",
                etcd.client_port
            ))
            .arg(format!("--cacert={}", files.cert_file.display()))
            .arg(format!("--cert={}", files.cert_file.display()))
            .arg(format!("--key={}", files.key_file.display()))
            .args(["put", "tls-key", "v"])
            .output()
            .unwrap();
        if out.status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(ok, "etcdctl over TLS with the auto-TLS certificate failed");
}
