//! # treaty-net
//!
//! Treaty's network layer (white paper "The peer to peer network"): the certificate hierarchy
//! and peer-certificate verification ([`pki`]), node key files ([`keystore`]), signed network
//! data ([`signed`]), the network's descriptive types ([`map`]), the mutual-TLS transport
//! ([`transport`]) and durable messaging over it ([`messaging`]).

pub mod keystore;
pub mod map;
pub mod messaging;
pub mod pki;
pub mod signed;
pub mod sim;
pub mod transport;
