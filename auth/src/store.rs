//! The auth store: users, roles, the enabled flag and the auth revision, as a pure state
//! machine driven by committed Raft entries (etcd 3.4's `auth/store.go`).
//!
//! Determinism: `apply` depends only on the store and the command. Passwords arrive already
//! hashed (the proposer calls [`crate::hash_password`] before proposing, so the WAL never holds
//! a clear-text password and every member stores the same hash). Tokens are node-local state
//! and live in [`crate::tokens`], outside this store.

use std::collections::{BTreeMap, HashMap};

use crate::error::AuthError;
use crate::perm::UnifiedPerms;

/// The user that must exist, with the root role, before auth can be enabled.
pub const ROOT_USER: &str = "root";
/// The role that grants everything (and every admin call).
pub const ROOT_ROLE: &str = "root";

/// etcd's `authpb.Permission_Type` (same numbering on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PermType {
    Read = 0,
    Write = 1,
    ReadWrite = 2,
}

impl PermType {
    pub fn from_i32(v: i32) -> Option<PermType> {
        match v {
            0 => Some(PermType::Read),
            1 => Some(PermType::Write),
            2 => Some(PermType::ReadWrite),
            _ => None,
        }
    }
}

/// A permission on a key (`range_end` empty), a range `[key, range_end)`, or every key
/// `>= key` (`range_end == "\0"`). A prefix is the range `[p, prefix_range_end(p))`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub perm_type: PermType,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

/// The range end that makes `[prefix, end)` cover every key starting with `prefix`
/// (etcd's `clientv3.GetPrefixRangeEnd`; `"\0"` when the prefix is empty or all 0xff).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// bcrypt hash (`$2a$...`); empty for users added with no password (a later password
    /// change sets one, but the user stays no-password, as in etcd).
    pub password_hash: Vec<u8>,
    /// Sorted, without duplicates.
    pub roles: Vec<String>,
    /// Created with `--no-password`: can only authenticate by client certificate CN.
    pub no_password: bool,
}

impl User {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles
            .binary_search_by(|r| r.as_str().cmp(role))
            .is_ok()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    /// Sorted by key; permissions with equal keys (different range ends) in the order Go's
    /// unstable `sort.Sort` leaves them, as etcd keeps them.
    pub perms: Vec<Permission>,
}

/// Who is asking, and against which auth revision the request was authorized.
/// Built by the token provider or from a verified client certificate's common name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    pub revision: u64,
}

/// One auth mutation, as carried through Raft. Read-only calls (get/list/status) do not go
/// through Raft here: they are answered from the applied store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthCommand {
    AuthEnable,
    AuthDisable,
    /// The password was checked before proposing; apply re-checks the user and assigns a token.
    /// `simple_token_prefix` is the random part of a simple token (empty for JWT).
    Authenticate {
        name: String,
        simple_token_prefix: String,
    },
    /// `password_hash` from [`crate::hash_password`]; empty when `no_password`.
    UserAdd {
        name: String,
        password_hash: Vec<u8>,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: Vec<u8>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        role: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl AuthCommand {
    /// etcd's `needAdminPermission`: the caller must be root when auth is enabled.
    pub fn needs_admin(&self) -> bool {
        !matches!(self, AuthCommand::Authenticate { .. })
    }
}

/// What a successful `apply` did, for the node-local token provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Nothing for the token provider to do.
    Done,
    /// Auth was enabled (also when it already was).
    Enabled,
    /// Auth was disabled: drop every token.
    Disabled,
    /// The user was deleted or changed password: drop its simple tokens.
    InvalidateUser(String),
    /// Authenticate passed: assign a token for `user` at auth revision `revision`.
    Authenticated { user: String, revision: u64 },
}

/// One key access a request makes, for [`AuthStore::check_accesses`].
#[derive(Clone, Copy, Debug)]
pub enum KeyAccess<'a> {
    /// Range, a Txn compare, Watch: READ on `[key, range_end)`.
    Read { key: &'a [u8], range_end: &'a [u8] },
    /// Put: WRITE on key, plus READ when `prev_kv`.
    Put { key: &'a [u8], prev_kv: bool },
    /// DeleteRange: WRITE on the range, plus READ when `prev_kv`.
    DeleteRange {
        key: &'a [u8],
        range_end: &'a [u8],
        prev_kv: bool,
    },
}

