//! Live capture: loads the embedded TC program, attaches it to one or more interfaces
//! (or to every interface that is up, `any`, following those that come and go), and
//! turns its ring-buffer records into [`Segment`]s.
//!
//! On several interfaces one packet may pass two of them (a bridge and its ports, both
//! ends of a veth pair): the kernel program hands each connection direction on from one
//! interface only, and counts the other copies (`packets_duplicate`).
//!
//! Two ways to attach: TCX links (Linux 6.6+), which the kernel detaches when the process
//! ends however it ends, and before 6.6 `cls_bpf` filters on the clsact qdisc (as `tc
//! filter` adds them), which outlive a process killed with SIGKILL. For those, ws-monitor
//! uses a clsact qdisc already there, tags its filters ([`crate::sources::capture::clsact`]), removes the
//! ones whose owner is gone before it attaches, and on exit removes its filters and the
//! qdisc if it added it and nothing else uses it; a filter left behind meanwhile costs
//! next to nothing, since the program stops working once its heartbeat
//! ([`crate::sources::capture::liveness`]) is more than five seconds old.

pub mod clsact;
pub mod interfaces;
pub mod kernel_log;
pub mod liveness;
pub mod privileges;
pub mod record;

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;

use anyhow::{bail, Context as _};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf};
use aya::programs::tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions, TcHandle};
use aya::programs::{LinkOrder, ProgramError, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};
use tokio::io::unix::AsyncFd;
use ws_monitor_common::{
    Anchor, Counter, FlowDir, Iface, WalkState, HEADER_SIZE, JUMP_EMIT, JUMP_WALK, LIVENESS_QDISC_OWNED, MAX_PORTS,
    MSG_COPY, MSG_NONE, MSG_SKIP, PORT_MONITORED, PROGRAM_EMIT, PROGRAM_WALK,
};

use crate::engine::{Hint, OpenMessage, Steer};
use crate::flow::{Direction, FlowKey};
pub use clsact::detach;
use clsact::{clsact_for, first_priority, sweep, Hook, OwnedQdisc, Rtnl, Sweep, FILTER_HANDLE};
use interfaces::{interface_index, interfaces_up, is_loopback, link_header_len, link_state, Named};
pub use interfaces::{Interfaces, LinkState};
use kernel_log::KernelLog;
use liveness::Heartbeat;
use record::record_ts;
pub use record::{decode, segment, RecordError};

/// The kernel program, built by `build.rs` and embedded in this binary (public for the
/// program tests, which load it directly); empty in a build without the `kernel` feature.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ws-monitor.bpf.o"));

/// What to capture.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    pub interfaces: Interfaces,
    pub ports: Vec<u16>,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_size: u32,
    pub attach: AttachMode,
    /// Header-only capture: the kernel skips binary frame payload (`--full-payload` off).
    pub header_only: bool,
}

/// How the program is attached to the interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// TCX links on Linux 6.6 and newer, netlink filters on the clsact qdisc before.
    #[default]
    Auto,
    /// TCX links (Linux 6.6+): detached by the kernel when the process ends, however.
    Tcx,
    /// `cls_bpf` filters on the clsact qdisc, as `tc filter` adds them (any kernel).
    Netlink,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Tcx => "tcx",
            AttachMode::Netlink => "netlink",
        }
    }
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

/// How a [`Capture`] is attached: the `attach` object of the live report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attachment {
    /// `tcx` or `netlink` (never `auto`).
    pub mode: AttachMode,
    /// `--iface any`: interfaces that come up are attached to as they appear.
    pub any: bool,
    /// Every interface attached to during the run, in the order attached.
    pub interfaces: Vec<Attached>,
    /// Interfaces `any` left out, and why (a link type ws-monitor cannot parse, or an
    /// attach that failed).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, String>,
}

/// One interface the programs were attached to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attached {
    pub name: String,
    pub ifindex: u32,
    /// Hooks the program is attached to.
    pub hooks: Vec<&'static str>,
    /// With netlink: whether ws-monitor added the clsact qdisc (and removes it at exit
    /// when nothing else uses it), including one a killed ws-monitor had added.
    pub qdisc_owned: bool,
    /// Filters left by ws-monitor instances that are no longer running, removed at start.
    pub stale_filters_removed: usize,
    /// PIDs of other ws-monitor instances running on the same interface (left alone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub others_running: Vec<u32>,
    /// The interface's state when last looked at.
    pub state: LinkState,
}

