//! Port mapping on the default gateway: UPnP-IGD, NAT-PMP (RFC 6886) and PCP (RFC 6887).
//!
//! A library module, not tied to nat-type: [`PortMapper`] maps a given local UDP port with one
//! protocol, renews and deletes it; [`Leases`] remembers every mapping that may exist on the
//! router (registered *before* the request goes out), so a caller interrupted by Ctrl-C or an
//! error can delete them all. `punch` uses it for port-mapped candidates.
//!
//! Why hand-written and not a crate (evaluated 2026-12): n0-computer's `portmapper` (what iroh
//! uses) keeps one mapping per client and picks the protocol itself; its probe reports only
//! whether each protocol answered, not the external address each one gives, and it pulls in
//! iroh's metrics and network-monitor crates. `igd-next` does UPnP only and brings its own HTTP
//! client and XML parser. natkit needs, per protocol, the external IP the router claims (also a
//! private, CGNAT or documentation one: that is evidence, not an error), a test mapping and a
//! delete it can rely on (PCP needs the creating nonce; NAT-PMP deletes by internal port), all
//! bounded in time. NAT-PMP and PCP are a few fixed-layout messages ([`natpmp`], [`pcp`]); UPnP is
//! SSDP plus three SOAP calls ([`upnp`]). Neither crate was in the offline registry either.
//!
//! Bounds (README): each UDP exchange (SSDP, NAT-PMP, PCP) sends at 0, 250 and 750 ms and gives
//! up at 1.25 s ([`retry::GIVE_UP`]); each HTTP step of UPnP (description, SOAP call) at 1 s
//! ([`HTTP_TIMEOUT`]). The three protocols run at once.

pub mod natpmp;
pub mod pcp;
pub mod retry;
pub mod upnp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use retry::Schedule;
use upnp::{HttpUrl, SoapResult};

/// Bound on each HTTP step of UPnP (connect, send, read the whole answer).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest HTTP answer read from a router.
const HTTP_MAX: usize = 64 * 1024;
/// Lifetime asked for a test mapping (routers may grant more: miniupnpd's minimum is 120 s).
pub const TEST_LIFETIME_S: u32 = 60;

/// Which protocol a mapping was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Upnp,
    NatPmp,
    Pcp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Upnp => "UPnP-IGD",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Pcp => "PCP",
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PortMapError {
    #[error("no default IPv4 gateway (no default route in /proc/net/route)")]
    NoGateway,
    #[error("no IPv4 router on the path to {0} (its route has no gateway): no router to ask")]
    NoRouterTowards(SocketAddr),
    #[error("{0}: no answer from {1} within {2:?}")]
    Timeout(Protocol, SocketAddr, Duration),
    #[error("{0}: {1} answered port unreachable (not running there)")]
    Refused(Protocol, SocketAddr),
    #[error("{0}: the router refused: {1}")]
    Router(Protocol, String),
    #[error("{0}: {1}")]
    Io(Protocol, String),
}

/// The UPnP WAN connection service found on the gateway.
#[derive(Debug, Clone)]
pub struct UpnpService {
    pub control: HttpUrl,
    pub service_type: String,
}

/// A mapping that exists (or may exist) on the router.
#[derive(Debug, Clone)]
pub struct Lease {
    pub protocol: Protocol,
    pub internal_port: u16,
    /// The address peers can send to; None while the request is still out.
    pub external: Option<SocketAddr>,
    /// Lifetime the router granted, in seconds (UPnP: the lease asked for, which it accepted).
    pub lifetime_s: u32,
    nonce: [u8; 12],
    upnp: Option<UpnpService>,
}

/// Every mapping that may be on the router, so it can be deleted on any exit path.
#[derive(Debug, Clone, Default)]
pub struct Leases(Arc<Mutex<Vec<Lease>>>);

