//! One grammar for every address a server listens on (`--listen`,
//! `--tls-listen`, `--metrics`): `PORT`, `IP`, `IP:PORT`, `[IPv6]:PORT`, or
//! `HOST:PORT` with a name such as `localhost` (resolved once, at start).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// Parses `s`; a part left out is taken from `default` (a bare port listens
/// on the default IP, a bare IP on the default port). The error names the
/// accepted forms with examples.
pub fn parse_listen(s: &str, default: SocketAddr) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(default.ip(), port));
    }
    if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default.port()));
    }
    let bad = |why: &str| {
        format!(
            "'{s}' {why}: give PORT, IP, IP:PORT, [IPv6]:PORT or HOST:PORT (e.g. {port}, {ip}, {ip}:{port}, [::1]:{port}, localhost:{port})",
            port = default.port(),
            ip = default.ip()
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("is not an address"))?;
    let port: u16 = port.parse().map_err(|_| bad("has no valid port"))?;
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(bad("is not an address"));
    }
    let mut addrs = (host, port).to_socket_addrs().map_err(|e| bad(&format!("does not resolve ({e})")))?;
    addrs.next().ok_or_else(|| bad("resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "127.0.0.1:8080";

    fn p(s: &str) -> Result<SocketAddr, String> {
        parse_listen(s, DEFAULT.parse().unwrap())
    }

    #[test]
    fn every_form_of_a_listen_address() {
        assert_eq!(p("9000").unwrap(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(p("0.0.0.0").unwrap(), "0.0.0.0:8080".parse().unwrap());
        assert_eq!(p("0.0.0.0:9000").unwrap(), "0.0.0.0:9000".parse().unwrap());
        assert_eq!(p("[::1]:9000").unwrap(), "[::1]:9000".parse().unwrap());
        assert_eq!(p("::").unwrap(), "[::]:8080".parse().unwrap());
        assert!(p("localhost:9000").unwrap().ip().is_loopback());
    }

    #[test]
    fn a_bad_address_says_what_is_accepted() {
        let e = p("8080:x").unwrap_err();
        assert!(e.contains("PORT, IP, IP:PORT") && e.contains("localhost:8080"), "{e}");
        assert!(p("99999").is_err());
        assert!(p("bad host!:1").is_err());
    }
}
