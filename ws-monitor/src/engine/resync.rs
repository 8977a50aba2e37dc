//! Finding frame boundaries again after sync was lost (or was never had).
//!
//! # Resync rule
//!
//! A direction that does not know where the next frame header is (mid-stream start, a
//! gap over a header position, HTTP where a header was expected, a length with the MSB
//! set, a handshake we could not follow) is *unsynced*. Bytes passed over while unsynced
//! raise no findings.
//!
//! 1. **Candidates.** Every stream position is a candidate. Incoming bytes are kept in a
//!    scan window (the current candidate plus [`SCAN_WINDOW`] bytes; the buffer never
//!    exceeds `SCAN_WINDOW * 5 / 4`).
//! 2. **Chain.** A candidate is confirmed when [`RESYNC_CHAIN`] consecutive headers,
//!    each found where the previous one's length says the next begins, are all
//!    *plausible* ([`Chain::accept`]):
//!    - the header raises no violation at all ([`check_header`]) given the direction's
//!      negotiation and the chain's own fragmentation / close state (the first link
//!      starts with the fragmentation state unknown);
//!    - stricter than the checks: RSV2/RSV3 never set, RSV1 only on a text/binary
//!      frame, the mask bit right for the direction even when the negotiation is
//!      unknown;
//!    - no zero-length data frame with FIN = 0 (runs of zero bytes would otherwise
//!      chain);
//!    - for client frames, each masking key differs from the previous link's (masked
//!      runs of zero bytes repeat the key);
//!    - no second close and no data after a close in the chain; a close body that is
//!      visible must be empty or start with a valid status code.
//!
//!    Candidates are decided strictly in stream order: the first one that confirms
//!    wins, a later one is only looked at once every earlier one failed. A candidate
//!    only uses the [`SCAN_WINDOW`] bytes from its own position, so the decision depends
//!    on the bytes alone, not on how they were cut into deliveries. A candidate whose
//!    chain needs bytes beyond that is followed *outside* the window (only the headers
//!    at the predicted positions are read, payloads are skipped without buffering), so
//!    frames larger than the window can still be resynchronised; if a link fails,
//!    scanning restarts one byte after it.
//! 3. **Probation.** Parsing resumes at the confirmed position, but for the first
//!    [`PROBATION_FRAMES`] frames nothing is reported: any frame that *would* raise a
//!    finding (any kind, including payload checks and HTTP in the stream) discards the
//!    sync silently and scanning resumes after it; frame counts and close codes seen
//!    meanwhile are held back and only committed when probation ends cleanly (or the
//!    connection ends without contradiction). `resyncs` counts committed syncs.
//! 4. **After resync** the fragmentation state is unknown until the next message
//!    boundary (no orphan/interleaved findings, no UTF-8 check of a message whose
//!    start was missed), the close state restarts empty, and a permessage-deflate
//!    context with context takeover is considered lost (compressed text is no longer
//!    checked in that direction).
//!
//! For a mid-stream connection the negotiation is unknown: RSV1 on text/binary frames
//! is plausible and `rsv_without_extension` is never reported, compressed messages are
//! not decompressed, and state kinds are only reported once the state was established
//! from frames parsed in sync.
//!
//! Known limits (missed resyncs are acceptable, false findings are not): a client that
//! reuses one masking key never resyncs; a payload that itself is a long run of valid
//! frames for that direction (a WebSocket stream tunnelled inside another) could be
//! mistaken for the real framing once it passes probation.
//!
//! [`check_header`]: super::frame::check_header

use super::frame::{check_header, close_code_valid, Frag, FrameHeader, OpClass, Rules, RsvPolicy, Status, RSV2, RSV3};

/// Headers chained by their lengths needed to accept a resync candidate.
pub const RESYNC_CHAIN: u32 = 4;

/// Frames parsed after a resync before findings are reported again.
pub const PROBATION_FRAMES: u32 = 16;

/// Bytes kept while looking for a candidate.
pub const SCAN_WINDOW: usize = 64 * 1024;

/// A candidate chain being walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Links accepted so far.
    pub hops: u32,
    frag: Frag,
    closed: bool,
    last_key: Option<[u8; 4]>,
}

impl Default for Chain {
    fn default() -> Self {
        Chain { hops: 0, frag: Frag::Unknown, closed: false, last_key: None }
    }
}

