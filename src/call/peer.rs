//! The call's session core: str0m's sans-IO `Rtc` (ICE, DTLS, SRTP, RTP/RTCP) plus our media
//! sources and sinks, with the same shape as every natkit core — feed it datagrams and
//! timeouts with `now`, take out datagrams to send, events, and the next wake-up time. It
//! never reads the clock or touches a socket, so two peers can be driven against each other
//! in memory with a fake clock.
//!
//! Negotiation is JSEP offer/answer (RFC 8829) with trickled candidates (RFC 8838); media is
//! one VP8 video and one Opus audio m-line, bundled (RFC 8843), as the browser page sends.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::stats::{MediaEgressStats, MediaIngressStats, PeerStats};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

use super::report::{CallPath, CandidateType, DirectionStats, MediaStats, PathEnd};
use super::sink::{AudioSink, VideoSink};
use super::source::{AudioSource, VideoSource};

/// Something the driver must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// ICE found a pair and DTLS finished: media can flow.
    Connected,
    /// ICE lost every pair (str0m's "disconnected"; it may come back).
    IceDisconnected,
    /// ICE has a working pair again after a disconnection.
    IceReconnected,
    /// The session closed (the peer sent DTLS close_notify, or we closed).
    Closed,
    /// str0m refused something; the call cannot go on.
    Failed(String),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the peer's SDP does not parse: {0}")]
    BadSdp(String),
    #[error("the peer's SDP was refused: {0}")]
    Refused(String),
    #[error("an answer came but we made no offer")]
    UnexpectedAnswer,
    #[error("nothing to offer (no media)")]
    NothingToOffer,
}

/// Per-kind bookkeeping the report is built from.
#[derive(Debug, Default, Clone)]
struct KindState {
    codec: Option<String>,
    frames_sent: u64,
    egress: Option<MediaEgressStats>,
    ingress: Option<MediaIngressStats>,
    clock_rate: u32,
}

/// What we want on the m-lines we create as offerer.
#[derive(Debug, Clone, Copy)]
pub struct Tracks {
    pub send: bool,
}

pub struct CallPeer {
    rtc: Rtc,
    tracks: Tracks,
    video: Option<VideoSource>,
    audio: Option<AudioSource>,
    video_sink: VideoSink,
    audio_sink: AudioSink,
    mids: HashMap<Mid, MediaKind>,
    pending_offer: Option<SdpPendingOffer>,
    next_video: Option<Instant>,
    next_audio: Option<Instant>,
    want_keyframe: bool,
    connected_at: Option<Instant>,
    transmits: VecDeque<Datagram>,
    events: VecDeque<PeerEvent>,
    rtc_timeout: Option<Instant>,
    video_state: KindState,
    audio_state: KindState,
    peer_stats: Option<PeerStats>,
    local_types: HashMap<SocketAddr, CandidateType>,
    remote_types: HashMap<SocketAddr, CandidateType>,
    last_now: Instant,
}

impl CallPeer {
    /// A peer sending `video`/`audio` (either may be `None`), recording into `record_dir`.
    pub fn new(
        now: Instant,
        video: Option<VideoSource>,
        audio: Option<AudioSource>,
        record_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let rtc = Rtc::builder()
            .set_crypto_provider(Arc::new(str0m_rust_crypto::default_provider()))
            .clear_codecs()
            .enable_vp8(true)
            .enable_opus(true, false)
            .set_stats_interval(Some(Duration::from_secs(1)))
            .build(now);
        let tracks = Tracks { send: video.is_some() || audio.is_some() };
        Ok(CallPeer {
            rtc,
            tracks,
            video,
            audio,
            video_sink: VideoSink::new(record_dir)?,
            audio_sink: AudioSink::new(record_dir)?,
            mids: HashMap::new(),
            pending_offer: None,
            next_video: None,
            next_audio: None,
            want_keyframe: false,
            connected_at: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rtc_timeout: None,
            video_state: KindState { clock_rate: 90_000, ..Default::default() },
            audio_state: KindState { clock_rate: 48_000, ..Default::default() },
            peer_stats: None,
            local_types: HashMap::new(),
            remote_types: HashMap::new(),
            last_now: now,
        })
    }

