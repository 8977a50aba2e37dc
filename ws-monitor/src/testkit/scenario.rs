//! A TCP connection's byte streams as the segments a capture delivers
//! ([`crate::flow::Segment`]): the three-way handshake, then data with sequence and
//! acknowledgement numbers kept in step, for reassembly and the pipeline.
//!
//! ```
//! use ws_monitor::flow::{Direction, Segment};
//! use ws_monitor::testkit::scenario::Tcp;
//! let mut tcp = Tcp::new("10.0.0.1:40000".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), 100, 900);
//! let mut seen = Vec::new();
//! let mut keep = |s: &Segment<'_>| seen.push((s.dir, s.seq, s.ack, s.data.len()));
//! tcp.open(&mut keep);
//! tcp.send(Direction::ToServer, b"GET / HTTP/1.1\r\n\r\n", &mut keep);
//! assert_eq!(seen[2], (Direction::ToServer, 101, 901, 18));
//! ```

use std::net::SocketAddr;

use crate::flow::{Direction, FlowKey, Segment, TcpFlags};

/// One connection: the next sequence number of each side.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub key: FlowKey,
    /// Timestamp the segments carry.
    pub ts_ns: u64,
    /// Interface index the segments carry.
    pub iface: u32,
    /// Initial sequence numbers, by [`Direction::index`].
    isn: [u32; 2],
    /// Bytes sent so far, by [`Direction::index`].
    sent: [u32; 2],
}

impl Tcp {
    /// A connection from `client` to `server` with these initial sequence numbers.
    pub fn new(client: SocketAddr, server: SocketAddr, isn_client: u32, isn_server: u32) -> Tcp {
        let mut isn = [0; 2];
        if let Some(c) = isn.get_mut(Direction::ToServer.index()) {
            *c = isn_client;
        }
        if let Some(s) = isn.get_mut(Direction::ToClient.index()) {
            *s = isn_server;
        }
        Tcp { key: FlowKey { client, server }, ts_ns: 1, iface: 0, isn, sent: [0; 2] }
    }

    /// The sequence number of the next byte `dir` sends.
    pub fn next_seq(&self, dir: Direction) -> u32 {
        let i = dir.index();
        let (isn, sent) = (self.isn.get(i).copied().unwrap_or(0), self.sent.get(i).copied().unwrap_or(0));
        isn.wrapping_add(1).wrapping_add(sent)
    }

    /// The SYN and the SYN-ACK.
    pub fn open(&mut self, f: &mut dyn FnMut(&Segment<'_>)) {
        let syn = TcpFlags { syn: true, ..TcpFlags::default() };
        f(&self.segment(Direction::ToServer, self.next_seq(Direction::ToServer).wrapping_sub(1), 0, syn, &[]));
        let ack = self.next_seq(Direction::ToServer);
        let syn_ack = TcpFlags { syn: true, ack: true, ..TcpFlags::default() };
        f(&self.segment(Direction::ToClient, self.next_seq(Direction::ToClient).wrapping_sub(1), ack, syn_ack, &[]));
    }

    /// `data` sent by `dir` in one segment, acknowledging everything the other side sent.
    pub fn send(&mut self, dir: Direction, data: &[u8], f: &mut dyn FnMut(&Segment<'_>)) {
        let (seq, ack) = (self.next_seq(dir), self.next_seq(dir.reverse()));
        f(&self.segment(dir, seq, ack, TcpFlags { ack: true, ..TcpFlags::default() }, data));
        if let Some(sent) = self.sent.get_mut(dir.index()) {
            *sent = sent.wrapping_add(data.len() as u32);
        }
    }

    /// Both streams in segments of at most `mss` bytes, the two directions taking turns;
    /// the client's first segment is its HTTP head alone (a client sends frames only
    /// once the 101 is there).
    pub fn exchange(&mut self, client: &[u8], server: &[u8], mss: usize, f: &mut dyn FnMut(&Segment<'_>)) {
        let mss = mss.max(1);
        let mut offs = [0usize; 2];
        let streams = [(Direction::ToServer, client), (Direction::ToClient, server)];
        while offs[0] < client.len() || offs[1] < server.len() {
            for (i, (dir, data)) in streams.iter().enumerate() {
                let Some(&off) = offs.get(i) else { continue };
                if off >= data.len() {
                    continue;
                }
                let end = if i == 0 && off == 0 { head_len(data) } else { (off + mss).min(data.len()) };
                let end = if end == 0 { (off + mss).min(data.len()) } else { end };
                self.send(*dir, data.get(off..end).unwrap_or_default(), f);
                if let Some(o) = offs.get_mut(i) {
                    *o = end;
                }
            }
        }
    }

    fn segment<'a>(&self, dir: Direction, seq: u32, ack: u32, flags: TcpFlags, data: &'a [u8]) -> Segment<'a> {
        Segment { key: self.key, dir, seq, ack, flags, data, skip: 0, ts_ns: self.ts_ns, iface: self.iface }
    }
}

/// Length of the HTTP head `b` starts with, up to and including its blank line; 0 when
/// there is none.
pub fn head_len(b: &[u8]) -> usize {
    b.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |i| i + 4)
}
