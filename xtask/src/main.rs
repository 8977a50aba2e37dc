//! Project tasks: `cargo xtask setup | run | test | deny | kernels | bench | soak | fuzz`.
//!
//! `setup` installs, idempotently, what building the eBPF program needs on Debian/Ubuntu:
//! Debian's `rustc-web` with its prebuilt `core` for `bpfel-unknown-none` (so no
//! `-Z build-std` and no `rust-src`), LLVM 22, and `bpf-linker` 0.13 built against it.
//! `setup --tests` adds what the test suite runs: Debian packages (TEST_PACKAGES), the
//! Python `websockets` and `aiohttp` libraries (pip) and the Node `ws` and socket.io
//! libraries (`npm ci` in the peers dir).
//! `kernels` tests ws-monitor on Debian's 5.10, 6.1 and 6.12 kernels under QEMU and on the
//! host kernel (see kernels.rs). `fuzz` runs every fuzz target from its seeds (fuzz.rs).
//! `soak` runs ws-monitor under mixed live load for minutes and judges its memory and
//! losses (soak.rs). `deny` checks advisories, licenses, duplicates and sources with
//! cargo-deny (deny.rs), which `setup --tests` installs.

mod bench;
mod deny;
mod dist;
mod fuzz;
mod kernels;
mod netns;
mod soak;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

/// Debian packages that provide the BPF toolchain (rustc 1.96 with a prebuilt BPF core).
const TOOLCHAIN_PACKAGES: &[&str] =
    &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf", "llvm-22-dev", "libpolly-22-dev"];
/// What the tests need on top: network namespaces and veth (iproute2), BPF inspection,
/// python for the traffic peers, a terminal for the dashboard test, and for the protocol
/// tests (tests/e2e_protocol.rs) nginx as a reverse proxy, tcpdump to record the pcap that
/// is replayed, pip for the `websockets` and `aiohttp` peers, Node.js for the `ws` and
/// socket.io peers, and HAProxy as a health-checking load balancer.
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "python3",
    "python3-pip",
    "procps",
    "util-linux",
    "nginx",
    "haproxy",
    "tcpdump",
    "nodejs",
    "tmux",
];
/// What `bench` needs on top: tshark, the reference the replay is measured against.
const BENCH_PACKAGES: &[&str] = &["tshark"];
/// What `soak` needs on top of the toolchain: network namespaces and veth.
const SOAK_PACKAGES: &[&str] = &["iproute2", "procps"];
/// The Python libraries of the protocol-test peers, each with a module that proves it is
/// there (websockets' asyncio API is from 13.0 on; aiohttp serves HTTP and WebSocket on
/// one port).
const PY_PACKAGES: &[(&str, &str)] =
    &[("websockets==14.2", "websockets.asyncio.client"), ("aiohttp==3.12.15", "aiohttp.web")];
