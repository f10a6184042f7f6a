//! # treaty-node
//!
//! A Treaty node: its configuration ([`config`]), keys ([`keys`]) and the running node
//! ([`node`]): database, network map follower and durable mutual-TLS messaging. Flows, the
//! vault and client RPC assemble here as they arrive.

pub mod config;
pub mod keys;
pub mod ledger;
pub mod node;
pub mod rpc;
