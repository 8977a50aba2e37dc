//! `cargo xtask dist [--check]`: the release artifacts, and with `--check` proof that they
//! work where production hosts are.
//!
//! The binary is built with `cargo zigbuild` (zig from the `ziglang` package on PyPI) for
//! glibc 2.17, so one binary per architecture (x86_64, aarch64) runs on every
//! distribution from RHEL 7 on; the kernel program is embedded as always. For each:
//!
//! * `target/dist/ws-monitor-VERSION-ARCH-linux-gnu.tar.gz`: the binary, the man page,
//!   shell completions, README, licence notice, and `deploy/` (systemd unit and defaults,
//!   Prometheus scrape configuration, Kubernetes DaemonSet and Dockerfile, Grafana
//!   dashboard);
//! * `target/dist/ws-monitor_VERSION_DEBARCH.deb`: the same installed where Debian puts
//!   them, with `ws-monitor.service` (not enabled: the interfaces to watch are set first in
//!   `/etc/default/ws-monitor`).
//!
//! Every binary is checked for its architecture and for no glibc symbol version above
//! 2.17 (`readelf`). `--check` then tries the x86_64 package in a Debian 11 userland (debootstrap bullseye, glibc 2.31, kept under
//! `target/dist/bullseye`) where the package installs, its files are in place, its unit
//! passes `systemd-analyze verify`, and the installed binary captures a scripted
//! WebSocket exchange live (in a private network namespace, on its loopback) and reports it
//! exactly; and the Kubernetes DaemonSet against the Kubernetes schema
//! (`kubernetes-validate` from PyPI).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::{cargo, pip_install, step, workspace_root};

pub struct Options {
    pub check: bool,
}

/// Debian packages `dist` needs: readelf, the chroot, `systemd-analyze`, network
/// namespaces, and the archive's keys.
pub const PACKAGES: &[&str] = &["binutils", "debootstrap", "debian-archive-keyring", "systemd", "iproute2", "xz-utils"];
/// The architectures built: Rust's, the ELF machine `readelf` names, Debian's.
struct Arch {
    name: &'static str,
    target: &'static str,
    machine: &'static str,
    deb: &'static str,
}
const ARCHES: [Arch; 2] = [
    Arch { name: "x86_64", target: "x86_64-unknown-linux-gnu", machine: "Advanced Micro Devices X86-64", deb: "amd64" },
    Arch { name: "aarch64", target: "aarch64-unknown-linux-gnu", machine: "AArch64", deb: "arm64" },
];
/// The glibc every binary is built for.
const GLIBC: (u32, u32) = (2, 17);
/// The zig that links it (PyPI), and cargo-zigbuild (crates.io).
const ZIGLANG: (&str, &str) = ("ziglang==0.17.1", "ziglang");
const ZIGBUILD_VERSION: &str = "0.24.1";
/// The Kubernetes schema checker (PyPI), and the Kubernetes version to check against.
const KUBE_VALIDATE: (&str, &str) = ("kubernetes-validate==1.37.0", "kubernetes_validate");
const KUBE_VERSION: &str = "1.33.0";
/// The Debian 11 userland the package is tried in.
const SUITE: &str = "bullseye";
/// Port of the scripted exchange inside the chroot's network namespace.
const PORT: u16 = 8001;

pub fn run(opts: &Options) -> anyhow::Result<()> {
    crate::setup(false, PACKAGES)?;
    ensure_zig()?;
    let root = workspace_root();
    let version = version(&root)?;
    let dist = target_dir(&root).join("dist");
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    let mut artifacts = Vec::new();
    let binaries: Vec<PathBuf> = ARCHES.iter().map(|arch| build(&root, arch)).collect::<anyhow::Result<_>>()?;
    // The man page and completions come from running a binary: the host's (the first).
    let docs = generated(&binaries[0])?;
    for (arch, binary) in ARCHES.iter().zip(&binaries) {
        artifacts.push(binary.clone());
        artifacts.push(tarball(&root, binary, &dist, &version, arch, &docs)?);
        artifacts.push(deb(&root, binary, &dist, &version, arch, &docs)?);
    }
    for artifact in &artifacts {
        let size = fs::metadata(artifact).map(|m| m.len()).unwrap_or(0);
        println!("{:>10}  {}", format!("{:.1} MiB", size as f64 / (1 << 20) as f64), artifact.display());
    }
    if opts.check {
        let deb = dist.join(format!("ws-monitor_{version}_{}.deb", ARCHES[0].deb));
        check(&root, &dist, &deb, &version)?;
    }
    Ok(())
}

