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
//! # Known violations
//!
//! A direction that keeps sending the same malformed header (a client that never
//! masks, say) would never resync by the rule above, since every link must raise no
//! violation. So each direction remembers the header *patterns* that raised findings
//! while it was in sync ([`Known`]: the first header byte, the mask bit, and the kinds
//! raised; at most [`KNOWN_PATTERNS`]). While unsynced:
//! - a header matching a known pattern, raising only the kinds it raised before, is
//!   a plausible link (the stricter RSV rules are waived for it);
//! - a candidate whose first link is such a header is confirmed by [`KNOWN_CHAIN`]
//!   links instead of [`RESYNC_CHAIN`] (one later header confirms the boundary);
//! - during probation, findings of a known pattern are held back with the frame counts
//!   (and reported when it ends cleanly) instead of discarding the sync.
//!
//! Conformant traffic raises no finding, so it never has a known pattern: for it the
//! rule above is unchanged.
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

use super::frame::{check_header, close_code_valid, Frag, FrameHeader, OpClass, RsvPolicy, Rules, Status, RSV2, RSV3};
use super::kind::KindSet;

/// Headers chained by their lengths needed to accept a resync candidate.
pub const RESYNC_CHAIN: u32 = 4;

/// Headers needed when the candidate's own header is a known violation pattern.
pub const KNOWN_CHAIN: u32 = 2;

/// Violation patterns remembered per direction.
pub const KNOWN_PATTERNS: usize = 4;

/// Header patterns that raised findings in one direction while it was in sync: first
/// header byte (FIN, RSV, opcode), mask bit, and the kinds they raised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Known {
    patterns: [Option<(u8, bool, KindSet)>; KNOWN_PATTERNS],
}

impl Known {
    /// Remembers that a header starting with `b0`, masked or not, raised `kinds` (the
    /// first [`KNOWN_PATTERNS`] patterns are kept).
    pub fn learn(&mut self, b0: u8, masked: bool, kinds: KindSet) {
        for slot in &mut self.patterns {
            match slot {
                Some((b, m, k)) if *b == b0 && *m == masked => {
                    for kind in kinds.iter() {
                        k.insert(kind);
                    }
                    return;
                }
                Some(_) => {}
                None => {
                    *slot = Some((b0, masked, kinds));
                    return;
                }
            }
        }
    }

    /// The kinds a header starting with `b0` raised before, if its pattern is known
    /// (`masked`: `None` while the second byte is not at hand).
    pub fn kinds(&self, b0: u8, masked: Option<bool>) -> Option<KindSet> {
        self.patterns.iter().flatten().find(|(b, m, _)| *b == b0 && masked.is_none_or(|x| x == *m)).map(|p| p.2)
    }

    /// Whether the header bytes `hdr` are a known pattern that raised `kinds` (and more).
    pub fn covers(&self, hdr: &[u8], kinds: KindSet) -> bool {
        let (Some(&b0), Some(&b1)) = (hdr.first(), hdr.get(1)) else { return false };
        self.kinds(b0, Some(b1 & 0x80 != 0)).is_some_and(|known| kinds.iter().all(|k| known.contains(k)))
    }
}

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
    /// The first link is a known violation pattern.
    known_start: bool,
}

impl Default for Chain {
    fn default() -> Self {
        Chain { hops: 0, frag: Frag::Unknown, closed: false, last_key: None, known_start: false }
    }
}

