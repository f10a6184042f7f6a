//! # treaty-rpc
//!
//! Treaty's client RPC: the gRPC protocol in `proto/treaty/rpc/v1/node.proto` (part of the
//! stable surface; any language with a gRPC library can be a client), compiled into prost
//! messages and a tonic client and server.

#![allow(missing_docs)]

/// Version 1 of the protocol.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("treaty.rpc.v1");
}

/// The `.proto` file, for tools that want to ship it.
pub const NODE_PROTO: &str = include_str!("../proto/treaty/rpc/v1/node.proto");