/// Node packages the peers need (package-lock.json pins them); any missing → `npm ci`.
const NODE_PACKAGES: &[&str] = &["ws", "socket.io", "socket.io-client"];
/// Where the Node.js peers live (package.json and package-lock.json pin `ws`).
const NODE_PEERS_DIR: &str = "ws-monitor/tests/peers";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the BPF toolchain (and with --tests, what the test suite needs).
    Setup {
        #[arg(long)]
        tests: bool,
    },
    /// Set up, build in release mode and run ws-monitor (as root) with ARGS (default: demo).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up everything and run the whole test suite (needs root for the BPF tests),
    /// the core's tests again without the kernel program (no BPF toolchain), then every
    /// fuzz target for a short while.
    Test {
        /// Seconds of fuzzing after the tests, shared out among the targets (0 = skip;
        /// needs the rustup nightly toolchain).
        #[arg(long, default_value_t = 60)]
        fuzz_seconds: u32,
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzz every target (or one) from its seed corpus: the engine, the handshake,
    /// reassembly, the kernel record decoder and the pcap reader.
    Fuzz {
        /// Minutes each target runs.
        #[arg(long, default_value_t = 1)]
        minutes: u32,
        /// Only this target.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(fuzz::TARGETS))]
        target: Option<String>,
    },
    /// Test ws-monitor on Debian kernels under QEMU and on the host kernel (needs root):
    /// exact capture, clean exits, kill -9, restarts, a foreign clsact qdisc, detach.
    Kernels {
        /// Kernels to test, comma-separated: 5.10, 6.1, 6.12, host.
        #[arg(long, default_value = "5.10,6.1,6.12,host")]
        kernels: String,
        /// Seconds one boot (or the host run) may take before it is killed.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Test this ws-monitor binary instead of building target/release/ws-monitor.
        #[arg(long, value_name = "PATH")]
        ws_monitor: Option<PathBuf>,
    },
    /// Measure ws-monitor's cost on this machine and print one table (needs root and
    /// Linux 6.6+): live bulk and small-frame traffic over veth, with references.
    Bench {
        /// Seconds each live measurement sends for.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Rounds of the bulk measurements (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Measure this ws-monitor binary instead of building target/release/ws-monitor.
        #[arg(long, value_name = "PATH")]
        ws_monitor: Option<PathBuf>,
    },
    /// The load of `bench` (one side of it).
    #[command(hide = true)]
    BenchPeer {
        #[arg(value_enum)]
        role: PeerRole,
        #[arg(long, default_value = "10.203.0.1")]
        addr: String,
        #[arg(long, default_value_t = 8001)]
        port: u16,
        #[arg(long, value_enum)]
        load: bench::peer::Load,
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 1)]
        conns: usize,
        /// Per second, 0 = unlimited: (small, client) frames over all connections; (bulk,
        /// server) frames; (churn, violate; client) connections.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Run ws-monitor for minutes under mixed live load over veth (bulk, small frames,
    /// connection churn, violators; needs root) and print its memory, CPU, losses and
    /// findings each minute; fails if its RSS keeps growing or it loses data.
    Soak {
        /// Minutes of load (the first is warm-up).
        #[arg(long, default_value_t = 30)]
        minutes: u32,
        /// Seconds in a "minute" (a shorter one for a quick run, e.g. in CI).
        #[arg(long, default_value_t = 60)]
        minute_secs: u64,
        /// Run this ws-monitor binary instead of building target/release/ws-monitor.
        #[arg(long, value_name = "PATH")]
        ws_monitor: Option<PathBuf>,
    },
    /// Print the body of http://ADDR/metrics (soak runs it inside ws-monitor's namespace).
    #[command(hide = true)]
    SoakScrape {
        #[arg(long)]
        addr: String,
    },
    /// Check the dependency tree with cargo-deny (deny.toml): licenses, duplicate
    /// versions and sources, and RustSec advisories where the database can be fetched.
    Deny,
    /// Build the release artifacts: a portable x86_64 binary (glibc 2.17+, cargo zigbuild),
    /// a tarball and a .deb with a systemd unit, in target/dist/. With --check (root):
    /// the glibc floor, and the package installed, verified and capturing live in a
    /// Debian 11 chroot, and the Kubernetes DaemonSet against its schema.
    Dist {
        #[arg(long)]
        check: bool,
    },
    /// The scripted WebSocket peer of `kernels` (one connection on 127.0.0.1:PORT).
    #[command(hide = true)]
    WsPeer {
        #[arg(value_enum)]
        role: PeerRole,
        #[arg(long, default_value_t = 8001)]
        port: u16,
        /// (server) File to create once listening.
        #[arg(long, value_name = "FILE")]
        ready: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PeerRole {
    Server,
    Client,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::Setup { tests } => setup(tests, &[]),
        Task::Run { args } => {
            setup(false, &[])?;
            step("building ws-monitor (release)");
            cargo(&["build", "--release", "--package", "ws-monitor"])?;
            let bin = workspace_root().join("target/release/ws-monitor");
            // Without arguments: the demo, which shows the monitor at work within seconds.
            let args = if args.is_empty() { vec!["demo".into()] } else { args };
            step(&format!("running {} {}", bin.display(), args.join(" ")));
            let status = as_root(&bin.to_string_lossy(), &args)?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { fuzz_seconds, args } => {
            setup(true, &[])?;
            step("style: cargo fmt --check, cargo clippy -D warnings (rustfmt.toml, [workspace.lints])");
            cargo(&["fmt", "--all", "--", "--check"]).context("cargo fmt would change files: run `cargo fmt --all`")?;
            cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "ws-monitor-ebpf",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ])
            .context("clippy found something (see above)")?;
            step("running the test suite");
            // The eBPF crate only builds for the BPF target (ws-monitor's build.rs does that).
            let mut test_args = vec!["test", "--workspace", "--exclude", "ws-monitor-ebpf"];
            test_args.extend(args.iter().map(String::as_str));
            // The BPF tests load programs and create network namespaces: root only.
            let status = if is_root() {
                Command::new(env_cargo()).args(&test_args).current_dir(workspace_root()).status()?
            } else {
                // sudo resets PATH; keep ours so cargo and bpf-linker are found.
                let path = std::env::var("PATH").unwrap_or_default();
                let mut sudo_args = vec!["-E".to_string(), "env".into(), format!("PATH={path}"), env_cargo()];
                sudo_args.extend(test_args.iter().map(|s| s.to_string()));
                Command::new("sudo").args(&sudo_args).current_dir(workspace_root()).status()?
            };
            if !status.success() {
                bail!("tests failed ({status})");
            }
            // The pure core needs no BPF toolchain: its build must not even look for one.
            step("the core's tests without the kernel program (no BPF toolchain)");
            let status = Command::new(env_cargo())
                .args(["test", "--package", "ws-monitor", "--no-default-features", "--lib"])
                .env("WS_MONITOR_BPF_RUSTC", "/nonexistent/rustc")
                .current_dir(workspace_root())
                .status()?;
            if !status.success() {
                bail!("the core's tests without the kernel feature failed ({status})");
            }
            if fuzz_seconds > 0 {
                fuzz::run(&fuzz::TARGETS, (fuzz_seconds / fuzz::TARGETS.len() as u32).max(1))?;
            }
            Ok(())
        }
        Task::Fuzz { minutes, target } => {
            let targets: Vec<&str> = match &target {
                Some(t) => vec![t.as_str()],
                None => fuzz::TARGETS.to_vec(),
            };
            fuzz::run(&targets, minutes.max(1) * 60)
        }
        Task::Kernels { kernels, timeout, ws_monitor } => {
            kernels::run(kernels::Options { kernels, timeout, ws_monitor })
        }
        Task::Bench { secs, rounds, ws_monitor } => {
            setup(true, BENCH_PACKAGES)?;
            bench::run(bench::Options { secs, rounds, ws_monitor })
        }
        Task::BenchPeer { role: PeerRole::Server, port, load, secs, conns, rate, .. } => {
            bench::peer::server(port, load, secs, conns, rate)
        }
        Task::BenchPeer { role: PeerRole::Client, addr, port, load, secs, conns, rate } => {
            bench::peer::client(&addr, port, load, secs, conns, rate)
        }
        Task::Soak { minutes, minute_secs, ws_monitor } => {
            setup(false, SOAK_PACKAGES)?;
            soak::run(soak::Options { minutes, minute_secs, ws_monitor })
        }
        Task::SoakScrape { addr } => {
            print!("{}", soak::scrape(&addr)?);
            Ok(())
        }
        Task::Deny => {
            deny::install()?;
            deny::check()
        }
        Task::Dist { check } => dist::run(&dist::Options { check }),
        Task::WsPeer { role: PeerRole::Server, port, ready } => kernels::peer_server(port, ready.as_deref()),
        Task::WsPeer { role: PeerRole::Client, port, .. } => kernels::peer_client(port),
    }
}

