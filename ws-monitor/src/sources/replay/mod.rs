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
    let Some(rest) = payload.strip_prefix(b"GET ") else {
        return false;
    };
    // Skip the request line; stop at the blank line that ends the headers.
    for line in rest.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        if name.trim_ascii().eq_ignore_ascii_case(b"upgrade")
            && value
                .get(1..)
                .unwrap_or_default()
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------------------
// Packet decoding: link layer → IP → TCP
// ---------------------------------------------------------------------------------------

/// How to read the first bytes of a captured frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
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
    fn from_linktype(linktype: i32) -> Link {
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
enum Skip {
    NotIp,
    NotTcp,
    Fragment,
    Ipv6Ext,
    Truncated,
    UnsupportedLink,
}

/// The parts of a TCP packet a [`Segment`] needs, addresses unoriented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TcpPacket<'a> {
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    seq: u32,
    ack: u32,
    flags: TcpFlags,
    /// The captured payload, bounded by the IP length fields.
    payload: &'a [u8],
    /// Payload bytes the IP header announces but the capture did not store.
    missing: u64,
}

/// ARPHRD_NETLINK: a cooked-capture frame carrying netlink messages, not IP.
const ARPHRD_NETLINK: u16 = 824;

/// Decodes one captured frame down to TCP.
fn decode(link: Link, frame: &[u8]) -> Result<TcpPacket<'_>, Skip> {
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
fn cooked(frame: &[u8], header_len: usize, protocol_at: usize, hatype_at: usize) -> Result<LaxSlicedPacket<'_>, Skip> {
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

fn raw_ip(frame: &[u8]) -> Result<LaxSlicedPacket<'_>, Skip> {
    LaxSlicedPacket::from_ip(frame).map_err(|e| match e {
        LaxHeaderSliceError::Content(IpHeaderError::UnsupportedIpVersion { .. }) => Skip::NotIp,
        _ => Skip::Truncated,
    })
}

/// A BSD loopback header's address family, in either byte order (it is written in the
/// capturing host's order): AF_INET, or AF_INET6 as Linux, the BSDs and macOS number it.
fn is_ip_family(bytes: [u8; 4]) -> bool {
    let le = u32::from_le_bytes(bytes);
    let family = if le <= 0xFFFF { le } else { u32::from_be_bytes(bytes) };
    matches!(family, 2 | 10 | 24 | 28 | 30)
}

/// The TCP segment of an already sliced packet, or why there is none.
fn tcp_in<'a>(packet: &LaxSlicedPacket<'a>) -> Result<TcpPacket<'a>, Skip> {
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
// Capture files: format sniffing, streaming, record framing
// ---------------------------------------------------------------------------------------

/// One captured frame, as the file stored it.
#[derive(Clone, Copy, Debug)]
struct Frame<'a> {
    link: Link,
    /// Capture time, nanoseconds since the Unix epoch.
    ts_ns: u64,
    data: &'a [u8],
}

/// Starting read buffer; enough for any ordinary packet record many times over.
const BUFFER_SIZE: usize = 1 << 20;
/// The largest record (pcap record or pcapng block) the reader will grow its buffer for;
/// anything larger is taken as corruption.
const MAX_RECORD: usize = 64 << 20;
/// The largest pcap record length accepted regardless of the file's snapshot length
/// (libpcap's and Wireshark's limit).
const MAX_SNAPLEN: u32 = 262_144;

/// How many leading bytes are read to recognise the format and to quote in errors.
const HEAD_LEN: usize = 16;

