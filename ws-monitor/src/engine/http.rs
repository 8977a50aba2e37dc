//! HTTP/1.1 message bodies (RFC 9112 §6-7): how long a body is, and skipping it as it
//! streams by without keeping it, so that plain HTTP exchanges on a keep-alive
//! connection can be passed over until an upgrade comes.

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (a response without length): nothing after it can
    /// be HTTP again.
    UntilClose,
    /// Framing headers that no conformant receiver can follow (conflicting
    /// Content-Length, a request with an unknown transfer coding).
    Invalid,
}

/// The framing that `Transfer-Encoding` and `Content-Length` values announce.
/// `request`: a request (no length means no body), otherwise a response that has a body
/// at all (no length means until close).
pub fn framing(transfer_encoding: &[&str], content_length: &[&str], request: bool) -> Framing {
    let codings: Vec<&str> =
        transfer_encoding.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|t| !t.is_empty()).collect();
    if let Some(last) = codings.last() {
        return if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked
        } else if request {
            Framing::Invalid
        } else {
            Framing::UntilClose
        };
    }
    let mut len: Option<u64> = None;
    for v in content_length.iter().flat_map(|v| v.split(',')).map(str::trim) {
        let Some(n) = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).then(|| v.parse::<u64>().ok()).flatten()
        else {
            return Framing::Invalid;
        };
        if len.is_some_and(|l| l != n) {
            return Framing::Invalid;
        }
        len = Some(n);
    }
    match len {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None if request => Framing::Empty,
        None => Framing::UntilClose,
    }
}

/// Where a chunked body stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Reading the hex size (`digits` so far).
    Size { size: u64, digits: u8 },
    /// After the size: an extension or whitespace up to the line feed.
    SizeLine { size: u64 },
    /// Chunk data still to come.
    Data(u64),
    /// The CR LF after chunk data (`cr`: the CR was seen).
    DataEnd { cr: bool },
    /// Trailer section: at the start of a line (`empty` line so far: only a CR).
    TrailerLineStart { cr: bool },
    /// Inside a trailer field line.
    TrailerLine,
}

/// A body being skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Skip {
    /// No body pending.
    #[default]
    Idle,
    Length(u64),
    Chunked(Chunk),
}

/// The body framing is broken: the stream is no longer HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed;

impl Skip {
    /// Starts skipping a body of this framing (`UntilClose` and `Invalid` are the
    /// caller's to handle; they start nothing).
    pub fn start(framing: Framing) -> Skip {
        match framing {
            Framing::Length(n) => Skip::Length(n),
            Framing::Chunked => Skip::Chunked(Chunk::Size { size: 0, digits: 0 }),
            _ => Skip::Idle,
        }
    }

    /// A body is still pending.
    pub fn active(&self) -> bool {
        *self != Skip::Idle
    }

    /// Passes over the body bytes at the start of `b`; returns how many belonged to it.
    pub fn skip(&mut self, b: &[u8]) -> Result<usize, Malformed> {
        let mut i = 0usize;
        loop {
            let rest = b.get(i..).unwrap_or(&[]);
            match self {
                Skip::Idle => return Ok(i),
                Skip::Length(n) => {
                    let take = usize::try_from(*n).map_or(rest.len(), |n| n.min(rest.len()));
                    *n -= take as u64;
                    i += take;
                    if *n == 0 {
                        *self = Skip::Idle;
                    }
                    return Ok(i);
                }
                Skip::Chunked(c) => {
                    if let Chunk::Data(n) = c {
                        let take = usize::try_from(*n).map_or(rest.len(), |n| n.min(rest.len()));
                        *n -= take as u64;
                        i += take;
                        if *n == 0 {
                            *c = Chunk::DataEnd { cr: false };
                        }
                        if rest.len() == take {
                            return Ok(i);
                        }
                        continue;
                    }
                    let Some(&byte) = rest.first() else {
                        return Ok(i);
                    };
                    i += 1;
                    match chunk_byte(*c, byte)? {
                        Some(next) => *c = next,
                        None => *self = Skip::Idle,
                    }
                }
            }
        }
    }