/// Builds the binary for `arch` (its Rust target added with rustup when missing) and
/// checks its machine and glibc floor.
fn build(root: &Path, arch: &Arch) -> anyhow::Result<PathBuf> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == arch.target) {
        step(&format!("adding the Rust target {}", arch.target));
        sh("rustup", &["target", "add", arch.target])?;
    }
    step(&format!("building ws-monitor for {} with glibc {}.{} (cargo zigbuild)", arch.target, GLIBC.0, GLIBC.1));
    let target = format!("{}.{}.{}", arch.target, GLIBC.0, GLIBC.1);
    cargo(&["zigbuild", "--release", "--locked", "--package", "ws-monitor", "--target", &target])?;
    let binary = target_dir(root).join(arch.target).join("release/ws-monitor");
    let header = sh("readelf", &["-h", &binary.to_string_lossy()])?;
    if !header.lines().any(|l| l.trim_start().starts_with("Machine:") && l.contains(arch.machine)) {
        bail!("{} is not an {} binary:\n{header}", binary.display(), arch.name);
    }
    let symbols = sh("readelf", &["-W", "--dyn-syms", &binary.to_string_lossy()])?;
    let newest = glibc_versions(&symbols).into_iter().max().unwrap_or((0, 0));
    if newest > GLIBC {
        bail!(
            "{} needs GLIBC_{}.{}, above {}.{}: a dependency links a newer symbol",
            binary.display(),
            newest.0,
            newest.1,
            GLIBC.0,
            GLIBC.1
        );
    }
    step(&format!("{}: {} ELF, newest glibc symbol version GLIBC_{}.{}", arch.name, arch.machine, newest.0, newest.1));
    Ok(binary)
}

/// zig (PyPI `ziglang`, which cargo-zigbuild finds through `python3 -m ziglang`) and
/// cargo-zigbuild, installed when missing.
fn ensure_zig() -> anyhow::Result<()> {
    pip_install(ZIGLANG.0, ZIGLANG.1)?;
    let has = Command::new("cargo-zigbuild")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(ZIGBUILD_VERSION));
    if has {
        step(&format!("cargo-zigbuild {ZIGBUILD_VERSION}: present"));
        return Ok(());
    }
    step(&format!("installing cargo-zigbuild {ZIGBUILD_VERSION}"));
    cargo(&["install", "cargo-zigbuild", "--locked", "--version", ZIGBUILD_VERSION])
}

fn version(root: &Path) -> anyhow::Result<String> {
    let toml = fs::read_to_string(root.join("Cargo.toml")).context("reading Cargo.toml")?;
    toml.lines()
        .find_map(|l| l.trim().strip_prefix("version = \"").and_then(|v| v.strip_suffix('"')))
        .map(str::to_string)
        .context("no `version = \"...\"` in the workspace Cargo.toml")
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |d| root.join(d))
}

/// Every `GLIBC_x.y[.z]` version named in `readelf --dyn-syms` (or `objdump -T`) output,
/// as (x, y).
fn glibc_versions(text: &str) -> Vec<(u32, u32)> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '@'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .collect()
}

/// Runs `program args`, failing with its stderr.
fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {} failed ({}): {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", path.display()))
}

/// What the binary generates about itself: the man page and completions.
struct Generated {
    man: Vec<u8>,
    completions: Vec<(&'static str, Vec<u8>)>,
}

fn generated(binary: &Path) -> anyhow::Result<Generated> {
    let run = |args: &[&str]| -> anyhow::Result<Vec<u8>> {
        let out = Command::new(binary).args(args).output().with_context(|| format!("running {}", binary.display()))?;
        if !out.status.success() {
            bail!("ws-monitor {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(out.stdout)
    };
    let mut completions = Vec::new();
    for shell in ["bash", "zsh", "fish"] {
        completions.push((shell, run(&["completions", shell])?));
    }
    Ok(Generated { man: run(&["man"])?, completions })
}

const NOTICE: &str = "ws-monitor is licensed under the MIT license or the Apache License, \
version 2.0, at your option (SPDX: MIT OR Apache-2.0). Its eBPF program is GPL-compatible \
as the kernel requires for the helpers it calls.\n";

/// The release tarball.
fn tarball(
    root: &Path,
    binary: &Path,
    dist: &Path,
    version: &str,
    arch: &Arch,
    g: &Generated,
) -> anyhow::Result<PathBuf> {
    let name = format!("ws-monitor-{version}");
    let stage = dist.join("stage").join(arch.name).join(&name);
    let _ = fs::remove_dir_all(&stage);
    write(&stage.join("bin/ws-monitor"), &fs::read(binary).context("reading the binary")?, 0o755)?;
    write(&stage.join("share/man/man8/ws-monitor.8"), &g.man, 0o644)?;
    for (shell, text) in &g.completions {
        write(&stage.join(format!("share/completions/ws-monitor.{shell}")), text, 0o644)?;
    }
    write(&stage.join("README.md"), &fs::read(root.join("README.md"))?, 0o644)?;
    write(&stage.join("LICENSE"), NOTICE.as_bytes(), 0o644)?;
    copy_tree(&root.join("ws-monitor/deploy"), &stage.join("deploy"))?;
    let out = dist.join(format!("ws-monitor-{version}-{}-linux-gnu.tar.gz", arch.name));
    let parent = stage.parent().context("stage has a parent")?;
    sh("tar", &["--owner=0", "--group=0", "-czf", &out.to_string_lossy(), "-C", &parent.to_string_lossy(), &name])?;
    step(&format!("wrote {}", out.display()));
    Ok(out)
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &dest)?;
        } else {
            write(&dest, &fs::read(&path)?, 0o644)?;
        }
    }
    Ok(())
}

