//! `--events FILE`: every finding as one JSON line.

use std::path::Path;

use serde_json::json;

use crate::engine::Finding;
use crate::outputs::jsonl::JsonLines;

/// Writes findings as JSON lines: time, connection, direction, kind, stream offset and
/// the raw frame header in hex.
pub struct EventLog {
    out: JsonLines,
    /// Include the excerpt of the bytes at fault (`--log-payload`).
    log_payload: bool,
}

impl EventLog {
    pub fn create(path: &Path, epoch_offset_ns: i128, log_payload: bool) -> anyhow::Result<Self> {
        Ok(EventLog { out: JsonLines::create(path, "--events", epoch_offset_ns)?, log_payload })
    }

    pub fn write(&mut self, f: &Finding) {
        let mut line = json!({
            "time": self.out.time(f.ts_ns),
            "connection": {"id": f.id.0, "client": f.key.client.to_string(), "server": f.key.server.to_string()},
            "direction": f.dir.name(),
            "kind": f.kind.name(),
            "offset": f.offset,
            "header": f.header.hex(),
        });
        if self.log_payload {
            line["payload"] = f.excerpt.escaped().into();
        }
        if let Some(explained) = f.explain() {
            line["detail"] = explained.into();
        }
        self.out.write(&line);
    }

    pub fn flush(&mut self) {
        self.out.flush();
    }
}
