//! # treaty-net
//!
//! Treaty's network layer (white paper "The peer to peer network"). Today: the certificate
//! hierarchy and peer-certificate verification ([`pki`]). The network map, the mutual-TLS
//! transport and durable messaging build on it.

pub mod pki;