/// What userspace told a header-only capture (the `header_only` object of the report).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SteerStats {
    pub enabled: bool,
    /// Anchors set: where the next frame header of a direction copied whole is.
    pub anchors: u64,
    /// Directions sent back to full copy (the engine lost sync there).
    pub full_copies: u64,
    /// Hints that could not be applied: the connection was gone, or a map was full.
    pub errors: u64,
}

/// An attached capture. Dropping it detaches the programs (and removes a clsact qdisc
/// ws-monitor added, once nothing else uses it).
pub struct Capture {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Loss notes (`LOSSES`), and those read but not handed on yet: each goes just
    /// before the first record that came after it, so that reassembly sees a lost
    /// packet where it was on the wire.
    losses: RingBuf<MapData>,
    notes: std::collections::VecDeque<[u8; HEADER_SIZE]>,
    counters: PerCpuArray<MapData, u64>,
    flows: HashMap<MapData, FlowDir, WalkState>,
    anchors: HashMap<MapData, FlowDir, Anchor>,
    pub steer_stats: SteerStats,
    pub attachment: Attachment,
    interfaces: Interfaces,
    /// Names of the interfaces attached to, by index (kept once one is gone: records of
    /// it may still be in the ring).
    names: std::collections::HashMap<u32, String>,
    /// `any`: interfaces that could not be attached to, by index, and when to try again.
    retry_at: std::collections::HashMap<u32, std::time::Instant>,
    /// Bytes of the ring buffer.
    ring_size: u32,
    /// How packets start on each interface (`IFACES`), written before attaching there.
    link_headers: HashMap<MapData, u32, Iface>,
    /// The program's log lines (rare events), forwarded to `tracing`.
    kernel_log: KernelLog,
    // Dropped in this order: the heartbeat stops, then the programs and their links go,
    // then the qdiscs they hung on.
    heartbeat: Heartbeat,
    ebpf: Ebpf,
    qdiscs: Vec<OwnedQdisc>,
}

/// How long `any` waits before trying again an interface it could not attach to.
const ATTACH_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// What changed on the interfaces since the last look ([`Capture::watch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    Down(String),
    Up(String),
    /// An interface named on the command line disappeared: the capture cannot go on as
    /// asked.
    Gone(String),
    /// An interface `any` was following disappeared (a container's veth, say).
    Left(String),
    /// `any`: a new interface came up and is now captured on.
    Added(String),
    /// `any`: a new interface could not be attached to.
    Skipped(String, String),
}

/// An interface about to be attached to: the qdisc prepared (netlink) and what the
/// sweep of stale filters found.
struct Prepared {
    name: String,
    ifindex: u32,
    link_header: u32,
    sweep: Sweep,
    qdisc: Option<OwnedQdisc>,
}

