//! Types shared by the kernel program and userspace: the ring-buffer record layout,
//! the counter indices and the configuration maps. Plain integers only (`Pod`).
#![no_std]

/// Payload bytes carried by one ring-buffer record at most. A TCP segment larger than this
/// (GSO/GRO super-packets reach 64 KiB) is split into consecutive records.
pub const CHUNK_SIZE: usize = 2048;
/// Records a packet may take beyond one per span: the kernel's emit loop writes at most
/// `MAX_CHUNKS + MAX_SPANS` records a packet (82), so a packet copied whole (one span)
/// keeps up to 82 × `CHUNK_SIZE` = 164 KiB. Copied payload beyond what those records
/// hold (BIG TCP packets copied whole) is counted in `Counter::BytesTruncated`; skipped
/// payload has no such limit.
pub const MAX_CHUNKS: usize = 32;
/// Ports that can be monitored at once.
pub const MAX_PORTS: u32 = 16;
/// Entries of the `PORTS` array: one per TCP port, indexed by the port itself.
pub const PORT_SLOTS: u32 = 65_536;

/// Frame headers one run of the kernel's walk program reads; it tail-calls itself for
/// more, up to [`WALK_RUNS`] runs.
pub const MAX_WALK: usize = 8;
/// Runs of the walk program per packet at most: a packet with more than
/// `MAX_WALK * WALK_RUNS` frame headers falls back to a full copy (and its direction to
/// [`WALK_COPY`] until it is re-anchored).
pub const WALK_RUNS: u32 = 6;
/// Copy/skip spans one packet is cut into at most (the walk's frames plus the packet's
/// head and tail).
pub const MAX_SPANS: usize = MAX_WALK * WALK_RUNS as usize + 2;
/// Payload bytes copied at the start of every frame whose payload is otherwise skipped:
/// what a finding quotes of it (the engine's excerpt).
pub const EXCERPT_LEN: u32 = 64;
/// Connections (and directions) the kernel keeps frame-walking state for.
pub const MAX_FLOWS: u32 = 65_536;
/// Anchors userspace may have pending at once.
pub const MAX_ANCHORS: u32 = 4096;

/// `ChunkHeader::direction`: towards the monitored port (from the connecting side).
pub const DIR_TO_SERVER: u8 = 0;
/// `ChunkHeader::direction`: from the monitored port back to the client.
pub const DIR_TO_CLIENT: u8 = 1;

/// TCP flag bits as they appear in byte 13 of the TCP header.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Header of every ring-buffer record; `len` payload bytes follow it directly.
///
/// Addresses are in network byte order; IPv4 uses the first 4 bytes of each address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the packet was seen.
    pub ts_ns: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// TCP sequence number of the packet (of its first payload byte, or of its SYN/FIN).
    pub seq: u32,
    /// TCP acknowledgement number (valid when `flags & TCP_ACK`).
    pub ack: u32,
    /// The packet's whole TCP payload length on the wire.
    pub payload_len: u32,
    /// Offset of this record's bytes inside the packet's payload.
    pub offset: u32,
    /// Payload bytes right after this record's `len` copied bytes that the kernel left
    /// out on purpose: the rest of a binary frame's payload, which the engine passes over
    /// without reading (a known-length skip, not a loss).
    pub skip: u32,
    /// Index of the interface the packet was seen on.
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    /// Payload bytes that follow this header in the record.
    pub len: u16,
    /// 4 or 6.
    pub family: u8,
    /// `DIR_TO_SERVER` or `DIR_TO_CLIENT`.
    pub direction: u8,
    /// TCP flags byte (`TCP_SYN`, `TCP_FIN`, ...).
    pub flags: u8,
    /// 0 = TC ingress, 1 = TC egress (as the kernel program was attached).
    pub hook: u8,
    /// 1 in a loss note (the `LOSSES` ring): the record of these bytes could not be
    /// written, and `skip` counts the payload bytes it would have carried (`len` is 0).
    pub lost: u8,
    pub _pad: [u8; 5],
}

