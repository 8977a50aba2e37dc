//! A file of JSON lines with capture timestamps turned into wall-clock times: what
//! `--events` and `--connections` write.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde_json::Value;

pub struct JsonLines {
    out: BufWriter<File>,
    /// The flag that named the file, for messages.
    flag: &'static str,
    /// Added to a capture timestamp to get nanoseconds since the Unix epoch (live
    /// timestamps are CLOCK_MONOTONIC; pcap timestamps are already epoch-based: 0).
    epoch_offset_ns: i128,
    /// Write errors (the first is reported on stderr).
    pub errors: u64,
}

impl JsonLines {
    pub fn create(path: &Path, flag: &'static str, epoch_offset_ns: i128) -> anyhow::Result<Self> {
        let file = File::create(path).with_context(|| format!("cannot create {flag} file {}", path.display()))?;
        Ok(JsonLines { out: BufWriter::new(file), flag, epoch_offset_ns, errors: 0 })
    }

    /// A capture timestamp as RFC 3339 UTC with microseconds.
    pub fn time(&self, ts_ns: u64) -> String {
        let epoch_ns = (ts_ns as i128 + self.epoch_offset_ns).max(0) as u64;
        humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH + Duration::from_nanos(epoch_ns)).to_string()
    }

    pub fn write(&mut self, line: &Value) {
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
            eprintln!("ws-monitor: warning: writing {} failed: {e} (further errors are only counted)", self.flag);
        }
        self.errors += 1;
    }
}

impl Drop for JsonLines {
    fn drop(&mut self) {
        self.flush();
    }
}
