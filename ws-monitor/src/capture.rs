//! Live capture: loads the embedded TC program, attaches it to an interface, and turns
//! its ring-buffer records into [`Segment`]s. Everything is detached when [`Capture`] is
//! dropped; with TCX links (kernel ≥ 6.6) the kernel also detaches them if the process
//! is killed outright, since the links live only as long as their file descriptors.

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{bail, Context as _};
use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{tc, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use tokio::io::unix::AsyncFd;
use ws_monitor_common::{
    ChunkHeader, Counter, DIR_TO_SERVER, HEADER_SIZE, MAX_PORTS, PORT_MONITORED, TCP_ACK,
    TCP_FIN, TCP_RST, TCP_SYN,
};

use crate::flow::{key_for, Direction, Segment, TcpFlags};

/// The kernel program, built by `build.rs` and embedded in this binary (public for the
/// program tests, which load it directly).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ws-monitor.bpf.o"));

/// What to capture.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub iface: String,
    pub ports: Vec<u16>,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_size: u32,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters(pub [u64; ws_monitor_common::COUNTER_COUNT as usize]);

impl KernelCounters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// (name, value) for every counter, in a stable order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL.iter().map(|c| (c.name(), self.get(*c)))
    }
}

/// An attached capture. Dropping it detaches the programs.
pub struct Capture {
    ring: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    /// Hooks the program is attached to, for the start-up message.
    pub hooks: Vec<&'static str>,
    // Owns the programs and their links: must outlive `ring` and `counters` use.
    _ebpf: Ebpf,
}

impl Capture {
    /// Checks privileges, kernel and interface, then loads and attaches the program.
    pub fn start(config: &CaptureConfig) -> anyhow::Result<Capture> {
        preflight(config)?;
        let l2_len = link_header_len(&config.iface)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", config.ring_size)
            .override_global("L2_LEN", &l2_len, true)
            .load(EBPF_OBJECT)
            .map_err(|e| explain(anyhow::Error::new(e).context("loading the eBPF program")))?;

        let mut ports: HashMap<_, u16, u8> = map(&mut ebpf, "PORTS")?;
        for port in &config.ports {
            ports
                .insert(port, PORT_MONITORED, 0)
                .with_context(|| format!("configuring port {port}"))?;
        }

        // On loopback every packet passes egress and then ingress: one hook sees it all.
        let hooks: &[(&str, TcAttachType, &'static str)] = if is_loopback(&config.iface) {
            &[("ws_monitor_ingress", TcAttachType::Ingress, "ingress")]
        } else {
            &[
                ("ws_monitor_ingress", TcAttachType::Ingress, "ingress"),
                ("ws_monitor_egress", TcAttachType::Egress, "egress"),
            ]
        };
        if !kernel_at_least(6, 6) {
            // Older kernels attach through netlink and need the clsact qdisc.
            match tc::qdisc_add_clsact(&config.iface) {
                Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
                Err(e) => {
                    return Err(explain(anyhow::Error::new(e).context(format!(
                        "adding the clsact qdisc to {}",
                        config.iface
                    ))))
                }
            }
        }
        for (name, attach_type, label) in hooks {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()?;
            program
                .load()
                .map_err(|e| explain(anyhow::Error::new(e).context(format!("loading {name}"))))?;
            program.attach(&config.iface, *attach_type).map_err(|e| {
                explain(anyhow::Error::new(e).context(format!("attaching to {} {label}", config.iface)))
            })?;
        }

        let ring: RingBuf<MapData> = map(&mut ebpf, "EVENTS")?;
        let counters: PerCpuArray<MapData, u64> = map(&mut ebpf, "COUNTERS")?;
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged for as long
        // as the RingBuf lives, and the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(io::Error::from)
            .context("registering the ring buffer with tokio")?;
        Ok(Capture {
            ring,
            counters,
            hooks: hooks.iter().map(|h| h.2).collect(),
            _ebpf: ebpf,
        })
    }

    /// Waits until the ring buffer has records; read them with [`Capture::drain`].
    pub async fn readable(&mut self) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        // Cleared before draining: a record committed after the drain wakes us again.
        guard.clear_ready();
        Ok(())
    }