/// The auth state machine. Invariants (asserted after every apply in debug and release):
/// `revision >= 1`; user roles sorted and unique; role permissions sorted by key; enabled
/// implies root exists with the root role; the permission cache matches users and roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthStore {
    pub(crate) enabled: bool,
    pub(crate) revision: u64,
    pub(crate) users: BTreeMap<String, User>,
    pub(crate) roles: BTreeMap<String, Role>,
    pub(crate) perm_cache: HashMap<String, UnifiedPerms>,
}

impl Default for AuthStore {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthStore {
    /// A fresh store: disabled, no users or roles, revision 1 (etcd commits revision 1 when it
    /// creates the auth buckets).
    pub fn new() -> AuthStore {
        AuthStore {
            enabled: false,
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
            perm_cache: HashMap::new(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision: bumped by every successful change except AuthEnable (as etcd).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// AuthStatus: (enabled, auth revision).
    pub fn status(&self) -> (bool, u64) {
        (self.enabled, self.revision)
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// UserGet: the user's roles (sorted).
    pub fn user_get(&self, name: &str) -> Result<Vec<String>, AuthError> {
        self.users
            .get(name)
            .map(|u| u.roles.clone())
            .ok_or(AuthError::UserNotFound)
    }

    /// UserList: every user name, sorted.
    pub fn user_list(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// RoleGet: the role's permissions in key order.
    pub fn role_get(&self, name: &str) -> Result<Vec<Permission>, AuthError> {
        self.roles
            .get(name)
            .map(|r| r.perms.clone())
            .ok_or(AuthError::RoleNotFound)
    }

    /// RoleList: every role name, sorted.
    pub fn role_list(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// The first half of Authenticate (etcd's `CheckPassword`), run on the serving node before
    /// proposing: returns the hash to verify (off the executor, see [`crate::HashPool`]) and
    /// the auth revision it was read at. After the Authenticate entry applies, compare that
    /// revision with [`AuthStore::revision`] and retry if it moved (etcd does the same).
    pub fn password_hash_for(&self, name: &str) -> Result<(Vec<u8>, u64), AuthError> {
        if !self.enabled {
            return Err(AuthError::AuthNotEnabled);
        }
        let user = self.users.get(name).ok_or(AuthError::AuthFailed)?;
        if user.no_password {
            return Err(AuthError::NoPasswordUser);
        }
        Ok((user.password_hash.clone(), self.revision))
    }

    /// Applies one committed auth command. `caller` is the proposer's identity from the
    /// request header (None when auth was off or no credentials were given); admin commands
    /// check it first, as etcd's `authApplierV3` does.
    pub fn apply(
        &mut self,
        caller: Option<&AuthInfo>,
        cmd: &AuthCommand,
    ) -> Result<Applied, AuthError> {
        if cmd.needs_admin() {
            self.is_admin_permitted(caller)?;
        }
        let result = self.apply_unchecked(cmd);
        self.check_invariants();
        result
    }

    /// Applies without the admin check (for restoring, tests and internal callers).
    pub fn apply_unchecked(&mut self, cmd: &AuthCommand) -> Result<Applied, AuthError> {
        match cmd {
            AuthCommand::AuthEnable => self.auth_enable(),
            AuthCommand::AuthDisable => {
                if self.enabled {
                    self.enabled = false;
                    self.commit_revision();
                }
                Ok(Applied::Disabled)
            }
            AuthCommand::Authenticate { name, .. } => {
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                let user = self.users.get(name).ok_or(AuthError::AuthFailed)?;
                if user.no_password {
                    return Err(AuthError::AuthFailed);
                }
                Ok(Applied::Authenticated {
                    user: name.clone(),
                    revision: self.revision,
                })
            }
            AuthCommand::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let password_hash = if *no_password {
                    Vec::new()
                } else {
                    password_hash.clone()
                };
                let user = User {
                    name: name.clone(),
                    password_hash,
                    roles: Vec::new(),
                    no_password: *no_password,
                };
                self.users.insert(name.clone(), user);
                self.committed();
                Ok(Applied::Done)
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if self.users.remove(name).is_none() {
                    return Err(AuthError::UserNotFound);
                }
                self.committed();
                Ok(Applied::InvalidateUser(name.clone()))
            }
            AuthCommand::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.password_hash = password_hash.clone();
                self.committed();
                Ok(Applied::InvalidateUser(name.clone()))
            }
            AuthCommand::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(AuthError::UserNotFound);
                }
                // etcd lets "root" be granted before the root role exists.
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let u = self.users.get_mut(user).expect("checked above");
                match u.roles.binary_search(role) {
                    Ok(_) => Ok(Applied::Done), // already granted: no change, no new revision
                    Err(at) => {
                        u.roles.insert(at, role.clone());
                        self.committed();
                        Ok(Applied::Done)
                    }
                }
            }
            AuthCommand::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT_USER && role == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                let before = u.roles.len();
                u.roles.retain(|r| r != role);
                if u.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
                self.committed();
                Ok(Applied::Done)
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(
                    name.clone(),
                    Role {
                        name: name.clone(),
                        perms: Vec::new(),
                    },
                );
                self.committed();
                Ok(Applied::Done)
            }
            AuthCommand::RoleDelete { role } => {
                if self.enabled && role == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                if self.roles.remove(role).is_none() {
                    return Err(AuthError::RoleNotFound);
                }
                for u in self.users.values_mut() {
                    u.roles.retain(|r| r != role);
                }
                self.committed();
                Ok(Applied::Done)
            }
            AuthCommand::RoleGrantPermission { name, perm } => {
                let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                // etcd: binary search for the first permission with key >= perm.key; if it has
                // the same key and range end, update its type, otherwise append and re-sort.
                let idx = role.perms.partition_point(|p| p.key < perm.key);
                match role.perms.get_mut(idx) {
                    Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                        p.perm_type = perm.perm_type;
                    }
                    _ => {
                        role.perms.push(perm.clone());
                        // Go's unstable sort.Sort, so ties between equal keys land as in etcd.
                        crate::gosort::go_sort(
                            &mut role.perms,
                            &|a: &Permission, b: &Permission| a.key < b.key,
                        );
                    }
                }
                self.committed();
                Ok(Applied::Done)
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = r.perms.len();
                r.perms
                    .retain(|p| !(&p.key == key && &p.range_end == range_end));
                if r.perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
                self.committed();
                Ok(Applied::Done)
            }
        }
    }

