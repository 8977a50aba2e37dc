//! `cargo xtask kernels`: ws-monitor on Debian's bullseye (5.10), bookworm (6.1) and trixie
//! (6.12) kernels under QEMU, and on the host kernel in a private network namespace.
//!
//! For each Debian kernel the `linux-image-*-amd64` package that the suite's
//! `linux-image-amd64` depends on is fetched with `apt-get download` (a private sources
//! list and state, the archive URI taken from this machine's own apt sources) and
//! extracted under `target/kernels/LABEL/`. An initramfs gets busybox, the ws-monitor
//! binary, this xtask binary (the scripted WebSocket peer, `xtask ws-peer`), iproute2's
//! `tc` and `ip`, `bpftool`, kmod and the kernel's `net/sched` modules with their
//! dependencies (depmod'ed, so the kernel's request_module loads `sch_ingress` and
//! `cls_bpf` on demand). The guest runs `guest/checks.sh` and prints its facts on the
//! serial console; the host runs the same script natively. This module judges the facts:
//! the exact reports must equal the host kernel's, byte for byte once the timing-dependent
//! fields are dropped, and nothing of ws-monitor's may stay attached where it should not.

pub mod ws_peer;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

pub use ws_peer::{client as peer_client, server as peer_server};

/// Debian packages the matrix needs on the host.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "kmod",
    "iproute2",
    "bpftool",
    "cpio",
    "gzip",
    "libc-bin",
    "debian-archive-keyring",
];
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The Debian kernels: label (also the `--kernels` name) and suite.
const DEBIAN_KERNELS: &[(&str, &str)] = &[("5.10", "bullseye"), ("6.1", "bookworm"), ("6.12", "trixie")];
const ALL_LABELS: &str = "5.10,6.1,6.12,host";
/// The port of the scripted exchange (the guest script uses the same).
const PORT: u16 = 8001;
const INIT_SH: &str = include_str!("../guest/init.sh");
const CHECKS_SH: &str = include_str!("../guest/checks.sh");
/// Names busybox must not provide: the real tools are used (the kernel execs /sbin/modprobe).
const REAL_TOOLS: &[&str] = &["tc", "ip", "modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo"];
/// kmod's tools, all links to the one binary.
const KMOD_LINKS: &[&str] = &["modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo"];
/// Indexes in the program's COUNTERS map (ws-monitor-common's `Counter` order).
const COUNTER_PACKETS_MATCHED: u64 = 1;
const COUNTER_BYTES_COPIED: u64 = 2;

pub struct Options {
    /// Comma-separated labels: 5.10, 6.1, 6.12, host.
    pub kernels: String,
    /// Seconds for one boot (or the host run) from start to power-off.
    pub timeout: u64,
    /// Test this binary instead of building target/release/ws-monitor.
    pub ws_monitor: Option<PathBuf>,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let labels: Vec<String> = opts.kernels.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    for label in &labels {
        if label != "host" && !DEBIAN_KERNELS.iter().any(|(l, _)| l == label) {
            bail!("unknown kernel {label:?} in --kernels: choose from {ALL_LABELS}");
        }
    }
    if labels.is_empty() {
        bail!("--kernels is empty: choose from {ALL_LABELS}");
    }
    if !crate::is_root() {
        bail!("cargo xtask kernels needs root (apt-get, network namespaces, BPF): run it with sudo");
    }
    install_packages()?;
    let ws_monitor = match opts.ws_monitor {
        Some(p) => p,
        None => {
            crate::step("building ws-monitor (release)");
            crate::cargo(&["build", "--release", "--package", "ws-monitor"])?;
            crate::workspace_root().join("target/release/ws-monitor")
        }
    };
    let ws_monitor =
        fs::canonicalize(&ws_monitor).with_context(|| format!("no ws-monitor binary at {}", ws_monitor.display()))?;
    let xtask = std::env::current_exe().context("finding the xtask binary (the WebSocket peer)")?;
    let dir = crate::workspace_root().join("target/kernels");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let timeout = Duration::from_secs(opts.timeout);

