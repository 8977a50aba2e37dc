//! Least privilege once the programs are attached.
//!
//! Loading and attaching needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or root); the
//! steady state needs almost nothing: the ring buffer is mapped memory, the interface
//! check is an ioctl any process may make. What stays:
//!
//! * CAP_BPF, only where the kernel asks for it to read and write maps through file
//!   descriptors ws-monitor already holds (the counters, the heartbeat, the steering of
//!   the frame walk). Kernels before 6.5 with `kernel.unprivileged_bpf_disabled` set do;
//!   it is found out by trying, not by version.
//! * CAP_NET_ADMIN, only for a netlink attach (kernels before 6.6): its filters, and the
//!   clsact qdisc it may have added, are removed through netlink at exit. TCX links go
//!   when their file descriptors close.
//! * With `--iface any`, CAP_NET_ADMIN and CAP_BPF both: attaching to interfaces that
//!   come up later is attach-time work.
//!
//! Everything else goes from the effective, permitted, inheritable, ambient and
//! bounding sets; NoNewPrivs is set; with `--user` the process becomes that user (and
//! its group); and a seccomp filter lets through only the system calls the steady state
//! makes (the rest fail with EPERM; `--no-seccomp` leaves the filter out).
//!
//! Capabilities, NoNewPrivs and credentials are per thread, and a thread starts with
//! those of the thread that made it: [`drop_after_attach`] must run before any other
//! thread of the process exists, and every thread started afterwards inherits the
//! reduced set. It checks that it is alone first.

use std::collections::BTreeMap;
use std::ffi::CString;

use anyhow::{bail, Context as _};
use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule};

/// What the monitor kept, for the log and the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    /// Capabilities still effective (e.g. `CAP_BPF`), in name order.
    pub kept: Vec<String>,
    /// The user it runs as now (`--user`), if it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Whether the seccomp filter is installed.
    pub seccomp: bool,
}

/// What to give up after attach.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// Attached with netlink filters: CAP_NET_ADMIN stays, to remove them at exit.
    pub netlink: bool,
    /// More interfaces will be attached to while running (`--iface any`): CAP_NET_ADMIN
    /// and CAP_BPF stay.
    pub attach_later: bool,
    /// Run as this user (name or numeric uid) from now on.
    pub user: Option<String>,
    /// Install the system-call filter.
    pub seccomp: bool,
}

/// Gives up what attaching needed. `map_access` tries a map operation through a held
/// descriptor; it tells whether CAP_BPF is still needed for those.
pub fn drop_after_attach(plan: &Plan, map_access: impl Fn() -> bool) -> anyhow::Result<Dropped> {
    // (Without /proc, as in a minimal initramfs, the order of the code is the guarantee.)
    if let Some(threads) = thread_count().filter(|n| *n != 1) {
        bail!("internal: privileges must be dropped before other threads start, and {threads} are running; please report this");
    }
    let mut keep = CapsHashSet::new();
    if plan.netlink || plan.attach_later {
        keep.insert(Capability::CAP_NET_ADMIN);
    }
    // Try the maps without CAP_BPF (and CAP_SYS_ADMIN, which also grants it) in the
    // effective set; keep it only if the kernel refuses.
    let effective = caps::read(None, CapSet::Effective).context("reading this process's capabilities")?;
    let mut trial = effective.clone();
    trial.retain(|c| !matches!(c, Capability::CAP_BPF | Capability::CAP_SYS_ADMIN));
    caps::set(None, CapSet::Effective, &trial).context("lowering the effective capabilities")?;
    if plan.attach_later || !map_access() {
        keep.insert(if effective.contains(&Capability::CAP_BPF) {
            Capability::CAP_BPF
        } else {
            Capability::CAP_SYS_ADMIN
        });
    }
    caps::set(None, CapSet::Effective, &effective).context("restoring the effective capabilities")?;

    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next. A
    // process started with file capabilities rather than as root has no CAP_SETPCAP; its
    // bounding set stays (NoNewPrivs keeps an exec from gaining anything anyway).
    if effective.contains(&Capability::CAP_SETPCAP) {
        let bounding = caps::read(None, CapSet::Bounding).unwrap_or_default();
        for cap in bounding.iter().filter(|c| !keep.contains(c)) {
            caps::drop(None, CapSet::Bounding, *cap)
                .with_context(|| format!("dropping {cap} from the bounding set"))?;
        }
    }
    let user = match &plan.user {
        Some(name) => Some(become_user(name)?),
        None => None,
    };
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable capabilities")?;
    // Permitted bounds effective: lower effective first.
    caps::set(None, CapSet::Effective, &keep).context("setting the effective capabilities")?;
    caps::set(None, CapSet::Permitted, &keep).context("setting the permitted capabilities")?;
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setting NoNewPrivs");
    }
    if plan.seccomp {
        let filter = syscall_filter()?;
        seccompiler::apply_filter(&filter).context("installing the seccomp filter (--no-seccomp leaves it out)")?;
    }
    let mut kept: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
    kept.sort();
    Ok(Dropped { kept, user, seccomp: plan.seccomp })
}

/// Threads of this process (`/proc/self/task`).
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}

