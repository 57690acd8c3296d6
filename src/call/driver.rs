//! The call's driver: owns the UDP socket, the signaling connection, the clock and Ctrl-C, and
//! feeds them to the session core ([`CallPeer`]). It plays the page's part of the signaling
//! protocol (README "natkit signal"): whoever joins second sends the offer, candidates trickle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::time::sleep_until;

use super::peer::{CallPeer, PeerEvent};
use super::report::{CallReport, IceFacts, Outcome, Recording, Role, no_pair_diagnosis};
use super::source::{AudioSource, VideoSource};
use crate::ice::server_candidates::{GatherEvent, Gatherer};
use crate::ice::server_list;
use crate::net::server_spec::Family;
use crate::signal::client::{ClientOptions, SignalClient, SignalSender};
use crate::signal::protocol::{ClientMessage, IceCandidate, PeerId, RoomId, ServerMessage};
use crate::turn::credentials::Credentials;

/// Everything the driver needs, already validated.
pub struct CallOptions {
    pub signal_url: String,
    pub client: ClientOptions,
    pub room: RoomId,
    pub bind: SocketAddr,
    pub duration: Option<Duration>,
    pub wait: Duration,
    pub connect_timeout: Duration,
    pub record: Option<PathBuf>,
    /// A status line on stderr (a terminal's): waiting for the peer, connecting, then live stats.
    pub live_stats: bool,
    /// STUN servers for server-reflexive candidates.
    pub stun: Vec<SocketAddr>,
    /// A TURN server and credentials for a relayed candidate.
    pub turn: Option<(SocketAddr, Credentials)>,
    /// Offer only the relayed candidate.
    pub relay_only: bool,
}

/// The media we send, built before the call starts so a bad file is a usage error.
pub struct Sources {
    pub video: Option<VideoSource>,
    pub audio: Option<AudioSource>,
}

/// How long ICE may stay disconnected before the call is declared lost.
const LOST_GRACE: Duration = Duration::from_secs(10);

/// Host candidate addresses for a socket bound to `local`: the bound IP if it is specific,
/// otherwise every up interface of the same family (loopback only when nothing else exists).
fn host_addresses(local: SocketAddr) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    crate::ice::gather::host_ips(&crate::ice::gather::interface_ips(), local.is_ipv6())
        .into_iter()
        .map(|ip| SocketAddr::new(ip, local.port()))
        .collect()
}

/// The local address a datagram from `source` arrived on. A socket bound to a wildcard
/// address does not tell, so pick the host address that routes there: loopback for loopback,
/// else the first of the same family.
fn arrival_address(hosts: &[SocketAddr], bound: SocketAddr, source: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    hosts
        .iter()
        .find(|h| h.ip().is_loopback() == source.ip().is_loopback() && h.is_ipv4() == source.is_ipv4())
        .or(hosts.first())
        .copied()
        .unwrap_or(bound)
}

/// Runs one call to its end and returns the report (also on failure: `outcome` and `error`).
pub async fn run(opts: CallOptions, sources: Sources) -> CallReport {
    let mut report = CallReport::new(opts.room.as_str());
    if let Err(e) = run_inner(&opts, sources, &mut report).await {
        report.outcome = Outcome::Failed;
        report.error = Some(format!("{e:#}"));
    }
    report
}

struct Session {
    peer: CallPeer,
    remote: Option<PeerId>,
    role: Option<Role>,
    /// Remote description applied: candidates can be added.
    negotiated: bool,
    early_candidates: Vec<String>,
    local_lines: Vec<String>,
    mid: Option<String>,
    offered_at: Option<Instant>,
    /// Our offer or answer went out: new candidates are trickled at once.
    described: bool,
}

impl Session {
    async fn trickle(&mut self, tx: &mut SignalSender) -> anyhow::Result<()> {
        self.described = true;
        let Some(to) = self.remote.clone() else { return Ok(()) };
        for line in &self.local_lines {
            let c = IceCandidate::new(line.clone(), self.mid.clone(), Some(0));
            tx.send(&ClientMessage::candidate(to.clone(), c)).await?;
        }
        Ok(())
    }

    /// A candidate gathered after the start: to ICE, and to the peer if our SDP went out.
    async fn add_late_candidate(&mut self, tx: &mut SignalSender, c: str0m::Candidate) -> anyhow::Result<()> {
        let Some(line) = self.peer.add_local_candidate(Instant::now(), c) else { return Ok(()) };
        tracing::info!("gathered {line}");
        self.local_lines.push(line.clone());
        if self.described
            && let Some(to) = self.remote.clone()
        {
            let c = IceCandidate::new(line, self.mid.clone(), Some(0));
            tx.send(&ClientMessage::candidate(to, c)).await?;
        }
        Ok(())
    }