/// Reads all frames of the capture at `path`, in file order. Returns whether the file
/// ended in the middle of a record.
fn read_capture<F: FnMut(Frame<'_>)>(path: &Path, mut on_frame: F) -> Result<bool> {
    let name = path.display().to_string();
    let (source, head) = Source::open(path, &name)?;
    let read_error = Rc::clone(&source.error);
    match sniff(&head) {
        Sniffed::Pcap => {
            let mut reader =
                LegacyPcapReader::new(BUFFER_SIZE, source).map_err(|e| header_error(&name, "pcap", &e, &read_error))?;
            let mut handler = LegacyHandler::new(name.clone());
            pump(&name, &mut reader, &mut handler, &mut on_frame, &read_error)
        }
        Sniffed::PcapNg => {
            let mut reader =
                PcapNGReader::new(BUFFER_SIZE, source).map_err(|e| header_error(&name, "pcapng", &e, &read_error))?;
            let mut handler = NgHandler::new(name.clone());
            let truncated = pump(&name, &mut reader, &mut handler, &mut on_frame, &read_error)?;
            handler.finish()?;
            Ok(truncated)
        }
        Sniffed::Empty => {
            bail!("{name} is empty, not a pcap or pcapng capture: save captures with tcpdump -w or Wireshark")
        }
        Sniffed::Compressed(kind) => bail!(
            "{name} is {kind}-compressed (starts with {}): decompress it first, then replay the .pcap/.pcapng",
            quote_bytes(&head)
        ),
        Sniffed::Other => bail!(
            "{name} is not a pcap or pcapng capture (starts with {}): save captures with tcpdump -w or Wireshark",
            quote_bytes(&head)
        ),
    }
}

/// What the first bytes of a file say it is.
#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    Pcap,
    PcapNg,
    Empty,
    Compressed(&'static str),
    Other,
}

fn sniff(head: &[u8]) -> Sniffed {
    match head {
        [] => Sniffed::Empty,
        // Microsecond and nanosecond pcap, both byte orders; "modified" (Kuznetzov) pcap.
        [0xd4, 0xc3, 0xb2, 0xa1, ..]
        | [0xa1, 0xb2, 0xc3, 0xd4, ..]
        | [0x4d, 0x3c, 0xb2, 0xa1, ..]
        | [0xa1, 0xb2, 0x3c, 0x4d, ..]
        | [0x34, 0xcd, 0xb2, 0xa1, ..] => Sniffed::Pcap,
        // The pcapng Section Header Block type is a byte palindrome.
        [0x0a, 0x0d, 0x0d, 0x0a, ..] => Sniffed::PcapNg,
        [0x1f, 0x8b, ..] => Sniffed::Compressed("gzip"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Sniffed::Compressed("zstd"),
        [0xfd, b'7', b'z', b'X', b'Z', ..] => Sniffed::Compressed("xz"),
        [b'B', b'Z', b'h', ..] => Sniffed::Compressed("bzip2"),
        _ => Sniffed::Other,
    }
}

/// `0a 0d 0d 0a ... "text"`: the first bytes in hex, and as text when they are printable.
fn quote_bytes(head: &[u8]) -> String {
    let shown = head.get(..8).unwrap_or(head);
    let mut out = String::new();
    for (i, b) in shown.iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        let _ = write!(out, "{sep}{b:02x}");
    }
    if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        let _ = write!(out, " \"{}\"", String::from_utf8_lossy(shown));
    }
    out
}

/// `io::Error`'s text without the trailing " (os error N)".
fn io_text(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rsplit_once(" (os error ") {
        Some((msg, _)) => msg.to_string(),
        None => text,
    }
}

/// The file after the bytes already read to recognise its format, so that pipes and
/// process substitutions (`<(zcat x.pcap.gz)`) work as well as regular files. Keeps the last I/O error, which
/// pcap-parser reduces to a bare `ReadError`.
struct Source {
    head: [u8; HEAD_LEN],
    head_len: usize,
    head_pos: usize,
    file: File,
    error: Rc<Cell<Option<io::Error>>>,
}

