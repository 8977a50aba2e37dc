//! ws-monitor: passive WebSocket protocol-violation monitor.
//!
//! Data flows one way; the folders follow it, one module per stage:
//!
//! ```text
//! sources ──────────► reassembly ─────────► engine ─────────► diagnosis ──► outputs
//!  capture (kernel     per-connection byte   RFC 6455 checks:  proxy pairs,   dashboard, logs,
//!  ring buffer), or    streams from TCP      handshake, frames  likely causes  metrics, events,
//!  replay (pcap)       segments              → findings                        connections, report
//!        └──────────── pipeline: worker threads sharded by connection ─────┘
//!                      driver: the loop that moves records between them
//! ```
//!
//! - [`sources`]: [`sources::capture`] attaches the kernel program and reads its ring
//!   buffer; [`sources::replay`] reads pcap/pcapng files. Both hand [`flow::Segment`]s on.
//! - [`reassembly`]: TCP segments → in-order bytes per direction, with gaps counted.
//! - [`engine`]: the pure protocol engine (no I/O), shared byte for byte by live
//!   capture and replay: handshakes, frames, closes → [`engine::Finding`]s and records.
//! - [`diagnosis`]: the most likely causes, and the two hops of a session through a proxy.
//! - [`outputs`]: where findings and counters go.
//! - [`pipeline`]: the stages wired together ([`pipeline::monitor`]), run on worker
//!   threads sharded by connection.
//! - [`driver`]: the loop that feeds the pipeline from a source and its results to the
//!   outputs, live or from a file, with all its I/O passed in; `main.rs` only wires the
//!   real terminal, signals, capture and files to it.
//! - [`demo`]: the scripted server, clients and proxy behind `ws-monitor demo` (cargo
//!   feature `demo`, on by default; without it the subcommand says how to get it).
//! - [`testkit`]: frames, handshakes and TCP exchanges written field by field, for the
//!   tests, the benchmark and the demo's faults (it encodes; the engine decodes).

pub mod cli;
#[cfg(feature = "demo")]
pub mod demo;
#[cfg(not(feature = "demo"))]
#[path = "demo/without.rs"]
pub mod demo;
pub mod diagnosis;
pub mod driver;
pub mod engine;
pub mod flow;
pub mod outputs;
pub mod pipeline;
pub mod reassembly;
pub mod sources;
pub mod testkit;
