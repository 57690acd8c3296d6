//! The driver of `natkit nat-type`: binds each address family's sockets, runs the RFC 5780
//! discovery core ([`Discovery`]) and the binding-lifetime search (§4.5, [`LifetimeSearch`]) over
//! them with the multi-socket UDP driver, and resolves the servers to both families at once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::error::UsageError;
use crate::nat::behavior::{Config, Discovery, Timing};
use crate::nat::lifetime::{LifetimeConfig, LifetimeResult, LifetimeSearch};
use crate::net::datagram::{MultiSocketCore, Transmit, Unreachable};
use crate::net::server_spec::{Family, Host, ServerSpec};
use crate::net::transport::Transport;
use crate::net::udp;
use crate::output::{self, OutputOptions};

/// A server as given and one address it resolved to.
pub type Named = (String, SocketAddr);

/// Parses every server and resolves them all at once (the built-in list is three), each to both
/// families: one DNS wait. A server that asks for TCP or TLS, or a name the user typed that does
/// not resolve, is bad input; a built-in server that does not resolve is skipped (it may be
/// offline). Returns the IPv4 and the IPv6 addresses, in the order given.
pub async fn resolve_servers(
    inputs: &[String],
    builtin: bool,
    family: Family,
) -> Result<(Vec<Named>, Vec<Named>), UsageError> {
    let mut specs = Vec::with_capacity(inputs.len());
    for input in inputs {
        let spec = ServerSpec::parse(input)?;
        if matches!(spec.transport, Some(Transport::Tcp | Transport::Tls)) {
            return Err(UsageError::new(format!(
                "server '{input}' asks for TCP or TLS; NAT behaviour discovery runs over UDP (give HOST[:PORT] or stun:HOST)"
            )));
        }
        specs.push(spec);
    }
    let resolved = futures::future::join_all(specs.iter().map(|s| resolve_both(s, family))).await;
    let (mut v4, mut v6): (Vec<Named>, Vec<Named>) = (Vec::new(), Vec::new());
    for (input, r) in inputs.iter().zip(resolved) {
        match r {
            Ok(Both { v4: a, v6: b }) => {
                v4.extend(a.map(|a| (input.clone(), a)));
                v6.extend(b.map(|b| (input.clone(), b)));
            }
            Err(e) if !builtin => return Err(e),
            Err(e) => tracing::info!("skipping built-in server {input}: {e}"),
        }
    }
    Ok((v4, v6))
}

/// A server's first address of each family (a name may have both, A and AAAA).
pub struct Both {
    pub v4: Option<SocketAddr>,
    pub v6: Option<SocketAddr>,
}

/// One lookup per name (getaddrinfo returns both families at once); `family` limits it (--local).
pub async fn resolve_both(spec: &ServerSpec, family: Family) -> Result<Both, UsageError> {
    let port = spec.port_for(Transport::Udp);
    let all: Vec<SocketAddr> = match &spec.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Name(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| UsageError::new(format!("cannot resolve '{name}': {e}; check the name and your DNS")))?
            .collect(),
    };
    let both = Both {
        v4: all.iter().copied().find(|a| a.is_ipv4() && family.admits(&a.ip())),
        v6: all.iter().copied().find(|a| a.is_ipv6() && family.admits(&a.ip())),
    };
    if both.v4.is_none() && both.v6.is_none() {
        // The same words as a single-family resolution would use.
        spec.resolve(Transport::Udp, family).await?;
    }
    Ok(both)
}

/// One family's discovery: its sockets and core.
pub struct FamilyRun {
    sockets: Vec<tokio::net::UdpSocket>,
    locals: Vec<SocketAddr>,
    cfg: Config,
    pub bind_ip: IpAddr,
}

/// A [`FamilyRun`] under way.
pub struct Running {
    sockets: Vec<tokio::net::UdpSocket>,
    pub core: Discovery,
}

