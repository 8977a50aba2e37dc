//! `--events FILE`: every finding as one JSON line.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde_json::json;

use crate::engine::Finding;

/// Writes findings as JSON lines: time, connection, direction, kind, stream offset and
/// the raw frame header in hex.
pub struct EventLog {
    out: BufWriter<File>,
    /// Added to a finding's timestamp to get nanoseconds since the Unix epoch (live
    /// timestamps are CLOCK_MONOTONIC; pcap timestamps are already epoch-based: 0).
    epoch_offset_ns: i128,
    /// Include the excerpt of the bytes at fault (`--log-payload`).
    log_payload: bool,
    /// Write errors (the first is reported on stderr).
    pub errors: u64,
}

impl EventLog {
    pub fn create(path: &Path, epoch_offset_ns: i128, log_payload: bool) -> anyhow::Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("cannot create --events file {}", path.display()))?;
        Ok(EventLog { out: BufWriter::new(file), epoch_offset_ns, log_payload, errors: 0 })
    }

    pub fn write(&mut self, f: &Finding) {
        let epoch_ns = (f.ts_ns as i128 + self.epoch_offset_ns).max(0) as u64;
        let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(epoch_ns);
        let mut line = json!({
            "time": humantime::format_rfc3339_micros(time).to_string(),
            "connection": {"id": f.id.0, "client": f.key.client.to_string(), "server": f.key.server.to_string()},
            "direction": f.dir.name(),
            "kind": f.kind.name(),
            "offset": f.offset,
            "header": f.header.hex(),
        });
        if self.log_payload {
            line["payload"] = f.excerpt.escaped().into();
        }
        if let Err(e) = writeln!(self.out, "{line}") {
            self.fail(e);
        }
    }

    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            self.fail(e);
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        if self.errors == 0 {
            eprintln!("ws-monitor: warning: writing --events failed: {e} (further errors are only counted)");
        }
        self.errors += 1;
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.flush();
    }
}
