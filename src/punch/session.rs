//! One `natkit punch` session, the driver around the punch cores: join the room, gather on one
//! socket, exchange descriptions, then race ICE checks, the birthday method and the relay to a
//! QUIC connection, and move the data over it. What to try when, and how to repair the path, is
//! decided by the sans-IO [`Race`] (`punch::race`): this file feeds it what the agent, the room,
//! the relay and QUIC report, and carries out its actions ([`Io::carry_out`]).
//!
//! Roles follow the video-chat page: whoever joins second offers, is ICE controlling, and is
//! the QUIC client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use is::{Candidate, CandidateKind, IceAgent, IceCreds};

use crate::cli::PunchArgs;
use crate::ice::checks::{CheckOutcome, CheckRecord};
use crate::ice::description::{Description, VERSION};
use crate::ice::gather;
use crate::ice::server_list::{self, IceServers};
use crate::net::server_spec::Family;
use crate::net::tls::TlsOptions;
use crate::net::udp;
use crate::output::{self, OutputOptions};
use crate::punch::birthday::{Birthday, Credentials as BirthdayCredentials, Limits};
use crate::punch::birthday_driver::{self, BirthdayResult};
use crate::punch::consent::{Consent, ConsentConfig, ConsentEvent};
use crate::punch::dual_stack;
use crate::punch::ice_driver::{self, IceEvent};
use crate::punch::mux::{Diverted, MuxSocket, StunDatagram};
use crate::punch::observation;
use crate::punch::plan::Knowledge;
use crate::punch::port_mapping::{AbortOnDrop, MAP_GRACE, Mappings, Renewal};
use crate::punch::race::{Action, Chosen, Event, Failure, Origin, Phase, Race};
use crate::punch::relay_link::{LinkEvent, RelayLink};
use crate::punch::report::{
    BirthdayReport, CandidateType, Endpoint, PathKind, PortMappingUse, PunchReport, Role, endpoint_of,
};
use crate::punch::{quic, transfer};
use crate::signal::client::{ClientError, ClientOptions, SignalClient};
use crate::signal::protocol::{ClientMessage, IceCandidate, PeerId, RoomId, ServerMessage};
use crate::stun::message::{binding_request, new_transaction_id};

/// How often the transfer checks whether QUIC moved to a new peer address (and whether a
/// fresh address of the peer has been proved by a check, or its QUIC came through our relay).
const PATH_TICK: Duration = Duration::from_millis(250);
/// How long the signal server's address gets to answer STUN (an older signal server, or one behind
/// a proxy, never does: this is what that costs, once, when only one STUN IP answered).
const SIGNAL_STUN_WAIT: Duration = Duration::from_millis(1000);

/// How long an answerer that let QUIC in waits for its birthday attempt's verdict.
const BIRTHDAY_VERDICT_WAIT: Duration = Duration::from_millis(500);

/// What moves over the connection.
pub enum Mode {
    Connect,
    Send(std::path::PathBuf),
    Recv(std::path::PathBuf),
    Stdio,
}