    fn auth_enable(&mut self) -> Result<Applied, AuthError> {
        if self.enabled {
            return Ok(Applied::Enabled); // etcd: "authentication is already enabled; ignored"
        }
        let root = self
            .users
            .get(ROOT_USER)
            .ok_or(AuthError::RootUserNotExist)?;
        if !root.has_role(ROOT_ROLE) {
            return Err(AuthError::RootRoleNotExist);
        }
        // etcd does not commit a new revision on enable.
        self.enabled = true;
        self.refresh_perm_cache();
        Ok(Applied::Enabled)
    }

    fn commit_revision(&mut self) {
        self.revision = self
            .revision
            .checked_add(1)
            .expect("auth revision overflow");
    }

    fn committed(&mut self) {
        self.commit_revision();
        self.refresh_perm_cache();
    }

    pub(crate) fn refresh_perm_cache(&mut self) {
        let roles = &self.roles;
        self.perm_cache = self
            .users
            .values()
            .map(|u| {
                let perms = u
                    .roles
                    .iter()
                    .filter_map(|r| roles.get(r))
                    .flat_map(|r| r.perms.iter());
                (u.name.clone(), UnifiedPerms::merge(perms))
            })
            .collect();
    }

    /// Durable-state invariants; cheap enough (auth stores are small) to run on every apply.
    pub fn check_invariants(&self) {
        assert!(self.revision >= 1, "auth revision must be >= 1");
        for (name, u) in &self.users {
            assert_eq!(name, &u.name, "user key mismatch");
            assert!(
                u.roles.windows(2).all(|w| w[0] < w[1]),
                "roles of {name} not sorted/unique"
            );
        }
        for (name, r) in &self.roles {
            assert_eq!(name, &r.name, "role key mismatch");
            assert!(
                r.perms.windows(2).all(|w| w[0].key <= w[1].key),
                "perms of {name} not sorted"
            );
        }
        if self.enabled {
            assert!(
                self.users
                    .get(ROOT_USER)
                    .is_some_and(|u| u.has_role(ROOT_ROLE)),
                "auth enabled without root user having the root role"
            );
        }
        assert_eq!(
            self.perm_cache.len(),
            self.users.len(),
            "permission cache out of date"
        );
    }