    // The host kernel's reports are the reference, so it runs whether or not it is listed.
    let tools = HostTools::find()?;
    crate::step("host kernel: running the checks in a private network namespace");
    let host = run_host(&dir.join("host"), &ws_monitor, &xtask, &tools, timeout);
    let mut runs = Vec::new();
    for label in &labels {
        if label == "host" {
            continue;
        }
        let suite = DEBIAN_KERNELS.iter().find(|(l, _)| l == label).map(|(_, s)| *s).unwrap_or_default();
        let kdir = dir.join(label);
        let started = Instant::now();
        let run = prepare_kernel(label, suite, &kdir)
            .and_then(|kernel| {
                crate::step(&format!("{label}: building the initramfs for {}", kernel.release));
                let initrd = build_initramfs(&kernel, &kdir, &ws_monitor, &xtask, &tools)?;
                crate::step(&format!("{label}: booting {} under QEMU (TCG)", kernel.release));
                let run = boot(label, &kernel, &initrd, &kdir, timeout);
                // A panic before /init ran has nothing to do with ws-monitor (TCG has been
                // seen to trip over the kernel patching its own code): one more boot.
                if run.markers.results.is_empty() && run.error.as_deref().is_some_and(|e| e.contains("Kernel panic")) {
                    crate::step(&format!(
                        "{label}: the kernel panicked before /init ({}); booting once more",
                        run.error.as_deref().unwrap_or("")
                    ));
                    return Ok(boot(label, &kernel, &initrd, &kdir, timeout));
                }
                Ok(run)
            })
            .unwrap_or_else(|e| Run::failed(label, &format!("{e:#}"), started));
        runs.push(run);
    }
    let mut all = Vec::new();
    if labels.iter().any(|l| l == "host") {
        all.push(&host);
    }
    // Table order: as DEBIAN_KERNELS, then host.
    let mut debian: Vec<&Run> = runs.iter().collect();
    debian.sort_by_key(|r| DEBIAN_KERNELS.iter().position(|(l, _)| *l == r.label));
    all.splice(0..0, debian);

    let reference =
        host.markers.result("a.report").and_then(|r| serde_json::from_str::<Value>(r).ok()).map(|r| normalise(&r));
    let rows: Vec<Row> = all.iter().map(|run| evaluate(run, reference.as_ref())).collect();
    let table = table(&rows);
    println!("\n{table}");
    let md = markdown(&rows);
    let md_path = dir.join("matrix.md");
    fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    crate::step(&format!(
        "markdown table in {}; console logs in {}/LABEL/console.log",
        md_path.display(),
        dir.display()
    ));
    let failures: Vec<&String> = rows.iter().flat_map(|r| r.failures.iter()).collect();
    if !labels.iter().any(|l| l == "host") && reference.is_none() {
        eprintln!("xtask: the host reference run failed: {}", host.error.as_deref().unwrap_or("no report from step a"));
    }
    if failures.is_empty() {
        crate::step("kernel matrix: every check passed");
        Ok(())
    } else {
        for f in &failures {
            eprintln!("FAIL {f}");
        }
        bail!("{} check(s) of the kernel matrix failed", failures.len())
    }
}

// ---------------------------------------------------------------------------------------
// Packages and host tools

fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !crate::deb_installed(p)).collect();
    if missing.is_empty() {
        crate::step("kernel matrix packages: all present");
        return Ok(());
    }
    crate::step(&format!("installing Debian packages: {}", missing.join(" ")));
    crate::run_root("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    crate::run_root("apt-get", &args).context("apt-get install of the kernel matrix packages failed")
}

/// The host binaries that go into the initramfs (and that the host run uses).
struct HostTools {
    tc: PathBuf,
    ip: PathBuf,
    bpftool: PathBuf,
    kmod: PathBuf,
    busybox: PathBuf,
}

