//! The pipeline shared by live capture and replay: segments → reassembly → engine (and
//! the optional stream dump). No I/O of its own beyond what the sinks do.

use crate::engine::{ConnectionRecord, Engine, EngineConfig, EngineStats, Finding, Hint, Steer};
use crate::flow::{Closing, Direction, FlowId, FlowKey, Loss, Opening, Segment, StreamSink};
use crate::reassembly::{Reassembler, ReassemblyConfig, ReassemblyStats};
use crate::streams::StreamDump;

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

impl Monitor {
    pub fn new(reassembly: ReassemblyConfig, engine: EngineConfig, dump: Option<StreamDump>) -> Self {
        Self::with_ids(reassembly, engine, dump, 1, 1)
    }

    /// A monitor whose flow ids are `first`, `first + step`, ... (one of several side by
    /// side, see [`crate::pipeline`]).
    pub fn with_ids(reassembly: ReassemblyConfig, engine: EngineConfig, dump: Option<StreamDump>, first: u64, step: u64) -> Self {
        Monitor {
            reassembler: Reassembler::with_ids(reassembly, first, step),
            sinks: Sinks { engine: Engine::new(engine), dump },
        }
    }

    pub fn segment(&mut self, seg: &Segment<'_>) {
        self.reassembler.segment(seg, &mut self.sinks);
        for (id, key) in self.sinks.engine.drain_sessions() {
            self.reassembler.promote(id, &key);
        }
    }

    /// A segment the capture lost (see [`Reassembler::lost`]).
    pub fn lost(&mut self, seg: &Segment<'_>) {
        self.reassembler.lost(seg, &mut self.sinks);
    }

    pub fn tick(&mut self, now_ns: u64) {
        self.reassembler.tick(now_ns, &mut self.sinks);
    }

    pub fn finish(&mut self, now_ns: u64) {
        self.reassembler.finish(now_ns, &mut self.sinks);
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
