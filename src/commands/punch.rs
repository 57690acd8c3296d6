//! `natkit punch`: two peers meet in a room on `natkit signal`, gather
//! candidates (host, server-reflexive), exchange them with ICE credentials
//! and a QUIC certificate fingerprint, run ICE connectivity checks (RFC 8445,
//! str0m's agent) from the one socket both will use, and then speak QUIC on
//! that very socket through the hole the checks opened.
//!
//! Roles follow the video-chat page: whoever joins second offers, is ICE
//! controlling, and is the QUIC client.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use is::{Candidate, CandidateKind, IceAgent, IceCreds};
use serde::Serialize;

use crate::cli::PunchArgs;
use crate::error::{Status, UsageError, usage};
use crate::ice::checks::CheckRecord;
use crate::ice::description::{Description, VERSION};
use crate::ice::gather;
use crate::net::server::{Family, ServerSpec};
use crate::net::tls::TlsOptions;
use crate::net::transport::Transport;
use crate::net::udp;
use crate::output::{self, OutputOptions, Render};
use crate::punch::ice_driver::{self, IceEvent};
use crate::punch::mux::MuxSocket;
use crate::punch::{quic, transfer};
use crate::signal::client::{ClientOptions, SignalClient};
use crate::signal::protocol::{ClientMessage, PeerId, RoomId, ServerMessage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Direct,
    Relay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Joined second: offers, controls ICE, is the QUIC client.
    Offerer,
    Answerer,
}

#[derive(Debug, Clone, Serialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// host, srflx, prflx or relay (RFC 8445 §5.1.1)
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Serialize)]
pub struct PunchReport {
    pub room: String,
    pub role: Option<Role>,
    pub path: Option<PathKind>,
    pub local: Option<Endpoint>,
    pub remote: Option<Endpoint>,
    /// Room joined → QUIC handshake done.
    pub connect_ms: Option<f64>,
    pub candidates: Vec<String>,
    pub remote_candidates: Vec<String>,
    /// Our mapped address changed with the STUN server (a hard NAT).
    pub mapping_varies: Option<bool>,
    pub checks: Vec<CheckRecord>,
    pub bytes: u64,
    pub throughput_mbps: Option<f64>,
    pub sha256: Option<String>,
    pub error: Option<String>,
}

enum Mode {
    Connect,
    Send(std::path::PathBuf),
    Recv(std::path::PathBuf),
    Stdio,
}

pub async fn run(args: PunchArgs, opts: &OutputOptions) -> anyhow::Result<Status> {
    let report = punch(&args, opts).await?;
    output::emit(&report, opts)?;
    Ok(Status::from_ok(report.error.is_none()))
}

/// Validates input (errors exit 2), then runs; a failure after that is in `report.error`.
pub async fn punch(args: &PunchArgs, opts: &OutputOptions) -> anyhow::Result<PunchReport> {
    if !(args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 3600.0) {
        return usage(format!("--timeout {} is out of range: give seconds between 0 and 3600", args.timeout));
    }
    let room = RoomId(args.room.clone());
    if let Some(p) = room.problem() {
        return usage(format!("bad --room '{}': {p}", args.room));
    }
    crate::signal::client::normalize_url(&args.signal).map_err(|e| UsageError::new(e.to_string()))?;
    let stun_specs = args.stun.iter().map(|s| ServerSpec::parse(s)).collect::<Result<Vec<_>, _>>()?;
    let mode = match (&args.send, &args.recv, args.stdio) {
        (Some(p), _, _) => {
            if !p.is_file() {
                return usage(format!("--send {}: no such file", p.display()));
            }
            Mode::Send(p.clone())
        }
        (_, Some(p), _) => Mode::Recv(p.clone()),
        (_, _, true) => Mode::Stdio,
        _ => Mode::Connect,
    };

    let mut report = PunchReport {
        room: args.room.clone(),
        role: None,
        path: None,
        local: None,
        remote: None,
        connect_ms: None,
        candidates: Vec::new(),
        remote_candidates: Vec::new(),
        mapping_varies: None,
        checks: Vec::new(),
        bytes: 0,
        throughput_mbps: None,
        sha256: None,
        error: None,
    };
    if let Err(e) = session(args, opts, &room, &stun_specs, mode, &mut report).await {
        report.error = Some(format!("{e:#}"));
    }
    Ok(report)
}

