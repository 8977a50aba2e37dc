//! Log lines of rare events (aya-log), written by the emit program for a packet whose
//! plan holds a note (`Plan::note`) or whose payload was cut short: never on the path
//! of a packet without one. At most `LOG_LINES_PER_SECOND` lines per CPU; the lines held
//! back, or that find the log ring full, are counted.

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::TcContext};
use aya_log_ebpf::macro_support::{level_enabled, Level, AYA_LOGS};
use aya_log_ebpf::{debug, warn};
use ws_monitor_common::{
    Counter, Plan, LOG_LINES_PER_SECOND, NOTE_DOUBT, NOTE_LOAD_ERROR, NOTE_NONE, NOTE_SEQ_BREAK, NOTE_SPLIT_HEADER,
    NOTE_STATE_FULL, NOTE_TOO_MANY_FRAMES,
};

use crate::{count, BPF_RB_AVAIL_DATA};

/// Per-CPU log budget: when the current second started (`bpf_ktime_get_ns`), and the
/// lines written in it.
#[map]
static LOG_GATE: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// `bpf_ringbuf_query`: the ring's size.
const BPF_RB_RING_SIZE: u64 = 1;
/// Room a log line may take in `AYA_LOGS` at most (aya-log's largest record).
const LOG_LINE_MAX: u64 = 8192;

/// Whether a log line may be written now: aya-log's level lets it through, this CPU has
/// not used up its lines for this second, and the log ring has room (aya-log drops a
/// line it cannot reserve without a word: counted here instead).
#[inline(always)]
fn may_log(now: u64) -> bool {
    if !level_enabled(Level::Debug) {
        return false; // userspace does not want the lines (no subscriber wants debug)
    }
    let Some(gate) = LOG_GATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU map value owned by this CPU for the duration of the program.
    let gate = unsafe { &mut *gate };
    if now.saturating_sub(gate[0]) >= 1_000_000_000 {
        gate[0] = now;
        gate[1] = 0;
    }
    if gate[1] >= LOG_LINES_PER_SECOND {
        count(Counter::LogLinesSuppressed, 1);
        return false;
    }
    let used = AYA_LOGS.query(BPF_RB_AVAIL_DATA);
    if used + LOG_LINE_MAX > AYA_LOGS.query(BPF_RB_RING_SIZE) {
        count(Counter::LogLinesLost, 1);
        return false;
    }
    gate[1] += 1;
    true
}

/// An address for a log line: IPv6 as it is, IPv4 mapped (`::ffff:a.b.c.d`), so that
/// one line shows both families.
#[inline(always)]
fn log_addr(family: u8, a: &[u8; 16]) -> [u8; 16] {
    if family == 6 {
        return *a;
    }
    let mut m = [0u8; 16];
    m[10] = 0xff;
    m[11] = 0xff;
    m[12] = a[0];
    m[13] = a[1];
    m[14] = a[2];
    m[15] = a[3];
    m
}

/// Logs the packet's rare event (`plan.note`) and the bytes it lost by being cut short
/// (`cut`). A function of its own, entered only by a packet that has one: its code is
/// verified once, off the path of every other packet.
#[inline(never)]
pub(crate) fn log_packet(ctx: &TcContext, plan: &Plan, cut: u32) {
    let h = &plan.header;
    let (src, dst) = (log_addr(h.family, &h.saddr), log_addr(h.family, &h.daddr));
    let (sport, dport, seq, (a, b)) = (h.sport, h.dport, h.seq, (plan.note_a, plan.note_b));
    if plan.note != NOTE_NONE && may_log(h.ts_ns) {
        match plan.note {
            NOTE_SEQ_BREAK => debug!(
                ctx,
                "frame walk resync: [{:i}]:{} -> [{:i}]:{} hole or overlap, expected seq {} got {}",
                src,
                sport,
                dst,
                dport,
                a,
                b
            ),
            NOTE_SPLIT_HEADER => debug!(
                ctx,
                "frame walk resync: [{:i}]:{} -> [{:i}]:{} seq {} split header lost ({} bytes kept, {} expected)",
                src,
                sport,
                dst,
                dport,
                seq,
                a,
                b
            ),
            NOTE_DOUBT => debug!(
                ctx,
                "frame walk resync: [{:i}]:{} -> [{:i}]:{} seq {} implausible frame header {:x} at offset {}",
                src,
                sport,
                dst,
                dport,
                seq,
                a,
                b
            ),
            NOTE_TOO_MANY_FRAMES => debug!(
                ctx,
                "frame walk resync: [{:i}]:{} -> [{:i}]:{} seq {} over {} frame headers in {} bytes",
                src,
                sport,
                dst,
                dport,
                seq,
                a,
                b
            ),
            NOTE_LOAD_ERROR => warn!(
                ctx,
                "load error: [{:i}]:{} -> [{:i}]:{} seq {} bpf_skb_load_bytes failed at offset {} of {}",
                src,
                sport,
                dst,
                dport,
                seq,
                a,
                b
            ),
            NOTE_STATE_FULL => warn!(
                ctx,
                "flow state full: [{:i}]:{} -> [{:i}]:{} seq {} FLOWS insert failed", src, sport, dst, dport, seq
            ),
            _ => {}
        }
    }
    if cut > 0 && may_log(h.ts_ns) {
        warn!(
            ctx,
            "packet truncated: [{:i}]:{} -> [{:i}]:{} seq {} {} of {} payload bytes not copied (BIG TCP)",
            src,
            sport,
            dst,
            dport,
            seq,
            cut,
            h.payload_len
        );
    }
}
