//! The Auth service (etcdserverpb.Auth) with etcd 3.4's semantics, over `ferrite-auth`.
//!
//! Mutations are `AuthCommand`s proposed through Raft with the caller and applied to the
//! `AuthStore` on every member (which checks the caller is root, as etcd's authApplierV3).
//! Passwords are bcrypt-hashed on the `HashPool` threads before proposing, so the WAL never
//! holds a clear-text password and no executor runs bcrypt. Authenticate verifies the password
//! off the executor too, then proposes so that every member registers the token.
//! Get/list calls read the applied store after a linearizable read point (etcd 3.4 sends them
//! through Raft; the answer is the same).

use std::sync::Arc;

use bytes::Bytes;
use ferrite_auth::{AuthCommand, AuthError, PermType, Permission};
use ferrite_net::pb::authpb;
use ferrite_net::pb::etcdserverpb::{auth_server::Auth, *};
use tonic::{Request, Response, Status};

use crate::authz::{self, Credentials};
use crate::errors::EtcdError;
use crate::internal::{AuthRequest, Op};
use crate::state::{ApplyResult, Shared};

#[derive(Clone)]
pub struct AuthService {
    pub shared: Arc<Shared>,
}

/// A bounded number of Authenticate rounds when the auth store keeps moving under it.
const AUTHENTICATE_ATTEMPTS_MAX: usize = 8;