    /// `n` body bytes were lost; `true` when the loss lies entirely inside a body of
    /// known length (nothing else is affected).
    pub fn lose(&mut self, n: u64) -> bool {
        match self {
            Skip::Length(left) if n <= *left => {
                *left -= n;
                if *left == 0 {
                    *self = Skip::Idle;
                }
                true
            }
            Skip::Chunked(Chunk::Data(left)) if n <= *left => {
                *left -= n;
                if *left == 0 {
                    *self = Skip::Chunked(Chunk::DataEnd { cr: false });
                }
                true
            }
            _ => false,
        }
    }
}

/// One byte of chunked framing outside chunk data; `None` when the body ended.
fn chunk_byte(c: Chunk, b: u8) -> Result<Option<Chunk>, Malformed> {
    let next = match c {
        Chunk::Size { size, digits } => match (b as char).to_digit(16) {
            Some(d) if digits < 16 => Chunk::Size { size: (size << 4) | u64::from(d), digits: digits + 1 },
            None if digits > 0 => return chunk_byte(Chunk::SizeLine { size }, b),
            _ => return Err(Malformed),
        },
        Chunk::SizeLine { size } => match b {
            b'\n' if size == 0 => Chunk::TrailerLineStart { cr: false },
            b'\n' => Chunk::Data(size),
            b'\r' | b';' | b' ' | b'\t' | b'=' | b'"' => c,
            _ if b.is_ascii_graphic() => c,
            _ => return Err(Malformed),
        },
        Chunk::Data(_) => c,
        Chunk::DataEnd { cr } => match b {
            b'\r' if !cr => Chunk::DataEnd { cr: true },
            b'\n' => Chunk::Size { size: 0, digits: 0 },
            _ => return Err(Malformed),
        },
        Chunk::TrailerLineStart { cr } => match b {
            b'\n' => return Ok(None),
            b'\r' if !cr => Chunk::TrailerLineStart { cr: true },
            _ if cr => return Err(Malformed),
            _ => Chunk::TrailerLine,
        },
        Chunk::TrailerLine => match b {
            b'\n' => Chunk::TrailerLineStart { cr: false },
            _ => c,
        },
    };
    Ok(Some(next))
}

// ----- heads ---------------------------------------------------------------------------

/// Length of the HTTP head at the start of `buf`, through its blank line; `None` while it
/// is not complete.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    super::handshake::head_end(buf, 0)
}

/// The status code of a complete response head (httparse), `None` if it is not one.
pub fn response_status(head: &[u8]) -> Option<u16> {
    let mut headers = [httparse::EMPTY_HEADER; super::handshake::MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => resp.code,
        _ => None,
    }
}

/// Calls `f` with each header field (name, value) of the complete head at the start of
/// `head` (a request or a response: its start line is passed over), in order, as
/// httparse reads them. `false` (and no call) when the head is not complete or not
/// valid HTTP.
pub fn for_each_field(head: &[u8], mut f: impl FnMut(&str, &[u8])) -> bool {
    let Some(fields) = head.iter().position(|&b| b == b'\n').and_then(|i| head.get(i + 1..)) else {
        return false;
    };
    let mut headers = [httparse::EMPTY_HEADER; super::handshake::MAX_HEADERS];
    match httparse::parse_headers(fields, &mut headers) {
        Ok(httparse::Status::Complete((_, parsed))) => {
            for h in parsed {
                f(h.name, h.value);
            }
            true
        }
        _ => false,
    }
}

/// Whether a complete head has a field `name` (any case) whose comma-separated value
/// list holds `token` (any case).
pub fn has_field_token(head: &[u8], name: &str, token: &str) -> bool {
    let mut found = false;
    for_each_field(head, |n, v| found |= field_has_token(n, v, name, token));
    found
}

