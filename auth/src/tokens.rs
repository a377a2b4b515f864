//! Token providers: etcd's simple tokens and JWT, configured by `--auth-token` and
//! `--auth-token-ttl` exactly as etcd parses them. Tokens are node-local state (they are not
//! replicated; simple tokens are registered on every member when the Authenticate entry
//! applies). Time is always passed in (`now_ms`, Unix milliseconds): no hidden clock.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde::{Deserialize, Serialize};

use crate::store::{Applied, AuthInfo};

/// Length of the random part of a simple token.
pub const SIMPLE_TOKEN_PREFIX_LEN: usize = 16;
/// etcd's default --auth-token-ttl (seconds) and JWT ttl.
pub const TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(300);
const LETTERS: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Errors of --auth-token configuration and of token signing (etcd's `auth:` errors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenConfigError {
    /// "auth: invalid auth options" (malformed `k=v`, duplicate option, unknown token type).
    InvalidAuthOpts(String),
    /// "auth: invalid auth signature method".
    InvalidAuthMethod(String),
    /// "auth: missing key data".
    MissingKey,
    /// "auth: public and private keys don't match".
    KeyMismatch,
    /// "auth: token signing attempted with verify-only key".
    VerifyOnly,
    /// A key file could not be read or parsed, or a ttl is malformed.
    Invalid(String),
}

impl fmt::Display for TokenConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenConfigError::InvalidAuthOpts(d) => write!(f, "auth: invalid auth options ({d})"),
            TokenConfigError::InvalidAuthMethod(m) => {
                write!(f, "auth: invalid auth signature method ({m:?})")
            }
            TokenConfigError::MissingKey => f.write_str("auth: missing key data"),
            TokenConfigError::KeyMismatch => {
                f.write_str("auth: public and private keys don't match")
            }
            TokenConfigError::VerifyOnly => {
                f.write_str("auth: token signing attempted with verify-only key")
            }
            TokenConfigError::Invalid(d) => write!(f, "auth: {d}"),
        }
    }
}

impl std::error::Error for TokenConfigError {}

/// etcd's `decomposeOpts`: `type[,key=value]*`, each pair exactly one `=`, no duplicates.
pub fn decompose_token_options(
    opts: &str,
) -> Result<(String, HashMap<String, String>), TokenConfigError> {
    let mut parts = opts.split(',');
    let token_type = parts.next().unwrap_or("").to_string();
    let mut map = HashMap::new();
    for pair in parts {
        let kv: Vec<&str> = pair.split('=').collect();
        if kv.len() != 2 {
            return Err(TokenConfigError::InvalidAuthOpts(format!(
                "invalid token option {pair:?} in {opts:?}"
            )));
        }
        if map.insert(kv[0].to_string(), kv[1].to_string()).is_some() {
            return Err(TokenConfigError::InvalidAuthOpts(format!(
                "duplicate parameter {:?} in {opts:?}",
                kv[0]
            )));
        }
    }
    Ok((token_type, map))
}

/// Go's `time.ParseDuration` (units ns, us, µs, ms, s, m, h; decimals; "0" alone), for token
/// options (`ttl=5m`).
pub fn parse_go_duration(s: &str) -> Result<Duration, TokenConfigError> {
    go_duration(s).map_err(TokenConfigError::Invalid)
}

/// Go's `time.ParseDuration` with Go's error strings ("time: invalid duration \"x\"",
/// "time: missing unit in duration ...", "time: unknown unit ..."). The one implementation in
/// the workspace: the server's duration flags use it too.
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("time: invalid duration \"{s}\"");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() || rest.starts_with('-') {
        return Err(bad());
    }
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ns = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(format!("time: missing unit in duration \"{s}\"")),
            other => {
                return Err(format!(
                    "time: unknown unit \"{other}\" in duration \"{s}\""
                ))
            }
        };
        rest = &rest[unit_len..];
        total_ns += number * unit_ns;
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total_ns as u64))
}

/// Result of looking a token up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Valid(AuthInfo),
    /// Unknown, expired, malformed or wrongly signed: "etcdserver: invalid auth token".
    Invalid,
    /// A simple token issued at a Raft index this node has not applied yet: wait until
    /// `applied_index >= index`, then look again (etcd's `indexWaiter`).
    WaitForIndex(u64),
}

/// etcd's `tokenSimple`: `<16 random letters>.<raft index>`, valid while used at least once
/// per TTL, dropped when auth is disabled or the user is deleted / changes password.
#[derive(Debug)]
pub struct SimpleTokens {
    ttl_ms: u64,
    /// None while auth is disabled (etcd's nil `simpleTokenKeeper`: tokens are not kept).
    tokens: Option<HashMap<String, SimpleEntry>>,
}

