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
        out.extend_from_slice(
            &u32::try_from(self.users.len())
                .expect("user count")
                .to_le_bytes(),
        );
        out.extend_from_slice(
            &u32::try_from(self.roles.len())
                .expect("role count")
                .to_le_bytes(),
        );
        debug_assert_eq!(out.len(), HEADER_BYTES);
        for u in self.users.values() {
            let pb = PbUser {
                name: u.name.as_bytes().to_vec(),
                password: u.password_hash.clone(),
                roles: u.roles.clone(),
                options: Some(PbUserAddOptions {
                    no_password: u.no_password,
                }),
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
            return Err(err(format!(
                "{} bytes is shorter than header and checksum",
                bytes.len()
            )));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_BYTES);
        let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
        let actual = crc32c::crc32c(body);
        if stored != actual {
            return Err(err(format!(
                "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
            )));
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
            let name = String::from_utf8(pb.name)
                .map_err(|_| err(format!("user #{i}: name is not UTF-8")))?;
            if !pb.roles.windows(2).all(|w| w[0] < w[1]) {
                return Err(err(format!("user {name:?}: roles not sorted")));
            }
            let no_password = pb.options.is_some_and(|o| o.no_password);
            let user = User {
                name: name.clone(),
                password_hash: pb.password,
                roles: pb.roles,
                no_password,
            };
            if users.insert(name.clone(), user).is_some() {
                return Err(err(format!("duplicate user {name:?}")));
            }
        }
        let mut roles = BTreeMap::new();
        for i in 0..role_count {
            let rec = take_record(&mut rest).map_err(|e| err(format!("role #{i}: {e}")))?;
            let pb = PbRole::decode(rec).map_err(|e| err(format!("role #{i}: {e}")))?;
            let name = String::from_utf8(pb.name)
                .map_err(|_| err(format!("role #{i}: name is not UTF-8")))?;
            let mut perms = Vec::with_capacity(pb.key_permission.len());
            for p in pb.key_permission {
                let perm_type = PermType::from_i32(p.perm_type).ok_or_else(|| {
                    err(format!("role {name:?}: permission type {}", p.perm_type))
                })?;
                perms.push(Permission {
                    perm_type,
                    key: p.key,
                    range_end: p.range_end,
                });
            }
            if !perms.windows(2).all(|w| w[0].key <= w[1].key) {
                return Err(err(format!("role {name:?}: permissions not sorted")));
            }
            if roles
                .insert(
                    name.clone(),
                    Role {
                        name: name.clone(),
                        perms,
                    },
                )
                .is_some()
            {
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
        let mut store = AuthStore {
            enabled,
            revision,
            users,
            roles,
            perm_cache: Default::default(),
        };
        store.refresh_perm_cache();
        store.check_invariants();
        Ok(store)
    }
}

fn put_record(out: &mut Vec<u8>, rec: &[u8]) {
    assert!(
        rec.len() <= RECORD_BYTES_MAX,
        "auth record of {} bytes exceeds the limit",
        rec.len()
    );
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

/// Wire form of one [`AuthCommand`] inside a Raft entry (docs/format.md, "Auth store").
#[derive(Clone, PartialEq, prost::Message)]
struct PbAuthCommand {
    #[prost(uint32, tag = "1")]
    kind: u32,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(string, tag = "3")]
    other: String,
    #[prost(bytes = "vec", tag = "4")]
    password_hash: Vec<u8>,
    #[prost(bool, tag = "5")]
    no_password: bool,
    #[prost(message, optional, tag = "6")]
    perm: Option<PbPermission>,
}

/// `kind` values of an encoded auth command.
pub mod command_kind {
    pub const AUTH_ENABLE: u32 = 1;
    pub const AUTH_DISABLE: u32 = 2;
    pub const AUTHENTICATE: u32 = 3;
    pub const USER_ADD: u32 = 4;
    pub const USER_DELETE: u32 = 5;
    pub const USER_CHANGE_PASSWORD: u32 = 6;
    pub const USER_GRANT_ROLE: u32 = 7;
    pub const USER_REVOKE_ROLE: u32 = 8;
    pub const ROLE_ADD: u32 = 9;
    pub const ROLE_DELETE: u32 = 10;
    pub const ROLE_GRANT_PERMISSION: u32 = 11;
    pub const ROLE_REVOKE_PERMISSION: u32 = 12;
}

impl crate::store::AuthCommand {
    /// Encodes for a Raft entry (never contains a clear-text password).
    pub fn encode(&self) -> Vec<u8> {
        use crate::store::AuthCommand as C;
        use command_kind::*;
        let mut pb = PbAuthCommand::default();
        let perm_pb = |p: &Permission| PbPermission {
            perm_type: p.perm_type as i32,
            key: p.key.clone(),
            range_end: p.range_end.clone(),
        };
        match self {
            C::AuthEnable => pb.kind = AUTH_ENABLE,
            C::AuthDisable => pb.kind = AUTH_DISABLE,
            C::Authenticate {
                name,
                simple_token_prefix,
            } => {
                pb.kind = AUTHENTICATE;
                pb.name = name.clone();
                pb.other = simple_token_prefix.clone();
            }
            C::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                pb.kind = USER_ADD;
                pb.name = name.clone();
                pb.password_hash = password_hash.clone();
                pb.no_password = *no_password;
            }
            C::UserDelete { name } => {
                pb.kind = USER_DELETE;
                pb.name = name.clone();
            }
            C::UserChangePassword {
                name,
                password_hash,
            } => {
                pb.kind = USER_CHANGE_PASSWORD;
                pb.name = name.clone();
                pb.password_hash = password_hash.clone();
            }
            C::UserGrantRole { user, role } => {
                pb.kind = USER_GRANT_ROLE;
                pb.name = user.clone();
                pb.other = role.clone();
            }
            C::UserRevokeRole { name, role } => {
                pb.kind = USER_REVOKE_ROLE;
                pb.name = name.clone();
                pb.other = role.clone();
            }
            C::RoleAdd { name } => {
                pb.kind = ROLE_ADD;
                pb.name = name.clone();
            }
            C::RoleDelete { role } => {
                pb.kind = ROLE_DELETE;
                pb.name = role.clone();
            }
            C::RoleGrantPermission { name, perm } => {
                pb.kind = ROLE_GRANT_PERMISSION;
                pb.name = name.clone();
                pb.perm = Some(perm_pb(perm));
            }
            C::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                pb.kind = ROLE_REVOKE_PERMISSION;
                pb.name = role.clone();
                pb.perm = Some(PbPermission {
                    perm_type: 0,
                    key: key.clone(),
                    range_end: range_end.clone(),
                });
            }
        }
        pb.encode_to_vec()
    }

    /// Decodes [`AuthCommand::encode`] output; malformed input is an error.
    pub fn decode(bytes: &[u8]) -> Result<crate::store::AuthCommand, DecodeError> {
        use crate::store::AuthCommand as C;
        use command_kind::*;
        let pb = PbAuthCommand::decode(bytes).map_err(|e| err(format!("auth command: {e}")))?;
        let perm = || {
            pb.perm
                .clone()
                .ok_or_else(|| err("auth command: permission missing"))
        };
        Ok(match pb.kind {
            AUTH_ENABLE => C::AuthEnable,
            AUTH_DISABLE => C::AuthDisable,
            AUTHENTICATE => C::Authenticate {
                name: pb.name,
                simple_token_prefix: pb.other,
            },
            USER_ADD => C::UserAdd {
                name: pb.name,
                password_hash: pb.password_hash,
                no_password: pb.no_password,
            },
            USER_DELETE => C::UserDelete { name: pb.name },
            USER_CHANGE_PASSWORD => C::UserChangePassword {
                name: pb.name,
                password_hash: pb.password_hash,
            },
            USER_GRANT_ROLE => C::UserGrantRole {
                user: pb.name,
                role: pb.other,
            },
            USER_REVOKE_ROLE => C::UserRevokeRole {
                name: pb.name,
                role: pb.other,
            },
            ROLE_ADD => C::RoleAdd { name: pb.name },
            ROLE_DELETE => C::RoleDelete { role: pb.name },
            ROLE_GRANT_PERMISSION => {
                let p = perm()?;
                let perm_type = PermType::from_i32(p.perm_type)
                    .ok_or_else(|| err(format!("auth command: permission type {}", p.perm_type)))?;
                C::RoleGrantPermission {
                    name: pb.name,
                    perm: Permission {
                        perm_type,
                        key: p.key,
                        range_end: p.range_end,
                    },
                }
            }
            ROLE_REVOKE_PERMISSION => {
                let p = perm()?;
                C::RoleRevokePermission {
                    role: pb.name,
                    key: p.key,
                    range_end: p.range_end,
                }
            }
            other => return Err(err(format!("auth command: unknown kind {other}"))),
        })
    }
}
