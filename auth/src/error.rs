//! etcd's auth errors, with the exact strings and gRPC status codes of etcd 3.4's
//! `etcdserver/api/v3rpc/rpctypes/error.go` (the `etcdserver: ...` forms a client sees).

use std::fmt;

/// gRPC status codes used by the auth errors (numbering of `google.golang.org/grpc/codes`
/// and of `tonic::Code`, so the server can convert with `tonic::Code::from_i32(code as i32)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    Unknown = 2,
    InvalidArgument = 3,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Unauthenticated = 16,
}

/// Every error the auth store, the token providers and the hashing pool return to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthError {
    RootUserNotExist,
    RootRoleNotExist,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
    RoleAlreadyExist,
    RoleNotFound,
    RoleEmpty,
    /// Wrong password, or unknown user.
    AuthFailed,
    /// A password was given for a user created with --no-password. etcd 3.4 does not map this
    /// one to an `etcdserver:` error: clients see the raw `auth:` text with code Unknown.
    NoPasswordUser,
    PermissionDenied,
    RoleNotGranted,
    PermissionNotGranted,
    AuthNotEnabled,
    InvalidAuthToken,
    /// Deleting root, deleting the root role or revoking root from root while auth is enabled.
    InvalidAuthMgmt,
    /// The request was authorized against an older auth revision than the store's.
    AuthOldRevision,
    /// The password hashing pool's queue is full (etcd's `ErrGRPCRequestTooManyRequests`).
    TooManyRequests,
}

impl AuthError {
    /// The message a client sees, byte for byte as etcd 3.4 sends it.
    pub const fn message(self) -> &'static str {
        match self {
            AuthError::RootUserNotExist => "etcdserver: root user does not exist",
            AuthError::RootRoleNotExist => "etcdserver: root user does not have root role",
            AuthError::UserAlreadyExist => "etcdserver: user name already exists",
            AuthError::UserEmpty => "etcdserver: user name is empty",
            AuthError::UserNotFound => "etcdserver: user name not found",
            AuthError::RoleAlreadyExist => "etcdserver: role name already exists",
            AuthError::RoleNotFound => "etcdserver: role name not found",
            AuthError::RoleEmpty => "etcdserver: role name is empty",
            AuthError::AuthFailed => {
                "etcdserver: authentication failed, invalid user ID or password"
            }
            AuthError::NoPasswordUser => {
                "auth: authentication failed, password was given for no password user"
            }
            AuthError::PermissionDenied => "etcdserver: permission denied",
            AuthError::RoleNotGranted => "etcdserver: role is not granted to the user",
            AuthError::PermissionNotGranted => "etcdserver: permission is not granted to the role",
            AuthError::AuthNotEnabled => "etcdserver: authentication is not enabled",
            AuthError::InvalidAuthToken => "etcdserver: invalid auth token",
            AuthError::InvalidAuthMgmt => "etcdserver: invalid auth management",
            AuthError::AuthOldRevision => "etcdserver: revision of auth store is old",
            AuthError::TooManyRequests => "etcdserver: too many requests",
        }
    }

    /// The gRPC status code etcd 3.4 sends with this error.
    pub const fn grpc_code(self) -> GrpcCode {
        match self {
            AuthError::RootUserNotExist
            | AuthError::RootRoleNotExist
            | AuthError::UserAlreadyExist
            | AuthError::UserNotFound
            | AuthError::RoleAlreadyExist
            | AuthError::RoleNotFound
            | AuthError::RoleNotGranted
            | AuthError::PermissionNotGranted
            | AuthError::AuthNotEnabled => GrpcCode::FailedPrecondition,
            AuthError::UserEmpty
            | AuthError::RoleEmpty
            | AuthError::AuthFailed
            | AuthError::InvalidAuthMgmt
            | AuthError::AuthOldRevision => GrpcCode::InvalidArgument,
            AuthError::PermissionDenied => GrpcCode::PermissionDenied,
            AuthError::InvalidAuthToken => GrpcCode::Unauthenticated,
            AuthError::TooManyRequests => GrpcCode::ResourceExhausted,
            AuthError::NoPasswordUser => GrpcCode::Unknown,
        }
    }

    /// All variants, for tests and for building lookup tables.
    pub const ALL: [AuthError; 18] = [
        AuthError::RootUserNotExist,
        AuthError::RootRoleNotExist,
        AuthError::UserAlreadyExist,
        AuthError::UserEmpty,
        AuthError::UserNotFound,
        AuthError::RoleAlreadyExist,
        AuthError::RoleNotFound,
        AuthError::RoleEmpty,
        AuthError::AuthFailed,
        AuthError::NoPasswordUser,
        AuthError::PermissionDenied,
        AuthError::RoleNotGranted,
        AuthError::PermissionNotGranted,
        AuthError::AuthNotEnabled,
        AuthError::InvalidAuthToken,
        AuthError::InvalidAuthMgmt,
        AuthError::AuthOldRevision,
        AuthError::TooManyRequests,
    ];
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for AuthError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_distinct_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for e in AuthError::ALL {
            let prefix = if e == AuthError::NoPasswordUser {
                "auth: "
            } else {
                "etcdserver: "
            };
            assert!(e.to_string().starts_with(prefix), "{e:?}");
            assert!(seen.insert(e.message()), "duplicate message {e:?}");
        }
    }

    #[test]
    fn codes_match_rpctypes() {
        assert_eq!(AuthError::PermissionDenied.grpc_code() as i32, 7);
        assert_eq!(AuthError::InvalidAuthToken.grpc_code() as i32, 16);
        assert_eq!(AuthError::AuthFailed.grpc_code() as i32, 3);
        assert_eq!(AuthError::RootUserNotExist.grpc_code() as i32, 9);
        assert_eq!(
            AuthError::AuthOldRevision.grpc_code(),
            GrpcCode::InvalidArgument
        );
    }
}
