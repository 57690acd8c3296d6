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

use std::net::Ipv4Addr;
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
        let mut lab = Lab { prefix, public_ips, nats: Vec::new() };
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
        lab
    }
}

/// A built lab; dropping it deletes every namespace it made.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    public_ips: Vec<Ipv4Addr>,
    nats: Vec<Nat>,
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
