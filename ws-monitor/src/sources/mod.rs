//! Where segments come from: the kernel program's ring buffer on a live host
//! ([`capture`]), or a pcap/pcapng file ([`replay`]). Both produce
//! [`crate::flow::Segment`]s. The live driver reads any [`Source`]: the real capture,
//! or a test's scripted one.

use std::collections::HashMap;
use std::future::Future;
use std::io;

use crate::engine::Hint;
use crate::flow::Segment;

pub mod capture;
pub mod replay;

pub use capture::{KernelCounters, LinkEvent};

/// One record from a live source.
#[derive(Clone, Copy, Debug)]
pub enum Delivery<'a> {
    /// Bytes of a packet (possibly none: a SYN, a pure ACK…).
    Segment(Segment<'a>),
    /// Bytes the capture could not copy (the ring was full): a gap at this place.
    Lost(Segment<'a>),
    /// A record that could not be decoded (counted, then dropped).
    Bad,
}

/// A live source of segments, as the driver uses it.
pub trait Source {
    /// Waits until records may be waiting.
    fn readable(&mut self) -> impl Future<Output = io::Result<()>>;
    /// Hands up to `max` records to `f` without waiting; true if it stopped at `max`
    /// (more may be waiting).
    fn drain(&mut self, max: usize, f: impl FnMut(Delivery<'_>)) -> bool;
    /// Most records the source holds at once: the final drain reads no more, so that
    /// traffic going on cannot keep the driver from ending.
    fn capacity(&self) -> usize;
    /// Acts on a hint from the engine (where the next frame header is, or copy whole).
    fn steer(&mut self, hint: &Hint, seq: Option<u32>);
    /// What changed on the interfaces since the last call (about once a second).
    fn watch(&mut self) -> Vec<LinkEvent>;
    /// Names of the interfaces captured on, by index.
    fn interface_names(&self) -> &HashMap<u32, String>;
    /// The capture's counters (packets matched, records the ring had no room for…).
    fn counters(&self) -> anyhow::Result<KernelCounters>;
    /// What the report says of the source, read just before it is dropped (the last
    /// of what it has to say is said then).
    fn report(&mut self, counters: &KernelCounters) -> serde_json::Map<String, serde_json::Value>;
}
