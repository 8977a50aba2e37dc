//! What `bench` and `soak` share: two network namespaces joined by a veth pair (removed
//! again on drop), child processes run inside them that are killed on drop, and a
//! process's CPU time.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Clock ticks a second in /proc/PID/stat (USER_HZ, 100 on Linux).
pub const USER_HZ: f64 = 100.0;

/// The names and addresses of a namespace pair: the server's end and the client's.
pub struct Pair {
    pub ns_server: &'static str,
    pub ns_client: &'static str,
    pub veth_server: &'static str,
    pub veth_client: &'static str,
    pub addr_server: &'static str,
    pub addr_client: &'static str,
}

/// The two namespaces and the veth between them; removed on drop.
pub struct Net(&'static Pair);

impl Net {
    /// Creates the namespaces (removing leftovers of an earlier run first), the veth pair
    /// with an address on each end, and brings every link up, loopback included.
    pub fn create(pair: &'static Pair) -> anyhow::Result<Net> {
        Net::remove(pair);
        let net = Net(pair);
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args), "ip");
        ip(&["netns", "add", pair.ns_server])?;
        ip(&["netns", "add", pair.ns_client])?;
        ip(&[
            "link",
            "add",
            pair.veth_server,
            "netns",
            pair.ns_server,
            "type",
            "veth",
            "peer",
            "name",
            pair.veth_client,
            "netns",
            pair.ns_client,
        ])?;
        for (ns, dev, addr) in
            [(pair.ns_server, pair.veth_server, pair.addr_server), (pair.ns_client, pair.veth_client, pair.addr_client)]
        {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Deletes both namespaces (and with them the veth pair); quiet when they are gone.
    fn remove(pair: &Pair) {
        for ns in [pair.ns_server, pair.ns_client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        Net::remove(self.0);
    }
}

/// A child killed (and reaped) on drop, so a failed run leaves nothing behind.
pub struct Proc {
    child: Option<Child>,
    name: &'static str,
    /// The rest of a stream read by [`Proc::wait_for`]: its lines after the one awaited.
    rest: Option<std::thread::JoinHandle<String>>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr piped (read by [`Proc::wait_for`] and
    /// [`Proc::finish`]).
    pub fn spawn(cmd: &mut Command, name: &'static str) -> anyhow::Result<Proc> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        Proc::start(cmd, name)
    }

    /// Starts `cmd` with stdout and stderr written to files (for a long run whose
    /// output is read afterwards, or while it runs).
    pub fn spawn_to_files(cmd: &mut Command, name: &'static str, stdout: &Path, stderr: &Path) -> anyhow::Result<Proc> {
        let file = |p: &Path| std::fs::File::create(p).with_context(|| format!("creating {}", p.display()));
        cmd.stdout(file(stdout)?).stderr(file(stderr)?);
        Proc::start(cmd, name)
    }

    fn start(cmd: &mut Command, name: &'static str) -> anyhow::Result<Proc> {
        let child = cmd.stdin(Stdio::null()).spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc { child: Some(child), name, rest: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Waits for a line containing `what` on stdout (or stderr).
    pub fn wait_for(&mut self, what: &str, stderr: bool) -> anyhow::Result<()> {
        let child = self.child.as_mut().context("process gone")?;
        let reader: Box<dyn Read + Send> = if stderr {
            Box::new(child.stderr.take().context("no stderr")?)
        } else {
            Box::new(child.stdout.take().context("no stdout")?)
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let what = what.to_string();
        let name = self.name;
        self.rest = Some(std::thread::spawn(move || {
            let mut found = false;
            let mut seen = Vec::new();
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                if !found && line.contains(&what) {
                    found = true;
                    seen.clear();
                    let _ = tx.send(Ok(()));
                } else {
                    seen.push(line);
                }
            }
            if !found {
                let _ = tx.send(Err(anyhow::anyhow!("{name} ended before saying {what:?}: {}", seen.join(" | "))));
            }
            seen.join("\n")
        }));
        rx.recv_timeout(Duration::from_secs(30)).context("waiting for a child process to start")?
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status();
    }

    /// The exit status if the process has ended (it is reaped then), None while it runs.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let child = self.child.as_mut().context("process gone")?;
        child.try_wait().with_context(|| format!("checking on {}", self.name))
    }

    /// Waits up to `timeout` for the exit; None if it still runs then.
    pub fn wait_within(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit; returns stdout (what [`Proc::wait_for`] left of it).
    pub fn finish(mut self) -> anyhow::Result<String> {
        let child = self.child.take().context("process gone")?;
        let out = child.wait_with_output().with_context(|| format!("waiting for {}", self.name))?;
        let rest = self.rest.take().and_then(|t| t.join().ok()).unwrap_or_default();
        if !out.status.success() {
            bail!("{} failed ({}): {}", self.name, out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok(if stdout.is_empty() { rest } else { stdout.into_owned() })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` to the end; its stderr is the error when it fails.
pub fn run_ok(cmd: &mut Command, name: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {name}"))?;
    if !out.status.success() {
        bail!("{name} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `ip netns exec NS PROGRAM`: `ip` execs the program, so the child's PID is its own.
pub fn in_ns(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// User + system CPU time of a process, in clock ticks ([`USER_HZ`]).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}
