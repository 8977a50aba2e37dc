//! permessage-deflate (RFC 7692) decompression, only so text messages can be checked.
//!
//! A compressed message is raw DEFLATE data whose trailing `00 00 ff ff` was removed by
//! the sender; the receiver appends it again and inflates. Without `*_no_context_takeover`
//! the LZ77 window carries over from one compressed message to the next, so every
//! compressed message of that direction (binary too) must go through the same inflater.
//! The inflater always uses a 32 KiB window, which decodes streams made with any
//! smaller `*_max_window_bits` as well.

use flate2::{Decompress, FlushDecompress, Status};

/// The bytes RFC 7692 §7.2.2 appends to every compressed message before inflating.
pub const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Size of the caller's output scratch buffer.
pub const SCRATCH: usize = 8192;

/// Why inflating stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The data does not inflate: the message cannot be checked, the context is gone.
    Corrupt,
    /// The output budget ran out (the rest of the input was not inflated).
    Budget,
}

/// One direction's raw-DEFLATE decoder.
pub struct Inflater {
    d: Decompress,
    /// A final block (BFINAL) was seen: nothing after it can be decoded with this
    /// context.
    ended: bool,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("ended", &self.ended).finish_non_exhaustive()
    }
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    pub fn new() -> Self {
        Inflater { d: Decompress::new(false), ended: false }
    }

    /// Fresh context (`*_no_context_takeover`).
    pub fn reset(&mut self) {
        self.d.reset(false);
        self.ended = false;
    }

    /// Whether a final DEFLATE block ended the stream (the context cannot continue).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Inflates `input`, handing every produced chunk to `sink`. `tail` marks the
    /// [`TAIL`] bytes at the end of a message (flushes all pending output). At most
    /// `budget` bytes (and then one scratch buffer) are produced; what was produced is
    /// taken off it.
    pub fn push(
        &mut self,
        mut input: &[u8],
        tail: bool,
        scratch: &mut [u8; SCRATCH],
        budget: &mut u64,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<(), Stop> {
        let flush = if tail { FlushDecompress::Sync } else { FlushDecompress::None };
        loop {
            if self.ended {
                return Ok(());
            }
            let (in0, out0) = (self.d.total_in(), self.d.total_out());
            let st = self.d.decompress(input, scratch, flush).map_err(|_| Stop::Corrupt)?;
            let used = usize::try_from(self.d.total_in() - in0).unwrap_or(usize::MAX);
            let made = usize::try_from(self.d.total_out() - out0).unwrap_or(usize::MAX);
            if let Some(out) = scratch.get(..made) {
                if !out.is_empty() {
                    sink(out);
                }
            }
            input = input.get(used..).unwrap_or(&[]);
            let over = made as u64 > *budget;
            *budget = budget.saturating_sub(made as u64);
            if over {
                return Err(Stop::Budget);
            }
            if st == Status::StreamEnd {
                self.ended = true;
                return Ok(());
            }
            let full = made == scratch.len();
            if (input.is_empty() && !full) || (used == 0 && made == 0) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// Compresses like a permessage-deflate sender: sync flush, tail stripped.
    pub(crate) fn pmd_compress(c: &mut Compress, msg: &[u8]) -> Vec<u8> {
        let start = c.total_in();
        let mut out = Vec::with_capacity(msg.len() + 64);
        loop {
            let taken = usize::try_from(c.total_in() - start).unwrap();
            c.compress_vec(&msg[taken..], &mut out, FlushCompress::Sync).unwrap();
            // Flushed once all input is in and the output did not fill the room.
            if c.total_in() - start == msg.len() as u64 && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(256));
        }
        if out.is_empty() {
            // zlib does not repeat a flush with nothing new: an empty payload (the
            // receiver's appended tail alone inflates to nothing).
            return out;
        }
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    fn inflate_all(inf: &mut Inflater, data: &[u8]) -> Vec<u8> {
        let mut scratch = [0u8; SCRATCH];
        let mut got = Vec::new();
        let mut budget = u64::MAX;
        for piece in data.chunks(3) {
            inf.push(piece, false, &mut scratch, &mut budget, |o| got.extend_from_slice(o)).unwrap();
        }
        inf.push(&TAIL, true, &mut scratch, &mut budget, |o| got.extend_from_slice(o)).unwrap();
        got
    }

    #[test]
    fn context_takeover_round_trip() {
        let mut c = Compress::new(Compression::default(), false);
        let mut inf = Inflater::new();
        let big = "abc€".repeat(5000);
        for msg in ["hello hello hello", "hello again hello", big.as_str(), ""] {
            let z = pmd_compress(&mut c, msg.as_bytes());
            assert_eq!(inflate_all(&mut inf, &z), msg.as_bytes());
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut inf = Inflater::new();
        let mut scratch = [0u8; SCRATCH];
        let r = inf.push(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF], true, &mut scratch, &mut u64::MAX.clone(), |_| {});
        assert_eq!(r, Err(Stop::Corrupt));
    }

    #[test]
    fn output_stops_at_the_budget() {
        let mut c = Compress::new(Compression::default(), false);
        let z = pmd_compress(&mut c, &vec![0u8; 1 << 20]);
        let mut inf = Inflater::new();
        let (mut scratch, mut budget, mut got) = ([0u8; SCRATCH], 100_000u64, 0usize);
        let r = inf.push(&z, false, &mut scratch, &mut budget, |o| got += o.len());
        assert_eq!(r, Err(Stop::Budget));
        assert!((100_000..=100_000 + SCRATCH).contains(&got), "{got}");
        assert_eq!(budget, 0);
    }
}