impl Leases {
    fn put(&self, lease: &Lease) {
        if let Ok(mut v) = self.0.lock() {
            v.retain(|l| !(l.protocol == lease.protocol && l.internal_port == lease.internal_port));
            v.push(lease.clone());
        }
    }
    fn forget(&self, protocol: Protocol, port: u16) {
        if let Ok(mut v) = self.0.lock() {
            v.retain(|l| !(l.protocol == protocol && l.internal_port == port));
        }
    }
    /// The mappings not yet deleted.
    pub fn outstanding(&self) -> Vec<Lease> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
    /// Deletes every outstanding mapping (all at once, each bounded); returns the errors.
    pub async fn delete_all(&self, mapper: &PortMapper) -> Vec<PortMapError> {
        let all = self.outstanding();
        let results = futures::future::join_all(all.iter().map(|l| mapper.delete(l, self))).await;
        results.into_iter().filter_map(Result::err).collect()
    }
}

/// The default IPv4 gateway, from the kernel's routing table.
pub fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    gateway_in(&table, Ipv4Addr::UNSPECIFIED, true)
}

/// The IPv4 router packets to `dest` go through (main routing table, longest prefix), or None
/// when `dest` is on-link or loopback: then no router stands between us and it.
pub fn gateway_towards(dest: Ipv4Addr) -> Option<Ipv4Addr> {
    if dest.is_loopback() {
        return None;
    }
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    gateway_in(&table, dest, false)
}

/// `/proc/net/route` text: the gateway of the best route to `dest` (`default_only`: the 0/0 one).
fn gateway_in(table: &str, dest: Ipv4Addr, default_only: bool) -> Option<Ipv4Addr> {
    // The kernel prints addresses and masks as native-endian u32s in hex.
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(|v| Ipv4Addr::from(v.to_ne_bytes()));
    let d = u32::from(dest);
    let mut best: Option<(u32, Ipv4Addr)> = None;
    for l in table.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let (Some(rdest), Some(gw), Some(mask)) = (word(f[1]), word(f[2]), word(f[7])) else { continue };
        let (rdest, mask) = (u32::from(rdest), u32::from(mask));
        if (default_only && mask != 0) || d & mask != rdest {
            continue;
        }
        if best.is_none_or(|(m, _)| mask.count_ones() > m) {
            best = Some((mask.count_ones(), gw));
        }
    }
    best.map(|(_, gw)| gw).filter(|g| !g.is_unspecified())
}

/// Talks to one gateway from one local address.
#[derive(Debug, Clone)]
pub struct PortMapper {
    pub gateway: Ipv4Addr,
    /// This host's address towards the gateway (PCP requires it in the request).
    pub local_ip: Ipv4Addr,
}

impl PortMapper {
    pub fn new(gateway: Ipv4Addr) -> Result<Self, PortMapError> {
        let local_ip = match crate::net::udp::local_ip_towards(SocketAddr::new(gateway.into(), natpmp::SERVER_PORT)) {
            Some(IpAddr::V4(v4)) => v4,
            _ => return Err(PortMapError::NoGateway),
        };
        Ok(PortMapper { gateway, local_ip })
    }

    /// The mapper for the default gateway.
    pub fn for_default_gateway() -> Result<Self, PortMapError> {
        Self::new(default_gateway().ok_or(PortMapError::NoGateway)?)
    }

