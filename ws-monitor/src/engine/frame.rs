//! Zero-copy RFC 6455 frame-header parsing and the per-header checks.
//!
//! [`FrameHeader::parse`] works like `httparse`: it looks at a borrowed slice and either
//! returns the decoded header (and how many bytes it took) or says how many bytes it
//! needs in total. It never copies and never allocates; the caller keeps at most
//! [`MAX_HEADER_LEN`] bytes aside when a header is split across deliveries.

use std::fmt;

use super::kind::{Kind, KindSet};

/// Longest possible frame header: 2 + 8 (64-bit length) + 4 (masking key).
pub const MAX_HEADER_LEN: usize = 14;

/// Largest payload a control frame may carry.
pub const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Opcodes defined by RFC 6455.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// RSV bits as they sit in [`FrameHeader::rsv`].
pub const RSV1: u8 = 0b100;
pub const RSV2: u8 = 0b010;
pub const RSV3: u8 = 0b001;

/// How the payload length was encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LenForm {
    /// 7-bit length in the second byte (0-125).
    Short,
    /// 126 followed by a 16-bit length.
    Ext16,
    /// 127 followed by a 64-bit length.
    Ext64,
}

/// What an opcode denotes, for counting and state tracking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpClass {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
    Reserved,
}

impl OpClass {
    pub fn of(op: u8) -> OpClass {
        match op {
            opcode::CONTINUATION => OpClass::Continuation,
            opcode::TEXT => OpClass::Text,
            opcode::BINARY => OpClass::Binary,
            opcode::CLOSE => OpClass::Close,
            opcode::PING => OpClass::Ping,
            opcode::PONG => OpClass::Pong,
            _ => OpClass::Reserved,
        }
    }

    /// Text, binary or continuation.
    pub fn is_data(self) -> bool {
        matches!(self, OpClass::Continuation | OpClass::Text | OpClass::Binary)
    }

    /// Close, ping or pong (reserved control opcodes are [`OpClass::Reserved`]).
    pub fn is_control(self) -> bool {
        matches!(self, OpClass::Close | OpClass::Ping | OpClass::Pong)
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1-3 as the low three bits (`RSV1` = 0b100).
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    /// Payload length as encoded (may have its MSB set, see [`Kind::LengthMsbSet`]).
    pub len: u64,
    pub len_form: LenForm,
    /// Bytes the header occupies (2-14).
    pub header_len: u8,
}

/// Result of [`FrameHeader::parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// A whole header was decoded; it occupies `header_len` bytes.
    Complete(FrameHeader),
    /// More bytes are needed: at least this many in total.
    Partial(usize),
}

impl FrameHeader {
    /// Decodes the header at the start of `buf` without copying.
    pub fn parse(buf: &[u8]) -> Status {
        let (b0, b1) = match buf {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Status::Partial(2),
        };
        let masked = b1 & 0x80 != 0;
        let (len_form, ext) = match b1 & 0x7F {
            126 => (LenForm::Ext16, 2usize),
            127 => (LenForm::Ext64, 8usize),
            _ => (LenForm::Short, 0usize),
        };
        let header_len = 2 + ext + if masked { 4 } else { 0 };
        let Some(h) = buf.get(..header_len) else {
            return Status::Partial(header_len);
        };
        let len = match len_form {
            LenForm::Short => u64::from(b1 & 0x7F),
            _ => h.iter().skip(2).take(ext).fold(0u64, |a, b| (a << 8) | u64::from(*b)),
        };
        let mask = match h.get(2 + ext..) {
            Some(&[k0, k1, k2, k3]) if masked => Some([k0, k1, k2, k3]),
            _ => None,
        };
        Status::Complete(FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0b111,
            opcode: b0 & 0x0F,
            mask,
            len,
            len_form,
            header_len: header_len as u8,
        })
    }

    pub fn class(&self) -> OpClass {
        OpClass::of(self.opcode)
    }

    pub fn rsv1(&self) -> bool {
        self.rsv & RSV1 != 0
    }

    /// Whether the length uses its shortest encoding.
    pub fn minimal_length(&self) -> bool {
        match self.len_form {
            LenForm::Short => true,
            LenForm::Ext16 => self.len >= 126,
            LenForm::Ext64 => self.len > 0xFFFF,
        }
    }

    /// Whether the 64-bit length has its most significant bit set.
    pub fn length_msb(&self) -> bool {
        self.len_form == LenForm::Ext64 && self.len >> 63 != 0
    }
}

/// Fragmentation state of one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    /// Between messages.
    Idle,
    /// A fragmented message is open (a continuation is expected).
    Open,
    /// Not known (just (re)synchronised): continuation and new messages are both fine.
    Unknown,
}

impl Frag {
    /// State after a data frame of class `c` with `fin`.
    pub fn after(self, c: OpClass, fin: bool) -> Frag {
        match c {
            OpClass::Text | OpClass::Binary | OpClass::Continuation => {
                if fin {
                    Frag::Idle
                } else {
                    Frag::Open
                }
            }
            _ => self,
        }
    }
}