/// Size of [`ChunkHeader`] in a record; a multiple of 8 so the payload stays aligned.
pub const HEADER_SIZE: usize = core::mem::size_of::<ChunkHeader>();
const _: () = assert!(HEADER_SIZE.is_multiple_of(8));
const _: () = assert!(HEADER_SIZE == 80);

/// One piece of a packet's payload as the kernel hands it on: bytes `[start, copy_end)`
/// copied, then `[copy_end, skip_end)` skipped (offsets inside the payload).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub copy_end: u32,
    pub skip_end: u32,
}

/// Per-CPU plan of one packet (kept off the 512-byte BPF stack): the record header being
/// filled in, the flow direction, and the spans, in order, tiling the payload.
#[repr(C)]
pub struct Plan {
    pub header: ChunkHeader,
    pub key: FlowDir,
    /// A state to insert for a direction seen for the first time.
    pub fresh: WalkState,
    /// Loop state kept in memory rather than in registers, so that the verifier sees
    /// every iteration start alike and verifies the loop body once per iteration:
    /// the walk's next header and current copy run (payload offsets), and the emit
    /// loop's span and position.
    pub pos: i64,
    pub cut: i64,
    pub si: u32,
    pub at: u32,
    /// The walk met a header it does not trust (the rest of the packet is copied).
    pub stopped: u32,
    /// Runs of the walk program so far for this packet.
    pub runs: u32,
    /// Offset of the TCP payload in the packet.
    pub off: u32,
    /// The frame header being read: bytes kept from the previous packet, then this one's.
    pub hdr: [u8; 32],
    pub n: u32,
    /// `NOTE_*`: a rare event met while planning the packet (0: none), with two numbers
    /// that describe it. The emit program logs it (aya-log), so that the log code lives in
    /// the one program every packet ends in, off the entry and walk programs' paths.
    pub note: u32,
    pub note_a: u32,
    pub note_b: u32,
    pub spans: [Span; MAX_SPANS],
}

/// `Plan::note`: nothing to log.
pub const NOTE_NONE: u32 = 0;
/// The walk lost its place: a hole or an overlap in the sequence (`note_a`: the sequence
/// number expected, `note_b`: the one that came).
pub const NOTE_SEQ_BREAK: u32 = 1;
/// The walk lost its place: the piece of a frame header kept from the previous packet
/// no longer lines up with this one (`note_a`: bytes kept, `note_b`: bytes the packet
/// starts before the header).
pub const NOTE_SPLIT_HEADER: u32 = 2;
/// The walk stopped at a frame header it does not trust (`note_a`: its first two bytes,
/// `note_b`: its offset in the payload).
pub const NOTE_DOUBT: u32 = 3;
/// The walk stopped: more frame headers in the packet than it reads (`note_a`: headers
/// read, `note_b`: the packet's payload length).
pub const NOTE_TOO_MANY_FRAMES: u32 = 4;
/// A frame header could not be loaded from the packet (`note_a`: its offset,
/// `note_b`: the payload length).
pub const NOTE_LOAD_ERROR: u32 = 5;
/// The direction's walk state could not be stored (`FLOWS` full).
pub const NOTE_STATE_FULL: u32 = 6;