    /// Adds one of our candidates; returns its SDP `candidate:` line to trickle, or `None`
    /// if ICE found it redundant.
    pub fn add_local_candidate(&mut self, now: Instant, c: Candidate) -> Option<String> {
        let kind = CandidateType::from(c.kind());
        let addr = c.addr();
        let line = self.rtc.add_local_candidate(c).map(|c| c.to_sdp_string());
        if line.is_some() {
            self.local_types.insert(addr, kind);
        }
        self.drain(now);
        line
    }

    /// Adds a trickled remote candidate (`candidate:...` with or without `a=`). An empty
    /// string is the end-of-candidates marker and is ignored.
    pub fn add_remote_candidate(&mut self, now: Instant, line: &str) -> Result<(), PeerError> {
        let line = line.trim().trim_start_matches("a=");
        if line.is_empty() {
            return Ok(());
        }
        let c = Candidate::from_sdp_string(line).map_err(|e| PeerError::BadSdp(format!("candidate '{line}': {e}")))?;
        self.remote_types.insert(c.addr(), CandidateType::from(c.kind()));
        self.rtc.add_remote_candidate(c);
        self.drain(now);
        Ok(())
    }

    fn direction(&self) -> Direction {
        if self.tracks.send { Direction::SendRecv } else { Direction::RecvOnly }
    }

    /// Makes the offer: one video and one audio m-line.
    pub fn create_offer(&mut self, now: Instant) -> Result<String, PeerError> {
        let dir = self.direction();
        let mut api = self.rtc.sdp_api();
        let v = api.add_media(MediaKind::Video, dir, Some("natkit".into()), Some("natkit-video".into()), None);
        let a = api.add_media(MediaKind::Audio, dir, Some("natkit".into()), Some("natkit-audio".into()), None);
        let (offer, pending) = api.apply().ok_or(PeerError::NothingToOffer)?;
        self.mids.insert(v, MediaKind::Video);
        self.mids.insert(a, MediaKind::Audio);
        self.pending_offer = Some(pending);
        self.drain(now);
        Ok(offer.to_sdp_string())
    }

