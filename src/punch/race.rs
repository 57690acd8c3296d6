//! The punch decision as a sans-IO core, in str0m's `IceAgent` shape: what the session learns
//! goes in through `handle_*` (ICE results, trickled candidates, the birthday verdict, timers
//! with `handle_timeout(now)`), what it must do comes out of [`Race::poll_action`] and what it
//! must report out of [`Race::poll_event`], and [`Race::poll_timeout`] says when to wake it.
//! It never reads a clock, sleeps or touches a socket: the driver (`punch::session`) owns the
//! ICE agent, the room, the mux and QUIC, and carries the actions out.
//!
//! Two stages. **Connecting**: direct ICE pairs first, the birthday method after its grace
//! (one hard side), relayed candidates held back until their phase (see `punch::plan` for
//! when, and why holding them back makes "direct when possible" a property rather than a
//! race); the offerer connects QUIC on the first nominated pair or birthday path; the peer
//! leaving, every pair failing or the deadline end the attempt. **Connected**: consent
//! freshness (RFC 7675) watches the path; a lost path asks the STUN servers for our mapping
//! again and offers a new one to the peer (re-punch, trickle ICE, RFC 8838), follows a peer
//! that re-punched from a new address, and falls back to the TURN relay when nothing comes
//! back in time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use is::{Candidate, CandidateKind};

use crate::ice::role::Role;
use crate::punch::birthday::Side;
use crate::punch::plan::{Knowledge, Plan};
use crate::punch::report::{PathChange, PathChangeReason};

/// A path lost this long without repair falls back to the TURN relay (see `relay_fallback`).
pub const RELAY_FALLBACK_AFTER: Duration = Duration::from_secs(6);
/// How often a lost path asks the STUN servers for our mapping again.
pub const REGATHER_EVERY: Duration = Duration::from_secs(2);
/// How often a lost offerer opens its NAT toward the peer's fresh addresses again.
pub const REOPEN_EVERY: Duration = Duration::from_millis(250);

/// Where one of our candidates came from after the checks started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A router's port mapping that took longer than the gathering.
    PortMapping,
    /// The TURN allocation (relayed candidates wait for the relay phase).
    Relay,
    /// A new mapping our NAT gave us while the path was lost (see [`Action::NewMapping`]).
    Reflexive,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Give the ICE agent one of our candidates.
    AddLocal(Candidate),
    /// Give the ICE agent one of the peer's candidates.
    AddRemote(Candidate),
    /// Offer one of our candidates to the peer through the room (trickle).
    Trickle(Candidate),
    /// Start the birthday method as this side.
    StartBirthday(Side),
    /// Ask the STUN servers of `toward`'s family for our mapping again.
    Regather { toward: SocketAddr },
    /// Our NAT gave us a new public address (seen by `server`): make it a server-reflexive
    /// candidate and hand it back with [`Race::handle_local_candidate`] and [`Origin::Reflexive`].
    NewMapping { server: SocketAddr, mapped: SocketAddr },
    /// Send one datagram toward this address, so that our NAT lets its packets in (a peer that
    /// re-punched from there; the agent checks no trickled candidate once a pair is nominated).
    OpenToward(SocketAddr),
    /// QUIC meant for `from` goes to `to` instead (the mux redirects; quinn never sees it).
    Redirect { from: SocketAddr, to: SocketAddr },
    /// Let the peer in through our TURN relay: a Send indication toward `permit` installs the
    /// permission for its IP, and the mux follows whoever sends QUIC for `quic_remote` through it.
    LetInThroughRelay { permit: SocketAddr, quic_remote: SocketAddr },
    /// The path works again after it was lost: send QUIC's last datagram once more, so the
    /// peer's acknowledgement ends quinn's backed-off wait now (`mux::MuxSocket::resend_last`).
    ResendLastQuic,
}

/// What is being tried now (for the person at the terminal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Direct ICE checks over this many pairs.
    Checking { pairs: usize },
    /// The birthday method, as this side.
    Birthday(Side),
    /// Relayed candidates joined the checks.
    Relay,
}

/// The path the offerer connects QUIC on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chosen {
    /// The pair ICE nominated.
    Ice { local: SocketAddr, remote: SocketAddr },
    /// The birthday method's path; `socket` is the opener's winning socket (None: the prober's,
    /// the session's own).
    Birthday { socket: Option<SocketAddr>, remote: SocketAddr },
}

/// Why the session cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No path within the deadline, or every ICE pair failed.
    NoPath,
    /// The peer left the room before a path was found.
    PeerLeft,
    /// The TURN allocation failed and `--relay-only` allows nothing else.
    RelayFailed(String),
    /// Consent on the path expired (RFC 7675 §5.1): stop sending.
    ConsentExpired { remote: SocketAddr, silent_for: Duration },
}

