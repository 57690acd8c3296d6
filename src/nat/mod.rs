//! NAT behaviour discovery (RFC 5780) as sans-IO cores, and what the results mean.
//!
//! - [`behavior`]: the mapping (§4.3), filtering (§4.4) and hairpinning (§4.6) tests as one state
//!   machine over STUN client transactions on several logical sockets, run concurrently;
//! - [`classify`]: mapping + filtering → the classic name (full cone, symmetric, …);
//! - [`port_allocation`]: the pattern of mapped ports over fresh sockets (port prediction);
//! - [`upstream`]: CGNAT and double NAT from the addresses seen (STUN, port mapping, routes);
//! - [`ipv6`]: the IPv6 half of the report (the same tests on their own sockets);
//! - [`notes`]: why a test was skipped or a finding is unknown, and the sentences that say it;
//! - [`rfc3489`]: CHANGED-ADDRESS, so a classic server (stund) serves the same tests;
//! - [`p2p`]: what it all means, per kind of peer, and the sentences that say it;
//! - [`report`]: the `nat-type` report built from the findings, its table and sentences;
//! - [`watch`]: what changed between two runs (`--every`).

pub mod behavior;
pub mod classify;
pub mod ipv6;
pub mod lifetime;
pub mod notes;
pub mod p2p;
pub mod port_allocation;
pub mod report;
pub mod rfc3489;
pub mod upstream;
pub mod watch;
