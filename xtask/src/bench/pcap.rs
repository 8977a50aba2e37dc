//! Synthetic captures for `cargo xtask bench`: classic pcap, Ethernet/IPv4/TCP, whole
//! connections (handshake, upgrade, frames in MSS-sized segments), written directly.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Context as _;

use crate::kernels::ws_peer::accept_value;

const MSS: usize = 1448;
const KEY: &str = "YmVuY2gta2V5LTE2Ynl0ZQ==";
pub const PORT: u16 = 8001;
const SERVER: [u8; 4] = [10, 0, 0, 1];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
const FIN: u8 = 0x01;

/// Where a connection's two directions stand.
#[derive(Clone, Copy)]
struct Conn {
    client: [u8; 4],
    cport: u16,
    cseq: u32,
    sseq: u32,
}

pub struct Pcap {
    out: BufWriter<File>,
    ts_us: u64,
    pub packets: u64,
}

impl Pcap {
    pub fn create(path: &Path) -> anyhow::Result<Pcap> {
        let mut out = BufWriter::with_capacity(
            1 << 20,
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        // Magic, version 2.4, zone, sigfigs, snaplen, LINKTYPE_ETHERNET.
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        for v in [0u32, 0, 262_144, 1] {
            out.write_all(&v.to_le_bytes())?;
        }
        Ok(Pcap { out, ts_us: 1_700_000_000_000_000, packets: 0 })
    }

    #[allow(clippy::too_many_arguments)]
    fn packet(
        &mut self,
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let ip_len = 20 + 20 + payload.len();
        let mut p = Vec::with_capacity(14 + ip_len);
        p.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        p.extend_from_slice(&[0x45, 0, (ip_len >> 8) as u8, ip_len as u8, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ack.to_be_bytes());
        p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        self.ts_us += 10;
        let (sec, usec) = ((self.ts_us / 1_000_000) as u32, (self.ts_us % 1_000_000) as u32);
        for v in [sec, usec, p.len() as u32, p.len() as u32] {
            self.out.write_all(&v.to_le_bytes())?;
        }
        self.out.write_all(&p)?;
        self.packets += 1;
        Ok(())
    }

    /// Opens a connection from client number `n`: SYN, SYN-ACK, ACK.
    fn open(&mut self, n: u32) -> anyhow::Result<Conn> {
        let c = [10, 1 + (n >> 16) as u8, (n >> 8) as u8, n as u8];
        let cport = 10_000 + (n % 50_000) as u16;
        let (cisn, sisn) = (n.wrapping_mul(2_654_435_761), n.wrapping_mul(40_503) ^ 0x5555_0000);
        self.packet(c, cport, SERVER, PORT, cisn, 0, SYN, &[])?;
        self.packet(SERVER, PORT, c, cport, sisn, cisn.wrapping_add(1), SYN | ACK, &[])?;
        let conn = Conn { client: c, cport, cseq: cisn.wrapping_add(1), sseq: sisn.wrapping_add(1) };
        self.packet(c, cport, SERVER, PORT, conn.cseq, conn.sseq, ACK, &[])?;
        Ok(conn)
    }

    /// One segment of `conn` (`from_client` or from the server).
    fn send(&mut self, conn: &mut Conn, from_client: bool, seg: &[u8]) -> anyhow::Result<()> {
        let Conn { client, cport, cseq, sseq } = *conn;
        if from_client {
            self.packet(client, cport, SERVER, PORT, cseq, sseq, ACK | PSH, seg)?;
            conn.cseq = cseq.wrapping_add(seg.len() as u32);
        } else {
            self.packet(SERVER, PORT, client, cport, sseq, cseq, ACK | PSH, seg)?;
            conn.sseq = sseq.wrapping_add(seg.len() as u32);
        }
        Ok(())
    }

    /// FINs both ways and the last ACK.
    fn close(&mut self, conn: &Conn) -> anyhow::Result<()> {
        let Conn { client, cport, cseq, sseq } = *conn;
        self.packet(client, cport, SERVER, PORT, cseq, sseq, ACK | FIN, &[])?;
        self.packet(SERVER, PORT, client, cport, sseq, cseq.wrapping_add(1), ACK | FIN, &[])?;
        self.packet(client, cport, SERVER, PORT, cseq.wrapping_add(1), sseq.wrapping_add(1), ACK, &[])
    }

    /// One connection from client number `n`: opened, then each of `sends` (true: from
    /// the client) in MSS-sized segments, in order, then FINs when `close`.
    pub fn connection(&mut self, n: u32, sends: &[(bool, &[u8])], close: bool) -> anyhow::Result<()> {
        let mut conn = self.open(n)?;
        for &(from_client, bytes) in sends {
            for seg in bytes.chunks(MSS) {
                self.send(&mut conn, from_client, seg)?;
            }
        }
        if close {
            self.close(&conn)?;
        }
        Ok(())
    }

    /// Connections `0..`, one per entry of `sends`, open at once with their segments
    /// interleaved as on a busy server (one segment of each in turn), then closed.
    pub fn interleaved(&mut self, sends: &[Vec<(bool, Vec<u8>)>]) -> anyhow::Result<()> {
        let mut conns = Vec::with_capacity(sends.len());
        for n in 0..sends.len() {
            conns.push(self.open(n as u32)?);
        }
        let mut segments: Vec<_> = sends
            .iter()
            .map(|s| s.iter().flat_map(|(from_client, bytes)| bytes.chunks(MSS).map(move |seg| (*from_client, seg))))
            .collect();
        let mut open = segments.len();
        while open > 0 {
            open = 0;
            for (conn, segs) in conns.iter_mut().zip(&mut segments) {
                if let Some((from_client, seg)) = segs.next() {
                    self.send(conn, from_client, seg)?;
                    open += 1;
                }
            }
        }
        for conn in &conns {
            self.close(conn)?;
        }
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<()> {
        self.out.flush().context("writing the capture")
    }
}

pub fn request() -> Vec<u8> {
    format!(
        "GET /bench HTTP/1.1\r\nHost: 10.0.0.1:{PORT}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

pub fn response() -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_value(KEY)
    )
    .into_bytes()
}

/// A text frame, masked with `mask` when given.
pub fn text_frame(out: &mut Vec<u8>, payload: &[u8], mask: Option<[u8; 4]>) {
    super::peer::header(out, 1, payload.len(), mask);
    match mask {
        Some(k) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4])),
        None => out.extend_from_slice(payload),
    }
}

