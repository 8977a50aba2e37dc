//! ws-monitor: passive WebSocket protocol-violation monitor.
//!
//! Data flows one way, one module per stage:
//! capture (kernel ring buffer or pcap) → [`flow::Segment`] → [`reassembly`] →
//! [`flow::StreamSink`] → [`engine`] → findings → outputs.

pub mod engine;
pub mod flow;
pub mod reassembly;
