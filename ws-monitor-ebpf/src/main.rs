//! TC classifier (ingress + egress): hands the TCP payload of packets on the monitored
//! ports to userspace through a ring buffer, and counts every packet it skips or loses.
//! It never changes or drops a packet.
//!
//! Header-only capture (the default): per connection direction the program keeps where
//! the next WebSocket frame header starts (`FLOWS`), walks the headers inside each
//! in-order packet, and copies everything but the payload of binary frames past its
//! first `EXCERPT_LEN` bytes, which it hands on as a known-length skip. A direction
//! starts walking at a 101 response it sees (both directions), or at an anchor userspace
//! sets (`ANCHORS`) once the engine is in sync; a hole or overlap in the sequence, an
//! implausible header, or more frames in a packet than `MAX_WALK * WALK_RUNS` send it back
//! to full copy; a retransmission of bytes already handed on goes as its header alone.
//! With `HEADER_ONLY` = 0 every payload byte is copied.
//!
//! Records are written in place (`bpf_ringbuf_reserve`, then `bpf_skb_load_bytes` into
//! the reservation): one copy per byte, in a few record sizes.
//!
//! Three programs share the work through tail calls, each verified on its own (together
//! they exceed the verifier's budget): the entry program (one per hook) parses the
//! packet and plans it; `ws_monitor_walk` reads up to `MAX_WALK` frame headers per run,
//! again for more; `ws_monitor_emit` writes the records. Their shared state is the
//! per-CPU `PLAN` (a tail call stays on the CPU).
//!
//! Rare events (the walk losing its place, a packet cut short, a load that failed) are
//! logged with aya-log for userspace's debug output. The entry and walk programs only
//! note them in the plan (`Plan::note`); the emit program, which every packet ends in,
//! writes the line in a function of its own that a packet without a note never enters,
//! at most `LOG_LINES_PER_SECOND` lines per CPU (the rest counted).
#![no_std]
#![no_main]

mod logging;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::TcContext,
};
use ws_monitor_common::{
    Anchor, ChunkHeader, Counter, FlowDir, Iface, Liveness, Owner, Plan, Span, WalkState, CHUNK_SIZE, DIR_TO_CLIENT,
    DIR_TO_SERVER, EXCERPT_LEN, HEADER_SIZE, HOOK_EGRESS, HOOK_INGRESS, JUMP_EMIT, JUMP_WALK, MAX_ANCHORS, MAX_CHUNKS,
    MAX_FLOWS, MAX_IFACES, MAX_OWNERS, MAX_SPANS, MAX_WALK, MSG_COPY, MSG_NONE, MSG_SKIP, NOTE_DOUBT, NOTE_LOAD_ERROR,
    NOTE_NONE, NOTE_SEQ_BREAK, NOTE_SPLIT_HEADER, NOTE_STATE_FULL, NOTE_TOO_MANY_FRAMES, ORPHAN_AFTER_NS,
    OWNER_TAKEOVER_NS, PORT_MONITORED, PORT_SLOTS, TCP_FIN, TCP_RST, TCP_SYN, WALK_COPY, WALK_HEADERS, WALK_RUNS,
};

/// Ring buffer of records; its size is set by userspace (`--ring-size`) before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Loss notes: the header of every record that could not be written to `EVENTS`, so
/// that userspace knows which connection lost which bytes (see `ChunkHeader::lost`).
#[map]
static LOSSES: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// `PORT_MONITORED` at the index of every monitored port (host byte order): one array
/// lookup per packet, no hashing.
#[map]
static PORTS: Array<u8> = Array::with_max_entries(PORT_SLOTS, 0);

/// Per-CPU counters indexed by `Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ws_monitor_common::COUNTER_COUNT, 0);

/// Owner and heartbeat, written by userspace (see `Liveness`).
#[map]
static LIVENESS: Array<Liveness> = Array::with_max_entries(1, 0);

/// Where each connection direction's next frame header is (header-only capture).
#[map]
static FLOWS: LruHashMap<FlowDir, WalkState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// How packets start on each interface attached to (see `Iface`), set by userspace
/// before it attaches there.
#[map]
static IFACES: HashMap<u32, Iface> = HashMap::with_max_entries(MAX_IFACES, 0);