impl Source {
    /// Opens `path` and reads its first bytes (returned as well).
    fn open(path: &Path, name: &str) -> Result<(Source, Vec<u8>)> {
        let cannot_open = |e: &io::Error| anyhow!("cannot open {name}: {}", io_text(e));
        if path.is_dir() {
            bail!("cannot open {name}: Is a directory");
        }
        let mut file = File::open(path).map_err(|e| cannot_open(&e))?;
        let mut head = [0u8; HEAD_LEN];
        let mut head_len = 0;
        while let Some(space) = head.get_mut(head_len..).filter(|s| !s.is_empty()) {
            match file.read(space) {
                Ok(0) => break,
                Ok(n) => head_len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => bail!("cannot read {name}: {}", io_text(&e)),
            }
        }
        let sniffed = head.get(..head_len).unwrap_or_default().to_vec();
        let source = Source { head, head_len, head_pos: 0, file, error: Rc::default() };
        Ok((source, sniffed))
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pending = self.head.get(self.head_pos..self.head_len).unwrap_or_default();
        let from_head = pending.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..from_head), pending.get(..from_head)) {
            dst.copy_from_slice(src);
        }
        self.head_pos += from_head;
        // pcap-parser checks the file header with a single read, and a pipe hands out
        // whatever its writer has written so far: fill the buffer unless the file ends.
        let mut filled = from_head;
        while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
            match self.file.read(rest) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let kind = e.kind();
                    self.error.set(Some(e));
                    return if filled > 0 { Ok(filled) } else { Err(kind.into()) };
                }
            }
        }
        Ok(filled)
    }
}

fn read_failed(name: &str, slot: &Cell<Option<io::Error>>) -> anyhow::Error {
    match slot.take() {
        Some(e) => anyhow!("cannot read {name}: {}", io_text(&e)),
        None => anyhow!("cannot read {name}: read error"),
    }
}

/// The reader could not even get past the file header.
fn header_error<I>(name: &str, format: &str, err: &PcapError<I>, slot: &Cell<Option<io::Error>>) -> anyhow::Error {
    match err {
        PcapError::ReadError => read_failed(name, slot),
        PcapError::Incomplete(_) | PcapError::UnexpectedEof | PcapError::Eof => anyhow!(
            "{name} is cut short inside its {format} file header: the capture is incomplete; copy or record it again"
        ),
        _ => anyhow!(
            "{name} starts like a {format} capture but its file header is corrupt: re-save it with Wireshark or editcap"
        ),
    }
}

fn corrupt(name: &str, offset: u64, what: &str) -> anyhow::Error {
    anyhow!("{name} is corrupt at byte {offset} ({what}): repair it (e.g. pcapfix) or re-save it with Wireshark")
}

/// Per-format handling of the records a pcap-parser reader yields.
trait Records {
    /// Handles one block; `offset` is its position in the file (for error messages).
    fn block<F: FnMut(Frame<'_>)>(&mut self, block: PcapBlockOwned<'_>, offset: u64, on_frame: &mut F) -> Result<()>;

    /// Looks at the header of the incomplete record at the start of `data`: says what
    /// is wrong if its declared length cannot be right.
    fn implausible(&self, data: &[u8]) -> Option<String>;
}

/// What to do after asking the reader for the next block.
enum Step {
    Consume(usize),
    End,
    NeedData,
    CutShort,
    ReadFailed,
    Corrupt(String),
}

