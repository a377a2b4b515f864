//! The Cluster service: MemberList answers the applied membership (`membership.rs`);
//! MemberAdd/Remove/Update/Promote are validated and proposed by the Raft core
//! (`CoreMsg::Member`) and answered once applied, with etcd 3.4's errors.

use std::sync::Arc;

use ferrite_net::pb::etcdserverpb::{
    cluster_server::Cluster, Member, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::state::{MemberChange, Shared};

#[derive(Clone)]
pub struct ClusterService {
    pub shared: Arc<Shared>,
}

/// etcd's check of member URLs (`types.NewURLs`): scheme http/https, host:port, no path.
fn check_urls(urls: &[String]) -> Result<(), Status> {
    let bad = || Status::invalid_argument("etcdserver: given member URLs are invalid");
    if urls.is_empty() {
        return Err(bad());
    }
    for u in urls {
        let rest = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"))
            .ok_or_else(bad)?;
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || port.parse::<u16>().is_err() || rest.contains('/') {
            return Err(bad());
        }
    }
    Ok(())
}

impl ClusterService {
    pub fn members(&self) -> Vec<Member> {
        self.shared.members().to_api()
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
        let r = req.into_inner();
        check_urls(&r.peer_ur_ls)?;
        let id = self
            .shared
            .member_change(MemberChange::Add {
                peer_urls: r.peer_ur_ls,
                is_learner: r.is_learner,
            })
            .await?;
        let members = self.members();
        let member = members.iter().find(|m| m.id == id).cloned();
        Ok(Response::new(MemberAddResponse {
            header: Some(self.shared.header(self.shared.current_revision())),
            member,
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let id = req.into_inner().id;
        self.shared
            .member_change(MemberChange::Remove { id })
            .await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.shared.header(self.shared.current_revision())),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let r = req.into_inner();
        check_urls(&r.peer_ur_ls)?;
        self.shared
            .member_change(MemberChange::UpdatePeerUrls {
                id: r.id,
                peer_urls: r.peer_ur_ls,
            })
            .await?;
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
        let id = req.into_inner().id;
        self.shared
            .member_change(MemberChange::Promote { id })
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.shared.header(self.shared.current_revision())),
            members: self.members(),
        }))
    }
}