/// What the RSV bits may legally be used for on this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RsvPolicy {
    /// No extension negotiated: every RSV bit must be 0.
    Plain,
    /// permessage-deflate negotiated: RSV1 allowed on the first frame of a data message.
    Deflate,
    /// Negotiation unknown (mid-stream, lost handshake) or an extension we do not know:
    /// RSV-without-extension findings are suppressed.
    Unknown,
}

/// Connection-level facts the header checks need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Frames travel client → server, so they must be masked.
    pub client_to_server: bool,
    pub rsv: RsvPolicy,
    pub max_frame_size: u64,
    pub max_message_size: u64,
}

/// Every violation `h` raises on its own and against the direction's state.
///
/// `frag` and `closed` describe the direction before this frame; state kinds are only
/// raised when the state is known (`Frag::Unknown` suppresses orphan/interleaved).
pub fn check_header(h: &FrameHeader, r: &Rules, frag: Frag, closed: bool) -> KindSet {
    let mut k = KindSet::EMPTY;
    let class = h.class();
    if h.rsv & (RSV2 | RSV3) != 0 && r.rsv != RsvPolicy::Unknown {
        k.insert(Kind::RsvWithoutExtension);
    }
    if h.rsv1() {
        // Without permessage-deflate RSV1 means nothing anywhere; with it, only on the
        // first frame of a data message. Unknown negotiation: not judged.
        match (r.rsv, class) {
            (RsvPolicy::Plain, _) => k.insert(Kind::RsvWithoutExtension),
            (RsvPolicy::Deflate, OpClass::Continuation | OpClass::Close | OpClass::Ping | OpClass::Pong) => {
                k.insert(Kind::Rsv1Invalid)
            }
            _ => {}
        }
    }
    if class == OpClass::Reserved {
        k.insert(Kind::ReservedOpcode);
    }
    match (r.client_to_server, h.mask.is_some()) {
        (true, false) => k.insert(Kind::UnmaskedClientFrame),
        (false, true) => k.insert(Kind::MaskedServerFrame),
        _ => {}
    }
    if class.is_control() {
        if h.len > MAX_CONTROL_PAYLOAD {
            k.insert(Kind::ControlTooLong);
        }
        if !h.fin {
            k.insert(Kind::ControlFragmented);
        }
    }
    if !h.minimal_length() {
        k.insert(Kind::NonMinimalLength);
    }
    if h.length_msb() {
        k.insert(Kind::LengthMsbSet);
    } else if h.len > r.max_frame_size {
        k.insert(Kind::OversizedFrame);
    }
    match (class, frag) {
        (OpClass::Continuation, Frag::Idle) => k.insert(Kind::OrphanContinuation),
        (OpClass::Text | OpClass::Binary, Frag::Open) => k.insert(Kind::InterleavedDataFrame),
        _ => {}
    }
    if closed && class.is_data() {
        k.insert(Kind::DataAfterClose);
    }
    k
}