/// Indices into the per-CPU `COUNTERS` array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Counter {
    /// Every packet the program ran on.
    PacketsSeen = 0,
    /// TCP packets with a monitored port on either side.
    PacketsMatched,
    /// Payload bytes copied into the ring buffer.
    BytesCopied,
    /// Records lost because the ring buffer was full.
    RingFullRecords,
    /// Payload bytes in those lost records.
    RingFullBytes,
    /// `bpf_skb_load_bytes` failures (record not emitted).
    LoadErrors,
    /// Payload bytes in records not emitted because of load errors.
    LoadErrorBytes,
    /// Skipped: not IPv4 or IPv6.
    SkipNotIp,
    /// Skipped: IP but not TCP.
    SkipNotTcp,
    /// Skipped: IPv6 with an extension header before TCP.
    SkipIpv6Ext,
    /// Skipped: an IPv4 fragment (or IPv6 fragment header).
    SkipFragment,
    /// Skipped: headers cut short or inconsistent lengths.
    SkipTruncated,
    /// TCP, but neither port is monitored.
    OtherPort,
    /// Payload bytes of matched packets beyond what their `MAX_CHUNKS + MAX_SPANS`
    /// records hold (not copied).
    BytesTruncated,
    /// Payload bytes left out as known-length skips (binary frame payload).
    BytesSkipped,
    /// Packets whose frame headers were walked (header-only capture in sync).
    PacketsWalked,
    /// Times a flow direction started walking frame headers: at a 101 response seen in
    /// the kernel, or at an anchor set by userspace.
    WalkStarts,
    /// Times walking stopped and the flow went back to full copy: a hole or overlap in
    /// the sequence, an implausible header, more frames in a packet than
    /// `MAX_WALK * WALK_RUNS`.
    WalkStops,
    /// Flow state or anchor updates the kernel could not make (map full).
    StateErrors,
    /// Packets whose records were not written because a tail call into the walk or emit
    /// program failed (their payload bytes are counted in `LoadErrorBytes`).
    TailCallErrors,
    /// Bytes reserved in the ring buffer for records written, headers included.
    RingBytes,
    /// Payload bytes of retransmissions of bytes already walked and handed on, passed on
    /// without their payload (userspace would drop them as duplicates).
    RetransmittedBytes,
    /// Loss notes written: one per record that could not be written (ring full, load
    /// error, failed tail call, payload beyond what a packet's records hold).
    LossNotes,
    /// Loss notes that did not fit in the `LOSSES` ring either: those losses are only
    /// in the counters, not attributed to a connection.
    LossNotesLost,
    /// Packets seen again on another interface (a bridge and its ports, both ends of a
    /// veth pair) after the interface that owns their direction: counted and passed on
    /// once, from that interface.
    PacketsDuplicate,
    /// Kernel log lines (aya-log, rare events) not written because the program had
    /// already written its share of them this second ([`LOG_LINES_PER_SECOND`] per CPU).
    LogLinesSuppressed,
    /// Kernel log lines not written because their ring (`AYA_LOGS`) was full.
    LogLinesLost,
}

/// Number of counters in `COUNTERS`.
pub const COUNTER_COUNT: u32 = 27;

/// Kernel log lines (rare events) each CPU writes per second at most; the rest are
/// counted in `Counter::LogLinesSuppressed`. A rare event can be made frequent by the
/// traffic (every packet of a BIG TCP flow is cut short): the bound keeps logging cheap.
pub const LOG_LINES_PER_SECOND: u64 = 10;

impl Counter {
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::PacketsSeen,
        Counter::PacketsMatched,
        Counter::BytesCopied,
        Counter::RingFullRecords,
        Counter::RingFullBytes,
        Counter::LoadErrors,
        Counter::LoadErrorBytes,
        Counter::SkipNotIp,
        Counter::SkipNotTcp,
        Counter::SkipIpv6Ext,
        Counter::SkipFragment,
        Counter::SkipTruncated,
        Counter::OtherPort,
        Counter::BytesTruncated,
        Counter::BytesSkipped,
        Counter::PacketsWalked,
        Counter::WalkStarts,
        Counter::WalkStops,
        Counter::StateErrors,
        Counter::TailCallErrors,
        Counter::RingBytes,
        Counter::RetransmittedBytes,
        Counter::LossNotes,
        Counter::LossNotesLost,
        Counter::PacketsDuplicate,
        Counter::LogLinesSuppressed,
        Counter::LogLinesLost,
    ];

    /// Stable snake_case name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::PacketsSeen => "packets_seen",
            Counter::PacketsMatched => "packets_matched",
            Counter::BytesCopied => "bytes_copied",
            Counter::RingFullRecords => "ring_full_records",
            Counter::RingFullBytes => "ring_full_bytes",
            Counter::LoadErrors => "load_errors",
            Counter::LoadErrorBytes => "load_error_bytes",
            Counter::SkipNotIp => "skip_not_ip",
            Counter::SkipNotTcp => "skip_not_tcp",
            Counter::SkipIpv6Ext => "skip_ipv6_ext",
            Counter::SkipFragment => "skip_fragment",
            Counter::SkipTruncated => "skip_truncated",
            Counter::OtherPort => "other_port",
            Counter::BytesTruncated => "bytes_truncated",
            Counter::BytesSkipped => "bytes_skipped",
            Counter::PacketsWalked => "packets_walked",
            Counter::WalkStarts => "walk_starts",
            Counter::WalkStops => "walk_stops",
            Counter::StateErrors => "state_errors",
            Counter::TailCallErrors => "tail_call_errors",
            Counter::RingBytes => "ring_bytes",
            Counter::RetransmittedBytes => "retransmitted_bytes",
            Counter::LossNotes => "loss_notes",
            Counter::LossNotesLost => "loss_notes_lost",
            Counter::PacketsDuplicate => "packets_duplicate",
            Counter::LogLinesSuppressed => "log_lines_suppressed",
            Counter::LogLinesLost => "log_lines_lost",
        }
    }
}