/// Capture on several interfaces (`DEDUP` = 1): which interface hands on each connection
/// direction's packets; the copies other interfaces see are counted and left alone.
#[map]
static OWNERS: LruHashMap<FlowDir, Owner> = LruHashMap::with_max_entries(MAX_OWNERS, 0);

/// Frame headers userspace knows of in directions the program copies whole.
#[map]
static ANCHORS: HashMap<FlowDir, Anchor> = HashMap::with_max_entries(MAX_ANCHORS, 0);

/// The walk and emit programs, at `JUMP_WALK` and `JUMP_EMIT` (set by userspace).
#[map]
static JUMP: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// Per-CPU plan of the packet being handled (too large for the 512-byte stack).
#[map]
static PLAN: PerCpuArray<Plan> = PerCpuArray::with_max_entries(1, 0);

/// Bytes of a 101 response searched for the end of its head.
const HEAD_SCAN: usize = 512;

/// Per-CPU buffer a 101 response's head is searched in.
#[map]
static HEAD: PerCpuArray<[u8; HEAD_SCAN]> = PerCpuArray::with_max_entries(1, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_HDR_LEN: u32 = 14;

/// 1 when the program is attached to more than one interface (so that one packet may
/// pass two of them): each direction is then handed on from one interface only
/// (`OWNERS`). Set by userspace at load time.
#[no_mangle]
static DEDUP: u32 = 0;
/// 1: header-only capture; 0: copy every payload byte (`--full-payload`). Set by
/// userspace at load time.
#[no_mangle]
static HEADER_ONLY: u32 = 1;
/// Records are committed without waking the reader, but for those that take the unread
/// bytes in the ring past a multiple of this: a wakeup per record costs microseconds
/// where it takes an inter-processor interrupt (virtual machines), and the reader also
/// drains on a short timer. Set by userspace at load time.
#[no_mangle]
static WAKE_BYTES: u32 = 65536;
/// `bpf_ringbuf_query`: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// `bpf_ringbuf_submit` flags.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
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

/// Returns at once: what `cargo xtask bench` attaches to the same hooks to measure the
/// cost of having any TC program there (ws-monitor never attaches it).
#[classifier]
pub fn ws_monitor_null(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Tail-called by the entry programs (and by itself) for a packet of a direction whose
/// frame headers are walked.
#[classifier]
pub fn ws_monitor_walk(ctx: TcContext) -> i32 {
    if let Some(plan) = PLAN.get_ptr_mut(0) {
        // SAFETY: per-CPU map value owned by this CPU for the duration of the program.
        walk_run(&ctx, unsafe { &mut *plan });
    }
    TC_ACT_UNSPEC
}

/// Tail-called last: writes the planned records.
#[classifier]
pub fn ws_monitor_emit(ctx: TcContext) -> i32 {
    if let Some(plan) = PLAN.get_ptr_mut(0) {
        // SAFETY: per-CPU map value owned by this CPU for the duration of the program.
        emit_plan(&ctx, unsafe { &mut *plan });
    }
    TC_ACT_UNSPEC
}

/// Continues with the program at `slot` of `JUMP`; returns only if that failed, which
/// is counted with the packet's payload bytes.
#[inline(always)]
fn jump(ctx: &TcContext, plan: &Plan, slot: u32) {
    // SAFETY: the slot holds a classifier of the same object, or nothing.
    unsafe { JUMP.tail_call(ctx, slot) };
    count(Counter::TailCallErrors, 1);
    count(Counter::LoadErrorBytes, plan.header.payload_len as u64);
    let mut header = plan.header;
    header.offset = 0;
    note_loss(&header, plan.header.payload_len);
}

/// Tells userspace that the record `header` describes, `n` payload bytes from
/// `header.offset`, could not be written.
#[inline(always)]
fn note_loss(header: &ChunkHeader, n: u32) {
    let mut note = *header;
    note.len = 0;
    note.skip = n;
    note.lost = 1;
    match LOSSES.output::<ChunkHeader>(&note, 0) {
        Ok(()) => count(Counter::LossNotes, 1),
        Err(_) => count(Counter::LossNotesLost, 1),
    }
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
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, offset, buf.as_mut_ptr() as *mut _, N as u32) };
    (ret == 0).then_some(buf)
}

