//! The Auth service while authentication is off and no users exist (the security issue will
//! replace this): answers exactly what etcd 3.4 answers in that state — enabling fails for
//! want of a root user, disabling is a no-op, authenticating is refused, lists are empty,
//! lookups find nothing. Creating users and roles is refused with a clear message.

use std::sync::Arc;

use ferrite_net::pb::etcdserverpb::{auth_server::Auth, *};
use tonic::{Code, Request, Response, Status};

use crate::errors::EtcdError;
use crate::state::Shared;

#[derive(Clone)]
pub struct AuthService {
    pub shared: Arc<Shared>,
}

fn not_supported() -> Status {
    Status::new(
        Code::Unavailable,
        "etcdserver: user and role management is not supported by this ferrite build yet",
    )
}

impl AuthService {
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.shared.header(self.shared.current_revision()))
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        _: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        Err(Status::new(
            Code::FailedPrecondition,
            "etcdserver: root user does not exist",
        ))
    }
    async fn auth_disable(
        &self,
        _: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        Ok(Response::new(AuthDisableResponse {
            header: self.header(),
        }))
    }
    async fn authenticate(
        &self,
        _: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        Err(EtcdError::AuthNotEnabled.status())
    }
    async fn user_add(
        &self,
        _: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        Err(not_supported())
    }
    async fn user_get(
        &self,
        _: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        Err(Status::new(
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ))
    }
    async fn user_list(
        &self,
        _: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users: Vec::new(),
        }))
    }
    async fn user_delete(
        &self,
        _: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        Err(Status::new(
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ))
    }
    async fn user_change_password(
        &self,
        _: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        Err(Status::new(
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ))
    }
    async fn user_grant_role(
        &self,
        _: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        Err(Status::new(
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ))
    }
    async fn user_revoke_role(
        &self,
        _: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        Err(Status::new(
            Code::FailedPrecondition,
            "etcdserver: user name not found",
        ))
    }
    async fn role_add(
        &self,
        _: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        Err(not_supported())
    }
    async fn role_get(
        &self,
        _: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        Err(Status::new(
            Code::FailedPrecondition,
            "etcdserver: role name not found",
        ))
    }
    async fn role_list(
        &self,
        _: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles: Vec::new(),
        }))
    }
    async fn role_delete(
        &self,
        _: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        Err(Status::new(
            Code::FailedPrecondition,
            "etcdserver: role name not found",
        ))
    }
    async fn role_grant_permission(
        &self,
        _: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        Err(Status::new(
            Code::FailedPrecondition,
            "etcdserver: role name not found",
        ))
    }
    async fn role_revoke_permission(
        &self,
        _: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        Err(Status::new(
            Code::FailedPrecondition,
            "etcdserver: role name not found",
        ))
    }
}
