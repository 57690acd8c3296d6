//! The NAT lab: real Linux NATs in network namespaces, for integration tests.
//!
//! A [`Lab`] is a guard: building it runs `tests/lab/natlab.sh` to make a public segment
//! (namespace `<prefix>-pub`, a bridge holding the public addresses, 203.0.113.0/24) and, per NAT,
//! a router namespace doing NAT with nftables and a client namespace behind it (10.x), and, with
//! [`LabBuilder::client_behind`], more clients on the same LAN behind an existing router. Its Drop
//! ends what runs inside and deletes every namespace it made, also when a test panics. Each lab
//! gets a unique prefix (`nk<pid>x<n>`), so tests run in parallel.
//!
//! ```ignore
//! let lab = Lab::builder().nat("a", NatKind::PortRestrictedCone).nat("b", NatKind::Symmetric).build();
//! let same_lan = Lab::builder().nat("a", NatKind::PortRestrictedCone).client_behind("b", "a").build();
//! let server = lab.spawn_in(lab.public_ns(), "turnserver", &[..]);
//! let out = lab.run_in(lab.client_ns("a"), natkit_bin, &["nat-type", "--server", "203.0.113.1"]);
//! ```
//! Traffic stays inside these namespaces: nothing is added to the default namespace.
//!
//! Dual stack: [`LabBuilder::v6`] gives a client IPv6 (2001:db8::/32) with its router open, a
//! stateful firewall or NAT66 for v6 ([`V6Kind`]); the public namespace then holds
//! [`LabBuilder::public_ips6`] (default 2001:db8::10 and ::11) and routes between the v6 LANs, so
//! two v6 clients reach each other (a dual-stack pair: symmetric v4 NATs, firewalled v6).
//! ```ignore
//! let lab = Lab::builder()
//!     .nat("a", NatKind::Symmetric).v6("a", V6Kind::Firewall)
//!     .nat("b", NatKind::Symmetric).v6("b", V6Kind::Firewall)
//!     .build();
//! let a6 = lab.client_ip6("a"); // Some(2001:db8:1::2)
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::tools;

/// What the router in front of a client does (RFC 4787 terms in the comments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// No NAT, no filter: the client sits on the public segment.
    Open,
    /// No NAT, but the host drops unsolicited inbound UDP (a stateful firewall).
    Firewall,
    /// Endpoint-independent mapping and filtering (snat + dnat of every port back).
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering (nftables set of contacted addresses).
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering (plain masquerade).
    PortRestrictedCone,
    /// Address-and-port-dependent mapping with random ports (masquerade fully-random).
    Symmetric,
    /// The router drops all UDP.
    UdpBlocked,
}

impl NatKind {
    /// The name natlab.sh takes.
    pub fn as_str(self) -> &'static str {
        match self {
            NatKind::Open => "open",
            NatKind::Firewall => "firewall",
            NatKind::FullCone => "full-cone",
            NatKind::RestrictedCone => "restricted-cone",
            NatKind::PortRestrictedCone => "port-restricted-cone",
            NatKind::Symmetric => "symmetric",
            NatKind::UdpBlocked => "udp-blocked",
        }
    }

    /// Whether the client has a public address of its own (no router namespace).
    pub fn is_routerless(self) -> bool {
        matches!(self, NatKind::Open | NatKind::Firewall)
    }
}

/// Whether a router loops packets sent to its own public address back inside (RFC 5780 §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hairpin {
    #[default]
    Off,
    On,
}

#[derive(Debug, Clone)]
enum ClientSpec {
    /// A client with a router of its own (or an open host).
    Nat { name: String, kind: NatKind, hairpin: Hairpin },
    /// One more client on the LAN of the router made for client `router`.
    Behind { name: String, router: String },
}

impl ClientSpec {
    fn name(&self) -> &str {
        match self {
            ClientSpec::Nat { name, .. } | ClientSpec::Behind { name, .. } => name,
        }
    }
}

