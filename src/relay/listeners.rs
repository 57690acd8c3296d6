//! Where `natkit relay` listens and relays from, validated from flags and a
//! coturn turnserver.conf: UDP+TCP listeners, TLS listeners with their
//! identity, the RFC 5780 responder's second IP and port (RFC 5780 §7.2:
//! two IPs and two ports around the first listener), the relayed-socket IPs
//! and port range, and every address that is this host's own (the peer
//! policy refuses them, issue #13).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::cli::RelayArgs;
use crate::error::UsageError;
use crate::error::usage;
use crate::relay::coturn_conf::CoturnConf;
use crate::turn::server::Rfc5780;

/// The relay's sockets, as flags and the file ask for them.
pub struct Listeners {
    /// UDP and TCP listeners.
    pub listen: Vec<SocketAddr>,
    /// UDP only: the RFC 5780 addresses that are not listeners already.
    pub listen_udp_only: Vec<SocketAddr>,
    pub tls_listen: Vec<SocketAddr>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub rfc5780: Option<Rfc5780>,
    /// One IP per address family at most.
    pub relay_ips: Vec<IpAddr>,
    pub ports: (u16, u16),
}

impl Listeners {
    pub fn from_args(args: &RelayArgs, conf: &CoturnConf) -> anyhow::Result<Listeners> {
        let listen = listen(args, conf)?;
        let (tls_listen, tls) = tls(args, conf, &listen)?;
        let rfc5780 = rfc5780(args, conf, listen[0])?;
        let listen_udp_only: Vec<SocketAddr> =
            rfc5780.map(|r| r.addresses().into_iter().filter(|a| !listen.contains(a)).collect()).unwrap_or_default();
        let relay_ips = relay_ips(args, conf, &listen)?;
        let ports = match (&args.ports, conf.min_port, conf.max_port) {
            (Some(p), _, _) => parse_ports(p)?,
            (None, lo, hi) if lo.is_some() || hi.is_some() => {
                parse_ports(&format!("{}-{}", lo.unwrap_or(49152), hi.unwrap_or(65535)))?
            }
            _ => (49152, 65535),
        };
        Ok(Listeners { listen, listen_udp_only, tls_listen, tls, rfc5780, relay_ips, ports })
    }

    /// Every address a client reaches the relay on.
    fn all(&self) -> impl Iterator<Item = &SocketAddr> {
        self.listen.iter().chain(&self.tls_listen).chain(&self.listen_udp_only)
    }

    /// `udp+tcp 127.0.0.1:3478`, `udp ... (RFC 5780)`, `tls ...`: the start line and the report.
    pub fn labels(&self) -> Vec<String> {
        let udp_tcp = self.listen.iter().map(|a| format!("udp+tcp {a}"));
        let udp = self.listen_udp_only.iter().map(|a| format!("udp {a} (RFC 5780)"));
        let tls = self.tls_listen.iter().map(|a| format!("tls {a}"));
        udp_tcp.chain(udp).chain(tls).collect()
    }

    /// The relay's own listening addresses (a wildcard listener stands for
    /// each interface address of its family), and with an external IP its
    /// listening ports there too: behind a 1:1 NAT that IP is this host.
    pub fn own_addresses(&self, external_ip: Option<IpAddr>) -> Vec<SocketAddr> {
        let own_ips = interface_ips();
        let mut own = Vec::new();
        for a in self.all() {
            if a.ip().is_unspecified() {
                own.extend(
                    own_ips.iter().filter(|i| i.is_ipv4() == a.is_ipv4()).map(|i| SocketAddr::new(*i, a.port())),
                );
            } else {
                own.push(*a);
            }
        }
        if let Some(x) = external_ip {
            let ports: Vec<u16> = self.all().map(|a| a.port()).collect();
            for p in ports {
                let a = SocketAddr::new(x, p);
                if !own.contains(&a) {
                    own.push(a);
                }
            }
        }
        own
    }

    /// Every address of this host, whatever port: interfaces (also when
    /// listening on a specific IP), listen, alternate, relay and external IPs.
    /// Loopback is left to its own class of the peer policy.
    pub fn host_ips(&self, external_ip: Option<IpAddr>) -> Vec<IpAddr> {
        let mut ips = interface_ips();
        ips.extend(self.all().map(|a| a.ip()));
        ips.extend(self.relay_ips.iter().copied());
        ips.extend(external_ip);
        ips.retain(|ip| !ip.is_loopback() && !ip.is_unspecified());
        ips.sort();
        ips.dedup();
        ips
    }
}

/// Listeners: flags, else the file, else every interface on 3478.
fn listen(args: &RelayArgs, conf: &CoturnConf) -> anyhow::Result<Vec<SocketAddr>> {
    let mut listen: Vec<SocketAddr> =
        args.listen.iter().map(|s| parse_addr(s, 3478, "--listen")).collect::<Result<_, _>>()?;
    if listen.is_empty() && (!conf.listening_ips.is_empty() || conf.listening_port.is_some()) {
        let ips = if conf.listening_ips.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        } else {
            conf.listening_ips.clone()
        };
        // With an alt-listening-port, coturn's second listening-ip is the RFC 5780 alternate, not a listener of its own.
        let n =
            if conf.alt_listening_port.is_some() && ips.len() == 2 && args.alt_ip.is_none() { 1 } else { ips.len() };
        let port = conf.listening_port.unwrap_or(3478);
        listen = ips[..n].iter().map(|ip| SocketAddr::new(*ip, port)).collect();
    }
    if listen.is_empty() {
        listen.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3478));
        if std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).is_ok() {
            listen.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 3478));
        }
    }
    Ok(listen)
}