fn field_has_token(n: &str, v: &[u8], name: &str, token: &str) -> bool {
    n.eq_ignore_ascii_case(name)
        && v.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether `buf` starts a `GET` request whose head, as far as `buf` holds it, has a field
/// `name` (any case) with `token` (any case) in its value list: for a packet that may cut
/// the head short (read up to its last complete line). Lines that are not valid header
/// fields are passed over, as a lenient server would.
pub fn get_request_has_token(buf: &[u8], name: &str, token: &str) -> bool {
    if !buf.starts_with(b"GET ") {
        return false;
    }
    let completed;
    let head = match head_len(buf) {
        Some(n) => buf.get(..n).unwrap_or(buf),
        None => {
            // Cut short: its complete lines, ended as a head.
            let lines = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            completed = [buf.get(..lines).unwrap_or_default(), b"\r\n"].concat();
            &completed
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; super::handshake::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let mut cfg = httparse::ParserConfig::default();
    cfg.ignore_invalid_headers_in_requests(true);
    match cfg.parse_request(&mut req, head) {
        Ok(httparse::Status::Complete(_)) => req.headers.iter().any(|h| field_has_token(h.name, h.value, name, token)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_all(f: Framing, b: &[u8], step: usize) -> Result<usize, Malformed> {
        let mut s = Skip::start(f);
        let mut used = 0;
        for piece in b.chunks(step) {
            let n = s.skip(piece)?;
            used += n;
            if n < piece.len() {
                assert!(!s.active());
                break;
            }
        }
        Ok(used)
    }

    #[test]
    fn framing_rules() {
        assert_eq!(framing(&[], &["12"], true), Framing::Length(12));
        assert_eq!(framing(&[], &["12, 12"], false), Framing::Length(12));
        assert_eq!(framing(&[], &["12", "13"], false), Framing::Invalid);
        assert_eq!(framing(&[], &["-1"], true), Framing::Invalid);
        assert_eq!(framing(&[], &[], true), Framing::Empty);
        assert_eq!(framing(&[], &[], false), Framing::UntilClose);
        assert_eq!(framing(&["gzip, chunked"], &["5"], false), Framing::Chunked);
        assert_eq!(framing(&["gzip"], &[], false), Framing::UntilClose);
        assert_eq!(framing(&["gzip"], &[], true), Framing::Invalid);
    }

    #[test]
    fn chunked_body_any_cut() {
        let body = b"4;ext=\"a b\"\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let mut b = body.to_vec();
        b.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for step in 1..b.len() {
            assert_eq!(skip_all(Framing::Chunked, &b, step), Ok(body.len()), "step {step}");
        }
        assert_eq!(skip_all(Framing::Chunked, b"0\r\n\r\nrest", 3), Ok(5));
        assert_eq!(skip_all(Framing::Chunked, b"zz\r\n", 1), Err(Malformed));
        assert_eq!(skip_all(Framing::Chunked, b"2\r\nabXY", 1), Err(Malformed));
    }

    #[test]
    fn length_body_and_losses() {
        assert_eq!(skip_all(Framing::Length(3), b"abcdef", 2), Ok(3));
        let mut s = Skip::start(Framing::Length(10));
        assert!(s.lose(4));
        assert!(!s.lose(7));
        assert_eq!(s.skip(b"abcdefgh"), Ok(6));
        assert!(!s.active());
    }

    #[test]
    fn heads() {
        let req = b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, WebSocket\r\n\r\nbody";
        assert_eq!(head_len(req), Some(req.len() - 4));
        assert_eq!(head_len(&req[..20]), None);
        let mut fields = Vec::new();
        assert!(for_each_field(req, |n, v| fields.push((n.to_owned(), v.to_vec()))));
        assert_eq!(fields, [("Host".to_owned(), b"a".to_vec()), ("Upgrade".to_owned(), b"h2c, WebSocket".to_vec())]);
        assert!(has_field_token(req, "upgrade", "websocket"));
        assert!(!has_field_token(req, "host", "websocket"));
        assert!(!for_each_field(&req[..20], |_, _| {}));
        assert_eq!(response_status(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"), Some(101));
        assert_eq!(response_status(b"HTTP/1.1 101 Switching"), None);
        assert_eq!(response_status(req), None);
    }
}