/// The network header's offset and the L3 protocol (EtherType).
#[inline(always)]
fn parse_l2(ctx: &TcContext, ifindex: u32) -> Option<(u32, u16)> {
    // SAFETY: a value of a map only userspace writes; read by copy.
    let l2_len = unsafe { IFACES.get(&ifindex) }.map_or(ETH_HDR_LEN, |i| i.l2_len);
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
fn parse_l3(ctx: &TcContext, ifindex: u32) -> Result<L3, Counter> {
    let (net, proto) = parse_l2(ctx, ifindex).ok_or(Counter::SkipTruncated)?;
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
            let mut total = u16::from_be_bytes([ip[2], ip[3]]) as u32;
            if total == 0 {
                // BIG TCP (Linux 6.3+): a GSO packet over 64 KiB states no length.
                total = ctx.len().saturating_sub(net);
            }
            if total < ihl + TCP_MIN_HDR_LEN {
                return Err(Counter::SkipTruncated);
            }
            let mut l3 =
                L3 { family: 4, net, saddr: [0; 16], daddr: [0; 16], tcp_offset: ihl, ip_payload_len: total - ihl };
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
            let mut payload = u16::from_be_bytes([ip[4], ip[5]]) as u32;
            if payload == 0 {
                // BIG TCP: the kernel strips the jumbo option and leaves the length 0.
                payload = ctx.len().saturating_sub(net + IPV6_HDR_LEN);
            }
            if payload < TCP_MIN_HDR_LEN {
                return Err(Counter::SkipTruncated);
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
    PORTS.get(port as u32).is_some_and(|v| *v == PORT_MONITORED)
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

/// `a` is at or before `b` in sequence space.
#[inline(always)]
fn seq_le(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

/// Offset of sequence number `seq` from `base`, signed (a packet spans far less than 2 GiB).
#[inline(always)]
fn rel(seq: u32, base: u32) -> i64 {
    seq.wrapping_sub(base) as i32 as i64
}

#[inline(always)]
fn try_capture(ctx: &TcContext, hook: u8) -> Result<(), ()> {
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !owner_alive(now) {
        return Ok(());
    }
    count(Counter::PacketsSeen, 1);
    // SAFETY: the context's skb is valid for the whole run of the program.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let l3 = match parse_l3(ctx, ifindex) {
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
    let Some(plan) = PLAN.get_ptr_mut(0) else {
        return Err(());
    };
    // SAFETY: per-CPU map value owned by this CPU for the duration of the program.
    let plan = unsafe { &mut *plan };
    plan.key = FlowDir { saddr: l3.saddr, daddr: l3.daddr, sport, dport, family: l3.family, _pad: [0; 3] };
    // SAFETY: a read-only global written by userspace before load.
    if unsafe { core::ptr::read_volatile(&DEDUP) } != 0 && !owns(&plan.key, ifindex, now) {
        count(Counter::PacketsDuplicate, 1);
        return Ok(());
    }
    count(Counter::PacketsMatched, 1);

    let payload_len = l3.ip_payload_len - doff;
    let payload_offset = l3.net + l3.tcp_offset + doff;
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let flags = tcp[13];
    plan.header = ChunkHeader {
        ts_ns: now,
        saddr: l3.saddr,
        daddr: l3.daddr,
        seq,
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        payload_len,
        offset: 0,
        sport,
        dport,
        len: 0,
        family: l3.family,
        direction,
        flags,
        hook,
        skip: 0,
        ifindex,
        lost: 0,
        _pad: [0; 5],
    };
    plan.n = 0;
    plan.note = NOTE_NONE;
    // SAFETY: a read-only global written by userspace before load.
    let header_only = unsafe { core::ptr::read_volatile(&HEADER_ONLY) } != 0;
    if payload_len == 0 {
        // SYN, FIN, RST or pure ACK: a header-only record.
        if header_only && flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
            forget(&plan.key);
        }
        // Through the emit program: a program that tail-calls may not call functions
        // (without BTF), and records are written by a function per size.
        push(plan, 0, 0, 0);
        jump(ctx, plan, JUMP_EMIT);
        return Err(());
    }
    plan.off = payload_offset;
    if header_only {
        if flags & (TCP_SYN | TCP_FIN | TCP_RST) != 0 {
            // A connection that starts (TCP Fast Open) or ends: copied whole.
            forget(&plan.key);
        } else if walk(ctx, seq, payload_len, payload_offset, direction, plan) {
            jump(ctx, plan, JUMP_WALK);
            return Err(());
        }
    }
    if plan.n == 0 {
        push(plan, 0, payload_len as i64, payload_len as i64);
    }
    jump(ctx, plan, JUMP_EMIT);
    Err(())
}

/// Whether `ifindex` hands on the packets of direction `key`: the first interface to see
/// the direction owns it, and another takes over once the owner has been silent for
/// `OWNER_TAKEOVER_NS`. (Two CPUs seeing a direction's first packet on two interfaces at
/// once may both pass it: reassembly drops the second as a duplicate.)
#[inline(always)]
fn owns(key: &FlowDir, ifindex: u32, now: u64) -> bool {
    if let Some(owner) = OWNERS.get_ptr_mut(key) {
        // SAFETY: a value of the OWNERS map, valid while the program runs; concurrent
        // writers store whole, equally valid values.
        let owner = unsafe { &mut *owner };
        if owner.ifindex != ifindex && now.saturating_sub(owner.seen_ns) <= OWNER_TAKEOVER_NS {
            return false;
        }
        owner.ifindex = ifindex;
        owner.seen_ns = now;
        return true;
    }
    let _ = OWNERS.insert(key, &Owner { seen_ns: now, ifindex, _pad: 0 }, 0);
    true
}

/// Drops what is kept for one direction of a connection that starts or ends.
#[inline(always)]
fn forget(key: &FlowDir) {
    let _ = FLOWS.remove(key);
    let _ = ANCHORS.remove(key);
}

#[inline(always)]
fn push(plan: &mut Plan, start: i64, copy_end: i64, skip_end: i64) {
    if let Some(span) = plan.spans.get_mut(plan.n as usize) {
        *span = Span { start: start as u32, copy_end: copy_end as u32, skip_end: skip_end as u32 };
        plan.n += 1;
    }
}

/// Header-only capture of one packet: true if its frame headers are to be walked (the
/// walk program then fills `plan`); false for a full copy, or for the header alone when
/// `plan` already holds an empty span (a retransmission).
#[inline(always)]
fn walk(ctx: &TcContext, seq: u32, len: u32, off: u32, direction: u8, plan: &mut Plan) -> bool {
    let st = match FLOWS.get_ptr_mut(&plan.key) {
        Some(st) => st,
        None => {
            plan.fresh = WalkState { next_seq: seq, ..WalkState::default() };
            if FLOWS.insert(&plan.key, &plan.fresh, 0).is_err() {
                count(Counter::StateErrors, 1);
                note(plan, NOTE_STATE_FULL, 0, 0);
                return false;
            }
            match FLOWS.get_ptr_mut(&plan.key) {
                Some(st) => st,
                None => return false,
            }
        }
    };
    // SAFETY: a value of the FLOWS map, valid while the program runs; a concurrent update
    // of the same direction can only make the walk copy more.
    let st = unsafe { &mut *st };
    let end = seq.wrapping_add(len);
    let expected = st.next_seq;
    let in_order = expected == seq;
    let nothing_new = seq_le(end, st.next_seq);
    if !nothing_new {
        st.next_seq = end;
    }
    if st.mode == WALK_HEADERS && !in_order {
        if nothing_new {
            // A retransmission of bytes already walked and handed on: its header only
            // (flags, ACK), the walk still in step. Copied whole if a record was lost.
            if st.lost == 0 {
                count(Counter::RetransmittedBytes, len as u64);
                push(plan, 0, 0, 0);
            }
            return false;
        }
        stop(st); // a hole or an overlap: where the next header is is no longer known
        note(plan, NOTE_SEQ_BREAK, expected, seq);
    }
    if st.mode == WALK_COPY && !start(ctx, &plan.key, st, seq, len, off, direction) {
        return false;
    }
    walk_start(st, seq, len, plan)
}

/// The direction goes back to full copy until it is anchored again.
#[inline(always)]
fn stop(st: &mut WalkState) {
    st.mode = WALK_COPY;
    st.part_len = 0;
    count(Counter::WalkStops, 1);
}

/// Keeps the packet's first rare event for the emit program to log.
#[inline(always)]
fn note(plan: &mut Plan, what: u32, a: u32, b: u32) {
    if plan.note == NOTE_NONE {
        plan.note = what;
        plan.note_a = a;
        plan.note_b = b;
    }
}

/// Starts walking a direction at the frame header at `hdr_seq`.
#[inline(always)]
fn begin(st: &mut WalkState, hdr_seq: u32, msg: u8) {
    st.mode = WALK_HEADERS;
    st.hdr_seq = hdr_seq;
    st.skip_from = hdr_seq;
    st.msg = msg;
    st.part_len = 0;
    count(Counter::WalkStarts, 1);
}

/// A direction copied whole: does a frame header it can start at lie in this packet
/// (an anchor from userspace, or the end of a 101 response)?
#[inline(always)]
fn start(ctx: &TcContext, key: &FlowDir, st: &mut WalkState, seq: u32, len: u32, off: u32, direction: u8) -> bool {
    if let Some(anchor) = ANCHORS.get_ptr(key) {
        // SAFETY: a value of the ANCHORS map, copied out at once.
        let anchor = unsafe { *anchor };
        let at = rel(anchor.hdr_seq, seq);
        if at > len as i64 {
            return false; // not reached yet
        }
        let _ = ANCHORS.remove(key);
        if at < 0 {
            return false; // already passed: userspace sets a newer one
        }
        begin(st, anchor.hdr_seq, anchor.msg);
        return true;
    }
    if direction != DIR_TO_CLIENT {
        return false;
    }
    let Some(head) = head_end_101(ctx, off, len) else {
        return false;
    };
    begin(st, seq.wrapping_add(head), MSG_NONE);
    // The client's frames start after whatever it has sent so far.
    if let Some(peer) = FLOWS.get_ptr_mut(&key.reverse()) {
        // SAFETY: a value of the FLOWS map, valid while the program runs.
        let peer = unsafe { &mut *peer };
        if peer.mode == WALK_COPY {
            begin(peer, peer.next_seq, MSG_NONE);
        }
    }
    true
}

/// Length of the HTTP head of a `101 Switching Protocols` response that starts this
/// payload (and ends in it, within `HEAD_SCAN` bytes or at the payload's end).
#[inline(always)]
fn head_end_101(ctx: &TcContext, off: u32, len: u32) -> Option<u32> {
    if len < 16 || load::<12>(ctx, off)? != *b"HTTP/1.1 101" {
        return None;
    }
    if load::<4>(ctx, off + len - 4)? == *b"\r\n\r\n" {
        return Some(len);
    }
    let buf = HEAD.get_ptr_mut(0)?;
    // SAFETY: per-CPU map value owned by this CPU for the duration of the program.
    let buf = unsafe { &mut *buf };
    let n = len.min(HEAD_SCAN as u32);
    let n = ((n - 1) & (HEAD_SCAN as u32 - 1)) + 1;
    // SAFETY: `buf` holds HEAD_SCAN bytes and `n <= HEAD_SCAN`.
    let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, off, buf.as_mut_ptr() as *mut _, n) };
    if ret != 0 {
        return None;
    }
    let mut i = 3usize;
    while i < HEAD_SCAN {
        if i as u32 >= n {
            break;
        }
        if buf[i] == b'\n' && buf[i - 1] == b'\r' && buf[i - 2] == b'\n' && buf[i - 3] == b'\r' {
            return Some(i as u32 + 1);
        }
        i += 1;
    }
    None
}

/// What a frame header tells the walk.
struct Frame {
    header_len: i64,
    payload_len: i64,
    opcode: u8,
    fin: bool,
    rsv1: bool,
}

enum Read {
    Frame(Frame),
    /// The header goes on in the next packet.
    Partial,
    /// Not a header to trust: copy and let userspace judge.
    Doubt,
}

/// Reads the header at `pos` (negative: it began `-pos` bytes before this packet, and
/// those bytes are in `st.part`) into `plan.hdr`.
#[inline(always)]
fn read_header(ctx: &TcContext, st: &mut WalkState, plan: &mut Plan, off: u32, pos: i64, len: i64) -> Read {
    let k = if pos < 0 { (st.part_len & 15) as usize } else { 0 };
    let from = if pos < 0 { 0 } else { pos };
    let want = (14 - k as i64).min(len - from);
    if want <= 0 || want > 14 {
        return Read::Doubt;
    }
    plan.hdr[..16].copy_from_slice(&st.part);
    let n = ((want as u32 - 1) & 15) + 1;
    // SAFETY: `k <= 15` and `n <= 16` bytes land inside the 32-byte `hdr`; the helper
    // bounds-checks the skb.
    let ret = unsafe {
        bpf_skb_load_bytes(ctx.skb.skb as *const _, off + from as u32, plan.hdr.as_mut_ptr().add(k & 15) as *mut _, n)
    };
    if ret != 0 {
        count(Counter::LoadErrors, 1);
        note(plan, NOTE_LOAD_ERROR, from as u32, len as u32);
        return Read::Doubt;
    }
    let avail = k + n as usize;
    match parse_header(&plan.hdr, avail) {
        Some(Some(frame)) => Read::Frame(frame),
        Some(None) => {
            st.part.copy_from_slice(&plan.hdr[..16]);
            st.part_len = avail as u8;
            Read::Partial
        }
        None => Read::Doubt,
    }
}

/// `Some(None)`: more bytes needed; `None`: implausible or unusual, copy instead.
#[inline(always)]
fn parse_header(hb: &[u8; 32], avail: usize) -> Option<Option<Frame>> {
    if avail < 2 {
        return Some(None);
    }
    let (b0, b1) = (hb[0], hb[1]);
    let opcode = b0 & 0x0f;
    if b0 & 0x30 != 0 || (3..=7).contains(&opcode) || opcode > 10 {
        return None; // RSV2/RSV3 or a reserved opcode
    }
    let (ext, payload_len) = match b1 & 0x7f {
        126 => {
            if avail < 4 {
                return Some(None);
            }
            (2, u16::from_be_bytes([hb[2], hb[3]]) as i64)
        }
        127 => {
            if avail < 10 {
                return Some(None);
            }
            let v = u64::from_be_bytes([hb[2], hb[3], hb[4], hb[5], hb[6], hb[7], hb[8], hb[9]]);
            if v >= 1 << 31 {
                return None; // MSB set, or too large to follow in sequence space
            }
            (8, v as i64)
        }
        n => (0, n as i64),
    };
    let header_len = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
    if (avail as i64) < header_len {
        return Some(None);
    }
    let fin = b0 & 0x80 != 0;
    if opcode >= 8 && (payload_len > 125 || !fin) {
        return None; // a control frame out of bounds
    }
    Some(Some(Frame { header_len, payload_len, opcode, fin, rsv1: b0 & 0x40 != 0 }))
}

/// Reads a loop variable from memory (see `Plan::pos`).
#[inline(always)]
fn get<T: Copy>(v: &T) -> T {
    // SAFETY: a volatile read of a valid reference.
    unsafe { core::ptr::read_volatile(v) }
}

/// Writes a loop variable to memory (see `Plan::pos`).
#[inline(always)]
fn set<T>(v: &mut T, x: T) {
    // SAFETY: a volatile write through a valid reference.
    unsafe { core::ptr::write_volatile(v, x) }
}

/// Sets up the walk of a packet: the span before its first header (the rest of a frame's
/// payload), and where that header is. False (and a full copy) if that is not known.
#[inline(always)]
fn walk_start(st: &mut WalkState, seq: u32, len: u32, plan: &mut Plan) -> bool {
    let l = len as i64;
    let pos = rel(st.hdr_seq, seq);
    set(&mut plan.cut, 0);
    set(&mut plan.stopped, 0);
    set(&mut plan.runs, 0);
    if pos > 0 {
        // The packet starts inside a frame's payload: skip from `skip_from` on.
        let from = rel(st.skip_from, seq).max(0);
        if from < pos && from < l {
            let cut = pos.min(l);
            push(plan, 0, from, cut);
            set(&mut plan.cut, cut);
        }
    } else if pos < 0 && -pos != st.part_len as i64 {
        stop(st);
        plan.n = 0;
        note(plan, NOTE_SPLIT_HEADER, st.part_len as u32, (-pos) as u32);
        return false;
    } else if pos == 0 {
        st.part_len = 0;
    }
    set(&mut plan.pos, pos);
    true
}

/// One run of the walk program: up to `MAX_WALK` frame headers, then itself again or,
/// once the packet is done, the emit program.
#[inline(always)]
fn walk_run(ctx: &TcContext, plan: &mut Plan) {
    let (seq, len, off) = (plan.header.seq, plan.header.payload_len, plan.off);
    let l = len as i64;
    let Some(st) = FLOWS.get_ptr_mut(&plan.key) else {
        // Evicted meanwhile: copy the packet whole.
        plan.n = 0;
        push(plan, 0, l, l);
        return jump(ctx, plan, JUMP_EMIT);
    };
    // SAFETY: a value of the FLOWS map, valid while the program runs.
    let st = unsafe { &mut *st };
    for _ in 0..MAX_WALK {
        let pos = get(&plan.pos);
        if pos >= l {
            break;
        }
        let frame = match read_header(ctx, st, plan, off, pos, l) {
            Read::Frame(f) => f,
            Read::Partial => {
                st.hdr_seq = seq.wrapping_add(pos as u32);
                break;
            }
            Read::Doubt => {
                set(&mut plan.stopped, 1);
                break;
            }
        };
        st.part_len = 0;
        let body = pos + frame.header_len;
        let next = body + frame.payload_len;
        let skipped = match frame.opcode {
            2 => !frame.rsv1,
            0 => !frame.rsv1 && st.msg == MSG_SKIP,
            _ => false,
        };
        match frame.opcode {
            1 | 2 => {
                st.msg = if frame.fin {
                    MSG_NONE
                } else if skipped {
                    MSG_SKIP
                } else {
                    MSG_COPY
                }
            }
            0 if frame.fin => st.msg = MSG_NONE,
            0 if st.msg == MSG_NONE => st.msg = MSG_COPY,
            _ => {}
        }
        let from = body + EXCERPT_LEN as i64;
        if skipped && frame.payload_len > EXCERPT_LEN as i64 {
            st.skip_from = seq.wrapping_add(from as u32);
            if from < l {
                let to = next.min(l);
                push(plan, get(&plan.cut), from, to);
                set(&mut plan.cut, to);
            }
        } else {
            st.skip_from = seq.wrapping_add(next as u32);
        }
        set(&mut plan.pos, next);
    }
    let pos = get(&plan.pos);
    let stopped = get(&plan.stopped) != 0;
    let partial = !stopped && pos < l && st.part_len != 0;
    if pos < l && !stopped && !partial {
        let runs = get(&plan.runs) + 1;
        if runs < WALK_RUNS {
            set(&mut plan.runs, runs);
            return jump(ctx, plan, JUMP_WALK);
        }
    }
    if pos < l && !partial {
        // An implausible header, or more frames than the walk takes: the rest is copied.
        stop(st);
        if stopped {
            note(plan, NOTE_DOUBT, u16::from_be_bytes([plan.hdr[0], plan.hdr[1]]) as u32, pos as u32);
        } else {
            note(plan, NOTE_TOO_MANY_FRAMES, (MAX_WALK as u32) * WALK_RUNS, len);
        }
    } else if pos >= 0 {
        st.hdr_seq = seq.wrapping_add(pos as u32);
    }
    let cut = get(&plan.cut);
    if cut < l {
        push(plan, cut, l, l);
    }
    count(Counter::PacketsWalked, 1);
    jump(ctx, plan, JUMP_EMIT);
}

/// Emits the packet's spans as records of at most `CHUNK_SIZE` copied bytes, each
/// followed by the skip that ends its span.
#[inline(always)]
fn emit_plan(ctx: &TcContext, plan: &mut Plan) {
    let off = plan.off;
    let n = plan.n.min(MAX_SPANS as u32);
    set(&mut plan.si, 0);
    set(&mut plan.at, plan.spans[0].start);
    for _ in 0..(MAX_CHUNKS + MAX_SPANS) {
        let si = get(&plan.si);
        if si >= n {
            break;
        }
        let Some(&span) = plan.spans.get(si as usize) else { break };
        let at = get(&plan.at);
        let left = span.copy_end.saturating_sub(at);
        let take = left.min(CHUNK_SIZE as u32);
        let last = take == left;
        let skip = if last { span.skip_end.saturating_sub(span.copy_end) } else { 0 };
        let header = &mut plan.header;
        header.offset = at;
        header.len = take as u16;
        header.skip = skip;
        let written = emit(ctx, header, off + at, take);
        if written != EMITTED {
            if written == EMIT_LOAD_ERROR {
                note(plan, NOTE_LOAD_ERROR, at, plan.header.payload_len);
            }
            let header = &plan.header;
            mark_lost(&plan.key);
            note_loss(header, take + skip);
        } else if skip > 0 {
            count(Counter::BytesSkipped, skip as u64);
        }
        if last {
            set(&mut plan.si, si + 1);
            set(&mut plan.at, span.skip_end);
        } else {
            set(&mut plan.at, at + take);
        }
    }
    let mut cut = 0;
    if get(&plan.si) < n {
        let at = get(&plan.at);
        cut = plan.header.payload_len.saturating_sub(at);
        count(Counter::BytesTruncated, cut as u64);
        let mut header = plan.header;
        header.offset = at;
        note_loss(&header, cut);
    }
    if plan.note != NOTE_NONE || cut > 0 {
        logging::log_packet(ctx, plan, cut);
    }
}

/// A record of this direction was lost: from now on its retransmissions are copied.
#[inline(always)]
fn mark_lost(key: &FlowDir) {
    if let Some(st) = FLOWS.get_ptr_mut(key) {
        // SAFETY: a value of the FLOWS map, valid while the program runs.
        unsafe { (*st).lost = 1 };
    }
}

/// What [`emit`] did.
const EMITTED: u32 = 0;
const EMIT_RING_FULL: u32 = 1;
const EMIT_LOAD_ERROR: u32 = 2;

/// Writes one record: the header, then `n` payload bytes loaded from packet offset `src`
/// straight into the ring buffer. `EMITTED`, or why not.
#[inline(always)]
fn emit(ctx: &TcContext, header: &ChunkHeader, src: u32, n: u32) -> u32 {
    match n {
        0 => emit_sized::<0>(ctx, header, src, n),
        1..=128 => emit_sized::<128>(ctx, header, src, n),
        129..=512 => emit_sized::<512>(ctx, header, src, n),
        513..=1024 => emit_sized::<1024>(ctx, header, src, n),
        _ => emit_sized::<CHUNK_SIZE>(ctx, header, src, n),
    }
}

/// [`emit`] in a record of `HEADER_SIZE + N` bytes (`N`: 0 or a power of two ≥ `n`).
/// A function of its own per size: merged into one call site, the sizes would no longer
/// be constants the verifier can check the load against.
#[inline(never)]
fn emit_sized<const N: usize>(ctx: &TcContext, header: &ChunkHeader, src: u32, n: u32) -> u32 {
    let lost = n as u64 + header.skip as u64;
    let unread = EVENTS.query(BPF_RB_AVAIL_DATA);
    let Some(mut record) = EVENTS.reserve_bytes(HEADER_SIZE + N, 0) else {
        count(Counter::RingFullRecords, 1);
        count(Counter::RingFullBytes, lost);
        return EMIT_RING_FULL;
    };
    let base = record.as_mut_ptr();
    // SAFETY: the reservation holds HEADER_SIZE + N bytes, 8-byte aligned (the ring
    // buffer's records are), and the header is HEADER_SIZE plain bytes.
    unsafe { core::ptr::write(base as *mut ChunkHeader, *header) };
    if N > 0 {
        // Clamp by mask so the verifier sees 1..=N. LLVM knows the callers keep `n` in
        // range and would drop the mask: hide the value from it first.
        // SAFETY: a volatile read of a local.
        let n = unsafe { core::ptr::read_volatile(&n) };
        let len = ((n.max(1) - 1) & (N as u32 - 1)) + 1;
        // SAFETY: `len <= N` bytes written after the header, inside the reservation.
        let ret = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, src, base.add(HEADER_SIZE) as *mut _, len) };
        if ret != 0 {
            record.discard(0);
            count(Counter::LoadErrors, 1);
            count(Counter::LoadErrorBytes, lost);
            return EMIT_LOAD_ERROR;
        }
    }
    // SAFETY: a read-only global written by userspace before load.
    let wake = (unsafe { core::ptr::read_volatile(&WAKE_BYTES) } as u64).max(1);
    let size = (HEADER_SIZE + N) as u64;
    // Once per `wake` bytes produced (a crossing of a multiple of it): exact enough
    // even when other CPUs commit records between the query and this one.
    record.submit(if unread / wake != (unread + size) / wake { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP });
    count(Counter::BytesCopied, n as u64);
    count(Counter::RingBytes, size);
    EMITTED
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