impl HostTools {
    fn find() -> anyhow::Result<HostTools> {
        let find = |name: &str, dirs: &[&str], package: &str| -> anyhow::Result<PathBuf> {
            dirs.iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file()).with_context(|| {
                format!("{name} not found in {}: install the Debian package {package}", dirs.join(" "))
            })
        };
        Ok(HostTools {
            tc: find("tc", &["/usr/sbin", "/sbin"], "iproute2")?,
            ip: find("ip", &["/usr/sbin", "/sbin", "/usr/bin", "/bin"], "iproute2")?,
            bpftool: find("bpftool", &["/usr/sbin", "/sbin"], "bpftool")?,
            kmod: find("kmod", &["/usr/bin", "/bin"], "kmod")?,
            busybox: find("busybox", &["/usr/bin", "/bin"], "busybox-static")?,
        })
    }
}

/// Runs a command, returning its stdout; on failure an error with its stderr's last line.
fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        bail!("{what} failed ({}): {last}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------
// Fetching Debian kernels

/// An extracted kernel package.
struct Kernel {
    /// `uname -r` of the kernel, e.g. 6.1.0-50-amd64.
    release: String,
    vmlinuz: PathBuf,
    /// The extracted package's lib/modules/RELEASE, depmod'ed.
    modules: PathBuf,
}

/// One apt source entry: URI and suites.
#[derive(Debug, PartialEq)]
struct AptSource {
    uri: String,
    suites: Vec<String>,
}

/// The `deb` entries of one-line `sources.list` text.
fn parse_one_line_sources(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut rest = match line.strip_prefix("deb ").or_else(|| line.strip_prefix("deb\t")) {
            Some(r) => r.trim(),
            None => continue,
        };
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(AptSource { uri: uri.to_string(), suites: vec![suite.to_string()] });
        }
    }
    out
}

/// The `deb` entries of deb822 `.sources` text.
fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    let stanzas = text.split("\n\n").flat_map(|s| s.split("\r\n\r\n"));
    for stanza in stanzas {
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        let mut last: Option<String> = None;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(k) = &last {
                    let v = fields.entry(k.clone()).or_default();
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                fields.insert(k.clone(), v.trim().to_string());
                last = Some(k);
            }
        }
        let types = fields.get("types").map(String::as_str).unwrap_or("");
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        if fields.get("enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let suites: Vec<String> =
            fields.get("suites").map(|s| s.split_whitespace().map(String::from).collect()).unwrap_or_default();
        for uri in fields.get("uris").map(String::as_str).unwrap_or("").split_whitespace() {
            out.push(AptSource { uri: uri.to_string(), suites: suites.clone() });
        }
    }
    out
}

/// The URI serving the main Debian archive: the first entry with a suite that is a Debian
/// release (or its -updates), not -security, preferring this machine's own release.
fn pick_archive(sources: &[AptSource], codename: Option<&str>) -> Option<String> {
    const RELEASES: &[&str] =
        &["buster", "bullseye", "bookworm", "trixie", "forky", "sid", "stable", "testing", "unstable"];
    let main_suite = |s: &str| {
        let base = s.strip_suffix("-updates").unwrap_or(s);
        RELEASES.contains(&base) || Some(base) == codename
    };
    let usable = |src: &&AptSource| {
        src.uri.starts_with("http://") || src.uri.starts_with("https://") || src.uri.starts_with("file:")
    };
    let own = codename.and_then(|c| {
        sources.iter().filter(usable).find(|src| src.suites.iter().any(|s| s == c || *s == format!("{c}-updates")))
    });
    own.or_else(|| sources.iter().filter(usable).find(|src| src.suites.iter().any(|s| main_suite(s))))
        .map(|src| src.uri.trim_end_matches('/').to_string())
}

/// The Debian archive URI from this machine's apt configuration.
pub(crate) fn archive_uri() -> anyhow::Result<String> {
    let mut sources = Vec::new();
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        sources.extend(parse_one_line_sources(&text));
    }
    let mut entries: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        let Ok(text) = fs::read_to_string(&path) else { continue };
        match path.extension().and_then(|e| e.to_str()) {
            Some("list") => sources.extend(parse_one_line_sources(&text)),
            Some("sources") => sources.extend(parse_deb822_sources(&text)),
            _ => {}
        }
    }
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename =
        os_release.lines().find_map(|l| l.strip_prefix("VERSION_CODENAME=")).map(|c| c.trim_matches('"').to_string());
    pick_archive(&sources, codename.as_deref()).context(
        "no apt source for the main Debian archive in /etc/apt/sources.list or /etc/apt/sources.list.d (a `deb` entry for bookworm or another Debian release): the kernel packages come from there",
    )
}