impl Capture {
    /// Checks privileges, kernel and interfaces, removes what killed instances left on
    /// them, then loads and attaches the program.
    pub fn start(config: &CaptureConfig) -> anyhow::Result<Capture> {
        preflight(config)?;
        let mode = resolve(config.attach, current_kernel())?;
        let named: Named = match &config.interfaces {
            Interfaces::Named(names) => {
                names.iter().map(|name| Ok((name.clone(), interface_index(name)?))).collect::<anyhow::Result<_>>()?
            }
            Interfaces::Any => Vec::new(),
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", config.ring_size)
            .override_global("DEDUP", &u32::from(config.interfaces.may_overlap()), true)
            .override_global("HEADER_ONLY", &u32::from(config.header_only), true)
            .override_global("WAKE_BYTES", &wake_bytes(config.ring_size), true)
            .override_global(kernel_log::LEVEL_GLOBAL, &kernel_log::kernel_level(), true)
            .load(EBPF_OBJECT)
            .map_err(|e| explain(anyhow::Error::new(e).context("loading the eBPF program")))?;

        let mut ports: Array<_, u8> = map(&mut ebpf, "PORTS")?;
        for &port in &config.ports {
            ports.set(u32::from(port), PORT_MONITORED, 0).with_context(|| format!("configuring port {port}"))?;
        }

        load_tail_programs(&mut ebpf)?;
        for (name, _) in HOOKS {
            load_classifier(&mut ebpf, name)?;
        }
        let kernel_log = KernelLog::new(&mut ebpf)?;

        let mut skipped = BTreeMap::new();
        let candidates = match &config.interfaces {
            Interfaces::Named(_) => named,
            Interfaces::Any => {
                let (up, left_out) = interfaces_up()?;
                skipped.extend(left_out);
                up
            }
        };
        let mut prepared = Vec::new();
        for (name, ifindex) in candidates {
            match prepare(mode, &name, ifindex) {
                Ok(p) => prepared.push(p),
                Err(e) if config.interfaces == Interfaces::Any => {
                    skipped.insert(name, format!("{e:#}"));
                }
                Err(e) => return Err(e),
            }
        }
        if prepared.is_empty() {
            bail!("no interface is up to capture on: bring one up (ip link set IFACE up) or name it with --iface");
        }
        // A killed instance's sweeper learns from this flag whether the qdisc was ours
        // (with several interfaces: on any of them; an empty clsact qdisc it then removes
        // costs nothing to add again).
        let flags =
            if prepared.iter().any(|p| p.qdisc.as_ref().is_some_and(|q| q.owned)) { LIVENESS_QDISC_OWNED } else { 0 };
        // Alive before the first packet: the program ignores packets without a heartbeat.
        let heartbeat = Heartbeat::start(map(&mut ebpf, liveness::MAP_NAME)?, liveness::this_process(flags))?;

        let ring: RingBuf<MapData> = map(&mut ebpf, "EVENTS")?;
        let losses: RingBuf<MapData> = map(&mut ebpf, "LOSSES")?;
        let counters: PerCpuArray<MapData, u64> = map(&mut ebpf, "COUNTERS")?;
        let flows = map(&mut ebpf, "FLOWS")?;
        let anchors = map(&mut ebpf, "ANCHORS")?;
        let link_headers = map(&mut ebpf, "IFACES")?;
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged for as long
        // as the RingBuf lives, and the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(io::Error::from)
            .context("registering the ring buffer with tokio")?;
        let mut capture = Capture {
            ring,
            losses,
            notes: std::collections::VecDeque::new(),
            counters,
            flows,
            anchors,
            steer_stats: SteerStats { enabled: config.header_only, ..SteerStats::default() },
            attachment: Attachment { mode, any: config.interfaces == Interfaces::Any, interfaces: Vec::new(), skipped },
            interfaces: config.interfaces.clone(),
            names: std::collections::HashMap::new(),
            retry_at: std::collections::HashMap::new(),
            ring_size: config.ring_size,
            link_headers,
            kernel_log,
            heartbeat,
            ebpf,
            qdiscs: Vec::new(),
        };
        for p in prepared {
            let name = p.name.clone();
            if let Err(e) = capture.attach(p) {
                if capture.attachment.any {
                    capture.attachment.skipped.insert(name, format!("{e:#}"));
                } else {
                    return Err(e);
                }
            }
        }
        if capture.attachment.interfaces.is_empty() {
            bail!("could not attach to any interface: {:?}", capture.attachment.skipped);
        }
        Ok(capture)
    }

    /// Attaches the programs to a prepared interface.
    fn attach(&mut self, p: Prepared) -> anyhow::Result<()> {
        let Prepared { name, ifindex, link_header, sweep, qdisc } = p;
        let owned = qdisc.as_ref().is_some_and(|q| q.owned);
        if let Some(q) = qdisc {
            self.qdiscs.push(q);
        }
        self.link_headers
            .insert(ifindex, Iface { l2_len: link_header }, 0)
            .with_context(|| format!("describing {name} to the kernel program"))?;
        // On loopback every packet passes egress and then ingress: one hook sees it all.
        let hooks: &[(&str, Hook)] = if is_loopback(&name) { &HOOKS[..1] } else { &HOOKS };
        let mode = self.attachment.mode;
        let mut rtnl = match mode {
            AttachMode::Netlink => Some(Rtnl::open().context("opening a netlink socket")?),
            _ => None,
        };
        let mut links: Vec<(&str, SchedClassifierLinkId)> = Vec::new();
        let mut attach_all = || -> anyhow::Result<()> {
            for (program_name, hook) in hooks {
                let options = match rtnl.as_mut() {
                    Some(rtnl) => TcAttachOptions::Netlink(NlOptions {
                        priority: first_priority(rtnl, ifindex, *hook)?,
                        // The handle marks the filter as ours.
                        handle: TcHandle::from(FILTER_HANDLE),
                        ..Default::default()
                    }),
                    None => TcAttachOptions::TcxOrder(LinkOrder::default()),
                };
                let program = classifier(&mut self.ebpf, program_name)?;
                let link = program.attach_with_options(&name, attach_type(*hook), options).map_err(|e| {
                    explain(anyhow::Error::new(e).context(format!("attaching to {name} {}", hook.name())))
                })?;
                links.push((program_name, link));
            }
            Ok(())
        };
        if let Err(e) = attach_all() {
            // Half attached is not attached: undo the hooks that worked.
            for (program_name, link) in links {
                if let Ok(program) = classifier(&mut self.ebpf, program_name) {
                    let _ = program.detach(link);
                }
            }
            return Err(e);
        }
        self.names.insert(ifindex, name.clone());
        self.attachment.interfaces.push(Attached {
            state: link_state(&name, ifindex),
            name,
            ifindex,
            hooks: hooks.iter().map(|h| h.1.name()).collect(),
            qdisc_owned: owned,
            stale_filters_removed: sweep.removed,
            others_running: sweep.running,
        });
        Ok(())
    }

    /// Waits until the ring buffer has records; read them with [`Capture::drain`].
    pub async fn readable(&mut self) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        // Cleared before draining: a record committed after the drain wakes us again.
        guard.clear_ready();
        Ok(())
    }