fn setup(tests: bool, extra: &[&str]) -> anyhow::Result<()> {
    let mut packages: Vec<&str> = TOOLCHAIN_PACKAGES.to_vec();
    if tests {
        packages.extend_from_slice(TEST_PACKAGES);
    }
    packages.extend_from_slice(extra);
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !deb_installed(p)).collect();
    if missing.is_empty() {
        step("Debian packages: all present");
    } else {
        step(&format!("installing Debian packages: {}", missing.join(" ")));
        run_root("apt-get", &["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        run_root("apt-get", &args).context(
            "apt-get install failed: rustc-web and llvm-22 come from Debian bookworm-security (or a newer Debian/Ubuntu); check /etc/apt/sources.list",
        )?;
    }
    if bpf_linker_ok() {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: present"));
    } else {
        step(&format!("building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes a few minutes)"));
        let status = Command::new(env_cargo())
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .status()
            .context("running cargo install bpf-linker")?;
        if !status.success() {
            bail!("cargo install bpf-linker failed ({status}); is llvm-22-dev installed?");
        }
    }
    if tests {
        setup_peer_libraries()?;
        deny::install()?;
        style_tools()?;
    }
    Ok(())
}

/// rustfmt and clippy, from rustup, when missing.
fn style_tools() -> anyhow::Result<()> {
    if succeeds(&env_cargo(), &["fmt", "--version"]) && succeeds(&env_cargo(), &["clippy", "--version"]) {
        step("rustfmt, clippy: present");
        return Ok(());
    }
    step("adding rustfmt and clippy with rustup");
    let status =
        Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]).status().context("running rustup")?;
    if !status.success() {
        bail!("rustup component add rustfmt clippy failed ({status})");
    }
    Ok(())
}

