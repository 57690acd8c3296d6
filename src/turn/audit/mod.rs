//! `natkit turn-alloc`'s audit of a TURN server (RFC 8656): the quality metrics of
//! the relayed path.

pub mod quality;
