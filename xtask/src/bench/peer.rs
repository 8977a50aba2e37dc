//! The load of `cargo xtask bench` and `cargo xtask soak` (`xtask bench-peer
//! server|client`): a WebSocket upgrade with a fixed key, then traffic for a set time,
//! as much as the socket takes or paced by `--rate`.
//!
//! - `bulk`: the server sends 64 KiB binary frames (unmasked; `--rate` frames a second
//!   given to the server), the client reads them.
//! - `small`: each client connection sends masked text frames of 20 to 200 bytes, written
//!   in 64 KiB batches, and the server reads them (`--rate`: frames a second, all
//!   connections together).
//! - `churn`: short connections, `--rate` a second (over `--conns` threads): upgrade, a
//!   masked text frame, a masked binary frame and a masked close 1000; the server answers
//!   the close with its own and closes TCP first. The server accepts for `--secs` (and a
//!   little more), whoever comes.
//! - `violate`: the same short connections with one unmasked text frame in place of the
//!   data frames: a protocol violation (`unmasked_client_frame`) each.
//!
//! The reading side of `bulk` and `small` prints one JSON line: `{"bytes": N, "frames":
//! N, "secs": S}` (frames counted by the sender, who knows them; the reader counts
//! bytes). The client of `churn` and `violate` prints `{"conns": N, "violations": N,
//! "secs": S}`, their server `{"conns": N}`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::kernels::ws_peer::accept_value;

const KEY: &str = "YmVuY2gta2V5LTE2Ynl0ZQ==";
/// Payload of one bulk frame.
pub const BULK_FRAME: usize = 64 * 1024;
/// Bytes of small frames written per `write` call.
const BATCH: usize = 64 * 1024;

/// How long the server of short connections goes on accepting after `--secs`, for the
/// client's last connections (it starts a little later).
const SHORT_GRACE: Duration = Duration::from_secs(5);
/// How long either side of a short connection waits for the other.
const SHORT_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Load {
    Bulk,
    Small,
    Churn,
    Violate,
}

impl Load {
    /// The name on the command line (`--load NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Load::Bulk => "bulk",
            Load::Small => "small",
            Load::Churn => "churn",
            Load::Violate => "violate",
        }
    }
}

fn request(port: u16) -> String {
    format!(
        "GET /bench HTTP/1.1\r\nHost: 10.203.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

fn response() -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_value(KEY)
    )
}

/// Reads up to the end of an HTTP head (the peers send nothing after it unasked).
fn read_head(s: &mut TcpStream) -> anyhow::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).context("reading an HTTP head")? == 0 {
            bail!("the peer closed during the handshake");
        }
        head.push(byte[0]);
        if head.len() > 8192 {
            bail!("HTTP head over 8 KiB");
        }
    }
    Ok(())
}

/// A frame header with FIN set (and the masking key, when given).
pub fn header(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(0x80 | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match len {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
}

/// 64 KiB of masked text frames of 20..=200 bytes, and how many there are.
fn small_batch(seed: u32) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(BATCH + 256);
    let mut frames = 0;
    let mut x = seed | 1;
    while out.len() < BATCH {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let len = 20 + (x % 181) as usize;
        let key = x.to_be_bytes();
        header(&mut out, 1, len, Some(key));
        out.extend((0..len).map(|i| b"bench text frame "[i % 17] ^ key[i % 4]));
        frames += 1;
    }
    (out, frames)
}

/// Writes `batch` until `secs` have passed, at most `per_s` times a second (0: as fast
/// as the socket takes it); returns how many times it was written.
fn send_for(s: &mut TcpStream, batch: &[u8], secs: f64, per_s: f64) -> anyhow::Result<u64> {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut n = 0;
    while Instant::now() < end {
        if per_s > 0.0 {
            let due = start + Duration::from_secs_f64(n as f64 / per_s);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        match s.write_all(batch) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == ErrorKind::BrokenPipe || e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => return Err(e).context("sending"),
        }
    }
    Ok(n)
}

/// Reads until EOF; returns the bytes read.
fn drain(s: &mut TcpStream) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(total),
            Err(e) => return Err(e).context("reading"),
        }
    }
}

