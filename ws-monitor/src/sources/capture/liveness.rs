//! Who owns a loaded copy of the kernel program, and whether that owner still runs.
//!
//! Every ws-monitor writes its identity and a heartbeat into its program's `LIVENESS`
//! map and refreshes the heartbeat every second from a thread of its own. The program
//! returns at once when the heartbeat is older than [`ORPHAN_AFTER_NS`], so a copy whose
//! owner was killed outright costs next to nothing; a later ws-monitor reads the map to
//! decide whether a filter it finds is a leftover (its owner is gone) or belongs to an
//! instance that is still running.

use std::os::unix::fs::MetadataExt as _;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use aya::maps::{Array, Map, MapData, MapInfo};
use aya::programs::loaded_programs;
use ws_monitor_common::{Liveness, HEARTBEAT_INTERVAL_NS, ORPHAN_AFTER_NS};

/// Name of the map in the kernel program.
pub const MAP_NAME: &str = "LIVENESS";

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// This process as a [`Liveness`] owner, with a fresh heartbeat.
pub fn this_process(flags: u32) -> Liveness {
    let pid = std::process::id();
    Liveness {
        heartbeat_ns: monotonic_ns(),
        pid_ns: pid_namespace().unwrap_or(0),
        start_time: start_time(pid).unwrap_or(0),
        pid,
        flags,
    }
}

fn pid_namespace() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// What a [`Liveness`] says of its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Still running: its filters must be left alone.
    Running { pid: u32 },
    /// Gone: what it left attached may be removed.
    Gone,
    /// In another PID namespace with a fresh heartbeat: look again at `recheck_at_ns`.
    Unsure { recheck_at_ns: u64 },
}

/// Judges the owner from its identity where this process can see it (same PID
/// namespace), otherwise from the age of its heartbeat.
pub fn owner(live: &Liveness, now_ns: u64) -> Owner {
    if live.pid_ns != 0 && Some(live.pid_ns) == pid_namespace() {
        // A PID that runs again with another start time is somebody else.
        return match start_time(live.pid) {
            Some(t) if t == live.start_time => Owner::Running { pid: live.pid },
            _ => Owner::Gone,
        };
    }
    if now_ns.saturating_sub(live.heartbeat_ns) > ORPHAN_AFTER_NS {
        Owner::Gone
    } else {
        Owner::Unsure { recheck_at_ns: live.heartbeat_ns + ORPHAN_AFTER_NS + HEARTBEAT_INTERVAL_NS }
    }
}

/// The `LIVENESS` entry of the loaded program `prog_id`, or None when that program has
/// no such map (not a ws-monitor program of this version) or is gone.
pub fn of_program(prog_id: u32) -> anyhow::Result<Option<Liveness>> {
    let Some(program) = loaded_programs().filter_map(Result::ok).find(|p| p.id() == prog_id) else {
        return Ok(None);
    };
    let map_ids = program.map_ids().context("reading the maps of a loaded program")?.unwrap_or_default();
    for id in map_ids {
        let Ok(info) = MapInfo::from_id(id) else { continue };
        if info.name_as_str() != Some(MAP_NAME) {
            continue;
        }
        let data = MapData::from_id(id).context("opening a program's LIVENESS map")?;
        let array: Array<MapData, Liveness> =
            Array::try_from(Map::Array(data)).context("a LIVENESS map of an unexpected type")?;
        return Ok(Some(array.get(&0, 0).context("reading a LIVENESS map")?));
    }
    Ok(None)
}

/// The heartbeat: written once at [`Heartbeat::start`], then refreshed once a second by
/// a thread of its own ([`Heartbeat::keep_beating`]) until dropped.
pub struct Heartbeat {
    /// The map and value until the thread takes them.
    waiting: Option<(Array<MapData, Liveness>, Liveness)>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Writes `value` now, so the program is alive from its first packet; it stays so for
    /// [`ORPHAN_AFTER_NS`] unless [`Heartbeat::keep_beating`] refreshes it.
    pub fn start(mut map: Array<MapData, Liveness>, mut value: Liveness) -> anyhow::Result<Heartbeat> {
        value.heartbeat_ns = monotonic_ns();
        map.set(0, value, 0).context("writing the LIVENESS map")?;
        Ok(Heartbeat { waiting: Some((map, value)), stop: None, thread: None })
    }

    /// Refreshes the heartbeat every second from a thread of its own, so a busy main loop
    /// cannot starve it. Started once the process has dropped its privileges, so that
    /// the thread has no more of them than the process keeps.
    pub fn keep_beating(&mut self) -> anyhow::Result<()> {
        let Some((mut map, mut value)) = self.waiting.take() else { return Ok(()) };
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || loop {
                match stopped.recv_timeout(Duration::from_nanos(HEARTBEAT_INTERVAL_NS)) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        value.heartbeat_ns = monotonic_ns();
                        if let Err(e) = map.set(0, value, 0) {
                            tracing::warn!(
                                "cannot refresh the kernel program's heartbeat: {e}; it stops capturing within 5 s"
                            );
                            return;
                        }
                    }
                    // Stopped, or the Heartbeat is gone.
                    _ => return,
                }
            })
            .context("starting the heartbeat thread")?;
        (self.stop, self.thread) = (Some(stop), Some(thread));
        Ok(())
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_running_and_a_dead_pid_is_gone() {
        let me = this_process(0);
        assert_eq!(owner(&me, monotonic_ns()), Owner::Running { pid: std::process::id() });
        // The same PID with another start time: the PID was reused by somebody else.
        let reused = Liveness { start_time: me.start_time + 1, ..me };
        assert_eq!(owner(&reused, monotonic_ns()), Owner::Gone);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let dead = Liveness { pid, ..me };
        assert_eq!(owner(&dead, monotonic_ns()), Owner::Gone);
    }

    #[test]
    fn another_namespace_is_judged_by_the_heartbeat() {
        let now = 100 * ORPHAN_AFTER_NS;
        let fresh = Liveness { pid_ns: 1, pid: 1, heartbeat_ns: now - 1_000_000_000, ..Default::default() };
        assert!(matches!(owner(&fresh, now), Owner::Unsure { recheck_at_ns } if recheck_at_ns > now));
        let old = Liveness { heartbeat_ns: now - ORPHAN_AFTER_NS - 1, ..fresh };
        assert_eq!(owner(&old, now), Owner::Gone);
    }
}
