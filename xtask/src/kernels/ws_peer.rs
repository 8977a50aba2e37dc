//! The scripted WebSocket exchange of the kernel matrix (`xtask ws-peer server|client`):
//! fixed bytes each way, so the monitor's report of it is known exactly. The client sends
//! an upgrade request with a fixed key, then a masked text frame, a masked binary frame
//! (16-bit length form), a masked ping and a close 1000; the server answers 101 with the
//! right accept value, a text frame for each data frame, a pong and a close 1000. Each
//! side checks every byte it receives against the script, the server closes TCP first.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use sha1::{Digest as _, Sha1};

/// How long either side waits for the other (connect, accept, every read).
const PATIENCE: Duration = Duration::from_secs(60);
/// The client's Sec-WebSocket-Key, base64 of the 16 bytes "kernel-matrix-16", fixed so
/// every run sends the same bytes.
const KEY: &str = "a2VybmVsLW1hdHJpeC0xNg==";
/// The client's masking key, the same for every frame.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// One step of the script: what the client sends, then what the server answers.
pub struct Step {
    pub client: Vec<u8>,
    pub server: Vec<u8>,
}

/// Sec-WebSocket-Accept for a key (RFC 6455 section 4.2.2).
pub fn accept_value(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// A single-frame message (FIN set); masked with [`MASK`] when `masked`.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=65535 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// The whole exchange, step by step.
pub fn script(port: u16) -> Vec<Step> {
    let request = format!(
        "GET /kernel-matrix HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_value(KEY)
    );
    let binary: Vec<u8> = (0..200u32).map(|i| (i * 7 % 256) as u8).collect();
    vec![
        Step { client: request.into_bytes(), server: response.into_bytes() },
        Step {
            client: frame(0x1, "hello from the kernel matrix".as_bytes(), true),
            server: frame(0x1, "echo: hello from the kernel matrix".as_bytes(), false),
        },
        Step { client: frame(0x2, &binary, true), server: frame(0x1, b"got 200 binary bytes", false) },
        Step { client: frame(0x9, b"ping-1", true), server: frame(0xA, b"ping-1", false) },
        Step {
            client: frame(0x8, &close_payload(1000, "done"), true),
            server: frame(0x8, &close_payload(1000, "bye"), false),
        },
    ]
}

/// Bytes of the client's stream a header-only capture leaves out: the binary frame's
/// 200-byte payload past the first 64.
pub const SKIPPED_CLIENT: u64 = 200 - 64;

/// Payload bytes (client → server, server → client) of the whole exchange.
pub fn totals(port: u16) -> (u64, u64) {
    script(port).iter().fold((0, 0), |(c, s), step| (c + step.client.len() as u64, s + step.server.len() as u64))
}

/// Reads exactly `expected.len()` bytes and checks they are `expected`.
fn expect(stream: &mut TcpStream, expected: &[u8], what: &str) -> anyhow::Result<()> {
    let mut got = vec![0u8; expected.len()];
    stream.read_exact(&mut got).with_context(|| format!("reading {what}"))?;
    if got != expected {
        bail!("{what}: expected {:?}, got {:?}", String::from_utf8_lossy(expected), String::from_utf8_lossy(&got));
    }
    Ok(())
}

/// Reads until the peer closes and checks nothing more came.
fn expect_eof(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).context("waiting for the peer to close")?;
    if !rest.is_empty() {
        bail!("{} unexpected bytes after the close frame", rest.len());
    }
    Ok(())
}

/// Accepts one connection on 127.0.0.1:`port` and plays the server side. Once listening
/// it creates `ready` (if given): the client must not connect earlier, since a refused
/// attempt would be one more connection in the monitor's report.
pub fn server(port: u16, ready: Option<&std::path::Path>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("listening on 127.0.0.1:{port}"))?;
    if let Some(ready) = ready {
        std::fs::write(ready, b"listening\n").with_context(|| format!("creating {}", ready.display()))?;
    }
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + PATIENCE;
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return Err(e).context(format!("accepting on 127.0.0.1:{port}")),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_nodelay(true)?;
    for (i, step) in script(port).iter().enumerate() {
        expect(&mut stream, &step.client, &format!("client step {i}"))?;
        stream.write_all(&step.server).with_context(|| format!("sending server step {i}"))?;
    }
    // The server closes the TCP connection first (RFC 6455 section 7.1.1).
    stream.shutdown(Shutdown::Write).context("closing the connection")?;
    expect_eof(&mut stream)?;
    let (c, s) = totals(port);
    println!("ws-peer server: ok, received {c} bytes, sent {s} bytes");
    Ok(())
}

/// Connects to 127.0.0.1:`port` once (the server must be listening: see [`server`]) and
/// plays the client side.
pub fn client(port: u16) -> anyhow::Result<()> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_nodelay(true)?;
    for (i, step) in script(port).iter().enumerate() {
        stream.write_all(&step.client).with_context(|| format!("sending client step {i}"))?;
        expect(&mut stream, &step.server, &format!("server step {i}"))?;
    }
    expect_eof(&mut stream)?;
    stream.shutdown(Shutdown::Write).context("closing the connection")?;
    let (c, s) = totals(port);
    println!("ws-peer client: ok, sent {c} bytes, received {s} bytes");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_value_matches_rfc_example() {
        assert_eq!(accept_value("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        // The key must be 16 bytes once decoded (RFC 6455 section 4.1).
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(KEY).unwrap(), b"kernel-matrix-16");
    }

    #[test]
    fn frames_have_the_rfc_layout() {
        // RFC 6455 section 5.7: a masked "Hello" from the client, unmasked from the server.
        let masked = frame(0x1, b"Hello", true);
        assert_eq!(&masked[..2], &[0x81, 0x85]);
        assert_eq!(&masked[2..6], &MASK);
        let unmasked: Vec<u8> = masked[6..].iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]).collect();
        assert_eq!(unmasked, b"Hello");
        assert_eq!(frame(0x1, b"Hello", false), [0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
        let long = frame(0x2, &[0u8; 200], true);
        assert_eq!(&long[..4], &[0x82, 0xfe, 0x00, 200]);
        assert_eq!(long.len(), 4 + 4 + 200);
    }

    #[test]
    fn exchange_over_loopback_moves_the_scripted_bytes() {
        // Any free port: bind, note it, release it, then run both sides on it.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let ready = std::env::temp_dir().join(format!("ws-peer-ready-{}", std::process::id()));
        let _ = std::fs::remove_file(&ready);
        let server = {
            let ready = ready.clone();
            std::thread::spawn(move || server(port, Some(&ready)))
        };
        while !ready.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::remove_file(&ready).unwrap();
        client(port).unwrap();
        server.join().unwrap().unwrap();
        let (c, s) = totals(port);
        let key_line = format!("Sec-WebSocket-Key: {KEY}\r\n");
        assert!(String::from_utf8_lossy(&script(port)[0].client).contains(&key_line));
        // request + 4 masked frames; response + 4 server frames.
        assert!(c > 150 && s > 150, "{c} {s}");
    }
}
