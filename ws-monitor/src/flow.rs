//! Connection identity and TCP segments: what the capture stage (live ring buffer or
//! pcap replay) hands to reassembly. Pure data, no I/O.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// Which way bytes travel between the connection's client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From the connecting side (the client) to the server.
    ToServer,
    /// From the server back to the client.
    ToClient,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::ToServer, Direction::ToClient];

    /// Index for per-direction arrays: `ToServer` = 0, `ToClient` = 1.
    pub fn index(self) -> usize {
        match self {
            Direction::ToServer => 0,
            Direction::ToClient => 1,
        }
    }

    pub fn reverse(self) -> Direction {
        match self {
            Direction::ToServer => Direction::ToClient,
            Direction::ToClient => Direction::ToServer,
        }
    }

    /// Stable name used in JSON, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Direction::ToServer => "client",
            Direction::ToClient => "server",
        }
    }
}

/// A TCP connection, oriented: `client` sent the SYN, `server` answered it. The capture
/// stage labels each segment by ports alone (the monitored port is the server's);
/// reassembly turns a connection the other way round when its SYN says so (see
/// [`crate::reassembly`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl FlowKey {
    /// The same connection with client and server swapped.
    pub fn reversed(&self) -> FlowKey {
        FlowKey { client: self.server, server: self.client }
    }

    /// One key for both orientations of the 4-tuple (the lower endpoint as `client`): the
    /// segments of one connection share it however the capture labelled them.
    pub fn unordered(&self) -> FlowKey {
        if self.client <= self.server {
            *self
        } else {
            self.reversed()
        }
    }

    /// Source and destination of a segment travelling in `dir`.
    pub fn endpoints(&self, dir: Direction) -> (SocketAddr, SocketAddr) {
        match dir {
            Direction::ToServer => (self.client, self.server),
            Direction::ToClient => (self.server, self.client),
        }
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.client, self.server)
    }
}

/// Identifies one instance of a connection: a 4-tuple reused after close gets a new id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// TCP flags carried by a segment (only the ones reassembly cares about).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// One piece of a TCP segment's payload as the capture stage saw it.
///
/// A segment larger than one capture chunk arrives as several `Segment`s with consecutive
/// `seq` values; `syn`/`rst` are set only on the first piece and `fin` only on the last,
/// so a piece never needs to know about its siblings.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub key: FlowKey,
    pub dir: Direction,
    /// Sequence number of `data[0]` (or of the SYN/FIN when `data` is empty).
    pub seq: u32,
    /// Acknowledgement number (valid when `flags.ack`).
    pub ack: u32,
    pub flags: TcpFlags,
    pub data: &'a [u8],
    /// Payload bytes right after `data` that the capture left out on purpose (binary frame
    /// payload under header-only capture): known to exist, never to be read.
    pub skip: u32,
    /// Monotonic timestamp in nanoseconds (kernel `bpf_ktime_get_ns`, or pcap time).
    pub ts_ns: u64,
    /// Index of the interface the packet was captured on (0: not known, as in a capture
    /// file).
    pub iface: u32,
}

impl<'a> Segment<'a> {
    /// The same segment labelled the other way round (its sender taken as the other end).
    pub fn reversed(&self) -> Segment<'a> {
        Segment { key: self.key.reversed(), dir: self.dir.reverse(), ..*self }
    }
}

/// Builds a key from a packet's addresses, given which end holds the monitored port.
pub fn key_for(src: (IpAddr, u16), dst: (IpAddr, u16), dir: Direction) -> FlowKey {
    let (src, dst) = (SocketAddr::new(src.0, src.1), SocketAddr::new(dst.0, dst.1));
    match dir {
        Direction::ToServer => FlowKey { client: src, server: dst },
        Direction::ToClient => FlowKey { client: dst, server: src },
    }
}

/// How a connection came to be tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// The SYN was seen: both streams start at offset 0 of the connection.
    Handshake,
    /// The connection was already open when capture started (or its SYN was lost):
    /// streams start somewhere in the middle.
    MidStream,
    /// A WebSocket session evicted earlier, taken up again where it was left: each
    /// stream's offset 0 is the byte after the last one of the evicted connection.
    Resumed,
}

/// Why a connection stopped being tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// Both sides sent FIN and everything up to them was accounted for.
    Fin,
    /// A RST was seen.
    Rst,
    /// Idle for longer than the idle timeout, or pushed out by the flow-table cap.
    Evicted,
    /// Capture ended (end of pcap, `--duration`, SIGINT) with the connection still open.
    CaptureEnded,
}

/// Why bytes of a stream went unanalysed (a blind spot). Reassembly reports the first
/// three with its gaps; the engine adds [`Loss::Resync`] itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loss {
    /// Never delivered by the capture: the ring buffer was full, the kernel could not
    /// copy them, or (replay) they are missing from the file.
    Capture,
    /// Still waiting for a hole before them when the connection was evicted (idle, or
    /// pushed out of a full flow table).
    Eviction,
    /// Given up to keep out-of-order buffering under its limits (per direction:
    /// `--flow-buffer`; over all connections: `--memory-limit`), or beyond what a
    /// handshake may hold.
    BufferLimit,
    /// Passed over while a direction was out of sync, looking for a frame boundary.
    Resync,
}

impl Loss {
    pub const ALL: [Loss; 4] = [Loss::Capture, Loss::Eviction, Loss::BufferLimit, Loss::Resync];