impl FamilyRun {
    /// Binds the sockets the core needs (socket 0 on `local` if given), in the servers' family.
    pub fn bind(cfg: Config, local: Option<SocketAddr>) -> anyhow::Result<FamilyRun> {
        let primary = cfg.servers[0];
        let unspecified =
            if primary.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
        let bind_ip = local.map(|l| l.ip()).unwrap_or(unspecified);
        let mut sockets = Vec::with_capacity(cfg.sockets_needed());
        for i in 0..cfg.sockets_needed() {
            let addr = match (i, local) {
                (0, Some(l)) => l,
                _ => SocketAddr::new(bind_ip, 0),
            };
            let s = udp::bind(addr).map_err(|e| {
                if i == 0 && local.is_some() {
                    anyhow::Error::new(UsageError::new(format!(
                        "cannot bind --local {addr}: {e}; pick an address of this host and a free port"
                    )))
                } else {
                    anyhow::anyhow!("binding a UDP socket on {addr}: {e}")
                }
            })?;
            sockets.push(s);
        }
        // The address a server would see without a NAT: the bound IP, or the one routing picks.
        let host_ip =
            if bind_ip.is_unspecified() { udp::local_ip_towards(primary).unwrap_or(bind_ip) } else { bind_ip };
        let locals: Vec<SocketAddr> = sockets
            .iter()
            .map(|s| s.local_addr().map(|a| SocketAddr::new(host_ip, a.port())))
            .collect::<Result<_, _>>()?;
        Ok(FamilyRun { sockets, locals, cfg, bind_ip })
    }

    pub fn start(self, now: Instant) -> Running {
        Running { sockets: self.sockets, core: Discovery::new(self.cfg, self.locals, now) }
    }
}

impl Running {
    pub async fn drive(&mut self) {
        udp::drive(&self.sockets, &mut self.core).await
    }
}

/// Runs the §4.5 search on its own sockets, with a progress bar bounded by the time left.
pub async fn measure_lifetime(
    server: SocketAddr,
    bind_ip: IpAddr,
    bound: Duration,
    opts: &OutputOptions,
) -> anyhow::Result<LifetimeResult> {
    // Leave room for the last probe's answer after its idle time.
    let max_idle = bound.saturating_sub(Duration::from_secs(2)).max(Duration::from_secs(1));
    let cfg = LifetimeConfig { server, max_idle, parallel: 4, timeout: bound, timing: Timing::default() };
    let mut sockets = Vec::new();
    for _ in 0..cfg.sockets_needed() {
        let addr = SocketAddr::new(bind_ip, 0);
        sockets.push(udp::bind(addr).map_err(|e| anyhow::anyhow!("binding a UDP socket on {addr}: {e}"))?);
    }
    let pb = output::progress(opts, bound.as_secs().max(1), "measuring binding lifetime (s)");
    let mut core = LifetimeDriver { search: LifetimeSearch::new(cfg, Instant::now()), pb: pb.clone() };
    udp::drive(&sockets, &mut core).await;
    pb.finish_and_clear();
    Ok(core.search.result())
}

/// The lifetime core plus the progress bar it moves; everything else goes to the core.
struct LifetimeDriver {
    search: LifetimeSearch,
    pb: indicatif::ProgressBar,
}

impl MultiSocketCore for LifetimeDriver {
    fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.search.poll_transmit(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        // Wake at least every second so the bar moves.
        let tick = Instant::now() + Duration::from_secs(1);
        self.search.poll_timeout().map(|t| t.min(tick))
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.search.handle_timeout(now);
        self.pb.set_position(self.search.progress(now).0.as_secs());
    }
    fn handle_input(&mut self, socket: usize, from: SocketAddr, bytes: &[u8], now: Instant) {
        MultiSocketCore::handle_input(&mut self.search, socket, from, bytes, now)
    }
    fn handle_unreachable(&mut self, socket: usize, destination: SocketAddr, why: Unreachable, now: Instant) {
        self.search.handle_unreachable(socket, destination, why, now)
    }
    fn is_done(&self) -> bool {
        self.search.is_done()
    }
}