    /// Passes up to `max` records from the ring buffer to `f` without waiting, with the
    /// loss notes in time order among them; true if it stopped at `max` (more may be
    /// waiting).
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> bool {
        while self.notes.len() < max {
            let Some(item) = self.losses.next() else { break };
            let mut note = [0u8; HEADER_SIZE];
            if let Some(bytes) = item.get(..HEADER_SIZE) {
                note.copy_from_slice(bytes);
                self.notes.push_back(note);
            }
        }
        let ring = self.ring.get_mut();
        for _ in 0..max {
            let Some(item) = ring.next() else {
                // Everything written so far was read: the notes left came after it.
                for note in self.notes.drain(..) {
                    f(&note);
                }
                return false;
            };
            let ts = record_ts(&item);
            while let Some(note) = self.notes.front().filter(|n| record_ts(n.as_slice()) <= ts) {
                f(note.as_slice());
                self.notes.pop_front();
            }
            f(&item);
        }
        true
    }

    /// Forwards the kernel program's log lines written since the last call to `tracing`
    /// (debug level); never waits. Call it about once a second, and before the end.
    pub fn forward_kernel_log(&mut self) {
        self.kernel_log.forward();
    }

    /// Applies an engine hint to the kernel's frame walk; `seq` is the TCP sequence
    /// number of the hint's stream offset (None once the connection is gone).
    pub fn steer(&mut self, hint: &Hint, seq: Option<u32>) {
        if !self.steer_stats.enabled {
            return;
        }
        let key = flow_dir(&hint.key, hint.dir);
        let applied = match hint.steer {
            Steer::FullCopy => {
                self.steer_stats.full_copies += 1;
                // The kernel starts over in full copy at the next packet. Missing
                // entries are fine: the direction was copied whole already.
                let _ = self.anchors.remove(&key);
                let _ = self.flows.remove(&key);
                true
            }
            Steer::Anchor { open, .. } => {
                self.steer_stats.anchors += 1;
                let msg = match open {
                    OpenMessage::None => MSG_NONE,
                    OpenMessage::Read => MSG_COPY,
                    OpenMessage::Skip => MSG_SKIP,
                };
                seq.is_some_and(|hdr_seq| self.anchors.insert(key, Anchor { hdr_seq, msg, _pad: [0; 3] }, 0).is_ok())
            }
        };
        if !applied {
            self.steer_stats.errors += 1;
        }
    }

    /// Gives up what attaching needed (see [`privileges`]), then starts the heartbeat's
    /// thread. Call it before any other thread of the process starts.
    pub fn release(&mut self, user: Option<String>, seccomp: bool) -> anyhow::Result<privileges::Dropped> {
        let plan = privileges::Plan {
            netlink: self.attachment.mode == AttachMode::Netlink,
            attach_later: self.attachment.any,
            user,
            seccomp,
        };
        let dropped = privileges::drop_after_attach(&plan, || self.counters().is_ok())?;
        self.heartbeat.keep_beating()?;
        Ok(dropped)
    }

