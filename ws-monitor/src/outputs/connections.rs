//! `--connections FILE`: one JSON line for every WebSocket connection when it ends.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::engine::ConnectionRecord;
use crate::flow::Opening;
use crate::outputs::jsonl::JsonLines;

/// Writes connection records as JSON lines.
pub struct ConnectionLog {
    out: JsonLines,
    /// Include close reasons (`--log-payload`): they are payload.
    log_payload: bool,
    /// Names of the interfaces captured on, by index (live; none in replay).
    interfaces: HashMap<u32, String>,
}

impl ConnectionLog {
    pub fn create(path: &Path, epoch_offset_ns: i128, log_payload: bool) -> anyhow::Result<Self> {
        let out = JsonLines::create(path, "--connections", epoch_offset_ns)?;
        Ok(ConnectionLog { out, log_payload, interfaces: HashMap::new() })
    }

    /// Names the interfaces records may carry the index of.
    pub fn name_interfaces(&mut self, names: &HashMap<u32, String>) {
        self.interfaces.clone_from(names);
    }

    /// The line for `r`: its fields, then `iface` (live), `start`, `end` (RFC 3339),
    /// `duration_s`, `idle_before_end_s` (from the last payload byte to the end) and
    /// `tracked` (`handshake`, `mid_stream` or `resumed`).
    pub fn line(&self, r: &ConnectionRecord) -> Value {
        let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
        v["iface"] = self.interfaces.get(&r.iface).cloned().into();
        let secs = |ns: u64| ns as f64 / 1e9;
        v["start"] = self.out.time(r.start_ns).into();
        v["end"] = self.out.time(r.end_ns).into();
        v["duration_s"] = secs(r.end_ns.saturating_sub(r.start_ns)).into();
        v["idle_before_end_s"] = secs(r.end_ns.saturating_sub(r.last_data_ns)).into();
        v["tracked"] = match r.opening {
            Opening::Handshake => "handshake",
            Opening::MidStream => "mid_stream",
            Opening::Resumed => "resumed",
        }
        .into();
        if !self.log_payload {
            for side in ["client", "server"] {
                if let Some(close) = v["close"][side].as_object_mut() {
                    close.remove("reason");
                }
            }
        }
        v
    }

    pub fn write(&mut self, r: &ConnectionRecord) {
        let line = self.line(r);
        self.out.write(&line);
    }

    pub fn flush(&mut self) {
        self.out.flush();
    }
}
