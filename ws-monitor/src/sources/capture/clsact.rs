//! The clsact qdisc and the TC filters on it, over rtnetlink: what `tc qdisc` and
//! `tc filter` do, for the few operations capture needs.
//!
//! Kernels before 6.6 have no TCX links: a TC program hangs on the interface's clsact
//! qdisc as a `cls_bpf` filter, and that filter outlives the process that attached it.
//! ws-monitor tags its own filters (handle [`FILTER_HANDLE`], program name starting with
//! [`PROGRAM_PREFIX`]) so that it can find its leftovers and never touches anyone else's.

use std::io;

use anyhow::{bail, Context as _};
use ws_monitor_common::LIVENESS_QDISC_OWNED;

use crate::sources::capture::interfaces::index_exists;
use crate::sources::capture::liveness::{self, Owner};
use crate::sources::capture::{explain, privileged_interface};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::tc::{TcAttribute, TcFilterBpfOption, TcMessage, TcOption};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// The handle of every filter ws-monitor attaches: ASCII "wsm1", as `tc filter show`
/// prints it (`handle 0x77736d31`).
pub const FILTER_HANDLE: u32 = 0x7773_6d31;
/// The start of the name of every ws-monitor program (`ws_monitor_ingress`, ...).
pub const PROGRAM_PREFIX: &str = "ws_monitor_";

/// `TC_H_CLSACT` (= `TC_H_INGRESS`): the parent of the clsact qdisc.
const TC_H_CLSACT: u32 = 0xFFFF_FFF1;
/// The clsact qdisc's own handle, `ffff:`.
const CLSACT_HANDLE: u32 = 0xFFFF_0000;
const CLSACT: &str = "clsact";

/// One of the two hooks of the clsact qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub const BOTH: [Hook; 2] = [Hook::Ingress, Hook::Egress];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    /// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS | TC_H_MIN_EGRESS)`.
    fn parent(self) -> u32 {
        match self {
            Hook::Ingress => 0xFFFF_FFF2,
            Hook::Egress => 0xFFFF_FFF3,
        }
    }
}

/// A TC filter on one hook of an interface's clsact qdisc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub hook: Hook,
    pub priority: u16,
    /// EtherType in network byte order, as the kernel keeps it in `tcm_info`.
    protocol: u16,
    pub handle: u32,
    /// Classifier kind: `bpf`, `u32`, `matchall`, ...
    pub kind: String,
    /// For `bpf` filters: the program name the loader gave the filter.
    pub name: Option<String>,
    /// For `bpf` filters: the id of the program attached.
    pub prog_id: Option<u32>,
}

impl Filter {
    /// One of ws-monitor's own: a `bpf` filter with its handle and a program of its name.
    pub fn is_ws_monitor(&self) -> bool {
        self.kind == "bpf"
            && self.handle == FILTER_HANDLE
            && self.name.as_deref().is_some_and(|n| n.starts_with(PROGRAM_PREFIX))
    }
}

