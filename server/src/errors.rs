//! etcd's server errors and their gRPC status codes and messages
//! (etcdserver/api/v3rpc/rpctypes/error.go in etcd 3.4), as one enum.

use tonic::{Code, Status};

/// Every error the server answers with. `status()` maps each to etcd's exact gRPC code and
/// message, so clients (etcdctl, clientv3, the etcd-client crate) recognise them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    EmptyKey,
    KeyNotFound,
    ValueProvided,
    LeaseProvided,
    TooManyOps,
    DuplicateKey,
    Compacted,
    FutureRev,
    NoSpace,
    LeaseNotFound,
    LeaseExists,
    LeaseTtlTooLarge,
    MemberNotFound,
    RequestTooLarge,
    TooManyRequests,
    AuthNotEnabled,
    NoLeader,
    NotLeader,
    LeaderChanged,
    PeerUrlExists,
    MemberExists,
    IdRemoved,
    NotEnoughStartedMembers,
    LearnerNotReady,
    NotLearner,
    BadLeaderTransferee,
    /// A learner refusing a client RPC (etcd 3.4's learner interceptor).
    NotSupportedForLearner,
    Unhealthy,
    Stopped,
    Timeout,
    Unimplemented(&'static str),
    /// A storage or internal failure; the message is logged and sent as `Unknown`.
    Internal(String),
    /// An authentication or authorization failure (etcd's auth errors, from `ferrite-auth`).
    Auth(ferrite_auth::AuthError),
}

impl EtcdError {
    pub fn status(&self) -> Status {
        let (code, msg): (Code, &str) = match self {
            EtcdError::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
            EtcdError::KeyNotFound => (Code::InvalidArgument, "etcdserver: key not found"),
            EtcdError::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
            EtcdError::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
            EtcdError::TooManyOps => (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            EtcdError::DuplicateKey => (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            EtcdError::Compacted => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            EtcdError::FutureRev => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            EtcdError::NoSpace => (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            EtcdError::LeaseNotFound => (Code::NotFound, "etcdserver: requested lease not found"),
            EtcdError::LeaseExists => {
                (Code::FailedPrecondition, "etcdserver: lease already exists")
            }
            EtcdError::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
            EtcdError::NotSupportedForLearner => (
                Code::Unavailable,
                "etcdserver: rpc not supported for learner",
            ),
            EtcdError::MemberNotFound => (Code::NotFound, "etcdserver: member not found"),
            EtcdError::RequestTooLarge => {
                (Code::InvalidArgument, "etcdserver: request is too large")
            }
            EtcdError::TooManyRequests => {
                (Code::ResourceExhausted, "etcdserver: too many requests")
            }
            EtcdError::AuthNotEnabled => (
                Code::FailedPrecondition,
                "etcdserver: authentication is not enabled",
            ),
            EtcdError::NoLeader => (Code::Unavailable, "etcdserver: no leader"),
            EtcdError::NotLeader => (Code::FailedPrecondition, "etcdserver: not leader"),
            EtcdError::LeaderChanged => (Code::Unavailable, "etcdserver: leader changed"),
            EtcdError::PeerUrlExists => (
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            EtcdError::MemberExists => (
                Code::FailedPrecondition,
                "etcdserver: member ID already exist",
            ),
            // etcd's toGRPCErrorMap: membership.ErrIDRemoved -> ErrGRPCMemberNotFound (a retried
            // MemberRemove whose first attempt was applied gets "member not found").
            EtcdError::IdRemoved => (Code::NotFound, "etcdserver: member not found"),
            EtcdError::NotEnoughStartedMembers => (
                Code::FailedPrecondition,
                "etcdserver: re-configuration failed due to not enough started members",
            ),
            EtcdError::LearnerNotReady => (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            EtcdError::NotLearner => (
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            EtcdError::BadLeaderTransferee => (
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            EtcdError::Unhealthy => (Code::Unavailable, "etcdserver: unhealthy cluster"),
            EtcdError::Stopped => (Code::Unavailable, "etcdserver: server stopped"),
            EtcdError::Timeout => (Code::Unavailable, "etcdserver: request timed out"),
            EtcdError::Unimplemented(what) => return Status::new(Code::Unimplemented, *what),
            EtcdError::Internal(msg) => return Status::new(Code::Unknown, msg.clone()),
            EtcdError::Auth(e) => {
                return Status::new(Code::from_i32(e.grpc_code() as i32), e.message())
            }
        };
        Status::new(code, msg)
    }

    /// A stable numeric code for the error inside a Raft apply result (see `internal.rs`).
    pub fn to_code(&self) -> u32 {
        match self {
            EtcdError::EmptyKey => 1,
            EtcdError::KeyNotFound => 2,
            EtcdError::ValueProvided => 3,
            EtcdError::LeaseProvided => 4,
            EtcdError::TooManyOps => 5,
            EtcdError::DuplicateKey => 6,
            EtcdError::Compacted => 7,
            EtcdError::FutureRev => 8,
            EtcdError::NoSpace => 9,
            EtcdError::LeaseNotFound => 10,
            EtcdError::LeaseExists => 11,
            EtcdError::LeaseTtlTooLarge => 12,
            EtcdError::MemberNotFound => 13,
            EtcdError::RequestTooLarge => 14,
            EtcdError::TooManyRequests => 15,
            EtcdError::AuthNotEnabled => 16,
            EtcdError::NoLeader => 17,
            EtcdError::NotLeader => 18,
            EtcdError::Stopped => 19,
            EtcdError::Timeout => 20,
            EtcdError::Unimplemented(_) => 21,
            EtcdError::Internal(_) => 22,
            EtcdError::LeaderChanged => 23,
            EtcdError::PeerUrlExists => 24,
            EtcdError::MemberExists => 25,
            EtcdError::IdRemoved => 26,
            EtcdError::NotEnoughStartedMembers => 27,
            EtcdError::LearnerNotReady => 28,
            EtcdError::NotLearner => 29,
            EtcdError::BadLeaderTransferee => 30,
            EtcdError::Unhealthy => 31,
            EtcdError::Auth(_) => 32,
            EtcdError::NotSupportedForLearner => 33,
        }
    }
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.status().message())
    }
}

impl std::error::Error for EtcdError {}

impl From<ferrite_auth::AuthError> for EtcdError {
    fn from(e: ferrite_auth::AuthError) -> EtcdError {
        EtcdError::Auth(e)
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        e.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_etcd() {
        let s = EtcdError::Compacted.status();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(
            s.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = EtcdError::RequestTooLarge.status();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: request is too large");
        assert_eq!(
            EtcdError::DuplicateKey.status().message(),
            "etcdserver: duplicate key given in txn request"
        );
    }
}
