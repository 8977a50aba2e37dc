//! Frames as the proxy reads them, and what it writes ([`crate::testkit`] frames: it must be able to write what no
//! library would).

use super::*;

/// Whether an opcode is a data frame's (continuation, text, binary).
pub(super) fn is_data(opcode: u8) -> bool {
    matches!(opcode, op::CONTINUATION | op::TEXT | op::BINARY)
}

/// The frame at the start of `buf` and its size, `None` if incomplete.
pub(super) fn decode(buf: &[u8]) -> io::Result<Option<(Frame, usize)>> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    let (form, ext) = match b1 & 0x7F {
        126 => (Len::Ext16, 2usize),
        127 => (Len::Ext64, 8usize),
        _ => (Len::Short, 0usize),
    };
    let masked = b1 & 0x80 != 0;
    let header_len = 2 + ext + if masked { 4 } else { 0 };
    let Some(header) = buf.get(..header_len) else {
        return Ok(None);
    };
    let len = match form {
        Len::Short => u64::from(b1 & 0x7F),
        _ => header.iter().skip(2).take(ext).fold(0u64, |a, b| (a << 8) | u64::from(*b)),
    };
    if len > MAX_RELAY_PAYLOAD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame too large to relay"));
    }
    let len = len as usize;
    let mask = match header.get(2 + ext..) {
        Some(&[k0, k1, k2, k3]) if masked => Some([k0, k1, k2, k3]),
        _ => None,
    };
    let Some(body) = buf.get(header_len..header_len + len) else {
        return Ok(None);
    };
    let mut payload = body.to_vec();
    if let Some(key) = mask {
        xor_mask(&mut payload, key);
    }
    let frame =
        Frame { fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 0b111, opcode: b0 & 0x0F, mask, form, claim: None, payload };
    Ok(Some((frame, header_len + len)))
}

/// A final, unmasked header claiming a `len`-byte payload in the 64-bit form; no payload.
pub(super) fn header_claiming(opcode: u8, len: u64) -> Vec<u8> {
    Frame::new(opcode, []).claim(len).form(Len::Ext64).encode()
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
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = self.buf.split_off(end + 4);
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
    pub(super) fn frame(f: &Frame, kinds: &'static [Kind]) -> Out {
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
