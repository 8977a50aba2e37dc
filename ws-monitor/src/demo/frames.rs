//! Frames as the proxy reads and writes them: tungstenite reads them and writes the
//! legal ones; the violating ones are written by [`crate::testkit`] (it writes what no
//! library would).

use super::*;

/// Whether an opcode is a data frame's (continuation, text, binary).
pub(super) fn is_data(opcode: u8) -> bool {
    matches!(opcode, op::CONTINUATION | op::TEXT | op::BINARY)
}

/// Whether a frame starts a data message (text or binary).
pub(super) fn is_message(frame: &Frame) -> bool {
    matches!(frame.header().opcode, OpCode::Data(Data::Text | Data::Binary))
}

/// The frame at the start of `buf` (its payload unmasked, its masking key kept) and its
/// size, `None` if incomplete.
pub(super) fn decode(buf: &[u8]) -> io::Result<Option<(Frame, usize)>> {
    let mut cursor = io::Cursor::new(buf);
    let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(io::Error::other)? else {
        return Ok(None);
    };
    if len > MAX_RELAY_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too large to relay"));
    }
    let start = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    let end = start.saturating_add(len as usize);
    let Some(body) = buf.get(start..end) else {
        return Ok(None);
    };
    let mut payload = body.to_vec();
    if let Some(key) = header.mask {
        xor_mask(&mut payload, key);
    }
    Ok(Some((Frame::from_payload(header, payload.into()), end)))
}

/// The same frame in the test kit's terms, to be changed into a violation.
pub(super) fn to_kit(frame: &Frame) -> kit::Frame {
    let h = frame.header();
    let rsv = (u8::from(h.rsv1) << 2) | (u8::from(h.rsv2) << 1) | u8::from(h.rsv3);
    kit::Frame { fin: h.is_final, rsv, opcode: u8::from(h.opcode), mask: h.mask, ..kit::Frame::new(0, frame.payload()) }
}

/// A final, unmasked header claiming a `len`-byte payload in the 64-bit form; no payload.
pub(super) fn header_claiming(opcode: u8, len: u64) -> Vec<u8> {
    kit::Frame::new(opcode, []).claim(len).form(Len::Ext64).encode()
}

/// Buffered reading of HTTP heads and frames.
pub(super) struct Reader<R> {
    pub(super) rd: R,
    pub(super) buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub(super) fn new(rd: R) -> Reader<R> {
        Reader { rd, buf: Vec::new() }
    }

    /// Reads more bytes; `false` at end of stream.
    pub(super) async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        let n = self.rd.read(&mut chunk).await?;
        self.buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        Ok(n > 0)
    }

    /// An HTTP head up to and including its blank line; `None` if the stream ends first.
    pub(super) async fn head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = http::head_len(&self.buf) {
                let rest = self.buf.split_off(end);
                return Ok(Some(std::mem::replace(&mut self.buf, rest)));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP head too long"));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The next frame; `None` if the stream ends first.
    pub(super) async fn frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some((frame, used)) = decode(&self.buf)? {
                self.buf.drain(..used.min(self.buf.len()));
                return Ok(Some(frame));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

/// Bytes the proxy writes, with the kinds they commit.
pub(super) struct Out {
    pub(super) bytes: Vec<u8>,
    pub(super) kinds: &'static [Kind],
    /// Opcode of the frame these bytes start (for close / data-after-close tracking).
    pub(super) opcode: Option<u8>,
}

impl Out {
    /// A legal frame, written by tungstenite.
    pub(super) fn frame(f: Frame, kinds: &'static [Kind]) -> Out {
        let opcode = u8::from(f.header().opcode);
        let mut bytes = Vec::with_capacity(14 + f.len());
        // Writing to a Vec cannot fail.
        let _ = f.format(&mut bytes);
        Out { bytes, kinds, opcode: Some(opcode) }
    }

    /// A frame written by the test kit (a violating one).
    pub(super) fn kit(f: &kit::Frame, kinds: &'static [Kind]) -> Out {
        Out { bytes: f.encode(), kinds, opcode: Some(f.opcode) }
    }

    pub(super) fn raw(bytes: impl Into<Vec<u8>>, kinds: &'static [Kind], opcode: Option<u8>) -> Out {
        Out { bytes: bytes.into(), kinds, opcode }
    }
}

/// One direction of a proxied connection, as written by the proxy.
pub(super) struct Writer<W> {
    pub(super) w: W,
    pub(super) dir: Direction,
    /// A close frame was written in this direction.
    pub(super) closed: bool,
    pub(super) stats: Arc<Stats>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes `out` and records what it commits.
    pub(super) async fn send(&mut self, out: Out) -> io::Result<()> {
        let late = self.closed && out.opcode.is_some_and(is_data);
        self.w.write_all(&out.bytes).await?;
        for kind in out.kinds {
            self.stats.commit(*kind, self.dir);
        }
        if late {
            self.stats.commit(Kind::DataAfterClose, self.dir);
        }
        if out.opcode == Some(op::CLOSE) {
            self.closed = true;
        }
        Ok(())
    }
}