    fn pmp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.gateway.into(), natpmp::SERVER_PORT)
    }

    /// Sends `req` to the gateway on a fresh connected socket until `parse` accepts an answer.
    async fn udp_exchange<T>(
        &self,
        protocol: Protocol,
        to: SocketAddr,
        req: &[u8],
        parse: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<T, PortMapError> {
        let io = |e: std::io::Error| PortMapError::Io(protocol, format!("UDP to {to}: {e}"));
        let sock = UdpSocket::bind(SocketAddr::new(self.local_ip.into(), 0)).await.map_err(io)?;
        sock.connect(to).await.map_err(io)?;
        let mut sched = Schedule::new(Instant::now());
        let mut buf = [0u8; 1500];
        loop {
            let now = Instant::now();
            if sched.expired(now) {
                return Err(PortMapError::Timeout(protocol, to, retry::GIVE_UP));
            }
            if sched.poll_transmit(now) {
                match sock.send(req).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        return Err(PortMapError::Refused(protocol, to));
                    }
                    Err(e) => return Err(io(e)),
                }
            }
            let wake = tokio::time::Instant::from_std(sched.poll_timeout());
            match tokio::time::timeout_at(wake, sock.recv(&mut buf)).await {
                Err(_) => continue,
                Ok(Ok(n)) => {
                    if let Some(t) = parse(&buf[..n]) {
                        return Ok(t);
                    }
                }
                // The ICMP port unreachable of a router without this protocol.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(PortMapError::Refused(protocol, to));
                }
                Ok(Err(e)) => return Err(io(e)),
            }
        }
    }

    /// NAT-PMP: the external address the router claims.
    pub async fn nat_pmp_external_ip(&self) -> Result<IpAddr, PortMapError> {
        let req = natpmp::external_address_request();
        let r = self.udp_exchange(Protocol::NatPmp, self.pmp_addr(), &req, |b| {
            natpmp::parse(b).filter(|r| !matches!(r, natpmp::Response::Mapped { .. }))
        });
        match r.await? {
            natpmp::Response::ExternalAddress { ip, .. } => Ok(IpAddr::V4(ip)),
            natpmp::Response::Failed { code, .. } => {
                Err(PortMapError::Router(Protocol::NatPmp, format!("result {code} ({})", natpmp::result_name(code))))
            }
            natpmp::Response::Mapped { .. } => Err(PortMapError::Io(Protocol::NatPmp, "unexpected answer".into())),
        }
    }

    /// Finds the gateway's UPnP-IGD WAN connection service (SSDP, then the description).
    pub async fn upnp_discover(&self) -> Result<UpnpService, PortMapError> {
        let p = Protocol::Upnp;
        let gw = self.gateway;
        let io = |e: std::io::Error| PortMapError::Io(p, format!("SSDP: {e}"));
        let sock = UdpSocket::bind(SocketAddr::new(self.local_ip.into(), 0)).await.map_err(io)?;
        let multicast: SocketAddr = upnp::SSDP_ADDR.parse().map_err(|_| PortMapError::Io(p, "SSDP address".into()))?;
        let unicast = SocketAddr::new(gw.into(), 1900);
        let mut sched = Schedule::new(Instant::now());
        let mut buf = [0u8; 2048];
        let location = loop {
            let now = Instant::now();
            if sched.expired(now) {
                return Err(PortMapError::Timeout(p, multicast, retry::GIVE_UP));
            }
            if sched.poll_transmit(now) {
                // Multicast as the spec says, and unicast to the gateway, which some routers
                // (and namespaces without a multicast route) need. A send error on one is not fatal.
                let _ = sock.send_to(&upnp::m_search(), multicast).await;
                let _ = sock.send_to(&upnp::m_search(), unicast).await;
            }
            let wake = tokio::time::Instant::from_std(sched.poll_timeout());
            if let Ok(Ok((n, from))) = tokio::time::timeout_at(wake, sock.recv_from(&mut buf)).await {
                // Only the default gateway: another IGD on the LAN does not map for this route.
                if from.ip() == IpAddr::V4(gw)
                    && let Some(l) = upnp::ssdp_location(&buf[..n])
                {
                    break l;
                }
            }
        };
        let url = HttpUrl::parse(&location)
            .ok_or_else(|| PortMapError::Io(p, format!("SSDP answer has an unusable LOCATION '{location}'")))?;
        // Only the gateway itself is talked to: an answer pointing elsewhere (another host on the
        // LAN, or the internet) is not followed.
        if url.addr.ip() != IpAddr::V4(gw) {
            return Err(PortMapError::Router(
                p,
                format!("LOCATION {location} is not on the gateway {gw}: not followed"),
            ));
        }
        let req = format!("GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", url.path, url.addr);
        let (status, body) = http(url.addr, req.as_bytes()).await?;
        if status != 200 {
            return Err(PortMapError::Io(p, format!("GET {location}: HTTP {status}")));
        }
        let (service_type, ctl) = upnp::wan_service(&body)
            .ok_or_else(|| PortMapError::Router(p, format!("{location} has no WANIPConnection service")))?;
        let control =
            url.join(&ctl).ok_or_else(|| PortMapError::Io(p, format!("unusable controlURL '{ctl}' in {location}")))?;
        if control.addr.ip() != IpAddr::V4(gw) {
            return Err(PortMapError::Router(p, format!("controlURL {ctl} is not on the gateway {gw}: not followed")));
        }
        Ok(UpnpService { control, service_type })
    }

    async fn soap(&self, svc: &UpnpService, action: &str, args: &[(&str, String)]) -> Result<String, PortMapError> {
        let body = upnp::soap_body(&svc.service_type, action, args);
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\nSOAPAction: \"{}#{action}\"\r\n\
Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            svc.control.path,
            svc.control.addr,
            svc.service_type,
            body.len()
        );
        let (status, answer) = http(svc.control.addr, req.as_bytes()).await?;
        match upnp::soap_result(status, &answer) {
            SoapResult::Ok(b) => Ok(b),
            SoapResult::Fault { code, description } => Err(PortMapError::Router(
                Protocol::Upnp,
                format!("{action}: error {} {description}", code.map(|c| c.to_string()).unwrap_or_default()),
            )),
        }
    }

    pub async fn upnp_external_ip(&self, svc: &UpnpService) -> Result<IpAddr, PortMapError> {
        let body = self.soap(svc, "GetExternalIPAddress", &[]).await?;
        upnp::external_ip(&body)
            .ok_or_else(|| PortMapError::Router(Protocol::Upnp, "GetExternalIPAddress gave no address".into()))
    }

    /// Maps UDP `internal_port` of this host with `protocol`. The lease is registered in `leases`
    /// before the request goes out (an answer lost to Ctrl-C still leaves a mapping behind).
    /// UPnP needs the service found by [`Self::upnp_discover`] and asks for the same external port.
    pub async fn map(
        &self,
        protocol: Protocol,
        internal_port: u16,
        lifetime_s: u32,
        upnp_service: Option<&UpnpService>,
        leases: &Leases,
    ) -> Result<Lease, PortMapError> {
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce);
        let mut lease =
            Lease { protocol, internal_port, external: None, lifetime_s, nonce, upnp: upnp_service.cloned() };
        leases.put(&lease);
        let r = self.request_mapping(&mut lease, lifetime_s).await;
        if let Err(PortMapError::Router(..) | PortMapError::Refused(..)) = &r {
            // The router said no (or has no such service): nothing was made.
            leases.forget(protocol, internal_port);
        }
        r.map(|()| {
            leases.put(&lease);
            lease
        })
    }

    /// Asks again for the same mapping (same nonce for PCP), before its lifetime runs out.
    pub async fn renew(&self, lease: &Lease, leases: &Leases) -> Result<Lease, PortMapError> {
        let mut l = lease.clone();
        self.request_mapping(&mut l, lease.lifetime_s.max(1)).await?;
        leases.put(&l);
        Ok(l)
    }

    async fn request_mapping(&self, lease: &mut Lease, lifetime_s: u32) -> Result<(), PortMapError> {
        let port = lease.internal_port;
        match lease.protocol {
            Protocol::NatPmp => {
                let req = natpmp::map_udp_request(port, port, lifetime_s);
                let r = self.udp_exchange(Protocol::NatPmp, self.pmp_addr(), &req, |b| {
                    natpmp::parse(b).filter(|r| !matches!(r, natpmp::Response::ExternalAddress { .. }))
                });
                match r.await? {
                    natpmp::Response::Mapped { external_port, lifetime_s, .. } => {
                        // NAT-PMP's map answer has no address: ask for it (§3.2).
                        let ip = self.nat_pmp_external_ip().await?;
                        lease.external = Some(SocketAddr::new(ip, external_port));
                        lease.lifetime_s = lifetime_s;
                        Ok(())
                    }
                    natpmp::Response::Failed { code, .. } => Err(PortMapError::Router(
                        Protocol::NatPmp,
                        format!("result {code} ({})", natpmp::result_name(code)),
                    )),
                    natpmp::Response::ExternalAddress { .. } => {
                        Err(PortMapError::Io(Protocol::NatPmp, "unexpected answer".into()))
                    }
                }
            }
            Protocol::Pcp => {
                let req = pcp::map_udp_request(lease.nonce, self.local_ip.into(), port, None, lifetime_s);
                let nonce = lease.nonce;
                let r = self.udp_exchange(Protocol::Pcp, self.pmp_addr(), &req, |b| match pcp::parse(b) {
                    // An answer to another request (or a stale one) carries another nonce.
                    Some(pcp::Parsed::Map(m)) if m.nonce != nonce || m.internal_port != port => None,
                    other => other,
                });
                match r.await? {
                    pcp::Parsed::Map(m) if m.result == 0 => {
                        lease.external = Some(SocketAddr::new(m.external_ip, m.external_port));
                        lease.lifetime_s = m.lifetime_s;
                        Ok(())
                    }
                    pcp::Parsed::Map(m) => Err(PortMapError::Router(
                        Protocol::Pcp,
                        format!("result {} ({})", m.result, pcp::result_name(m.result)),
                    )),
                    pcp::Parsed::Error { version: 0, .. } => Err(PortMapError::Router(
                        Protocol::Pcp,
                        "the gateway speaks NAT-PMP only (answered UNSUPP_VERSION)".into(),
                    )),
                    pcp::Parsed::Error { result, .. } => Err(PortMapError::Router(
                        Protocol::Pcp,
                        format!("result {result} ({})", pcp::result_name(result)),
                    )),
                }
            }
            Protocol::Upnp => {
                let svc = lease
                    .upnp
                    .clone()
                    .ok_or_else(|| PortMapError::Io(Protocol::Upnp, "no UPnP service discovered".into()))?;
                let args = upnp::add_port_mapping_args(port, self.local_ip.into(), lifetime_s);
                self.soap(&svc, "AddPortMapping", &args).await?;
                let ip = self.upnp_external_ip(&svc).await?;
                lease.external = Some(SocketAddr::new(ip, port));
                lease.lifetime_s = lifetime_s;
                Ok(())
            }
        }
    }

    /// Deletes a mapping and forgets it in `leases` once the router confirmed (or had none).
    pub async fn delete(&self, lease: &Lease, leases: &Leases) -> Result<(), PortMapError> {
        let port = lease.internal_port;
        let r = match lease.protocol {
            Protocol::NatPmp => {
                let req = natpmp::map_udp_request(port, 0, 0);
                let r = self.udp_exchange(Protocol::NatPmp, self.pmp_addr(), &req, |b| {
                    natpmp::parse(b).filter(|r| !matches!(r, natpmp::Response::ExternalAddress { .. }))
                });
                match r.await {
                    Ok(natpmp::Response::Failed { code, .. }) => Err(PortMapError::Router(
                        Protocol::NatPmp,
                        format!("delete: result {code} ({})", natpmp::result_name(code)),
                    )),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Protocol::Pcp => {
                let req = pcp::map_udp_request(lease.nonce, self.local_ip.into(), port, None, 0);
                let nonce = lease.nonce;
                let r = self.udp_exchange(Protocol::Pcp, self.pmp_addr(), &req, |b| match pcp::parse(b) {
                    Some(pcp::Parsed::Map(m)) if m.nonce != nonce || m.internal_port != port => None,
                    other => other,
                });
                match r.await {
                    Ok(pcp::Parsed::Map(m)) if m.result == 0 => Ok(()),
                    Ok(pcp::Parsed::Map(pcp::MapResponse { result, .. }) | pcp::Parsed::Error { result, .. }) => {
                        Err(PortMapError::Router(
                            Protocol::Pcp,
                            format!("delete: result {result} ({})", pcp::result_name(result)),
                        ))
                    }
                    Err(e) => Err(e),
                }
            }
            Protocol::Upnp => match &lease.upnp {
                Some(svc) => match self.soap(svc, "DeletePortMapping", &upnp::delete_port_mapping_args(port)).await {
                    // 714 NoSuchEntryInArray: the add never took effect; nothing to delete.
                    Err(PortMapError::Router(_, m)) if m.contains("error 714") => Ok(()),
                    r => r.map(|_| ()),
                },
                None => Ok(()),
            },
        };
        if r.is_ok() {
            leases.forget(lease.protocol, port);
        }
        r
    }

    /// The nat-type test of one protocol: is it there, what external IP does the router claim,
    /// can a fresh UDP port be mapped; the mapping is deleted before this returns.
    pub async fn probe(&self, protocol: Protocol, leases: &Leases) -> ProtocolReport {
        let mut rep = ProtocolReport::default();
        // A fresh port, held open while mapped so nothing else on this host takes it.
        let sock = match std::net::UdpSocket::bind(SocketAddr::new(self.local_ip.into(), 0)) {
            Ok(s) => s,
            Err(e) => {
                rep.error = Some(format!("{protocol}: binding a UDP socket: {e}"));
                return rep;
            }
        };
        let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
        let mut svc = None;
        match protocol {
            Protocol::NatPmp => match self.nat_pmp_external_ip().await {
                Ok(ip) => {
                    rep.available = true;
                    rep.external_ip = Some(ip);
                }
                Err(e) => {
                    rep.error = Some(e.to_string());
                    return rep;
                }
            },
            Protocol::Upnp => match self.upnp_discover().await {
                Ok(s) => {
                    rep.available = true;
                    match self.upnp_external_ip(&s).await {
                        Ok(ip) => rep.external_ip = Some(ip),
                        Err(e) => rep.error = Some(e.to_string()),
                    }
                    svc = Some(s);
                }
                Err(e) => {
                    rep.error = Some(e.to_string());
                    return rep;
                }
            },
            // PCP has no "external address" opcode: the MAP answer carries it.
            Protocol::Pcp => {}
        }
        match self.map(protocol, port, TEST_LIFETIME_S, svc.as_ref(), leases).await {
            Ok(lease) => {
                rep.available = true;
                rep.mapped = lease.external;
                rep.lifetime_s = Some(lease.lifetime_s);
                if protocol == Protocol::Pcp {
                    rep.external_ip = lease.external.map(|a| a.ip());
                }
                match self.delete(&lease, leases).await {
                    Ok(()) => rep.deleted = Some(true),
                    Err(e) => {
                        rep.deleted = Some(false);
                        rep.error = Some(e.to_string());
                    }
                }
            }
            Err(e) => {
                // A PCP server that refused (any result code) is still there.
                if protocol == Protocol::Pcp && matches!(e, PortMapError::Router(..)) {
                    rep.available = true;
                }
                rep.error.get_or_insert(e.to_string());
            }
        }
        drop(sock);
        rep
    }
}

/// One HTTP/1.1 exchange with the router, bounded by [`HTTP_TIMEOUT`] and [`HTTP_MAX`].
async fn http(addr: SocketAddr, request: &[u8]) -> Result<(u16, String), PortMapError> {
    let p = Protocol::Upnp;
    let step = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request).await?;
        let mut raw = Vec::new();
        (&mut s).take(HTTP_MAX as u64).read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(HTTP_TIMEOUT, step)
        .await
        .map_err(|_| PortMapError::Io(p, format!("HTTP to {addr}: no complete answer within {HTTP_TIMEOUT:?}")))?
        .map_err(|e| PortMapError::Io(p, format!("HTTP to {addr}: {e}")))?;
    upnp::http_response(&raw).ok_or_else(|| PortMapError::Io(p, format!("HTTP to {addr}: not an HTTP answer")))
}