/// `bench-peer server`: serves `conns` connections (bulk, small; bulk frames paced to
/// `rate` a second, 0 = unlimited) or every short connection that comes for `secs`
/// (churn, violate), then exits.
pub fn server(port: u16, load: Load, secs: f64, conns: usize, rate: f64) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("listening on port {port}"))?;
    println!("listening");
    std::io::stdout().flush()?;
    if matches!(load, Load::Churn | Load::Violate) {
        return short_server(&listener, secs);
    }
    let mut workers = Vec::new();
    for _ in 0..conns {
        let (mut s, _) = listener.accept().context("accepting")?;
        workers.push(std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
            read_head(&mut s)?;
            s.write_all(response().as_bytes())?;
            match load {
                Load::Bulk => {
                    let mut frame = Vec::with_capacity(BULK_FRAME + 14);
                    header(&mut frame, 2, BULK_FRAME, None);
                    frame.extend((0..BULK_FRAME).map(|i| (i * 7 + i / 251) as u8));
                    let n = send_for(&mut s, &frame, secs, rate.max(0.0))?;
                    let _ = s.shutdown(Shutdown::Write);
                    let _ = drain(&mut s);
                    Ok((n * frame.len() as u64, n))
                }
                Load::Small | Load::Churn | Load::Violate => {
                    let bytes = drain(&mut s)?;
                    Ok((bytes, 0))
                }
            }
        }));
    }
    let started = Instant::now();
    let mut bytes = 0;
    for w in workers {
        let (b, _) = w.join().map_err(|_| anyhow::anyhow!("a server thread panicked"))??;
        bytes += b;
    }
    if load == Load::Small {
        println!("{{\"bytes\": {bytes}, \"secs\": {}}}", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// `bench-peer client`: opens `conns` connections to `addr:port`; with `rate` (small
/// frames per second, all connections together; 0 = unlimited) the senders pace
/// themselves. For churn and violate: `conns` threads open short connections, `rate` a
/// second in all, for `secs`.
pub fn client(addr: &str, port: u16, load: Load, secs: f64, conns: usize, rate: f64) -> anyhow::Result<()> {
    if matches!(load, Load::Churn | Load::Violate) {
        return short_client(addr, port, load == Load::Violate, secs, conns, rate);
    }
    let mut workers = Vec::new();
    for i in 0..conns {
        let addr = addr.to_string();
        let rate = rate.max(0.0);
        workers.push(std::thread::spawn(move || -> anyhow::Result<(u64, u64, f64)> {
            let mut s =
                TcpStream::connect((addr.as_str(), port)).with_context(|| format!("connecting to {addr}:{port}"))?;
            s.set_nodelay(true)?;
            s.write_all(request(port).as_bytes())?;
            read_head(&mut s)?;
            let started = Instant::now();
            match load {
                Load::Bulk => {
                    let bytes = drain(&mut s)?;
                    Ok((bytes, bytes / (BULK_FRAME as u64 + 10), started.elapsed().as_secs_f64()))
                }
                Load::Small | Load::Churn | Load::Violate => {
                    let (batch, per) = small_batch(0x9e37_79b9 ^ i as u32);
                    let batches_per_s = rate / conns as f64 / per as f64;
                    let n = send_for(&mut s, &batch, secs, batches_per_s)?;
                    let _ = s.shutdown(Shutdown::Write);
                    let _ = drain(&mut s);
                    Ok((n * batch.len() as u64, n * per, started.elapsed().as_secs_f64()))
                }
            }
        }));
    }
    let (mut bytes, mut frames, mut secs_max) = (0u64, 0u64, 0f64);
    for w in workers {
        let (b, f, s) = w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        bytes += b;
        frames += f;
        secs_max = secs_max.max(s);
    }
    println!("{{\"bytes\": {bytes}, \"frames\": {frames}, \"secs\": {secs_max}}}");
    Ok(())
}

/// What the client of one short connection sends after the upgrade: a masked text and a
/// masked binary frame (churn) or one unmasked text frame (violate), then a masked
/// close 1000. The number of protocol violations in it comes second.
fn short_script(violate: bool, seed: u32) -> (Vec<u8>, u64) {
    let key = seed.to_be_bytes();
    let masked = |out: &mut Vec<u8>, opcode: u8, payload: &[u8]| {
        header(out, opcode, payload.len(), Some(key));
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    };
    let mut out = Vec::with_capacity(256);
    if violate {
        let text = b"a client frame without a mask";
        header(&mut out, 1, text.len(), None);
        out.extend_from_slice(text);
    } else {
        masked(&mut out, 1, b"a short-lived connection says hello");
        masked(&mut out, 2, &[0x5a; 100]);
    }
    masked(&mut out, 8, &1000u16.to_be_bytes());
    (out, u64::from(violate))
}

/// Reads one frame (masked or not) and drops its payload; returns its opcode.
fn read_frame(s: &mut TcpStream) -> anyhow::Result<u8> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).context("reading a frame header")?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).context("reading a 16-bit length")?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).context("reading a 64-bit length")?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let rest = len + if head[1] & 0x80 != 0 { 4 } else { 0 };
    let skipped = std::io::copy(&mut Read::by_ref(s).take(rest), &mut std::io::sink()).context("reading a frame")?;
    if skipped < rest {
        bail!("the peer closed inside a frame");
    }
    Ok(head[0] & 0x0f)
}

