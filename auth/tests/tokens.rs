//! Token providers: --auth-token parsing, simple token lifetime, JWT signing and verification.

use std::path::PathBuf;
use std::time::Duration;

use ferrite_auth::store::{Applied, AuthInfo};
use ferrite_auth::tokens::{
    decompose_token_options, parse_go_duration, JwtTokens, SimpleTokens, TokenConfigError,
    SIMPLE_TOKEN_PREFIX_LEN,
};
use ferrite_auth::{TokenCheck, TokenProvider};

fn data(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn jwt(opts: &str) -> Result<TokenProvider, TokenConfigError> {
    TokenProvider::from_flags(opts, Duration::from_secs(300))
}

#[test]
fn option_string_is_parsed_like_etcd() {
    let (t, m) =
        decompose_token_options("jwt,pub-key=/a,priv-key=/b,sign-method=RS256,ttl=10m").unwrap();
    assert_eq!(t, "jwt");
    assert_eq!(m.len(), 4);
    assert_eq!(m["ttl"], "10m");
    assert_eq!(
        decompose_token_options("simple").unwrap(),
        ("simple".to_string(), Default::default())
    );
    for bad in ["jwt,foo", "jwt,a=b=c", "jwt,a=1,a=2", "jwt,"] {
        let e = decompose_token_options(bad).unwrap_err();
        assert!(
            matches!(e, TokenConfigError::InvalidAuthOpts(_)),
            "{bad}: {e}"
        );
        assert!(
            e.to_string().starts_with("auth: invalid auth options"),
            "{e}"
        );
    }
    assert!(matches!(
        jwt("nosuch"),
        Err(TokenConfigError::InvalidAuthOpts(_))
    ));
    assert!(matches!(jwt(""), Ok(TokenProvider::Nop)));
    assert!(matches!(jwt("simple"), Ok(TokenProvider::Simple(_))));
}

#[test]
fn go_durations() {
    assert_eq!(parse_go_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(
        parse_go_duration("1h30m").unwrap(),
        Duration::from_secs(5400)
    );
    assert_eq!(
        parse_go_duration("1.5s").unwrap(),
        Duration::from_millis(1500)
    );
    assert_eq!(
        parse_go_duration("100ms").unwrap(),
        Duration::from_millis(100)
    );
    assert_eq!(parse_go_duration("0").unwrap(), Duration::ZERO);
    for bad in ["", "5", "5x", "-1s", "m", "1..5s"] {
        assert!(parse_go_duration(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn simple_token_lifetime() {
    let ttl_ms = 300_000;
    let mut p = TokenProvider::Simple(SimpleTokens::new(Duration::ZERO)); // 0 = etcd default 300 s
    let prefix = p.gen_prefix();
    assert_eq!(prefix.len(), SIMPLE_TOKEN_PREFIX_LEN);
    assert!(prefix.bytes().all(|b| b.is_ascii_alphabetic()));
    assert_ne!(prefix, p.gen_prefix());
    // Before auth is enabled tokens are not kept (etcd's nil keeper).
    let t0 = p.assign("u", 3, &prefix, 7, 0).unwrap();
    assert_eq!(t0, format!("{prefix}.7"));
    assert_eq!(p.info(&t0, 3, 7, 0), TokenCheck::Invalid);

    p.on_applied(&Applied::Enabled);
    let t = p.assign("u", 3, "AAAAAAAAAAAAAAAA", 9, 1_000).unwrap();
    assert_eq!(
        p.info(&t, 3, 8, 1_000),
        TokenCheck::WaitForIndex(9),
        "not applied here yet"
    );
    let valid = |rev| {
        TokenCheck::Valid(AuthInfo {
            username: "u".into(),
            revision: rev,
        })
    };
    // Revision reported is the store's current one.
    assert_eq!(p.info(&t, 5, 9, 1_000 + ttl_ms), valid(5));
    // Use refreshed the TTL: still valid almost 2 TTLs after issue...
    assert_eq!(p.info(&t, 5, 9, 1_000 + 2 * ttl_ms), valid(5));
    // ...and expired after a TTL of silence.
    assert_eq!(
        p.info(&t, 5, 9, 1_000 + 3 * ttl_ms + 1),
        TokenCheck::Invalid
    );
    assert_eq!(
        p.info(&t, 5, 9, 0),
        TokenCheck::Invalid,
        "expired tokens are forgotten"
    );

    for bad in ["", "abc", "a.b.c", "abc.x", "abc.-1"] {
        assert_eq!(p.info(bad, 1, 100, 0), TokenCheck::Invalid, "{bad:?}");
    }
    let a = p.assign("a", 1, "p", 10, 0).unwrap();
    let b = p.assign("b", 1, "p", 11, 0).unwrap();
    p.on_applied(&Applied::InvalidateUser("a".into()));
    assert_eq!(p.info(&a, 1, 11, 0), TokenCheck::Invalid);
    assert!(matches!(p.info(&b, 1, 11, 0), TokenCheck::Valid(_)));
    p.on_applied(&Applied::Disabled);
    assert_eq!(
        p.info(&b, 1, 11, 0),
        TokenCheck::Invalid,
        "disable drops every token"
    );
}

#[test]
fn simple_token_purge() {
    let mut p = TokenProvider::Simple(SimpleTokens::new(Duration::from_secs(1)));
    p.on_applied(&Applied::Enabled);
    p.assign("u", 1, "x", 1, 0).unwrap();
    p.assign("u", 1, "x", 2, 500).unwrap();
    let TokenProvider::Simple(s) = &mut p else {
        unreachable!()
    };
    assert_eq!(s.len(), 2);
    assert_eq!(s.purge_expired(1_200), 1);
    assert_eq!(s.len(), 1);
}

#[test]
fn jwt_rs256_round_trip_expiry_and_revision() {
    let opts = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=10s",
        data("rsa-test-pub.pem"),
        data("rsa-test-priv.pem")
    );
    let mut p = jwt(&opts).unwrap();
    let now = 1_700_000_000_000u64;
    let t = p.assign("alice", 42, "", 5, now).unwrap();
    assert_eq!(t.split('.').count(), 3, "a JWS compact token");
    let ok = TokenCheck::Valid(AuthInfo {
        username: "alice".into(),
        revision: 42,
    });
    assert_eq!(p.info(&t, 99, 0, now), ok, "JWT carries its own revision");
    assert_eq!(
        p.info(&t, 99, 0, now + 10_000),
        ok,
        "valid up to exp inclusive"
    );
    assert_eq!(
        p.info(&t, 99, 0, now + 11_000),
        TokenCheck::Invalid,
        "expired"
    );
    // Tampering with the payload breaks the signature.
    let mut parts: Vec<String> = t.split('.').map(String::from).collect();
    parts[1] = parts[1].replacen('e', "f", 1);
    assert_eq!(p.info(&parts.join("."), 99, 0, now), TokenCheck::Invalid);
    // A token of another key is refused.
    let other = format!(
        "jwt,priv-key={},sign-method=RS256",
        data("rsa-other-priv.pem")
    );
    let mut q = jwt(&other).unwrap();
    let t2 = q.assign("alice", 42, "", 0, now).unwrap();
    assert_eq!(p.info(&t2, 0, 0, now), TokenCheck::Invalid);
    assert!(
        matches!(q.info(&t2, 0, 0, now), TokenCheck::Valid(_)),
        "public key derived from PKCS#8 private"
    );
    // Algorithm confusion: an HS256 token keyed with the public key PEM is refused.
    let pub_pem = std::fs::read(data("rsa-test-pub.pem")).unwrap();
    let hs = JwtTokens::from_keys(
        jsonwebtoken::Algorithm::HS256,
        Some(&pub_pem),
        None,
        Duration::from_secs(60),
    )
    .unwrap()
    .assign("root", 42, now)
    .unwrap();
    assert_eq!(p.info(&hs, 0, 0, now), TokenCheck::Invalid);
}

#[test]
fn jwt_key_handling() {
    let priv_only = format!(
        "jwt,priv-key={},sign-method=RS256",
        data("rsa-test-priv.pem")
    );
    let mut p = jwt(&priv_only).unwrap();
    let t = p.assign("u", 1, "", 0, 0).unwrap();
    assert!(
        matches!(p.info(&t, 0, 0, 0), TokenCheck::Valid(_)),
        "public key derived from PKCS#1 private"
    );

    let pub_only = format!("jwt,pub-key={},sign-method=RS256", data("rsa-test-pub.pem"));
    let mut v = jwt(&pub_only).unwrap();
    assert!(
        matches!(v.info(&t, 0, 0, 0), TokenCheck::Valid(_)),
        "verify-only accepts"
    );
    assert_eq!(
        v.assign("u", 1, "", 0, 0),
        Err(TokenConfigError::VerifyOnly)
    );

    let mismatch = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256",
        data("rsa-other-pub.pem"),
        data("rsa-test-priv.pem")
    );
    assert_eq!(jwt(&mismatch).unwrap_err(), TokenConfigError::KeyMismatch);
    assert_eq!(
        jwt("jwt,sign-method=RS256").unwrap_err(),
        TokenConfigError::MissingKey
    );
    assert!(matches!(
        jwt("jwt,priv-key=/x").unwrap_err(),
        TokenConfigError::InvalidAuthMethod(_)
    ));
    assert!(matches!(
        jwt("jwt,sign-method=XX256,priv-key=/x").unwrap_err(),
        TokenConfigError::InvalidAuthMethod(_)
    ));
    let e = jwt("jwt,sign-method=RS256,priv-key=/nonexistent/key.pem").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/key.pem"), "{e}");
    let e = jwt(&format!(
        "jwt,sign-method=RS256,priv-key={}",
        data("README.md")
    ))
    .unwrap_err();
    assert!(e.to_string().contains("cannot parse priv-key"), "{e}");
    assert!(jwt(&format!(
        "jwt,sign-method=ES512,priv-key={}",
        data("rsa-test-priv.pem")
    ))
    .is_err());
    assert!(jwt(&format!(
        "jwt,sign-method=RS256,ttl=forever,priv-key={}",
        data("rsa-test-priv.pem")
    ))
    .is_err());
}

#[test]
fn jwt_es256_and_hs256() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256, PKCS#8
    let priv_path = dir.path().join("ec.pem");
    let pub_path = dir.path().join("ec.pub.pem");
    std::fs::write(&priv_path, key.serialize_pem()).unwrap();
    std::fs::write(&pub_path, key.public_key_pem()).unwrap();
    for opts in [
        format!(
            "jwt,priv-key={},pub-key={},sign-method=ES256",
            priv_path.display(),
            pub_path.display()
        ),
        format!("jwt,priv-key={},sign-method=ES256", priv_path.display()),
    ] {
        let mut p = jwt(&opts).unwrap();
        let t = p.assign("ec", 7, "", 0, 0).unwrap();
        assert_eq!(
            p.info(&t, 0, 0, 0),
            TokenCheck::Valid(AuthInfo {
                username: "ec".into(),
                revision: 7
            })
        );
    }
    let secret = dir.path().join("hmac");
    std::fs::write(&secret, b"0123456789abcdef0123456789abcdef").unwrap();
    let mut h = jwt(&format!(
        "jwt,priv-key={},sign-method=HS256",
        secret.display()
    ))
    .unwrap();
    let t = h.assign("h", 1, "", 0, 0).unwrap();
    assert!(matches!(h.info(&t, 0, 0, 0), TokenCheck::Valid(_)));
    assert_eq!(
        jwt(&format!(
            "jwt,pub-key={},sign-method=HS256",
            secret.display()
        ))
        .unwrap_err(),
        TokenConfigError::MissingKey
    );
}
