//! Ring-buffer records: a [`ChunkHeader`] and the payload bytes it describes, as the
//! kernel program writes them, decoded into [`Segment`]s.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ws_monitor_common::{ChunkHeader, DIR_TO_SERVER, HEADER_SIZE, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

use crate::flow::{key_for, Direction, Segment, TcpFlags};

/// A record's timestamp ([`ChunkHeader::ts_ns`], its first 8 bytes; 0 if cut short).
pub(super) fn record_ts(record: &[u8]) -> u64 {
    record.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_ne_bytes)
}

/// Why a ring-buffer record could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than its header, or shorter than the payload length it declares.
    Truncated,
    /// Address family other than 4 or 6, or direction out of range.
    Malformed,
}

/// Splits a ring-buffer record into its header and payload.
pub fn decode(record: &[u8]) -> Result<(ChunkHeader, &[u8]), RecordError> {
    let header_bytes = record.get(..HEADER_SIZE).ok_or(RecordError::Truncated)?;
    // SAFETY: `header_bytes` is exactly HEADER_SIZE bytes, `ChunkHeader` is plain integers
    // (every bit pattern valid), and `read_unaligned` has no alignment requirement.
    let header: ChunkHeader = unsafe { std::ptr::read_unaligned(header_bytes.as_ptr().cast::<ChunkHeader>()) };
    let payload = record.get(HEADER_SIZE..HEADER_SIZE + header.len as usize).ok_or(RecordError::Truncated)?;
    if !matches!(header.family, 4 | 6) || header.direction > 1 {
        return Err(RecordError::Malformed);
    }
    Ok((header, payload))
}

/// The [`Segment`] one record carries. SYN and RST belong to the first record of a
/// packet, FIN to its last.
pub fn segment<'a>(header: &ChunkHeader, payload: &'a [u8]) -> Segment<'a> {
    let addr = |a: &[u8; 16]| -> IpAddr {
        if header.family == 4 {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*a))
        }
    };
    let dir = if header.direction == DIR_TO_SERVER { Direction::ToServer } else { Direction::ToClient };
    let first = header.offset == 0;
    let last = header.offset.saturating_add(header.len as u32).saturating_add(header.skip) >= header.payload_len;
    Segment {
        key: key_for((addr(&header.saddr), header.sport), (addr(&header.daddr), header.dport), dir),
        dir,
        seq: header.seq.wrapping_add(header.offset),
        ack: header.ack,
        flags: TcpFlags {
            syn: first && header.flags & TCP_SYN != 0,
            ack: header.flags & TCP_ACK != 0,
            fin: last && header.flags & TCP_FIN != 0,
            rst: first && header.flags & TCP_RST != 0,
        },
        data: payload,
        skip: header.skip,
        ts_ns: header.ts_ns,
        iface: header.ifindex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(header: ChunkHeader, payload: &[u8]) -> Vec<u8> {
        // SAFETY: ChunkHeader is repr(C) plain integers with explicit padding.
        let bytes = unsafe { std::slice::from_raw_parts((&header as *const ChunkHeader).cast::<u8>(), HEADER_SIZE) };
        let mut v = bytes.to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn decodes_records_and_rejects_short_ones() {
        let mut h = ChunkHeader { family: 4, len: 3, payload_len: 3, ..Default::default() };
        h.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let rec = record(h, b"abc");
        let (hdr, payload) = decode(&rec).unwrap();
        assert_eq!(hdr, h);
        assert_eq!(payload, b"abc");
        assert_eq!(decode(&rec[..rec.len() - 1]).unwrap_err(), RecordError::Truncated);
        assert_eq!(decode(&rec[..10]).unwrap_err(), RecordError::Truncated);
        let bad = record(ChunkHeader { family: 7, ..Default::default() }, b"");
        assert_eq!(decode(&bad).unwrap_err(), RecordError::Malformed);
    }

    #[test]
    fn flags_go_to_first_and_last_chunks() {
        let base = ChunkHeader {
            family: 6,
            seq: u32::MAX - 1,
            payload_len: 4000,
            flags: TCP_SYN | TCP_FIN | TCP_RST | TCP_ACK,
            direction: 1,
            sport: 8001,
            dport: 40000,
            ..Default::default()
        };
        let first = segment(&ChunkHeader { offset: 0, len: 2048, ..base }, &[]);
        assert!(first.flags.syn && first.flags.rst && !first.flags.fin && first.flags.ack);
        let last = segment(&ChunkHeader { offset: 2048, len: 1952, ..base }, &[]);
        assert!(!last.flags.syn && !last.flags.rst && last.flags.fin);
        assert_eq!(last.seq, (u32::MAX - 1).wrapping_add(2048));
        assert_eq!(last.dir, Direction::ToClient);
        assert_eq!(last.key.server.port(), 8001);
        assert_eq!(last.key.client.port(), 40000);
    }
}
