//! ws-monitor: passive WebSocket protocol-violation monitor.
//!
//! Data flows one way, one module per stage:
//! [`capture`] (kernel ring buffer) → [`flow::Segment`] → [`reassembly`] →
//! [`flow::StreamSink`] → [`engine`] → findings → outputs ([`report`], [`streams`]).
//! [`monitor`] wires the stages together; [`pipeline`] runs monitors on worker threads,
//! sharded by connection, for live capture and replay alike. Once attached, a live
//! capture gives up what attaching needed ([`privileges`]).

pub mod capture;
pub mod cli;
pub mod clsact;
pub mod connections;
pub mod dashboard;
pub mod demo;
pub mod diagnosis;
pub mod engine;
pub mod events;
pub mod flow;
pub mod interfaces;
pub mod jsonl;
pub mod liveness;
pub mod logs;
pub mod monitor;
pub mod pipeline;
pub mod privileges;
pub mod prometheus;
pub mod proxy;
pub mod reassembly;
pub mod replay;
pub mod report;
pub mod streams;