/// Runs the session; what it learned is in `report` whether it succeeds or not.
pub async fn run(
    args: &PunchArgs,
    opts: &OutputOptions,
    room: &RoomId,
    servers: IceServers,
    mode: Mode,
    report: &mut PunchReport,
    mappings: &Mappings,
) -> anyhow::Result<()> {
    let timeout = Duration::from_secs_f64(args.timeout);
    let copts = ClientOptions { tls: TlsOptions { insecure: args.insecure, ca: None } };
    let (mut signal, membership) = SignalClient::connect_and_join(&args.signal, &copts, room, timeout)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let joined = Instant::now();
    let role = Role::on_joining(!membership.peers.is_empty());
    report.role = Some(role);
    tracing::info!(id = %membership.id.as_str(), ?role, "joined room {}", room.as_str());

    // What the flags leave out is taken from the signal server (as the page
    // does), each kind on its own: `--turn` alone must not cost the STUN
    // servers that tell a side whether its mapping varies (without them a
    // symmetric pair waits for the relay instead of punching).
    let IceServers { stun: mut stun_servers, mut turn } = servers;
    if stun_servers.is_empty() || turn.is_none() {
        let IceServers { stun: signal_stun, turn: signal_turn } =
            server_list::from_signal(&membership.ice_servers, Family::V4).await;
        if stun_servers.is_empty() {
            stun_servers = signal_stun;
        }
        if turn.is_none() {
            turn = signal_turn;
        }
    }
    if args.no_relay {
        turn = None;
    }
    let relay_only = args.servers.relay_only;
    if relay_only && turn.is_none() {
        anyhow::bail!("--relay-only needs a TURN server: pass --turn, or run natkit signal with --turn");
    }

    // One socket for everything: gathering, checks, TURN, QUIC; both address families (see
    // punch::dual_stack for why one dual-stack socket rather than one per family).
    let socket = Arc::new(dual_stack::bind().context("binding the UDP socket")?);
    let port = socket.local_addr()?.port();
    let mut local_candidates: Vec<Candidate> = Vec::new();
    // The router on the way to our servers maps the socket's port while the STUN servers answer
    // (see punch::port_mapping); --relay-only offers no direct candidate, so it asks nothing.
    let mapping_target = stun_servers.first().copied().or(turn.as_ref().map(|t| t.0));
    let mut map_task = match (args.no_port_mapping || relay_only, mapping_target) {
        (true, _) => None,
        (false, Some(towards)) => Some(mappings.spawn_map(towards, port)),
        (false, None) => {
            let why = "no STUN or TURN server given: no route to find the router on";
            report.port_mapping = Some(PortMappingUse { error: Some(why.into()), ..PortMappingUse::default() });
            None
        }
    };
    // A person at a terminal sees each wait longer than a moment (gathering, checks, birthday, relay).
    let status = output::ClearingStatus::new(output::shows_status(opts), "gathering candidates (STUN, port mapping)");
    // IPv4 first: whether the mapping varies (and so the birthday method) is an IPv4 NAT matter.
    let (stun4, stun6): (Vec<SocketAddr>, Vec<SocketAddr>) = stun_servers.iter().partition(|s| s.is_ipv4());
    let mut reflexive = if relay_only || stun4.is_empty() {
        Vec::new()
    } else {
        gather::server_reflexive(&socket, &stun4, Duration::from_secs(2)).await
    };
    // Every answer came from one IP (the one-server deployment): the signal server's own address
    // answers STUN too (`natkit signal`), a second observation point (see punch::observation).
    if !relay_only
        && let Some(at) = observation::signal_udp_endpoint(&args.signal).await
        && observation::worth_asking(&reflexive, at)
    {
        tracing::info!("one STUN server IP only: asking the signal server's address {at} (UDP) too");
        reflexive.extend(gather::server_reflexive(&socket, &[at], SIGNAL_STUN_WAIT).await);
    }
    // IPv6 host candidates (only global-ish ones: a peer cannot reach our ::1 or fe80::), and the
    // v6 STUN servers asked only when we have one: without a v6 address there is no v6 path to
    // learn about, and no time is spent finding that out.
    let host6: Vec<IpAddr> = if relay_only || !args.host_ips.is_empty() {
        Vec::new()
    } else {
        gather::host_ips(&gather::interface_ips(), true).into_iter().filter(|ip| !ip.is_loopback()).collect()
    };
    let reflexive6 = if host6.is_empty() || stun6.is_empty() {
        Vec::new()
    } else {
        gather::server_reflexive(&socket, &stun6, Duration::from_secs(2)).await
    };
    // Our port-mapped address, and the renewal that keeps it while this session lives. A mapping
    // that is not there by now is trickled when it comes (`join_some(&mut map_task)` below).
    let mut port_mapped: Option<SocketAddr> = None;
    let mut _renewal = None;
    let early = match map_task.as_mut() {
        Some(task) => tokio::select! {
            r = tokio::time::timeout(MAP_GRACE, &mut task.0) => r.ok(),
            // A router without PCP and NAT-PMP: a UPnP mapping, if any, is trickled later.
            _ = mappings.fast_protocols_failed() => None,
        },
        None => None,
    };
    if let Some(done) = early {
        map_task = None;
        if let Some((c, renewal)) = adopt_mapping(done, report, mappings, port) {
            port_mapped = Some(c.addr());
            _renewal = Some(renewal);
            local_candidates.push(c);
        }
    }
    if !relay_only {
        let ips = if args.host_ips.is_empty() {
            let mut v = gather::host_ips(&gather::interface_ips(), false);
            v.extend(host6.iter().copied());
            v
        } else {
            args.host_ips.clone()
        };
        for ip in &ips {
            local_candidates.push(Candidate::host(SocketAddr::new(*ip, port), "udp").context("host candidate")?);
        }
        (report.mapping_varies, report.mapping_evidence) = observation::mapping_varies(&reflexive);
        for r in reflexive.iter().chain(&reflexive6) {
            let base = SocketAddr::new(udp::local_ip_towards(r.server).unwrap_or(unspecified(r.server)), port);
            if local_candidates.iter().any(|c| c.addr() == r.mapped) {
                continue; // not behind a NAT toward this server: the host candidate covers it
            }
            if let Ok(c) = Candidate::server_reflexive(r.mapped, base, "udp")
                && !local_candidates.iter().any(|x| x.addr() == c.addr())
            {
                local_candidates.push(c);
            }
        }
    }
    // The allocation is asked for now and finishes while the checks run; its candidate is
    // trickled (relayed candidates wait for the relay phase anyway, see punch::plan).
    let (relay, mut relay_events) = match turn {
        None => (None, None),
        Some((server, credentials)) => {
            let base = SocketAddr::new(udp::local_ip_towards(server).unwrap_or(IpAddr::from([0, 0, 0, 0])), port);
            let (link, events) = RelayLink::start(socket.clone(), server, credentials, base);
            (Some(link), Some(events))
        }
    };
    if local_candidates.is_empty() && relay.is_none() {
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
        relay: relay.is_some(),
        port_mapped,
    };

    // Offer/answer through the room; a person at a terminal sees what is being waited for.
    let waiting = match role {
        Role::Answerer => format!("waiting for the peer in room {}", room.as_str()),
        Role::Offerer => format!("waiting for the peer's answer in room {}", room.as_str()),
    };
    status.set_message(waiting);
    let exchanged = exchange(&mut signal, role, &membership.peers, &ours, room, timeout).await;
    let (peer, theirs) = exchanged?;
    report.remote_candidates = theirs.candidates.clone();

    let mut remote_candidates = Vec::new();
    for line in &theirs.candidates {
        match Candidate::from_sdp_string(line) {
            Ok(c) => remote_candidates.push(c),
            Err(e) => tracing::warn!("ignoring the peer's candidate '{line}': {e}"),
        }
    }
    // Relayed candidates, ours and theirs, wait for the relay phase (see punch::plan).
    let is_relayed = |c: &Candidate| c.kind() == CandidateKind::Relayed;
    let mut agent = IceAgent::new(creds.clone());
    agent.set_controlling(role == Role::Offerer);
    agent.set_remote_credentials(IceCreds { ufrag: theirs.ufrag.clone(), pass: theirs.pwd.clone() });
    let knowledge = Knowledge {
        ours_varies: report.mapping_varies,
        theirs_varies: theirs.mapping_varies,
        // The birthday method works on IPv4 NATs: their v4 mapping.
        their_srflx: remote_candidates
            .iter()
            .find(|c| c.kind() == CandidateKind::ServerReflexive && c.addr().is_ipv4())
            .map(|c| c.addr()),
        relay_available: relay.is_some() || theirs.relay || remote_candidates.iter().any(is_relayed),
        relay_ours: relay.is_some(),
        relay_only,
        birthday_allowed: !args.no_birthday,
        port_mapped: port_mapped.is_some() || theirs.port_mapped.is_some(),
        both_v6: local_candidates.iter().any(|c| c.addr().is_ipv6() && !is_relayed(c))
            && remote_candidates.iter().any(|c| c.addr().is_ipv6() && !is_relayed(c)),
    };
    let relay_available = knowledge.relay_available;
    let deadline = Instant::now() + timeout;
    let mut race = Race::new(role, knowledge, local_candidates, remote_candidates, joined, Instant::now(), deadline);
    // The agent starts with the direct candidates (the only actions a new race asks for).
    while let Some(action) = race.poll_action() {
        match action {
            Action::AddLocal(c) => {
                agent.add_local_candidate(c);
            }
            Action::AddRemote(c) => agent.add_remote_candidate(c),
            other => tracing::warn!(?other, "a new race asked for more than candidates"),
        }
    }

    udp::disable_recverr(&socket).context("configuring the UDP socket")?;
    let server_cfg = || -> anyhow::Result<Option<quinn::ServerConfig>> {
        Ok(match role {
            Role::Answerer => Some(quic::server_config(&identity, &theirs.fingerprint)?),
            Role::Offerer => None,
        })
    };
    let (endpoint, diverted, mux) = quic_endpoint(socket.clone(), relay.clone(), server_cfg()?)?;
    let consent = ConsentConfig { lost_after: Duration::from_secs(args.path_lost_after), ..ConsentConfig::default() };
    let ice = ice_driver::spawn(agent, socket.clone(), diverted.stun, relay.clone(), consent);
    let mut io = Io {
        signal,
        signal_open: true,
        peer,
        ice,
        mux,
        relay,
        socket,
        port,
        stun_servers,
        relay_available,
        birthday_creds: BirthdayCredentials {
            local_ufrag: creds.ufrag.clone(),
            local_pwd: creds.pass.clone(),
            remote_ufrag: theirs.ufrag.clone(),
            remote_pwd: theirs.pwd.clone(),
        },
        birthday_inbox: Some(diverted.birthday),
        birthday_rx: None,
    };
    // The opener's winning birthday socket gets an endpoint of its own.
    let mut side_endpoint: Option<quinn::Endpoint> = None;
    let mut side_mux: Option<Arc<MuxSocket>> = None;
    let failed = |f: Failure, io: &Io| failure_error(f, io, &theirs, room, timeout);

    let tokio_deadline = tokio::time::Instant::from_std(deadline);
    let conn = 'race: loop {
        while let Some(action) = race.poll_action() {
            io.carry_out(action, &mut race, report).await?;
        }
        while let Some(event) = race.poll_event() {
            match event {
                Event::Phase(phase) => status.set_message(phase_message(&phase)),
                Event::Connect(chosen) => {
                    let (ep, local, remote) = match chosen {
                        Chosen::Ice { local, remote } => {
                            (&endpoint, endpoint_of(local, race.local_candidates()), remote)
                        }
                        Chosen::Birthday { socket, remote } => {
                            if socket.is_some()
                                && let Some(mux) = side_mux.take()
                            {
                                // Redirects and nudges go to the socket that carries QUIC.
                                io.mux = mux;
                            }
                            (
                                side_endpoint.as_ref().filter(|_| socket.is_some()).unwrap_or(&endpoint),
                                birthday_local(socket, remote, race.local_candidates()),
                                remote,
                            )
                        }
                    };
                    report.local = Some(local);
                    report.remote = Some(endpoint_of(remote, race.remote_candidates()));
                    break 'race connect(ep, &identity, &theirs.fingerprint, remote, tokio_deadline).await?;
                }
                other => record(other, &race, report).map_err(|f| failed(f, &io))?,
            }
        }
        tokio::select! {
            ev = io.ice.events.recv() => match ev {
                Some(IceEvent::Nominated { local, remote }) => race.handle_nominated(local, remote, Instant::now()),
                Some(ev) => tracing::debug!(?ev, "ICE"),
                None => race.handle_ice_closed(),
            },
            r = recv_some(&mut io.birthday_rx) => {
                io.birthday_rx = None;
                match r {
                    Ok(BirthdayResult::Found { socket: won, remote, probes }) => {
                        let local = won.as_ref().and_then(|s| s.local_addr().ok());
                        if let Some(b) = report.birthday.as_mut() {
                            b.found(probes);
                        }
                        if let Some(sock) = won {
                            let (ep, _, mux) = quic_endpoint(sock, None, server_cfg()?)?;
                            side_endpoint = Some(ep);
                            side_mux = Some(mux);
                        }
                        race.handle_birthday_found(local, remote);
                    }
                    Ok(BirthdayResult::GaveUp { probes }) => {
                        if let Some(b) = report.birthday.as_mut() {
                            b.gave_up(probes);
                        }
                        race.handle_birthday_gave_up(Instant::now());
                    }
                    Err(_) => race.handle_birthday_gave_up(Instant::now()),
                }
            },
            done = join_some(&mut map_task) => {
                map_task = None;
                if let Some((c, renewal)) = adopt_mapping(done, report, mappings, port) {
                    port_mapped = Some(c.addr());
                    _renewal = Some(renewal);
                    race.handle_local_candidate(c, Origin::PortMapping);
                }
            },
            ev = recv_opt(&mut relay_events) => match ev {
                Some(LinkEvent::Ready(c)) => race.handle_local_candidate(c, Origin::Relay),
                Some(LinkEvent::Failed(why)) => {
                    race.handle_relay_failed(&why);
                    relay_events = None;
                }
                None => relay_events = None,
            },
            msg = io.signal.recv(), if io.signal_open => io.handle_room(msg, &mut race, report),
            i = accept_some(role == Role::Answerer, &endpoint) => {
                let conn = handshake(i, tokio_deadline).await?;
                let remote = dual_stack::unmap(conn.remote_address());
                report.remote = Some(endpoint_of(remote, race.remote_candidates()));
                // The prober's own verdict travels a longer way than the QUIC it let in: wait for it
                // a moment, so the report says how this path was found.
                if let Some(rx) = io.birthday_rx.take()
                    && let Ok(Ok(BirthdayResult::Found { remote: r, probes, .. })) =
                        tokio::time::timeout(BIRTHDAY_VERDICT_WAIT, rx).await
                {
                    if let Some(b) = report.birthday.as_mut() {
                        b.found(probes);
                    }
                    race.handle_birthday_found(None, r);
                }
                let local_candidates = race.local_candidates();
                report.local = match (race.birthday_found(), &io.relay) {
                    // QUIC came through our relay: the relayed candidate is our end, whatever the checks say.
                    (_, Some(r)) if r.is_routed(remote) => {
                        r.relayed().map(|a| endpoint_of(a, local_candidates))
                    }
                    (Some((None, r)), _) if r == remote => Some(birthday_local(None, remote, local_candidates)),
                    _ => answerer_local(&io.ice.checks(), remote, local_candidates),
                };
                break conn;
            },
            i = accept_some(role == Role::Answerer, side_endpoint.as_ref().unwrap_or(&endpoint)), if side_endpoint.is_some() => {
                let conn = handshake(i, tokio_deadline).await?;
                if let Some(mux) = side_mux.take() {
                    io.mux = mux;
                }
                let remote = dual_stack::unmap(conn.remote_address());
                report.remote = Some(endpoint_of(remote, race.remote_candidates()));
                report.local = Some(birthday_local(race.birthday_found().and_then(|b| b.0), remote, race.local_candidates()));
                break conn;
            },
            _ = sleep_until_some(race.poll_timeout()) => race.handle_timeout(Instant::now()),
        }
    };
    drop(status);
    // A birthday attempt still running stops: the path is chosen.
    drop(io.birthday_rx.take());
    report.connect_ms = Some((joined.elapsed().as_secs_f64() * 1e6).round() / 1e3);
    let relayed = |e: &Option<Endpoint>| e.as_ref().is_some_and(|e| e.kind == CandidateType::Relay);
    report.path =
        Some(if relayed(&report.local) || relayed(&report.remote) { PathKind::Relay } else { PathKind::Direct });
    report.checks = io.ice.checks();
    mark_port_mapped(report, theirs.port_mapped, port_mapped, &io.ice);
    tracing::info!(remote = %dual_stack::unmap(conn.remote_address()), "QUIC connected");

    let pb = output::progress(opts, 0, "transfer");
    let work = async {
        anyhow::Ok(match mode {
            Mode::Connect => None,
            Mode::Send(p) => Some(transfer::send_file(&conn, &p, &pb).await?),
            Mode::Recv(p) => Some(transfer::recv_file(&conn, &p, &pb).await?),
            Mode::Stdio => Some(transfer::stdio(&conn, role == Role::Offerer).await?),
        })
    };
    tokio::pin!(work);
    // While the data moves, the race watches the path and repairs it (see punch::race).
    let quic_remote = dual_stack::unmap(conn.remote_address());
    race.handle_connected(quic_remote);
    // Consent checks run on the pair ICE nominated. A path it did not (the birthday method's) is
    // watched by the datagrams QUIC receives on it instead: the same verdicts after the same
    // silence, fed with quinn's count (keep-alives arrive at least every `quic::KEEP_ALIVE`).
    let ice_watches = io.ice.checks().iter().any(|c| c.nominated && c.remote == quic_remote);
    let mut quic_liveness = (!ice_watches).then(|| {
        tracing::info!("no ICE pair under this path: QUIC's own datagrams tell whether it is alive");
        Consent::new(consent, Instant::now())
    });
    let mut tick = tokio::time::interval(PATH_TICK);
    let moved = loop {
        while let Some(action) = race.poll_action() {
            io.carry_out(action, &mut race, report).await?;
        }
        while let Some(event) = race.poll_event() {
            if let Err(f) = record(event, &race, report) {
                if matches!(f, Failure::ConsentExpired { .. }) {
                    // RFC 7675 §5.1: no more data to a peer that withdrew consent.
                    conn.close(1u32.into(), b"consent expired");
                }
                return Err(failed(f, &io));
            }
        }
        tokio::select! {
            r = &mut work => break r?,
            ev = io.ice.events.recv() => {
                let now = Instant::now();
                match ev {
                    Some(IceEvent::PathLost { remote, silent_for, .. }) => race.handle_path_lost(remote, silent_for, now),
                    Some(IceEvent::PathRegained { remote, .. }) => race.handle_path_regained(remote, now),
                    Some(IceEvent::Nominated { local, remote }) => race.handle_nominated(local, remote, now),
                    Some(IceEvent::ConsentExpired { remote, silent_for, .. }) => race.handle_consent_expired(remote, silent_for),
                    Some(IceEvent::Reflexive { server, mapped }) => race.handle_reflexive(server, mapped),
                    Some(IceEvent::Disconnected) => {}
                    None => std::future::pending::<()>().await,
                }
            },
            done = join_some(&mut map_task) => {
                // A slow router's mapping, after connecting: offered for a later re-punch.
                map_task = None;
                if let Some((c, renewal)) = adopt_mapping(done, report, mappings, port) {
                    _renewal = Some(renewal);
                    race.handle_local_candidate(c, Origin::PortMapping);
                }
            },
            msg = io.signal.recv(), if io.signal_open => io.handle_room(msg, &mut race, report),
            _ = tick.tick() => {
                let now = Instant::now();
                if let (Some(l), Some(path)) = (quic_liveness.as_mut(), race.watched_path()) {
                    let heard = l.handle_responses(now, conn.stats().udp_rx.datagrams).or_else(|| l.handle_timeout(now));
                    match heard {
                        Some(ConsentEvent::Lost { silent_for }) => race.handle_path_lost(path, silent_for, now),
                        Some(ConsentEvent::Regained) => race.handle_path_regained(path, now),
                        Some(ConsentEvent::Expired { silent_for }) => race.handle_consent_expired(path, silent_for),
                        None => {}
                    }
                }
                // quinn moved to a new, validated peer address (RFC 9000 §9): follow it.
                race.handle_quic_remote(dual_stack::unmap(conn.remote_address()), now);
                let fresh = race.awaiting_validation().to_vec();
                if !fresh.is_empty() {
                    let checks = io.ice.checks();
                    let proved = fresh.into_iter().find(|a| {
                        checks.iter().any(|c| c.remote == *a && c.outcome == CheckOutcome::Succeeded)
                    });
                    if let Some(remote) = proved {
                        race.handle_path_validated(remote, now);
                    }
                }
                if let Some(to) = io.mux.redirected_to() {
                    race.handle_relayed_arrival(to, now);
                }
            },
            _ = sleep_until_some(race.poll_timeout()) => race.handle_timeout(Instant::now()),
        }
    };
    pb.finish_and_clear();
    // QUIC may have migrated since the last tick (the transfer ended soon after the peer moved),
    // and the transfer may have finished over our new mapping before a consent check confirmed it
    // (the peer's QUIC had followed us there): the race reports both all the same.
    race.handle_quic_remote(dual_stack::unmap(conn.remote_address()), Instant::now());
    race.handle_transfer_done(Instant::now());
    while let Some(event) = race.poll_event() {
        if let Err(f) = record(event, &race, report) {
            tracing::debug!(?f, "after the transfer");
        }
    }
    if let Some(m) = moved {
        report.bytes = m.bytes;
        report.sha256 = m.sha256;
        let secs = m.elapsed.as_secs_f64();
        if secs > 0.0 && m.bytes > 0 {
            report.throughput_mbps = Some(((m.bytes as f64 * 8.0 / secs / 1e6) * 1000.0).round() / 1000.0);
        }
    }
    conn.close(0u32.into(), b"done");
    let idle = async {
        endpoint.wait_idle().await;
        if let Some(e) = &side_endpoint {
            e.wait_idle().await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), idle).await;
    report.checks = io.ice.checks();
    // Again at the end: the answerer may have let QUIC in before its own check was answered; by now
    // consent checks on the path have been.
    mark_port_mapped(report, theirs.port_mapped, port_mapped, &io.ice);
    let _ = io.signal.send(&ClientMessage::Leave).await;
    Ok(())
}