    /// Looks at the interfaces again: which went down, came back or disappeared, and
    /// with `any`, which new ones came up (attached to now). Call it about once a second.
    pub fn watch(&mut self) -> Vec<LinkEvent> {
        let mut events = Vec::new();
        for iface in &mut self.attachment.interfaces {
            if iface.state == LinkState::Gone {
                continue;
            }
            let now = link_state(&iface.name, iface.ifindex);
            let was = std::mem::replace(&mut iface.state, now);
            match (was, now) {
                (_, LinkState::Gone) if self.attachment.any => events.push(LinkEvent::Left(iface.name.clone())),
                (_, LinkState::Gone) => events.push(LinkEvent::Gone(iface.name.clone())),
                (LinkState::Up, LinkState::Down) => events.push(LinkEvent::Down(iface.name.clone())),
                (LinkState::Down, LinkState::Up) => events.push(LinkEvent::Up(iface.name.clone())),
                _ => {}
            }
        }
        if self.interfaces == Interfaces::Any {
            events.extend(self.follow_new_interfaces());
        }
        events
    }

    /// `any`: attaches to the interfaces that came up since the last look.
    fn follow_new_interfaces(&mut self) -> Vec<LinkEvent> {
        let Ok((up, left_out)) = interfaces_up() else { return Vec::new() };
        let mut events = Vec::new();
        for (name, reason) in left_out {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.attachment.skipped.entry(name.clone()) {
                events.push(LinkEvent::Skipped(name, reason.clone()));
                slot.insert(reason);
            }
        }
        let live = |a: &Attached| a.state != LinkState::Gone;
        let now = std::time::Instant::now();
        for (name, ifindex) in up {
            if self.attachment.interfaces.iter().any(|a| a.ifindex == ifindex && live(a)) {
                continue;
            }
            // One that failed is tried again now and then, not at every look.
            if self.retry_at.get(&ifindex).is_some_and(|at| now < *at) {
                continue;
            }
            match prepare(self.attachment.mode, &name, ifindex).and_then(|p| self.attach(p)) {
                Ok(()) => {
                    self.retry_at.remove(&ifindex);
                    self.attachment.skipped.remove(&name);
                    events.push(LinkEvent::Added(name));
                }
                Err(e) => {
                    self.retry_at.insert(ifindex, now + ATTACH_RETRY);
                    let reason = format!("{e:#}");
                    if self.attachment.skipped.get(&name) != Some(&reason) {
                        events.push(LinkEvent::Skipped(name.clone(), reason.clone()));
                        self.attachment.skipped.insert(name, reason);
                    }
                }
            }
        }
        events
    }

    /// Names of the interfaces attached to, by index.
    pub fn interface_names(&self) -> &std::collections::HashMap<u32, String> {
        &self.names
    }

    /// Kernel counters summed over all CPUs.
    pub fn counters(&self) -> anyhow::Result<KernelCounters> {
        let mut out = KernelCounters::default();
        for (i, slot) in out.0.iter_mut().enumerate() {
            let values = self.counters.get(&(i as u32), 0).context("reading the kernel counters")?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }
}

impl crate::sources::Source for Capture {
    async fn readable(&mut self) -> io::Result<()> {
        Capture::readable(self).await
    }

