//! The pipeline shared by live capture and replay: segments → reassembly → engine (and
//! the optional stream dump). No I/O of its own beyond what the sinks do.
//!
//! A bug stays in its flow: a panic while a connection is analysed is caught here, that
//! connection is dropped from reassembly and the engine and counted (`engine_panics`,
//! with the connection in an error log line), and the monitor goes on.

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

use crate::engine::{ConnectionRecord, Engine, EngineConfig, EngineStats, Finding, Hint, Steer};
use crate::flow::{Closing, Direction, FlowId, FlowKey, Loss, Opening, Segment, StreamSink};
use crate::outputs::streams::StreamDump;
use crate::reassembly::{Reassembler, ReassemblyConfig, ReassemblyStats};

/// Everything downstream of reassembly.
pub struct Sinks {
    pub engine: Engine,
    pub dump: Option<StreamDump>,
}

impl StreamSink for Sinks {
    fn open(&mut self, id: FlowId, key: &FlowKey, opening: Opening, ts_ns: u64) {
        self.engine.open(id, key, opening, ts_ns);
        if let Some(d) = &mut self.dump {
            d.open(id, key, opening, ts_ns);
        }
    }
    fn data(&mut self, id: FlowId, dir: Direction, offset: u64, data: &[u8], ts_ns: u64) {
        self.engine.data(id, dir, offset, data, ts_ns);
        if let Some(d) = &mut self.dump {
            d.data(id, dir, offset, data, ts_ns);
        }
    }
    fn gap(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, loss: Loss, ts_ns: u64) {
        self.engine.gap(id, dir, offset, len, loss, ts_ns);
        if let Some(d) = &mut self.dump {
            d.gap(id, dir, offset, len, loss, ts_ns);
        }
    }
    fn skip(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, ts_ns: u64) {
        self.engine.skip(id, dir, offset, len, ts_ns);
        if let Some(d) = &mut self.dump {
            d.skip(id, dir, offset, len, ts_ns);
        }
    }
    fn seen_on(&mut self, id: FlowId, ifindex: u32) {
        self.engine.seen_on(id, ifindex);
    }
    fn end(&mut self, id: FlowId, dir: Direction, ts_ns: u64) {
        self.engine.end(id, dir, ts_ns);
    }
    fn close(&mut self, id: FlowId, closing: Closing, ts_ns: u64) {
        self.engine.close(id, closing, ts_ns);
        if let Some(d) = &mut self.dump {
            d.close(id, closing, ts_ns);
        }
    }
}

pub struct Monitor {
    reassembler: Reassembler,
    pub sinks: Sinks,
}

thread_local! {
    /// Set while a [`Monitor`] runs analysis whose panics it catches.
    static CONTAINING: Cell<bool> = const { Cell::new(false) };
}

/// Whether a panic on this thread now is one a [`Monitor`] catches: the panic hooks then
/// leave the terminal and stderr alone (the monitor logs it and goes on).
pub fn panic_is_contained() -> bool {
    CONTAINING.with(Cell::get)
}

/// Runs `f`, catching a panic in it quietly (the hooks leave the terminal and stderr
/// alone): its message, for the caller to log and count.
pub fn contained<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let was = CONTAINING.replace(true);
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINING.set(was);
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    })
}

/// Makes the process's panic hook quiet for the panics a [`Monitor`] contains.
pub fn quiet_contained_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !panic_is_contained() {
            previous(info);
        }
    }));
}

impl Monitor {
    pub fn new(reassembly: ReassemblyConfig, engine: EngineConfig, dump: Option<StreamDump>) -> Self {
        Self::with_ids(reassembly, engine, dump, 1, 1)
    }

    /// A monitor whose flow ids are `first`, `first + step`, ... (one of several side by
    /// side, see [`crate::pipeline`]).
    pub fn with_ids(
        reassembly: ReassemblyConfig,
        engine: EngineConfig,
        dump: Option<StreamDump>,
        first: u64,
        step: u64,
    ) -> Self {
        Monitor {
            reassembler: Reassembler::with_ids(reassembly, first, step),
            sinks: Sinks { engine: Engine::new(engine), dump },
        }
    }