async fn session(
    args: &PunchArgs,
    opts: &OutputOptions,
    room: &RoomId,
    stun_specs: &[ServerSpec],
    mode: Mode,
    report: &mut PunchReport,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let copts = ClientOptions { tls: TlsOptions { insecure: args.insecure, ca: None } };
    let (mut signal, membership) = SignalClient::connect_and_join(&args.signal, &copts, room, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let joined = Instant::now();
    let role = if membership.peers.is_empty() { Role::Answerer } else { Role::Offerer };
    report.role = Some(role);
    tracing::info!(id = %membership.id.as_str(), ?role, "joined room {}", room.as_str());

    // One socket for everything: gathering, checks, QUIC.
    let socket = udp::bind("0.0.0.0:0".parse().context("bind address")?).context("binding the UDP socket")?;
    let port = socket.local_addr()?.port();
    let ips = if args.host_ips.is_empty() {
        gather::host_ips(&gather::interface_ips(), false)
    } else {
        args.host_ips.clone()
    };
    let mut local_candidates: Vec<Candidate> = Vec::new();
    for ip in &ips {
        local_candidates.push(Candidate::host(SocketAddr::new(*ip, port), "udp").context("host candidate")?);
    }
    let mut stun_servers = Vec::new();
    for spec in stun_specs {
        stun_servers.push(spec.resolve(Transport::Udp, Family::V4).await?);
    }
    if stun_servers.is_empty() {
        for url in membership.ice_servers.iter().flat_map(|s| s.urls.iter()) {
            if let Ok(spec) = ServerSpec::parse(url)
                && url.starts_with("stun:")
                && let Ok(a) = spec.resolve(Transport::Udp, Family::V4).await
            {
                stun_servers.push(a);
            }
        }
    }
    let reflexive = gather::server_reflexive(&socket, &stun_servers, Duration::from_secs(2)).await;
    report.mapping_varies = gather::mapping_varies(&reflexive);
    for r in &reflexive {
        let base = SocketAddr::new(udp::local_ip_towards(r.server).unwrap_or(IpAddr::from([0, 0, 0, 0])), port);
        if local_candidates.iter().any(|c| c.addr() == r.mapped) {
            continue; // not behind a NAT toward this server: the host candidate covers it
        }
        if let Ok(c) = Candidate::server_reflexive(r.mapped, base, "udp")
            && !local_candidates.iter().any(|x| x.addr() == c.addr())
        {
            local_candidates.push(c);
        }
    }
    if local_candidates.is_empty() {
        anyhow::bail!("no usable local address: no interface is up (use --host-ip)");
    }
    report.candidates = local_candidates.iter().map(|c| c.to_sdp_string()).collect();

    let identity = quic::Identity::generate()?;
    let creds = IceCreds::new();
    let ours = Description {
        natkit: VERSION,
        ufrag: creds.ufrag.clone(),
        pwd: creds.pass.clone(),
        fingerprint: identity.fingerprint.clone(),
        candidates: report.candidates.clone(),
        mapping_varies: report.mapping_varies,
    };

    // Offer/answer through the room.
    let (peer, theirs) = exchange(&mut signal, role, &membership.peers, &ours, room, timeout).await?;
    report.remote_candidates = theirs.candidates.clone();

    let mut agent = IceAgent::new(creds);
    agent.set_controlling(role == Role::Offerer);
    for c in &local_candidates {
        agent.add_local_candidate(c.clone());
    }
    agent.set_remote_credentials(IceCreds { ufrag: theirs.ufrag.clone(), pass: theirs.pwd.clone() });
    let mut remote_candidates = Vec::new();
    for line in &theirs.candidates {
        match Candidate::from_sdp_string(line) {
            Ok(c) => {
                remote_candidates.push(c.clone());
                agent.add_remote_candidate(c);
            }
            Err(e) => tracing::warn!("ignoring the peer's candidate '{line}': {e}"),
        }
    }

    udp::disable_recverr(&socket).context("configuring the UDP socket")?;
    let socket = Arc::new(socket);
    let (mux, stun_rx) = MuxSocket::new(socket.clone());
    let mut ice = ice_driver::spawn(agent, socket.clone(), stun_rx);
    let server_cfg = match role {
        Role::Answerer => Some(quic::server_config(&identity, &theirs.fingerprint)?),
        Role::Offerer => None,
    };
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        crate::punch::mux::endpoint_config(),
        server_cfg,
        mux,
        Arc::new(quinn::TokioRuntime),
    )?;

    let deadline = tokio::time::Instant::now() + timeout;
    let conn = match role {
        Role::Offerer => {
            let nominated = tokio::time::timeout_at(deadline, wait_nominated(&mut ice.events)).await.ok().flatten();
            let (local, remote) = nominated.ok_or_else(|| no_path_error(&ice.checks(), &theirs, timeout))?;
            report.local = Some(endpoint_of(local, &local_candidates, true));
            report.remote = Some(endpoint_of(remote, &remote_candidates, false));
            let cfg = quic::client_config(&identity, &theirs.fingerprint)?;
            let connecting = endpoint.connect_with(cfg, remote, quic::SERVER_NAME)?;
            tokio::time::timeout_at(deadline, connecting).await.context("QUIC handshake timed out")??
        }
        Role::Answerer => {
            let incoming = tokio::select! {
                i = endpoint.accept() => i.context("the QUIC endpoint closed")?,
                _ = tokio::time::sleep_until(deadline) => return Err(no_path_error(&ice.checks(), &theirs, timeout)),
            };
            let conn = tokio::time::timeout_at(deadline, incoming).await.context("QUIC handshake timed out")??;
            let remote = conn.remote_address();
            report.remote = Some(endpoint_of(remote, &remote_candidates, false));
            report.local = ice
                .checks()
                .iter()
                .find(|c| c.remote == remote && c.outcome == crate::ice::checks::CheckOutcome::Succeeded)
                .map(|c| endpoint_of(c.local, &local_candidates, true))
                .or_else(|| local_candidates.first().map(|c| endpoint_of(c.addr(), &local_candidates, true)));
            conn
        }
    };
    report.connect_ms = Some((joined.elapsed().as_secs_f64() * 1e6).round() / 1e3);
    report.path = Some(PathKind::Direct);
    report.checks = ice.checks();
    tracing::info!(remote = %conn.remote_address(), "QUIC connected");

    let pb = output::progress(opts, 0, "transfer");
    let moved = match mode {
        Mode::Connect => None,
        Mode::Send(p) => Some(transfer::send_file(&conn, &p, &pb).await?),
        Mode::Recv(p) => Some(transfer::recv_file(&conn, &p, &pb).await?),
        Mode::Stdio => Some(transfer::stdio(&conn, role == Role::Offerer).await?),
    };
    pb.finish_and_clear();
    if let Some(m) = moved {
        report.bytes = m.bytes;
        report.sha256 = m.sha256;
        let secs = m.elapsed.as_secs_f64();
        if secs > 0.0 && m.bytes > 0 {
            report.throughput_mbps = Some(((m.bytes as f64 * 8.0 / secs / 1e6) * 1000.0).round() / 1000.0);
        }
    }
    conn.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    report.checks = ice.checks();
    let _ = signal.send(&ClientMessage::Leave).await;
    drop(peer);
    Ok(())
}