impl AuthService {
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.shared.header(self.shared.current_revision()))
    }

    /// Proposes one auth mutation as `creds`' caller; answers with the token (Authenticate).
    async fn mutate(
        &self,
        cmd: AuthCommand,
        who: Option<ferrite_auth::AuthInfo>,
    ) -> Result<Option<String>, EtcdError> {
        let op = Op::Auth(AuthRequest {
            command: cmd.encode(),
        });
        match self.shared.propose_as(op, who).await? {
            ApplyResult::Auth(a) => Ok(a.token),
            other => Err(EtcdError::Internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    async fn mutate_as<T>(&self, req: &Request<T>, cmd: AuthCommand) -> Result<(), Status> {
        let who = authz::caller(&self.shared, &Credentials::of(req)).await?;
        self.mutate(cmd, who).await?;
        Ok(())
    }

    /// UserAdd / UserChangePassword: the admin check first (so that nobody but root makes the
    /// server hash), then bcrypt on the pool, then the proposal.
    async fn hash_for<T>(
        &self,
        req: &Request<T>,
        name: &str,
        password: &str,
        no_password: bool,
    ) -> Result<(Vec<u8>, Option<ferrite_auth::AuthInfo>), Status> {
        let who = authz::check_admin(&self.shared, &Credentials::of(req)).await?;
        if name.is_empty() {
            return Err(EtcdError::from(AuthError::UserEmpty).into());
        }
        if no_password {
            return Ok((Vec::new(), who));
        }
        let auth = &self.shared.auth;
        let hash = auth
            .pool
            .hash(password.to_string(), auth.bcrypt_cost)
            .await
            .map_err(EtcdError::from)?;
        Ok((hash, who))
    }

    /// Reads answered from the applied store after a linearizable read point.
    async fn read_store<T, R>(
        &self,
        req: &Request<T>,
        f: impl FnOnce(
            &ferrite_auth::AuthStore,
            Option<&ferrite_auth::AuthInfo>,
        ) -> Result<R, AuthError>,
    ) -> Result<R, Status> {
        self.shared.read_index().await?;
        let who = authz::caller(&self.shared, &Credentials::of(req)).await?;
        let st = self.shared.auth.lock();
        Ok(f(&st.store, who.as_ref()).map_err(EtcdError::from)?)
    }
}

fn perm_to_pb(p: Permission) -> authpb::Permission {
    authpb::Permission {
        perm_type: p.perm_type as i32,
        key: Bytes::from(p.key),
        range_end: Bytes::from(p.range_end),
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        self.mutate_as(&req, AuthCommand::AuthEnable).await?;
        Ok(Response::new(AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.mutate_as(&req, AuthCommand::AuthDisable).await?;
        Ok(Response::new(AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        self.shared.read_index().await?;
        let r = req.into_inner();
        let auth = &self.shared.auth;
        for _ in 0..AUTHENTICATE_ATTEMPTS_MAX {
            let looked_up = auth.with_store(|s| s.password_hash_for(&r.name));
            let (hash, checked_revision) = match looked_up {
                Ok(x) => x,
                Err(e) => {
                    if e != AuthError::AuthNotEnabled {
                        tracing::warn!(user = %r.name, error = %e, "invalid authentication was requested");
                    }
                    return Err(EtcdError::from(e).into());
                }
            };
            let ok = auth
                .pool
                .verify(r.password.clone(), hash)
                .await
                .map_err(EtcdError::from)?;
            if !ok {
                tracing::warn!(user = %r.name, "invalid authentication was requested");
                return Err(EtcdError::from(AuthError::AuthFailed).into());
            }
            let prefix = auth.lock().tokens.gen_prefix();
            let token = self
                .mutate(
                    AuthCommand::Authenticate {
                        name: r.name.clone(),
                        simple_token_prefix: prefix,
                    },
                    None,
                )
                .await?;
            if auth.with_store(|s| s.revision()) == checked_revision {
                return Ok(Response::new(AuthenticateResponse {
                    header: self.header(),
                    token: token.unwrap_or_default(),
                }));
            }
        }
        Err(EtcdError::from(AuthError::AuthOldRevision).into())
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let no_password = req
            .get_ref()
            .options
            .as_ref()
            .is_some_and(|o| o.no_password);
        let (hash, who) = self
            .hash_for(
                &req,
                &req.get_ref().name,
                &req.get_ref().password,
                no_password,
            )
            .await?;
        let r = req.into_inner();
        self.mutate(
            AuthCommand::UserAdd {
                name: r.name,
                password_hash: hash,
                no_password,
            },
            who,
        )
        .await?;
        Ok(Response::new(AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let name = req.get_ref().name.clone();
        let roles = self
            .read_store(&req, |s, who| {
                s.check_user_get(who, &name)?;
                s.user_get(&name)
            })
            .await?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let users = self
            .read_store(&req, |s, who| {
                s.is_admin_permitted(who)?;
                Ok(s.user_list())
            })
            .await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let name = req.get_ref().name.clone();
        self.mutate_as(&req, AuthCommand::UserDelete { name })
            .await?;
        Ok(Response::new(AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let (hash, who) = self
            .hash_for(&req, &req.get_ref().name, &req.get_ref().password, false)
            .await?;
        let r = req.into_inner();
        self.mutate(
            AuthCommand::UserChangePassword {
                name: r.name,
                password_hash: hash,
            },
            who,
        )
        .await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let r = req.get_ref();
        let cmd = AuthCommand::UserGrantRole {
            user: r.user.clone(),
            role: r.role.clone(),
        };
        self.mutate_as(&req, cmd).await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let r = req.get_ref();
        let cmd = AuthCommand::UserRevokeRole {
            name: r.name.clone(),
            role: r.role.clone(),
        };
        self.mutate_as(&req, cmd).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let name = req.get_ref().name.clone();
        self.mutate_as(&req, AuthCommand::RoleAdd { name }).await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let role = req.get_ref().role.clone();
        let perms = self
            .read_store(&req, |s, who| {
                s.check_role_get(who, &role)?;
                s.role_get(&role)
            })
            .await?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm: perms.into_iter().map(perm_to_pb).collect(),
        }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let roles = self
            .read_store(&req, |s, who| {
                s.is_admin_permitted(who)?;
                Ok(s.role_list())
            })
            .await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let role = req.get_ref().role.clone();
        self.mutate_as(&req, AuthCommand::RoleDelete { role })
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let r = req.get_ref();
        let p = r.perm.clone().unwrap_or_default();
        let Some(perm_type) = PermType::from_i32(p.perm_type) else {
            return Err(Status::invalid_argument(format!(
                "etcdserver: invalid permission type {}",
                p.perm_type
            )));
        };
        let cmd = AuthCommand::RoleGrantPermission {
            name: r.name.clone(),
            perm: Permission {
                perm_type,
                key: p.key.to_vec(),
                range_end: p.range_end.to_vec(),
            },
        };
        self.mutate_as(&req, cmd).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let r = req.get_ref();
        let cmd = AuthCommand::RoleRevokePermission {
            role: r.role.clone(),
            key: r.key.to_vec(),
            range_end: r.range_end.to_vec(),
        };
        self.mutate_as(&req, cmd).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}
