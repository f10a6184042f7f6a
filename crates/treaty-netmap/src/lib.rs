//! # treaty-netmap
//!
//! The network map service and client (work in progress).
