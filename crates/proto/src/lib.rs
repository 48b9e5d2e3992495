//! Generated gRPC code for the platform's three internal APIs, one module per
//! versioned protobuf package under `proto/`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// `aia.common.v1`: messages shared by the APIs.
pub mod common {
    pub mod v1 {
        tonic::include_proto!("aia.common.v1");
    }
}

/// `aia.auth.v1`: users, credentials, access tokens.
pub mod auth {
    pub mod v1 {
        tonic::include_proto!("aia.auth.v1");
    }
}

/// `aia.session.v1`: refresh-token sessions and the blacklist.
pub mod session {
    pub mod v1 {
        tonic::include_proto!("aia.session.v1");
    }
}

/// `aia.audit.v1`: security events.
pub mod audit {
    pub mod v1 {
        tonic::include_proto!("aia.audit.v1");
    }
}
