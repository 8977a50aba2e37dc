//! Packet decoding for replay: link layer → IP → TCP (etherparse's lax slicer), the
//! parts of a TCP packet a [`Segment`] needs.

use super::*;

/// How to read the first bytes of a captured frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Link {
    /// LINKTYPE_ETHERNET (1), with any 802.1Q / 802.1ad tags.
    Ethernet,
    /// LINKTYPE_LINUX_SLL (113): `tcpdump -i any` before libpcap 1.10.
    LinuxSll,
    /// LINKTYPE_LINUX_SLL2 (276): `tcpdump -i any` since libpcap 1.10.
    LinuxSll2,
    /// The frame starts with an IPv4 or IPv6 header (LINKTYPE_RAW 101, DLT_RAW 12 and 14,
    /// LINKTYPE_IPV4 228, LINKTYPE_IPV6 229).
    RawIp,
    /// BSD loopback (LINKTYPE_NULL 0, LINKTYPE_LOOP 108): a 4-byte address family.
    Null,
    /// Anything else: counted, not decoded.
    Unsupported(i32),
}

impl Link {
    pub(super) fn from_linktype(linktype: i32) -> Link {
        match linktype {
            1 => Link::Ethernet,
            113 => Link::LinuxSll,
            276 => Link::LinuxSll2,
            12 | 14 | 101 | 228 | 229 => Link::RawIp,
            0 | 108 => Link::Null,
            other => Link::Unsupported(other),
        }
    }
}

/// Why a packet yields no TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Skip {
    NotIp,
    NotTcp,
    Fragment,
    Ipv6Ext,
    Truncated,
    UnsupportedLink,
}

/// The parts of a TCP packet a [`Segment`] needs, addresses unoriented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TcpPacket<'a> {
    pub(super) src: (IpAddr, u16),
    pub(super) dst: (IpAddr, u16),
    pub(super) seq: u32,
    pub(super) ack: u32,
    pub(super) flags: TcpFlags,
    /// The captured payload, bounded by the IP length fields.
    pub(super) payload: &'a [u8],
    /// Payload bytes the IP header announces but the capture did not store.
    pub(super) missing: u64,
}

/// ARPHRD_NETLINK: a cooked-capture frame carrying netlink messages, not IP.
pub(super) const ARPHRD_NETLINK: u16 = 824;

/// Decodes one captured frame down to TCP.
pub(super) fn decode(link: Link, frame: &[u8]) -> Result<TcpPacket<'_>, Skip> {
    let packet = match link {
        Link::Ethernet => LaxSlicedPacket::from_ethernet(frame).map_err(|_| Skip::Truncated)?,
        // SLL: packet type 2, ARPHRD type 2, address length 2, address 8, protocol 2.
        Link::LinuxSll => cooked(frame, 16, 14, 2)?,
        // SLL2: protocol 2, reserved 2, interface index 4, ARPHRD type 2, packet type 1,
        // address length 1, address 8.
        Link::LinuxSll2 => cooked(frame, 20, 0, 8)?,
        Link::RawIp => raw_ip(frame)?,
        Link::Null => {
            let family = frame.first_chunk::<4>().ok_or(Skip::Truncated)?;
            if !is_ip_family(*family) {
                return Err(Skip::NotIp);
            }
            raw_ip(frame.get(4..).unwrap_or_default())?
        }
        Link::Unsupported(_) => return Err(Skip::UnsupportedLink),
    };
    tcp_in(&packet)
}