async fn wait_nominated(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<IceEvent>,
) -> Option<(SocketAddr, SocketAddr)> {
    match events.recv().await {
        Some(IceEvent::Nominated { local, remote }) => Some((local, remote)),
        Some(IceEvent::Disconnected) | None => None,
    }
}

/// Sends our description and waits for the peer's, as offerer or answerer.
async fn exchange(
    signal: &mut SignalClient,
    role: Role,
    peers: &[PeerId],
    ours: &Description,
    room: &RoomId,
    timeout: Duration,
) -> anyhow::Result<(PeerId, Description)> {
    let deadline = tokio::time::Instant::now() + timeout;
    if role == Role::Offerer {
        let peer = peers.first().cloned().context("no peer in the room")?;
        signal.send(&ClientMessage::offer(peer.clone(), ours.to_json())).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        loop {
            let msg = tokio::time::timeout_at(deadline, signal.recv())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "peer {} never answered in room {} within {:.0} s",
                        peer.as_str(),
                        room.as_str(),
                        timeout.as_secs_f64()
                    )
                })?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            match msg {
                ServerMessage::Answer { from, sdp, .. } if from == peer => {
                    return Ok((peer, Description::parse(&sdp).map_err(|e| anyhow::anyhow!(e))?));
                }
                ServerMessage::Exit { from, .. } if from == peer => {
                    anyhow::bail!("peer {} left room {} before answering", peer.as_str(), room.as_str())
                }
                ServerMessage::Error { message, .. } => anyhow::bail!("the signal server refused: {message}"),
                _ => {}
            }
        }
    }
    loop {
        let msg = tokio::time::timeout_at(deadline, signal.recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!("peer never joined room {} within {:.0} s", room.as_str(), timeout.as_secs_f64())
            })?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        match msg {
            ServerMessage::Offer { from, sdp, .. } => {
                let theirs = Description::parse(&sdp).map_err(|e| anyhow::anyhow!(e))?;
                signal
                    .send(&ClientMessage::answer(from.clone(), ours.to_json()))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                return Ok((from, theirs));
            }
            ServerMessage::Error { message, .. } => anyhow::bail!("the signal server refused: {message}"),
            _ => {}
        }
    }
}

