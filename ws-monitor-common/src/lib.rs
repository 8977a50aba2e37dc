//! Types shared by the kernel program and userspace: the ring-buffer record layout,
//! the counter indices and the configuration maps. Plain integers only (`Pod`).
#![no_std]

/// Payload bytes carried by one ring-buffer record at most. A TCP segment larger than this
/// (GSO/GRO super-packets reach 64 KiB) is split into consecutive records.
pub const CHUNK_SIZE: usize = 2048;
/// Records emitted per packet at most: `CHUNK_SIZE * MAX_CHUNKS` = 64 KiB of payload.
/// Payload beyond that (BIG TCP) is not copied and is counted in `Counter::BytesTruncated`.
pub const MAX_CHUNKS: usize = 32;
/// Ports that can be monitored at once.
pub const MAX_PORTS: u32 = 16;

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
    pub _pad: [u8; 6],
}

/// Size of [`ChunkHeader`] in a record; a multiple of 8 so the payload stays aligned.
pub const HEADER_SIZE: usize = core::mem::size_of::<ChunkHeader>();
const _: () = assert!(HEADER_SIZE.is_multiple_of(8));

/// Per-CPU scratch buffer the kernel program assembles a record in before copying it
/// into the ring buffer with its exact length.
#[repr(C)]
pub struct Scratch {
    pub header: ChunkHeader,
    pub data: [u8; CHUNK_SIZE],
}

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
    /// Payload bytes of matched packets beyond `MAX_CHUNKS * CHUNK_SIZE` (not copied).
    BytesTruncated,
}

/// Number of counters in `COUNTERS`.
pub const COUNTER_COUNT: u32 = 14;

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
        }
    }
}

/// Value of the `PORTS` hash map (key: port in host byte order).
pub const PORT_MONITORED: u8 = 1;

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
}