    /// etcd's `IsAdminPermitted`.
    pub fn is_admin_permitted(&self, info: Option<&AuthInfo>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let info = match info {
            Some(i) if !i.username.is_empty() => i,
            _ => return Err(AuthError::UserEmpty),
        };
        let user = self
            .users
            .get(&info.username)
            .ok_or(AuthError::UserNotFound)?;
        if !user.has_role(ROOT_ROLE) {
            return Err(AuthError::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's `isOpPermitted`: revision check, then root, then the merged permissions.
    pub fn is_op_permitted(
        &self,
        info: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
        perm: PermType,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let info = match info {
            Some(i) if i.revision != 0 => i,
            _ => return Err(AuthError::UserEmpty),
        };
        if info.revision < self.revision {
            return Err(AuthError::AuthOldRevision);
        }
        let user = self
            .users
            .get(&info.username)
            .ok_or(AuthError::PermissionDenied)?;
        if user.has_role(ROOT_ROLE) {
            return Ok(());
        }
        match self.perm_cache.get(&info.username) {
            Some(perms) if perms.permits(key, range_end, perm) => Ok(()),
            _ => Err(AuthError::PermissionDenied),
        }
    }

    /// Range (and Txn compares, Watch): READ on `[key, range_end)`.
    pub fn is_range_permitted(
        &self,
        info: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        self.is_op_permitted(info, key, range_end, PermType::Read)
    }

    /// Put: WRITE on one key.
    pub fn is_put_permitted(&self, info: Option<&AuthInfo>, key: &[u8]) -> Result<(), AuthError> {
        self.is_op_permitted(info, key, &[], PermType::Write)
    }

    /// DeleteRange: WRITE on `[key, range_end)`.
    pub fn is_delete_range_permitted(
        &self,
        info: Option<&AuthInfo>,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthError> {
        self.is_op_permitted(info, key, range_end, PermType::Write)
    }

    /// Checks every key access of a request in order, failing on the first refusal: for a Txn
    /// pass every compare as `Read`, then every op of success, then of failure (nested txns
    /// flattened), as etcd's `checkTxnAuth` does. For a lease revoke or a put with a lease,
    /// pass the lease's keys as `Put` (etcd's `checkLeasePuts`).
    ///
    /// Deviation (stricter than etcd 3.4): a `Put` with `prev_kv` inside a Txn is also checked
    /// for READ, where etcd 3.4 checks it only for a top-level Put.
    pub fn check_accesses<'a>(
        &self,
        info: Option<&AuthInfo>,
        accesses: impl IntoIterator<Item = KeyAccess<'a>>,
    ) -> Result<(), AuthError> {
        for access in accesses {
            match access {
                KeyAccess::Read { key, range_end } => {
                    self.is_range_permitted(info, key, range_end)?
                }
                KeyAccess::Put { key, prev_kv } => {
                    self.is_put_permitted(info, key)?;
                    if prev_kv {
                        self.is_range_permitted(info, key, &[])?;
                    }
                }
                KeyAccess::DeleteRange {
                    key,
                    range_end,
                    prev_kv,
                } => {
                    if prev_kv {
                        self.is_range_permitted(info, key, range_end)?;
                    }
                    self.is_delete_range_permitted(info, key, range_end)?;
                }
            }
        }
        Ok(())
    }

    /// UserGet is allowed for admins and for the user itself (etcd's authApplierV3.UserGet).
    pub fn check_user_get(&self, info: Option<&AuthInfo>, name: &str) -> Result<(), AuthError> {
        match self.is_admin_permitted(info) {
            Err(e) if info.map(|i| i.username.as_str()) != Some(name) => Err(e),
            _ => Ok(()),
        }
    }

    /// RoleGet is allowed for admins and for users holding the role.
    pub fn check_role_get(&self, info: Option<&AuthInfo>, role: &str) -> Result<(), AuthError> {
        match self.is_admin_permitted(info) {
            Err(e) => {
                let holds = info
                    .and_then(|i| self.users.get(&i.username))
                    .is_some_and(|u| u.has_role(role));
                if holds {
                    Ok(())
                } else {
                    Err(e)
                }
            }
            Ok(()) => Ok(()),
        }
    }

    /// Serializable reads skip Raft, so etcd's `doSerialize` refuses any token whose revision
    /// differs from the local store's.
    pub fn check_serializable_revision(&self, info: Option<&AuthInfo>) -> Result<(), AuthError> {
        match info {
            Some(i) if i.revision != 0 && i.revision != self.revision => {
                Err(AuthError::AuthOldRevision)
            }
            _ => Ok(()),
        }
    }

    /// The identity of a verified client certificate (etcd's `AuthInfoFromTLS`): its common
    /// name, at the current revision. Only when --client-cert-auth is on, and never for the
    /// JSON gateway's own connection.
    pub fn auth_info_from_common_name(&self, common_name: &str) -> AuthInfo {
        AuthInfo {
            username: common_name.to_string(),
            revision: self.revision,
        }
    }
}
