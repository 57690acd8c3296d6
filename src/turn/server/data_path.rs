//! The data path (RFC 8656 §11 Send/Data indications, §12 channels): client
//! ChannelData and Send indications out to peers, peer datagrams back to
//! clients as ChannelData or Data indications, and traffic between two
//! allocations of this relay. Every packet is re-checked against the live
//! allocation table (a peer may be a relayed port freed since the channel
//! was bound). Reads and writes the wire format by hand, in place, without
//! allocating.

use std::net::SocketAddr;
use std::time::Instant;

use super::peer_policy::{Refusal, Verdict};
use super::{FiveTuple, RelayId, Server, Target, Transmit, wire};
use crate::turn::channel_data;

impl Server {
    /// A datagram from a peer on relayed socket `relay`. It sits at
    /// `buf[PEER_HEADROOM..PEER_HEADROOM + len]`, and `buf` has
    /// [`crate::turn::channel_data::PEER_TAILROOM`] more bytes after it, so the ChannelData header
    /// and padding are written in place.
    pub fn handle_peer<'a>(
        &'a mut self,
        relay: RelayId,
        from: SocketAddr,
        buf: &'a mut [u8],
        len: usize,
        now: Instant,
    ) -> Option<Transmit<'a>> {
        let Some(a) = self.allocs.get(relay) else {
            self.stats.dropped_no_allocation += 1;
            return None;
        };
        if !a.permissions.allows(from.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        let client = a.client;
        self.stats.packets_from_peers += 1;
        self.stats.bytes_from_peers += len as u64;
        if let Some(number) = a.channels.number_of(from, now) {
            let n = channel_data::frame_in_place(buf, number, len, client.transport.is_reliable())?;
            return Some(Transmit { target: Target::Client(client), payload: &buf[..n] });
        }
        let data = buf.get(channel_data::PEER_HEADROOM..channel_data::PEER_HEADROOM + len)?;
        let n = wire::data_indication(&mut self.scratch, from, data, rand::random())?;
        Some(Transmit { target: Target::Client(client), payload: &self.scratch[..n] })
    }

    pub(super) fn client_channel_data<'a>(
        &'a mut self,
        from: FiveTuple,
        packet: &'a [u8],
        now: Instant,
    ) -> Option<Transmit<'a>> {
        let Some((number, data)) = channel_data::parse(packet) else {
            self.stats.dropped_malformed += 1;
            return None;
        };
        let Some(relay) = self.allocs.relay_of_client(&from) else {
            self.stats.dropped_no_allocation += 1;
            return None;
        };
        let a = self.allocs.get(relay)?;
        let Some(peer) = a.channels.peer_of(number, now) else {
            self.stats.dropped_no_channel += 1;
            return None;
        };
        if !a.permissions.allows(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        self.relay_to_peer(relay, peer, data, now)
    }

    /// Relays `data` from allocation `relay` to `peer`: out of a relayed
    /// socket, or straight to the client of the allocation that owns `peer`.
    pub(super) fn relay_to_peer<'a>(
        &'a mut self,
        relay: RelayId,
        peer: SocketAddr,
        data: &'a [u8],
        now: Instant,
    ) -> Option<Transmit<'a>> {
        if let Some(target) = self.allocs.relay_at(peer) {
            return self.deliver_internal(relay, target, data, now);
        }
        // Checked on every packet (one lookup): a channel or permission made to
        // another allocation's relayed address outlives that allocation, and the
        // port may now belong to another process on this host.
        if self.allocs.recently_freed(peer) {
            self.stats.refusals[Refusal::OwnAddress.index()] += 1;
            return None;
        }
        self.stats.packets_to_peers += 1;
        self.stats.bytes_to_peers += data.len() as u64;
        Some(Transmit { target: Target::Peer { relay, peer }, payload: data })
    }

    /// Two allocations of this relay talking: what the peer allocation's
    /// client would get had the packet gone out and come back in.
    pub(super) fn deliver_internal<'a>(
        &'a mut self,
        from: RelayId,
        to: RelayId,
        data: &[u8],
        now: Instant,
    ) -> Option<Transmit<'a>> {
        let source = self.allocs.get(from)?.relayed;
        let b = self.allocs.get(to)?;
        if !b.permissions.allows(source.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        let client = b.client;
        self.stats.packets_internal += 1;
        self.stats.bytes_internal += data.len() as u64;
        let n = match b.channels.number_of(source, now) {
            Some(number) => {
                let end = channel_data::HEADER + data.len();
                self.scratch.get_mut(channel_data::HEADER..end)?.copy_from_slice(data);
                channel_data::frame_in_place(&mut self.scratch, number, data.len(), client.transport.is_reliable())?
            }
            None => wire::data_indication(&mut self.scratch, source, data, rand::random())?,
        };
        Some(Transmit { target: Target::Client(client), payload: &self.scratch[..n] })
    }

    pub(super) fn send_indication<'a>(
        &'a mut self,
        from: FiveTuple,
        packet: &'a [u8],
        now: Instant,
    ) -> Option<Transmit<'a>> {
        let Some(relay) = self.allocs.relay_of_client(&from) else {
            self.stats.dropped_no_allocation += 1;
            return None;
        };
        // A TCP allocation (RFC 6062) relays only over Connect/ConnectionBind data connections;
        // an indication has nowhere to go (coturn drops it too), also not to another allocation.
        if self.tcp.is_tcp(relay) {
            self.stats.dropped_tcp_allocation += 1;
            return None;
        }
        let Some((peer, data)) = wire::send_indication(packet) else {
            self.stats.dropped_malformed += 1;
            return None;
        };
        let allocs = &self.allocs;
        match self.policy.check(peer, |a| allocs.relay_at(a).is_some()) {
            Verdict::Refuse(why) => {
                self.refused(from, peer, why, "Send indication");
                return None;
            }
            Verdict::Allow | Verdict::Internal => {}
        }
        let a = self.allocs.get(relay)?;
        if !a.permissions.allows(peer.ip(), now) {
            self.stats.dropped_no_permission += 1;
            return None;
        }
        self.relay_to_peer(relay, peer, data, now)
    }
}
