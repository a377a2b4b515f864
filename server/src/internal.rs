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
//!   }
//!   MemberAttr member_attr = 40;   // membership attributes (publish / peer URL update)
//! }
//! message MemberAttr { uint32 kind = 1; MemberPb member = 2; } // kind 1 publish, 2 peer URLs
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
    #[prost(oneof = "Op", tags = "3, 4, 5, 6, 7, 8, 9")]
    pub op: Option<Op>,
    /// A membership attribute change (publish, peer URL update); `op` is unset then. Applied by
    /// the Raft core (`raft_core.rs`), not by `apply.rs`.
    #[prost(message, optional, tag = "40")]
    pub member_attr: Option<MemberAttr>,
}

/// `MemberAttr.kind`: a member publishes its name and client URLs.
pub const MEMBER_ATTR_PUBLISH: u32 = 1;
/// `MemberAttr.kind`: MemberUpdate of a member's peer URLs.
pub const MEMBER_ATTR_PEER_URLS: u32 = 2;

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
                member_attr: None,
            }],
        };
        let bytes = b.encode_to_vec();
        assert_eq!(RaftBatch::decode(bytes.as_slice()).unwrap(), b);
        assert!(RaftBatch::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