/// Switches to `name` (a user name or a numeric uid) and its primary group, keeping the
/// permitted capabilities across the change; returns the user's name.
fn become_user(name: &str) -> anyhow::Result<String> {
    let (uid, gid, user) = lookup_user(name)?;
    // SAFETY: these calls take plain integers (and setgroups a valid one-element array);
    // no other thread exists (checked by the caller), so they apply to the whole process.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
            || libc::setgroups(1, &gid) != 0
            || libc::setresgid(gid, gid, gid) != 0
            || libc::setresuid(uid, uid, uid) != 0
        {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("switching to user {user} (--user needs ws-monitor started as root)"));
        }
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
    }
    Ok(user)
}

/// uid, primary gid and name of a user given by name or number.
fn lookup_user(name: &str) -> anyhow::Result<(libc::uid_t, libc::gid_t, String)> {
    let mut pwd: libc::passwd = empty_passwd();
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let ret = if let Ok(uid) = name.parse::<libc::uid_t>() {
        // SAFETY: every pointer is valid for the call; `buf` has the length given.
        unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) }
    } else {
        let c = CString::new(name).with_context(|| format!("invalid user name {name:?}"))?;
        // SAFETY: as above; `c` is NUL-terminated and outlives the call.
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) }
    };
    if ret != 0 || found.is_null() {
        bail!("no such user {name:?} for --user: pick one from /etc/passwd (e.g. nobody), or a numeric uid");
    }
    // SAFETY: getpw*_r succeeded, so pw_name points to a NUL-terminated string in `buf`.
    let user = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
    Ok((pwd.pw_uid, pwd.pw_gid, user))
}

fn empty_passwd() -> libc::passwd {
    // SAFETY: an all-zero passwd (null pointers, zero ids) is a valid value to be
    // overwritten by getpw*_r.
    unsafe { std::mem::zeroed() }
}

/// The system calls of the steady state: reading the ring, the maps and the clock,
/// threads and their synchronisation, files (events, streams, stdout/stderr), the
/// terminal, sockets (metrics, the demo's peers, netlink at exit), signals, exit.
fn allowed_syscalls() -> Vec<libc::c_long> {
    let mut v = vec![
        // memory
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        // files and descriptors
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_pread64,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_pwrite64,
        libc::SYS_openat,
        libc::SYS_close,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_lseek,
        libc::SYS_fcntl,
        libc::SYS_ioctl,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_pipe2,
        libc::SYS_getdents64,
        libc::SYS_mkdirat,
        libc::SYS_unlinkat,
        libc::SYS_renameat,
        libc::SYS_readlinkat,
        libc::SYS_ftruncate,
        libc::SYS_fallocate,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_statfs,
        libc::SYS_fstatfs,
        libc::SYS_getcwd,
        // waiting and time
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_eventfd2,
        libc::SYS_ppoll,
        libc::SYS_pselect6,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        libc::SYS_timerfd_create,
        libc::SYS_timerfd_settime,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_getpriority,
        libc::SYS_setpriority,
        // threads and the process
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_get_robust_list,
        libc::SYS_rseq,
        libc::SYS_set_tid_address,
        libc::SYS_prctl,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_getppid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_getresuid,
        libc::SYS_getresgid,
        libc::SYS_getrandom,
        libc::SYS_uname,
        libc::SYS_sysinfo,
        libc::SYS_getrusage,
        libc::SYS_prlimit64,
        libc::SYS_capget,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // signals
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_kill,
        libc::SYS_tgkill,
        // sockets
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_bind,
        libc::SYS_listen,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_setsockopt,
        libc::SYS_getsockopt,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_sendmmsg,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_recvmmsg,
        libc::SYS_shutdown,
        // the maps (and a program or link closed at exit)
        libc::SYS_bpf,
    ];
    v.extend_from_slice(legacy_syscalls());
    v
}

/// The older calls x86_64 still has beside their `*at`/`p*` successors (libc may use
/// them); other architectures never had them.
fn legacy_syscalls() -> &'static [libc::c_long] {
    #[cfg(target_arch = "x86_64")]
    return &[
        libc::SYS_open,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_access,
        libc::SYS_poll,
        libc::SYS_select,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_create,
        libc::SYS_pipe,
        libc::SYS_dup2,
        libc::SYS_mkdir,
        libc::SYS_unlink,
        libc::SYS_rename,
        libc::SYS_readlink,
        libc::SYS_arch_prctl,
        libc::SYS_time,
    ];
    #[cfg(not(target_arch = "x86_64"))]
    return &[];
}

fn syscall_filter() -> anyhow::Result<BpfProgram> {
    // (c_long is i64 on every 64-bit target seccompiler knows: x86_64, aarch64, riscv64.)
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls().into_iter().map(|nr| (nr, Vec::new())).collect();
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|_| anyhow::anyhow!("seccomp: no filter for {}; run with --no-seccomp", std::env::consts::ARCH))?;
    let filter = SeccompFilter::new(rules, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, arch)
        .context("building the seccomp filter")?;
    filter.try_into().context("compiling the seccomp filter")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_and_lists_each_call_once() {
        let calls = allowed_syscalls();
        let mut sorted = calls.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), calls.len(), "a system call is listed twice");
        assert!(syscall_filter().is_ok());
    }

    #[test]
    fn unknown_users_say_what_to_do() {
        let err = lookup_user("no-such-user-ws-monitor").unwrap_err().to_string();
        assert!(err.contains("--user") && err.contains("/etc/passwd"), "{err}");
        assert_eq!(lookup_user("0").map(|(uid, _, name)| (uid, name)).ok(), Some((0, "root".into())));
    }
}
