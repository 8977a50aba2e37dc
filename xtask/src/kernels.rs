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

// ---------------------------------------------------------------------------------------
// Judging

/// The report without what depends on timing, on the kernel or on the machine: the
/// kernel counters, the attach details and the privileges kept (both judged on their
/// own), the monitor's own memory, the default memory limit (an eighth of the machine's
/// memory at most), and the packet count (`capture.packets`, `reassembly.segments`).
fn normalise(report: &Value) -> Value {
    let mut r = report.clone();
    if let Some(obj) = r.as_object_mut() {
        obj.remove("kernel");
        obj.remove("attach");
        obj.remove("privileges");
        obj.remove("peak_rss_bytes");
        if let Some(capture) = obj.get_mut("capture").and_then(Value::as_object_mut) {
            capture.remove("packets");
        }
        if let Some(budgets) = obj.get_mut("budgets").and_then(Value::as_object_mut) {
            budgets.remove("memory_limit");
        }
        if let Some(reassembly) = obj.get_mut("reassembly").and_then(Value::as_object_mut) {
            // The packet count again (delayed ACKs may come alone or not).
            reassembly.remove("segments");
        }
    }
    r
}

/// Paths where two JSON values differ (at most a few).
fn json_diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    if out.len() >= 4 {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => json_diff(va, vb, &p, out),
                    (va, vb) => out.push(format!("{p}: {} vs host {}", show(va), show(vb))),
                }
            }
        }
        _ if a != b => out.push(format!("{path}: {a} vs host {b}")),
        _ => {}
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or("absent".into(), Value::to_string)
}

/// The last stderr line worth quoting (an error if there is one).
fn stderr_reason(m: &Markers, step: &str) -> String {
    let lines = m.lines(&format!("{step}.stderr"));
    lines
        .iter()
        .rev()
        .find(|l| l.contains("error") || l.contains("Error"))
        .or_else(|| lines.iter().rev().find(|l| !l.trim().is_empty()))
        .map(|l| l.trim().to_string())
        .unwrap_or_else(|| "no output".into())
}

/// Problems of one exact-capture step (empty: the report is exact).
fn capture_problems(m: &Markers, step: &str, reference: Option<&Value>) -> Vec<String> {
    let mut p = Vec::new();
    if m.result(&format!("{step}.started")) != Some("yes") {
        p.push(format!("{step}: ws-monitor did not start capturing: {}", stderr_reason(m, step)));
        return p;
    }
    let exit = m.result(&format!("{step}.exit")).unwrap_or("?");
    if exit != "0" {
        p.push(format!("{step}: ws-monitor exited {exit}: {}", stderr_reason(m, step)));
    }
    for side in ["client", "server"] {
        let rc = m.result(&format!("{step}.{side}_exit")).unwrap_or("?");
        if rc != "0" {
            let why =
                m.lines(&format!("{step}.peer")).iter().find(|l| l.contains("error")).cloned().unwrap_or_default();
            p.push(format!("{step}: the WebSocket {side} exited {rc} {why}"));
        }
    }
    let Some(report) = m.result(&format!("{step}.report")).and_then(|r| serde_json::from_str::<Value>(r).ok()) else {
        p.push(format!("{step}: no JSON report"));
        return p;
    };
    p.extend(report_problems(&report).into_iter().map(|e| format!("{step}: {e}")));
    match reference {
        Some(reference) => {
            let mine = normalise(&report);
            if serde_json::to_string(&mine).ok() != serde_json::to_string(reference).ok() {
                let mut diffs = Vec::new();
                json_diff(&mine, reference, "", &mut diffs);
                p.push(format!("{step}: report differs from the host kernel's: {}", diffs.join(", ")));
            }
        }
        None => p.push(format!("{step}: no host reference report to compare with")),
    }
    p
}