/// `conns` connections, each a client sending `frames` masked text frames of 20–200 bytes
/// and the server answering one; returns the frames written.
pub fn small_frames(path: &Path, conns: u32, frames: u32) -> anyhow::Result<u64> {
    let mut pcap = Pcap::create(path)?;
    let text = b"a chat message of some length, repeated to fill two hundred bytes of text... ".repeat(3);
    let mut sends = Vec::new();
    for n in 0..conns {
        let mut c = Vec::new();
        let mut x = n.wrapping_mul(0x9e37_79b9) | 1;
        for _ in 0..frames {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = 20 + (x % 181) as usize;
            text_frame(&mut c, &text[..len], Some(x.to_be_bytes()));
        }
        let mut s = Vec::new();
        text_frame(&mut s, b"ok", None);
        sends.push(vec![(true, request()), (false, response()), (true, c), (false, s)]);
    }
    pcap.interleaved(&sends)?;
    pcap.finish()?;
    Ok(u64::from(conns) * (u64::from(frames) + 1))
}

/// `conns` connections open at once: upgraded, one text frame each way, never closed.
pub fn many_connections(path: &Path, conns: u32) -> anyhow::Result<()> {
    let mut pcap = Pcap::create(path)?;
    for n in 0..conns {
        let mut c = Vec::new();
        text_frame(&mut c, b"hello", Some(n.to_be_bytes()));
        let mut s = Vec::new();
        text_frame(&mut s, b"hi", None);
        pcap.connection(n, &[(true, &request()), (false, &response()), (true, &c), (false, &s)], false)?;
    }
    pcap.finish()
}
