//! `cargo xtask fuzz`: every fuzz target in fuzz/ (cargo-fuzz, libFuzzer with ASan, the
//! rustup nightly toolchain), each started from a seed corpus made here from one real
//! WebSocket session (the same bytes the bench's captures carry: an upgrade, masked and
//! unmasked frames, a ping, a close each way) in each target's own input format.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use ws_monitor_common::{ChunkHeader, DIR_TO_CLIENT, DIR_TO_SERVER, TCP_ACK, TCP_FIN, TCP_SYN};

use crate::bench::{pcap, peer};

/// The targets, as named in fuzz/Cargo.toml.
pub const TARGETS: [&str; 5] = ["engine", "handshake", "reassembly", "record", "pcap"];

/// Runs each of `targets` for `seconds`, after writing its seeds into fuzz/corpus/.
pub fn run(targets: &[&str], seconds: u32) -> anyhow::Result<()> {
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        bail!(
            "fuzzing needs the rustup nightly toolchain (rustup toolchain install nightly), or pass --fuzz-seconds 0"
        );
    }
    let have_cargo_fuzz =
        Command::new(crate::env_cargo()).args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success());
    if !have_cargo_fuzz {
        crate::step("installing cargo-fuzz 0.13.2");
        crate::cargo(&["install", "cargo-fuzz", "--locked", "--version", "0.13.2"])?;
    }
    let fuzz_dir = crate::workspace_root().join("fuzz");
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        write_seeds(target, &corpus)?;
        // Built first, so that a target that does not compile is not taken for a crash.
        let built = Command::new("cargo")
            .args(["+nightly", "fuzz", "build", target])
            .current_dir(&fuzz_dir)
            .status()
            .context("running cargo fuzz build")?;
        if !built.success() {
            bail!("the fuzz target {target} does not build ({built}): fix fuzz/fuzz_targets/{target}.rs");
        }
        crate::step(&format!("fuzzing {target} for {seconds} s"));
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={seconds}")])
            .current_dir(&fuzz_dir)
            .status()
            .context("running cargo fuzz")?;
        if !status.success() {
            bail!("the fuzzer found a crash in {target} ({status}); the input is in fuzz/artifacts/{target}/");
        }
    }
    Ok(())
}

/// One WebSocket session as its two sides send it: (from the client, bytes).
fn session() -> Vec<(bool, Vec<u8>)> {
    let mask = Some([0x12, 0x34, 0x56, 0x78]);
    let mut client = Vec::new();
    pcap::text_frame(&mut client, b"hello, server", mask);
    pcap::text_frame(&mut client, "ünïcödé ✓".as_bytes(), mask);
    peer::header(&mut client, 0x9, 4, mask); // ping
    client.extend(b"ping".iter().zip([0x12, 0x34, 0x56, 0x78]).map(|(b, k)| b ^ k));
    let mut server = Vec::new();
    pcap::text_frame(&mut server, b"hello, client", None);
    peer::header(&mut server, 0x2, 300, None); // binary
    server.extend((0..300u32).map(|i| i as u8));
    peer::header(&mut server, 0xA, 4, None); // pong
    server.extend_from_slice(b"ping");
    let mut client_close = Vec::new();
    peer::header(&mut client_close, 0x8, 2, mask);
    client_close.extend([0x03 ^ 0x12, 0xe8 ^ 0x34]); // 1000
    let mut server_close = Vec::new();
    peer::header(&mut server_close, 0x8, 2, None);
    server_close.extend([0x03, 0xe8]);
    vec![
        (true, pcap::request()),
        (false, pcap::response()),
        (true, client),
        (false, server),
        (true, client_close),
        (false, server_close),
    ]
}

/// HTTP exchanges for the handshake target: a request head, a response head, a body.
fn http_seeds() -> Vec<Vec<u8>> {
    let upgrade = pcap::request();
    let refused = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\nWWW-Authenticate: Basic\r\n\r\nnope!".to_vec();
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec();
    let deflate = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n".to_vec();
    let accepted = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\nSec-WebSocket-Protocol: chat\r\n\r\n".to_vec();
    vec![
        [upgrade.clone(), pcap::response()].concat(),
        [upgrade, refused].concat(),
        [b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), chunked].concat(),
        [deflate, accepted].concat(),
    ]
}

