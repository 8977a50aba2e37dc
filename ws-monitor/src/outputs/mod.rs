//! Where findings and counters go: the live [`dashboard`], headless [`logs`], Prometheus
//! [`metrics`], the `--events` and `--connections` JSON lines ([`events`],
//! [`connections`], both through [`jsonl`]), the final [`report`], and the raw stream
//! dump ([`streams`]).

pub mod connections;
pub mod dashboard;
pub mod events;
pub mod jsonl;
pub mod logs;
pub mod metrics;
pub mod report;
pub mod streams;
