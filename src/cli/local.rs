//! `--local` of `stun-probe` and `nat-type`: the local address to send from, checked by binding
//! it once so a wrong address or a busy port is bad input (exit 2) found before any probe.

use std::net::{IpAddr, SocketAddr};

use crate::error::UsageError;

/// `--local IP` or `IP:PORT`, checked by binding it once: an address this
/// host does not have, or a port in use, is bad input found before any probe.
pub fn parse_local(s: &str) -> Result<SocketAddr, UsageError> {
    let addr = if let Ok(a) = s.parse::<SocketAddr>() {
        a
    } else if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        SocketAddr::new(ip, 0)
    } else {
        return Err(UsageError::new(format!(
            "bad --local '{s}': expected IP or IP:PORT (e.g. 0.0.0.0:5000 or [::1]:0)"
        )));
    };
    match std::net::UdpSocket::bind(addr) {
        Ok(_) => Ok(addr),
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Err(UsageError::new(format!(
            "--local {}: not an address of this host; give one of its interface addresses (see `ip addr`) or 0.0.0.0",
            addr.ip()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(UsageError::new(format!(
            "--local {addr}: the port is in use; give another port or 0 to let the system pick"
        ))),
        Err(e) => Err(UsageError::new(format!("--local {addr}: cannot bind it: {e}"))),
    }
}
