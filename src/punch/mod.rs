//! `punch` pieces: the socket shared by ICE and QUIC, the ICE agent driver,
//! QUIC authenticated by exchanged fingerprints, and what runs over it.

pub mod ice_driver;
pub mod mux;
pub mod quic;
pub mod transfer;