/// Drives a pcap-parser streaming reader to the end of the file, refilling its buffer
/// as it drains and growing it (up to [`MAX_RECORD`]) for records larger than it.
/// Returns whether the file ends in the middle of a record.
fn pump<R: PcapReaderIterator, H: Records, F: FnMut(Frame<'_>)>(
    name: &str,
    reader: &mut R,
    handler: &mut H,
    on_frame: &mut F,
    read_error: &Cell<Option<io::Error>>,
) -> Result<bool> {
    let mut capacity = BUFFER_SIZE;
    loop {
        let offset = u64::try_from(reader.consumed()).unwrap_or(u64::MAX);
        let step = match reader.next() {
            Ok((len, block)) => {
                handler.block(block, offset, on_frame)?;
                Step::Consume(len)
            }
            Err(PcapError::Eof) => Step::End,
            Err(PcapError::Incomplete(_) | PcapError::BufferTooSmall) => Step::NeedData,
            Err(PcapError::UnexpectedEof) => Step::CutShort,
            Err(PcapError::ReadError) => Step::ReadFailed,
            Err(PcapError::HeaderNotRecognized) => Step::Corrupt("unrecognised block".into()),
            Err(PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind)) => {
                Step::Corrupt(format!("malformed block: {}", kind.description()))
            }
        };
        match step {
            Step::Consume(len) => reader.consume(len),
            Step::End => return Ok(false),
            Step::ReadFailed => return Err(read_failed(name, read_error)),
            Step::Corrupt(what) => return Err(corrupt(name, offset, &what)),
            Step::CutShort => {
                if let Some(what) = handler.implausible(reader.data()) {
                    return Err(corrupt(name, offset, &what));
                }
                return Ok(true);
            }
            Step::NeedData => {
                if let Some(what) = handler.implausible(reader.data()) {
                    return Err(corrupt(name, offset, &what));
                }
                let before = reader.data().len();
                if before < capacity {
                    // Reading 0 bytes marks the reader exhausted: the next call then
                    // reports the end of the file, cut short or not.
                    if reader.refill().is_err() {
                        return Err(read_failed(name, read_error));
                    }
                }
                if reader.data().len() == before && !reader.reader_exhausted() {
                    // The buffer is full of one incomplete record.
                    if capacity >= MAX_RECORD {
                        let what = format!("a record larger than {} MiB", MAX_RECORD >> 20);
                        return Err(corrupt(name, offset, &what));
                    }
                    capacity = capacity.saturating_mul(2).min(MAX_RECORD);
                    reader.grow(capacity);
                }
            }
        }
    }
}

fn read_u32(data: &[u8], at: usize, big_endian: bool) -> Option<u32> {
    let bytes: [u8; 4] = data.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian { u32::from_be_bytes(bytes) } else { u32::from_le_bytes(bytes) })
}

/// Names of common link-layer types ws-monitor cannot decode, for error messages.
fn linktype_name(linktype: i32) -> &'static str {
    match linktype {
        6 => "IEEE802_5 token ring",
        9 => "PPP",
        10 => "FDDI",
        50 => "PPP_HDLC",
        104 => "C_HDLC",
        105 => "IEEE802_11 Wi-Fi",
        119 => "PRISM_HEADER Wi-Fi",
        127 => "IEEE802_11_RADIOTAP Wi-Fi",
        147..=162 => "USER",
        189 => "USB_LINUX",
        192 => "PPI",
        195 => "IEEE802_15_4",
        201 => "BLUETOOTH_HCI_H4",
        220 => "USB_LINUX_MMAPPED",
        239 => "NFLOG",
        249 => "USBPCAP",
        252 => "WIRESHARK_UPPER_PDU",
        253 => "NETLINK",
        _ => "unknown",
    }
}

fn unsupported_link_error(name: &str, linktype: i32) -> anyhow::Error {
    anyhow!(
        "{name} has link-layer type {linktype} ({}), which ws-monitor cannot decode: capture on an Ethernet, loopback or `any` interface (tcpdump -i any -w FILE)",
        linktype_name(linktype)
    )
}

/// Legacy pcap: one link type for the whole file, set by the file header.
struct LegacyHandler {
    name: String,
    link: Link,
    nanosecond: bool,
    big_endian: bool,
    /// Largest plausible captured length: max(snaplen, [`MAX_SNAPLEN`]).
    max_caplen: u32,
}

impl LegacyHandler {
    fn new(name: String) -> Self {
        LegacyHandler { name, link: Link::Ethernet, nanosecond: false, big_endian: false, max_caplen: MAX_SNAPLEN }
    }

