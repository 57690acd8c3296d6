//! Drivers: sockets, stream framing, TLS and name resolution. Protocol logic
//! lives in the sans-IO cores; these modules only move bytes and time.

pub mod address_class;
pub mod conn_limit;
pub mod datagram;
pub mod metrics_http;
pub mod mmsg;
pub mod nat_discovery;
pub mod port_holder;
pub mod relay_driver;
pub mod relay_tcp;
pub mod server_spec;
pub mod stream;
pub mod stream_queue;
pub mod tls;
pub mod transport;
pub mod turn_session;
pub mod udp;