    /// Applies the peer's answer to our offer.
    pub fn accept_answer(&mut self, now: Instant, sdp: &str) -> Result<(), PeerError> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| PeerError::BadSdp(e.to_string()))?;
        let pending = self.pending_offer.take().ok_or(PeerError::UnexpectedAnswer)?;
        self.rtc.sdp_api().accept_answer(pending, answer).map_err(|e| PeerError::Refused(e.to_string()))?;
        self.note_sdp_candidates(sdp);
        self.drain(now);
        Ok(())
    }

    /// Answers the peer's offer.
    pub fn accept_offer(&mut self, now: Instant, sdp: &str) -> Result<String, PeerError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| PeerError::BadSdp(e.to_string()))?;
        let answer = self.rtc.sdp_api().accept_offer(offer).map_err(|e| PeerError::Refused(e.to_string()))?;
        self.note_sdp_candidates(sdp);
        self.drain(now);
        Ok(answer.to_sdp_string())
    }

    /// Remembers the types of the candidates inside the peer's SDP (RFC 8839 §5.1): a peer that
    /// does not trickle (aiortc, any non-trickling stack) sends them only there, and the path's
    /// remote end is then one of them, not peer-reflexive.
    fn note_sdp_candidates(&mut self, sdp: &str) {
        for line in sdp.lines().filter_map(|l| l.trim().strip_prefix("a=")).filter(|l| l.starts_with("candidate:")) {
            if let Ok(c) = Candidate::from_sdp_string(line) {
                self.remote_types.entry(c.addr()).or_insert(CandidateType::from(c.kind()));
            }
        }
    }

    /// The types of our candidates and of the peer's (from its SDP and its trickle).
    pub fn candidate_types(&self) -> (Vec<CandidateType>, Vec<CandidateType>) {
        (self.local_types.values().copied().collect(), self.remote_types.values().copied().collect())
    }

    /// The `mid` of the first m-line, for the `sdpMid` of trickled candidates.
    pub fn first_mid(sdp: &str) -> Option<String> {
        sdp.lines().find_map(|l| l.trim().strip_prefix("a=mid:").map(str::to_string))
    }

    /// A datagram arrived on `destination` (our socket) from `source`.
    pub fn handle_receive(&mut self, now: Instant, source: SocketAddr, destination: SocketAddr, data: &[u8]) {
        let Ok(contents) = data.try_into() else {
            tracing::debug!("dropped a {}-byte datagram from {source}: not STUN, DTLS or RTP", data.len());
            return;
        };
        let input = Input::Receive(now, Receive { proto: Protocol::Udp, source, destination, contents });
        if self.rtc.accepts(&input) {
            if let Err(e) = self.rtc.handle_input(input) {
                self.events.push_back(PeerEvent::Failed(e.to_string()));
            }
            self.drain(now);
        } else {
            tracing::debug!("dropped a datagram from {source} that no ICE pair or DTLS session expects");
        }
    }

    /// Time has come (see [`poll_timeout`](Self::poll_timeout)): send due media, run timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.send_due_media(now);
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            self.events.push_back(PeerEvent::Failed(e.to_string()));
        }
        self.drain(now);
    }

    /// When to call `handle_timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.rtc_timeout, self.next_video, self.next_audio].into_iter().flatten().min()
    }

    /// Whether datagrams are waiting (e.g. relayed input just produced answers).
    pub fn poll_transmit_pending(&self) -> bool {
        !self.transmits.is_empty()
    }

    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    pub fn is_connected(&self) -> bool {
        self.connected_at.is_some() && self.rtc.is_alive()
    }

    pub fn connected_at(&self) -> Option<Instant> {
        self.connected_at
    }

    /// Hang up: DTLS close_notify to the peer, then the session is dead.
    pub fn close(&mut self, now: Instant) {
        if let Err(e) = self.rtc.close() {
            tracing::debug!("closing the session: {e}");
        }
        self.drain(now);
        self.next_video = None;
        self.next_audio = None;
    }

    fn mid_of(&self, kind: MediaKind) -> Option<Mid> {
        self.mids.iter().find(|(_, k)| **k == kind).map(|(m, _)| *m)
    }

    fn send_due_media(&mut self, now: Instant) {
        if self.connected_at.is_none() {
            return;
        }
        if let (Some(due), Some(mid)) = (self.next_video, self.mid_of(MediaKind::Video))
            && now >= due
        {
            let force = std::mem::take(&mut self.want_keyframe);
            let interval = self.video.as_ref().map(|v| v.interval()).unwrap_or(Duration::from_millis(33));
            self.next_video = Some(next_tick(due, interval, now));
            match self.video.as_mut().map(|v| v.next_frame(force)) {
                Some(Ok(Some(frame))) => {
                    if self.write(
                        now,
                        mid,
                        Codec::Vp8,
                        MediaTime::new(frame.rtp_time, Frequency::NINETY_KHZ),
                        frame.data,
                    ) {
                        self.video_state.frames_sent += 1;
                    }
                }
                Some(Ok(None)) | None => {}
                Some(Err(e)) => {
                    tracing::warn!("video source: {e}; no more video");
                    self.video = None;
                    self.next_video = None;
                }
            }
        }
        if let (Some(due), Some(mid)) = (self.next_audio, self.mid_of(MediaKind::Audio))
            && now >= due
        {
            let interval = self.audio.as_ref().map(|a| a.interval()).unwrap_or(Duration::from_millis(20));
            self.next_audio = Some(next_tick(due, interval, now));
            match self.audio.as_mut().map(|a| a.next_frame()) {
                Some(Ok(frame)) => {
                    let time = MediaTime::new(frame.rtp_time, Frequency::FORTY_EIGHT_KHZ);
                    if self.write(now, mid, Codec::Opus, time, frame.data) {
                        self.audio_state.frames_sent += 1;
                    }
                }
                None => {}
                Some(Err(e)) => {
                    tracing::warn!("audio source: {e}; no more audio");
                    self.audio = None;
                    self.next_audio = None;
                }
            }
        }
    }

    /// Writes one frame on `mid` with the negotiated payload type for `codec`.
    fn write(&mut self, now: Instant, mid: Mid, codec: Codec, time: MediaTime, data: Vec<u8>) -> bool {
        let Some(writer) = self.rtc.writer(mid) else { return false };
        let Some(pt) = writer.payload_params().find(|p| p.spec().codec == codec).map(|p| p.pt()) else {
            return false;
        };
        let ok = match writer.write(pt, now, time, data) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!("writing {codec:?} on mid {mid}: {e}");
                false
            }
        };
        self.drain(now);
        ok
    }

    /// Runs str0m until it wants to wait, collecting datagrams and events.
    fn drain(&mut self, now: Instant) {
        self.last_now = now;
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_timeout = Some(t);
                    break;
                }
                Ok(Output::Transmit(t)) => self.transmits.push_back(Datagram {
                    source: t.source,
                    destination: t.destination,
                    contents: t.contents.to_vec(),
                }),
                Ok(Output::Event(e)) => self.on_event(now, e),
                Err(e) => {
                    self.events.push_back(PeerEvent::Failed(e.to_string()));
                    self.rtc_timeout = None;
                    break;
                }
            }
        }
    }

    fn state_mut(&mut self, kind: MediaKind) -> &mut KindState {
        match kind {
            MediaKind::Video => &mut self.video_state,
            MediaKind::Audio => &mut self.audio_state,
        }
    }

    fn on_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::Connected => {
                self.connected_at = Some(now);
                if self.video.is_some() {
                    self.next_video = Some(now);
                }
                if self.audio.is_some() {
                    self.next_audio = Some(now);
                }
                self.events.push_back(PeerEvent::Connected);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.events.push_back(PeerEvent::IceDisconnected);
            }
            Event::IceConnectionStateChange(IceConnectionState::Connected | IceConnectionState::Completed)
                if self.connected_at.is_some() =>
            {
                self.events.push_back(PeerEvent::IceReconnected);
            }
            Event::MediaAdded(m) => {
                self.mids.insert(m.mid, m.kind);
            }
            Event::MediaData(d) => {
                let kind = self.mids.get(&d.mid).copied();
                let codec = format!("{:?}", d.params.spec().codec).to_uppercase();
                let result = match kind {
                    Some(MediaKind::Video) => {
                        self.video_state.codec.get_or_insert(codec);
                        self.video_sink.push(&d.data, d.time.numer())
                    }
                    Some(MediaKind::Audio) => {
                        self.audio_state.codec.get_or_insert(codec);
                        self.audio_sink.push(&d.data)
                    }
                    None => Ok(()),
                };
                if let Err(e) = result {
                    tracing::warn!("recording: {e}");
                }
            }
            Event::KeyframeRequest(_) => self.want_keyframe = true,
            // Loss and RTT come with RTCP reports, not every stats interval: keep the last known.
            Event::MediaEgressStats(mut s) => {
                if let Some(kind) = self.mids.get(&s.mid).copied() {
                    let st = self.state_mut(kind);
                    if let Some(old) = st.egress.take() {
                        s.loss = s.loss.or(old.loss);
                        s.rtt = s.rtt.or(old.rtt);
                        s.remote = s.remote.or(old.remote);
                    }
                    st.egress = Some(s);
                }
            }
            Event::MediaIngressStats(mut s) => {
                if let Some(kind) = self.mids.get(&s.mid).copied() {
                    let st = self.state_mut(kind);
                    if let Some(old) = st.ingress.take() {
                        s.loss = s.loss.or(old.loss);
                        s.rtt = s.rtt.or(old.rtt);
                    }
                    st.ingress = Some(s);
                }
            }
            Event::PeerStats(s) => self.peer_stats = Some(s),
            Event::Closed => self.events.push_back(PeerEvent::Closed),
            _ => {}
        }
    }

    /// The candidate pair in use, as the last stats saw it.
    pub fn path(&self) -> Option<CallPath> {
        let pair = self.peer_stats.as_ref()?.selected_candidate_pair.as_ref()?;
        Some(CallPath {
            local: PathEnd { kind: self.local_types.get(&pair.local.addr).copied(), address: pair.local.addr },
            remote: PathEnd {
                kind: Some(self.remote_types.get(&pair.remote.addr).copied().unwrap_or(CandidateType::Prflx)),
                address: pair.remote.addr,
            },
        })
    }

    /// Sent and received figures as of str0m's last stats snapshot (once a second).
    pub fn stats(&self) -> (DirectionStats, DirectionStats) {
        // Byte counts come from str0m's stats snapshot (once a second): divide by the time up
        // to that snapshot, not up to now, or the rate reads low.
        let connected = self.connected_at;
        let kbps = |bytes: u64, at: Instant| {
            let secs = connected.map(|t| at.saturating_duration_since(t).as_secs_f64()).unwrap_or(0.0);
            (secs > 0.0).then(|| bytes as f64 * 8.0 / 1000.0 / secs)
        };
        let peer_rtt = self.peer_stats.as_ref().and_then(|p| p.rtt).map(ms);
        let mut sent = DirectionStats::default();
        let mut received = DirectionStats::default();
        for (kind, st, counts) in [
            (MediaKind::Video, &self.video_state, self.video_sink.counts()),
            (MediaKind::Audio, &self.audio_state, self.audio_sink.counts()),
        ] {
            let send_codec = match kind {
                MediaKind::Video if self.video.is_some() || st.frames_sent > 0 => Some("VP8".to_string()),
                MediaKind::Audio if self.audio.is_some() || st.frames_sent > 0 => Some("OPUS".to_string()),
                _ => None,
            };
            let out = MediaStats {
                codec: send_codec,
                packets: st.egress.as_ref().map_or(0, |e| e.packets),
                bytes: st.egress.as_ref().map_or(0, |e| e.bytes),
                frames: st.frames_sent,
                decode_errors: None,
                packet_loss: st.egress.as_ref().and_then(|e| e.loss).map(f64::from),
                jitter_ms: st
                    .egress
                    .as_ref()
                    .and_then(|e| e.remote.as_ref())
                    .map(|r| r.jitter as f64 * 1000.0 / st.clock_rate as f64),
                rtt_ms: st.egress.as_ref().and_then(|e| e.rtt).map(ms).or(peer_rtt),
                bitrate_kbps: st.egress.as_ref().and_then(|e| kbps(e.bytes, e.timestamp)),
            };
            let inc = MediaStats {
                codec: st.codec.clone(),
                packets: st.ingress.as_ref().map_or(0, |i| i.packets),
                bytes: st.ingress.as_ref().map_or(0, |i| i.bytes),
                frames: counts.frames,
                decode_errors: Some(counts.decode_errors),
                packet_loss: st.ingress.as_ref().and_then(|i| i.loss).map(f64::from),
                jitter_ms: st.ingress.as_ref().map(|i| i.jitter as f64 * 1000.0 / st.clock_rate as f64),
                rtt_ms: st.ingress.as_ref().and_then(|i| i.rtt).map(ms).or(peer_rtt),
                bitrate_kbps: st.ingress.as_ref().and_then(|i| kbps(i.bytes, i.timestamp)),
            };
            match kind {
                MediaKind::Video => {
                    sent.video = out;
                    received.video = inc;
                }
                MediaKind::Audio => {
                    sent.audio = out;
                    received.audio = inc;
                }
            }
        }
        (sent, received)
    }

    /// Closes the recordings; returns the paths written.
    pub fn finish_recording(&mut self) -> (Option<String>, Option<String>) {
        let video = match self.video_sink.finish() {
            Ok(p) => p.map(|p| p.display().to_string()),
            Err(e) => {
                tracing::warn!("finishing video recording: {e}");
                None
            }
        };
        let audio = match self.audio_sink.finish() {
            Ok(()) if self.audio_sink.counts().frames > 0 => Some("audio.ogg".to_string()),
            Ok(()) => None,
            Err(e) => {
                tracing::warn!("finishing audio recording: {e}");
                None
            }
        };
        (video, audio)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The next frame time: one interval after the last, or after `now` if we fell far behind
/// (a stalled process should not burst frames to catch up).
fn next_tick(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next + interval * 4 < now { now + interval } else { next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::source::PatternSettings;

    fn peer(now: Instant, addr: &str) -> (CallPeer, SocketAddr) {
        let video =
            VideoSource::pattern(PatternSettings { width: 160, height: 120, fps: 30, bitrate_kbps: 200 }).unwrap();
        let audio = AudioSource::tone(440.0).unwrap();
        let mut p = CallPeer::new(now, Some(video), Some(audio), None).unwrap();
        let addr: SocketAddr = addr.parse().unwrap();
        p.add_local_candidate(now, Candidate::host(addr, "udp").unwrap()).unwrap();
        (p, addr)
    }

    /// Runs both peers on a fake clock, delivering each datagram to the other at once.
    fn run(a: &mut CallPeer, b: &mut CallPeer, now: &mut Instant, until: Instant) {
        run_with(a, b, now, until, true)
    }

    /// As `run`; with `a_to_b` false, everything `a` sends is lost.
    fn run_with(a: &mut CallPeer, b: &mut CallPeer, now: &mut Instant, until: Instant, a_to_b: bool) {
        while *now < until {
            while let Some(d) = a.poll_transmit() {
                if a_to_b {
                    b.handle_receive(*now, d.source, d.destination, &d.contents);
                }
            }
            while let Some(d) = b.poll_transmit() {
                a.handle_receive(*now, d.source, d.destination, &d.contents);
            }
            let next = [a.poll_timeout(), b.poll_timeout()].into_iter().flatten().min().unwrap_or(until);
            *now = next.max(*now + Duration::from_micros(100)).min(until);
            a.handle_timeout(*now);
            b.handle_timeout(*now);
        }
    }

    #[test]
    fn two_peers_connect_and_exchange_video_and_audio_both_ways_in_memory() {
        let start = Instant::now();
        let mut now = start;
        let (mut a, _) = peer(now, "198.51.100.1:5000");
        let (mut b, _) = peer(now, "203.0.113.2:6000");
        let offer = a.create_offer(now).unwrap();
        assert!(offer.contains("VP8") && offer.to_lowercase().contains("opus"));
        let answer = b.accept_offer(now, &offer).unwrap();
        a.accept_answer(now, &answer).unwrap();
        // Candidates travel over signaling (trickle); here straight across.
        a.add_remote_candidate(now, "candidate:1 1 udp 2130706431 203.0.113.2 6000 typ host").unwrap();
        b.add_remote_candidate(now, "a=candidate:1 1 udp 2130706431 198.51.100.1 5000 typ host").unwrap();
        run(&mut a, &mut b, &mut now, start + Duration::from_secs(3));
        assert!(a.is_connected() && b.is_connected());
        assert_eq!(a.poll_event(), Some(PeerEvent::Connected));
        for p in [&a, &b] {
            let (sent, received) = p.stats();
            assert!(sent.video.frames > 30, "sent video frames: {:?}", sent.video);
            assert!(sent.audio.frames > 50, "sent audio frames: {:?}", sent.audio);
            assert!(received.video.frames > 30, "received video: {:?}", received.video);
            assert!(received.audio.frames > 50, "received audio: {:?}", received.audio);
            assert_eq!(received.video.decode_errors, Some(0));
            assert_eq!(received.video.codec.as_deref(), Some("VP8"));
            assert_eq!(received.audio.codec.as_deref(), Some("OPUS"));
            assert!(received.video.packets > 0 && received.video.bytes > 0);
            let path = p.path().unwrap();
            assert_eq!(path.local.kind, Some(CandidateType::Host));
            assert_eq!(path.remote.kind, Some(CandidateType::Host));
        }
        a.close(now);
        run(&mut a, &mut b, &mut now, start + Duration::from_secs(4));
        assert!(std::iter::from_fn(|| b.poll_event()).any(|e| e == PeerEvent::Closed));
    }

    #[test]
    fn a_host_candidate_that_came_inside_the_sdp_is_reported_as_host_not_prflx() {
        let start = Instant::now();
        let mut now = start;
        let (mut a, _) = peer(now, "198.51.100.1:5000");
        let (mut b, _) = peer(now, "203.0.113.2:6000");
        let offer = a.create_offer(now).unwrap();
        assert!(offer.contains("a=candidate:"), "the offer carries its candidates: {offer}");
        let answer = b.accept_offer(now, &offer).unwrap();
        a.accept_answer(now, &answer).unwrap();
        // No trickle at all: each side knows the other's candidates from the SDP only.
        run(&mut a, &mut b, &mut now, start + Duration::from_secs(3));
        assert!(a.is_connected() && b.is_connected());
        for p in [&a, &b] {
            let path = p.path().unwrap();
            assert_eq!(path.remote.kind, Some(CandidateType::Host), "{path:?}");
        }
        assert_eq!(a.candidate_types().1, vec![CandidateType::Host]);
    }

    #[test]
    fn lost_checks_are_reported_as_ice_disconnected() {
        let start = Instant::now();
        let mut now = start;
        let (mut a, _) = peer(now, "198.51.100.1:5000");
        let (mut b, _) = peer(now, "203.0.113.2:6000");
        let offer = a.create_offer(now).unwrap();
        let answer = b.accept_offer(now, &offer).unwrap();
        a.accept_answer(now, &answer).unwrap();
        a.add_remote_candidate(now, "candidate:1 1 udp 2130706431 203.0.113.2 6000 typ host").unwrap();
        b.add_remote_candidate(now, "candidate:1 1 udp 2130706431 198.51.100.1 5000 typ host").unwrap();
        run(&mut a, &mut b, &mut now, start + Duration::from_secs(2));
        while a.poll_event().is_some() {}
        run_with(&mut a, &mut b, &mut now, start + Duration::from_secs(45), false);
        let events: Vec<_> = std::iter::from_fn(|| a.poll_event()).collect();
        // ICE consent (RFC 7675) runs out: the driver gives the call LOST_GRACE more, then fails it.
        assert!(events.contains(&PeerEvent::IceDisconnected), "{events:?}");
    }

    #[test]
    fn garbage_sdp_and_candidates_are_errors_not_panics() {
        let now = Instant::now();
        let (mut a, _) = peer(now, "198.51.100.1:5000");
        assert!(matches!(a.accept_offer(now, "v=0\r\nbogus"), Err(PeerError::BadSdp(_))));
        assert!(matches!(a.accept_answer(now, "nonsense"), Err(PeerError::BadSdp(_))));
        assert!(a.add_remote_candidate(now, "candidate:garbage").is_err());
        assert!(a.add_remote_candidate(now, "").is_ok());
        a.handle_receive(now, "203.0.113.9:1".parse().unwrap(), "198.51.100.1:5000".parse().unwrap(), &[1, 2, 3]);
    }

    #[test]
    fn first_mid_is_found() {
        assert_eq!(CallPeer::first_mid("v=0\r\nm=video 9\r\na=mid:0\r\na=mid:1\r\n").as_deref(), Some("0"));
    }
}
