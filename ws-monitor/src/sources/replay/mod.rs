//! Offline capture: the packets of a pcap or pcapng file turned into the same
//! [`Segment`]s the live ring buffer produces, so reassembly and the protocol engine see
//! identical input either way.
//!
//! The file is read streaming (pcap-parser's buffered readers, refilled as they drain), so
//! multi-gigabyte captures need only a small, fixed amount of memory. Link, IP and TCP
//! headers are decoded with etherparse's lax slicer, which bounds the TCP payload by the IP
//! length fields (Ethernet padding is not payload) and still yields the captured part of a
//! packet cut short by the snapshot length.
//!
//! Every record read lands in exactly one [`ReplayStats`] bucket: `matched`, `other_port`,
//! `not_ip`, `not_tcp`, `fragments`, `ipv6_ext`, `truncated` or `unsupported_link`.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::net::IpAddr;
use std::path::Path;
use std::rc::Rc;

use anyhow::{anyhow, bail, Result};
use etherparse::err::ip::{HeaderError as IpHeaderError, LaxHeaderSliceError};
use etherparse::err::Layer;
use etherparse::{EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use pcap_parser::traits::{PcapNGPacketBlock, PcapReaderIterator};
use pcap_parser::{Block, LegacyPcapReader, OptionCode, PcapBlockOwned, PcapError, PcapNGOption, PcapNGReader};

use crate::flow::{key_for, Direction, Segment, TcpFlags};

/// Counts of what the file held and what was skipped, by reason.
///
/// Every record read is counted in `packets` and in exactly one of `matched`,
/// `other_port`, `not_ip`, `not_tcp`, `fragments`, `ipv6_ext`, `truncated` and
/// `unsupported_link`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayStats {
    /// Packet records read (pcap records, pcapng Enhanced and Simple Packet Blocks).
    pub packets: u64,
    /// TCP segments on a monitored port, handed to the callback.
    pub matched: u64,
    /// TCP segments on neither end of a monitored port.
    pub other_port: u64,
    /// Link-layer frames that carry neither IPv4 nor IPv6 (ARP, LLDP, ...).
    pub not_ip: u64,
    /// IP packets that carry something other than TCP (UDP, ICMP, ...).
    pub not_tcp: u64,
    /// TCP carried in IPv4 fragments or IPv6 fragments (not reassembled).
    pub fragments: u64,
    /// IPv6 packets whose extension headers could not be followed to TCP (ESP, Mobility,
    /// HIP, Shim6, experimental). Hop-by-hop, routing, destination options, AH and
    /// atomic fragment headers are followed and not counted here.
    pub ipv6_ext: u64,
    /// Malformed or cut-off link, IP or TCP headers.
    pub truncated: u64,
    /// Payload bytes of matched segments that were on the wire but not in the file
    /// (snapshot length); reassembly sees them as a gap.
    pub snaplen_cut_bytes: u64,
    /// Packets on an interface whose link-layer type cannot be decoded.
    pub unsupported_link: u64,
    /// The file ends in the middle of a record: everything before it was read.
    pub truncated_file: bool,
}

/// Reads a pcap or pcapng file and calls `on_segment` for every TCP segment on `ports`,
/// in file order.
///
/// A segment is `Direction::ToServer` when its destination port is in `ports`, otherwise
/// `Direction::ToClient` when its source port is; anything else counts as `other_port`.
/// A file cut short in the middle of a record is not an error: reading stops there and
/// [`ReplayStats::truncated_file`] is set.
///
/// # Errors
/// One line saying what to do, when the file cannot be opened or read, is not a capture,
/// is cut short inside its file header, is corrupt, or only has interfaces whose
/// link-layer type cannot be decoded.
pub fn replay(path: &Path, ports: &[u16], mut on_segment: impl FnMut(&Segment<'_>)) -> Result<ReplayStats> {
    let ports = PortSet::new(ports);
    let mut stats = ReplayStats::default();
    let truncated_file = read_capture(path, |frame| {
        stats.packets += 1;
        let tcp = match decode(frame.link, frame.data) {
            Ok(tcp) => tcp,
            Err(skip) => {
                stats.skip(skip);
                return;
            }
        };
        let Some(dir) = ports.direction(tcp.src.1, tcp.dst.1) else {
            stats.other_port += 1;
            return;
        };
        stats.matched += 1;
        stats.snaplen_cut_bytes += tcp.missing;
        on_segment(&Segment {
            key: key_for(tcp.src, tcp.dst, dir),
            dir,
            seq: tcp.seq,
            ack: tcp.ack,
            flags: tcp.flags,
            data: tcp.payload,
            skip: 0,
            ts_ns: frame.ts_ns,
            iface: 0,
        });
    })?;
    stats.truncated_file = truncated_file;
    Ok(stats)
}

/// Finds WebSocket server ports by their handshake: TCP payloads that start an HTTP
/// request (`GET ` …) containing an `Upgrade: websocket` header (case-insensitive); the
/// destination port of such a packet is a server port. Sorted and deduplicated.
///
/// # Errors
/// The same as [`replay`].
pub fn detect_ports(path: &Path) -> Result<Vec<u16>> {
    let mut found = BTreeSet::new();
    read_capture(path, |frame| {
        if let Ok(tcp) = decode(frame.link, frame.data) {
            if is_websocket_upgrade(tcp.payload) {
                found.insert(tcp.dst.1);
            }
        }
    })?;
    Ok(found.into_iter().collect())
}

impl ReplayStats {
    fn skip(&mut self, skip: Skip) {
        let counter = match skip {
            Skip::NotIp => &mut self.not_ip,
            Skip::NotTcp => &mut self.not_tcp,
            Skip::Fragment => &mut self.fragments,
            Skip::Ipv6Ext => &mut self.ipv6_ext,
            Skip::Truncated => &mut self.truncated,
            Skip::UnsupportedLink => &mut self.unsupported_link,
        };
        *counter += 1;
    }
}

// ---------------------------------------------------------------------------------------
// Ports and the handshake check
// ---------------------------------------------------------------------------------------

/// The monitored ports as a 65536-bit set: one lookup per packet, no allocation.
struct PortSet {
    bits: [u64; 1024],
}

impl PortSet {
    fn new(ports: &[u16]) -> Self {
        let mut bits = [0u64; 1024];
        for &port in ports {
            if let Some(word) = bits.get_mut(usize::from(port >> 6)) {
                *word |= 1 << (port & 63);
            }
        }
        PortSet { bits }
    }

    fn contains(&self, port: u16) -> bool {
        self.bits.get(usize::from(port >> 6)).is_some_and(|word| word & (1 << (port & 63)) != 0)
    }

    /// The kernel program's rule: destination port monitored → towards the server; else
    /// source port monitored → towards the client; else not ours.
    fn direction(&self, src_port: u16, dst_port: u16) -> Option<Direction> {
        if self.contains(dst_port) {
            Some(Direction::ToServer)
        } else if self.contains(src_port) {
            Some(Direction::ToClient)
        } else {
            None
        }
    }
}

/// True for a payload that starts an HTTP `GET` request whose header block (as far as
/// this packet holds it) has `Upgrade: websocket`.
fn is_websocket_upgrade(payload: &[u8]) -> bool {
    crate::engine::http::get_request_has_token(payload, "upgrade", "websocket")
}

mod decode;
mod read;

use decode::*;
use read::*;

#[cfg(test)]
mod tests;