/// What nat-type reports per protocol (JSON contract, README).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProtocolReport {
    pub available: bool,
    /// The external address the router claims, even private, CGNAT or reserved.
    pub external_ip: Option<IpAddr>,
    /// The test mapping of a fresh UDP port.
    pub mapped: Option<SocketAddr>,
    pub lifetime_s: Option<u32>,
    /// Whether the test mapping was deleted (null when none was made).
    pub deleted: Option<bool>,
    pub error: Option<String>,
}

/// The `port_mapping` object of nat-type.
#[derive(Debug, Clone, Serialize)]
pub struct PortMappingReport {
    pub gateway: Option<Ipv4Addr>,
    pub upnp: ProtocolReport,
    pub nat_pmp: ProtocolReport,
    pub pcp: ProtocolReport,
}

impl PortMappingReport {
    /// All three protocols at once on the router on the way to `server` (for a server on the
    /// internet: the default gateway; an IPv6 server: the default IPv4 gateway). Every test
    /// mapping is deleted, and `leases` holds whatever could not be (or was still in flight when
    /// this was dropped). A server on-link or on loopback has no router in between: nothing is
    /// asked (and no packet goes to the default gateway).
    pub async fn probe(server: SocketAddr, leases: &Leases) -> PortMappingReport {
        let gateway = match server.ip() {
            IpAddr::V4(v4) => gateway_towards(v4).ok_or(PortMapError::NoRouterTowards(server)),
            IpAddr::V6(_) => default_gateway().ok_or(PortMapError::NoGateway),
        };
        let mapper = match gateway.and_then(PortMapper::new) {
            Ok(m) => m,
            Err(e) => {
                let none = ProtocolReport { error: Some(e.to_string()), ..Default::default() };
                return PortMappingReport { gateway: None, upnp: none.clone(), nat_pmp: none.clone(), pcp: none };
            }
        };
        let (upnp, nat_pmp, pcp) = tokio::join!(
            mapper.probe(Protocol::Upnp, leases),
            mapper.probe(Protocol::NatPmp, leases),
            mapper.probe(Protocol::Pcp, leases)
        );
        PortMappingReport { gateway: Some(mapper.gateway), upnp, nat_pmp, pcp }
    }

