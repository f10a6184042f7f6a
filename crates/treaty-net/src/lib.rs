//! # treaty-net
//!
//! Treaty's network layer (white paper "The peer to peer network"). Today: the certificate
//! hierarchy and peer-certificate verification ([`pki`]), node key files ([`keystore`]),
//! signed network data ([`signed`]) and the network's descriptive types ([`map`]). The network
//! map service, the mutual-TLS transport and durable messaging build on them.

pub mod keystore;
pub mod map;
pub mod pki;
pub mod signed;
pub mod transport;