/// Whether a close status code may appear on the wire (RFC 6455 §7.4, IANA registry).
pub fn close_code_valid(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `src` with `key` starting at key position `phase` into `dst[..src.len()]`,
/// eight bytes at a time.
pub fn unmask_into(dst: &mut [u8], src: &[u8], key: [u8; 4], phase: usize) {
    let n = src.len().min(dst.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let p = phase & 3;
    let rot = [key[p], key[(p + 1) & 3], key[(p + 2) & 3], key[(p + 3) & 3]];
    let wide = u64::from_ne_bytes([rot[0], rot[1], rot[2], rot[3], rot[0], rot[1], rot[2], rot[3]]);
    let mut d8 = dst.chunks_exact_mut(8);
    let mut s8 = src.chunks_exact(8);
    for (d, s) in (&mut d8).zip(&mut s8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        d.copy_from_slice(&(u64::from_ne_bytes(w) ^ wide).to_ne_bytes());
    }
    for ((d, s), k) in d8.into_remainder().iter_mut().zip(s8.remainder()).zip(rot.iter().cycle()) {
        *d = s ^ k;
    }
}

/// Answer of [`http_line_start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpLine {
    Yes,
    No,
    /// The bytes so far are a prefix of an HTTP line start; more are needed.
    Maybe,
}

const HTTP_STARTS: [&[u8]; 10] =
    [b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ", b"TRACE ", b"HTTP/1."];

/// Whether `buf` starts an HTTP request line (`GET `, `POST `, ...) or status line
/// (`HTTP/1.`). Every first byte that can start one (`G P H D O C T`) is itself an
/// invalid frame start (reserved opcode or RSV bits), so waiting for more bytes never
/// delays a conformant frame.
pub fn http_line_start(buf: &[u8]) -> HttpLine {
    let mut maybe = false;
    for pat in HTTP_STARTS {
        if buf.iter().zip(pat.iter()).all(|(a, b)| a == b) {
            if buf.len() >= pat.len() {
                return HttpLine::Yes;
            }
            maybe = true;
        }
    }
    if maybe && !buf.is_empty() {
        HttpLine::Maybe
    } else {
        HttpLine::No
    }
}

/// Raw header bytes attached to a finding (at most [`MAX_HEADER_LEN`]).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FrameHeaderBytes {
    bytes: [u8; MAX_HEADER_LEN],
    len: u8,
}

impl FrameHeaderBytes {
    /// No bytes (non-frame findings).
    pub const EMPTY: FrameHeaderBytes = FrameHeaderBytes { bytes: [0; MAX_HEADER_LEN], len: 0 };

    /// Copies up to [`MAX_HEADER_LEN`] bytes.
    pub fn new(b: &[u8]) -> Self {
        let mut out = FrameHeaderBytes::EMPTY;
        for (d, s) in out.bytes.iter_mut().zip(b) {
            *d = *s;
        }
        out.len = b.len().min(MAX_HEADER_LEN) as u8;
        out
    }

    pub fn as_slice(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&self.bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lowercase hex without separators (`"8185a1b2c3d4"`).
    pub fn hex(&self) -> String {
        use fmt::Write;
        let mut s = String::with_capacity(usize::from(self.len) * 2);
        for b in self.as_slice() {
            let _ = write!(s, "{b:02x}");
        }
        s
    }
}

impl fmt::Debug for FrameHeaderBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FrameHeaderBytes({})", self.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(b: &[u8]) -> FrameHeader {
        match FrameHeader::parse(b) {
            Status::Complete(h) => h,
            s => panic!("expected complete, got {s:?}"),
        }
    }

    #[test]
    fn parses_all_length_forms() {
        let h = complete(&[0x81, 0x05]);
        assert!(h.fin && h.opcode == 1 && h.len == 5 && h.header_len == 2 && h.mask.is_none());
        let h = complete(&[0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4]);
        assert_eq!((h.len, h.len_form, h.header_len, h.mask), (256, LenForm::Ext16, 8, Some([1, 2, 3, 4])));
        let h = complete(&[0x02, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!((h.len, h.len_form, h.header_len, h.fin), (65536, LenForm::Ext64, 10, false));
        assert!(h.minimal_length());
        let h = complete(&[0x02, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert!(h.length_msb());
    }

    #[test]
    fn partial_reports_needed_bytes() {
        assert_eq!(FrameHeader::parse(&[]), Status::Partial(2));
        assert_eq!(FrameHeader::parse(&[0x81]), Status::Partial(2));
        assert_eq!(FrameHeader::parse(&[0x81, 0x85, 1]), Status::Partial(6));
        assert_eq!(FrameHeader::parse(&[0x81, 0xFF, 0]), Status::Partial(14));
    }

    #[test]
    fn unmasking_word_wide_matches_byte_by_byte() {
        let key = [0x12, 0x34, 0x56, 0x78];
        let src: Vec<u8> = (0..70u8).collect();
        for len in 0..src.len() {
            for phase in 0..6 {
                let mut dst = vec![0u8; len];
                unmask_into(&mut dst, &src[..len], key, phase);
                let want: Vec<u8> = src[..len].iter().enumerate().map(|(i, b)| b ^ key[(i + phase) % 4]).collect();
                assert_eq!(dst, want, "len {len} phase {phase}");
            }
        }
    }

    #[test]
    fn minimal_encoding() {
        assert!(!complete(&[0x82, 0x7E, 0, 125]).minimal_length());
        assert!(complete(&[0x82, 0x7E, 0, 126]).minimal_length());
        assert!(!complete(&[0x82, 0x7F, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]).minimal_length());
    }

    #[test]
    fn http_detection() {
        assert_eq!(http_line_start(b"GET / HTTP/1.1"), HttpLine::Yes);
        assert_eq!(http_line_start(b"HTTP/1.1 200"), HttpLine::Yes);
        assert_eq!(http_line_start(b"GE"), HttpLine::Maybe);
        assert_eq!(http_line_start(b"P"), HttpLine::Maybe);
        assert_eq!(http_line_start(b"GEX"), HttpLine::No);
        assert_eq!(http_line_start(&[0x81, 0x00]), HttpLine::No);
        // Every byte that can begin an HTTP line is an invalid frame start.
        let rules = Rules {
            client_to_server: false,
            rsv: RsvPolicy::Deflate,
            max_frame_size: 1 << 24,
            max_message_size: 1 << 26,
        };
        for first in *b"GPHDOCT" {
            if let Status::Complete(h) = FrameHeader::parse(&[first, 0x00]) {
                assert!(!check_header(&h, &rules, Frag::Unknown, false).is_empty(), "{}", first as char);
            }
        }
    }

    #[test]
    fn header_bytes_hex() {
        let b = FrameHeaderBytes::new(&[0x81, 0x85, 0xA1]);
        assert_eq!(b.hex(), "8185a1");
        assert!(FrameHeaderBytes::EMPTY.is_empty());
        assert_eq!(FrameHeaderBytes::new(&[0u8; 20]).as_slice().len(), MAX_HEADER_LEN);
    }
}