/// The ws-monitor binary to run: `given`, or target/release/ws-monitor built here.
fn release_ws_monitor(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => {
            step("building ws-monitor (release)");
            cargo(&["build", "--release", "--locked", "--package", "ws-monitor"])?;
            // Where cargo put it: CARGO_TARGET_DIR (relative to the workspace) or target/.
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| workspace_root().join("target"), |d| workspace_root().join(d));
            target.join("release/ws-monitor")
        }
    };
    std::fs::canonicalize(&path).with_context(|| format!("no ws-monitor binary at {}", path.display()))
}

/// The libraries of the protocol-test peers: Python `websockets` and `aiohttp` (pip) and
/// Node `ws` and socket.io (npm ci from the committed lock file), installed only when missing.
fn setup_peer_libraries() -> anyhow::Result<()> {
    for (package, module) in PY_PACKAGES {
        pip_install(package, module)?;
    }
    let peers = workspace_root().join(NODE_PEERS_DIR);
    if NODE_PACKAGES.iter().all(|p| peers.join("node_modules").join(p).join("package.json").is_file()) {
        step(&format!("node {}: present", NODE_PACKAGES.join(", ")));
    } else {
        if !succeeds("npm", &["--version"]) {
            step("installing Debian package npm");
            run_root("apt-get", &["install", "-y", "-q", "--no-install-recommends", "npm"])
                .context("apt-get install npm failed; install Node.js with npm")?;
        }
        step(&format!("installing node {} with npm ci in {}", NODE_PACKAGES.join(", "), peers.display()));
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&peers)
            .status()
            .context("running npm ci")?;
        if !status.success() {
            bail!("npm ci in {} failed ({status}); package-lock.json pins the peers' packages", peers.display());
        }
    }
    Ok(())
}

/// Installs the Python `package` with pip unless `module` imports already.
fn pip_install(package: &str, module: &str) -> anyhow::Result<()> {
    let import = format!("import {module}");
    if succeeds("python3", &["-c", &import]) {
        step(&format!("python {package}: present"));
        return Ok(());
    }
    step(&format!("installing python {package} with pip"));
    let pip = |extra: &[&str]| -> anyhow::Result<std::process::Output> {
        let mut args = vec!["-m", "pip", "install", "--quiet", package];
        args.extend_from_slice(extra);
        Command::new("python3").args(&args).output().context("running python3 -m pip")
    };
    let mut out = pip(&[])?;
    // A Debian-managed python refuses pip installs (PEP 668) unless told otherwise.
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("externally-managed") {
        out = pip(&["--break-system-packages"])?;
    }
    if !out.status.success() {
        bail!(
            "python3 -m pip install {package} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !succeeds("python3", &["-c", &import]) {
        bail!("{package} was installed but python3 cannot import {module}; is python3 the same interpreter pip used?");
    }
    Ok(())
}

/// Whether `program args` runs and exits 0 (quietly).
fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn as_root(program: &str, args: &[String]) -> anyhow::Result<std::process::ExitStatus> {
    let status = if is_root() {
        Command::new(program).args(args).status()
    } else {
        Command::new("sudo").arg(program).args(args).status()
    };
    status.with_context(|| format!("running {program}"))
}

fn run_root(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut cmd = if is_root() {
        let mut c = Command::new(program);
        c.args(&args);
        c
    } else {
        let mut c = Command::new("sudo");
        c.arg(program).args(&args);
        c
    };
    let status = cmd.env("DEBIAN_FRONTEND", "noninteractive").status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(env_cargo()).args(args).current_dir(workspace_root()).status()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn env_cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

fn step(msg: &str) {
    eprintln!("xtask: {msg}");
}