/// One client of a built lab and the NAT (or none, for open hosts) in front of it. Clients made with
/// [`LabBuilder::client_behind`] share their router's kind, namespace and public address.
#[derive(Debug, Clone)]
pub struct Nat {
    /// The client's name (as given to `nat` or `client_behind`).
    pub name: String,
    pub kind: NatKind,
    pub hairpin: Hairpin,
    /// The client's namespace.
    pub client_ns: String,
    /// The router's namespace (None for open/firewall hosts).
    pub router_ns: Option<String>,
    /// The client's own address (10.x behind a NAT, 203.0.113.x when open).
    pub client_ip: Ipv4Addr,
    /// The address the public side sees: the router's WAN address, or the client's own.
    pub public_ip: Ipv4Addr,
}

#[derive(Debug, Default)]
pub struct LabBuilder {
    public_ips: Vec<Ipv4Addr>,
    clients: Vec<ClientSpec>,
    udp_timeout: Option<u32>,
    public_ips6: Vec<Ipv6Addr>,
    v6: Vec<(String, V6Kind)>,
}

/// What a client's router does with IPv6 (the client's v4 NAT is unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V6Kind {
    /// Routed, no filter: the client's own v6 address is reachable by anyone.
    Open,
    /// Routed, stateful firewall on the router: inbound only for established/related flows
    /// (what most home routers do for v6). For an open/firewall host: its own host firewall.
    Firewall,
    /// NAT66: masquerade to the router's WAN v6 address (port-preserving, port-restricted filtering).
    Nat66,
}

impl V6Kind {
    /// The name natlab.sh takes.
    pub fn as_str(self) -> &'static str {
        match self {
            V6Kind::Open => "open",
            V6Kind::Firewall => "firewall",
            V6Kind::Nat66 => "nat66",
        }
    }
}

/// A client's IPv6 side in a built lab.
#[derive(Debug, Clone)]
pub struct Nat6 {
    pub name: String,
    pub kind: V6Kind,
    /// The client's own v6 address (2001:db8:INDEX::HOST behind a router, 2001:db8::c:INDEX on the segment).
    pub client_ip: Ipv6Addr,
    /// What the public side sees: the client's address, or the router's WAN address with NAT66.
    pub public_ip: Ipv6Addr,
}

impl LabBuilder {
    /// Addresses of the public namespace (default 203.0.113.1 and .2: an RFC 5780 server needs two).
    /// Use 203.0.113.1-9 or 198.51.100.x; .10-.99 and .100-.189 are taken by routers and open hosts.
    pub fn public_ips(mut self, ips: &[&str]) -> Self {
        self.public_ips = ips.iter().map(|s| s.parse().expect("public_ips: an IPv4 address")).collect();
        self
    }

    /// Every router forgets an idle UDP mapping after `secs` (conntrack UDP timeouts; Linux default 30/120).
    pub fn udp_timeout(mut self, secs: u32) -> Self {
        self.udp_timeout = Some(secs);
        self
    }

    /// A client behind a NAT of this kind (no hairpinning). `name`: 1-10 letters/digits.
    pub fn nat(self, name: &str, kind: NatKind) -> Self {
        self.nat_with(name, kind, Hairpin::Off)
    }

    pub fn nat_with(mut self, name: &str, kind: NatKind, hairpin: Hairpin) -> Self {
        self.check_new_name(name);
        self.clients.push(ClientSpec::Nat { name: name.to_string(), kind, hairpin });
        self
    }

    /// One more client on the same LAN segment as client `router`, behind the same NAT (the same-LAN
    /// case: 10.x.0.3, .4, … next to its 10.x.0.2). `router` must have been added with `nat` and be a
    /// real NAT (not open/firewall). Endpoint-independent filtering (full/restricted cone) and
    /// hairpinning lead to `router`'s own client only; this one gets the NAT's mapping and replies.
    pub fn client_behind(mut self, name: &str, router: &str) -> Self {
        self.check_new_name(name);
        let routed = self
            .clients
            .iter()
            .any(|c| matches!(c, ClientSpec::Nat { name, kind, .. } if name == router && !kind.is_routerless()));
        assert!(routed, "client_behind('{name}', '{router}'): add '{router}' with .nat() first, as a NAT kind");
        self.clients.push(ClientSpec::Behind { name: name.to_string(), router: router.to_string() });
        self
    }

