//! One WebSocket frame (RFC 6455 §5.2) written from its fields.
//!
//! ```
//! use ws_monitor::testkit::{op, Frame, Len};
//! // RFC 6455 §5.7: a masked "Hello" from a client.
//! let hello = Frame::text("Hello").mask([0x37, 0xfa, 0x21, 0x3d]).encode();
//! assert_eq!(hello, [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
//! // A 5-byte payload in the 16-bit length form (a violation: not minimal).
//! let wide = Frame::new(op::BINARY, vec![0; 5]).form(Len::Ext16).encode();
//! assert_eq!(&wide[..4], [0x82, 126, 0, 5]);
//! ```

/// Opcodes (RFC 6455 §5.2; any other value up to 0xF is reserved) and the RSV bits as
/// [`Frame::rsv`] holds them (RSV1: permessage-deflate's "compressed" bit): the RFC's
/// numbers, the same as the engine's (the kit's tests check its frames against
/// tungstenite's decoder).
pub use crate::engine::frame::{opcode as op, RSV1, RSV2, RSV3};

/// How the payload length is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Len {
    /// The shortest form that holds it (the only legal one).
    #[default]
    Minimal,
    /// In the second byte (0-125).
    Short,
    /// 126, then 16 bits.
    Ext16,
    /// 127, then 64 bits.
    Ext64,
}

impl Len {
    /// The minimal form for a length: [`Len::Short`], [`Len::Ext16`] or [`Len::Ext64`].
    pub fn minimal(len: u64) -> Len {
        if len < 126 {
            Len::Short
        } else if len <= 0xFFFF {
            Len::Ext16
        } else {
            Len::Ext64
        }
    }
}

/// A frame to encode, its payload unmasked. Built with [`Frame::new`] (final, no RSV
/// bits, unmasked, minimal length) and changed with the builder methods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1-3 as the low three bits ([`RSV1`], [`RSV2`], [`RSV3`]).
    pub rsv: u8,
    /// Low four bits used.
    pub opcode: u8,
    /// Masking key; `None`: unmasked.
    pub mask: Option<[u8; 4]>,
    /// The length form; a form too short for the length is widened to the minimal one.
    pub form: Len,
    /// The length written in the header instead of the payload's (a header that lies).
    pub claim: Option<u64>,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A final, unmasked frame with a minimal length.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Frame {
        Frame { fin: true, rsv: 0, opcode, mask: None, form: Len::Minimal, claim: None, payload: payload.into() }
    }

    pub fn text(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(op::TEXT, payload)
    }

    pub fn binary(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(op::BINARY, payload)
    }

    pub fn continuation(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(op::CONTINUATION, payload)
    }

    pub fn ping(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(op::PING, payload)
    }

    pub fn pong(payload: impl Into<Vec<u8>>) -> Frame {
        Frame::new(op::PONG, payload)
    }

    /// A close frame with a status code and reason bytes (not checked: a reason cut in
    /// a UTF-8 sequence or a reserved code are for violation tests).
    pub fn close(code: u16, reason: &[u8]) -> Frame {
        Frame::new(op::CLOSE, close_body(code, reason))
    }

    pub fn fin(mut self, fin: bool) -> Frame {
        self.fin = fin;
        self
    }

    /// Sets the RSV bits (low three bits: [`RSV1`] | [`RSV2`] | [`RSV3`]).
    pub fn rsv(mut self, rsv: u8) -> Frame {
        self.rsv = rsv;
        self
    }

    /// Masks the payload with `key` (as a client must).
    pub fn mask(mut self, key: [u8; 4]) -> Frame {
        self.mask = Some(key);
        self
    }

    /// Sends the payload unmasked (as a server must).
    pub fn unmasked(mut self) -> Frame {
        self.mask = None;
        self
    }

    /// Writes the length in this form.
    pub fn form(mut self, form: Len) -> Frame {
        self.form = form;
        self
    }

    /// Writes `len` as the payload length, whatever the payload is.
    pub fn claim(mut self, len: u64) -> Frame {
        self.claim = Some(len);
        self
    }

    /// The frame's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + self.payload.len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the frame's bytes to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let len = self.claim.unwrap_or(self.payload.len() as u64);
        let form = match self.form {
            Len::Minimal => Len::minimal(len),
            Len::Short if len >= 126 => Len::minimal(len),
            Len::Ext16 if len > 0xFFFF => Len::Ext64,
            form => form,
        };
        out.push((u8::from(self.fin) << 7) | ((self.rsv & 0b111) << 4) | (self.opcode & 0x0F));
        let m = if self.mask.is_some() { 0x80 } else { 0 };
        match form {
            Len::Ext16 => {
                out.push(m | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            Len::Ext64 => {
                out.push(m | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
            Len::Minimal | Len::Short => out.push(m | len as u8),
        }
        let start = out.len();
        match self.mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend_from_slice(&self.payload);
                if let Some(body) = out.get_mut(start + 4..) {
                    xor_mask(body, key);
                }
            }
            None => out.extend_from_slice(&self.payload),
        }
    }
}

/// A close frame's body: the status code, then the reason.
pub fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason);
    body
}

/// Masks (or unmasks) `data` with `key` (RFC 6455 §5.3), `data[0]` taking `key[0]`.
pub fn xor_mask(data: &mut [u8], key: [u8; 4]) {
    for (b, k) in data.iter_mut().zip(key.iter().cycle()) {
        *b ^= k;
    }
}