/// What the exchange's report must say on any kernel.
fn report_problems(report: &Value) -> Vec<String> {
    let (client, server) = ws_peer::totals(PORT);
    let mut p = Vec::new();
    let num = |path: &str| path.split('.').try_fold(report, |v, k| v.get(k)).and_then(Value::as_u64);
    if num("capture.packets") == Some(0) {
        let seen = num("kernel.packets_seen").map_or("?".into(), |n| n.to_string());
        return vec![format!("captured nothing (0 packets; the program saw {seen})")];
    }
    // Header-only capture (the default) leaves out the client's 200-byte binary payload
    // past its first 64 bytes: delivered and skipped bytes add up to the streams.
    let both = |side: &str| {
        num(&format!("capture.bytes_{side}")).zip(num(&format!("capture.skipped_{side}"))).map(|(a, b)| a + b)
    };
    for (side, n) in [("client", client), ("server", server)] {
        if both(side) != Some(n) {
            p.push(format!(
                "capture.bytes_{side} + skipped_{side} is {} (expected {n})",
                both(side).map_or("absent".into(), |v| v.to_string())
            ));
        }
    }
    let want = [
        ("capture.skipped_client", ws_peer::SKIPPED_CLIENT),
        ("capture.skipped_server", 0),
        ("capture.ring_drops", 0),
        ("capture.gaps", 0),
        ("capture.bytes_lost", 0),
        ("connections", 1),
        ("upgrades_ok", 1),
        ("frames.client.text", 1),
        ("frames.client.binary", 1),
        ("frames.client.ping", 1),
        ("frames.client.close", 1),
        ("frames.server.text", 2),
        ("frames.server.pong", 1),
        ("frames.server.close", 1),
    ];
    for (path, n) in want {
        if num(path) != Some(n) {
            p.push(format!("{path} is {} (expected {n})", num(path).map_or("absent".into(), |v| v.to_string())));
        }
    }
    let violations: u64 =
        report.get("violations").and_then(Value::as_object).map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
    if violations != 0 {
        p.push(format!("{violations} violations reported"));
    }
    p
}