/// TLS listeners (flags, else the file's tls-listening-port on each listener IP) and their identity.
#[allow(clippy::type_complexity)]
fn tls(
    args: &RelayArgs,
    conf: &CoturnConf,
    listen: &[SocketAddr],
) -> anyhow::Result<(Vec<SocketAddr>, Option<Arc<rustls::ServerConfig>>)> {
    let mut tls_listen: Vec<SocketAddr> =
        args.tls_listen.iter().map(|s| parse_addr(s, 5349, "--tls-listen")).collect::<Result<_, _>>()?;
    let cert = args.cert.clone().or_else(|| conf.cert.clone());
    let key = args.key.clone().or_else(|| conf.pkey.clone());
    if tls_listen.is_empty()
        && let Some(p) = conf.tls_listening_port
        && cert.is_some()
        && key.is_some()
    {
        tls_listen = listen.iter().map(|a| SocketAddr::new(a.ip(), p)).collect();
    }
    let tls = match (&cert, &key, tls_listen.is_empty()) {
        (_, _, true) => None,
        (Some(c), Some(k), false) => Some(load_tls(c, k)?),
        _ => return usage("TLS listeners need both --cert FILE and --key FILE (PEM)"),
    };
    Ok((tls_listen, tls))
}

/// RFC 5780: two IPs and two ports around the first listener.
fn rfc5780(args: &RelayArgs, conf: &CoturnConf, primary: SocketAddr) -> anyhow::Result<Option<Rfc5780>> {
    let alt_ip = args.alt_ip.or_else(|| {
        (conf.alt_listening_port.is_some() && conf.listening_ips.len() == 2).then(|| conf.listening_ips[1])
    });
    let alt_port = args.alt_port.or(conf.alt_listening_port);
    match (alt_ip, alt_port) {
        (None, None) => Ok(None),
        (None, Some(_)) if args.alt_port.is_some() => {
            usage("--alt-port needs --alt-ip too: RFC 5780 needs a second IP to answer change-IP requests")
        }
        (None, Some(_)) => {
            tracing::warn!("alt-listening-port without a second listening-ip: the RFC 5780 responder stays off");
            Ok(None)
        }
        (Some(ip), port) => {
            if primary.ip().is_unspecified() {
                return usage(format!(
                    "--alt-ip needs a specific first --listen IP (not {}): RFC 5780 answers name the exact address",
                    primary.ip()
                ));
            }
            if ip.is_ipv4() != primary.is_ipv4() || ip == primary.ip() {
                return usage(format!("--alt-ip {ip} must be another IP of the same family as --listen {primary}"));
            }
            let port = port.unwrap_or(primary.port().wrapping_add(1));
            if port == primary.port() {
                return usage(format!("--alt-port {port} must differ from the listen port"));
            }
            Ok(Some(Rfc5780 { ips: [primary.ip(), ip], ports: [primary.port(), port] }))
        }
    }
}

/// Relayed sockets: flags, file, the listen IP, or the first interface address of the family.
fn relay_ips(args: &RelayArgs, conf: &CoturnConf, listen: &[SocketAddr]) -> anyhow::Result<Vec<IpAddr>> {
    let mut relay_ips: Vec<IpAddr> =
        if !args.relay_ip.is_empty() { args.relay_ip.clone() } else { conf.relay_ips.clone() };
    if relay_ips.is_empty() {
        for v4 in [true, false] {
            let Some(l) = listen.iter().find(|a| a.is_ipv4() == v4) else { continue };
            let ip = if !l.ip().is_unspecified() {
                Some(l.ip())
            } else {
                interface_ips().into_iter().find(|i| {
                    i.is_ipv4() == v4
                        && !i.is_loopback()
                        && !matches!(i, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80)
                })
            };
            if let Some(ip) = ip {
                relay_ips.push(ip);
            }
        }
    }
    if relay_ips.iter().filter(|i| i.is_ipv4()).count() > 1 || relay_ips.iter().filter(|i| i.is_ipv6()).count() > 1 {
        return usage("give at most one --relay-ip per address family");
    }
    if relay_ips.is_empty() {
        return usage("no address to relay from: give --relay-ip IP");
    }
    Ok(relay_ips)
}

/// `PORT`, `IP`, `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (see `cli::listen`); a bare port is on every IPv4 address.
pub fn parse_addr(s: &str, default_port: u16, flag: &str) -> Result<SocketAddr, UsageError> {
    crate::cli::listen::parse_listen(s, SocketAddr::from(([0, 0, 0, 0], default_port)))
        .map_err(|e| UsageError::new(format!("bad {flag} {e}")))
}

fn parse_ports(s: &str) -> Result<(u16, u16), UsageError> {
    let bad = || UsageError::new(format!("bad --ports '{s}': expected MIN-MAX with 1024 <= MIN <= MAX <= 65535"));
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let (lo, hi): (u16, u16) = (lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?);
    if lo < 1024 || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

/// Interface addresses, so "listening on 0.0.0.0" still tells the policy which IPs are the relay's own.
fn interface_ips() -> Vec<IpAddr> {
    let mut v = crate::ice::gather::interface_ips();
    v.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    v.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
    v.dedup();
    v
}

fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, UsageError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| UsageError::new(format!("cannot read --cert {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| UsageError::new(format!("bad PEM in --cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(UsageError::new(format!("no certificate in --cert {} (expected PEM)", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| UsageError::new(format!("cannot read a PEM private key from --key {}: {e}", key.display())))?;
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| UsageError::new(format!("--cert and --key do not make a usable TLS identity: {e}")))?;
    Ok(Arc::new(cfg))
}