    fn check_new_name(&self, name: &str) {
        assert!(
            !name.is_empty() && name.len() <= 10 && name.chars().all(|c| c.is_ascii_alphanumeric()),
            "lab client name '{name}': use 1-10 letters or digits (it becomes part of interface names)"
        );
        assert!(self.clients.iter().all(|c| c.name() != name), "lab client name '{name}' used twice");
    }

    /// IPv6 for client `name` (added with `nat` or `client_behind`; for a client behind another's
    /// router, the router's v6 kind is that of the first `v6` call naming a client on it).
    pub fn v6(mut self, name: &str, kind: V6Kind) -> Self {
        assert!(self.clients.iter().any(|c| c.name() == name), "v6('{name}'): add the client with .nat() first");
        assert!(self.v6.iter().all(|(n, _)| n != name), "v6('{name}') given twice");
        self.v6.push((name.to_string(), kind));
        self
    }

    /// IPv6 addresses of the public namespace (default 2001:db8::10 and ::11 when any client has v6).
    /// Use 2001:db8::2-::fe except ::ff (the lab's v6 router), outside ::1:x and ::c:x.
    pub fn public_ips6(mut self, ips: &[&str]) -> Self {
        self.public_ips6 = ips.iter().map(|s| s.parse().expect("public_ips6: an IPv6 address")).collect();
        self
    }

    pub fn build(self) -> Lab {
        tools::require("ip", "iproute2");
        tools::require("nft", "nftables");
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("nk{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let public_ips = if self.public_ips.is_empty() {
            vec![Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2)]
        } else {
            self.public_ips
        };
        // The guard exists before the first namespace does, so a failure half-way still cleans up.
        let mut lab = Lab { prefix, public_ips, nats: Vec::new(), public_ips6: Vec::new(), nats6: Vec::new() };
        let mut args: Vec<String> = vec!["public".into(), lab.prefix.clone()];
        args.extend(lab.public_ips.iter().map(|ip| ip.to_string()));
        lab.script(&args);
        let mut routers: u8 = 0;
        for spec in self.clients {
            let nat = match spec {
                ClientSpec::Nat { name, kind, hairpin } => {
                    routers += 1;
                    lab.add_nat(name, kind, hairpin, routers, self.udp_timeout)
                }
                ClientSpec::Behind { name, router } => lab.add_client_behind(name, &router),
            };
            lab.nats.push(nat);
        }
        if !self.v6.is_empty() || !self.public_ips6.is_empty() {
            lab.public_ips6 = if self.public_ips6.is_empty() {
                vec!["2001:db8::10".parse().expect("v6"), "2001:db8::11".parse().expect("v6")]
            } else {
                self.public_ips6
            };
            let mut args: Vec<String> = vec!["public6".into(), lab.prefix.clone()];
            args.extend(lab.public_ips6.iter().map(|ip| ip.to_string()));
            lab.script(&args);
        }
        for (name, kind) in self.v6 {
            let nat6 = lab.add_v6(name, kind);
            lab.nats6.push(nat6);
        }
        lab
    }
}

/// A built lab; dropping it deletes every namespace it made.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    public_ips: Vec<Ipv4Addr>,
    nats: Vec<Nat>,
    public_ips6: Vec<Ipv6Addr>,
    nats6: Vec<Nat6>,
}

/// A process started inside a lab namespace; killed when dropped.
#[derive(Debug)]
pub struct LabChild {
    pub child: Child,
}

