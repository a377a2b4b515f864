//! Serialized form of the auth store (stored by the server in the MVCC meta keyspace and in
//! snapshots). Layout in docs/format.md, section "Auth store". Users and roles are encoded as
//! etcd's `authpb.User` / `authpb.Role` protobuf messages, so they read as etcd's do.

use std::collections::BTreeMap;
use std::fmt;

use prost::Message;

use crate::store::{AuthStore, PermType, Permission, Role, User};

/// First 8 bytes of every encoded auth store.
pub const MAGIC: [u8; 8] = *b"FRAUTH\0\x01";
/// Encoding version written after the magic.
pub const VERSION: u32 = 1;
/// magic(8) + version(4) + flags(1) + revision(8) + user_count(4) + role_count(4).
pub const HEADER_BYTES: usize = 8 + 4 + 1 + 8 + 4 + 4;
/// crc32c at the end.
pub const TRAILER_BYTES: usize = 4;
/// Upper bound on one user or role record, to refuse absurd lengths before allocating.
pub const RECORD_BYTES_MAX: usize = 16 * 1024 * 1024;
const FLAG_ENABLED: u8 = 1;

/// Why bytes are not a valid auth store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid auth store encoding: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

#[derive(Clone, PartialEq, prost::Message)]
struct PbUserAddOptions {
    #[prost(bool, tag = "1")]
    no_password: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbUser {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    password: Vec<u8>,
    #[prost(string, repeated, tag = "3")]
    roles: Vec<String>,
    #[prost(message, optional, tag = "4")]
    options: Option<PbUserAddOptions>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbPermission {
    #[prost(int32, tag = "1")]
    perm_type: i32,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    range_end: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbRole {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    key_permission: Vec<PbPermission>,
}

fn err(msg: impl Into<String>) -> DecodeError {
    DecodeError(msg.into())
}

impl AuthStore {
    /// Encodes the whole store (deterministic: same store, same bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + 64 * (self.users.len() + self.roles.len()));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(if self.enabled { FLAG_ENABLED } else { 0 });
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&u32::try_from(self.users.len()).expect("user count").to_le_bytes());
        out.extend_from_slice(&u32::try_from(self.roles.len()).expect("role count").to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_BYTES);
        for u in self.users.values() {
            let pb = PbUser {
                name: u.name.as_bytes().to_vec(),
                password: u.password_hash.clone(),
                roles: u.roles.clone(),
                options: Some(PbUserAddOptions { no_password: u.no_password }),
            };
            put_record(&mut out, &pb.encode_to_vec());
        }
        for r in self.roles.values() {
            let pb = PbRole {
                name: r.name.as_bytes().to_vec(),
                key_permission: r
                    .perms
                    .iter()
                    .map(|p| PbPermission {
                        perm_type: p.perm_type as i32,
                        key: p.key.clone(),
                        range_end: p.range_end.clone(),
                    })
                    .collect(),
            };
            put_record(&mut out, &pb.encode_to_vec());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes bytes written by [`AuthStore::encode`]; any corruption is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<AuthStore, DecodeError> {
        if bytes.len() < HEADER_BYTES + TRAILER_BYTES {
            return Err(err(format!("{} bytes is shorter than header and checksum", bytes.len())));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_BYTES);
        let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
        let actual = crc32c::crc32c(body);
        if stored != actual {
            return Err(err(format!("checksum mismatch (stored {stored:#010x}, computed {actual:#010x})")));
        }
        if body[..8] != MAGIC {
            return Err(err("bad magic"));
        }
        let version = u32::from_le_bytes(body[8..12].try_into().expect("4"));
        if version != VERSION {
            return Err(err(format!("unsupported version {version}")));
        }
        let flags = body[12];
        if flags & !FLAG_ENABLED != 0 {
            return Err(err(format!("unknown flags {flags:#04x}")));
        }
        let revision = u64::from_le_bytes(body[13..21].try_into().expect("8"));
        if revision == 0 {
            return Err(err("auth revision 0"));
        }
        let user_count = u32::from_le_bytes(body[21..25].try_into().expect("4")) as usize;
        let role_count = u32::from_le_bytes(body[25..29].try_into().expect("4")) as usize;
        let mut rest = &body[HEADER_BYTES..];
        let mut users = BTreeMap::new();
        for i in 0..user_count {
            let rec = take_record(&mut rest).map_err(|e| err(format!("user #{i}: {e}")))?;
            let pb = PbUser::decode(rec).map_err(|e| err(format!("user #{i}: {e}")))?;
            let name = String::from_utf8(pb.name).map_err(|_| err(format!("user #{i}: name is not UTF-8")))?;
            if !pb.roles.windows(2).all(|w| w[0] < w[1]) {
                return Err(err(format!("user {name:?}: roles not sorted")));
            }
            let no_password = pb.options.is_some_and(|o| o.no_password);
            let user = User { name: name.clone(), password_hash: pb.password, roles: pb.roles, no_password };
            if users.insert(name.clone(), user).is_some() {
                return Err(err(format!("duplicate user {name:?}")));
            }
        }
        let mut roles = BTreeMap::new();
        for i in 0..role_count {
            let rec = take_record(&mut rest).map_err(|e| err(format!("role #{i}: {e}")))?;
            let pb = PbRole::decode(rec).map_err(|e| err(format!("role #{i}: {e}")))?;
            let name = String::from_utf8(pb.name).map_err(|_| err(format!("role #{i}: name is not UTF-8")))?;
            let mut perms = Vec::with_capacity(pb.key_permission.len());
            for p in pb.key_permission {
                let perm_type = PermType::from_i32(p.perm_type)
                    .ok_or_else(|| err(format!("role {name:?}: permission type {}", p.perm_type)))?;
                perms.push(Permission { perm_type, key: p.key, range_end: p.range_end });
            }
            if !perms.windows(2).all(|w| w[0].key <= w[1].key) {
                return Err(err(format!("role {name:?}: permissions not sorted")));
            }
            if roles.insert(name.clone(), Role { name: name.clone(), perms }).is_some() {
                return Err(err(format!("duplicate role {name:?}")));
            }
        }
        if !rest.is_empty() {
            return Err(err(format!("{} trailing bytes", rest.len())));
        }
        let enabled = flags & FLAG_ENABLED != 0;
        if enabled
            && !users
                .get(crate::store::ROOT_USER)
                .is_some_and(|u: &User| u.has_role(crate::store::ROOT_ROLE))
        {
            return Err(err("enabled without root user holding the root role"));
        }
        let mut store = AuthStore { enabled, revision, users, roles, perm_cache: Default::default() };
        store.refresh_perm_cache();
        store.check_invariants();
        Ok(store)
    }
}

fn put_record(out: &mut Vec<u8>, rec: &[u8]) {
    assert!(rec.len() <= RECORD_BYTES_MAX, "auth record of {} bytes exceeds the limit", rec.len());
    out.extend_from_slice(&(rec.len() as u32).to_le_bytes());
    out.extend_from_slice(rec);
}

fn take_record<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
    if rest.len() < 4 {
        return Err("truncated record length".into());
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4")) as usize;
    if len > RECORD_BYTES_MAX {
        return Err(format!("record length {len} exceeds {RECORD_BYTES_MAX}"));
    }
    if rest.len() - 4 < len {
        return Err(format!("record length {len} past the end"));
    }
    let rec = &rest[4..4 + len];
    *rest = &rest[4 + len..];
    Ok(rec)
}
