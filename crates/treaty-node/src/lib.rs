//! # treaty-node
//!
//! A Treaty node. Today: its configuration file ([`config`]). The node process (storage,
//! network, flows, RPC) is assembled here as those crates land.

pub mod config;