    fn flush_early(&mut self, now: Instant) {
        for line in std::mem::take(&mut self.early_candidates) {
            if let Err(e) = self.peer.add_remote_candidate(now, &line) {
                tracing::warn!("ignored the peer's candidate: {e}");
            }
        }
    }
}

async fn run_inner(opts: &CallOptions, sources: Sources, report: &mut CallReport) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(opts.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the media socket to {}: {e}", opts.bind))?;
    let bound = socket.local_addr()?;
    let hosts = host_addresses(bound);
    if hosts.is_empty() {
        anyhow::bail!("no usable local address for {bound}; pass --bind IP:PORT");
    }

    let join_at = Instant::now();
    let (client, membership) =
        SignalClient::connect_and_join(&opts.signal_url, &opts.client, &opts.room, opts.connect_timeout).await?;
    report.id = Some(membership.id.to_string());
    let (mut tx, mut rx) = client.split();
    tracing::info!("joined room {} as {} ({} already there)", opts.room, membership.id, membership.peers.len());

    let now = Instant::now();
    let mut s = Session {
        peer: CallPeer::new(now, sources.video, sources.audio, opts.record.as_deref())?,
        remote: None,
        role: None,
        negotiated: false,
        early_candidates: Vec::new(),
        local_lines: Vec::new(),
        mid: None,
        offered_at: None,
        described: false,
    };
    if !opts.relay_only {
        for h in &hosts {
            match str0m::Candidate::host(*h, "udp") {
                Ok(c) => s.local_lines.extend(s.peer.add_local_candidate(now, c)),
                Err(e) => tracing::debug!("skipped host candidate {h}: {e}"),
            }
        }
    }
    // Without --stun/--turn, use what the signaling server hands out (as the page does).
    let (mut stun, mut turn) = (opts.stun.clone(), opts.turn.clone());
    if stun.is_empty() && turn.is_none() {
        let family = if bound.is_ipv4() { Family::V4 } else { Family::V6 };
        let from_signal = server_list::from_signal(&membership.ice_servers, family).await;
        (stun, turn) = (from_signal.stun, from_signal.turn);
    }
    if opts.relay_only {
        stun.clear();
        if turn.is_none() {
            anyhow::bail!("--relay-only needs a TURN server: pass --turn, or run natkit signal with --turn");
        }
    }
    let mut gatherer = Gatherer::new(hosts[0], &stun, turn.clone(), now);
    // Why a server gave no candidate: the diagnosis when no pair works says so.
    let mut gather_failures: Vec<String> = Vec::new();

    // Whoever joins second offers, like the page.
    if let Some(first) = membership.peers.first().cloned() {
        let offer = s.peer.create_offer(Instant::now())?;
        s.mid = CallPeer::first_mid(&offer);
        s.remote = Some(first.clone());
        s.role = Some(Role::Offerer);
        s.offered_at = Some(Instant::now());
        tx.send(&ClientMessage::offer(first, offer)).await?;
        s.trickle(&mut tx).await?;
    }

    let wait_deadline = tokio::time::Instant::from_std(join_at + opts.wait);
    let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
    stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = vec![0u8; 2048];
    let mut end_at: Option<tokio::time::Instant> = None;
    let mut signal_open = true;
    let mut lost_since: Option<Instant> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let status = crate::output::status_line(opts.live_stats, &format!("waiting for a peer in room {}", opts.room));

    let outcome = loop {
        let relayed = gatherer.relayed();
        while let Some(d) = s.peer.poll_transmit() {
            if relayed == Some(d.source) {
                gatherer.send_relayed(d.destination, &d.contents, Instant::now());
            } else if let Err(e) = socket.send_to(&d.contents, d.destination).await {
                tracing::debug!("send to {} failed: {e}", d.destination);
            }
        }
        while let Some((to, bytes)) = gatherer.poll_transmit(Instant::now()) {
            if let Err(e) = socket.send_to(&bytes, to).await {
                tracing::debug!("send to server {to} failed: {e}");
            }
        }
        while let Some(ev) = gatherer.poll_event() {
            match ev {
                GatherEvent::Candidate(c) => s.add_late_candidate(&mut tx, c).await?,
                GatherEvent::Failed(why) if opts.relay_only => {
                    anyhow::bail!("{why} (and --relay-only allows nothing else)")
                }
                GatherEvent::Failed(why) => {
                    tracing::warn!("{why}; going on without that candidate");
                    gather_failures.push(why);
                }
            }
        }
        if s.peer.poll_transmit_pending() {
            continue;
        }
        let mut failed = None;
        let mut closed = false;
        while let Some(ev) = s.peer.poll_event() {
            match ev {
                PeerEvent::Connected => {
                    let at = s.peer.connected_at().unwrap_or_else(Instant::now);
                    // From the offer (sent or received) to ICE+DTLS up: waiting for the
                    // peer to join is not connecting.
                    let from = s.offered_at.unwrap_or(join_at);
                    report.connect_ms = Some(at.saturating_duration_since(from).as_secs_f64() * 1000.0);
                    tracing::info!("connected in {:.0} ms", report.connect_ms.unwrap_or(0.0));
                    if let Some(d) = opts.duration {
                        end_at = Some(tokio::time::Instant::from_std(at + d));
                    }
                }
                PeerEvent::IceDisconnected => {
                    tracing::warn!("ICE: lost every candidate pair; waiting for it to come back");
                    lost_since.get_or_insert_with(Instant::now);
                }
                PeerEvent::IceReconnected => lost_since = None,
                PeerEvent::Closed => closed = true,
                PeerEvent::Failed(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            let what = if s.peer.connected_at().is_some() { "the session failed" } else { "DTLS handshake failed" };
            anyhow::bail!("{what}: {e}");
        }
        if closed && s.peer.connected_at().is_some() {
            break Outcome::PeerLeft;
        }
        if let Some(t) = lost_since
            && t.elapsed() > LOST_GRACE
        {
            anyhow::bail!("lost the connection: no working candidate pair for {} s", LOST_GRACE.as_secs());
        }
        if s.remote.is_none() && tokio::time::Instant::now() >= wait_deadline {
            anyhow::bail!("no peer in room {} after {:.0} s", opts.room, opts.wait.as_secs_f64());
        }
        if let Some(t) = s.offered_at
            && s.peer.connected_at().is_none()
            && t.elapsed() > opts.connect_timeout
        {
            let (local, remote) = s.peer.candidate_types();
            anyhow::bail!(no_pair_diagnosis(&IceFacts {
                after_s: opts.connect_timeout.as_secs_f64(),
                local,
                remote,
                stun_servers: stun.len(),
                turn_server: turn.is_some(),
                gather_failures: gather_failures.clone(),
            }));
        }
        let wake = [s.peer.poll_timeout(), gatherer.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_millis(100))
            .min(tokio::time::Instant::now() + Duration::from_millis(500));
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) if gatherer.owns(from) => {
                    if let Some(r) = gatherer.handle_input(from, &buf[..n], Instant::now()) {
                        s.peer.handle_receive(Instant::now(), r.peer, r.relayed, &r.data);
                    }
                }
                Ok((n, from)) => {
                    let to = arrival_address(&hosts, bound, from);
                    s.peer.handle_receive(Instant::now(), from, to, &buf[..n]);
                }
                Err(e) => tracing::debug!("media socket: {e}"),
            },
            _ = sleep_until(wake) => {
                let now = Instant::now();
                gatherer.handle_timeout(now);
                s.peer.handle_timeout(now);
            }
            m = rx.recv(), if signal_open => match m {
                Ok(msg) => {
                    if let Some(outcome) = on_signal(&mut s, &mut tx, msg).await? {
                        break outcome;
                    }
                }
                Err(e) => {
                    if s.peer.connected_at().is_none() {
                        return Err(e.into());
                    }
                    tracing::warn!("signaling: {e}; the call goes on without it");
                    signal_open = false;
                }
            },
            _ = async { sleep_until(end_at.unwrap_or_else(tokio::time::Instant::now)).await }, if end_at.is_some() => {
                break Outcome::Completed;
            }
            _ = &mut ctrl_c => {
                if s.peer.connected_at().is_some() {
                    break Outcome::HungUp;
                }
                break Outcome::Interrupted;
            }
            _ = stats_tick.tick(), if opts.live_stats => {
                status.set_message(match (&s.remote, s.peer.connected_at()) {
                    (None, _) => format!("waiting for a peer in room {}", opts.room),
                    (Some(p), None) => format!("connecting to {p} (ICE, DTLS)"),
                    (Some(_), Some(_)) => live_line(&s.peer, Instant::now()),
                });
            }
        }
        fill_report(report, &s, Instant::now());
    };

    status.finish_and_clear();
    // Hang up: leave the room (the page removes our video), close DTLS, flush.
    report.outcome = outcome;
    let now = Instant::now();
    fill_report(report, &s, now);
    s.peer.close(now);
    let relayed = gatherer.relayed();
    while let Some(d) = s.peer.poll_transmit() {
        if relayed == Some(d.source) {
            gatherer.send_relayed(d.destination, &d.contents, now);
        } else {
            let _ = socket.send_to(&d.contents, d.destination).await;
        }
    }
    while let Some((to, bytes)) = gatherer.poll_transmit(now) {
        let _ = socket.send_to(&bytes, to).await;
    }
    if signal_open {
        let _ = tx.send(&ClientMessage::Leave).await;
        tx.close().await;
    }
    let (video, audio) = s.peer.finish_recording();
    if let Some(dir) = &opts.record {
        report.recording = Some(Recording { video, audio: audio.map(|f| dir.join(f).display().to_string()) });
    }
    Ok(())
}

