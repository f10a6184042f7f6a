//! # treaty-storage
//!
//! The node database (work in progress).