    fn check_caplen(&self, caplen: u32) -> Option<String> {
        (caplen > self.max_caplen)
            .then(|| format!("a record of {caplen} captured bytes, more than the {} this file allows", self.max_caplen))
    }
}

impl Records for LegacyHandler {
    fn block<F: FnMut(Frame<'_>)>(&mut self, block: PcapBlockOwned<'_>, offset: u64, on_frame: &mut F) -> Result<()> {
        match block {
            PcapBlockOwned::LegacyHeader(header) => {
                // The upper bits of the field hold FCS information, not the type.
                let linktype = header.network.0 & 0xFFFF;
                self.link = Link::from_linktype(linktype);
                if let Link::Unsupported(linktype) = self.link {
                    return Err(unsupported_link_error(&self.name, linktype));
                }
                self.nanosecond = header.is_nanosecond_precision();
                self.big_endian = header.is_bigendian();
                self.max_caplen = header.snaplen.max(MAX_SNAPLEN);
            }
            PcapBlockOwned::Legacy(record) => {
                if let Some(what) = self.check_caplen(record.caplen) {
                    return Err(corrupt(&self.name, offset, &what));
                }
                let fraction = u64::from(record.ts_usec) * if self.nanosecond { 1 } else { 1_000 };
                let ts_ns = u64::from(record.ts_sec) * 1_000_000_000 + fraction;
                on_frame(Frame { link: self.link, ts_ns, data: record.data });
            }
            PcapBlockOwned::NG(_) => {}
        }
        Ok(())
    }

    fn implausible(&self, data: &[u8]) -> Option<String> {
        // Record header: seconds, fraction, captured length, original length.
        self.check_caplen(read_u32(data, 8, self.big_endian)?)
    }
}

/// One pcapng interface (Interface Description Block).
#[derive(Clone, Copy, Debug)]
struct Interface {
    link: Link,
    /// Timestamp units per second (`if_tsresol`; microseconds by default).
    units_per_sec: u64,
    /// Seconds to add to every timestamp (`if_tsoffset`).
    offset_sec: i64,
    /// 0 when unlimited.
    snaplen: u32,
}

impl Interface {
    fn ts_ns(&self, high: u32, low: u32) -> u64 {
        let ticks = u128::from((u64::from(high) << 32) | u64::from(low));
        let ns = ticks * 1_000_000_000 / u128::from(self.units_per_sec.max(1));
        let ns = i128::try_from(ns).unwrap_or(i128::MAX) + i128::from(self.offset_sec) * 1_000_000_000;
        u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
    }
}

/// `if_tsresol`: a power of ten, or of two when the top bit is set. Invalid values fall
/// back to the default (microseconds).
fn ts_units_per_sec(tsresol: u8) -> u64 {
    let exp = u32::from(tsresol & 0x7F);
    let units = if tsresol & 0x80 == 0 { 10u64.checked_pow(exp) } else { 2u64.checked_pow(exp) };
    units.unwrap_or(1_000_000)
}

