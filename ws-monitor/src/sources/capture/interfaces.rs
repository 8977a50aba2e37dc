//! The interfaces a capture runs on: which ones were asked for (`--iface`, `any`),
//! whether each is still there and up, which are up now, and how their packets start.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context as _};

/// Which interfaces to capture on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interfaces {
    /// These, by name: each must exist, and the capture stops if one disappears.
    Named(Vec<String>),
    /// Every interface that is up, and each one that comes up while running.
    Any,
}

impl Interfaces {
    /// `--iface` values: names (repeated or comma-separated), or `any` alone.
    pub fn from_args(names: &[String]) -> anyhow::Result<Interfaces> {
        let mut out: Vec<String> = Vec::new();
        for name in names.iter().flat_map(|n| n.split(',')).map(str::trim).filter(|n| !n.is_empty()) {
            if !out.iter().any(|n| n == name) {
                out.push(name.to_string());
            }
        }
        match out.as_slice() {
            [] => bail!("no interface to capture on: pass --iface IFACE (repeat it for more, or `any`)"),
            [any] if any == "any" => Ok(Interfaces::Any),
            more if more.iter().any(|n| n == "any") => {
                bail!("--iface any already means every interface: give it alone, or name the interfaces")
            }
            _ => Ok(Interfaces::Named(out)),
        }
    }

    /// How the operator named them: `eth0,lo` or `any`.
    pub fn label(&self) -> String {
        match self {
            Interfaces::Named(names) => names.join(","),
            Interfaces::Any => "any".into(),
        }
    }

    /// More than one interface may see the same packet.
    pub(crate) fn may_overlap(&self) -> bool {
        !matches!(self, Interfaces::Named(names) if names.len() == 1)
    }
}

/// The state of an interface a capture is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    Up,
    /// Administratively down: no packet passes, so nothing is captured.
    Down,
    /// No interface of that name has the index attached to any more: deleted, renamed or
    /// moved to another network namespace. The programs went with it.
    Gone,
}

pub(crate) fn link_state(iface: &str, ifindex: u32) -> LinkState {
    let Ok(name) = CString::new(iface) else { return LinkState::Gone };
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::if_nametoindex(name.as_ptr()) } != ifindex {
        return LinkState::Gone;
    }
    match link_flags(iface) {
        Some(flags) if flags & libc::IFF_UP == 0 => LinkState::Down,
        _ => LinkState::Up,
    }
}

/// Whether an interface has this index (in this process's network namespace).
pub(crate) fn index_exists(ifindex: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has room for IF_NAMESIZE bytes, as if_indextoname requires.
    !unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null()
}

/// The interface's flags (`SIOCGIFFLAGS`, in this process's network namespace).
fn link_flags(iface: &str) -> Option<libc::c_int> {
    // SAFETY: socket() has no preconditions; the descriptor is owned (and closed) below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a descriptor this function just opened and nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is a valid value (an empty name, zero flags).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if iface.len() >= req.ifr_name.len() {
        return None;
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated ifr_name of `req` and writes its
    // flags; `req` outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return None;
    }
    // SAFETY: SIOCGIFFLAGS has just written the flags member of the union.
    Some(libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }))
}

/// Interfaces by name and index.
pub(crate) type Named = Vec<(String, u32)>;

/// The interfaces that are up (name and index, in index order), and those of them
/// `any` leaves out with the reason: a link type the program cannot parse.
pub(crate) fn interfaces_up() -> anyhow::Result<(Named, Vec<(String, String)>)> {
    // SAFETY: if_nameindex has no preconditions; its array is freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error()).context("listing the network interfaces");
    }
    let mut all = Vec::new();
    let mut entry = list;
    // SAFETY: the array ends with an entry whose index is 0 and name null; every entry
    // before it has a valid NUL-terminated name. It is freed once, after the loop.
    unsafe {
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            all.push((CStr::from_ptr((*entry).if_name).to_string_lossy().into_owned(), (*entry).if_index));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    all.sort_by_key(|(_, index)| *index);
    let (mut up, mut left_out) = (Vec::new(), Vec::new());
    for (name, index) in all {
        if link_state(&name, index) != LinkState::Up {
            continue;
        }
        match link_header_len(&name) {
            Ok(_) => up.push((name, index)),
            Err(e) => left_out.push((name, e.to_string())),
        }
    }
    Ok((up, left_out))
}

/// The index of an interface that exists.
pub(crate) fn interface_index(iface: &str) -> anyhow::Result<u32> {
    let name = CString::new(iface).with_context(|| format!("invalid interface name {iface:?}"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no such interface {iface:?}: list the interfaces with `ip link`"),
        index => Ok(index),
    }
}

/// ARPHRD_* of an interface, from sysfs.
fn link_type(iface: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{iface}/type")).ok()?.trim().parse().ok()
}

/// Bytes before the network header in packets at the TC hooks of `iface`.
pub(crate) fn link_header_len(iface: &str) -> anyhow::Result<u32> {
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

pub(crate) fn is_loopback(iface: &str) -> bool {
    link_type(iface).map_or(iface == "lo", |t| t == 772) // ARPHRD_LOOPBACK
}