    pub fn segment(&mut self, seg: &Segment<'_>) {
        self.contain(Some(seg.key), |m| {
            m.reassembler.segment(seg, &mut m.sinks);
            for (id, key) in m.sinks.engine.drain_sessions() {
                m.reassembler.promote(id, &key);
            }
        });
    }

    /// A segment the capture lost (see [`Reassembler::lost`]).
    pub fn lost(&mut self, seg: &Segment<'_>) {
        self.contain(Some(seg.key), |m| m.reassembler.lost(seg, &mut m.sinks));
    }

    pub fn tick(&mut self, now_ns: u64) {
        self.contain(None, |m| m.reassembler.tick(now_ns, &mut m.sinks));
    }

    pub fn finish(&mut self, now_ns: u64) {
        while !self.finish_some(now_ns, usize::MAX) {}
    }

    /// Like [`Monitor::finish`], closing at most `max` connections; true once none is
    /// left open (or the sweep panicked: what it left is not closed).
    pub fn finish_some(&mut self, now_ns: u64, max: usize) -> bool {
        let mut done = true;
        self.contain(None, |m| done = m.reassembler.finish_some(now_ns, &mut m.sinks, max));
        done
    }

    /// Runs `f`, catching a panic in it: the connection `key` (the one being analysed,
    /// when known) is then dropped from reassembly and the engine, and the panic counted
    /// and logged, instead of taking the monitor down.
    fn contain(&mut self, key: Option<FlowKey>, f: impl FnOnce(&mut Monitor)) {
        let Err(what) = contained(|| f(self)) else { return };
        if let Some(id) = key.and_then(|k| self.reassembler.forget(&k)) {
            self.sinks.engine.forget(id);
        }
        self.sinks.engine.count_panic();
        match key {
            Some(k) => tracing::error!(
                client = %k.client,
                server = %k.server,
                "analysing a connection panicked ({what}): it is dropped and counted in engine_panics; please report this with the connection"
            ),
            None => tracing::error!(
                "the periodic sweep of connections panicked ({what}): counted in engine_panics; please report this"
            ),
        }
    }

    pub fn reassembly(&self) -> &ReassemblyStats {
        self.reassembler.stats()
    }

    pub fn engine(&self) -> &Engine {
        &self.sinks.engine
    }

    pub fn engine_stats(&self) -> &EngineStats {
        self.sinks.engine.stats()
    }

    /// Findings since the last call, oldest first.
    pub fn drain_findings(&mut self) -> std::vec::Drain<'_, Finding> {
        self.sinks.engine.drain_findings()
    }

    /// Records of WebSocket connections that ended since the last call.
    pub fn drain_records(&mut self) -> std::vec::Drain<'_, ConnectionRecord> {
        self.sinks.engine.drain_records()
    }

    /// Writes of `--streams-dir` that failed (0 without it).
    pub fn stream_errors(&self) -> u64 {
        self.sinks.dump.as_ref().map_or(0, |d| d.errors)
    }

    pub fn open_flows(&self) -> usize {
        self.reassembler.open_flows()
    }

    /// The engine's hints for a header-only capture, each with the sequence number of its
    /// stream offset (while the connection is tracked).
    pub fn drain_hints(&mut self) -> Vec<(Hint, Option<u32>)> {
        let Monitor { reassembler, sinks } = self;
        sinks
            .engine
            .drain_hints()
            .map(|hint| {
                let seq = match hint.steer {
                    Steer::Anchor { offset, .. } => reassembler.seq_at(&hint.key, hint.dir, offset),
                    Steer::FullCopy => None,
                };
                (hint, seq)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contained_gives_the_panic_message_and_leaves_the_flag_as_it_was() {
        assert_eq!(contained(|| 7), Ok(7));
        let boom = contained(|| -> u8 { panic!("boom {}", 1) });
        assert_eq!(boom, Err("boom 1".to_string()));
        assert!(!panic_is_contained(), "only while the closure runs");
    }
}