/// Slots of the `JUMP` program array: the program that walks frame headers, and the one
/// that writes a packet's records.
pub const JUMP_WALK: u32 = 0;
pub const JUMP_EMIT: u32 = 1;
/// Names of the programs userspace puts in those slots.
pub const PROGRAM_WALK: &str = "ws_monitor_walk";
pub const PROGRAM_EMIT: &str = "ws_monitor_emit";

/// Value of a monitored port's slot in the `PORTS` array (index: port in host byte order).
pub const PORT_MONITORED: u8 = 1;

/// Key of the `FLOWS` and `ANCHORS` maps: one direction of one connection, as the packet
/// travels (source first). Addresses in network byte order, IPv4 in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowDir {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}

impl FlowDir {
    /// The other direction of the same connection.
    pub const fn reverse(&self) -> FlowDir {
        FlowDir {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            family: self.family,
            _pad: [0; 3],
        }
    }
}

/// `WalkState::mode`: every payload byte is copied; only `next_seq` is kept.
pub const WALK_COPY: u8 = 0;
/// `WalkState::mode`: frame headers are walked and binary payload is skipped.
pub const WALK_HEADERS: u8 = 1;

/// `WalkState::msg` / `Anchor::msg`: no data message is open (a continuation frame
/// starting now would be an orphan: copied).
pub const MSG_NONE: u8 = 0;
/// An open message whose continuations are copied (text, compressed, or unknown).
pub const MSG_COPY: u8 = 1;
/// An open binary, uncompressed message: its continuations' payload is skipped.
pub const MSG_SKIP: u8 = 2;

/// Value of the kernel's `FLOWS` LRU map: where one direction's next frame header is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkState {
    /// Sequence number just past the last in-order byte seen.
    pub next_seq: u32,
    /// `WALK_HEADERS`: sequence number of the next frame header.
    pub hdr_seq: u32,
    /// `WALK_HEADERS`: bytes of the current frame's payload from here up to `hdr_seq`
    /// are skipped (equal to `hdr_seq` when the payload is copied).
    pub skip_from: u32,
    /// `WALK_COPY` or `WALK_HEADERS`.
    pub mode: u8,
    /// `MSG_*`: what continuation frames carry.
    pub msg: u8,
    /// Bytes of a header split across packets kept in `part` (it starts at `hdr_seq`).
    pub part_len: u8,
    /// 1 once a record of this direction was lost (ring full, load error):
    /// retransmissions are then copied whole, since they may carry the only copy
    /// userspace will get.
    pub lost: u8,
    pub part: [u8; 16],
}

/// Value of the `ANCHORS` map, written by userspace: a frame header the engine knows of
/// in a direction the kernel is copying whole. The kernel starts walking there when a
/// packet reaches it, and drops an anchor it has already passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Anchor {
    /// Sequence number of a frame header.
    pub hdr_seq: u32,
    /// `MSG_*` at that header.
    pub msg: u8,
    pub _pad: [u8; 3],
}

