//! TC classifier (ingress + egress): copies the TCP payload of packets on the monitored
//! ports into a ring buffer, in records of at most `CHUNK_SIZE` bytes, and counts every
//! packet it skips or loses. It never changes or drops a packet.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use ws_monitor_common::{
    ChunkHeader, Counter, Liveness, Scratch, CHUNK_SIZE, DIR_TO_CLIENT, DIR_TO_SERVER,
    HEADER_SIZE, HOOK_EGRESS, HOOK_INGRESS, MAX_CHUNKS, MAX_PORTS, ORPHAN_AFTER_NS,
};

/// Ring buffer of records; its size is set by userspace (`--ring-size`) before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Monitored ports (host byte order) → `PORT_MONITORED`.
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Per-CPU counters indexed by `Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(ws_monitor_common::COUNTER_COUNT, 0);

/// Owner and heartbeat, written by userspace (see `Liveness`).
#[map]
static LIVENESS: Array<Liveness> = Array::with_max_entries(1, 0);

/// Per-CPU buffer a record is assembled in (too large for the 512-byte stack).
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_HDR_LEN: u32 = 14;

/// Link-layer header length of the interface (14 for Ethernet and loopback, 0 for L3
/// devices such as tun or WireGuard), set by userspace at load time.
#[no_mangle]
static L2_LEN: u32 = ETH_HDR_LEN;
const IPV6_HDR_LEN: u32 = 40;
const TCP_MIN_HDR_LEN: u32 = 20;

#[classifier]
pub fn ws_monitor_ingress(ctx: TcContext) -> i32 {
    let _ = try_capture(&ctx, HOOK_INGRESS);
    TC_ACT_UNSPEC // let the packet continue to whatever comes next
}

#[classifier]
pub fn ws_monitor_egress(ctx: TcContext) -> i32 {
    let _ = try_capture(&ctx, HOOK_EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(counter: Counter, n: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot of this map, only touched by this CPU while the program runs.
        unsafe { *slot += n };
    }
}

/// Loads `N` bytes at `offset` (from the start of the packet) into a stack buffer.
/// `bpf_skb_load_bytes` also reads non-linear (paged) skb data, unlike direct access.
#[inline(always)]
fn load<const N: usize>(ctx: &TcContext, offset: u32) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: `buf` is a valid, writable `N`-byte buffer; the helper bounds-checks the skb.
    let ret = unsafe {
        bpf_skb_load_bytes(ctx.skb.skb as *const _, offset, buf.as_mut_ptr() as *mut _, N as u32)
    };
    (ret == 0).then_some(buf)
}

/// The network header's offset and the L3 protocol (EtherType).
#[inline(always)]
fn parse_l2(ctx: &TcContext) -> Option<(u32, u16)> {
    // SAFETY: a read-only global written by userspace before load.
    let l2_len = unsafe { core::ptr::read_volatile(&L2_LEN) };
    if l2_len != ETH_HDR_LEN {
        // No link-layer header: the kernel's protocol field names the L3 protocol.
        return Some((0, u16::from_be(ctx.skb.protocol() as u16)));
    }
    let eth: [u8; 18] = load(ctx, 0)?;
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        // One VLAN tag left in the packet (not offloaded).
        return Some((ETH_HDR_LEN + 4, u16::from_be_bytes([eth[16], eth[17]])));
    }
    Some((ETH_HDR_LEN, ethertype))
}

/// Where the TCP header starts (relative to the network header), the payload length
/// as the IP header states it, and the addresses.
struct L3 {
    family: u8,
    /// Offset of the network header in the packet.
    net: u32,
    saddr: [u8; 16],
    daddr: [u8; 16],
    tcp_offset: u32,
    /// IP payload length (TCP header + TCP payload).
    ip_payload_len: u32,
}

#[inline(always)]
fn parse_l3(ctx: &TcContext) -> Result<L3, Counter> {
    let (net, proto) = parse_l2(ctx).ok_or(Counter::SkipTruncated)?;
    match proto {
        ETH_P_IP => {
            let ip: [u8; 20] = load(ctx, net).ok_or(Counter::SkipTruncated)?;
            let ihl = ((ip[0] & 0x0f) as u32) * 4;
            if ip[0] >> 4 != 4 || ihl < 20 {
                return Err(Counter::SkipTruncated);
            }
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if frag & 0x3fff != 0 {
                return Err(Counter::SkipFragment); // MF set or non-zero offset
            }
            if ip[9] != IPPROTO_TCP {
                return Err(Counter::SkipNotTcp);
            }
            let total = u16::from_be_bytes([ip[2], ip[3]]) as u32;
            if total < ihl + TCP_MIN_HDR_LEN {
                return Err(Counter::SkipTruncated);
            }
            let mut l3 = L3 {
                family: 4,
                net,
                saddr: [0; 16],
                daddr: [0; 16],
                tcp_offset: ihl,
                ip_payload_len: total - ihl,
            };
            l3.saddr[..4].copy_from_slice(&ip[12..16]);
            l3.daddr[..4].copy_from_slice(&ip[16..20]);
            Ok(l3)
        }
        ETH_P_IPV6 => {
            let ip: [u8; 40] = load(ctx, net).ok_or(Counter::SkipTruncated)?;
            if ip[0] >> 4 != 6 {
                return Err(Counter::SkipTruncated);
            }
            match ip[6] {
                IPPROTO_TCP => {}
                44 => return Err(Counter::SkipFragment),
                // hop-by-hop, routing, destination options, AH, mobility, HIP, shim6
                0 | 43 | 60 | 51 | 135 | 139 | 140 => return Err(Counter::SkipIpv6Ext),
                _ => return Err(Counter::SkipNotTcp),
            }
            let payload = u16::from_be_bytes([ip[4], ip[5]]) as u32;
            if payload < TCP_MIN_HDR_LEN {
                return Err(Counter::SkipTruncated); // also jumbograms (payload length 0)
            }
            let mut l3 = L3 {
                family: 6,
                net,
                saddr: [0; 16],
                daddr: [0; 16],
                tcp_offset: IPV6_HDR_LEN,
                ip_payload_len: payload,
            };
            l3.saddr.copy_from_slice(&ip[8..24]);
            l3.daddr.copy_from_slice(&ip[24..40]);
            Ok(l3)
        }
        _ => Err(Counter::SkipNotIp),
    }
}

#[inline(always)]
fn is_monitored(port: u16) -> bool {
    // SAFETY: read-only lookup of a plain `u8` value.
    unsafe { PORTS.get(&port) }.is_some()
}

/// False once the owner's heartbeat is older than `ORPHAN_AFTER_NS`: the process that
/// loaded this program is gone (killed before it could detach a netlink filter), so the
/// program returns at once instead of filling a ring buffer nobody reads.
#[inline(always)]
fn owner_alive(now: u64) -> bool {
    match LIVENESS.get(0) {
        Some(live) => now.saturating_sub(live.heartbeat_ns) <= ORPHAN_AFTER_NS,
        None => false,
    }
}

fn try_capture(ctx: &TcContext, hook: u8) -> Result<(), ()> {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !owner_alive(now) {
        return Ok(());
    }
    count(Counter::PacketsSeen, 1);
    let l3 = match parse_l3(ctx) {
        Ok(l3) => l3,
        Err(reason) => {
            count(reason, 1);
            return Err(());
        }
    };
    let Some(tcp) = load::<20>(ctx, l3.net + l3.tcp_offset) else {
        count(Counter::SkipTruncated, 1);
        return Err(());
    };
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let direction = if is_monitored(dport) {
        DIR_TO_SERVER
    } else if is_monitored(sport) {
        DIR_TO_CLIENT
    } else {
        count(Counter::OtherPort, 1);
        return Ok(());
    };
    let doff = ((tcp[12] >> 4) as u32) * 4;
    if doff < TCP_MIN_HDR_LEN || doff > l3.ip_payload_len {
        count(Counter::SkipTruncated, 1);
        return Err(());
    }
    count(Counter::PacketsMatched, 1);

    let payload_len = l3.ip_payload_len - doff;
    let payload_offset = l3.net + l3.tcp_offset + doff;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return Err(());
    };
    // SAFETY: per-CPU map value owned by this CPU for the duration of the program.
    let scratch = unsafe { &mut *scratch };
    scratch.header = ChunkHeader {
        ts_ns: now,
        saddr: l3.saddr,
        daddr: l3.daddr,
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        payload_len,
        offset: 0,
        sport,
        dport,
        len: 0,
        family: l3.family,
        direction,
        flags: tcp[13],
        hook,
        _pad: [0; 6],
    };

    if payload_len == 0 {
        // SYN, FIN, RST or pure ACK: a header-only record.
        emit(scratch, 0);
        return Ok(());
    }
    let mut offset: u32 = 0;
    for _ in 0..MAX_CHUNKS {
        if offset >= payload_len {
            break;
        }
        let remaining = payload_len - offset;
        // Clamp by mask so the verifier sees 1..=CHUNK_SIZE.
        let n = ((remaining.min(CHUNK_SIZE as u32) - 1) & (CHUNK_SIZE as u32 - 1)) + 1;
        scratch.header.offset = offset;
        scratch.header.len = n as u16;
        // SAFETY: `data` holds CHUNK_SIZE bytes and `n <= CHUNK_SIZE`.
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                payload_offset + offset,
                scratch.data.as_mut_ptr() as *mut _,
                n,
            )
        };
        if ret != 0 {
            count(Counter::LoadErrors, 1);
            count(Counter::LoadErrorBytes, remaining as u64);
            return Err(());
        }
        emit(scratch, n);
        offset += n;
    }
    if offset < payload_len {
        count(Counter::BytesTruncated, (payload_len - offset) as u64);
    }
    Ok(())
}

/// Copies the header and `n` payload bytes of `scratch` into the ring buffer.
#[inline(always)]
fn emit(scratch: &Scratch, n: u32) {
    let size = if n == 0 {
        HEADER_SIZE
    } else {
        // Clamp by mask again: the verifier must see HEADER_SIZE + 1..=CHUNK_SIZE.
        HEADER_SIZE + (((n - 1) & (CHUNK_SIZE as u32 - 1)) + 1) as usize
    };
    // SAFETY: `Scratch` is `repr(C)` with the header first and `data` right after it, so
    // the first `HEADER_SIZE + n` (n <= CHUNK_SIZE) bytes lie inside the map value.
    let bytes = unsafe { core::slice::from_raw_parts(scratch as *const Scratch as *const u8, size) };
    if EVENTS.output::<[u8]>(bytes, 0).is_ok() {
        count(Counter::BytesCopied, n as u64);
    } else {
        count(Counter::RingFullRecords, 1);
        count(Counter::RingFullBytes, n as u64);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
