//! Incremental UTF-8 validation across arbitrary cuts (fragments, deliveries).
//!
//! The bulk of every chunk goes through `simdutf8` (SIMD where the CPU has it, the same
//! answers as `std::str::from_utf8`); only an incomplete character at the end of a chunk
//! (at most 3 bytes) is carried to the next one.

/// Streaming validator. `feed` as often as needed, then `finish` at the message end.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Stream {
    carry: [u8; 4],
    carry_len: u8,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget everything (start of a new message).
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }

    /// Validates the next chunk. Returns `false` as soon as the bytes so far cannot be
    /// the beginning of valid UTF-8.
    pub fn feed(&mut self, mut chunk: &[u8]) -> bool {
        // Complete a character carried over from the previous chunk, byte by byte.
        while self.carry_len > 0 {
            let Some((&b, rest)) = chunk.split_first() else {
                return true;
            };
            let n = usize::from(self.carry_len);
            let Some(slot) = self.carry.get_mut(n) else {
                return false;
            };
            *slot = b;
            chunk = rest;
            let bytes = self.carry.get(..=n).unwrap_or(&[]);
            match std::str::from_utf8(bytes) {
                Ok(_) => self.carry_len = 0,
                Err(e) if e.error_len().is_none() => self.carry_len += 1,
                Err(_) => return false,
            }
        }
        if simdutf8::basic::from_utf8(chunk).is_ok() {
            return true;
        }
        match simdutf8::compat::from_utf8(chunk) {
            Ok(_) => true,
            Err(e) => match e.error_len() {
                Some(_) => false,
                None => {
                    // A valid but incomplete character at the very end (1-3 bytes).
                    let tail = chunk.get(e.valid_up_to()..).unwrap_or(&[]);
                    for (d, s) in self.carry.iter_mut().zip(tail) {
                        *d = *s;
                    }
                    self.carry_len = tail.len().min(3) as u8;
                    true
                }
            },
        }
    }

    /// Whether the message ended on a character boundary (call after the last `feed`).
    pub fn finish(&self) -> bool {
        self.carry_len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_all_splits(bytes: &[u8]) -> bool {
        let whole = std::str::from_utf8(bytes).is_ok();
        for cut1 in 0..=bytes.len() {
            for cut2 in cut1..=bytes.len() {
                let mut v = Utf8Stream::new();
                let ok = v.feed(&bytes[..cut1]) && v.feed(&bytes[cut1..cut2]) && v.feed(&bytes[cut2..]) && v.finish();
                assert_eq!(ok, whole, "{bytes:?} cut at {cut1},{cut2}");
            }
        }
        whole
    }

    #[test]
    fn valid_and_invalid_under_every_split() {
        assert!(check_all_splits("héllo €𝄞 ok".as_bytes()));
        assert!(!check_all_splits(&[0x61, 0xC3]));
        assert!(!check_all_splits(&[0xE0, 0x80, 0x80]));
        assert!(!check_all_splits(&[0xED, 0xA0, 0x80]));
        assert!(!check_all_splits(&[0xF4, 0x90, 0x80, 0x80]));
        assert!(!check_all_splits(&[0xF0, 0x9D, 0x84]));
        assert!(!check_all_splits(&[0xFF]));
        assert!(check_all_splits(b""));
    }

    #[test]
    fn byte_by_byte() {
        let s = "aé€𝄞z".repeat(3);
        let mut v = Utf8Stream::new();
        for b in s.as_bytes() {
            assert!(v.feed(std::slice::from_ref(b)));
        }
        assert!(v.finish());
    }
}
