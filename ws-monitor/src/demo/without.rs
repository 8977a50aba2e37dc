//! `ws-monitor demo` in a binary built without the `demo` feature: the same API, and
//! [`Demo::start`] says how to get the real one.

use std::collections::BTreeMap;
use std::convert::Infallible;

#[path = "config.rs"]
mod config;
pub use config::DemoConfig;

/// Never made: [`Demo::start`] fails.
pub struct Demo {
    pub server_port: u16,
    pub proxy_port: u16,
    never: Infallible,
}

impl Demo {
    /// Fails: this binary has no demo.
    pub async fn start(_cfg: DemoConfig) -> anyhow::Result<Demo> {
        anyhow::bail!(
            "this ws-monitor was built without the demo: rebuild it with the `demo` feature (cargo build -p ws-monitor --features demo)"
        )
    }

    pub fn go(&self) {
        match self.never {}
    }

    pub async fn stop(self) {
        match self.never {}
    }

    pub fn committed(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        match self.never {}
    }
}