impl Chain {
    /// Rejects a header from its first bytes alone (before it is complete), so an
    /// implausible candidate never waits for more data.
    pub fn reject_early(&self, b: &[u8], rules: &Rules, known: &Known) -> bool {
        let Some(&b0) = b.first() else {
            return false;
        };
        if known.kinds(b0, b.get(1).map(|b1| b1 & 0x80 != 0)).is_some() {
            return false;
        }
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
    pub fn accept(&mut self, h: &FrameHeader, after: &[u8], rules: &Rules, known: &Known) -> bool {
        let class = h.class();
        let kinds = check_header(h, rules, self.frag, self.closed);
        let b0 = (u8::from(h.fin) << 7) | (h.rsv << 4) | (h.opcode & 0x0F);
        let known_link = !kinds.is_empty()
            && known.kinds(b0, Some(h.mask.is_some())).is_some_and(|k| kinds.iter().all(|x| k.contains(x)));
        if !kinds.is_empty() && !known_link {
            return false;
        }
        if !known_link
            && (h.rsv & (RSV2 | RSV3) != 0 || (h.rsv1() && !matches!(class, OpClass::Text | OpClass::Binary)))
        {
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
        if self.hops == 0 {
            self.known_start = known_link;
        }
        self.hops += 1;
        true
    }

    /// Enough links accepted to take the candidate.
    pub fn confirmed(&self) -> bool {
        self.hops >= RESYNC_CHAIN || (self.known_start && self.hops >= KNOWN_CHAIN)
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
pub fn evaluate(buf: &[u8], rules: &Rules, known: &Known) -> Eval {
    let mut chain = Chain::default();
    let mut at: u64 = 0;
    loop {
        let rest = usize::try_from(at).ok().and_then(|a| buf.get(a..)).unwrap_or(&[]);
        match FrameHeader::parse(rest) {
            Status::Partial(n) => {
                if chain.reject_early(rest, rules, known) {
                    return Eval::Fail;
                }
                return Eval::NeedMore { next: at, need: at.saturating_add(n as u64), chain };
            }
            Status::Complete(h) => {
                let after = rest.get(usize::from(h.header_len)..).unwrap_or(&[]);
                if !chain.accept(&h, after, rules, known) {
                    return Eval::Fail;
                }
                if chain.confirmed() {
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
    pub fn search(&mut self, rules: &Rules, known: &Known) -> (Search, usize) {
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
            match evaluate(avail, rules, known) {
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
        assert_eq!(evaluate(&b, &SERVER, &Known::default()), Eval::Confirmed);
        assert!(matches!(evaluate(&b[..11], &SERVER, &Known::default()), Eval::NeedMore { next: 10, need: 12, .. }));
        assert_eq!(evaluate(&b[1..], &SERVER, &Known::default()), Eval::Fail);
    }

    #[test]
    fn zero_runs_and_ascii_do_not_chain() {
        assert_eq!(evaluate(&[0u8; 64], &SERVER, &Known::default()), Eval::Fail);
        let text = b"{\"hello\": \"world\", \"AB\": [1,2,3], \"more\": \"text here\"}".repeat(20);
        for p in 0..text.len() {
            assert!(!matches!(evaluate(&text[p..], &SERVER, &Known::default()), Eval::Confirmed), "{p}");
        }
        let client = Rules { client_to_server: true, ..SERVER };
        // A masked run of zeros repeats the key: consecutive identical keys never chain.
        let frame = [0x82u8, 0x82, 1, 2, 3, 4, 9, 9];
        assert_eq!(evaluate(&frame.repeat(8), &client, &Known::default()), Eval::Fail);
    }

    #[test]
    fn scan_takes_candidates_in_order() {
        let mut s = Scan::new(100, 0);
        s.push(&[0xFF, 0xFF, 0xFF]);
        for i in 0..3u8 {
            s.push(&[0x81, 1, b'a' + i]);
        }
        assert_eq!(s.search(&SERVER, &Known::default()), (Search::Wait, 3));
        s.push(&[0x81]);
        assert_eq!(s.search(&SERVER, &Known::default()), (Search::Wait, 0));
        s.push(&[1, b'z']);
        assert_eq!(s.search(&SERVER, &Known::default()), (Search::Found(3), 0));
        assert_eq!(s.base(), 100);
    }

    #[test]
    fn long_hop_is_followed() {
        let mut s = Scan::new(0, 0);
        s.push(&[0x82, 0x7F, 0, 0, 0, 0, 0, 2, 0, 0]); // 128 KiB binary
        assert!(matches!(s.search(&SERVER, &Known::default()), (Search::Follow { p: 0, next: 131082, .. }, 0)));
    }
}
