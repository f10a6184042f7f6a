//! # treaty-node
//!
//! A Treaty node: its configuration ([`config`]), keys ([`keys`]) and the running node
//! ([`node`]): database, network map follower, durable mutual-TLS messaging, flows, the ledger
//! ([`ledger`]) and client RPC ([`rpc`], over TLS: [`rpc_tls`]). The vault assembles here next.

pub mod config;
pub mod criteria_json;
pub mod identities;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod node;
pub mod rpc;
pub mod rpc_tls;
pub mod rpc_vault;
mod scheduler;