    /// Passes every record in the ring buffer to `f` without waiting.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item);
            n += 1;
        }
        n
    }

    /// Kernel counters summed over all CPUs.
    pub fn counters(&self) -> anyhow::Result<KernelCounters> {
        let mut out = KernelCounters::default();
        for (i, slot) in out.0.iter_mut().enumerate() {
            let values = self
                .counters
                .get(&(i as u32), 0)
                .context("reading the kernel counters")?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

fn map<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Clear, actionable errors for what can be checked before touching BPF.
fn preflight(config: &CaptureConfig) -> anyhow::Result<()> {
    if config.ports.is_empty() {
        bail!("no port to monitor: pass --port PORT (up to {MAX_PORTS})");
    }
    if config.ports.len() > MAX_PORTS as usize {
        bail!("too many ports ({}): ws-monitor watches at most {MAX_PORTS} at once", config.ports.len());
    }
    if !kernel_at_least(5, 8) {
        bail!("this kernel is too old: ws-monitor needs Linux 5.8 or newer (BPF ring buffer); use `ws-monitor replay` on a capture file instead");
    }
    if !has_bpf_privileges() {
        bail!("ws-monitor needs root to load eBPF programs: run it with sudo, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (sudo setcap cap_bpf,cap_net_admin,cap_perfmon+ep $(command -v ws-monitor))");
    }
    let name = CString::new(config.iface.as_str())
        .with_context(|| format!("invalid interface name {:?}", config.iface))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        bail!("no such interface {:?}: list the interfaces with `ip link`", config.iface);
    }
    Ok(())
}

/// Root, or the effective capabilities BPF + NET_ADMIN + PERFMON (read from /proc).
fn has_bpf_privileges() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    [CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF].iter().all(|c| eff & (1 << c) != 0)
}

fn kernel_at_least(major: u8, minor: u8) -> bool {
    use aya::util::KernelVersion;
    // If the version cannot be read, assume a modern kernel and let loading say more.
    KernelVersion::current().map_or(true, |v| v >= KernelVersion::new(major, minor, 0))
}

/// ARPHRD_* of an interface, from sysfs.
fn link_type(iface: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/type")).ok()?.trim().parse().ok()
}

/// Bytes before the network header in packets at the TC hooks of `iface`.
fn link_header_len(iface: &str) -> anyhow::Result<u32> {
    const ARPHRD_ETHER: u32 = 1;
    const ARPHRD_LOOPBACK: u32 = 772;
    const ARPHRD_NONE: u32 = 65534;
    const ARPHRD_RAWIP: u32 = 519;
    match link_type(iface) {
        Some(ARPHRD_ETHER | ARPHRD_LOOPBACK) | None => Ok(14),
        Some(ARPHRD_NONE | ARPHRD_RAWIP) => Ok(0),
        Some(other) => bail!(
            "interface {iface} has link type {other}, which ws-monitor cannot parse: use an Ethernet, loopback or L3 (tun, WireGuard) interface"
        ),
    }
}

fn is_loopback(iface: &str) -> bool {
    link_type(iface).map_or(iface == "lo", |t| t == 772) // ARPHRD_LOOPBACK
}

/// Adds what to do to errors whose cause is recognisable.
fn explain(err: anyhow::Error) -> anyhow::Error {
    let errno = err
        .chain()
        .find_map(|e| e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error));
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => err.context(
            "permission denied by the kernel: run with sudo (or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON); \
             in a container, BPF may be blocked by seccomp or a lockdown policy",
        ),
        Some(libc::ENOSYS) => err.context(
            "this kernel has no BPF support (bpf() is not implemented): ws-monitor needs Linux 5.8+ built with CONFIG_BPF_SYSCALL",
        ),
        Some(libc::ENOMEM) => err.context(
            "the kernel could not allocate the ring buffer: try a smaller --ring-size",
        ),
        _ => err,
    }
}

/// Why a ring-buffer record could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than its header, or shorter than the payload length it declares.
    Truncated,
    /// Address family other than 4 or 6, or direction out of range.
    Malformed,
}