/// The engine target: a control byte, then pieces of at most 64 bytes (a byte with the
/// direction and the length, then the bytes).
fn engine_seed(sends: &[(bool, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![0u8];
    for (from_client, bytes) in sends {
        for piece in bytes.chunks(64) {
            out.push(if *from_client { 0 } else { 0x80 } | (piece.len() as u8 - 1));
            out.extend_from_slice(piece);
        }
    }
    out
}

/// A TCP conversation carrying `sends`: (from the client, seq, ack, flags, payload),
/// from the SYN to the last FIN, in segments of at most `mss` bytes.
fn segments(sends: &[(bool, Vec<u8>)], mss: usize) -> Vec<(bool, u32, u32, u8, Vec<u8>)> {
    let (mut c, mut s) = (1000u32, 5000u32);
    let mut out = vec![(true, c, 0, TCP_SYN, Vec::new()), (false, s, c + 1, TCP_SYN | TCP_ACK, Vec::new())];
    (c, s) = (c + 1, s + 1);
    for (from_client, bytes) in sends {
        for piece in bytes.chunks(mss) {
            let (seq, ack) = if *from_client { (&mut c, s) } else { (&mut s, c) };
            out.push((*from_client, *seq, ack, TCP_ACK, piece.to_vec()));
            *seq = seq.wrapping_add(piece.len() as u32);
        }
    }
    out.push((true, c, s, TCP_FIN | TCP_ACK, Vec::new()));
    out.push((false, s, c + 1, TCP_FIN | TCP_ACK, Vec::new()));
    out
}

/// The reassembly target: 12 bytes per segment (connection and direction, flags,
/// sequence and acknowledgement numbers, length, skip), then the payload.
fn reassembly_seed(sends: &[(bool, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (from_client, seq, ack, flags, payload) in segments(sends, 200) {
        out.push(if from_client { 0 } else { 0x80 });
        let f = |bit: u8, v: u8| if flags & bit != 0 { v } else { 0 };
        out.push(f(TCP_SYN, 1) | f(TCP_ACK, 2) | f(TCP_FIN, 4));
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&ack.to_le_bytes());
        out.push(payload.len() as u8);
        out.push(0);
        out.extend_from_slice(&payload);
    }
    out
}

/// The record target: each record (a kernel record header, then its payload, padded to
/// 8 bytes) preceded by its length in 8-byte steps.
fn record_seed(sends: &[(bool, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (from_client, seq, ack, flags, payload) in segments(sends, 1024) {
        let (client, server) = ([10, 0, 0, 2], [10, 0, 0, 1]);
        let (src, dst, sport, dport) =
            if from_client { (client, server, 40000, pcap::PORT) } else { (server, client, pcap::PORT, 40000) };
        let addr = |a: [u8; 4]| {
            let mut v = [0u8; 16];
            v[..4].copy_from_slice(&a);
            v
        };
        let header = ChunkHeader {
            ts_ns: 1_000_000,
            saddr: addr(src),
            daddr: addr(dst),
            seq,
            ack,
            payload_len: payload.len() as u32,
            offset: 0,
            skip: 0,
            sport,
            dport,
            len: payload.len() as u16,
            family: 4,
            direction: if from_client { DIR_TO_SERVER } else { DIR_TO_CLIENT },
            flags,
            hook: 0,
            lost: 0,
            ifindex: 1,
            _pad: [0; 5],
        };
        // SAFETY: ChunkHeader is a #[repr(C)] struct of integers and byte arrays without
        // padding holes (its size is checked to be a multiple of 8 and every field is
        // written above), so its bytes are initialised and may be read as a slice.
        let bytes = unsafe {
            std::slice::from_raw_parts((&header as *const ChunkHeader).cast::<u8>(), std::mem::size_of::<ChunkHeader>())
        };
        let mut record = bytes.to_vec();
        record.extend_from_slice(&payload);
        record.resize(record.len().div_ceil(8) * 8, 0);
        out.push((record.len() / 8) as u8);
        out.extend_from_slice(&record);
    }
    out
}

fn write_seeds(target: &str, corpus: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let sends = session();
    let write = |name: &str, bytes: &[u8]| -> anyhow::Result<PathBuf> {
        let path = corpus.join(format!("seed-{name}"));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    match target {
        "engine" => {
            write("session", &engine_seed(&sends))?;
        }
        "handshake" => {
            for (i, seed) in http_seeds().iter().enumerate() {
                write(&format!("http-{i}"), seed)?;
            }
        }
        "reassembly" => {
            write("session", &reassembly_seed(&sends))?;
        }
        "record" => {
            write("session", &record_seed(&sends))?;
        }
        "pcap" => {
            let path = corpus.join("seed-session");
            let mut file = pcap::Pcap::create(&path)?;
            let borrowed: Vec<(bool, &[u8])> = sends.iter().map(|(c, b)| (*c, b.as_slice())).collect();
            file.connection(0, &borrowed, true)?;
            file.finish()?;
            pcap::small_frames(&corpus.join("seed-small-frames"), 2, 8)?;
        }
        other => bail!("no fuzz target {other:?}: pick from {}", TARGETS.join(", ")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_follow_each_format() {
        let sends = session();
        let total: usize = sends.iter().map(|(_, b)| b.len()).sum();
        // Every byte of the session is in each seed, with its framing around it.
        let engine = engine_seed(&sends);
        assert_eq!(engine.len(), 1 + total + sends.iter().map(|(_, b)| b.len().div_ceil(64)).sum::<usize>());
        let segs = segments(&sends, 200);
        assert_eq!(reassembly_seed(&sends).len(), 12 * segs.len() + total);
        let record = record_seed(&sends);
        assert_eq!(record[0] as usize * 8, std::mem::size_of::<ChunkHeader>(), "the SYN carries no payload");
    }
}
