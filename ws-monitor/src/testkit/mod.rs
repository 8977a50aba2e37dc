//! The test kit: WebSocket frames, upgrade heads and TCP exchanges written field by
//! field, legal or deliberately not, for the tests, the benchmark and the demo's faults.
//!
//! It only encodes, and shares none of its encoding with the engine's parser
//! ([`crate::engine`]), so a test cannot pass because the encoder and the decoder agree
//! on the same mistake. It takes the RFC's numbers from the engine (opcodes, RSV bits,
//! the accept GUID and its hash); its own tests check those against RFC 6455's examples
//! and tungstenite's decoder.
//!
//! - [`frame`]: one frame from its fields (FIN, RSV bits, opcode, masking key, length
//!   form, payload), including non-minimal lengths and lengths that lie.
//! - [`handshake`]: the client's upgrade request and the server's 101, with headers
//!   replaced, added or removed, and `Sec-WebSocket-Accept` computed from the key.
//! - [`scenario`]: byte streams of a connection cut into [`crate::flow::Segment`]s, as a
//!   capture would deliver them to reassembly.
//!
//! It is always compiled (it is small and needs no dependency of its own), so that
//! integration tests, the benchmark and the demo use the same encoder.

pub mod frame;
pub mod handshake;
pub mod scenario;

pub use frame::{op, Frame, Len};
pub use handshake::{accept, Head, RFC_ACCEPT, RFC_KEY};

#[cfg(test)]
mod tests;