    fn drain(&mut self, max: usize, mut f: impl FnMut(crate::sources::Delivery<'_>)) -> bool {
        use crate::sources::Delivery;
        Capture::drain(self, max, |record| match decode(record) {
            Ok((header, payload)) if header.lost != 0 => f(Delivery::Lost(segment(&header, payload))),
            Ok((header, payload)) => f(Delivery::Segment(segment(&header, payload))),
            Err(_) => f(Delivery::Bad),
        })
    }

    fn capacity(&self) -> usize {
        self.ring_size as usize / HEADER_SIZE
    }

    fn steer(&mut self, hint: &Hint, seq: Option<u32>) {
        Capture::steer(self, hint, seq);
    }

    fn watch(&mut self) -> Vec<LinkEvent> {
        // Once a second: the kernel program's log lines too.
        self.forward_kernel_log();
        Capture::watch(self)
    }

    fn interface_names(&self) -> &std::collections::HashMap<u32, String> {
        &self.names
    }

    fn counters(&self) -> anyhow::Result<KernelCounters> {
        Capture::counters(self)
    }

    fn report(&mut self, counters: &KernelCounters) -> serde_json::Map<String, serde_json::Value> {
        self.forward_kernel_log();
        let not_logged = counters.get(Counter::LogLinesSuppressed) + counters.get(Counter::LogLinesLost);
        if not_logged > 0 {
            tracing::debug!(
                target: kernel_log::TARGET,
                "kernel: {not_logged} log lines not written ({} over the per-CPU rate, {} with their ring full)",
                counters.get(Counter::LogLinesSuppressed),
                counters.get(Counter::LogLinesLost)
            );
        }
        let mut out = serde_json::Map::new();
        out.insert("kernel".into(), crate::outputs::report::kernel_json(counters));
        out.insert("attach".into(), serde_json::to_value(&self.attachment).unwrap_or_default());
        out.insert("header_only".into(), serde_json::to_value(self.steer_stats).unwrap_or_default());
        out
    }
}

/// Records read in one go before the other work of the loop (ticks, keys, redraws) gets
/// its turn.
pub const DRAIN_BATCH: usize = 16_384;

/// How often the reader drains the ring buffer without being woken: the kernel wakes it
/// only once [`wake_bytes`] are waiting, so this bounds how late a quiet stream's last
/// records are read.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Unread bytes in the ring at which the kernel wakes the reader: a sixteenth of it,
/// between 4 KiB and 1 MiB.
fn wake_bytes(ring_size: u32) -> u32 {
    (ring_size / 16).clamp(4096, 1 << 20)
}

/// Attaches `ws_monitor_null` (returns at once) to both TC hooks of `iface` with TCX
/// links, which last as long as the returned object.
pub fn attach_null(iface: &str) -> anyhow::Result<Ebpf> {
    check_embedded()?;
    privileged_interface(iface)?;
    resolve(AttachMode::Tcx, current_kernel())?;
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .map_err(|e| explain(anyhow::Error::new(e).context("loading the eBPF object")))?;
    let program = load_classifier(&mut ebpf, "ws_monitor_null")?;
    for attach_type in [TcAttachType::Ingress, TcAttachType::Egress] {
        program
            .attach_with_options(iface, attach_type, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| explain(anyhow::Error::new(e).context(format!("attaching to {iface}"))))?;
    }
    Ok(ebpf)
}

/// Loads the programs the entry programs tail-call (the frame walk and the record
/// writer) and puts them in the `JUMP` table (public for the program tests).
pub fn load_tail_programs(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut fds = Vec::new();
    for (name, slot) in [(PROGRAM_WALK, JUMP_WALK), (PROGRAM_EMIT, JUMP_EMIT)] {
        let program = load_classifier(ebpf, name)?;
        let fd = program.fd().context("a loaded program has an fd")?.try_clone().context("duplicating a program fd")?;
        fds.push((slot, fd));
    }
    let mut jump: ProgramArray<_> =
        ProgramArray::try_from(ebpf.map_mut("JUMP").context("map JUMP missing from the eBPF object")?)?;
    for (slot, fd) in &fds {
        jump.set(*slot, fd, 0).context("filling the tail-call table")?;
    }
    Ok(())
}

/// The entry programs and the hook each goes on (ingress first: the one loopback needs).
const HOOKS: [(&str, Hook); 2] = [("ws_monitor_ingress", Hook::Ingress), ("ws_monitor_egress", Hook::Egress)];

fn attach_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    }
}

/// The classifier `name` of the object, once loaded.
fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    Ok(ebpf.program_mut(name).with_context(|| format!("program {name} missing from the eBPF object"))?.try_into()?)
}