fn no_path_error(checks: &[CheckRecord], theirs: &Description, timeout: Duration) -> anyhow::Error {
    let tried = checks.len();
    let hint = match theirs.mapping_varies {
        Some(true) => "; the peer's NAT is symmetric (its mapping varies by destination): a relay is needed",
        _ => "; a firewall may drop UDP, or both NATs are symmetric",
    };
    anyhow::anyhow!("no working path within {:.0} s: all {tried} candidate pairs failed{hint}", timeout.as_secs_f64())
}

fn endpoint_of(addr: SocketAddr, candidates: &[Candidate], local: bool) -> Endpoint {
    let kind = candidates
        .iter()
        .find(|c| {
            c.addr() == addr
                || (local
                    && c.kind() == CandidateKind::Host
                    && c.addr().port() == addr.port()
                    && c.addr().ip() == addr.ip())
        })
        .map(|c| kind_name(c.kind()))
        .unwrap_or("prflx");
    Endpoint { address: addr, kind: kind.to_string() }
}

fn kind_name(k: CandidateKind) -> &'static str {
    match k {
        CandidateKind::Host => "host",
        CandidateKind::ServerReflexive => "srflx",
        CandidateKind::PeerReflexive => "prflx",
        CandidateKind::Relayed => "relay",
    }
}

impl Render for PunchReport {
    fn render(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let mut t = output::table(&["local", "remote", "requests", "responses", "outcome", "nominated", "rtt"]);
        for c in &self.checks {
            t.add_row(vec![
                c.local.to_string(),
                c.remote.to_string(),
                c.requests.to_string(),
                c.responses.to_string(),
                format!("{:?}", c.outcome).to_lowercase(),
                if c.nominated { "yes".into() } else { String::new() },
                c.rtt_ms.map(output::ms).unwrap_or_else(|| "-".into()),
            ]);
        }
        writeln!(out, "{t}")?;
        if let (Some(l), Some(r), Some(ms)) = (&self.local, &self.remote, self.connect_ms) {
            writeln!(
                out,
                "{} path {} ({}) ↔ {} ({}), QUIC up {ms:.0} ms after joining room {}.",
                match self.path {
                    Some(PathKind::Relay) => "Relayed",
                    _ => "Direct",
                },
                l.address,
                l.kind,
                r.address,
                r.kind,
                self.room
            )?;
        }
        if self.bytes > 0 {
            writeln!(
                out,
                "Moved {} bytes{}{}.",
                self.bytes,
                self.throughput_mbps.map(|m| format!(" at {m:.1} Mbit/s")).unwrap_or_default(),
                self.sha256.as_ref().map(|s| format!(", SHA-256 {s} verified by both ends")).unwrap_or_default()
            )?;
        }
        if let Some(e) = &self.error {
            writeln!(out, "FAILED: {e}")?;
        }
        Ok(())
    }
}
