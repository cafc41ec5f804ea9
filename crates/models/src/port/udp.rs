//! The server's UDP side: a few receives of datagrams kept in flight on
//! one socket, each answered by a send to its sender.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cport::{is_aborted, Handle, OpId, Payload};
use tracing::{debug, warn};

use super::{Inner, Protocol, Tag};
use crate::lock;

/// Receives of datagrams kept in flight on the UDP socket.
const SLOTS: usize = 4;
/// Room for the largest UDP payload (65,507 bytes over IPv4, 65,527 over
/// IPv6): no datagram is truncated.
const BUFFER: usize = 64 * 1024;

pub(super) struct UdpState {
    pub(super) handle: Handle,
    /// Each slot's operation in flight, a receive or its echo, recorded
    /// under the slot's lock it was issued under: a worker that dequeues a
    /// completion finds its slot by the operation id (`slot_of`), and
    /// waits for the record if it came first.
    slots: Vec<Mutex<Option<OpId>>>,
    /// Slots whose chain of operations has not ended.
    pub(super) live: AtomicUsize,
}

impl UdpState {
    pub(super) fn new(handle: Handle) -> UdpState {
        UdpState {
            handle,
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
            live: AtomicUsize::new(SLOTS),
        }
    }

    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The slot whose operation in flight is `op`, now without one.
    fn slot_of(&self, op: Option<OpId>) -> Option<usize> {
        let op = op?;
        self.slots.iter().position(|s| {
            let mut s = lock(s);
            let mine = *s == Some(op);
            if mine {
                *s = None;
            }
            mine
        })
    }

    /// Cancels the operations in flight (the shutdown).
    pub(super) fn cancel(&self, port: &cport::CompletionPort<Tag>) {
        for slot in &self.slots {
            if let Some(op) = *lock(slot) {
                let _ = port.cancel(op);
            }
        }
    }
}

impl Inner {
    pub(super) fn udp_recv(&self, slot: usize, mut buf: Vec<u8>) {
        let Some(udp) = &self.udp else { return };
        buf.clear();
        buf.reserve(BUFFER);
        let mut pending = lock(&udp.slots[slot]);
        if self.draining.load(Ordering::Acquire) {
            drop(pending);
            return self.udp_slot_end(udp);
        }
        match self.port.recv_from(udp.handle, buf, None) {
            Ok(op) => *pending = Some(op),
            Err(r) => {
                drop(pending);
                if !self.draining.load(Ordering::Acquire) {
                    warn!("UDP receive refused: {}", r.error);
                }
                self.udp_slot_end(udp);
            }
        }
    }

    fn udp_slot_end(&self, udp: &UdpState) {
        if udp.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            if !self.draining.load(Ordering::Acquire) {
                warn!("UDP service stopped: no receive left in flight");
            }
            self.events.notify();
        }
    }

    pub(super) fn on_datagram(
        &self,
        op: Option<OpId>,
        result: io::Result<usize>,
        payload: Payload,
    ) {
        let Some(udp) = &self.udp else { return };
        let Some(slot) = udp.slot_of(op) else {
            return warn!("a datagram received by no slot's operation");
        };
        let (buf, from) = match payload {
            Payload::Datagram { buf, from } => (buf, from),
            other => (other.into_buf().unwrap_or_default(), None),
        };
        match (result, from) {
            (Ok(n), Some(from)) => {
                self.counters.add(0, n as u64, 0);
                if let Some(on_data) = &self.on_data {
                    on_data(Protocol::Udp, from, &buf);
                }
                let mut pending = lock(&udp.slots[slot]);
                match self.port.send_to(udp.handle, buf, from, None) {
                    Ok(op) => *pending = Some(op),
                    Err(r) => {
                        drop(pending);
                        debug!("UDP echo to {from} refused: {}", r.error);
                        self.udp_recv(slot, r.payload.into_buf().unwrap_or_default());
                    }
                }
            }
            (Err(e), _) if is_aborted(&e) => self.udp_slot_end(udp),
            (Ok(_), None) => self.udp_recv(slot, buf),
            (Err(e), from) => {
                // A truncated datagram (EMSGSIZE), or an ICMP error from an
                // earlier echo (ECONNREFUSED): the socket is fine.
                debug!("UDP receive from {from:?}: {e}");
                self.udp_recv(slot, buf);
            }
        }
    }

    pub(super) fn on_datagram_sent(
        &self,
        op: Option<OpId>,
        result: io::Result<usize>,
        payload: Payload,
    ) {
        let Some(udp) = &self.udp else { return };
        let Some(slot) = udp.slot_of(op) else {
            return warn!("a datagram echoed by no slot's operation");
        };
        let buf = payload.into_buf().unwrap_or_default();
        match result {
            Ok(n) => {
                self.counters.add(0, 0, n as u64);
                self.stats.echoed(n);
            }
            Err(e) if is_aborted(&e) => return self.udp_slot_end(udp),
            Err(e) => debug!("UDP echo: {e}"),
        }
        self.udp_recv(slot, buf);
    }
}