/// BPF programs in a `bpftool -j prog show` dump: (id, name, run_cnt, run_time_ns).
fn programs(json: Option<&str>) -> Vec<(u64, String, u64, u64)> {
    let Some(v) = json.and_then(|j| serde_json::from_str::<Value>(j).ok()) else { return Vec::new() };
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    let id = p.get("id")?.as_u64()?;
                    let name = p.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                    let cnt = p.get("run_cnt").and_then(Value::as_u64).unwrap_or(0);
                    let ns = p.get("run_time_ns").and_then(Value::as_u64).unwrap_or(0);
                    Some((id, name, cnt, ns))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Little-endian number from bpftool's hex byte list (["0x01","0x00",...]) or a number.
fn bpftool_number(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let bytes = v.as_array()?;
    bytes.iter().rev().try_fold(0u64, |acc, b| {
        let b = u64::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok()?;
        Some(acc << 8 | b)
    })
}

/// Per-key sums over CPUs of a `bpftool -j map dump` of a per-CPU array.
fn counters(json: Option<&str>) -> Option<BTreeMap<u64, u64>> {
    let v: Value = serde_json::from_str(json?).ok()?;
    let mut out = BTreeMap::new();
    for entry in v.as_array()? {
        let entry = entry.get("formatted").unwrap_or(entry);
        let key = bpftool_number(entry.get("key")?)?;
        let sum: u64 =
            entry.get("values")?.as_array()?.iter().filter_map(|c| c.get("value").and_then(bpftool_number)).sum();
        *out.entry(key).or_default() += sum;
    }
    Some(out)
}

/// ws-monitor's leftovers in a snapshot: its filters, its programs (other than those
/// loaded before the checks began) and, when `clsact_is_ours`, any clsact qdisc.
/// `baseline` is None where loaded programs say nothing about this run: on the host,
/// other processes (tests in other namespaces) load ws-monitor programs too, and TCX
/// links, which this bpftool cannot list per device, end with their process anyway.
fn leftovers(m: &Markers, snap: &str, baseline: Option<&BTreeSet<u64>>, clsact_is_ours: bool) -> Vec<String> {
    let mut out = Vec::new();
    if clsact_is_ours && m.lines(&format!("{snap}.qdisc")).iter().any(|l| l.contains("clsact")) {
        out.push("the clsact qdisc".to_string());
    }
    for hook in ["ingress", "egress"] {
        if m.lines(&format!("{snap}.filter_{hook}")).iter().any(|l| l.contains("ws_monitor")) {
            out.push(format!("a ws-monitor filter on {hook}"));
        }
    }
    let Some(baseline) = baseline else { return out };
    for (id, name, _, _) in programs(m.result(&format!("{snap}.progs"))) {
        if name.starts_with("ws_monitor") && !baseline.contains(&id) {
            out.push(format!("program {name} (id {id})"));
        }
    }
    out
}

/// Filter entries that are not ws-monitor's (lines with a handle).
fn foreign_filters(m: &Markers, snap: &str) -> BTreeSet<String> {
    m.lines(&format!("{snap}.filter_ingress"))
        .iter()
        .chain(m.lines(&format!("{snap}.filter_egress")))
        .filter(|l| l.starts_with("filter ") && l.contains(" handle ") && !l.contains("ws_monitor"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// `pref N` of a `tc filter show` line.
fn pref(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    words.by_ref().find(|w| *w == "pref")?;
    words.next()?.parse().ok()
}

/// Where ws-monitor's netlink filter sat among the foreign ones while it ran, when a
/// foreign filter ran first: one whose verdict ends classification (matchall's `action
/// pass`) hides every packet from the filters behind it.
fn priority_hint(m: &Markers) -> Option<String> {
    let lines = m.lines("f.during.filter_ingress");
    let ours = lines.iter().filter(|l| l.contains("ws_monitor")).find_map(|l| pref(l))?;
    let before: BTreeSet<u32> =
        lines.iter().filter(|l| !l.contains("ws_monitor")).filter_map(|l| pref(l)).filter(|p| *p < ours).collect();
    (!before.is_empty()).then(|| {
        let list: Vec<String> = before.iter().map(u32::to_string).collect();
        format!(
            "ws-monitor's filter had pref {ours}, behind the foreign filters at pref {} (which run first)",
            list.join(", ")
        )
    })
}

/// Major and minor of a kernel release string.
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// One row of the matrix, with its failures (one line per failing cell).
struct Row {
    kernel: String,
    mode: String,
    /// Capabilities kept once attached.
    kept: String,
    exact: String,
    kill9: String,
    restart: String,
    foreign: String,
    seconds: f64,
    failures: Vec<String>,
}

fn evaluate(run: &Run, reference: Option<&Value>) -> Row {
    let m = &run.markers;
    let release = m.result("kernel").unwrap_or("?").to_string();
    let kernel = if run.label == "host" { format!("host {release}") } else { format!("{} ({release})", run.label) };
    let mut row = Row {
        kernel,
        mode: "?".into(),
        kept: "?".into(),
        exact: "no".into(),
        kill9: "no".into(),
        restart: "no".into(),
        foreign: "no".into(),
        seconds: run.seconds,
        failures: Vec::new(),
    };
    let label = run.label.clone();
    let fail = |row: &mut Row, column: &str, problems: Vec<String>| -> bool {
        if problems.is_empty() {
            return false;
        }
        row.failures.push(format!("{label} {column}: {}", problems.join("; ")));
        true
    };
    if let Some(e) = &run.error {
        fail(&mut row, "run", vec![e.clone()]);
    }
    if m.results.is_empty() {
        return row;
    }

    // Attach mode: from the report when it says, else by kernel version.
    let report_mode = ["a", "b", "e", "f"].iter().find_map(|s| {
        let r: Value = serde_json::from_str(m.result(&format!("{s}.report"))?).ok()?;
        r.get("attach")?.get("mode")?.as_str().map(String::from)
    });
    let tcx = match &report_mode {
        Some(mode) => {
            row.mode = mode.clone();
            mode == "tcx"
        }
        None => {
            let tcx = version(&release).is_some_and(|v| v >= (6, 6));
            row.mode = format!("{} (by version)", if tcx { "tcx" } else { "netlink" });
            tcx
        }
    };
    // Privileges once attached: CAP_NET_ADMIN exactly under netlink (to detach at exit),
    // CAP_BPF where the kernel wants it for map access, nothing else; a seccomp filter.
    let privileges = ["a", "b", "e", "f"].iter().find_map(|s| {
        let r: Value = serde_json::from_str(m.result(&format!("{s}.report"))?).ok()?;
        r.get("privileges").cloned()
    });
    let mut p = Vec::new();
    match &privileges {
        Some(pv) => {
            let kept: Vec<&str> = pv["kept"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            row.kept = if kept.is_empty() { "none".into() } else { kept.join(", ") };
            if pv["seccomp"] != Value::Bool(true) {
                p.push("no seccomp filter".to_string());
            }
            if kept.contains(&"CAP_NET_ADMIN") == tcx {
                p.push(format!("CAP_NET_ADMIN {} under {}", if tcx { "kept" } else { "dropped" }, row.mode));
            }
            if let Some(extra) = kept.iter().find(|c| !matches!(**c, "CAP_BPF" | "CAP_NET_ADMIN")) {
                p.push(format!("{extra} kept"));
            }
        }
        None => p.push("the report says nothing of privileges".to_string()),
    }
    fail(&mut row, "kept after attach", p);

    let baseline_ids: BTreeSet<u64> = programs(m.result("base.progs")).into_iter().map(|p| p.0).collect();
    let baseline = (run.label != "host").then_some(&baseline_ids);

    // Exact capture (SIGTERM, SIGINT) and a clean state after the clean exits.
    let mut p = capture_problems(m, "a", reference);
    p.extend(capture_problems(m, "b", reference));
    let left = leftovers(m, "c", baseline, true);
    if !left.is_empty() {
        p.push(format!("after two clean exits still attached: {}", left.join(", ")));
    }
    if !fail(&mut row, "capture exact?", p) {
        row.exact = "yes".into();
    }

    // kill -9: an orphan filter may stay only with netlink, and must be dormant; detach.
    let mut p = Vec::new();
    let mut text = Vec::new();
    if m.result("d.started") != Some("yes") {
        p.push(format!("d: ws-monitor did not start capturing: {}", stderr_reason(m, "d")));
    }
    let left = leftovers(m, "d.killed", baseline, false);
    if m.result("d.orphan") == Some("yes") {
        if tcx {
            p.push(format!("with TCX something stayed after kill -9: {}", left.join(", ")));
        }
        let before = counters(m.result("d.counters_before"));
        let after = counters(m.result("d.counters_after"));
        let progs_before = programs(m.result("d.progs_before"));
        let progs_after = programs(m.result("d.progs_after"));
        let runs: (u64, u64) = progs_after.iter().filter(|q| q.1.starts_with("ws_monitor")).fold((0, 0), |acc, q| {
            let old = progs_before.iter().find(|o| o.0 == q.0).map_or((0, 0), |o| (o.2, o.3));
            (acc.0 + q.2.saturating_sub(old.0), acc.1 + q.3.saturating_sub(old.1))
        });
        if m.result("d.client_exit") != Some("0") || m.result("d.server_exit") != Some("0") {
            p.push("traffic on port 8001 failed with the orphan attached".into());
        }
        match (before, after) {
            (Some(b), Some(a)) => {
                let delta = |k: u64| a.get(&k).copied().unwrap_or(0).saturating_sub(b.get(&k).copied().unwrap_or(0));
                let (matched, copied) = (delta(COUNTER_PACKETS_MATCHED), delta(COUNTER_BYTES_COPIED));
                if matched > 0 || copied > 0 {
                    p.push(format!(
                        "the orphan is not dormant 6 s after kill -9: it matched {matched} packets and copied {copied} bytes of port 8001 traffic ({} runs, {} ns)",
                        runs.0, runs.1
                    ));
                } else {
                    text.push(format!("filter stays, dormant (ran {} times, copied nothing)", runs.0));
                }
            }
            _ => p.push("could not read the orphan's COUNTERS map (bpftool map dump name COUNTERS)".into()),
        }
    } else if !left.is_empty() {
        p.push(format!("after kill -9 still loaded: {}", left.join(", ")));
    } else {
        text.push("nothing stays".into());
    }
    if m.result("g.started") != Some("yes") {
        p.push(format!("g: ws-monitor did not start capturing: {}", stderr_reason(m, "g")));
    }
    let detach_rc = m.result("g.detach.rc").unwrap_or("?");
    if detach_rc != "0" {
        let why = m.lines("g.detach").iter().rev().find(|l| !l.trim().is_empty()).cloned().unwrap_or_default();
        p.push(format!("`ws-monitor detach --iface lo` exited {detach_rc}: {}", why.trim()));
    } else {
        let left = leftovers(m, "g.after", baseline, true);
        if left.is_empty() {
            text.push("detach ok".into());
        } else {
            p.push(format!("after `ws-monitor detach` still attached: {}", left.join(", ")));
        }
    }
    if !fail(&mut row, "after kill -9", p) {
        row.kill9 = text.join("; ");
    }

    // Restart on top of the killed instance.
    let mut p = capture_problems(m, "e", reference);
    let orphan = m.result("d.orphan") == Some("yes");
    let stale = m.lines("e.stderr").iter().any(|l| l.to_ascii_lowercase().contains("stale"));
    if orphan && !stale {
        p.push("e: no stderr line about removing the stale ws-monitor filter".into());
    }
    let left = leftovers(m, "e.after", baseline, true);
    if !left.is_empty() {
        p.push(format!("after the restarted instance exited still attached: {}", left.join(", ")));
    }
    if !fail(&mut row, "after restart", p) {
        row.restart = if stale { "exact, stale filter removed".into() } else { "exact".into() };
    }

    // A foreign clsact qdisc and foreign filters.
    let mut p = Vec::new();
    if m.result("f.add_qdisc.rc") != Some("0") {
        p.push(format!("could not add the foreign clsact qdisc: {}", m.lines("f.add_qdisc").join(" ")));
    }
    let foreign = foreign_filters(m, "f.before");
    if foreign.is_empty() {
        p.push(format!("could not add a foreign filter: {}", m.lines("f.add_bpf").join(" ")));
    }
    let f_problems = capture_problems(m, "f", reference);
    let f_problems_empty = f_problems.is_empty();
    if !f_problems_empty {
        if let Some(hint) = priority_hint(m) {
            p.push(hint);
        }
    }
    p.extend(f_problems);
    if !m.lines("f.after.qdisc").iter().any(|l| l.contains("clsact")) {
        p.push("the foreign clsact qdisc was removed".into());
    }
    let after = foreign_filters(m, "f.after");
    let lost: Vec<&String> = foreign.difference(&after).collect();
    if !lost.is_empty() {
        p.push(format!(
            "foreign filters changed or removed: {}",
            lost.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" | ")
        ));
    }
    let left = leftovers(m, "f.after", baseline, false);
    if !left.is_empty() {
        p.push(format!("after exit still attached: {}", left.join(", ")));
    }
    let kept = !foreign.is_empty() && lost.is_empty() && m.lines("f.after.qdisc").iter().any(|l| l.contains("clsact"));
    let exact = f_problems_empty;
    if !fail(&mut row, "foreign qdisc kept?", p) {
        row.foreign = format!("yes ({} foreign filter{})", foreign.len(), if foreign.len() == 1 { "" } else { "s" });
    } else if kept && !exact {
        row.foreign = "kept, but capture not exact".into();
    }
    row
}

const HEADERS: [&str; 8] = [
    "kernel",
    "attach mode",
    "kept after attach",
    "capture exact?",
    "after kill -9",
    "after restart",
    "foreign qdisc kept?",
    "time (s)",
];

fn cells(r: &Row) -> [String; 8] {
    [
        r.kernel.clone(),
        r.mode.clone(),
        r.kept.clone(),
        r.exact.clone(),
        r.kill9.clone(),
        r.restart.clone(),
        r.foreign.clone(),
        format!("{:.0}", r.seconds),
    ]
}

fn table(rows: &[Row]) -> String {
    let all: Vec<[String; 8]> = rows.iter().map(cells).collect();
    let mut widths = HEADERS.map(str::len);
    for r in &all {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        cells.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join(" | ").trim_end().to_string()
    };
    let mut out = line(&HEADERS.map(String::from));
    out.push('\n');
    out.push_str(&widths.map(|w| "-".repeat(w)).join("-|-"));
    for r in &all {
        out.push('\n');
        out.push_str(&line(r));
    }
    out
}

fn markdown(rows: &[Row]) -> String {
    let mut out = format!("| {} |\n|{}\n", HEADERS.join(" | "), "---|".repeat(HEADERS.len()));
    for r in rows {
        out.push_str(&format!("| {} |\n", cells(r).join(" | ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_main_archive_in_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let sources = parse_deb822_sources(deb822);
        assert_eq!(sources.len(), 2);
        assert_eq!(pick_archive(&sources, Some("bookworm")).as_deref(), Some("http://mirror.example/debian"));
        // Security first in the file: still the main archive.
        let mut reversed = parse_deb822_sources(deb822);
        reversed.reverse();
        assert_eq!(pick_archive(&reversed, Some("bookworm")).as_deref(), Some("http://mirror.example/debian"));
        let one_line = "deb https://other.example/apt cloud-sdk-bookworm main\n\
                        deb [signed-by=/k.gpg arch=amd64] http://archive.example/debian/ bookworm main contrib\n\
                        deb-src http://src.example/debian bookworm main\n";
        let sources = parse_one_line_sources(one_line);
        assert_eq!(sources.len(), 2);
        assert_eq!(pick_archive(&sources, Some("bookworm")).as_deref(), Some("http://archive.example/debian"));
        assert_eq!(pick_archive(&sources, None).as_deref(), Some("http://archive.example/debian"));
        assert_eq!(
            pick_archive(
                &parse_one_line_sources("deb http://x/debian-security bookworm-security main\n"),
                Some("bookworm")
            ),
            None
        );
    }

    #[test]
    fn resolves_the_versioned_image_and_module_closure() {
        let depends = "linux-image-amd64\n  Depends: linux-image-6.1.0-50-amd64\n";
        assert_eq!(versioned_image(depends).as_deref(), Some("linux-image-6.1.0-50-amd64"));
        let dep = "kernel/net/sched/act_ct.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/lib/libcrc32c.ko.xz\n\
                   kernel/net/sched/sch_ingress.ko:\nkernel/fs/ext4/ext4.ko: kernel/fs/mbcache.ko\n";
        let closure = module_closure(dep);
        assert!(closure.contains("kernel/net/sched/sch_ingress.ko"));
        assert!(closure.contains("kernel/lib/libcrc32c.ko.xz"));
        assert!(!closure.iter().any(|m| m.contains("ext4") || m.contains("mbcache")));
    }

    /// A console as checks.sh prints it for a netlink kernel where everything went right,
    /// with `f_during` as the ingress filters while the monitor ran next to foreign ones.
    fn console(f_during: &[&str]) -> String {
        let (client, server) = ws_peer::totals(PORT);
        let report = |attach: &str| {
            serde_json::json!({
                "connections": 1, "upgrades_ok": 1,
                "frames": {"client": {"text": 1, "binary": 1, "ping": 1, "close": 1, "pong": 0},
                           "server": {"text": 2, "binary": 0, "ping": 0, "close": 1, "pong": 1}},
                "violations": {"bad_handshake": 0},
                "capture": {"packets": 18, "bytes_client": client - ws_peer::SKIPPED_CLIENT, "bytes_server": server,
                            "skipped_client": ws_peer::SKIPPED_CLIENT, "skipped_server": 0,
                            "ring_drops": 0, "gaps": 0, "bytes_lost": 0},
                "kernel": {"packets_seen": 18},
                "attach": {"mode": attach},
                "privileges": {"kept": ["CAP_NET_ADMIN"], "seccomp": true},
                "peak_rss_bytes": 40_000_000,
            })
            .to_string()
        };
        let ours = "filter protocol all pref 49152 bpf chain 0 handle 0x77736d31 ws_monitor_ingress direct-action not_in_hw id 15";
        let bpf = "filter protocol all pref 7 bpf chain 0 handle 0x7 not_in_hw bytecode '1,6 0 0 0'";
        let mut c = String::from("WSM-RESULT kernel 6.1.0-50-amd64\nWSM-RESULT base.progs []\n");
        for step in ["a", "b", "e", "f"] {
            for (k, v) in [("started", "yes"), ("exit", "0"), ("client_exit", "0"), ("server_exit", "0")] {
                c += &format!("WSM-RESULT {step}.{k} {v}\n");
            }
            c += &format!("WSM-RESULT {step}.report {}\n", report("netlink"));
        }
        c += "WSM-RESULT c.progs []\nWSM-RESULT d.started yes\nWSM-RESULT d.orphan yes\n";
        c += &format!("WSM-LINE d.killed.filter_ingress {ours}\n");
        let prog = |cnt: u64| format!(r#"[{{"id":15,"name":"ws_monitor_ingr","run_cnt":{cnt},"run_time_ns":900}}]"#);
        c += &format!("WSM-RESULT d.progs_before {}\nWSM-RESULT d.progs_after {}\n", prog(0), prog(18));
        let dump = r#"[{"key":1,"values":[{"cpu":0,"value":40}]},{"key":2,"values":[{"cpu":0,"value":900}]}]"#;
        c += &format!("WSM-RESULT d.counters_before {dump}\nWSM-RESULT d.counters_after {dump}\n");
        c += "WSM-RESULT d.client_exit 0\nWSM-RESULT d.server_exit 0\n";
        c += "WSM-LINE e.stderr WARN removed 1 stale ws-monitor filter(s) from lo\n";
        c += "WSM-RESULT f.add_qdisc.rc 0\nWSM-LINE f.before.qdisc qdisc clsact ffff: parent ffff:fff1\n";
        c += &format!("WSM-LINE f.before.filter_ingress {bpf}\nWSM-LINE f.after.filter_ingress {bpf}\n");
        c += "WSM-LINE f.after.qdisc qdisc clsact ffff: parent ffff:fff1\n";
        for l in f_during {
            c += &format!("WSM-LINE f.during.filter_ingress {l}\n");
        }
        c += "WSM-RESULT g.started yes\nWSM-RESULT g.detach.rc 0\nWSM-RESULT g.after.progs []\nWSM-DONE\n";
        c
    }

    fn run_of(console: &str) -> Run {
        Run { label: "6.1".into(), markers: Markers::parse(console), seconds: 30.0, error: None }
    }

    #[test]
    fn judges_a_clean_netlink_run() {
        let text = console(&[]);
        let run = run_of(&text);
        let reference = normalise(&serde_json::from_str(run.markers.result("a.report").unwrap()).unwrap());
        let row = evaluate(&run, Some(&reference));
        assert_eq!(row.failures, Vec::<String>::new());
        assert_eq!(row.mode, "netlink");
        assert_eq!(row.kept, "CAP_NET_ADMIN");
        assert_eq!(row.kill9, "filter stays, dormant (ran 18 times, copied nothing); detach ok");
        assert_eq!(row.restart, "exact, stale filter removed");
        assert_eq!(row.foreign, "yes (1 foreign filter)");
    }

    #[test]
    fn judges_leftovers_a_live_orphan_and_a_changed_report() {
        let text = console(&[])
            .replace("WSM-RESULT c.progs []", r#"WSM-RESULT c.progs [{"id":20,"name":"ws_monitor_ingr"}]"#)
            .replace(
                r#"WSM-RESULT d.counters_after [{"key":1,"values":[{"cpu":0,"value":40}]}"#,
                r#"WSM-RESULT d.counters_after [{"key":1,"values":[{"cpu":0,"value":58}]}"#,
            )
            .replace("WSM-LINE e.stderr WARN removed 1 stale ws-monitor filter(s) from lo\n", "");
        let mut run = run_of(&text);
        // b saw one connection more than the host.
        let b = run.markers.results.get_mut("b.report").unwrap();
        *b = b.replace(r#""connections":1"#, r#""connections":2"#);
        let reference = normalise(&serde_json::from_str(run.markers.result("a.report").unwrap()).unwrap());
        let row = evaluate(&run, Some(&reference));
        let all = row.failures.join("\n");
        assert!(all.contains("b: connections is 2 (expected 1)"), "{all}");
        assert!(all.contains("report differs from the host kernel's: connections: 2 vs host 1"), "{all}");
        assert!(all.contains("still attached: program ws_monitor_ingr (id 20)"), "{all}");
        assert!(all.contains("not dormant 6 s after kill -9: it matched 18 packets"), "{all}");
        assert!(all.contains("no stderr line about removing the stale ws-monitor filter"), "{all}");
        assert_eq!(row.failures.len(), 3, "{all}");
    }

    #[test]
    fn explains_a_filter_behind_a_foreign_one() {
        let ours = "filter protocol all pref 49152 bpf chain 0 handle 0x1 ws_monitor_ingress direct-action";
        let matchall = "filter protocol all pref 8 matchall chain 0 handle 0x8";
        let mut run = run_of(&console(&[matchall, ours]));
        let reference = normalise(&serde_json::from_str(run.markers.result("a.report").unwrap()).unwrap());
        let f = run.markers.results.get_mut("f.report").unwrap();
        *f = f.replace(r#""packets":18"#, r#""packets":0"#);
        let row = evaluate(&run, Some(&reference));
        assert_eq!(row.foreign, "kept, but capture not exact");
        assert_eq!(row.failures.len(), 1);
        assert!(row.failures[0].contains("pref 49152, behind the foreign filters at pref 8"), "{}", row.failures[0]);
        assert!(row.failures[0].contains("f: captured nothing"), "{}", row.failures[0]);
    }

    #[test]
    fn parses_ldd_markers_and_bpftool_dumps() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffc)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(ldd),
            vec![PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
        );
        let console = "[    1.0] boot\r\nWSM-RESULT a.exit 0\r\nnoiseWSM-LINE a.stderr hello world\nWSM-LINE a.stderr two\nWSM-DONE\n";
        let m = Markers::parse(console);
        assert_eq!(m.result("a.exit"), Some("0"));
        assert_eq!(m.lines("a.stderr"), ["hello world", "two"]);
        assert!(m.done);
        let dump = r#"[{"key":["0x01","0x00","0x00","0x00"],"values":[{"cpu":0,"value":["0x02","0x01","0x00","0x00","0x00","0x00","0x00","0x00"]},{"cpu":1,"value":["0x03","0x00","0x00","0x00","0x00","0x00","0x00","0x00"]}]}]"#;
        assert_eq!(counters(Some(dump)).unwrap().get(&1), Some(&(0x102 + 3)));
        let formatted =
            r#"[{"key":1,"values":[{"cpu":0,"value":5}],"formatted":{"key":1,"values":[{"cpu":0,"value":5}]}}]"#;
        assert_eq!(counters(Some(formatted)).unwrap().get(&1), Some(&5));
        assert_eq!(version("6.12.117+deb13-amd64"), Some((6, 12)));
        assert_eq!(version("5.10.0-32-amd64"), Some((5, 10)));
    }
}