/// Reads frames until a close frame.
fn read_until_close(s: &mut TcpStream) -> anyhow::Result<()> {
    while read_frame(s)? != 8 {}
    Ok(())
}

/// The server side of one short connection: the upgrade, frames up to the client's
/// close, a close 1000 back, and TCP closed first (RFC 6455 section 7.1.1).
fn short_serve(mut s: TcpStream) -> anyhow::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(SHORT_PATIENCE))?;
    read_head(&mut s)?;
    s.write_all(response().as_bytes())?;
    read_until_close(&mut s)?;
    let mut close = Vec::with_capacity(4);
    header(&mut close, 8, 2, None);
    close.extend_from_slice(&1000u16.to_be_bytes());
    s.write_all(&close)?;
    s.shutdown(Shutdown::Write)?;
    drain(&mut s)?;
    Ok(())
}

/// Accepts short connections for `secs` (and [`SHORT_GRACE`]), each served on a thread
/// of its own; fails with the first connection that went wrong.
fn short_server(listener: &TcpListener, secs: f64) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let end = Instant::now() + Duration::from_secs_f64(secs) + SHORT_GRACE;
    let mut running: Vec<std::thread::JoinHandle<anyhow::Result<()>>> = Vec::new();
    let mut served = 0u64;
    let join = |h: std::thread::JoinHandle<anyhow::Result<()>>| -> anyhow::Result<()> {
        h.join().map_err(|_| anyhow::anyhow!("a server thread panicked"))?.context("a short connection")
    };
    while Instant::now() < end {
        match listener.accept() {
            Ok((s, _)) => {
                running.push(std::thread::spawn(move || short_serve(s)));
                served += 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(e).context("accepting"),
        }
        // Threads that are done are joined as they go, so their number stays small.
        let (done, open): (Vec<_>, Vec<_>) = running.into_iter().partition(|h| h.is_finished());
        running = open;
        done.into_iter().try_for_each(join)?;
    }
    running.into_iter().try_for_each(join)?;
    println!("{{\"conns\": {served}}}");
    Ok(())
}

/// The client side of one short connection; returns the violations it sent.
fn short_connection(addr: &str, port: u16, violate: bool, seed: u32) -> anyhow::Result<u64> {
    let target = format!("{addr}:{port}").parse().with_context(|| format!("{addr}:{port} is not an address"))?;
    let mut s =
        TcpStream::connect_timeout(&target, SHORT_PATIENCE).with_context(|| format!("connecting to {target}"))?;
    s.set_read_timeout(Some(SHORT_PATIENCE))?;
    s.set_nodelay(true)?;
    s.write_all(request(port).as_bytes())?;
    read_head(&mut s)?;
    let (script, violations) = short_script(violate, seed);
    s.write_all(&script)?;
    read_until_close(&mut s)?;
    // The server closes TCP first; then this side.
    drain(&mut s)?;
    Ok(violations)
}

/// `conns` threads opening short connections one after another, `rate` a second in all
/// (0 = as fast as they go), for `secs`; prints the connections and violations sent.
fn short_client(addr: &str, port: u16, violate: bool, secs: f64, conns: usize, rate: f64) -> anyhow::Result<()> {
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(secs);
    let per_thread = rate.max(0.0) / conns.max(1) as f64;
    let workers: Vec<_> = (0..conns.max(1))
        .map(|t| {
            let addr = addr.to_string();
            std::thread::spawn(move || -> anyhow::Result<(u64, u64)> {
                let (mut n, mut violations) = (0u64, 0u64);
                while Instant::now() < end {
                    if per_thread > 0.0 {
                        let due = started + Duration::from_secs_f64(n as f64 / per_thread);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                        if Instant::now() >= end {
                            break;
                        }
                    }
                    let seed = 0x9e37_79b9u32 ^ ((t as u32) << 24) ^ n as u32;
                    violations += short_connection(&addr, port, violate, seed)
                        .with_context(|| format!("short connection {n} of thread {t}"))?;
                    n += 1;
                }
                Ok((n, violations))
            })
        })
        .collect();
    let (mut total, mut violations) = (0u64, 0u64);
    for w in workers {
        let (n, v) = w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        total += n;
        violations += v;
    }
    println!("{{\"conns\": {total}, \"violations\": {violations}, \"secs\": {}}}", started.elapsed().as_secs_f64());
    Ok(())
}