/// Files of the `.deb`, by install path (mode 0644 but the binary).
const UNIT_PATH: &str = "lib/systemd/system/ws-monitor.service";
const DEFAULT_PATH: &str = "etc/default/ws-monitor";

/// The Debian package, built with `dpkg-deb`.
fn deb(root: &Path, binary: &Path, dist: &Path, version: &str, arch: &Arch, g: &Generated) -> anyhow::Result<PathBuf> {
    let tree = dist.join("stage").join(arch.name).join("deb");
    let _ = fs::remove_dir_all(&tree);
    let deploy = root.join("ws-monitor/deploy");
    write(&tree.join("usr/bin/ws-monitor"), &fs::read(binary)?, 0o755)?;
    write(&tree.join("usr/share/man/man8/ws-monitor.8.gz"), &gzip(&g.man)?, 0o644)?;
    for (shell, text) in &g.completions {
        let path = match *shell {
            "bash" => "usr/share/bash-completion/completions/ws-monitor",
            "zsh" => "usr/share/zsh/vendor-completions/_ws-monitor",
            _ => "usr/share/fish/vendor_completions.d/ws-monitor.fish",
        };
        write(&tree.join(path), text, 0o644)?;
    }
    write(&tree.join(UNIT_PATH), &fs::read(deploy.join("systemd/ws-monitor.service"))?, 0o644)?;
    write(&tree.join(DEFAULT_PATH), &fs::read(deploy.join("systemd/ws-monitor.default"))?, 0o644)?;
    write(&tree.join("usr/share/doc/ws-monitor/copyright"), NOTICE.as_bytes(), 0o644)?;
    write(&tree.join("usr/share/doc/ws-monitor/README.md.gz"), &gzip(&fs::read(root.join("README.md"))?)?, 0o644)?;
    copy_tree(&deploy, &tree.join("usr/share/doc/ws-monitor/deploy"))?;
    let installed_kib = dir_size(&tree)?.div_ceil(1024);
    let control = format!(
        "Package: ws-monitor\nVersion: {version}\nArchitecture: {}\nMaintainer: ws-monitor developers <ws-monitor@localhost>\n\
         Installed-Size: {installed_kib}\nDepends: libc6 (>= 2.17)\nSection: net\nPriority: optional\n\
         Description: passive WebSocket protocol-violation monitor\n \
         A TC eBPF program hands the TCP payload of the given ports to userspace, which\n \
         rebuilds each connection and checks the HTTP upgrade and every RFC 6455 frame.\n",
        arch.deb
    );
    write(&tree.join("DEBIAN/control"), control.as_bytes(), 0o644)?;
    write(&tree.join("DEBIAN/conffiles"), format!("/{DEFAULT_PATH}\n").as_bytes(), 0o644)?;
    // The unit is installed, not enabled: the interfaces to watch come first.
    let reload =
        "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null || true; fi\n";
    write(&tree.join("DEBIAN/postinst"), reload.as_bytes(), 0o755)?;
    write(&tree.join("DEBIAN/postrm"), reload.as_bytes(), 0o755)?;
    let out = dist.join(format!("ws-monitor_{version}_{}.deb", arch.deb));
    sh("dpkg-deb", &["--root-owner-group", "-Zxz", "--build", &tree.to_string_lossy(), &out.to_string_lossy()])?;
    step(&format!("wrote {}", out.display()));
    Ok(out)
}

fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running gzip")?;
    child.stdin.take().context("gzip stdin")?.write_all(data)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        total += if entry.path().is_dir() { dir_size(&entry.path())? } else { entry.metadata()?.len() };
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------
// --check

fn check(root: &Path, dist: &Path, deb: &Path, version: &str) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("cargo xtask dist --check needs root (debootstrap, chroot, network namespaces): run it with sudo");
    }
    let chroot = bullseye(dist)?;
    install(&chroot, deb, version)?;
    verify_unit(&chroot)?;
    live_capture(&chroot)?;
    validate_daemonset(root)?;
    step(&format!(
        "dist --check: the package installs, verifies and captures live in Debian 11 ({SUITE}, glibc {})",
        chroot_glibc(&chroot)?
    ));
    Ok(())
}

/// A minimal Debian 11 tree with systemd (for `systemd-analyze verify --root`), made
/// once (a marker file says it is complete).
fn bullseye(dist: &Path) -> anyhow::Result<PathBuf> {
    let dir = dist.join(SUITE);
    let done = dir.join(".ws-monitor-complete-systemd");
    if done.is_file() {
        step(&format!("{SUITE} chroot: {} (cached)", dir.display()));
        return Ok(dir);
    }
    let _ = fs::remove_dir_all(&dir);
    let mirror = crate::kernels::archive_uri()?;
    step(&format!("debootstrap {SUITE} from {mirror} into {} (a few minutes)", dir.display()));
    sh("debootstrap", &["--variant=minbase", "--include=systemd", SUITE, &dir.to_string_lossy(), &mirror])?;
    fs::write(&done, b"").context("marking the chroot complete")?;
    Ok(dir)
}

fn chroot(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec![dir.to_str().context("chroot path is UTF-8")?];
    full.extend_from_slice(args);
    sh("chroot", &full)
}

fn chroot_glibc(dir: &Path) -> anyhow::Result<String> {
    let out = chroot(dir, &["dpkg-query", "-W", "-f=${Version}", "libc6"])?;
    Ok(out.trim().to_string())
}

/// Installs the package in the chroot and checks its files and binary.
fn install(dir: &Path, deb: &Path, version: &str) -> anyhow::Result<()> {
    let inside = "/tmp/ws-monitor.deb";
    fs::copy(deb, dir.join(inside.trim_start_matches('/'))).context("copying the package into the chroot")?;
    let _ = chroot(dir, &["dpkg", "--purge", "ws-monitor"]);
    chroot(dir, &["dpkg", "-i", inside])?;
    let listed = chroot(dir, &["dpkg", "-L", "ws-monitor"])?;
    for path in [
        "/usr/bin/ws-monitor",
        "/lib/systemd/system/ws-monitor.service",
        "/etc/default/ws-monitor",
        "/usr/share/man/man8/ws-monitor.8.gz",
        "/usr/share/bash-completion/completions/ws-monitor",
    ] {
        if !listed.lines().any(|l| l == path) || !dir.join(path.trim_start_matches('/')).exists() {
            bail!("the package does not install {path}:\n{listed}");
        }
    }
    let said = chroot(dir, &["/usr/bin/ws-monitor", "--version"])?;
    if !said.contains(version) {
        bail!("ws-monitor --version in the chroot says {said:?}, not {version}");
    }
    step(&format!("installed in {SUITE}: {}", said.trim()));
    Ok(())
}

/// `systemd-analyze verify` on the installed unit, with the chroot as root directory.
fn verify_unit(dir: &Path) -> anyhow::Result<()> {
    let out = Command::new("systemd-analyze")
        .arg(format!("--root={}", dir.display()))
        .args(["verify", "--man=no", "ws-monitor.service"])
        .output()
        .context("running systemd-analyze")?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Complaints about other units (the host's, systemd's own) are not ours.
    let ours: Vec<&str> = said.lines().filter(|l| l.contains("ws-monitor")).collect();
    if !out.status.success() || !ours.is_empty() {
        bail!("systemd-analyze verify ws-monitor.service ({}):\n{said}", out.status);
    }
    step("systemd-analyze verify ws-monitor.service: clean");
    Ok(())
}