/// Readies an interface for attaching: its link type, the stale filters a killed
/// instance left there (removed), and with netlink the clsact qdisc.
fn prepare(mode: AttachMode, name: &str, ifindex: u32) -> anyhow::Result<Prepared> {
    let link_header = link_header_len(name)?;
    let mut rtnl = Rtnl::open().context("opening a netlink socket")?;
    // A netlink filter outlives a ws-monitor killed with SIGKILL, whatever the mode of
    // the next run: sweep them first. With TCX an inherited empty qdisc goes too.
    let sweep = sweep(&mut rtnl, ifindex, name, mode == AttachMode::Tcx)?;
    let qdisc = match mode {
        AttachMode::Netlink => Some(clsact_for(&mut rtnl, ifindex, name, !is_loopback(name), sweep.qdisc_owned)?),
        _ => None,
    };
    Ok(Prepared { name: name.to_string(), ifindex, link_header, sweep, qdisc })
}

/// The classifier `name` of the object, loaded into the kernel (verified). The verifier's
/// output goes to the debug log (target `ws_monitor::kernel`): what it refused, or its
/// statistics; the error itself stays one line.
fn load_classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    let program: &mut SchedClassifier =
        ebpf.program_mut(name).with_context(|| format!("program {name} missing from the eBPF object"))?.try_into()?;
    match program.load() {
        Ok(()) => {}
        Err(ProgramError::LoadError { io_error, verifier_log }) => {
            let verifier_log = verifier_log.to_string();
            if verifier_log.trim().is_empty() {
                // Refused before the verifier ran (privileges, seccomp, no BPF).
                return Err(explain(anyhow::Error::new(io_error).context(format!("loading {name}"))));
            }
            tracing::debug!(target: kernel_log::TARGET, "verifier output for {name}:\n{verifier_log}");
            // The verifier's EACCES is no matter of privileges: no hint about sudo.
            return Err(anyhow::Error::new(io_error).context(format!(
                "loading {name}: the kernel's verifier refused the program; report it with the verifier output (run with --no-tui and WS_MONITOR_LOG=ws_monitor::kernel=debug)"
            )));
        }
        Err(e) => return Err(explain(anyhow::Error::new(e).context(format!("loading {name}")))),
    }
    if let Ok(info) = program.info() {
        tracing::debug!(
            target: kernel_log::TARGET,
            "loaded {name}: {} instructions, {} processed by the verifier",
            info.size_translated().map_or_else(|| "?".into(), |b| (b / 8).to_string()),
            info.verified_instruction_count().map_or_else(|| "?".into(), |n| n.to_string()),
        );
    }
    Ok(program)
}