fn fill_report(report: &mut CallReport, s: &Session, now: Instant) {
    report.peer = s.remote.as_ref().map(|p| p.to_string());
    report.role = s.role;
    if let Some(p) = s.peer.path() {
        report.path = Some(p);
    }
    let (sent, received) = s.peer.stats();
    report.sent = sent;
    report.received = received;
    report.duration_s = s.peer.connected_at().map(|t| now.saturating_duration_since(t).as_secs_f64()).unwrap_or(0.0);
}

/// One line of live stats for stderr.
fn live_line(peer: &CallPeer, now: Instant) -> String {
    let (sent, recv) = peer.stats();
    let secs = peer.connected_at().map(|t| now.saturating_duration_since(t).as_secs_f64()).unwrap_or(0.0);
    let kbps = |v: Option<f64>| v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into());
    let rtt = sent.video.rtt_ms.or(sent.audio.rtt_ms).map(|x| format!("{x:.1} ms")).unwrap_or_else(|| "-".into());
    format!(
        "{secs:6.1}s  sent video {} frames {} kbps, audio {} pkts | received video {} frames {} kbps, audio {} pkts | rtt {rtt}",
        sent.video.frames,
        kbps(sent.video.bitrate_kbps),
        sent.audio.packets,
        recv.video.frames,
        kbps(recv.video.bitrate_kbps),
        recv.audio.packets,
    )
}