impl Chain {
    /// Rejects a header from its first bytes alone (before it is complete), so an
    /// implausible candidate never waits for more data.
    pub fn reject_early(&self, b: &[u8], rules: &Rules) -> bool {
        let Some(&b0) = b.first() else {
            return false;
        };
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0b111;
        let class = OpClass::of(b0 & 0x0F);
        if class == OpClass::Reserved
            || rsv & (RSV2 | RSV3) != 0
            || (rsv != 0 && !matches!(class, OpClass::Text | OpClass::Binary))
            || (rsv != 0 && rules.rsv == RsvPolicy::Plain)
            || (class.is_control() && !fin)
            || (self.closed && (class.is_data() || class == OpClass::Close))
            || (class == OpClass::Continuation && self.frag == Frag::Idle)
            || (matches!(class, OpClass::Text | OpClass::Binary) && self.frag == Frag::Open)
        {
            return true;
        }
        let Some(&b1) = b.get(1) else {
            return false;
        };
        (b1 & 0x80 != 0) != rules.client_to_server || (class.is_control() && b1 & 0x7F > 125)
    }

    /// Accepts `h` as the next link, or returns `false`. `after` is whatever payload
    /// bytes follow the header in the buffer (used to check a close code when visible).
    pub fn accept(&mut self, h: &FrameHeader, after: &[u8], rules: &Rules) -> bool {
        let class = h.class();
        if !check_header(h, rules, self.frag, self.closed).is_empty() {
            return false;
        }
        if h.rsv & (RSV2 | RSV3) != 0 || (h.rsv1() && !matches!(class, OpClass::Text | OpClass::Binary)) {
            return false;
        }
        if class.is_data() && !h.fin && h.len == 0 {
            return false;
        }
        if let Some(key) = h.mask {
            if self.last_key == Some(key) {
                return false;
            }
            self.last_key = Some(key);
        }
        if class == OpClass::Close {
            if self.closed || h.len == 1 {
                return false;
            }
            let key = h.mask.unwrap_or([0; 4]);
            if let (true, [a, b, ..]) = (h.len >= 2, after) {
                if !close_code_valid(u16::from_be_bytes([a ^ key[0], b ^ key[1]])) {
                    return false;
                }
            }
            self.closed = true;
        }
        self.frag = self.frag.after(class, h.fin);
        self.hops += 1;
        true
    }
}

/// Result of walking a candidate's chain through the bytes at hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eval {
    /// Some link is implausible.
    Fail,
    /// [`RESYNC_CHAIN`] links are plausible.
    Confirmed,
    /// More bytes are needed: the next header starts `next` bytes after the candidate,
    /// and progress needs at least `need` bytes from the candidate on.
    NeedMore { next: u64, need: u64, chain: Chain },
}

/// Walks the chain starting at `buf[0]`.
pub fn evaluate(buf: &[u8], rules: &Rules) -> Eval {
    let mut chain = Chain::default();
    let mut at: u64 = 0;
    loop {
        let rest = usize::try_from(at).ok().and_then(|a| buf.get(a..)).unwrap_or(&[]);
        match FrameHeader::parse(rest) {
            Status::Partial(n) => {
                if chain.reject_early(rest, rules) {
                    return Eval::Fail;
                }
                return Eval::NeedMore { next: at, need: at.saturating_add(n as u64), chain };
            }
            Status::Complete(h) => {
                let after = rest.get(usize::from(h.header_len)..).unwrap_or(&[]);
                if !chain.accept(&h, after, rules) {
                    return Eval::Fail;
                }
                if chain.hops >= RESYNC_CHAIN {
                    return Eval::Confirmed;
                }
                at = at.saturating_add(u64::from(h.header_len)).saturating_add(h.len);
            }
        }
    }
}

/// Outcome of [`Scan::search`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// The current candidate needs more bytes.
    Wait,
    /// The candidate at window index `p` is confirmed.
    Found(usize),
    /// The candidate at window index `p` needs bytes beyond [`SCAN_WINDOW`]: follow it
    /// outside the window, next header at window index `next` (may be past the end).
    Follow { p: usize, next: u64, chain: Chain },
}

/// Scanning state: the window, starting a little before the current candidate.
///
/// Candidates are decided strictly in stream order and each one only looks at the
/// [`SCAN_WINDOW`] bytes from its own position, so the decision depends on the bytes
/// alone, never on how they were cut into deliveries.
#[derive(Debug)]
pub struct Scan {
    win: Vec<u8>,
    /// Window index of the current candidate.
    start: usize,
    /// Stream offset of `win[0]`.
    base: u64,
    /// Candidates before this stream offset are refused (progress after a failed
    /// probation).
    min_start: u64,
}

impl Scan {
    pub fn new(base: u64, min_start: u64) -> Self {
        Scan { win: Vec::new(), start: 0, base, min_start }
    }

