//! What `ws-monitor demo` is asked to run (also known to a binary built without the demo).

/// What `ws-monitor demo` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemoConfig {
    /// Client tasks; half (rounded down) talk to the server directly, the rest go
    /// through the proxy.
    pub clients: usize,
    /// Seeds message contents, pauses, masking keys and where the fault schedule starts.
    pub seed: u64,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { clients: 4, seed: 0 }
    }
}