#[derive(Debug)]
struct SimpleEntry {
    user: String,
    expires_at_ms: u64,
}

impl SimpleTokens {
    pub fn new(ttl: Duration) -> SimpleTokens {
        let ttl = if ttl.is_zero() {
            TOKEN_TTL_DEFAULT
        } else {
            ttl
        };
        SimpleTokens {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            tokens: None,
        }
    }

    /// Random prefix, generated by the serving node before proposing Authenticate.
    pub fn gen_prefix() -> String {
        let mut out = String::with_capacity(SIMPLE_TOKEN_PREFIX_LEN);
        let mut buf = [0u8; 64];
        while out.len() < SIMPLE_TOKEN_PREFIX_LEN {
            getrandom::fill(&mut buf).expect("OS random source");
            for b in buf {
                // Rejection sampling keeps letters uniform (52 * 4 = 208 <= 256).
                if (b as usize) < LETTERS.len() * 4 && out.len() < SIMPLE_TOKEN_PREFIX_LEN {
                    out.push(LETTERS[b as usize % LETTERS.len()] as char);
                }
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.tokens.as_ref().map_or(0, |t| t.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn enable(&mut self) {
        if self.tokens.is_none() {
            self.tokens = Some(HashMap::new());
        }
    }

    fn disable(&mut self) {
        self.tokens = None;
    }

    fn invalidate_user(&mut self, user: &str) {
        if let Some(t) = self.tokens.as_mut() {
            t.retain(|_, e| e.user != user);
        }
    }

    /// Registers `prefix.index` for `user` (on every member, at apply).
    pub fn assign(&mut self, user: &str, prefix: &str, index: u64, now_ms: u64) -> String {
        let token = format!("{prefix}.{index}");
        if let Some(t) = self.tokens.as_mut() {
            let entry = SimpleEntry {
                user: user.to_string(),
                expires_at_ms: now_ms.saturating_add(self.ttl_ms),
            };
            let previous = t.insert(token.clone(), entry);
            assert!(previous.is_none(), "simple token assigned twice");
        }
        token
    }

    /// Looks a token up and refreshes its TTL. The returned revision is the store's current
    /// one (as etcd: a simple token carries no revision of its own).
    pub fn info(
        &mut self,
        token: &str,
        store_revision: u64,
        applied_index: u64,
        now_ms: u64,
    ) -> TokenCheck {
        let mut parts = token.split('.');
        let (Some(_), Some(index), None) = (parts.next(), parts.next(), parts.next()) else {
            return TokenCheck::Invalid;
        };
        let Ok(index) = index.parse::<u64>() else {
            return TokenCheck::Invalid;
        };
        if index > applied_index {
            return TokenCheck::WaitForIndex(index);
        }
        let Some(tokens) = self.tokens.as_mut() else {
            return TokenCheck::Invalid;
        };
        let ttl_ms = self.ttl_ms;
        match tokens.get_mut(token) {
            Some(e) if now_ms <= e.expires_at_ms => {
                e.expires_at_ms = now_ms.saturating_add(ttl_ms);
                TokenCheck::Valid(AuthInfo {
                    username: e.user.clone(),
                    revision: store_revision,
                })
            }
            Some(_) => {
                tokens.remove(token);
                TokenCheck::Invalid
            }
            None => TokenCheck::Invalid,
        }
    }

    /// Drops expired tokens (etcd's once-a-second keeper); call from a periodic timer.
    pub fn purge_expired(&mut self, now_ms: u64) -> usize {
        let Some(t) = self.tokens.as_mut() else {
            return 0;
        };
        let before = t.len();
        t.retain(|_, e| now_ms <= e.expires_at_ms);
        before - t.len()
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: i64,
}

/// etcd's `tokenJWT`: signed `{username, revision, exp}` claims; stateless.
pub struct JwtTokens {
    algorithm: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    ttl: Duration,
}

impl fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtTokens")
            .field("algorithm", &self.algorithm)
            .field("verify_only", &self.encoding.is_none())
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn algorithm_of(method: &str) -> Result<Algorithm, TokenConfigError> {
    Ok(match method {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "ES512" => {
            return Err(TokenConfigError::Invalid(
                "sign-method ES512 is not supported by ferrite".into(),
            ));
        }
        other => return Err(TokenConfigError::InvalidAuthMethod(other.to_string())),
    })
}

fn read_key_file(path: &str) -> Result<Vec<u8>, TokenConfigError> {
    std::fs::read(path)
        .map_err(|e| TokenConfigError::Invalid(format!("cannot read key file {path:?}: {e}")))
}

fn bad_key(what: &str, e: impl fmt::Display) -> TokenConfigError {
    TokenConfigError::Invalid(format!("cannot parse {what}: {e}"))
}

/// The public half of a private key, as the raw bytes jsonwebtoken's `*_der` constructors take.
fn public_from_private(alg: Algorithm, pem: &[u8]) -> Result<DecodingKey, TokenConfigError> {
    use ring::signature::{self, KeyPair};
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad_key("priv-key", e))?;
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            let kp = match &der {
                PrivateKeyDer::Pkcs1(k) => signature::RsaKeyPair::from_der(k.secret_pkcs1_der()),
                PrivateKeyDer::Pkcs8(k) => signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
                _ => return Err(bad_key("priv-key", "not an RSA private key")),
            }
            .map_err(|e| bad_key("priv-key", e))?;
            Ok(DecodingKey::from_rsa_der(kp.public().as_ref()))
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            let PrivateKeyDer::Pkcs8(k) = &der else {
                return Err(bad_key(
                    "priv-key",
                    "EC keys must be PKCS#8 (openssl pkcs8 -topk8 -nocrypt)",
                ));
            };
            let ring_alg = if alg == Algorithm::ES256 {
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let rng = ring::rand::SystemRandom::new();
            let kp = signature::EcdsaKeyPair::from_pkcs8(ring_alg, k.secret_pkcs8_der(), &rng)
                .map_err(|e| bad_key("priv-key", e))?;
            Ok(DecodingKey::from_ec_der(kp.public_key().as_ref()))
        }
        Algorithm::EdDSA => {
            let PrivateKeyDer::Pkcs8(k) = &der else {
                return Err(bad_key("priv-key", "Ed25519 keys must be PKCS#8"));
            };
            let kp = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.secret_pkcs8_der())
                .map_err(|e| bad_key("priv-key", e))?;
            Ok(DecodingKey::from_ed_der(kp.public_key().as_ref()))
        }
        _ => Err(TokenConfigError::MissingKey),
    }
}

impl JwtTokens {
    /// etcd's `newTokenProviderJWT` from the options after `jwt,`: sign-method (required),
    /// priv-key and/or pub-key (files), ttl (Go duration, default 5m). Unknown options are
    /// ignored (etcd logs a warning). Only pub-key: verify-only (Authenticate fails).
    pub fn from_options(opts: &HashMap<String, String>) -> Result<JwtTokens, TokenConfigError> {
        let ttl = match opts.get("ttl").map(String::as_str) {
            None | Some("") => TOKEN_TTL_DEFAULT,
            Some(s) => parse_go_duration(s)?,
        };
        let method = opts.get("sign-method").map(String::as_str).unwrap_or("");
        let algorithm = algorithm_of(method)?;
        let private = match opts.get("priv-key").map(String::as_str) {
            None | Some("") => None,
            Some(p) => Some(read_key_file(p)?),
        };
        let public = match opts.get("pub-key").map(String::as_str) {
            None | Some("") => None,
            Some(p) => Some(read_key_file(p)?),
        };
        Self::from_keys(algorithm, private.as_deref(), public.as_deref(), ttl)
    }

    /// Builds from key material (PEM for RSA/EC/Ed25519, raw secret for HMAC).
    pub fn from_keys(
        algorithm: Algorithm,
        private: Option<&[u8]>,
        public: Option<&[u8]>,
        ttl: Duration,
    ) -> Result<JwtTokens, TokenConfigError> {
        use Algorithm::*;
        let hmac = matches!(algorithm, HS256 | HS384 | HS512);
        if hmac {
            let secret = private
                .filter(|k| !k.is_empty())
                .ok_or(TokenConfigError::MissingKey)?;
            return Ok(JwtTokens {
                algorithm,
                encoding: Some(EncodingKey::from_secret(secret)),
                decoding: DecodingKey::from_secret(secret),
                ttl,
            });
        }
        let encoding = match private {
            None => None,
            Some(pem) => Some(
                match algorithm {
                    RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => EncodingKey::from_rsa_pem(pem),
                    ES256 | ES384 => EncodingKey::from_ec_pem(pem),
                    _ => EncodingKey::from_ed_pem(pem),
                }
                .map_err(|e| bad_key("priv-key", e))?,
            ),
        };
        let decoding = match (public, private) {
            (Some(pem), _) => match algorithm {
                RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => DecodingKey::from_rsa_pem(pem),
                ES256 | ES384 => DecodingKey::from_ec_pem(pem),
                _ => DecodingKey::from_ed_pem(pem),
            }
            .map_err(|e| bad_key("pub-key", e))?,
            (None, Some(pem)) => public_from_private(algorithm, pem)?,
            (None, None) => return Err(TokenConfigError::MissingKey),
        };
        let t = JwtTokens {
            algorithm,
            encoding,
            decoding,
            ttl,
        };
        if t.encoding.is_some() && public.is_some() {
            // A probe token signed with the private key must verify with the public key.
            let probe = t.sign("ferrite-key-check", 1, 0, i64::MAX / 2)?;
            if t.verify(&probe, 0).is_none() {
                return Err(TokenConfigError::KeyMismatch);
            }
        }
        Ok(t)
    }

    pub fn is_verify_only(&self) -> bool {
        self.encoding.is_none()
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn sign(
        &self,
        user: &str,
        revision: u64,
        _now_ms: u64,
        exp: i64,
    ) -> Result<String, TokenConfigError> {
        let key = self.encoding.as_ref().ok_or(TokenConfigError::VerifyOnly)?;
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| TokenConfigError::Invalid(format!("failed to sign a JWT token: {e}")))
    }

    /// A token for `user` at auth `revision`, expiring `ttl` after `now_ms` (whole seconds, as
    /// Go's `time.Now().Add(ttl).Unix()`).
    pub fn assign(
        &self,
        user: &str,
        revision: u64,
        now_ms: u64,
    ) -> Result<String, TokenConfigError> {
        let exp_ms = now_ms.saturating_add(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        let exp = i64::try_from(exp_ms / 1000).unwrap_or(i64::MAX);
        self.sign(user, revision, now_ms, exp)
    }

    /// Verifies signature, algorithm and expiry (valid while `now <= exp`, as golang-jwt);
    /// the revision is the one the token was issued at.
    pub fn verify(&self, token: &str, now_ms: u64) -> Option<AuthInfo> {
        let mut v = Validation::new(self.algorithm);
        v.validate_exp = false; // checked below against the caller's clock
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).ok()?;
        let now_s = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        if now_s > data.claims.exp {
            return None;
        }
        Some(AuthInfo {
            username: data.claims.username,
            revision: data.claims.revision,
        })
    }
}

/// The configured token provider (`--auth-token`).
#[derive(Debug)]
pub enum TokenProvider {
    Simple(SimpleTokens),
    Jwt(JwtTokens),
    /// `--auth-token=""`: no tokens can be issued (etcd's nop provider).
    Nop,
}

impl TokenProvider {
    /// etcd's `NewTokenProvider(--auth-token, --auth-token-ttl)`.
    pub fn from_flags(
        auth_token: &str,
        auth_token_ttl: Duration,
    ) -> Result<TokenProvider, TokenConfigError> {
        let (token_type, opts) = decompose_token_options(auth_token)?;
        match token_type.as_str() {
            "simple" => Ok(TokenProvider::Simple(SimpleTokens::new(auth_token_ttl))),
            "jwt" => Ok(TokenProvider::Jwt(JwtTokens::from_options(&opts)?)),
            "" => Ok(TokenProvider::Nop),
            other => Err(TokenConfigError::InvalidAuthOpts(format!(
                "unknown token type {other:?}"
            ))),
        }
    }

    /// The random part to put into the Authenticate proposal (empty for JWT).
    pub fn gen_prefix(&self) -> String {
        match self {
            TokenProvider::Simple(_) => SimpleTokens::gen_prefix(),
            _ => String::new(),
        }
    }

    /// Follows the store: call with every successful `AuthStore::apply` result, and once at
    /// start with `Applied::Enabled` if the restored store is enabled.
    pub fn on_applied(&mut self, applied: &Applied) {
        if let TokenProvider::Simple(s) = self {
            match applied {
                Applied::Enabled => s.enable(),
                Applied::Disabled => s.disable(),
                Applied::InvalidateUser(u) => s.invalidate_user(u),
                Applied::Done | Applied::Authenticated { .. } => {}
            }
        }
    }

    /// Issues the token after `Applied::Authenticated { user, revision }` at Raft `index`.
    pub fn assign(
        &mut self,
        user: &str,
        revision: u64,
        simple_token_prefix: &str,
        index: u64,
        now_ms: u64,
    ) -> Result<String, TokenConfigError> {
        match self {
            TokenProvider::Simple(s) => Ok(s.assign(user, simple_token_prefix, index, now_ms)),
            TokenProvider::Jwt(j) => j.assign(user, revision, now_ms),
            TokenProvider::Nop => Err(TokenConfigError::Invalid(
                "authentication token is not supported".into(),
            )),
        }
    }

    /// Resolves the `token` (or `authorization`) metadata of a request.
    pub fn info(
        &mut self,
        token: &str,
        store_revision: u64,
        applied_index: u64,
        now_ms: u64,
    ) -> TokenCheck {
        match self {
            TokenProvider::Simple(s) => s.info(token, store_revision, applied_index, now_ms),
            TokenProvider::Jwt(j) => j
                .verify(token, now_ms)
                .map_or(TokenCheck::Invalid, TokenCheck::Valid),
            TokenProvider::Nop => TokenCheck::Invalid,
        }
    }
}