/// Splits a ring-buffer record into its header and payload.
pub fn decode(record: &[u8]) -> Result<(ChunkHeader, &[u8]), RecordError> {
    let header_bytes = record.get(..HEADER_SIZE).ok_or(RecordError::Truncated)?;
    // SAFETY: `header_bytes` is exactly HEADER_SIZE bytes, `ChunkHeader` is plain integers
    // (every bit pattern valid), and `read_unaligned` has no alignment requirement.
    let header: ChunkHeader =
        unsafe { std::ptr::read_unaligned(header_bytes.as_ptr().cast::<ChunkHeader>()) };
    let payload = record
        .get(HEADER_SIZE..HEADER_SIZE + header.len as usize)
        .ok_or(RecordError::Truncated)?;
    if !matches!(header.family, 4 | 6) || header.direction > 1 {
        return Err(RecordError::Malformed);
    }
    Ok((header, payload))
}

/// The [`Segment`] one record carries. SYN and RST belong to the first record of a
/// packet, FIN to its last.
pub fn segment<'a>(header: &ChunkHeader, payload: &'a [u8]) -> Segment<'a> {
    let addr = |a: &[u8; 16]| -> IpAddr {
        if header.family == 4 {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*a))
        }
    };
    let dir = if header.direction == DIR_TO_SERVER { Direction::ToServer } else { Direction::ToClient };
    let first = header.offset == 0;
    let last = header.offset.saturating_add(header.len as u32) >= header.payload_len;
    Segment {
        key: key_for((addr(&header.saddr), header.sport), (addr(&header.daddr), header.dport), dir),
        dir,
        seq: header.seq.wrapping_add(header.offset),
        ack: header.ack,
        flags: TcpFlags {
            syn: first && header.flags & TCP_SYN != 0,
            ack: header.flags & TCP_ACK != 0,
            fin: last && header.flags & TCP_FIN != 0,
            rst: first && header.flags & TCP_RST != 0,
        },
        data: payload,
        ts_ns: header.ts_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(header: ChunkHeader, payload: &[u8]) -> Vec<u8> {
        // SAFETY: ChunkHeader is repr(C) plain integers with explicit padding.
        let bytes = unsafe {
            std::slice::from_raw_parts((&header as *const ChunkHeader).cast::<u8>(), HEADER_SIZE)
        };
        let mut v = bytes.to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_records_and_rejects_short_ones() {
        let mut h = ChunkHeader { family: 4, len: 3, payload_len: 3, ..Default::default() };
        h.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let rec = record(h, b"abc");
        let (hdr, payload) = decode(&rec).unwrap();
        assert_eq!(hdr, h);
        assert_eq!(payload, b"abc");
        assert_eq!(decode(&rec[..rec.len() - 1]).unwrap_err(), RecordError::Truncated);
        assert_eq!(decode(&rec[..10]).unwrap_err(), RecordError::Truncated);
        let bad = record(ChunkHeader { family: 7, ..Default::default() }, b"");
        assert_eq!(decode(&bad).unwrap_err(), RecordError::Malformed);
    }

    #[test]
    fn flags_go_to_first_and_last_chunks() {
        let base = ChunkHeader {
            family: 6,
            seq: u32::MAX - 1,
            payload_len: 4000,
            flags: TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK,
            direction: 1,
            sport: 8001,
            dport: 40000,
            ..Default::default()
        };
        let first = segment(&ChunkHeader { offset: 0, len: 2048, ..base }, &[]);
        assert!(first.flags.syn && first.flags.rst && !first.flags.fin && first.flags.ack);
        let last = segment(&ChunkHeader { offset: 2048, len: 1952, ..base }, &[]);
        assert!(!last.flags.syn && !last.flags.rst && last.flags.fin);
        assert_eq!(last.seq, (u32::MAX - 1).wrapping_add(2048));
        assert_eq!(last.dir, Direction::ToClient);
        assert_eq!(last.key.server.port(), 8001);
        assert_eq!(last.key.client.port(), 40000);
    }
}