/// The package `linux-image-amd64` depends on, from `apt-cache depends` output.
fn versioned_image(depends: &str) -> Option<String> {
    depends.lines().find_map(|l| {
        let name = l.trim().strip_prefix("Depends:")?.trim();
        let name = name.trim_start_matches('|').trim();
        name.starts_with("linux-image-").then(|| name.split_whitespace().next().unwrap_or(name).to_string())
    })
}

/// Fetches and extracts the suite's kernel (cached in `kdir`).
fn prepare_kernel(label: &str, suite: &str, kdir: &Path) -> anyhow::Result<Kernel> {
    let marker = kdir.join("kernel.txt");
    let root = kdir.join("root");
    if let Ok(text) = fs::read_to_string(&marker) {
        if let Some(kernel) = extracted(&root, text.trim()) {
            crate::step(&format!("{label}: cached {} ({})", kernel.release, marker.display()));
            return Ok(kernel);
        }
    }
    let apt = kdir.join("apt");
    for d in ["lists/partial", "cache/archives/partial", "debs"] {
        fs::create_dir_all(apt.join(d))?;
    }
    let uri = archive_uri()?;
    if !Path::new(KEYRING).is_file() {
        bail!("{KEYRING} is missing: install debian-archive-keyring");
    }
    let sources = apt.join("sources.list");
    fs::write(&sources, format!("deb [signed-by={KEYRING} targets=Packages] {uri} {suite} main\n"))?;
    let status = apt.join("status");
    fs::write(&status, "")?;
    let opts: Vec<String> = vec![
        format!("-oDir::Etc::SourceList={}", sources.display()),
        "-oDir::Etc::SourceParts=/nonexistent".into(),
        format!("-oDir::State::Lists={}", apt.join("lists").display()),
        format!("-oDir::Cache={}", apt.join("cache").display()),
        format!("-oDir::State::status={}", status.display()),
        "-oAPT::Sandbox::User=root".into(),
        "-oAcquire::Languages=none".into(),
        "-oAPT::Architectures::=amd64".into(),
        "-q".into(),
    ];
    crate::step(&format!("{label}: apt-get update of {suite} from {uri}"));
    let update = Command::new("apt-get")
        .args(&opts)
        .arg("update")
        .stdin(Stdio::null())
        .output()
        .context("running apt-get update")?;
    let text = format!("{}{}", String::from_utf8_lossy(&update.stdout), String::from_utf8_lossy(&update.stderr));
    if text.contains("NO_PUBKEY") || text.contains("not signed") || text.contains("is not signed") {
        bail!(
            "{KEYRING} has no key for {suite} (apt-get update: {}): upgrade debian-archive-keyring",
            last_line_with(&text, &["NO_PUBKEY", "signed"])
        );
    }
    if !update.status.success() || text.contains("\nE: ") || text.starts_with("E: ") {
        bail!("apt-get update of {suite} from {uri} failed: {}", last_line_with(&text, &["E: ", "Err"]));
    }
    let depends = output(
        Command::new("apt-cache").args(&opts).args(["depends", "linux-image-amd64"]),
        "apt-cache depends linux-image-amd64",
    )?;
    let package = versioned_image(&depends)
        .with_context(|| format!("linux-image-amd64 in {suite} depends on no linux-image package"))?;
    let debs = apt.join("debs");
    let existing = |debs: &Path| -> Option<PathBuf> {
        fs::read_dir(debs).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
    };
    let deb = match existing(&debs) {
        Some(d) => d,
        None => {
            crate::step(&format!("{label}: apt-get download {package}"));
            output(
                Command::new("apt-get").args(&opts).args(["download", &package]).current_dir(&debs),
                &format!("apt-get download {package}"),
            )?;
            existing(&debs).with_context(|| format!("apt-get download {package} left no .deb in {}", debs.display()))?
        }
    };
    crate::step(&format!("{label}: extracting {}", deb.display()));
    let _ = fs::remove_dir_all(&root);
    output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root), "dpkg-deb -x")?;
    // Merged-/usr packages (trixie) ship usr/lib/modules; depmod -b looks in lib/modules.
    if !root.join("lib").exists() && root.join("usr/lib").is_dir() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    }
    let release = release_of(&root).with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
    output(Command::new("depmod").arg("-b").arg(&root).arg(&release), "depmod on the extracted kernel")?;
    fs::write(&marker, format!("{release}\n"))?;
    extracted(&root, &release).with_context(|| format!("{} has no vmlinuz or modules for {release}", deb.display()))
}