/// The installed binary captures the kernel matrix's scripted exchange live inside the
/// chroot: a private network namespace, /proc and /sys mounted in the chroot within it,
/// the peer (this xtask) outside the chroot in the same namespace.
fn live_capture(dir: &Path) -> anyhow::Result<()> {
    let ns = format!("wsm-dist-{}", std::process::id());
    sh("ip", &["netns", "add", &ns])?;
    let result = (|| -> anyhow::Result<()> {
        sh("ip", &["netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        let d = dir.to_string_lossy();
        let script = format!(
            "mount -t proc proc {d}/proc && mount -t sysfs sysfs {d}/sys && \
             exec chroot {d} /usr/bin/ws-monitor --iface lo --port {PORT} --no-tui --json --log-interval 0 --duration 20"
        );
        let mut monitor = Command::new("ip")
            .args(["netns", "exec", &ns, "unshare", "--mount", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ws-monitor in the chroot")?;
        let err = monitor.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut said = Vec::new();
        let start = Instant::now();
        while !said.iter().any(|l: &String| l.contains("capturing TCP port")) {
            match rx.recv_timeout(Duration::from_secs(30).saturating_sub(start.elapsed())) {
                Ok(line) => said.push(line),
                Err(_) => {
                    let _ = monitor.kill();
                    bail!("ws-monitor did not start capturing in the chroot:\n{}", said.join("\n"));
                }
            }
        }
        let xtask = std::env::current_exe().context("the xtask binary")?;
        let ready = std::env::temp_dir().join(format!("{ns}.ready"));
        let _ = fs::remove_file(&ready);
        let port = PORT.to_string();
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&xtask)
            .args(["ws-peer", "server", "--port", &port, "--ready"])
            .arg(&ready)
            .spawn()
            .context("starting the peer server")?;
        while !ready.exists() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let client = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(&xtask)
            .args(["ws-peer", "client", "--port", &port])
            .status();
        let server_ok = server.wait().is_ok_and(|s| s.success());
        if !client.is_ok_and(|s| s.success()) || !server_ok {
            let _ = monitor.kill();
            bail!("the scripted exchange failed (client or server)");
        }
        std::thread::sleep(Duration::from_secs(1));
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(monitor.id() as i32, libc::SIGINT) };
        let out = monitor.wait_with_output().context("waiting for ws-monitor")?;
        let _ = fs::remove_file(&ready);
        if !out.status.success() {
            bail!("ws-monitor in the chroot exited with {}: {}", out.status, said.join("\n"));
        }
        let report: Value = serde_json::from_slice(&out.stdout).context("ws-monitor's JSON report")?;
        let n = |v: &Value| v.as_u64().unwrap_or(u64::MAX);
        let violations: u64 = report["violations"].as_object().map_or(u64::MAX, |v| v.values().map(n).sum());
        // The script: text, binary, ping and close from the client; two texts, a pong and
        // a close from the server.
        let frames =
            |side: &str| report["frames"][side].as_object().map_or(u64::MAX, |f| f.values().map(n).sum::<u64>());
        let exact = n(&report["connections"]) == 1
            && n(&report["upgrades_ok"]) == 1
            && violations == 0
            && report["endings"]["close_handshake"] == 1
            && (frames("client"), frames("server")) == (4, 4);
        if !exact {
            bail!("the report of the scripted exchange in the chroot is not exact: {report}");
        }
        step(&format!("live capture in the {SUITE} chroot: 1 connection, 1 upgrade, 4 + 4 frames, 0 violations, a close handshake"));
        Ok(())
    })();
    let _ = sh("ip", &["netns", "del", &ns]);
    result
}

/// The DaemonSet against the Kubernetes schema (offline: kubernetes-validate carries it).
fn validate_daemonset(root: &Path) -> anyhow::Result<()> {
    pip_install(KUBE_VALIDATE.0, KUBE_VALIDATE.1)?;
    let manifest = root.join("ws-monitor/deploy/kubernetes/daemonset.yaml");
    let m = manifest.to_string_lossy();
    let out = sh("python3", &["-m", "kubernetes_validate", "--strict", "--kubernetes-version", KUBE_VERSION, &m])?;
    step(&format!(
        "kubernetes-validate --strict (Kubernetes {KUBE_VERSION}): {}",
        out.lines().next().unwrap_or("ok").trim()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_glibc_version_in_objdump_output() {
        let text = "0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.2.5) memcpy\n\
                    0000000000000000      DF *UND*  0000000000000000 (GLIBC_2.17) clock_gettime\n\
                    0000000000000000  w   DF *UND*  0000000000000000 (GLIBC_2.34) __libc_start_main\n";
        assert_eq!(glibc_versions(text).into_iter().max(), Some((2, 34)));
        assert_eq!(glibc_versions("no versions here").into_iter().max(), None);
        let readelf = "     5: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND memcpy@GLIBC_2.14 (4)\n\
                       6: 0000000000000000     0 FUNC    WEAK   DEFAULT  UND getrandom@GLIBC_2.25 (7)\n";
        assert_eq!(glibc_versions(readelf).into_iter().max(), Some((2, 25)));
    }
}