/// `if_tsoffset` in the section's byte order (pcap-parser's own field assumes
/// little-endian).
fn ts_offset(options: &[PcapNGOption<'_>], big_endian: bool) -> i64 {
    options
        .iter()
        .find(|opt| opt.code == OptionCode::IfTsoffset)
        .and_then(|opt| opt.value().first_chunk::<8>())
        .map_or(0, |b| if big_endian { i64::from_be_bytes(*b) } else { i64::from_le_bytes(*b) })
}

/// pcapng: sections, each with its own interfaces (link type, time resolution).
struct NgHandler {
    name: String,
    /// Interfaces of the current section, by id.
    interfaces: Vec<Interface>,
    /// Byte order of the current section.
    big_endian: bool,
    /// Simple Packet Blocks carry no time: they get the last one seen.
    last_ts_ns: u64,
    /// Any interface, in any section, that can be decoded.
    any_supported: bool,
    /// The first interface link type that cannot.
    first_unsupported: Option<i32>,
}

impl NgHandler {
    fn new(name: String) -> Self {
        NgHandler {
            name,
            interfaces: Vec::new(),
            big_endian: false,
            last_ts_ns: 0,
            any_supported: false,
            first_unsupported: None,
        }
    }

    fn interface(&self, id: u32, offset: u64) -> Result<&Interface> {
        usize::try_from(id).ok().and_then(|i| self.interfaces.get(i)).ok_or_else(|| {
            let what = format!("a packet on interface {id}, but the section declares {}", self.interfaces.len());
            corrupt(&self.name, offset, &what)
        })
    }

    /// Called at the end of the file.
    fn finish(&self) -> Result<()> {
        match self.first_unsupported {
            Some(linktype) if !self.any_supported => Err(unsupported_link_error(&self.name, linktype)),
            _ => Ok(()),
        }
    }
}

impl Records for NgHandler {
    fn block<F: FnMut(Frame<'_>)>(&mut self, block: PcapBlockOwned<'_>, offset: u64, on_frame: &mut F) -> Result<()> {
        let PcapBlockOwned::NG(block) = block else {
            return Ok(());
        };
        match block {
            Block::SectionHeader(shb) => {
                self.interfaces.clear();
                self.big_endian = shb.big_endian();
            }
            Block::InterfaceDescription(idb) => {
                let link = Link::from_linktype(idb.linktype.0);
                match link {
                    Link::Unsupported(linktype) => {
                        self.first_unsupported.get_or_insert(linktype);
                    }
                    _ => self.any_supported = true,
                }
                self.interfaces.push(Interface {
                    link,
                    units_per_sec: ts_units_per_sec(idb.if_tsresol),
                    offset_sec: ts_offset(&idb.options, self.big_endian),
                    snaplen: idb.snaplen,
                });
            }
            Block::EnhancedPacket(epb) => {
                let iface = self.interface(epb.if_id, offset)?;
                let ts_ns = iface.ts_ns(epb.ts_high, epb.ts_low);
                let link = iface.link;
                self.last_ts_ns = ts_ns;
                on_frame(Frame { link, ts_ns, data: epb.packet_data() });
            }
            Block::SimplePacket(spb) => {
                let iface = self.interface(0, offset)?;
                // Captured length: the original length, cut by the snapshot length; the
                // block data also holds up to 3 bytes of padding.
                let data = spb.packet_data();
                let data = match usize::try_from(iface.snaplen) {
                    Ok(snaplen) if snaplen > 0 => data.get(..snaplen).unwrap_or(data),
                    _ => data,
                };
                on_frame(Frame { link: iface.link, ts_ns: self.last_ts_ns, data });
            }
            _ => {}
        }
        Ok(())
    }

    fn implausible(&self, data: &[u8]) -> Option<String> {
        // Block header: type, total length. A Section Header Block may switch the byte
        // order, given by the magic after the length.
        let big_endian = match data.first_chunk::<4>() {
            Some([0x0a, 0x0d, 0x0d, 0x0a]) => match data.get(8..12)? {
                [0x1a, 0x2b, 0x3c, 0x4d] => true,
                [0x4d, 0x3c, 0x2b, 0x1a] => false,
                _ => return Some("section header with an invalid byte-order magic".into()),
            },
            _ => self.big_endian,
        };
        let len = read_u32(data, 4, big_endian)?;
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        if len < 12 || size > MAX_RECORD {
            return Some(format!("a block declaring {len} bytes"));
        }
        // The whole block is there, yet the parser wants more: its contents (say, a
        // packet length) overrun it. Without this, the reader would keep asking for data.
        (size <= data.len()).then(|| format!("a block of {len} bytes whose contents overrun it"))
    }
}

#[cfg(test)]
mod tests;