/// A route netlink socket for TC requests.
pub struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// The kind of the qdisc on the interface's ingress slot (`clsact`, or `ingress` if
    /// somebody added the older ingress-only qdisc), or None.
    pub fn ingress_slot(&mut self, ifindex: u32) -> io::Result<Option<String>> {
        let replies = self.request(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()), NLM_F_DUMP)?;
        Ok(replies.into_iter().find_map(|reply| match reply {
            RouteNetlinkMessage::NewQueueDiscipline(m)
                if m.header.index == ifindex as i32 && u32::from(m.header.handle) == CLSACT_HANDLE =>
            {
                Some(kind(&m.attributes).unwrap_or_default().to_string())
            }
            _ => None,
        }))
    }

    /// Adds the clsact qdisc; fails with `AlreadyExists` if the slot is taken.
    pub fn add_clsact(&mut self, ifindex: u32) -> io::Result<()> {
        let msg = clsact_message(ifindex);
        self.request(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL).map(drop)
    }

    pub fn delete_clsact(&mut self, ifindex: u32) -> io::Result<()> {
        self.request(RouteNetlinkMessage::DelQueueDiscipline(clsact_message(ifindex)), NLM_F_ACK).map(drop)
    }

    /// Every filter on `hook` of the interface's clsact qdisc (none without the qdisc).
    pub fn filters(&mut self, ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = hook.parent().into();
        let replies = match self.request(RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP) {
            Ok(replies) => replies,
            // No clsact qdisc (or no such hook): nothing is attached there.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewTrafficFilter(m) => Some(m),
                _ => None,
            })
            // A dump lists each priority's classifier once with handle 0 before its filters.
            .filter(|m| m.header.index == ifindex as i32 && u32::from(m.header.handle) != 0)
            .map(|m| filter(hook, &m))
            .collect())
    }

    pub fn delete_filter(&mut self, ifindex: u32, filter: &Filter) -> io::Result<()> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = filter.hook.parent().into();
        msg.header.handle = filter.handle.into();
        msg.header.info = (u32::from(filter.priority) << 16) | u32::from(filter.protocol);
        msg.attributes.push(TcAttribute::Kind(filter.kind.clone()));
        self.request(RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_ACK).map(drop)
    }

    /// Sends one request and collects the replies up to its ACK or the end of the dump.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut replies = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full()?;
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad netlink reply: {e}")))?;
                let len = (reply.header.length as usize).next_multiple_of(4).max(16);
                rest = rest.get(len..).unwrap_or_default();
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies), // the ACK
                        Some(_) => return Err(e.to_io()),
                    },
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }
}

fn clsact_message(ifindex: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TC_H_CLSACT.into();
    msg.header.handle = CLSACT_HANDLE.into();
    msg.attributes.push(TcAttribute::Kind(CLSACT.into()));
    msg
}