    /// Whether any protocol made a mapping.
    pub fn any_mapped(&self) -> bool {
        [&self.upnp, &self.nat_pmp, &self.pcp].iter().any(|p| p.mapped.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A host with a default route via 10.1.0.1, its LAN on-link, and a /16 via another router.
    const TABLE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0100010A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth1\t000033C6\t0200010A\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0
";

    #[test]
    fn the_router_towards_a_server_is_found_by_longest_prefix() {
        if cfg!(target_endian = "big") {
            return; // the table above is written as a little-endian kernel prints it
        }
        let gw = |d: &str| gateway_in(TABLE, d.parse().unwrap(), false);
        assert_eq!(gw("203.0.113.1"), Some(Ipv4Addr::new(10, 1, 0, 1)), "default route");
        assert_eq!(gw("10.1.0.7"), None, "on-link: no router in between");
        assert_eq!(gw("198.51.100.9"), Some(Ipv4Addr::new(10, 1, 0, 2)), "the more specific route");
        assert_eq!(gateway_in(TABLE, Ipv4Addr::UNSPECIFIED, true), Some(Ipv4Addr::new(10, 1, 0, 1)));
        assert_eq!(gateway_in("Iface\n", Ipv4Addr::UNSPECIFIED, true), None);
        assert_eq!(gateway_towards(Ipv4Addr::LOCALHOST), None, "loopback never asks a router");
    }
}