/// Linux cooked capture (SLL, SLL2). Parsed here rather than with etherparse's
/// `LinuxSllSlice`, which rejects ARPHRD types it does not know — including
/// ARPHRD_LOOPBACK, i.e. all of `lo` in a `tcpdump -i any` capture.
pub(super) fn cooked(
    frame: &[u8],
    header_len: usize,
    protocol_at: usize,
    hatype_at: usize,
) -> Result<LaxSlicedPacket<'_>, Skip> {
    let (header, payload) = frame.split_at_checked(header_len).ok_or(Skip::Truncated)?;
    let be16 = |at: usize| {
        header.get(at..).and_then(<[u8]>::first_chunk::<2>).map(|b| u16::from_be_bytes(*b)).ok_or(Skip::Truncated)
    };
    if be16(hatype_at)? == ARPHRD_NETLINK {
        return Err(Skip::NotIp);
    }
    // For every other hardware type the protocol field is an EtherType.
    Ok(LaxSlicedPacket::from_ether_type(EtherType(be16(protocol_at)?), payload))
}

pub(super) fn raw_ip(frame: &[u8]) -> Result<LaxSlicedPacket<'_>, Skip> {
    LaxSlicedPacket::from_ip(frame).map_err(|e| match e {
        LaxHeaderSliceError::Content(IpHeaderError::UnsupportedIpVersion { .. }) => Skip::NotIp,
        _ => Skip::Truncated,
    })
}

/// A BSD loopback header's address family, in either byte order (it is written in the
/// capturing host's order): AF_INET, or AF_INET6 as Linux, the BSDs and macOS number it.
pub(super) fn is_ip_family(bytes: [u8; 4]) -> bool {
    let le = u32::from_le_bytes(bytes);
    let family = if le <= 0xFFFF { le } else { u32::from_be_bytes(bytes) };
    matches!(family, 2 | 10 | 24 | 28 | 30)
}

/// The TCP segment of an already sliced packet, or why there is none.
pub(super) fn tcp_in<'a>(packet: &LaxSlicedPacket<'a>) -> Result<TcpPacket<'a>, Skip> {
    let (src, dst, ip_payload, missing, is_v6) = match &packet.net {
        None => {
            return Err(match &packet.stop_err {
                None | Some((_, Layer::Arp)) => Skip::NotIp,
                Some(_) => Skip::Truncated,
            })
        }
        Some(LaxNetSlice::Arp(_)) => return Err(Skip::NotIp),
        Some(LaxNetSlice::Ipv4(ip)) => {
            let header = ip.header();
            let payload = ip.payload();
            let auth = ip.extensions().auth.map_or(0, |a| a.slice().len());
            let have = header.slice().len() + auth + payload.payload.len();
            let missing = usize::from(header.total_len()).saturating_sub(have);
            let src = IpAddr::V4(header.source_addr());
            let dst = IpAddr::V4(header.destination_addr());
            (src, dst, payload, if payload.incomplete { missing } else { 0 }, false)
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let header = ip.header();
            let payload = ip.payload();
            let have = ip.extensions().slice().len() + payload.payload.len();
            let missing = usize::from(header.payload_length()).saturating_sub(have);
            let src = IpAddr::V6(header.source_addr());
            let dst = IpAddr::V6(header.destination_addr());
            (src, dst, payload, if payload.incomplete { missing } else { 0 }, true)
        }
    };
    let proto = ip_payload.ip_number;
    if proto != IpNumber::TCP {
        let extension = proto == IpNumber::AUTHENTICATION_HEADER || (is_v6 && proto.is_ipv6_ext_header_value());
        return Err(match (extension, packet.stop_err.is_some(), is_v6) {
            // An extension header etherparse tried to follow but found malformed.
            (true, true, _) => Skip::Truncated,
            // One it does not follow (ESP, Mobility, HIP, Shim6, experimental).
            (true, false, true) => Skip::Ipv6Ext,
            _ => Skip::NotTcp,
        });
    }
    if ip_payload.fragmented {
        return Err(Skip::Fragment);
    }
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
        return Err(Skip::Truncated);
    };
    Ok(TcpPacket {
        src: (src, tcp.source_port()),
        dst: (dst, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        flags: TcpFlags { syn: tcp.syn(), ack: tcp.ack(), fin: tcp.fin(), rst: tcp.rst() },
        payload: tcp.payload(),
        missing: u64::try_from(missing).unwrap_or(u64::MAX),
    })
}

// ---------------------------------------------------------------------------------------