fn kind(attributes: &[TcAttribute]) -> Option<&str> {
    attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

fn filter(hook: Hook, m: &TcMessage) -> Filter {
    let mut f = Filter {
        hook,
        priority: (m.header.info >> 16) as u16,
        protocol: m.header.info as u16,
        handle: u32::from(m.header.handle),
        kind: kind(&m.attributes).unwrap_or_default().to_string(),
        name: None,
        prog_id: None,
    };
    let options = m.attributes.iter().filter_map(|a| match a {
        TcAttribute::Options(o) => Some(o),
        _ => None,
    });
    for option in options.flatten() {
        match option {
            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => f.name = Some(n.clone()),
            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => f.prog_id = Some(*id),
            _ => {}
        }
    }
    f
}

// ---------------------------------------------------------------------------------------
// What ws-monitor does with its filters: sweeping stale ones, the qdisc it owns, detach.

/// What a sweep of an interface found.
#[derive(Debug, Default)]
pub(crate) struct Sweep {
    /// ws-monitor filters whose owner is gone, removed.
    pub(crate) removed: usize,
    /// Hooks they were on.
    pub(crate) removed_from: Vec<&'static str>,
    /// PIDs owning ws-monitor filters that are still running.
    pub(crate) running: Vec<u32>,
    /// One of the removed filters' owners had added the clsact qdisc.
    pub(crate) qdisc_owned: bool,
    /// That qdisc was removed too (nothing else used it).
    pub(crate) qdisc_removed: bool,
}

/// Removes the ws-monitor filters on `ifindex` whose owner is no longer running, and
/// never anything else; with `remove_qdisc`, also the clsact qdisc a gone owner had
/// added, once no filter at all is left on it.
pub(crate) fn sweep(rtnl: &mut Rtnl, ifindex: u32, iface: &str, remove_qdisc: bool) -> anyhow::Result<Sweep> {
    let context = || format!("looking for ws-monitor filters left on {iface}");
    let mut out = Sweep::default();
    for hook in Hook::BOTH {
        for filter in rtnl.filters(ifindex, hook).with_context(context)? {
            if !filter.is_ws_monitor() {
                continue;
            }
            let read = || filter.prog_id.map(liveness::of_program).transpose().map(Option::flatten);
            let live = read().with_context(context)?;
            let verdict = match live {
                // No owner recorded: a copy without a heartbeat does nothing anyway.
                None => Owner::Gone,
                Some(l) => match liveness::owner(&l, liveness::monotonic_ns()) {
                    Owner::Unsure { recheck_at_ns } => {
                        // An owner in another PID namespace: is its heartbeat still going?
                        let wait = recheck_at_ns.saturating_sub(liveness::monotonic_ns());
                        std::thread::sleep(std::time::Duration::from_nanos(wait));
                        match read().with_context(context)? {
                            Some(again) if again.heartbeat_ns != l.heartbeat_ns => Owner::Running { pid: l.pid },
                            _ => Owner::Gone,
                        }
                    }
                    verdict => verdict,
                },
            };
            match verdict {
                Owner::Running { pid } => out.running.push(pid),
                _ => {
                    rtnl.delete_filter(ifindex, &filter)
                        .with_context(|| format!("removing a stale ws-monitor filter from {iface} {}", hook.name()))?;
                    out.removed += 1;
                    out.removed_from.push(hook.name());
                    out.qdisc_owned |= live.is_some_and(|l| l.flags & LIVENESS_QDISC_OWNED != 0);
                }
            }
        }
    }
    if remove_qdisc && out.qdisc_owned {
        out.qdisc_removed = OwnedQdisc { ifindex, owned: true }.remove_if_unused(rtnl)?;
    }
    Ok(out)
}

/// A priority ahead of every filter already on the hook: a filter that ends
/// classification (`action pass`, a final verdict) would otherwise keep the program from
/// ever seeing a packet. The program returns TC_ACT_UNSPEC, so the others still run.
/// 0 lets the kernel choose where nothing is there (or nothing is free ahead).
pub(crate) fn first_priority(rtnl: &mut Rtnl, ifindex: u32, hook: Hook) -> anyhow::Result<u16> {
    let filters = rtnl.filters(ifindex, hook).context("listing the filters already attached")?;
    Ok(filters.iter().map(|f| f.priority).min().map_or(0, |p| p.saturating_sub(1)))
}

/// The clsact qdisc the netlink filters hang on: one already there is used as it is
/// (so is the older ingress-only qdisc, where no egress hook is needed).
pub(crate) fn clsact_for(
    rtnl: &mut Rtnl,
    ifindex: u32,
    iface: &str,
    needs_egress: bool,
    inherited: bool,
) -> anyhow::Result<OwnedQdisc> {
    let in_use = |kind: String| -> anyhow::Result<OwnedQdisc> {
        if kind == "clsact" || (kind == "ingress" && !needs_egress) {
            return Ok(OwnedQdisc { ifindex, owned: inherited && kind == "clsact" });
        }
        bail!(
            "{iface} has an `{kind}` qdisc where ws-monitor needs clsact (which also has an egress hook): \
             replace it (`tc qdisc del dev {iface} {kind}`, `tc qdisc add dev {iface} clsact`, then re-add its filters), or use --attach tcx on Linux 6.6+"
        )
    };
    let context = || format!("adding the clsact qdisc to {iface}");
    if let Some(kind) = rtnl.ingress_slot(ifindex).with_context(context)? {
        return in_use(kind);
    }
    match rtnl.add_clsact(ifindex) {
        Ok(()) => Ok(OwnedQdisc { ifindex, owned: true }),
        // Somebody added one in the meantime.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => match rtnl.ingress_slot(ifindex).with_context(context)? {
            Some(kind) => in_use(kind),
            None => Err(anyhow::Error::new(e).context(context())),
        },
        Err(e) => Err(explain(anyhow::Error::new(e).context(context()))),
    }
}