    /// Stable name used in JSON, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Capture => "capture_loss",
            Loss::Eviction => "eviction",
            Loss::BufferLimit => "buffer_limit",
            Loss::Resync => "resync",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Bytes that went unanalysed, by [`Loss`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unanalysed([u64; 4]);

impl Unanalysed {
    pub fn add(&mut self, loss: Loss, n: u64) {
        if let Some(c) = self.0.get_mut(loss.index()) {
            *c = c.saturating_add(n);
        }
    }

    pub fn get(&self, loss: Loss) -> u64 {
        self.0.get(loss.index()).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |t, n| t.saturating_add(*n))
    }

    /// Adds another count (of other connections) to this one.
    pub fn merge(&mut self, o: &Unanalysed) {
        for loss in Loss::ALL {
            self.add(loss, o.get(loss));
        }
    }
}

/// `{"capture_loss": N, "eviction": N, "buffer_limit": N, "resync": N}`.
impl serde::Serialize for Unanalysed {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(Loss::ALL.len()))?;
        for loss in Loss::ALL {
            m.serialize_entry(loss.name(), &self.get(loss))?;
        }
        m.end()
    }
}

/// Receives the ordered byte streams rebuilt by reassembly. Offsets count bytes of one
/// direction's stream from where tracking began (0 = first byte after the SYN, or the
/// first byte seen for a mid-stream connection). For each direction, `data` and `gap`
/// calls tile the stream: every call starts where the previous one ended.
pub trait StreamSink {
    fn open(&mut self, id: FlowId, key: &FlowKey, opening: Opening, ts_ns: u64);
    fn data(&mut self, id: FlowId, dir: Direction, offset: u64, data: &[u8], ts_ns: u64);
    /// `len` bytes at `offset` were on the wire but will never be delivered, for `loss`.
    fn gap(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, loss: Loss, ts_ns: u64);
    /// `len` bytes at `offset` were seen but left out on purpose by the capture (the rest
    /// of a binary frame's payload). A sink that needs every byte takes them for a gap.
    fn skip(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, ts_ns: u64) {
        self.gap(id, dir, offset, len, Loss::Capture, ts_ns);
    }
    /// The side sending in `dir` ended TCP: its FIN was seen (once per direction), or
    /// a RST that closes the connection.
    fn end(&mut self, id: FlowId, dir: Direction, ts_ns: u64) {
        let _ = (id, dir, ts_ns);
    }
    fn close(&mut self, id: FlowId, closing: Closing, ts_ns: u64);
    /// The connection's packets are captured on the interface with index `ifindex`
    /// (told once, right after `open`, when it is known).
    fn seen_on(&mut self, id: FlowId, ifindex: u32) {
        let _ = (id, ifindex);
    }
}

/// Feeds two sinks with the same events, in order (`a` first).
impl<A: StreamSink, B: StreamSink> StreamSink for (A, B) {
    fn open(&mut self, id: FlowId, key: &FlowKey, opening: Opening, ts_ns: u64) {
        self.0.open(id, key, opening, ts_ns);
        self.1.open(id, key, opening, ts_ns);
    }
    fn data(&mut self, id: FlowId, dir: Direction, offset: u64, data: &[u8], ts_ns: u64) {
        self.0.data(id, dir, offset, data, ts_ns);
        self.1.data(id, dir, offset, data, ts_ns);
    }
    fn gap(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, loss: Loss, ts_ns: u64) {
        self.0.gap(id, dir, offset, len, loss, ts_ns);
        self.1.gap(id, dir, offset, len, loss, ts_ns);
    }
    fn skip(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, ts_ns: u64) {
        self.0.skip(id, dir, offset, len, ts_ns);
        self.1.skip(id, dir, offset, len, ts_ns);
    }
    fn end(&mut self, id: FlowId, dir: Direction, ts_ns: u64) {
        self.0.end(id, dir, ts_ns);
        self.1.end(id, dir, ts_ns);
    }
    fn close(&mut self, id: FlowId, closing: Closing, ts_ns: u64) {
        self.0.close(id, closing, ts_ns);
        self.1.close(id, closing, ts_ns);
    }
    fn seen_on(&mut self, id: FlowId, ifindex: u32) {
        self.0.seen_on(id, ifindex);
        self.1.seen_on(id, ifindex);
    }
}

impl<S: StreamSink + ?Sized> StreamSink for &mut S {
    fn open(&mut self, id: FlowId, key: &FlowKey, opening: Opening, ts_ns: u64) {
        (**self).open(id, key, opening, ts_ns);
    }
    fn data(&mut self, id: FlowId, dir: Direction, offset: u64, data: &[u8], ts_ns: u64) {
        (**self).data(id, dir, offset, data, ts_ns);
    }
    fn gap(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, loss: Loss, ts_ns: u64) {
        (**self).gap(id, dir, offset, len, loss, ts_ns);
    }
    fn skip(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, ts_ns: u64) {
        (**self).skip(id, dir, offset, len, ts_ns);
    }
    fn end(&mut self, id: FlowId, dir: Direction, ts_ns: u64) {
        (**self).end(id, dir, ts_ns);
    }
    fn close(&mut self, id: FlowId, closing: Closing, ts_ns: u64) {
        (**self).close(id, closing, ts_ns);
    }
    fn seen_on(&mut self, id: FlowId, ifindex: u32) {
        (**self).seen_on(id, ifindex);
    }
}