fn last_line_with(text: &str, needles: &[&str]) -> String {
    text.lines()
        .rev()
        .find(|l| needles.iter().any(|n| l.contains(n)))
        .or_else(|| text.lines().rev().find(|l| !l.trim().is_empty()))
        .unwrap_or("")
        .trim()
        .to_string()
}

fn release_of(root: &Path) -> Option<String> {
    fs::read_dir(root.join("boot"))
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| e.file_name().to_str()?.strip_prefix("vmlinuz-").map(String::from))
}

fn extracted(root: &Path, release: &str) -> Option<Kernel> {
    let vmlinuz = root.join(format!("boot/vmlinuz-{release}"));
    let modules = root.join(format!("lib/modules/{release}"));
    (vmlinuz.is_file() && modules.join("modules.dep").is_file()).then(|| Kernel {
        release: release.to_string(),
        vmlinuz,
        modules,
    })
}

// ---------------------------------------------------------------------------------------
// The initramfs

/// Module files (relative to lib/modules/RELEASE) of net/sched and everything they need,
/// from modules.dep (which lists every module's dependencies, transitively).
fn module_closure(modules_dep: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in modules_dep.lines() {
        let Some((module, deps)) = line.split_once(':') else { continue };
        if module.starts_with("kernel/net/sched/") {
            out.insert(module.trim().to_string());
            out.extend(deps.split_whitespace().map(String::from));
        }
    }
    out
}