/// The clsact qdisc under ws-monitor's filters; when ws-monitor added it (`owned`), it
/// is removed on drop unless another filter still uses it.
pub(crate) struct OwnedQdisc {
    pub(crate) ifindex: u32,
    pub(crate) owned: bool,
}

impl OwnedQdisc {
    /// Removes the qdisc if owned and no filter is left on it; true if removed.
    fn remove_if_unused(&self, rtnl: &mut Rtnl) -> anyhow::Result<bool> {
        if !self.owned {
            return Ok(false);
        }
        for hook in Hook::BOTH {
            if !rtnl.filters(self.ifindex, hook).context("listing the filters on the clsact qdisc")?.is_empty() {
                return Ok(false);
            }
        }
        rtnl.delete_clsact(self.ifindex).context("removing the clsact qdisc ws-monitor added")?;
        Ok(true)
    }
}

impl Drop for OwnedQdisc {
    fn drop(&mut self) {
        if !self.owned || !index_exists(self.ifindex) {
            return; // an interface that is gone took its qdisc with it
        }
        let result = Rtnl::open().map_err(anyhow::Error::from).and_then(|mut rtnl| self.remove_if_unused(&mut rtnl));
        if let Err(e) = result {
            tracing::warn!("{e:#}: remove it with `ws-monitor detach --iface IFACE`");
        }
    }
}

/// `ws-monitor detach --iface IFACE`: removes what killed instances left attached to
/// `iface` (netlink filters and a clsact qdisc they added) and says what it did.
pub fn detach(iface: &str) -> anyhow::Result<String> {
    let ifindex = privileged_interface(iface)?;
    let mut rtnl = Rtnl::open().context("opening a netlink socket")?;
    let sweep = sweep(&mut rtnl, ifindex, iface, true)?;
    let mut said = Vec::new();
    if sweep.removed > 0 {
        said.push(format!(
            "removed {} stale ws-monitor filter{} ({}){} from {iface}",
            sweep.removed,
            if sweep.removed == 1 { "" } else { "s" },
            sweep.removed_from.join(", "),
            if sweep.qdisc_removed { " and the clsact qdisc ws-monitor had added" } else { "" },
        ));
    }
    if !sweep.running.is_empty() {
        let pids: Vec<String> = sweep.running.iter().map(u32::to_string).collect();
        said.push(format!(
            "left {} filter{} on {iface} alone: they belong to ws-monitor (pid {}), still running; stop it instead",
            pids.len(),
            if pids.len() == 1 { "" } else { "s" },
            pids.join(", ")
        ));
    }
    if said.is_empty() {
        said.push(format!("nothing of ws-monitor's is attached to {iface}"));
    }
    Ok(said.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bpf_filter(handle: u32, name: &str) -> Filter {
        Filter {
            hook: Hook::Ingress,
            priority: 49152,
            protocol: 0x0300,
            handle,
            kind: "bpf".into(),
            name: Some(name.into()),
            prog_id: Some(7),
        }
    }

    #[test]
    fn only_tagged_bpf_filters_of_ws_monitor_programs_are_ours() {
        assert!(bpf_filter(FILTER_HANDLE, "ws_monitor_ingress").is_ws_monitor());
        assert!(!bpf_filter(1, "ws_monitor_ingress").is_ws_monitor(), "someone else's handle");
        assert!(!bpf_filter(FILTER_HANDLE, "cil_from_netdev").is_ws_monitor(), "someone else's program");
        let mut u32_filter = bpf_filter(FILTER_HANDLE, "ws_monitor_ingress");
        u32_filter.kind = "u32".into();
        assert!(!u32_filter.is_ws_monitor());
        let mut unnamed = bpf_filter(FILTER_HANDLE, "");
        unnamed.name = None;
        assert!(!unnamed.is_ws_monitor());
    }
}
