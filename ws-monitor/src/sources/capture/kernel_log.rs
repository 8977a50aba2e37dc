//! The kernel program's log lines: rare events it meets (the frame walk losing its place,
//! a packet cut short, a failed load from the packet), written with aya-log into its
//! `AYA_LOGS` ring and forwarded here into the `tracing` output at debug level, under the
//! target [`TARGET`] (`WS_MONITOR_LOG=ws_monitor::kernel=debug` shows them alone).
//!
//! The program writes lines only when a subscriber wants them: the level it logs at is set
//! at load ([`kernel_level`]), so under the dashboard (no subscriber) it writes none. It
//! writes at most `LOG_LINES_PER_SECOND` per CPU; the lines it holds back, or that find
//! their ring full, are counted (`log_lines_suppressed`, `log_lines_lost`).
//!
//! Reading the ring touches only its memory mapping (no system call), so it goes on once
//! privileges are dropped and the system calls filtered.

use anyhow::Context as _;
use aya::Ebpf;
use aya_log::EbpfLogger;

/// The `tracing` target of the kernel's lines and of the verifier's output.
pub const TARGET: &str = "ws_monitor::kernel";

/// aya-log's global in the program: the most verbose level it writes (0: none).
pub const LEVEL_GLOBAL: &str = aya_log::LEVEL;

/// The level the program should log at: debug when the subscriber shows [`TARGET`] at
/// debug, nothing otherwise (no line is then written, nor read).
pub fn kernel_level() -> u8 {
    if tracing::enabled!(target: TARGET, tracing::Level::DEBUG) {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

/// Passes each line to `tracing` at debug level, whatever level the program gave it
/// (kept as the `kernel_level` field).
struct Forward;

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        tracing::debug!(target: TARGET, kernel_level = %record.level(), "kernel: {}", record.args());
    }

    fn flush(&self) {}
}

/// The reader of the program's log ring.
pub struct KernelLog {
    /// None once a record could not be read (aya-log panics on one): the rest of the
    /// capture goes on without the kernel's lines.
    logger: Option<EbpfLogger<Forward>>,
}

impl KernelLog {
    /// Takes the log ring of a loaded object.
    pub fn new(ebpf: &mut Ebpf) -> anyhow::Result<KernelLog> {
        let logger = EbpfLogger::init_with_logger(ebpf, Forward).context(
            "reading the kernel program's log ring (AYA_LOGS): is the embedded program out of date? rebuild ws-monitor",
        )?;
        Ok(KernelLog { logger: Some(logger) })
    }

    /// Forwards the lines written since the last call; never waits.
    pub fn forward(&mut self) {
        let Some(logger) = self.logger.as_mut() else { return };
        if let Err(what) = crate::pipeline::monitor::contained(|| logger.flush()) {
            self.logger = None;
            tracing::warn!(
                "the kernel program's log ring held a line aya-log could not read ({what}): its lines are no longer shown (the capture goes on; please report this)"
            );
        }
    }
}