/// The libraries `ldd` names for a binary, with the dynamic loader.
fn ldd_paths(ldd_output: &str) -> Vec<PathBuf> {
    ldd_output
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => l,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `src` (following links) to `root` + `dest`, keeping the mode.
fn install(src: &Path, root: &Path, dest: &str) -> anyhow::Result<()> {
    let target = root.join(dest.trim_start_matches('/'));
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(src, &target).with_context(|| format!("copying {} into the initramfs", src.display()))?;
    Ok(())
}

fn install_with_libs(src: &Path, root: &Path, dest: &str, libs: &mut BTreeSet<PathBuf>) -> anyhow::Result<()> {
    install(src, root, dest)?;
    let ldd = output(Command::new("ldd").arg(src), &format!("ldd {}", src.display()))?;
    libs.extend(ldd_paths(&ldd));
    Ok(())
}

fn build_initramfs(
    kernel: &Kernel,
    kdir: &Path,
    ws_monitor: &Path,
    xtask: &Path,
    tools: &HostTools,
) -> anyhow::Result<PathBuf> {
    let root = kdir.join("initramfs");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "proc", "sys", "dev", "tmp", "run", "etc"] {
        fs::create_dir_all(root.join(d))?;
    }
    use std::os::unix::fs::{symlink, PermissionsExt as _};
    for (name, text) in [("init", INIT_SH), ("checks.sh", CHECKS_SH)] {
        let path = root.join(name);
        fs::write(&path, text)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    // busybox with its applet links, except where the real tool is used.
    install(&tools.busybox, &root, "/bin/busybox")?;
    let applets = output(Command::new(&tools.busybox).arg("--list"), "busybox --list")?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox") {
        if !REAL_TOOLS.contains(&applet) {
            symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    let mut libs = BTreeSet::new();
    install_with_libs(&tools.tc, &root, "/usr/sbin/tc", &mut libs)?;
    install_with_libs(&tools.ip, &root, "/usr/sbin/ip", &mut libs)?;
    install_with_libs(&tools.bpftool, &root, "/usr/sbin/bpftool", &mut libs)?;
    install_with_libs(&tools.kmod, &root, "/usr/bin/kmod", &mut libs)?;
    for link in KMOD_LINKS {
        symlink("/usr/bin/kmod", root.join("sbin").join(link))?;
    }
    install_with_libs(ws_monitor, &root, "/usr/local/bin/ws-monitor", &mut libs)?;
    install_with_libs(xtask, &root, "/usr/local/bin/xtask", &mut libs)?;
    for lib in &libs {
        install(lib, &root, &lib.to_string_lossy())?;
    }
    // The kernel's modules: net/sched and what it depends on, then depmod for modprobe.
    let modules_dep = fs::read_to_string(kernel.modules.join("modules.dep")).context("reading modules.dep")?;
    let dest = format!("/lib/modules/{}", kernel.release);
    for module in module_closure(&modules_dep) {
        install(&kernel.modules.join(&module), &root, &format!("{dest}/{module}"))?;
    }
    for file in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        if kernel.modules.join(file).is_file() {
            install(&kernel.modules.join(file), &root, &format!("{dest}/{file}"))?;
        }
    }
    output(Command::new("depmod").arg("-b").arg(&root).arg(&kernel.release), "depmod in the initramfs")?;

    let initrd = kdir.join("initrd.img");
    let script = format!(
        "cd '{}' && find . -print0 | cpio --null --create --format=newc --owner=0:0 --quiet | gzip -1 > '{}'",
        root.display(),
        initrd.display()
    );
    output(
        Command::new("bash").args(["-o", "pipefail", "-c", &script]),
        "building the initramfs (find | cpio | gzip)",
    )?;
    Ok(initrd)
}

// ---------------------------------------------------------------------------------------
// Running the checks

/// The facts one kernel's run printed.
#[derive(Default)]
struct Markers {
    results: BTreeMap<String, String>,
    lines: BTreeMap<String, Vec<String>>,
    done: bool,
}

impl Markers {
    fn parse(console: &str) -> Markers {
        let mut m = Markers::default();
        for line in console.lines() {
            let line = line.trim_end_matches('\r');
            // A marker may follow other console output on the same line.
            let Some(start) = line.find("WSM-") else { continue };
            let line = &line[start..];
            if line.starts_with("WSM-DONE") {
                m.done = true;
            } else if let Some(rest) = line.strip_prefix("WSM-RESULT ") {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                m.results.insert(k.to_string(), v.to_string());
            } else if let Some(rest) = line.strip_prefix("WSM-LINE ") {
                let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
                m.lines.entry(k.to_string()).or_default().push(v.to_string());
            }
        }
        m
    }

    fn result(&self, key: &str) -> Option<&str> {
        self.results.get(key).map(String::as_str)
    }

    fn lines(&self, key: &str) -> &[String] {
        self.lines.get(key).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// One kernel's run.
struct Run {
    label: String,
    markers: Markers,
    seconds: f64,
    /// Why the run itself failed (no boot, timeout, checks cut short).
    error: Option<String>,
}

impl Run {
    fn failed(label: &str, error: &str, started: Instant) -> Run {
        Run {
            label: label.to_string(),
            markers: Markers::default(),
            seconds: started.elapsed().as_secs_f64(),
            error: Some(error.to_string()),
        }
    }
}

/// Waits for a child until `timeout`; kills it (by its PID) when the time is up.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            child.kill().with_context(|| format!("killing PID {}", child.id()))?;
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn boot(label: &str, kernel: &Kernel, initrd: &Path, kdir: &Path, timeout: Duration) -> Run {
    let started = Instant::now();
    let log = kdir.join("console.log");
    let result = (|| -> anyhow::Result<Option<String>> {
        let console = fs::File::create(&log)?;
        let qemu_err = kdir.join("qemu.stderr");
        let mut child = Command::new("qemu-system-x86_64")
            // Single-threaded TCG: with one host thread per vCPU, QEMU 7.2 has let a
            // 6.12 guest die at boot on code it was patching (int3 in sched_clock_cpu).
            .args([
                "-accel",
                "tcg,thread=single",
                "-m",
                "1024",
                "-smp",
                "2",
                "-nographic",
                "-nic",
                "none",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&kernel.vmlinuz)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(fs::File::create(&qemu_err)?)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let pid = child.id();
        match wait_with_timeout(&mut child, timeout)? {
            None => Ok(Some(format!(
                "QEMU did not power off within {} s (killed PID {pid}); see {}",
                timeout.as_secs(),
                log.display()
            ))),
            Some(status) if !status.success() => {
                let err = fs::read_to_string(&qemu_err).unwrap_or_default();
                Ok(Some(format!("QEMU exited with {status}: {}", last_line_with(&err, &["qemu"]))))
            }
            Some(_) => Ok(None),
        }
    })();
    let mut console = String::new();
    if let Ok(mut f) = fs::File::open(&log) {
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        console = String::from_utf8_lossy(&bytes).into_owned();
    }
    let markers = Markers::parse(&console);
    let mut error = match result {
        Ok(e) => e,
        Err(e) => Some(format!("{e:#}")),
    };
    if error.is_none() && !markers.done {
        let panic =
            console.lines().find(|l| l.contains("Kernel panic")).map(|l| format!(": {}", l.trim())).unwrap_or_default();
        error = Some(format!("the guest powered off before the checks finished{panic}; see {}", log.display()));
    }
    Run { label: label.to_string(), markers, seconds: started.elapsed().as_secs_f64(), error }
}

/// Kills (SIGKILL) the still-running processes whose PIDs are listed in `pids`, if they
/// still run one of `programs` (a PID may have been reused by then).
fn kill_listed(pids: &Path, programs: &[&Path]) {
    let Ok(text) = fs::read_to_string(pids) else { return };
    for pid in text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
        let exe = fs::read_link(format!("/proc/{pid}/exe")).ok();
        if exe.as_deref().is_some_and(|e| programs.contains(&e)) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// Deletes the network namespace when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run_host(hdir: &Path, ws_monitor: &Path, xtask: &Path, tools: &HostTools, timeout: Duration) -> Run {
    let started = Instant::now();
    let log = hdir.join("console.log");
    let result = (|| -> anyhow::Result<Option<String>> {
        let scratch = hdir.join("scratch");
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch)?;
        let script = hdir.join("checks.sh");
        fs::write(&script, CHECKS_SH)?;
        let ns = Netns(format!("wsm-kernels-{}", std::process::id()));
        output(Command::new(&tools.ip).args(["netns", "add", &ns.0]), "ip netns add")?;
        output(
            Command::new(&tools.ip).args(["-n", &ns.0, "link", "set", "lo", "up"]),
            "ip link set lo up in the namespace",
        )?;
        let console = fs::File::create(&log)?;
        let mut child = Command::new(&tools.ip)
            .args(["netns", "exec", &ns.0, "sh"])
            .arg(&script)
            .env("WSM", ws_monitor)
            .env("PEER", format!("{} ws-peer", xtask.display()))
            .env("TC", &tools.tc)
            .env("BPFTOOL", &tools.bpftool)
            .env("SCRATCH", &scratch)
            .stdin(Stdio::null())
            .stdout(console.try_clone()?)
            .stderr(console)
            .spawn()
            .context("starting the checks in the network namespace")?;
        let pid = child.id();
        let status = wait_with_timeout(&mut child, timeout)?;
        // Whatever the script started and left running (it was cut short) goes too.
        kill_listed(&scratch.join("pids"), &[ws_monitor, xtask]);
        match status {
            None => Ok(Some(format!(
                "the host checks did not finish within {} s (killed PID {pid}); see {}",
                timeout.as_secs(),
                log.display()
            ))),
            Some(_) => Ok(None),
        }
    })();
    let console = fs::read(&log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let markers = Markers::parse(&console);
    let mut error = match result {
        Ok(e) => e,
        Err(e) => Some(format!("{e:#}")),
    };
    if error.is_none() && !markers.done {
        error = Some(format!("the host checks stopped before the end; see {}", log.display()));
    }
    Run { label: "host".into(), markers, seconds: started.elapsed().as_secs_f64(), error }
}

mod judge;
use judge::*;

#[cfg(test)]
mod tests;
