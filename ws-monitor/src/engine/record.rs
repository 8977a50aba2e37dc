//! What the engine says of a WebSocket connection when it ends: one line of the
//! connection log (`--connections`), and how it ended for the report's counts.

use std::net::SocketAddr;

use serde::Serialize;

use super::frame::FrameHeader;
use super::handshake::RequestSeen;
use super::kind::KindSet;
use super::FrameCounts;
use crate::flow::{FlowId, Opening, Unanalysed};

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Both endpoints sent a close frame.
    CloseHandshake,
    /// One endpoint sent a close frame, the other did not before TCP ended.
    CloseOneSided,
    /// TCP ended with FINs and no close frame either way.
    FinWithoutClose,
    /// A RST ended it, no close frame either way.
    Rst,
    /// Idle for longer than the idle timeout, or pushed out of a full flow table.
    Evicted,
    /// Still open when capture ended.
    OpenAtExit,
}

impl Ending {
    pub const COUNT: usize = 6;
    pub const ALL: [Ending; Ending::COUNT] = [
        Ending::CloseHandshake,
        Ending::CloseOneSided,
        Ending::FinWithoutClose,
        Ending::Rst,
        Ending::Evicted,
        Ending::OpenAtExit,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable name used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Ending::CloseHandshake => "close_handshake",
            Ending::CloseOneSided => "close_one_sided",
            Ending::FinWithoutClose => "fin_without_close",
            Ending::Rst => "rst",
            Ending::Evicted => "evicted",
            Ending::OpenAtExit => "open_at_exit",
        }
    }
}

/// A close frame an endpoint sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CloseSeen {
    /// Its status code (none: an empty body, or a body the capture lost).
    pub code: Option<u16>,
    /// Its reason, as UTF-8 with invalid bytes replaced (at most 123 bytes on the wire).
    pub reason: String,
    /// When it was seen.
    #[serde(skip)]
    pub ts_ns: u64,
}

/// The handshake as the connection log shows it: the last upgrade request on the
/// connection, and the status and what was accepted in its answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeSeen {
    #[serde(flatten)]
    pub request: RequestSeen,
    pub status: Option<u16>,
    pub accepted_protocol: Option<Box<str>>,
    pub accepted_extensions: Option<Box<str>>,
    /// The 101 carried `Upgrade: websocket` and `Connection: Upgrade`.
    pub response_upgrade: bool,
}

/// What a direction of a connection sent, frame by frame, as far as a proxy could change
/// it: frames by opcode, frames with RSV1, payload bytes (counted in sync only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FrameTally {
    pub frames: FrameCounts,
    pub rsv1: u64,
    pub payload: u64,
}

impl FrameTally {
    pub fn add(&mut self, h: &FrameHeader) {
        self.frames.bump(h.class());
        self.rsv1 += u64::from(h.rsv1());
        self.payload = self.payload.saturating_add(h.len);
    }
}

/// A value for each side, by the side that sent it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Sides<T> {
    pub client: T,
    pub server: T,
}

impl<T: Clone> Sides<T> {
    /// From a `[to_server, to_client]` array (indexed by [`Direction::index`]).
    pub fn of(v: &[T; 2]) -> Sides<T> {
        let [client, server] = v.clone();
        Sides { client, server }
    }
}

impl<T> From<[T; 2]> for Sides<T> {
    /// From a `[to_server, to_client]` array, taking its values.
    fn from([client, server]: [T; 2]) -> Sides<T> {
        Sides { client, server }
    }
}

/// One line of the connection log. Times are the capture's clock (live: CLOCK_MONOTONIC;
/// replay: the file's); the writer turns them into wall-clock times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConnectionRecord {
    #[serde(skip)]
    pub id: FlowId,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Index of the interface it was captured on (0: not known); the connection log
    /// writes its name.
    #[serde(skip)]
    pub iface: u32,
    #[serde(skip)]
    pub opening: Opening,
    #[serde(skip)]
    pub start_ns: u64,
    #[serde(skip)]
    pub end_ns: u64,
    /// When the last payload byte (either way) was seen.
    #[serde(skip)]
    pub last_data_ns: u64,
    pub handshake: Option<Box<HandshakeSeen>>,
    pub frames: Sides<u64>,
    /// What each side sent, as far as a proxy could change it.
    pub tally: Sides<FrameTally>,
    pub messages: Sides<u64>,
    /// Stream bytes each way (frame headers and payload, handshake included).
    pub bytes: Sides<u64>,
    pub close: Sides<Option<CloseSeen>>,
    /// Which side sent the first close frame.
    pub closed_first: Option<&'static str>,
    pub ending: Ending,
    pub violations: u64,
    /// The kinds seen on it.
    pub kinds: KindSet,
    /// Analysis lost sync at some point (see `unanalysed.resync` for how many bytes).
    pub lost_sync: bool,
    pub unanalysed: Unanalysed,
}

impl ConnectionRecord {
    /// How a connection with these close frames ended (`closing`: as reassembly saw it).
    pub fn ending(closing: crate::flow::Closing, closes: &[Option<CloseSeen>; 2]) -> Ending {
        use crate::flow::Closing;
        match (closing, closes.iter().flatten().count()) {
            (Closing::Evicted, _) => Ending::Evicted,
            (Closing::CaptureEnded, _) => Ending::OpenAtExit,
            (_, 2) => Ending::CloseHandshake,
            (_, 1) => Ending::CloseOneSided,
            (Closing::Rst, _) => Ending::Rst,
            (Closing::Fin, _) => Ending::FinWithoutClose,
        }
    }
}
