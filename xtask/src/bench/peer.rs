//! The load of `cargo xtask bench` (`xtask bench-peer server|client`): a WebSocket
//! upgrade with a fixed key, then as much traffic as the socket takes for a set time.
//!
//! - `bulk`: the server sends 64 KiB binary frames (unmasked), the client reads them.
//! - `small`: each client connection sends masked text frames of 20 to 200 bytes, written
//!   in 64 KiB batches, and the server reads them.
//!
//! The reading side prints one JSON line: `{"bytes": N, "frames": N, "secs": S}` (frames
//! counted by the sender, who knows them; the reader counts bytes).

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Load {
    Bulk,
    Small,
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

/// `bench-peer server`: serves `conns` connections, then exits.
pub fn server(port: u16, load: Load, secs: f64, conns: usize) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("listening on port {port}"))?;
    println!("listening");
    std::io::stdout().flush()?;
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
                    let n = send_for(&mut s, &frame, secs, 0.0)?;
                    let _ = s.shutdown(Shutdown::Write);
                    let _ = drain(&mut s);
                    Ok((n * frame.len() as u64, n))
                }
                Load::Small => {
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
/// themselves.
pub fn client(addr: &str, port: u16, load: Load, secs: f64, conns: usize, rate: f64) -> anyhow::Result<()> {
    let mut workers = Vec::new();
    for i in 0..conns {
        let addr = addr.to_string();
        let rate = rate.max(0.0);
        workers.push(std::thread::spawn(move || -> anyhow::Result<(u64, u64, f64)> {
            let mut s = TcpStream::connect((addr.as_str(), port)).with_context(|| format!("connecting to {addr}:{port}"))?;
            s.set_nodelay(true)?;
            s.write_all(request(port).as_bytes())?;
            read_head(&mut s)?;
            let started = Instant::now();
            match load {
                Load::Bulk => {
                    let bytes = drain(&mut s)?;
                    Ok((bytes, bytes / (BULK_FRAME as u64 + 10), started.elapsed().as_secs_f64()))
                }
                Load::Small => {
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
