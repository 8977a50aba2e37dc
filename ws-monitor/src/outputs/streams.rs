//! `--streams-dir`: writes every reassembled stream to a file, bytes at their stream
//! offsets (gaps left as holes), and each gap as a line `offset length` in a `.gaps` file.
//! For inspecting what the monitor saw, and for the end-to-end tests.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::flow::{Closing, Direction, FlowId, FlowKey, Loss, Opening, StreamSink};

/// A [`StreamSink`] that writes streams to files named
/// `{id}_{client-ip}_{client-port}_{server-ip}_{server-port}.{client|server}`.
pub struct StreamDump {
    dir: PathBuf,
    open: HashMap<FlowId, [File; 2]>,
    names: HashMap<FlowId, String>,
    /// Failed writes (the first is logged).
    pub errors: u64,
}

impl StreamDump {
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create --streams-dir {}: {e}", dir.display()))?;
        Ok(StreamDump { dir: dir.to_owned(), open: HashMap::new(), names: HashMap::new(), errors: 0 })
    }

    /// Counts a failed write; the first of the run is logged. The run ends with an error when any
    /// failed (the files are incomplete).
    fn fail(&mut self, what: &str, err: std::io::Error) {
        // One line for the whole run, whichever worker's dump fails first.
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "--streams-dir: {what}: {err} (further errors are only counted; the run will end with an error)"
            );
        }
        self.errors += 1;
    }
}

fn file_name(id: FlowId, key: &FlowKey) -> String {
    format!("{}_{}_{}_{}_{}", id.0, key.client.ip(), key.client.port(), key.server.ip(), key.server.port())
}

impl StreamSink for StreamDump {
    fn open(&mut self, id: FlowId, key: &FlowKey, _opening: Opening, _ts_ns: u64) {
        let name = file_name(id, key);
        let create = |dir: Direction| {
            OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(self.dir.join(format!("{name}.{}", dir.name())))
        };
        match (create(Direction::ToServer), create(Direction::ToClient)) {
            (Ok(a), Ok(b)) => {
                self.open.insert(id, [a, b]);
                self.names.insert(id, name);
            }
            (Err(e), _) | (_, Err(e)) => self.fail("creating stream files", e),
        }
    }

    fn data(&mut self, id: FlowId, dir: Direction, offset: u64, data: &[u8], _ts_ns: u64) {
        let Some(files) = self.open.get(&id) else { return };
        if let Err(e) = files[dir.index()].write_all_at(data, offset) {
            self.fail("writing stream data", e);
        }
    }

    fn gap(&mut self, id: FlowId, dir: Direction, offset: u64, len: u64, _loss: Loss, _ts_ns: u64) {
        let Some(name) = self.names.get(&id) else { return };
        let path = self.dir.join(format!("{name}.{}.gaps", dir.name()));
        let result =
            OpenOptions::new().create(true).append(true).open(path).and_then(|mut f| writeln!(f, "{offset} {len}"));
        // A gap at the very end leaves the file short: extend it so sizes add up.
        let extend = self.open.get(&id).map(|files| {
            let f = &files[dir.index()];
            match f.metadata() {
                Ok(m) if m.len() < offset + len => f.set_len(offset + len),
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        });
        for r in [result, extend.unwrap_or(Ok(()))] {
            if let Err(e) = r {
                self.fail("recording a gap", e);
            }
        }
    }

    fn close(&mut self, id: FlowId, _closing: Closing, _ts_ns: u64) {
        self.open.remove(&id);
        self.names.remove(&id);
    }
}