/// Handles one signaling message; `Some(outcome)` ends the call.
async fn on_signal(s: &mut Session, tx: &mut SignalSender, msg: ServerMessage) -> anyhow::Result<Option<Outcome>> {
    let now = Instant::now();
    match msg {
        ServerMessage::Joined { id, .. } => {
            if s.remote.is_none() {
                // We were first: the newcomer offers, we answer.
                tracing::info!("{id} joined; waiting for its offer");
                s.remote = Some(id);
                s.role = Some(Role::Answerer);
            }
        }
        ServerMessage::Offer { from, sdp, .. } => {
            if s.remote.as_ref().is_some_and(|r| *r != from) && s.negotiated {
                tracing::warn!("ignored an offer from {from}: already in a call with another member");
                return Ok(None);
            }
            s.remote = Some(from.clone());
            s.role = Some(Role::Answerer);
            let answer = s.peer.accept_offer(now, &sdp)?;
            s.mid = CallPeer::first_mid(&sdp);
            s.negotiated = true;
            s.offered_at.get_or_insert(now);
            tx.send(&ClientMessage::answer(from, answer)).await?;
            s.trickle(tx).await?;
            s.flush_early(now);
        }
        ServerMessage::Answer { from, sdp, .. } => {
            if s.remote.as_ref() == Some(&from) && !s.negotiated {
                s.peer.accept_answer(now, &sdp)?;
                s.negotiated = true;
                s.flush_early(now);
            }
        }
        ServerMessage::Candidate { from, candidate, .. } => {
            if s.remote.as_ref().is_some_and(|r| *r != from) {
                return Ok(None);
            }
            if s.negotiated {
                if let Err(e) = s.peer.add_remote_candidate(now, &candidate.candidate) {
                    tracing::warn!("ignored the peer's candidate: {e}");
                }
            } else {
                s.early_candidates.push(candidate.candidate);
            }
        }
        ServerMessage::Exit { from, .. } => {
            if s.remote.as_ref() == Some(&from) {
                tracing::info!("{from} left the room");
                if s.peer.connected_at().is_some() {
                    return Ok(Some(Outcome::PeerLeft));
                }
                anyhow::bail!("the peer left the room before the call connected");
            }
        }
        ServerMessage::Error { code, message } => tracing::warn!("signaling server: {message} ({code:?})"),
        ServerMessage::Created { .. } => {}
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specific_bind_gives_one_host_address() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(host_addresses(a), vec![a]);
        assert_eq!(arrival_address(&[a], a, "127.0.0.1:9".parse().unwrap()), a);
    }

    #[test]
    fn wildcard_bind_picks_the_arrival_address_by_route() {
        let hosts: Vec<SocketAddr> = vec!["10.0.0.2:4000".parse().unwrap(), "127.0.0.1:4000".parse().unwrap()];
        let bound: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        assert_eq!(arrival_address(&hosts, bound, "127.0.0.1:9".parse().unwrap()), hosts[1]);
        assert_eq!(arrival_address(&hosts, bound, "10.0.0.9:9".parse().unwrap()), hosts[0]);
    }
}
