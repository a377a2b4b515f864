//! The Cluster service for one member: MemberList answers this member; membership changes
//! are refused the way etcd refuses them when they cannot be carried out.

use std::sync::Arc;

use ferrite_net::pb::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::errors::EtcdError;
use crate::state::Shared;

#[derive(Clone)]
pub struct ClusterService {
    pub shared: Arc<Shared>,
}

impl ClusterService {
    pub fn members(&self) -> Vec<Member> {
        vec![Member {
            id: self.shared.member_id,
            name: self.shared.member_name.clone(),
            peer_ur_ls: self.shared.peer_urls.clone(),
            client_ur_ls: self.shared.client_urls.clone(),
            is_learner: false,
        }]
    }

    pub fn member_list(&self) -> MemberListResponse {
        MemberListResponse {
            header: Some(self.shared.header(self.shared.current_revision())),
            members: self.members(),
        }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only when auth is enabled.
        crate::authz::check_admin(&self.shared, &crate::authz::Credentials::of(&req)).await?;
        // Adding a member needs the peer transport (next issue); etcd would then wait for the
        // new member to start. Refuse clearly instead of breaking quorum.
        Err(Status::unavailable(
            "etcdserver: member add is not supported by this single-member ferrite build",
        ))
    }
    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only when auth is enabled.
        crate::authz::check_admin(&self.shared, &crate::authz::Credentials::of(&req)).await?;
        let id = req.into_inner().id;
        if id != self.shared.member_id {
            return Err(EtcdError::MemberNotFound.status());
        }
        Err(Status::failed_precondition(
            "etcdserver: re-configuration failed due to not enough started members",
        ))
    }
    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only when auth is enabled.
        crate::authz::check_admin(&self.shared, &crate::authz::Credentials::of(&req)).await?;
        let r = req.into_inner();
        if r.id != self.shared.member_id {
            return Err(EtcdError::MemberNotFound.status());
        }
        if r.peer_ur_ls != self.shared.peer_urls {
            return Err(Status::unavailable(
                "etcdserver: changing peer URLs is not supported by this single-member ferrite build",
            ));
        }
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.shared.header(self.shared.current_revision())),
            members: self.members(),
        }))
    }
    async fn member_list(
        &self,
        _req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        Ok(Response::new(self.member_list()))
    }
    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        // etcd's checkMembershipOperationPermission: root only when auth is enabled.
        crate::authz::check_admin(&self.shared, &crate::authz::Credentials::of(&req)).await?;
        if req.into_inner().id != self.shared.member_id {
            return Err(EtcdError::MemberNotFound.status());
        }
        Err(Status::failed_precondition(
            "etcdserver: can only promote a learner member",
        ))
    }
}
