//! Command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::outputs::logs::LogFormat;
use crate::sources::capture::AttachMode;

/// Passive WebSocket protocol-violation monitor: a TC eBPF program captures the TCP
/// payload of the given ports, userspace rebuilds every connection's byte streams and
/// checks the HTTP upgrade and every RFC 6455 frame header.
#[derive(Debug, Parser)]
#[command(name = "ws-monitor", version, subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// Interface to capture on (e.g. eth0, lo); repeat it (or separate names with commas)
    /// for several, or `any` for every interface that is up, following those that come
    /// up later. A packet that passes two of them is counted once.
    #[arg(long, short = 'i', value_name = "IFACE", required = true)]
    pub iface: Vec<String>,

    /// TCP port serving WebSocket traffic; repeat for more (up to 16).
    #[arg(long = "port", short = 'p', value_name = "PORT", required = true, value_parser = parse_port)]
    pub ports: Vec<u16>,

    #[command(flatten)]
    pub run: RunArgs,

    /// Ring buffer between kernel and userspace, in bytes (K/M/G suffixes; a power of two).
    #[arg(long, default_value = "16M", value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// How to attach: TCX links (Linux 6.6+), netlink filters on the clsact qdisc (any
    /// kernel), or auto (TCX where the kernel has it).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,

    /// Copy every payload byte to userspace. By default the kernel walks frame headers and
    /// leaves out binary payload past its first 64 bytes (nothing the checks read);
    /// --streams-dir implies this.
    #[arg(long)]
    pub full_payload: bool,

    #[command(flatten)]
    pub privileges: PrivilegeArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What a live capture keeps once attached (it drops every capability it no longer
/// needs, and sets NoNewPrivs, in any case).
#[derive(Debug, Clone, clap::Args)]
pub struct PrivilegeArgs {
    /// After attaching, run as this user (name or uid) and its primary group. Files that
    /// are created later (--streams-dir) must be writable by it.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Leave out the system-call filter installed after attaching (for debugging: an
    /// operation the filter refuses fails with EPERM).
    #[arg(long)]
    pub no_seccomp: bool,
}

/// Options shared by every mode.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,

    /// Print the final report as one JSON object on stdout at exit.
    #[arg(long)]
    pub json: bool,

    /// Seconds between counter log lines when headless (0 = none).
    #[arg(long, alias = "stats-interval", default_value_t = 10.0, value_name = "SECS")]
    pub log_interval: f64,

    /// Log line format when headless.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Include the first bytes at fault (up to 64, unmasked) in finding log lines and
    /// --events. Off by default: payload may hold user data.
    #[arg(long)]
    pub log_payload: bool,

    /// Log lines instead of the dashboard, even on a terminal.
    #[arg(long)]
    pub no_tui: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9640).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Write every finding as a JSON line to FILE.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

    /// Write a JSON line to FILE for every WebSocket connection when it ends: 4-tuple,
    /// times, the handshake (request line, Host, Origin, User-Agent, X-Forwarded-For,
    /// subprotocols and extensions offered and accepted), frames, messages and bytes each
    /// way, the close frames and who closed first, how it ended, its violations, and the
    /// bytes analysis could not see.
    #[arg(long, value_name = "FILE")]
    pub connections: Option<PathBuf>,

    /// Frames with a larger payload are reported as oversized_frame (K/M/G suffixes).
    #[arg(long, default_value = "16M", value_parser = parse_size)]
    pub max_frame_size: u64,

    /// Messages larger than this (all fragments, or once inflated) are reported as
    /// oversized_message; inflating a message stops there (K/M/G suffixes).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub max_message_size: u64,

    /// Bytes inflated per second at most (permessage-deflate, all connections); messages
    /// beyond it are not inflated and are counted as inflate_skipped (K/M/G suffixes).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub max_inflate_rate: u64,

    /// Findings one connection reports per second at most (logs, --events); beyond it
    /// violations are still counted, and the findings left out are counted as
    /// findings_suppressed.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub max_findings_per_second: u32,

    /// Write every reassembled stream to files in DIR (gaps as holes, listed in .gaps files).
    #[arg(long, value_name = "DIR")]
    pub streams_dir: Option<PathBuf>,

    /// Connections tracked at once. Beyond it one is evicted: the least recently active
    /// half-open one, else one that carries no WebSocket session, else the least
    /// recently active WebSocket session.
    #[arg(long, default_value_t = 65_536)]
    pub max_flows: usize,

    /// Out-of-order bytes buffered per connection direction before a hole is declared lost.
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub flow_buffer: u64,

    /// Out-of-order bytes buffered over all connections (K/M/G suffixes); past it the
    /// connection being added to gives up its holes (counted as buffer_limit). Default:
    /// 256M, or an eighth of the machine's memory if that is less.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub memory_limit: Option<u64>,

    /// Connections tracked at once that have sent only a SYN so far; beyond it the oldest
    /// of them is evicted (a SYN flood then never pushes out established connections).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_half_open: usize,

    /// Seconds without traffic after which a connection is evicted.
    #[arg(long, default_value_t = 300.0, value_name = "SECS")]
    pub idle_timeout: f64,

    /// Worker threads that reassemble and check connections (sharded by connection;
    /// 0 = one per CPU this process may use).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub workers: usize,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read a pcap or pcapng capture instead of capturing live (no root needed).
    Replay(ReplayArgs),
    /// See it work: a WebSocket echo server, clients and a misbehaving proxy on loopback,
    /// monitored live (needs root, like live capture).
    Demo(DemoArgs),
    /// Remove what a killed ws-monitor left attached to an interface (netlink filters and
    /// the clsact qdisc it added); filters of running instances and of other tools stay.
    Detach {
        /// Interface to clean up.
        #[arg(long, short = 'i')]
        iface: String,
    },
    /// Print the man page (roff) on stdout: ws-monitor man > ws-monitor.8
    Man,
    /// For `cargo xtask bench`: attach a TC program that returns at once to both hooks of
    /// an interface (TCX, Linux 6.6+) until SIGINT or SIGTERM, as a reference cost.
    #[command(hide = true)]
    NullProgram {
        #[arg(long, short = 'i')]
        iface: String,
    },
    /// Print shell completions on stdout, e.g. ws-monitor completions bash > /etc/bash_completion.d/ws-monitor
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Client connections kept busy (half direct, half through the misbehaving proxy).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,

    /// Ring buffer between kernel and userspace, in bytes (K/M/G suffixes; a power of two).
    #[arg(long, default_value = "16M", value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Copy every payload byte to userspace instead of walking frame headers in the kernel.
    #[arg(long)]
    pub full_payload: bool,

    #[command(flatten)]
    pub privileges: PrivilegeArgs,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Capture file (pcap or pcapng; Ethernet, Linux cooked SLL/SLL2 or raw IP).
    pub file: PathBuf,

    /// WebSocket server port; repeat for more. Without it, ports are found by their
    /// upgrade handshake.
    #[arg(long = "port", short = 'p', value_name = "PORT", value_parser = parse_port)]
    pub ports: Vec<u16>,

    #[command(flatten)]
    pub run: RunArgs,
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{s:?} is not a TCP port: use a number from 1 to 65535")),
        Ok(p) => Ok(p),
    }
}

/// Parses `16M`, `64K`, `1G` or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 1u64 << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], 1 << 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size: use bytes or a K/M/G suffix, e.g. 16M"))
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    if !n.is_power_of_two() || !(4096..=(1 << 30)).contains(&n) {
        return Err(format!("ring size {s} must be a power of two between 4K and 1G, e.g. 16M"));
    }
    Ok(n as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_and_ports() {
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_ring_size("64k"), Ok(65536));
        assert!(parse_ring_size("3000").is_err());
        assert!(parse_port("0").is_err());
        assert!(parse_port("70000").is_err());
        assert_eq!(parse_port("8001"), Ok(8001));
    }
}