impl Drop for LabChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    fn script_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/lab/natlab.sh")
    }

    /// Router number `index` (its 10.index.0.0/24 LAN, 203.0.113.(10+index) WAN) with its first client.
    fn add_nat(&self, name: String, kind: NatKind, hairpin: Hairpin, index: u8, udp_timeout: Option<u32>) -> Nat {
        let hp = if hairpin == Hairpin::On { "1" } else { "0" };
        let mut args =
            vec!["nat".into(), self.prefix.clone(), name.clone(), index.to_string(), kind.as_str().into(), hp.into()];
        if let Some(t) = udp_timeout {
            args.push(t.to_string());
        }
        self.script(&args);
        let routerless = kind.is_routerless();
        let open_ip = Ipv4Addr::new(203, 0, 113, 100 + index);
        Nat {
            client_ns: format!("{}-c-{}", self.prefix, name),
            router_ns: (!routerless).then(|| format!("{}-r-{}", self.prefix, name)),
            client_ip: if routerless { open_ip } else { Ipv4Addr::new(10, index, 0, 2) },
            public_ip: if routerless { open_ip } else { Ipv4Addr::new(203, 0, 113, 10 + index) },
            name,
            kind,
            hairpin,
        }
    }

    /// One more client on the LAN of `router`'s NAT, at the next free host address.
    fn add_client_behind(&self, name: String, router: &str) -> Nat {
        let first = self.nat(router).clone();
        let [_, index, _, _] = first.client_ip.octets();
        let host = 2 + self.nats.iter().filter(|n| n.router_ns == first.router_ns).count() as u8;
        self.script(&[
            "client".into(),
            self.prefix.clone(),
            name.clone(),
            router.into(),
            index.to_string(),
            host.to_string(),
        ]);
        Nat {
            client_ns: format!("{}-c-{}", self.prefix, name),
            client_ip: Ipv4Addr::new(10, index, 0, host),
            name,
            hairpin: Hairpin::Off,
            ..first
        }
    }

    fn script(&self, args: &[String]) {
        let out = Command::new("bash").arg(Self::script_path()).args(args).output().expect("running natlab.sh");
        assert!(
            out.status.success(),
            "natlab.sh {} failed (tests need root, iproute2 and nftables: run scripts/setup.sh as root):\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Dual stack for client `name` (natlab.sh `v6`); a client sharing a router gets v6 from its
    /// router's first `v6` call, so a later call for it only records the addresses.
    fn add_v6(&self, name: String, kind: V6Kind) -> Nat6 {
        let n = self.nat(&name).clone();
        let [_, index, _, host] = n.client_ip.octets();
        let Some(router) = n.router_ns.clone() else {
            let index = n.public_ip.octets()[3] - 100;
            self.script(&["v6".into(), self.prefix.clone(), name.clone(), index.to_string(), kind.as_str().into()]);
            let ip: Ipv6Addr = format!("2001:db8::c:{index}").parse().expect("v6 address");
            return Nat6 { name, kind, client_ip: ip, public_ip: ip };
        };
        let first = self.nats6.iter().find(|m| self.nat(&m.name).router_ns.as_deref() == Some(router.as_str()));
        let kind = match first {
            Some(m) => m.kind,
            None => {
                // natlab.sh v6 takes the router's first client's name; it covers every client on the LAN.
                let owner = self
                    .nats
                    .iter()
                    .find(|m| m.router_ns.as_deref() == Some(router.as_str()))
                    .map(|m| m.name.clone())
                    .unwrap_or_else(|| name.clone());
                self.script(&["v6".into(), self.prefix.clone(), owner, index.to_string(), kind.as_str().into()]);
                kind
            }
        };
        let client_ip: Ipv6Addr = format!("2001:db8:{index}::{host}").parse().expect("v6 address");
        let wan: Ipv6Addr = format!("2001:db8::1:{index}").parse().expect("v6 address");
        Nat6 { name, kind, client_ip, public_ip: if kind == V6Kind::Nat66 { wan } else { client_ip } }
    }

    /// The IPv6 side of client `name`, if it was given one with [`LabBuilder::v6`].
    pub fn nat6(&self, name: &str) -> Option<&Nat6> {
        self.nats6.iter().find(|n| n.name == name)
    }

    /// Client `name`'s own IPv6 address (None without [`LabBuilder::v6`]).
    pub fn client_ip6(&self, name: &str) -> Option<Ipv6Addr> {
        self.nat6(name).map(|n| n.client_ip)
    }

    /// The public namespace's IPv6 addresses (empty in a v4-only lab).
    pub fn public_ips6(&self) -> &[Ipv6Addr] {
        &self.public_ips6
    }

    /// Router `name` forgets like a rebooting home router: its masquerade moves to `ports` and
    /// conntrack is flushed, so live mappings are gone and new ones get ports from the new range.
    /// Only for masquerading kinds (port-restricted cone, symmetric).
    pub fn router_forgets(&self, name: &str, ports: (u16, u16)) {
        tools::require("conntrack", "conntrack");
        self.script(&["forget".into(), self.prefix.clone(), name.into(), ports.0.to_string(), ports.1.to_string()]);
    }

    /// Like [`Self::router_forgets`], and the router comes back as a symmetric NAT (fully random
    /// ports): a port-restricted peer's filter keeps its new ports out, so re-punching fails.
    pub fn router_forgets_and_turns_symmetric(&self, name: &str, ports: (u16, u16)) {
        tools::require("conntrack", "conntrack");
        self.script(&[
            "forget-symmetric".into(),
            self.prefix.clone(),
            name.into(),
            ports.0.to_string(),
            ports.1.to_string(),
        ]);
    }

    /// Router `name` stops forwarding anything, both ways: a path through it dies for good.
    pub fn router_cuts(&self, name: &str) {
        self.script(&["cut".into(), self.prefix.clone(), name.into()]);
    }

    /// Shapes router `name`'s WAN egress with tbf to `rate` (tc syntax, e.g. "40mbit"): uploads from
    /// its client slow down enough to break something in the middle of them.
    pub fn shape_uplink(&self, name: &str, rate: &str) {
        self.script(&["shape".into(), self.prefix.clone(), name.into(), rate.into()]);
    }

    /// The unique name prefix of every namespace of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The public segment's namespace (where servers run).
    pub fn public_ns(&self) -> String {
        format!("{}-pub", self.prefix)
    }

    /// The public namespace's addresses, in the order given.
    pub fn public_ips(&self) -> &[Ipv4Addr] {
        &self.public_ips
    }

    pub fn nat(&self, name: &str) -> &Nat {
        self.nats.iter().find(|n| n.name == name).unwrap_or_else(|| panic!("the lab has no NAT named '{name}'"))
    }

    pub fn client_ns(&self, name: &str) -> String {
        self.nat(name).client_ns.clone()
    }

    /// `program args…` run inside namespace `ns` (via `ip netns exec`).
    pub fn command_in(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut cmd = Command::new(tools::require("ip", "iproute2"));
        cmd.args(["netns", "exec", ns]).arg(program).args(args);
        cmd
    }

    /// Runs to completion inside `ns` and returns its output.
    pub fn run_in(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
        self.command_in(ns, program, args).output().expect("running a command in a lab namespace")
    }

    /// Starts a long-running process inside `ns` (stdout/stderr discarded); killed on drop.
    pub fn spawn_in(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> LabChild {
        let child = self
            .command_in(ns, program, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a process in a lab namespace");
        LabChild { child }
    }

    /// The natkit binary of this test run, run inside `ns`.
    pub fn natkit_in(&self, ns: &str, args: &[&str]) -> Output {
        self.run_in(ns, env!("CARGO_BIN_EXE_natkit"), args)
    }

    /// Whether something listens on UDP `port` inside `ns` (for readiness checks).
    pub fn udp_listening(&self, ns: &str, ip: &str, port: u16) -> bool {
        let out = self.run_in(ns, "ss", &["-Hlun"]);
        let want = format!("{ip}:{port}");
        String::from_utf8_lossy(&out.stdout).split_whitespace().any(|w| w == want)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script_path())
            .args(["down", &self.prefix])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