/// Value of the kernel's `OWNERS` map (capture on several interfaces): the interface
/// whose copy of a connection direction's packets is handed on, and when it last saw
/// one. Another interface takes over once the owner has seen nothing for
/// [`OWNER_TAKEOVER_NS`] (the route changed): copies of one packet on two interfaces are
/// microseconds apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub seen_ns: u64,
    pub ifindex: u32,
    pub _pad: u32,
}

/// Directions whose owning interface the kernel remembers (`OWNERS`, LRU).
pub const MAX_OWNERS: u32 = 65_536;
/// How long an owning interface may be silent before another one takes its direction.
pub const OWNER_TAKEOVER_NS: u64 = 1_000_000_000;

/// Value of the `IFACES` map (key: interface index): how packets at the TC hooks of an
/// interface start. An interface missing from the map is taken as Ethernet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Iface {
    /// Bytes before the network header: 14 for Ethernet and loopback, 0 for L3 devices
    /// (tun, WireGuard), whose packets' L3 protocol is in the skb's protocol field.
    pub l2_len: u32,
}

/// Interfaces the `IFACES` map describes at most.
pub const MAX_IFACES: u32 = 16_384;

/// `ChunkHeader::hook`: which TC hook saw the packet.
pub const HOOK_INGRESS: u8 = 0;
pub const HOOK_EGRESS: u8 = 1;

/// The one entry of the `LIVENESS` array: who owns this copy of the program, and a
/// heartbeat userspace refreshes every [`HEARTBEAT_INTERVAL_NS`]. A program whose owner was
/// killed outright (and whose netlink filter therefore stayed attached) returns at once
/// once the heartbeat is older than [`ORPHAN_AFTER_NS`]; a later ws-monitor reads the
/// owner fields to tell a dead owner from a live one before removing the filter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    /// `bpf_ktime_get_ns()` clock (CLOCK_MONOTONIC) of the last heartbeat.
    pub heartbeat_ns: u64,
    /// Inode of the owner's PID namespace (`/proc/self/ns/pid`).
    pub pid_ns: u64,
    /// The owner's start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
    /// The owner's PID in `pid_ns`.
    pub pid: u32,
    /// `LIVENESS_*` flags.
    pub flags: u32,
}

/// `Liveness::flags`: the owner added the clsact qdisc its filters hang on, so whoever
/// removes the last ws-monitor filter removes the qdisc too (when nothing else uses it).
pub const LIVENESS_QDISC_OWNED: u32 = 1;
/// How often userspace refreshes `Liveness::heartbeat_ns`.
pub const HEARTBEAT_INTERVAL_NS: u64 = 1_000_000_000;
/// A heartbeat older than this means the owner is gone: the program does nothing.
pub const ORPHAN_AFTER_NS: u64 = 5_000_000_000;

#[cfg(feature = "user")]
mod user {
    // SAFETY: `ChunkHeader` is `repr(C)`, made only of integers and byte arrays, with the
    // explicit `_pad` leaving no implicit padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::ChunkHeader {}
    // SAFETY: `Liveness` is `repr(C)`, three u64 then two u32: no padding, and every bit
    // pattern is valid.
    unsafe impl aya::Pod for super::Liveness {}
    // SAFETY: `FlowDir` is `repr(C)`: byte arrays, two u16 and bytes, padded explicitly
    // to 40 bytes; every bit pattern is valid.
    unsafe impl aya::Pod for super::FlowDir {}
    // SAFETY: `WalkState` is `repr(C)`: three u32, four bytes and a byte array (32 bytes,
    // no implicit padding); every bit pattern is valid.
    unsafe impl aya::Pod for super::WalkState {}
    // SAFETY: `Anchor` is `repr(C)`: a u32 and four bytes, no padding.
    unsafe impl aya::Pod for super::Anchor {}
    // SAFETY: `Owner` is `repr(C)`: a u64 and two u32, no padding.
    unsafe impl aya::Pod for super::Owner {}
    // SAFETY: `Iface` is `repr(C)`: one u32.
    unsafe impl aya::Pod for super::Iface {}
}