/// Something the driver must report.
#[derive(Debug, Clone)]
pub enum Event {
    Phase(Phase),
    /// Offerer: connect QUIC on this path.
    Connect(Chosen),
    Failed(Failure),
    /// The path moved after connecting.
    PathChange(PathChange),
    /// The peer is now reached at this address.
    Remote(SocketAddr),
    /// The path now goes through a TURN relay.
    Relayed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum BirthdayState {
    Planned(Side, Instant),
    Running,
    Over,
}

/// What the connected session knows about its path while repairing it.
#[derive(Debug, Clone)]
struct Watch {
    /// The peer address QUIC sends to (quinn's, after any migration).
    quic_remote: SocketAddr,
    /// Where the peer is: `quic_remote`, or where the mux redirects it (the QUIC server moved).
    path_remote: SocketAddr,
    /// Consent on the path went unanswered and it has not come back yet.
    lost: bool,
    /// The peer's candidates trickled after connecting (a re-punch from a new address).
    fresh_remotes: Vec<SocketAddr>,
    /// When a lost path falls back to the relay (None: not lost, or fallen back already).
    fallback_at: Option<Instant>,
    /// Waiting for the peer's QUIC through our relay (where it comes from is reported).
    awaiting_relayed: bool,
    /// Our public address as a STUN server last saw it.
    our_mapped: Option<SocketAddr>,
    /// A new mapping offered to the peer, reported once the path answers again.
    pending: Option<(Option<SocketAddr>, SocketAddr)>,
    /// When to ask the STUN servers again while the path stays lost.
    regather_at: Option<Instant>,
    /// When the offerer opens its NAT toward the fresh addresses again while the path is lost.
    reopen_at: Option<Instant>,
}

/// The punch decision of one session.
pub struct Race {
    role: Role,
    knowledge: Knowledge,
    /// Room joined: path changes are reported relative to it.
    joined: Instant,
    /// The connecting stage ends here without a path.
    deadline: Instant,
    birthday: Option<BirthdayState>,
    relay_at: Option<Instant>,
    relay_phase: bool,
    birthday_found: Option<(Option<SocketAddr>, SocketAddr)>,
    local: Vec<Candidate>,
    remote: Vec<Candidate>,
    watch: Option<Watch>,
    over: bool,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

fn is_relayed(c: &Candidate) -> bool {
    c.kind() == CandidateKind::Relayed
}

impl Race {
    /// Starts the race at `now`: the direct candidates go to the agent at once, relayed ones wait
    /// for their phase. `joined` is when the room was joined, `deadline` when connecting gives up.
    pub fn new(
        role: Role,
        knowledge: Knowledge,
        local: Vec<Candidate>,
        remote: Vec<Candidate>,
        joined: Instant,
        now: Instant,
        deadline: Instant,
    ) -> Race {
        let plan = Plan::new(&knowledge, now);
        tracing::info!(?plan, "plan");
        let mut race = Race {
            role,
            knowledge,
            joined,
            deadline,
            birthday: plan.birthday.map(|(side, at)| BirthdayState::Planned(side, at)),
            relay_at: plan.relay_at,
            relay_phase: false,
            birthday_found: None,
            local,
            remote,
            watch: None,
            over: false,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        };
        let direct_local: Vec<_> = race.local.iter().filter(|c| !is_relayed(c)).cloned().collect();
        let direct_remote: Vec<_> = race.remote.iter().filter(|c| !is_relayed(c)).cloned().collect();
        let pairs = direct_local.len() * direct_remote.len();
        race.actions.extend(direct_local.into_iter().map(Action::AddLocal));
        race.actions.extend(direct_remote.into_iter().map(Action::AddRemote));
        race.events.push_back(Event::Phase(Phase::Checking { pairs }));
        race
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next (None: nothing to wait for).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.over {
            return None;
        }
        match &self.watch {
            None => {
                let birthday = match &self.birthday {
                    Some(BirthdayState::Planned(_, at)) => Some(*at),
                    _ => None,
                };
                [Some(self.deadline), birthday, self.relay_at].into_iter().flatten().min()
            }
            Some(w) => {
                let fallback = w.fallback_at.filter(|_| w.lost);
                [fallback, w.regather_at, w.reopen_at].into_iter().flatten().min()
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.over {
            return;
        }
        if self.watch.is_some() {
            return self.watch_timeout(now);
        }
        if let Some(BirthdayState::Planned(side, at)) = &self.birthday
            && now >= *at
        {
            let side = side.clone();
            tracing::info!(?side, "no direct pair yet: trying the birthday method");
            self.birthday = Some(BirthdayState::Running);
            self.actions.push_back(Action::StartBirthday(side.clone()));
            self.events.push_back(Event::Phase(Phase::Birthday(side)));
        }
        if self.relay_at.is_some_and(|t| now >= t) {
            self.relay_at = None;
            self.start_relay_phase();
        }
        if now >= self.deadline {
            self.fail(Failure::NoPath);
        }
    }

    /// QUIC connected: the path is watched now.
    pub fn is_connected(&self) -> bool {
        self.watch.is_some()
    }

    /// Our candidates so far (gathered, trickled, relayed).
    pub fn local_candidates(&self) -> &[Candidate] {
        &self.local
    }

    /// The peer's candidates so far.
    pub fn remote_candidates(&self) -> &[Candidate] {
        &self.remote
    }

    pub fn knowledge(&self) -> &Knowledge {
        &self.knowledge
    }

    /// The birthday method's path, once found: (the opener's winning socket, the peer's address).
    pub fn birthday_found(&self) -> Option<(Option<SocketAddr>, SocketAddr)> {
        self.birthday_found
    }

    /// Whether a birthday attempt has started and not yet ended.
    pub fn birthday_running(&self) -> bool {
        self.birthday == Some(BirthdayState::Running)
    }

    /// The peer's fresh addresses a lost offerer waits to see validated by a check
    /// ([`handle_path_validated`](Self::handle_path_validated)); empty otherwise.
    pub fn awaiting_validation(&self) -> &[SocketAddr] {
        match &self.watch {
            Some(w) if w.lost && self.role == Role::Offerer => &w.fresh_remotes,
            _ => &[],
        }
    }

    /// One of ours, found after the checks started.
    pub fn handle_local_candidate(&mut self, c: Candidate, origin: Origin) {
        tracing::debug!(?origin, candidate = %c.to_sdp_string(), "local candidate");
        self.actions.push_back(Action::Trickle(c.clone()));
        if !is_relayed(&c) || self.relay_phase {
            self.actions.push_back(Action::AddLocal(c.clone()));
        }
        self.local.push(c);
    }

    /// One of the peer's, trickled through the room.
    pub fn handle_remote_candidate(&mut self, c: Candidate) {
        if let Some(w) = self.watch.as_mut() {
            // A re-punch from a new address: check toward it, and our NAT must let its checks in.
            tracing::info!("the peer offers a new candidate: {}", c.to_sdp_string());
            self.actions.push_back(Action::AddRemote(c.clone()));
            self.actions.push_back(Action::OpenToward(c.addr()));
            w.fresh_remotes.push(c.addr());
        } else if self.relay_phase || !is_relayed(&c) {
            self.actions.push_back(Action::AddRemote(c.clone()));
        }
        self.remote.push(c);
    }

    /// The TURN allocation failed.
    pub fn handle_relay_failed(&mut self, why: &str) {
        if self.knowledge.relay_only && self.watch.is_none() {
            self.fail(Failure::RelayFailed(why.to_string()));
        } else {
            tracing::warn!("{why}; going on without a relayed candidate");
        }
    }

    /// The peer left the room.
    pub fn handle_peer_left(&mut self) {
        if self.watch.is_none() {
            self.fail(Failure::PeerLeft);
        }
    }

    /// The ICE agent stopped (every pair failed): only fatal before connecting.
    pub fn handle_ice_closed(&mut self) {
        if self.watch.is_none() {
            self.fail(Failure::NoPath);
        }
    }

    /// The controlling agent nominated a pair.
    pub fn handle_nominated(&mut self, local: SocketAddr, remote: SocketAddr, now: Instant) {
        let role = self.role;
        let Some(w) = self.watch.as_mut() else {
            if role == Role::Offerer && !self.over {
                self.events.push_back(Event::Connect(Chosen::Ice { local, remote }));
            }
            return;
        };
        if remote == w.path_remote {
            // A new pair to the same peer (from our new address): the re-punched path carries
            // consent again.
            self.regained(remote, now);
        } else if role == Role::Offerer && w.lost {
            // The QUIC server's NAT forgot: it re-punched from a new address, which ICE checked and
            // nominated while our path was lost.
            self.follow_peer(remote, now);
        }
    }

    /// The birthday method found a path (see [`Chosen::Birthday`]).
    pub fn handle_birthday_found(&mut self, socket: Option<SocketAddr>, remote: SocketAddr) {
        self.birthday = Some(BirthdayState::Over);
        self.birthday_found = Some((socket, remote));
        if self.role == Role::Offerer && self.watch.is_none() && !self.over {
            self.events.push_back(Event::Connect(Chosen::Birthday { socket, remote }));
        }
    }

    /// The birthday method found nothing (or its task ended): the relay's turn.
    pub fn handle_birthday_gave_up(&mut self, now: Instant) {
        tracing::info!("the birthday method found no path");
        self.birthday = Some(BirthdayState::Over);
        if self.watch.is_none() {
            let mut plan = Plan { birthday: None, relay_at: self.relay_at };
            plan.birthday_gave_up(&self.knowledge, now);
            self.relay_at = plan.relay_at;
            self.handle_timeout(now);
        }
    }

    /// QUIC connected to `quic_remote`: from now on the path is watched.
    pub fn handle_connected(&mut self, quic_remote: SocketAddr) {
        if self.birthday_running() {
            // A birthday attempt still running stops: the path is chosen.
            self.birthday = Some(BirthdayState::Over);
        }
        let our_mapped = self
            .local
            .iter()
            .find(|c| c.kind() == CandidateKind::ServerReflexive && c.addr().is_ipv6() == quic_remote.is_ipv6())
            .map(|c| c.addr());
        self.watch = Some(Watch {
            quic_remote,
            path_remote: quic_remote,
            lost: false,
            fresh_remotes: Vec::new(),
            fallback_at: None,
            awaiting_relayed: false,
            our_mapped,
            pending: None,
            regather_at: None,
            reopen_at: None,
        });
    }

    /// Where the peer is on the path being watched (after any redirect), once connected.
    pub fn watched_path(&self) -> Option<SocketAddr> {
        self.watch.as_ref().map(|w| w.path_remote)
    }

    /// Consent checks on the path to `remote` went unanswered for `silent_for`.
    pub fn handle_path_lost(&mut self, remote: SocketAddr, silent_for: Duration, now: Instant) {
        let relay_known = self.knowledge.relay_ours || self.remote.iter().any(is_relayed);
        let offerer = self.role == Role::Offerer;
        let Some(w) = self.watch.as_mut().filter(|w| w.path_remote == remote) else { return };
        w.lost = true;
        if relay_known {
            w.fallback_at.get_or_insert(now + RELAY_FALLBACK_AFTER);
        }
        tracing::warn!(
            "the path to {remote} has not answered consent checks for {:.1} s: asking for our mapping again",
            silent_for.as_secs_f64()
        );
        self.actions.push_back(Action::Regather { toward: remote });
        w.regather_at = Some(now + REGATHER_EVERY);
        if offerer {
            w.reopen_at = Some(now + REOPEN_EVERY);
        }
    }

    /// The path to `remote` answers consent checks again.
    pub fn handle_path_regained(&mut self, remote: SocketAddr, now: Instant) {
        if self.watch.as_ref().is_some_and(|w| w.path_remote == remote) {
            self.regained(remote, now);
        }
    }

    /// Consent on the path to `remote` expired (RFC 7675 §5.1).
    pub fn handle_consent_expired(&mut self, remote: SocketAddr, silent_for: Duration) {
        if self.watch.as_ref().is_some_and(|w| w.path_remote == remote) {
            self.fail(Failure::ConsentExpired { remote, silent_for });
        }
    }

    /// A STUN server's answer to a regather: our mapping as it is now.
    pub fn handle_reflexive(&mut self, server: SocketAddr, mapped: SocketAddr) {
        let known = self.local.iter().any(|c| c.addr() == mapped);
        let Some(w) = self.watch.as_mut() else { return };
        if Some(mapped) == w.our_mapped || known {
            return;
        }
        // Our NAT forgot us and gave a new address: offer it so the peer checks toward it and
        // opens its own NAT.
        tracing::warn!(%server, "our public address is now {mapped} (was {:?}): re-punching", w.our_mapped);
        self.actions.push_back(Action::NewMapping { server, mapped });
        w.pending = Some((w.our_mapped, mapped));
        w.our_mapped = Some(mapped);
    }

    /// A check toward the peer's fresh address `remote` succeeded: the agent may answer the
    /// peer's checks from its new address (and check back) without nominating that pair, and a
    /// check that worked there is proof enough.
    pub fn handle_path_validated(&mut self, remote: SocketAddr, now: Instant) {
        if self.awaiting_validation().contains(&remote) {
            self.follow_peer(remote, now);
        }
    }

    /// The peer address QUIC now sends to: quinn moved to a new, validated one (RFC 9000 §9).
    pub fn handle_quic_remote(&mut self, now_remote: SocketAddr, now: Instant) {
        let at_ms = self.ms_since_joined(now);
        let Some(w) = self.watch.as_mut() else { return };
        if now_remote == w.quic_remote {
            return;
        }
        tracing::warn!("the peer moved from {} to {now_remote}: QUIC migrated", w.quic_remote);
        let change = PathChange { at_ms, from: Some(w.quic_remote), to: now_remote, why: PathChangeReason::PeerMoved };
        w.quic_remote = now_remote;
        w.path_remote = now_remote;
        self.events.push_back(Event::PathChange(change));
        self.events.push_back(Event::Remote(now_remote));
    }

    /// The peer's QUIC now comes from `to` through our TURN relay (after
    /// [`Action::LetInThroughRelay`]).
    pub fn handle_relayed_arrival(&mut self, to: SocketAddr, now: Instant) {
        let at_ms = self.ms_since_joined(now);
        let Some(w) = self.watch.as_mut().filter(|w| w.awaiting_relayed) else { return };
        w.awaiting_relayed = false;
        tracing::warn!("the peer's QUIC now comes from {to} through our TURN relay");
        self.actions.push_back(Action::ResendLastQuic);
        let change = PathChange { at_ms, from: Some(w.path_remote), to, why: PathChangeReason::RelayFallback };
        w.path_remote = to;
        self.events.push_back(Event::PathChange(change));
        self.events.push_back(Event::Relayed);
    }

    /// The transfer ended: a new mapping the peer's QUIC followed before a consent check
    /// confirmed it carried traffic, so it is reported.
    pub fn handle_transfer_done(&mut self, now: Instant) {
        let at_ms = self.ms_since_joined(now);
        if let Some((from, to)) = self.watch.as_mut().and_then(|w| w.pending.take()) {
            let change = PathChange { at_ms, from, to, why: PathChangeReason::MappingChanged };
            self.events.push_back(Event::PathChange(change));
        }
        self.over = true;
    }

    fn watch_timeout(&mut self, now: Instant) {
        let Some(w) = self.watch.as_mut() else { return };
        if w.reopen_at.is_some_and(|t| now >= t) {
            if w.lost {
                self.actions.extend(w.fresh_remotes.iter().copied().map(Action::OpenToward));
                w.reopen_at = Some(now + REOPEN_EVERY);
            } else {
                w.reopen_at = None;
            }
        }
        if w.lost && w.fallback_at.is_some_and(|t| now >= t) {
            w.fallback_at = None;
            self.relay_fallback(now);
        }
        let Some(w) = self.watch.as_mut() else { return };
        if w.regather_at.is_some_and(|t| now >= t) {
            self.actions.push_back(Action::Regather { toward: w.path_remote });
            w.regather_at = Some(now + REGATHER_EVERY);
        }
    }

    fn start_relay_phase(&mut self) {
        if self.relay_phase {
            return;
        }
        self.relay_phase = true;
        tracing::info!("relayed candidates join the checks");
        self.events.push_back(Event::Phase(Phase::Relay));
        let local = self.local.iter().filter(|c| is_relayed(c)).cloned().map(Action::AddLocal);
        self.actions.extend(local);
        let remote = self.remote.iter().filter(|c| is_relayed(c)).cloned().map(Action::AddRemote);
        self.actions.extend(remote);
    }

    fn regained(&mut self, remote: SocketAddr, now: Instant) {
        let at_ms = self.ms_since_joined(now);
        let Some(w) = self.watch.as_mut() else { return };
        tracing::info!("the path to {remote} answers again");
        w.regather_at = None;
        w.reopen_at = None;
        w.lost = false;
        w.fallback_at = None;
        self.actions.push_back(Action::ResendLastQuic);
        if let Some((from, to)) = w.pending.take() {
            let change = PathChange { at_ms, from, to, why: PathChangeReason::MappingChanged };
            self.events.push_back(Event::PathChange(change));
        }
    }

    /// The QUIC server's NAT forgot and it re-punched from `remote`, which ICE has proved: quinn's
    /// client would ignore the server there (only clients migrate), so the mux redirects instead.
    fn follow_peer(&mut self, remote: SocketAddr, now: Instant) {
        let at_ms = self.ms_since_joined(now);
        let Some(w) = self.watch.as_mut() else { return };
        tracing::warn!("the peer moved from {} to {remote}: QUIC follows it through the mux", w.path_remote);
        self.actions.push_back(Action::Redirect { from: w.quic_remote, to: remote });
        self.actions.push_back(Action::ResendLastQuic);
        let change = PathChange { at_ms, from: Some(w.path_remote), to: remote, why: PathChangeReason::PeerMoved };
        w.path_remote = remote;
        w.regather_at = None;
        w.reopen_at = None;
        w.lost = false;
        w.fresh_remotes.clear();
        self.events.push_back(Event::PathChange(change));
        self.events.push_back(Event::Remote(remote));
    }

    /// The path stayed lost through re-punching (e.g. our NAT now maps per destination and the
    /// peer's filters keep our new ports out): QUIC moves to the TURN relay, and quinn never sees
    /// it (the mux redirects). Which relay: a side whose NAT forgot us (it offered a new mapping)
    /// lost its own allocation with it (TURN binds an allocation to the client's 5-tuple, RFC 8656
    /// §2.2), so it sends straight to the peer's relayed address; the peer, whose allocation still
    /// stands, permits our IP there and follows whoever sends QUIC through it.
    fn relay_fallback(&mut self, now: Instant) {
        let at_ms = self.ms_since_joined(now);
        let theirs = self.remote.iter().find(|c| is_relayed(c)).map(|c| c.addr());
        let ours = self.knowledge.relay_ours;
        let Some(w) = self.watch.as_mut() else { return };
        match (w.pending.is_some(), theirs, ours) {
            (true, Some(to), _) => {
                tracing::warn!("re-punching found no path: QUIC goes to the peer's relayed address {to}");
                self.actions.push_back(Action::Redirect { from: w.quic_remote, to });
                self.actions.push_back(Action::ResendLastQuic);
                let change = PathChange { at_ms, from: Some(w.path_remote), to, why: PathChangeReason::RelayFallback };
                w.path_remote = to;
                w.lost = false;
                w.reopen_at = None;
                w.pending = None;
                self.events.push_back(Event::PathChange(change));
                self.events.push_back(Event::Remote(to));
                self.events.push_back(Event::Relayed);
            }
            (false, _, true) => {
                tracing::warn!("re-punching found no path: letting the peer in through our TURN relay");
                self.actions.push_back(Action::LetInThroughRelay { permit: w.path_remote, quic_remote: w.quic_remote });
                w.awaiting_relayed = true;
            }
            _ => tracing::warn!("re-punching found no path and no relay is left to fall back to"),
        }
    }

    fn fail(&mut self, why: Failure) {
        if !self.over {
            self.over = true;
            self.events.push_back(Event::Failed(why));
        }
    }

    fn ms_since_joined(&self, now: Instant) -> f64 {
        (now.saturating_duration_since(self.joined).as_secs_f64() * 1e6).round() / 1e3
    }
}

#[cfg(test)]
mod tests {
    //! Each NAT pair the lab covers, on a fake clock: no sockets, no sleeps. The tests play the
    //! driver: they feed what the agent, the room and the birthday method would report and read
    //! what the race asks for.

    use super::*;
    use crate::punch::plan::{BIRTHDAY_GRACE, DIRECT_WINDOW, OPENER_SOCKETS};

    const TIMEOUT: Duration = Duration::from_secs(30);
    const OUR_HOST: &str = "10.0.1.2:5000";
    const OUR_SRFLX: &str = "203.0.113.10:40000";
    const OUR_RELAYED: &str = "198.51.100.50:50000";
    const THEIR_HOST: &str = "10.0.2.2:6000";
    const THEIR_SRFLX: &str = "203.0.113.20:41000";
    const THEIR_RELAYED: &str = "198.51.100.50:50001";
    const STUN: &str = "198.51.100.3:3478";

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn host(s: &str) -> Candidate {
        Candidate::host(a(s), "udp").unwrap()
    }
    fn srflx(s: &str, base: &str) -> Candidate {
        Candidate::server_reflexive(a(s), a(base), "udp").unwrap()
    }
    fn relayed(s: &str) -> Candidate {
        Candidate::relayed(a(s), a(OUR_HOST), "udp").unwrap()
    }

    fn knowledge(ours: Option<bool>, theirs: Option<bool>) -> Knowledge {
        let k = Knowledge::lab(ours, theirs);
        assert_eq!(k.their_srflx, Some(a(THEIR_SRFLX)));
        k
    }

    fn ours() -> Vec<Candidate> {
        vec![host(OUR_HOST), srflx(OUR_SRFLX, OUR_HOST), relayed(OUR_RELAYED)]
    }
    fn theirs() -> Vec<Candidate> {
        vec![host(THEIR_HOST), srflx(THEIR_SRFLX, THEIR_HOST), relayed(THEIR_RELAYED)]
    }

    fn race(role: Role, k: Knowledge, t0: Instant) -> Race {
        Race::new(role, k, ours(), theirs(), t0, t0, t0 + TIMEOUT)
    }

    fn actions(r: &mut Race) -> Vec<Action> {
        std::iter::from_fn(|| r.poll_action()).collect()
    }
    fn events(r: &mut Race) -> Vec<Event> {
        std::iter::from_fn(|| r.poll_event()).collect()
    }
    fn changes(evs: &[Event]) -> Vec<(Option<SocketAddr>, SocketAddr, PathChangeReason)> {
        evs.iter()
            .filter_map(|e| match e {
                Event::PathChange(c) => Some((c.from, c.to, c.why)),
                _ => None,
            })
            .collect()
    }
    fn relayed_added(acts: &[Action]) -> (bool, bool) {
        let local = acts.iter().any(|x| matches!(x, Action::AddLocal(c) if c.kind() == CandidateKind::Relayed));
        let remote = acts.iter().any(|x| matches!(x, Action::AddRemote(c) if c.kind() == CandidateKind::Relayed));
        (local, remote)
    }

    /// A race already connected over the peer's server-reflexive address.
    fn connected(role: Role, t0: Instant) -> Race {
        let mut r = race(role, knowledge(Some(false), Some(false)), t0);
        r.handle_connected(a(THEIR_SRFLX));
        actions(&mut r);
        events(&mut r);
        r
    }

    #[test]
    fn an_easy_pair_connects_on_the_first_nominated_pair_with_the_relay_held_back() {
        let t0 = Instant::now();
        let mut r = race(Role::Offerer, knowledge(Some(false), Some(false)), t0);
        let acts = actions(&mut r);
        // The direct candidates go to the agent at once, the relayed ones wait.
        assert_eq!(acts.len(), 4, "{acts:?}");
        assert_eq!(relayed_added(&acts), (false, false));
        assert!(matches!(events(&mut r)[..], [Event::Phase(Phase::Checking { pairs: 4 })]));
        assert_eq!(r.poll_timeout(), Some(t0 + DIRECT_WINDOW));
        r.handle_timeout(t0 + Duration::from_millis(500));
        assert!(actions(&mut r).is_empty());
        r.handle_nominated(a(OUR_HOST), a(THEIR_SRFLX), t0 + Duration::from_millis(600));
        let evs = events(&mut r);
        assert!(
            matches!(evs[..], [Event::Connect(Chosen::Ice { local, remote })] if local == a(OUR_HOST) && remote == a(THEIR_SRFLX)),
            "{evs:?}"
        );
        r.handle_connected(a(THEIR_SRFLX));
        // Nothing to repair and no relay phase once connected.
        assert_eq!(r.poll_timeout(), None);
        r.handle_timeout(t0 + DIRECT_WINDOW);
        assert!(actions(&mut r).is_empty() && events(&mut r).is_empty());
        // The answerer does not connect on a nomination: it waits for the offerer's QUIC.
        let mut answerer = race(Role::Answerer, knowledge(Some(false), Some(false)), t0);
        events(&mut answerer);
        answerer.handle_nominated(a(OUR_HOST), a(THEIR_SRFLX), t0);
        assert!(events(&mut answerer).is_empty());
    }

    #[test]
    fn one_hard_side_tries_the_birthday_method_after_its_grace_then_the_relay() {
        let t0 = Instant::now();
        let mut r = race(Role::Answerer, knowledge(Some(false), Some(true)), t0);
        actions(&mut r);
        events(&mut r);
        assert_eq!(r.poll_timeout(), Some(t0 + BIRTHDAY_GRACE));
        r.handle_timeout(t0 + BIRTHDAY_GRACE - Duration::from_millis(1));
        assert!(actions(&mut r).is_empty());
        r.handle_timeout(t0 + BIRTHDAY_GRACE);
        let prober = Side::Prober { peer_ip: a(THEIR_SRFLX).ip() };
        assert_eq!(actions(&mut r), vec![Action::StartBirthday(prober.clone())]);
        assert!(matches!(&events(&mut r)[..], [Event::Phase(Phase::Birthday(s))] if *s == prober));
        assert!(r.birthday_running());
        // The relay waits for the birthday verdict: only the deadline is left to wake for.
        assert_eq!(r.poll_timeout(), Some(t0 + TIMEOUT));
        r.handle_timeout(t0 + DIRECT_WINDOW);
        assert!(actions(&mut r).is_empty());
        r.handle_birthday_gave_up(t0 + Duration::from_secs(9));
        assert_eq!(relayed_added(&actions(&mut r)), (true, true));
        assert!(matches!(events(&mut r)[..], [Event::Phase(Phase::Relay)]));
        // The hard side opens mappings, and the offerer connects on the path it found.
        let mut hard = race(Role::Offerer, knowledge(Some(true), Some(false)), t0);
        actions(&mut hard);
        hard.handle_timeout(t0 + BIRTHDAY_GRACE);
        let opener = Side::Opener { peer: a(THEIR_SRFLX), sockets: OPENER_SOCKETS };
        assert_eq!(actions(&mut hard), vec![Action::StartBirthday(opener)]);
        events(&mut hard);
        let won = Some(a("10.0.1.2:45000"));
        hard.handle_birthday_found(won, a("203.0.113.20:41000"));
        assert!(matches!(events(&mut hard)[..], [Event::Connect(Chosen::Birthday { socket, .. })] if socket == won));
        assert_eq!(hard.birthday_found(), Some((won, a("203.0.113.20:41000"))));
    }

    #[test]
    fn both_hard_sides_or_relay_only_check_through_the_relay_at_once() {
        let t0 = Instant::now();
        let mut both_hard = race(Role::Offerer, knowledge(Some(true), Some(true)), t0);
        actions(&mut both_hard);
        assert_eq!(both_hard.poll_timeout(), Some(t0));
        both_hard.handle_timeout(t0);
        assert_eq!(relayed_added(&actions(&mut both_hard)), (true, true));

        let only = Knowledge { relay_only: true, ..knowledge(Some(false), Some(false)) };
        let mut r = Race::new(Role::Offerer, only.clone(), vec![], vec![relayed(THEIR_RELAYED)], t0, t0, t0 + TIMEOUT);
        assert!(actions(&mut r).is_empty(), "relayed candidates wait for the relay phase");
        r.handle_timeout(t0);
        assert_eq!(relayed_added(&actions(&mut r)), (false, true));
        // Our allocation comes after: offered to the peer and checked at once.
        r.handle_local_candidate(relayed(OUR_RELAYED), Origin::Relay);
        let acts = actions(&mut r);
        assert!(matches!(&acts[..], [Action::Trickle(_), Action::AddLocal(_)]), "{acts:?}");
        // A failed allocation ends a relay-only race, and only that one.
        let mut failing = Race::new(Role::Offerer, only, vec![], vec![], t0, t0, t0 + TIMEOUT);
        failing.handle_relay_failed("the TURN server refused the allocation");
        assert!(events(&mut failing).iter().any(|e| matches!(e, Event::Failed(Failure::RelayFailed(_)))));
        assert_eq!(failing.poll_timeout(), None);
        let mut easy = race(Role::Offerer, knowledge(Some(false), Some(false)), t0);
        events(&mut easy);
        easy.handle_relay_failed("the TURN server refused the allocation");
        assert!(events(&mut easy).is_empty());
    }

    #[test]
    fn a_relayed_candidate_trickled_late_waits_for_the_relay_phase_and_a_mapping_does_not() {
        let t0 = Instant::now();
        let mut r = Race::new(
            Role::Offerer,
            knowledge(Some(false), Some(false)),
            vec![host(OUR_HOST)],
            vec![host(THEIR_HOST)],
            t0,
            t0,
            t0 + TIMEOUT,
        );
        actions(&mut r);
        let t = t0 + Duration::from_millis(100);
        r.handle_local_candidate(relayed(OUR_RELAYED), Origin::Relay);
        r.handle_remote_candidate(relayed(THEIR_RELAYED));
        let acts = actions(&mut r);
        assert!(matches!(&acts[..], [Action::Trickle(_)]), "only offered to the peer: {acts:?}");
        // A router's port mapping that took long is checked at once.
        r.handle_local_candidate(srflx(OUR_SRFLX, OUR_HOST), Origin::PortMapping);
        assert!(matches!(&actions(&mut r)[..], [Action::Trickle(_), Action::AddLocal(_)]));
        r.handle_timeout(t);
        assert!(actions(&mut r).is_empty());
        r.handle_timeout(t0 + DIRECT_WINDOW);
        assert_eq!(relayed_added(&actions(&mut r)), (true, true));
        assert_eq!(r.local_candidates().len(), 3);
        assert_eq!(r.remote_candidates().len(), 2);
        // After the relay phase began, a late relayed candidate of the peer is checked at once.
        r.handle_remote_candidate(relayed("198.51.100.50:50002"));
        assert_eq!(relayed_added(&actions(&mut r)), (false, true));
    }

    #[test]
    fn a_router_reboot_re_punches_from_the_new_mapping_and_reports_it_once_consent_returns() {
        let t0 = Instant::now();
        let mut r = connected(Role::Answerer, t0);
        let t1 = t0 + Duration::from_secs(10);
        // Consent on another address is not our path.
        r.handle_path_lost(a(THEIR_HOST), Duration::from_secs(2), t1);
        assert!(actions(&mut r).is_empty());
        r.handle_path_lost(a(THEIR_SRFLX), Duration::from_secs(2), t1);
        assert_eq!(actions(&mut r), vec![Action::Regather { toward: a(THEIR_SRFLX) }]);
        assert_eq!(r.poll_timeout(), Some(t1 + REGATHER_EVERY));
        // The same mapping again says nothing new; a new one is offered to the peer.
        r.handle_reflexive(a(STUN), a(OUR_SRFLX));
        assert!(actions(&mut r).is_empty());
        let new = a("203.0.113.10:40001");
        r.handle_reflexive(a(STUN), new);
        assert_eq!(actions(&mut r), vec![Action::NewMapping { server: a(STUN), mapped: new }]);
        r.handle_local_candidate(srflx("203.0.113.10:40001", OUR_HOST), Origin::Reflexive);
        assert!(matches!(&actions(&mut r)[..], [Action::Trickle(_), Action::AddLocal(_)]));
        r.handle_timeout(t1 + REGATHER_EVERY);
        assert_eq!(actions(&mut r), vec![Action::Regather { toward: a(THEIR_SRFLX) }]);
        // The re-punched pair answers: the change is reported, and nothing is left to wake for.
        r.handle_path_regained(a(THEIR_SRFLX), t1 + Duration::from_secs(3));
        let evs = events(&mut r);
        assert_eq!(changes(&evs), vec![(Some(a(OUR_SRFLX)), new, PathChangeReason::MappingChanged)]);
        assert_eq!(r.poll_timeout(), None);
        // QUIC is nudged on the path that came back instead of waiting out its backoff.
        assert_eq!(actions(&mut r), vec![Action::ResendLastQuic]);
        // QUIC migrating on its own is reported as the peer moving.
        r.handle_quic_remote(a("203.0.113.20:41005"), t1 + Duration::from_secs(4));
        let evs = events(&mut r);
        assert_eq!(changes(&evs), vec![(Some(a(THEIR_SRFLX)), a("203.0.113.20:41005"), PathChangeReason::PeerMoved)]);
    }

    #[test]
    fn an_offerer_follows_a_peer_that_re_punched_from_a_new_address() {
        let t0 = Instant::now();
        let mut r = connected(Role::Offerer, t0);
        let t1 = t0 + Duration::from_secs(10);
        r.handle_path_lost(a(THEIR_SRFLX), Duration::from_secs(2), t1);
        actions(&mut r);
        let moved = a("203.0.113.20:42000");
        r.handle_remote_candidate(srflx("203.0.113.20:42000", THEIR_HOST));
        assert!(matches!(&actions(&mut r)[..], [Action::AddRemote(_), Action::OpenToward(to)] if *to == moved));
        assert_eq!(r.awaiting_validation(), &[moved]);
        // Our NAT is kept open toward it while the path stays lost.
        r.handle_timeout(t1 + REOPEN_EVERY);
        assert_eq!(actions(&mut r), vec![Action::OpenToward(moved)]);
        // A check that worked there is proof: QUIC follows it through the mux.
        r.handle_path_validated(a("203.0.113.20:49999"), t1 + REOPEN_EVERY);
        assert!(actions(&mut r).is_empty());
        r.handle_path_validated(moved, t1 + REOPEN_EVERY);
        assert_eq!(actions(&mut r), vec![Action::Redirect { from: a(THEIR_SRFLX), to: moved }, Action::ResendLastQuic]);
        let evs = events(&mut r);
        assert_eq!(changes(&evs), vec![(Some(a(THEIR_SRFLX)), moved, PathChangeReason::PeerMoved)]);
        assert!(evs.iter().any(|e| matches!(e, Event::Remote(to) if *to == moved)));
        assert!(r.awaiting_validation().is_empty());
        // The answerer never redirects: quinn's server follows a migrating client by itself.
        let mut answerer = connected(Role::Answerer, t0);
        answerer.handle_path_lost(a(THEIR_SRFLX), Duration::from_secs(2), t1);
        answerer.handle_remote_candidate(srflx("203.0.113.20:42000", THEIR_HOST));
        assert!(answerer.awaiting_validation().is_empty());
        answerer.handle_nominated(a(OUR_HOST), moved, t1);
        assert!(!actions(&mut answerer).iter().any(|x| matches!(x, Action::Redirect { .. })));
    }

    #[test]
    fn a_path_that_stays_lost_falls_back_to_a_relay() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        // Our NAT forgot us (we offered a new mapping): our allocation went with it, so QUIC
        // goes to the peer's relayed address.
        let mut forgot = connected(Role::Offerer, t0);
        forgot.handle_path_lost(a(THEIR_SRFLX), Duration::from_secs(2), t1);
        forgot.handle_reflexive(a(STUN), a("203.0.113.10:40001"));
        actions(&mut forgot);
        let mut wakes = 0;
        while let Some(t) = forgot.poll_timeout().filter(|t| *t <= t1 + RELAY_FALLBACK_AFTER) {
            forgot.handle_timeout(t);
            wakes += 1;
            assert!(wakes < 100, "the race keeps waking");
        }
        let acts = actions(&mut forgot);
        assert!(acts.contains(&Action::Redirect { from: a(THEIR_SRFLX), to: a(THEIR_RELAYED) }), "{acts:?}");
        assert!(acts.contains(&Action::ResendLastQuic), "{acts:?}");
        let evs = events(&mut forgot);
        assert_eq!(changes(&evs), vec![(Some(a(THEIR_SRFLX)), a(THEIR_RELAYED), PathChangeReason::RelayFallback)]);
        assert!(evs.iter().any(|e| matches!(e, Event::Relayed)));
        // The peer's NAT forgot: we let it in through our relay and report where its QUIC comes from.
        let mut stayed = connected(Role::Answerer, t0);
        stayed.handle_path_lost(a(THEIR_SRFLX), Duration::from_secs(2), t1);
        actions(&mut stayed);
        stayed.handle_timeout(t1 + RELAY_FALLBACK_AFTER);
        let acts = actions(&mut stayed);
        let let_in = Action::LetInThroughRelay { permit: a(THEIR_SRFLX), quic_remote: a(THEIR_SRFLX) };
        assert!(acts.contains(&let_in), "{acts:?}");
        assert!(!acts.contains(&Action::ResendLastQuic), "nothing came back yet: {acts:?}");
        stayed.handle_relayed_arrival(a("198.51.100.50:50009"), t1 + Duration::from_secs(7));
        assert_eq!(actions(&mut stayed), vec![Action::ResendLastQuic]);
        let evs = events(&mut stayed);
        assert_eq!(
            changes(&evs),
            vec![(Some(a(THEIR_SRFLX)), a("198.51.100.50:50009"), PathChangeReason::RelayFallback)]
        );
        // Without any relay, the path stays lost and nothing falls back.
        let none = Knowledge { relay_available: false, relay_ours: false, ..knowledge(Some(false), Some(false)) };
        let mut bare =
            Race::new(Role::Offerer, none, ours()[..2].to_vec(), theirs()[..2].to_vec(), t0, t0, t0 + TIMEOUT);
        bare.handle_connected(a(THEIR_SRFLX));
        bare.handle_path_lost(a(THEIR_SRFLX), Duration::from_secs(2), t1);
        bare.handle_timeout(t1 + RELAY_FALLBACK_AFTER);
        assert!(
            !actions(&mut bare).iter().any(|x| matches!(x, Action::Redirect { .. } | Action::LetInThroughRelay { .. }))
        );
    }

    #[test]
    fn a_peer_that_leaves_or_never_answers_ends_the_race_within_its_deadline() {
        let t0 = Instant::now();
        let mut left = race(Role::Offerer, knowledge(Some(false), Some(true)), t0);
        events(&mut left);
        left.handle_peer_left();
        assert!(matches!(events(&mut left)[..], [Event::Failed(Failure::PeerLeft)]));
        assert_eq!(left.poll_timeout(), None);
        left.handle_nominated(a(OUR_HOST), a(THEIR_SRFLX), t0);
        assert!(events(&mut left).is_empty(), "no connecting after the end");
        // Silence: every wake-up is bounded, and the last one is the deadline.
        let mut silent = race(Role::Offerer, knowledge(Some(false), Some(true)), t0);
        events(&mut silent);
        let mut wakes = 0;
        while let Some(t) = silent.poll_timeout() {
            assert!(t <= t0 + TIMEOUT);
            silent.handle_timeout(t);
            wakes += 1;
            assert!(wakes < 10, "the race keeps waking");
        }
        let evs = events(&mut silent);
        assert!(matches!(evs.last(), Some(Event::Failed(Failure::NoPath))), "{evs:?}");
        // Every pair failed: the agent stops, and so does the race.
        let mut failed = race(Role::Answerer, knowledge(Some(false), Some(false)), t0);
        events(&mut failed);
        failed.handle_ice_closed();
        assert!(matches!(events(&mut failed)[..], [Event::Failed(Failure::NoPath)]));
        // After connecting, the peer gone silent ends in consent expiry (RFC 7675 §5.1).
        let mut gone = connected(Role::Offerer, t0);
        gone.handle_peer_left();
        assert!(events(&mut gone).is_empty(), "the path holds without the room");
        gone.handle_consent_expired(a(THEIR_SRFLX), Duration::from_secs(30));
        assert!(matches!(events(&mut gone)[..], [Event::Failed(Failure::ConsentExpired { .. })]));
    }
}
