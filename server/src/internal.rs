//! The payload of a Raft entry: `RaftBatch`, a protobuf message of ferrite's own that carries
//! a batch of client requests (etcd's `InternalRaftRequest`, batched). Field numbers are part of
//! the on-disk format (the WAL stores entries); see docs/format.md, "Raft entries and messages".
//!
//! ```text
//! message RaftBatch { repeated InternalRequest requests = 1; }
//! message InternalRequest {
//!   uint64 id = 1;                 // waiter id on the proposing member; 0 = nobody waits
//!   uint64 member_id = 2;          // the proposing member (waiters are local to it)
//!   oneof op {
//!     etcdserverpb.PutRequest put = 3;
//!     etcdserverpb.DeleteRangeRequest delete_range = 4;
//!     etcdserverpb.TxnRequest txn = 5;
//!     etcdserverpb.CompactionRequest compaction = 6;
//!     etcdserverpb.LeaseGrantRequest lease_grant = 7;
//!     etcdserverpb.LeaseRevokeRequest lease_revoke = 8;
//!     etcdserverpb.AlarmRequest alarm = 9;
//!     AuthRequest auth = 10;
//!   }
//!   string username = 20;          // the caller (etcd's RequestHeader.username), "" = none
//!   uint64 auth_revision = 21;     // the auth revision the caller was authenticated at
//!   MemberAttr member_attr = 40;   // membership attributes (publish / peer URL update)
//! }
//! message MemberAttr { uint32 kind = 1; MemberPb member = 2; } // kind 1 publish, 2 peer URLs
//! message AuthRequest { bytes command = 1; } // ferrite_auth::AuthCommand::encode()
//! ```

use ferrite_net::pb::etcdserverpb::{
    AlarmRequest, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    PutRequest, TxnRequest,
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftBatch {
    #[prost(message, repeated, tag = "1")]
    pub requests: Vec<InternalRequest>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InternalRequest {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(oneof = "Op", tags = "3, 4, 5, 6, 7, 8, 9, 10")]
    pub op: Option<Op>,
    /// Who proposed it (etcd's `RequestHeader.username`); checked at apply.
    #[prost(string, tag = "20")]
    pub username: String,
    /// The auth revision the caller's credentials were resolved at (0 = no caller).
    #[prost(uint64, tag = "21")]
    pub auth_revision: u64,
    /// A membership attribute change (publish, peer URL update); `op` is unset then. Applied by
    /// the Raft core (`raft_core.rs`), not by `apply.rs`.
    #[prost(message, optional, tag = "40")]
    pub member_attr: Option<MemberAttr>,
}

impl InternalRequest {
    /// The caller carried in the entry, as the auth store checks it.
    pub fn caller(&self) -> Option<ferrite_auth::AuthInfo> {
        (!self.username.is_empty() || self.auth_revision != 0).then(|| ferrite_auth::AuthInfo {
            username: self.username.clone(),
            revision: self.auth_revision,
        })
    }
}

/// An auth mutation: `ferrite_auth::AuthCommand::encode()` (docs/format.md, "Auth store").
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub command: Vec<u8>,
}

/// `MemberAttr.kind`: a member publishes its name and client URLs.
pub const MEMBER_ATTR_PUBLISH: u32 = 1;
/// `MemberAttr.kind`: MemberUpdate of a member's peer URLs.
pub const MEMBER_ATTR_PEER_URLS: u32 = 2;
/// `MemberAttr.kind` (no `member`): the leader sets the cluster version, once per cluster,
/// after its publish (etcd 3.4's ClusterVersionSet: an entry of its own, so Raft indexes count
/// as etcd's do).
pub const MEMBER_ATTR_CLUSTER_VERSION: u32 = 3;

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberAttr {
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    #[prost(message, optional, tag = "2")]
    pub member: Option<crate::membership::MemberPb>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "3")]
    Put(PutRequest),
    #[prost(message, tag = "4")]
    DeleteRange(DeleteRangeRequest),
    #[prost(message, tag = "5")]
    Txn(TxnRequest),
    #[prost(message, tag = "6")]
    Compaction(CompactionRequest),
    #[prost(message, tag = "7")]
    LeaseGrant(LeaseGrantRequest),
    #[prost(message, tag = "8")]
    LeaseRevoke(LeaseRevokeRequest),
    #[prost(message, tag = "9")]
    Alarm(AlarmRequest),
    #[prost(message, tag = "10")]
    Auth(AuthRequest),
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn batch_roundtrip_and_garbage_is_an_error() {
        let b = RaftBatch {
            requests: vec![InternalRequest {
                id: 7,
                member_id: 9,
                op: Some(Op::Put(PutRequest {
                    key: bytes::Bytes::from_static(b"k"),
                    value: bytes::Bytes::from_static(b"v"),
                    ..Default::default()
                })),
                username: "alice".into(),
                auth_revision: 3,
                member_attr: None,
            }],
        };
        let bytes = b.encode_to_vec();
        assert_eq!(RaftBatch::decode(bytes.as_slice()).unwrap(), b);
        assert!(RaftBatch::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