    /// Candidates before this stream offset are refused.
    pub fn min_start(&self) -> u64 {
        self.min_start
    }

    /// Stream offset of window index 0.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The window from index `i` on.
    pub fn bytes_from(&self, i: usize) -> &[u8] {
        self.win.get(i..).unwrap_or(&[])
    }

    /// Bytes the current candidate may still use; at least 1 after a `Wait`.
    pub fn room(&self) -> usize {
        (self.start + SCAN_WINDOW).saturating_sub(self.win.len())
    }

    /// Appends bytes (at most [`Scan::room`] are useful), compacting the window now and
    /// then (never more than `SCAN_WINDOW * 5 / 4` bytes are kept).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start >= SCAN_WINDOW / 4 {
            self.win.drain(..self.start.min(self.win.len()));
            self.base += self.start as u64;
            self.start = 0;
        }
        self.win.extend_from_slice(bytes);
    }

    /// Decides candidates in order as far as the window allows. Returns the decision and
    /// how many bytes were passed over.
    pub fn search(&mut self, rules: &Rules) -> (Search, usize) {
        let mut dropped = 0usize;
        loop {
            let avail = self.win.get(self.start..).unwrap_or(&[]);
            if avail.is_empty() {
                return (Search::Wait, dropped);
            }
            let cand = self.base.saturating_add(self.start as u64);
            if cand < self.min_start {
                let n = usize::try_from(self.min_start - cand).map_or(avail.len(), |d| d.min(avail.len()));
                self.start += n;
                dropped += n;
                continue;
            }
            match evaluate(avail, rules) {
                Eval::Fail => {
                    self.start += 1;
                    dropped += 1;
                }
                Eval::Confirmed => return (Search::Found(self.start), dropped),
                Eval::NeedMore { next, need, chain } => {
                    if need > SCAN_WINDOW as u64 {
                        let next = (self.start as u64).saturating_add(next);
                        return (Search::Follow { p: self.start, next, chain }, dropped);
                    }
                    return (Search::Wait, dropped);
                }
            }
        }
    }

    /// Gives up the current candidate (cannot happen in practice: progress guard).
    pub fn skip_one(&mut self) {
        if self.start < self.win.len() {
            self.start += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Rules =
        Rules { client_to_server: false, rsv: RsvPolicy::Unknown, max_frame_size: 1 << 24, max_message_size: 1 << 26 };

    #[test]
    fn chain_of_valid_frames_confirms() {
        let mut b = Vec::new();
        for i in 0..4u8 {
            b.extend_from_slice(&[0x82, 3, i, i, i]);
        }
        assert_eq!(evaluate(&b, &SERVER), Eval::Confirmed);
        assert!(matches!(evaluate(&b[..11], &SERVER), Eval::NeedMore { next: 10, need: 12, .. }));
        assert_eq!(evaluate(&b[1..], &SERVER), Eval::Fail);
    }

    #[test]
    fn zero_runs_and_ascii_do_not_chain() {
        assert_eq!(evaluate(&[0u8; 64], &SERVER), Eval::Fail);
        let text = b"{\"hello\": \"world\", \"AB\": [1,2,3], \"more\": \"text here\"}".repeat(20);
        for p in 0..text.len() {
            assert!(!matches!(evaluate(&text[p..], &SERVER), Eval::Confirmed), "{p}");
        }
        let client = Rules { client_to_server: true, ..SERVER };
        // A masked run of zeros repeats the key: consecutive identical keys never chain.
        let frame = [0x82u8, 0x82, 1, 2, 3, 4, 9, 9];
        assert_eq!(evaluate(&frame.repeat(8), &client), Eval::Fail);
    }

    #[test]
    fn scan_takes_candidates_in_order() {
        let mut s = Scan::new(100, 0);
        s.push(&[0xFF, 0xFF, 0xFF]);
        for i in 0..3u8 {
            s.push(&[0x81, 1, b'a' + i]);
        }
        assert_eq!(s.search(&SERVER), (Search::Wait, 3));
        s.push(&[0x81]);
        assert_eq!(s.search(&SERVER), (Search::Wait, 0));
        s.push(&[1, b'z']);
        assert_eq!(s.search(&SERVER), (Search::Found(3), 0));
        assert_eq!(s.base(), 100);
    }

    #[test]
    fn long_hop_is_followed() {
        let mut s = Scan::new(0, 0);
        s.push(&[0x82, 0x7F, 0, 0, 0, 0, 0, 2, 0, 0]); // 128 KiB binary
        assert!(matches!(s.search(&SERVER), (Search::Follow { p: 0, next: 131082, .. }, 0)));
    }
}
