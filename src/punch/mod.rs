//! `punch` pieces: the socket shared by ICE, TURN and QUIC, the ICE agent driver,
//! the TURN relay link, QUIC authenticated by exchanged fingerprints, and what runs over it.

pub mod batch;
pub mod birthday;
pub mod birthday_driver;
pub mod consent;
pub mod dual_stack;
pub mod ice_driver;
pub mod leased_file;
pub mod mux;
pub mod observation;
pub mod plan;
pub mod port_mapping;
pub mod quic;
pub mod race;
pub mod relay_link;
pub mod report;
pub mod session;
pub mod transfer;