/// A QUIC endpoint on `socket`, behind the mux (and the relay link, if any).
fn quic_endpoint(
    socket: Arc<tokio::net::UdpSocket>,
    relay: Option<Arc<RelayLink>>,
    server: Option<quinn::ServerConfig>,
) -> anyhow::Result<(quinn::Endpoint, Diverted, Arc<MuxSocket>)> {
    let (mux, diverted) = MuxSocket::new(socket, relay);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        crate::punch::mux::endpoint_config(),
        server,
        mux.clone(),
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok((endpoint, diverted, mux))
}

/// The offerer's QUIC handshake to `remote`, pinned to the peer's fingerprint.
async fn connect(
    endpoint: &quinn::Endpoint,
    identity: &quic::Identity,
    fingerprint: &str,
    remote: SocketAddr,
    deadline: tokio::time::Instant,
) -> anyhow::Result<quinn::Connection> {
    let connecting = endpoint.connect_with(quic::client_config(identity, fingerprint)?, remote, quic::SERVER_NAME)?;
    Ok(tokio::time::timeout_at(deadline, connecting).await.context("QUIC handshake timed out")??)
}

/// The answerer's side of a handshake the endpoint accepted.
async fn handshake(
    incoming: Option<quinn::Incoming>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<quinn::Connection> {
    let Some(incoming) = incoming else { anyhow::bail!("the QUIC endpoint closed") };
    Ok(tokio::time::timeout_at(deadline, incoming).await.context("QUIC handshake timed out")??)
}

/// The unspecified address of `addr`'s family (a candidate base when the route is unknown).
fn unspecified(addr: SocketAddr) -> IpAddr {
    if addr.is_ipv6() { IpAddr::from([0u16; 8]) } else { IpAddr::from([0, 0, 0, 0]) }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn join_some<T>(task: &mut Option<AbortOnDrop<T>>) -> Result<T, tokio::task::JoinError> {
    match task.as_mut() {
        Some(t) => (&mut t.0).await,
        None => std::future::pending().await,
    }
}

/// Takes a finished port-mapping attempt into the session: its report, and the mapped address as
/// a candidate (offered as srflx, its base the socket's address toward the router) with the task
/// that renews it.
fn adopt_mapping(
    done: Result<(PortMappingUse, Option<crate::portmap::Lease>), tokio::task::JoinError>,
    report: &mut PunchReport,
    mappings: &Mappings,
    port: u16,
) -> Option<(Candidate, Renewal)> {
    let (use_, lease) = match done {
        Ok(r) => r,
        Err(e) => {
            (PortMappingUse { error: Some(format!("port mapping task: {e}")), ..PortMappingUse::default() }, None)
        }
    };
    let gateway = use_.gateway;
    if let Some(e) = &use_.error {
        tracing::info!("no port mapping: {e}");
    }
    report.port_mapping = Some(use_);
    let (lease, gw) = (lease?, gateway?);
    let external = lease.external?;
    tracing::info!(protocol = %lease.protocol, %external, "the router {gw} mapped our port");
    let base_ip = udp::local_ip_towards(SocketAddr::new(gw.into(), 5351)).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let c = Candidate::server_reflexive(external, SocketAddr::new(base_ip, port), "udp").ok()?;
    Some((c, mappings.keep_renewed(lease)))
}

/// Marks the ends of the selected path that are a router's port mapping: theirs when it is the
/// address the peer said is one; ours when the peer answered our checks seeing us there.
fn mark_port_mapped(
    report: &mut PunchReport,
    theirs: Option<SocketAddr>,
    ours: Option<SocketAddr>,
    ice: &ice_driver::IceHandle,
) {
    let remote = report.remote.as_ref().map(|r| r.address);
    if let Some(r) = report.remote.as_mut() {
        r.port_mapped = theirs == Some(r.address);
    }
    if let (Some(l), Some(ours)) = (report.local.as_mut(), ours) {
        l.port_mapped = l.address == ours || remote.and_then(|r| ice.seen_as(r)) == Some(ours);
    }
}

async fn recv_opt<T>(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx.as_mut() {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_some<T>(rx: &mut Option<tokio::sync::oneshot::Receiver<T>>) -> Result<T, ()> {
    match rx.as_mut() {
        Some(rx) => rx.await.map_err(|_| ()),
        None => std::future::pending().await,
    }
}

async fn accept_some(answerer: bool, endpoint: &quinn::Endpoint) -> Option<quinn::Incoming> {
    if answerer { endpoint.accept().await } else { std::future::pending().await }
}

/// Our end of a birthday path: the opener's winning socket, or the prober's stable mapping.
fn birthday_local(opener_socket: Option<SocketAddr>, remote: SocketAddr, candidates: &[Candidate]) -> Endpoint {
    match opener_socket {
        Some(sock) => Endpoint {
            address: SocketAddr::new(udp::local_ip_towards(remote).unwrap_or(sock.ip()), sock.port()),
            kind: CandidateType::Host,
            port_mapped: false,
        },
        None => candidates
            .iter()
            .find(|c| c.kind() == CandidateKind::ServerReflexive)
            .or_else(|| candidates.first())
            .map(|c| endpoint_of(c.addr(), candidates))
            .unwrap_or(Endpoint { address: remote, kind: CandidateType::Prflx, port_mapped: false }),
    }
}

/// The answerer's end of the pair QUIC arrived on: the pair the offerer nominated, else one
/// that worked toward where QUIC came from.
fn answerer_local(checks: &[CheckRecord], remote: SocketAddr, candidates: &[Candidate]) -> Option<Endpoint> {
    let to_remote = |c: &&CheckRecord| c.remote == remote;
    checks
        .iter()
        .filter(to_remote)
        .find(|c| c.nominated)
        .or_else(|| checks.iter().filter(to_remote).find(|c| c.outcome == CheckOutcome::Succeeded))
        .map(|c| endpoint_of(c.local, candidates))
        .or_else(|| candidates.first().map(|c| endpoint_of(c.addr(), candidates)))
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

fn no_path_error(checks: &[CheckRecord], theirs: &Description, timeout: Duration, relayed: bool) -> anyhow::Error {
    let tried = checks.len();
    let hint = match (theirs.mapping_varies, relayed) {
        (_, true) => "; not even through the TURN relay: check that the relay allows the peer's address",
        (Some(true), false) => "; the peer's NAT is symmetric (its mapping varies by destination): retry with --turn",
        (_, false) => "; a firewall may drop UDP, or both NATs are symmetric: retry with --turn",
    };
    anyhow::anyhow!("no working path within {:.0} s: all {tried} candidate pairs failed{hint}", timeout.as_secs_f64())
}

/// The session's handles on the room, the ICE agent, the mux and the relay: what carries out the
/// race's actions (see [`Race::poll_action`]).
struct Io {
    signal: SignalClient,
    /// The room still answers (a path may come up, or hold, without it).
    signal_open: bool,
    peer: PeerId,
    ice: ice_driver::IceHandle,
    mux: Arc<MuxSocket>,
    relay: Option<Arc<RelayLink>>,
    socket: Arc<tokio::net::UdpSocket>,
    port: u16,
    stun_servers: Vec<SocketAddr>,
    /// Either side has a relayed candidate (for the "no path" hint).
    relay_available: bool,
    birthday_creds: BirthdayCredentials,
    /// What the mux sets aside for the birthday method, until it starts.
    birthday_inbox: Option<tokio::sync::mpsc::UnboundedReceiver<StunDatagram>>,
    /// The running birthday attempt's verdict.
    birthday_rx: Option<tokio::sync::oneshot::Receiver<BirthdayResult>>,
}

impl Io {
    async fn carry_out(&mut self, action: Action, race: &mut Race, report: &mut PunchReport) -> anyhow::Result<()> {
        match action {
            Action::AddLocal(c) => self.ice.add_local(c),
            Action::AddRemote(c) => self.ice.add_remote(c),
            Action::Trickle(c) => {
                let line = c.to_sdp_string();
                report.candidates.push(line.clone());
                let trickle = ClientMessage::candidate(self.peer.clone(), IceCandidate::new(line, None, None));
                if !race.is_connected() {
                    // Before a path exists the room is the only way to the peer.
                    self.signal.send(&trickle).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                } else if self.signal_open
                    && let Err(e) = self.signal.send(&trickle).await
                {
                    tracing::warn!("signal server: {e}");
                }
            }
            Action::StartBirthday(side) => {
                let Some(inbox) = self.birthday_inbox.take() else { return Ok(()) };
                let creds = self.birthday_creds.clone();
                let core = Birthday::new(side.clone(), creds, Limits::default(), rand::random(), Instant::now());
                self.birthday_rx = Some(birthday_driver::spawn(core, &side, self.socket.clone(), inbox).await?);
                report.birthday = Some(BirthdayReport::started(&side));
            }
            Action::Regather { toward } => self.ice.regather(dual_stack::same_family(&self.stun_servers, toward)),
            Action::NewMapping { server, mapped } => {
                let base = SocketAddr::new(udp::local_ip_towards(server).unwrap_or(unspecified(server)), self.port);
                match Candidate::server_reflexive(mapped, base, "udp") {
                    Ok(c) => race.handle_local_candidate(c, Origin::Reflexive),
                    Err(e) => tracing::warn!("our new mapping {mapped} makes no candidate: {e}"),
                }
            }
            Action::OpenToward(to) => self.ice.open_toward(to),
            Action::Redirect { from, to } => self.mux.redirect(from, to),
            Action::ResendLastQuic => {
                let resent = self.mux.resend_last();
                tracing::debug!(resent, "nudged QUIC on the path that came back");
            }
            Action::LetInThroughRelay { permit, quic_remote } => match &self.relay {
                Some(r) => {
                    tracing::warn!(relayed = ?r.relayed(), "letting the peer in through our TURN relay");
                    // A Send indication to the peer's old address installs the permission for its IP
                    // (RFC 8656 §9: permissions ignore the port), which its new address shares.
                    r.send(permit, &binding_request(new_transaction_id()));
                    self.mux.follow_relayed(quic_remote);
                }
                None => tracing::warn!("no TURN relay of ours to let the peer in through"),
            },
        }
        Ok(())
    }

    /// A message from the room: a candidate the peer trickled, or the peer leaving.
    fn handle_room(&mut self, msg: Result<ServerMessage, ClientError>, race: &mut Race, report: &mut PunchReport) {
        match msg {
            Ok(ServerMessage::Candidate { from, candidate, .. })
                if from == self.peer && !candidate.candidate.is_empty() =>
            {
                match Candidate::from_sdp_string(&candidate.candidate) {
                    Ok(c) => {
                        report.remote_candidates.push(candidate.candidate.clone());
                        race.handle_remote_candidate(c);
                    }
                    Err(e) => tracing::warn!("ignoring the peer's candidate '{}': {e}", candidate.candidate),
                }
            }
            Ok(ServerMessage::Exit { from, .. }) if from == self.peer => race.handle_peer_left(),
            Ok(_) => {}
            Err(e) => {
                // The path may still come up, or hold, without the room.
                tracing::warn!("signal server: {e}");
                self.signal_open = false;
            }
        }
    }
}

/// Puts what the race reports into `report`; a failure comes back as the error.
fn record(event: Event, race: &Race, report: &mut PunchReport) -> Result<(), Failure> {
    match event {
        Event::PathChange(change) => report.path_changes.push(change),
        Event::Remote(to) => report.remote = Some(endpoint_of(to, race.remote_candidates())),
        Event::Relayed => report.path = Some(PathKind::Relay),
        Event::Failed(f) => return Err(f),
        // Only while connecting, where the session acts on them itself.
        Event::Phase(_) | Event::Connect(_) => tracing::debug!(?event, "the race after connecting"),
    }
    Ok(())
}

/// What a person at a terminal sees while the race is in `phase`.
fn phase_message(phase: &Phase) -> String {
    match phase {
        Phase::Checking { pairs } => format!("checking {pairs} candidate pairs with the peer"),
        Phase::Birthday(_) => "no direct pair yet: the birthday method (many ports at once)".into(),
        Phase::Relay => "checking through the TURN relay too".into(),
    }
}

/// The error a failed race ends the session with.
fn failure_error(failure: Failure, io: &Io, theirs: &Description, room: &RoomId, timeout: Duration) -> anyhow::Error {
    match failure {
        Failure::NoPath => no_path_error(&io.ice.checks(), theirs, timeout, io.relay_available),
        Failure::PeerLeft => {
            anyhow::anyhow!("peer {} left room {} before a path was found", io.peer.as_str(), room.as_str())
        }
        Failure::RelayFailed(why) => anyhow::anyhow!("{why} (and --relay-only allows nothing else)"),
        Failure::ConsentExpired { remote, silent_for } => anyhow::anyhow!(
            "consent to send to {remote} expired: no answer to consent checks (RFC 7675) for {:.0} s \
             and no new path found; a NAT on the way probably forgot its mapping (retry, or use --turn)",
            silent_for.as_secs_f64()
        ),
    }
}