fn map<T>(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).with_context(|| format!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

/// Clear, actionable errors for what can be checked before touching BPF. Returns the
/// interface index.
fn preflight(config: &CaptureConfig) -> anyhow::Result<()> {
    check_embedded()?;
    if config.ports.is_empty() {
        bail!("no port to monitor: pass --port PORT (up to {MAX_PORTS})");
    }
    if config.ports.len() > MAX_PORTS as usize {
        bail!("too many ports ({}): ws-monitor watches at most {MAX_PORTS} at once", config.ports.len());
    }
    check_kernel(current_kernel())?;
    check_privileges()
}

/// This binary carries the kernel program.
fn check_embedded() -> anyhow::Result<()> {
    if EBPF_OBJECT.is_empty() {
        bail!("this ws-monitor was built without its kernel program (--no-default-features): live capture needs a build with the `kernel` feature (`cargo xtask run`); `ws-monitor replay` works as it is");
    }
    Ok(())
}

/// Root (or the capabilities), and the index of an interface that exists.
pub(crate) fn privileged_interface(iface: &str) -> anyhow::Result<u32> {
    check_privileges()?;
    interface_index(iface)
}

fn check_privileges() -> anyhow::Result<()> {
    if !has_bpf_privileges() {
        bail!("ws-monitor needs root to load eBPF programs: run it with sudo, or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (sudo setcap cap_bpf,cap_net_admin,cap_perfmon+ep $(command -v ws-monitor))");
    }
    Ok(())
}

/// The running kernel's version, if it can be read.
fn current_kernel() -> Option<KernelVersion> {
    KernelVersion::current().ok()
}

/// The oldest kernel with a BPF ring buffer.
const MIN_KERNEL: (u8, u8) = (5, 8);
/// The first kernel with TCX links.
const TCX_KERNEL: (u8, u8) = (6, 6);

fn at_least(kernel: Option<KernelVersion>, (major, minor): (u8, u8)) -> bool {
    // If the version cannot be read, assume a modern kernel and let loading say more.
    kernel.is_none_or(|v| v >= KernelVersion::new(major, minor, 0))
}

fn check_kernel(kernel: Option<KernelVersion>) -> anyhow::Result<()> {
    if !at_least(kernel, MIN_KERNEL) {
        bail!(
            "Linux {} is too old: ws-monitor needs Linux {}.{} or newer (BPF ring buffer); use `ws-monitor replay` on a capture file instead",
            release(kernel),
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    Ok(())
}

/// `auto` made concrete for this kernel; `tcx` where the kernel has none is an error.
fn resolve(mode: AttachMode, kernel: Option<KernelVersion>) -> anyhow::Result<AttachMode> {
    let tcx = at_least(kernel, TCX_KERNEL);
    Ok(match mode {
        AttachMode::Auto if tcx => AttachMode::Tcx,
        AttachMode::Auto => AttachMode::Netlink,
        AttachMode::Tcx if !tcx => bail!(
            "--attach tcx needs Linux {}.{} or newer (TCX links) and this is Linux {}: use --attach netlink (or auto)",
            TCX_KERNEL.0,
            TCX_KERNEL.1,
            release(kernel)
        ),
        other => other,
    })
}

fn release(kernel: Option<KernelVersion>) -> String {
    kernel.map_or_else(|| "?".into(), |v| v.to_string())
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

/// Adds what to do to errors whose cause is recognisable.
pub(crate) fn explain(err: anyhow::Error) -> anyhow::Error {
    let errno = err.chain().find_map(|e| e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error));
    match errno {
        Some(libc::EPERM) | Some(libc::EACCES) => err.context(
            "permission denied by the kernel: run with sudo (or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON); \
             in a container, BPF may be blocked by seccomp or a lockdown policy",
        ),
        Some(libc::ENOSYS) => err.context(
            "this kernel has no BPF support (bpf() is not implemented): ws-monitor needs Linux 5.8+ built with CONFIG_BPF_SYSCALL",
        ),
        Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) => err.context(
            "the kernel lacks a TC module: clsact needs sch_ingress and netlink filters cls_bpf (modprobe sch_ingress cls_bpf), or use --attach tcx on Linux 6.6+",
        ),
        Some(libc::ENOMEM) => err.context(
            "the kernel could not allocate the ring buffer: try a smaller --ring-size",
        ),
        _ => err,
    }
}

/// The kernel's key for the packets of `key` travelling in `dir`.
fn flow_dir(key: &FlowKey, dir: Direction) -> FlowDir {
    let (src, dst) = key.endpoints(dir);
    let mut out = FlowDir { sport: src.port(), dport: dst.port(), ..FlowDir::default() };
    let octets = |ip: IpAddr, slot: &mut [u8; 16]| match ip {
        IpAddr::V4(v4) => slot[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => *slot = v6.octets(),
    };
    octets(src.ip(), &mut out.saddr);
    octets(dst.ip(), &mut out.daddr);
    out.family = if src.is_ipv4() { 4 } else { 6 };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_without_a_ring_buffer_are_refused_naming_the_minimum() {
        let err = check_kernel(Some(KernelVersion::new(5, 4, 0))).unwrap_err().to_string();
        assert!(err.contains("Linux 5.4.0 is too old") && err.contains("5.8 or newer"), "{err}");
        assert!(check_kernel(Some(KernelVersion::new(5, 8, 0))).is_ok());
        assert!(check_kernel(None).is_ok(), "unknown version: let loading say more");
    }

    #[test]
    fn auto_attaches_with_tcx_from_6_6_and_netlink_before() {
        let v = |a, b| Some(KernelVersion::new(a, b, 0));
        assert_eq!(resolve(AttachMode::Auto, v(6, 6)).unwrap(), AttachMode::Tcx);
        assert_eq!(resolve(AttachMode::Auto, v(6, 1)).unwrap(), AttachMode::Netlink);
        assert_eq!(resolve(AttachMode::Auto, v(5, 10)).unwrap(), AttachMode::Netlink);
        assert_eq!(resolve(AttachMode::Netlink, v(6, 12)).unwrap(), AttachMode::Netlink);
        let err = resolve(AttachMode::Tcx, v(6, 1)).unwrap_err().to_string();
        assert!(err.contains("needs Linux 6.6") && err.contains("--attach netlink"), "{err}");
    }
}
