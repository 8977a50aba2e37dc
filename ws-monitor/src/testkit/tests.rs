//! Tests of the kit against an independent decoder (tungstenite's) and RFC 6455's
//! examples.

use std::io::Cursor;

use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use super::frame::{close_body, xor_mask, RSV1, RSV2, RSV3};
use super::handshake::accept_without_guid;
use super::scenario::{head_len, Tcp};
use super::*;
use crate::flow::{Direction, Segment};

/// The frame at the start of `bytes` as tungstenite reads it: header, payload (unmasked)
/// and the size taken.
fn tungstenite_decode(bytes: &[u8]) -> (FrameHeader, Vec<u8>, usize) {
    let mut cursor = Cursor::new(bytes);
    let (header, len) = FrameHeader::parse(&mut cursor).unwrap().expect("a complete header");
    let start = cursor.position() as usize;
    let mut payload = bytes[start..start + len as usize].to_vec();
    if let Some(key) = header.mask {
        xor_mask(&mut payload, key);
    }
    (header, payload, start + len as usize)
}

#[test]
fn legal_frames_decode_with_tungstenite() {
    let cases = [
        (Frame::text("héllo"), OpCode::Data(Data::Text)),
        (Frame::binary(vec![7; 300]).mask([1, 2, 3, 4]), OpCode::Data(Data::Binary)),
        (Frame::binary(vec![9; 0x1_0000]), OpCode::Data(Data::Binary)),
        (Frame::continuation("tail").fin(true), OpCode::Data(Data::Continue)),
        (Frame::ping("p").mask([9, 9, 9, 9]), OpCode::Control(Control::Ping)),
        (Frame::pong(""), OpCode::Control(Control::Pong)),
        (Frame::close(1000, b"bye"), OpCode::Control(Control::Close)),
    ];
    for (frame, opcode) in cases {
        let bytes = frame.encode();
        let (h, payload, used) = tungstenite_decode(&bytes);
        assert_eq!(used, bytes.len());
        assert_eq!(
            (h.is_final, h.rsv1, h.rsv2, h.rsv3, h.opcode, h.mask),
            (true, false, false, false, opcode, frame.mask)
        );
        assert_eq!(payload, frame.payload);
    }
}

#[test]
fn every_length_form_and_bit_round_trips() {
    for len in [0usize, 1, 125, 126, 300, 0xFFFF, 0x1_0000] {
        for mask in [None, Some([0xA1, 0x00, 0xFF, 0x5C])] {
            for form in [Len::Minimal, Len::Short, Len::Ext16, Len::Ext64] {
                let f = Frame {
                    fin: len % 2 == 0,
                    rsv: RSV1 | RSV3,
                    opcode: op::BINARY,
                    mask,
                    form,
                    claim: None,
                    payload: vec![7; len],
                };
                let bytes = f.encode();
                let (h, payload, used) = tungstenite_decode(&bytes);
                assert_eq!(used, bytes.len());
                assert_eq!((h.is_final, h.rsv1, h.rsv2, h.rsv3, h.mask), (f.fin, true, false, true, f.mask));
                assert_eq!(payload, f.payload);
                // The form asked for, widened when too short for the length.
                let written = match bytes[1] & 0x7F {
                    126 => Len::Ext16,
                    127 => Len::Ext64,
                    _ => Len::Short,
                };
                let expect = match form {
                    Len::Minimal => Len::minimal(len as u64),
                    Len::Short if len >= 126 => Len::minimal(len as u64),
                    Len::Ext16 if len > 0xFFFF => Len::Ext64,
                    f => f,
                };
                assert_eq!(written, expect, "{len} {form:?}");
            }
        }
    }
}

#[test]
fn rfc_6455_examples() {
    // §5.7: unmasked and masked "Hello", a 256-byte and a 64 KiB binary header.
    assert_eq!(Frame::text("Hello").encode(), [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(
        Frame::text("Hello").mask([0x37, 0xfa, 0x21, 0x3d]).encode(),
        [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
    );
    assert_eq!(Frame::text("Hel").fin(false).encode(), [0x01, 0x03, 0x48, 0x65, 0x6c]);
    assert_eq!(Frame::continuation("lo").encode(), [0x80, 0x02, 0x6c, 0x6f]);
    assert_eq!(Frame::binary(vec![0; 256]).encode()[..4], [0x82, 0x7E, 0x01, 0x00]);
    assert_eq!(Frame::binary(vec![0; 65536]).encode()[..10], [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]);
    // A ping with RSV2, and a close with code and reason.
    assert_eq!(Frame::ping("").rsv(RSV2).encode(), [0xA9, 0x00]);
    assert_eq!(Frame::close(1000, b"ok").encode(), [0x88, 0x04, 0x03, 0xE8, b'o', b'k']);
    assert_eq!(close_body(1005, b""), [0x03, 0xED]);
}

#[test]
fn violations_on_purpose() {
    // Non-minimal lengths, and a header that claims more than it carries.
    assert_eq!(Frame::binary(vec![1; 5]).form(Len::Ext16).encode()[..4], [0x82, 126, 0, 5]);
    assert_eq!(Frame::binary(vec![1; 5]).form(Len::Ext64).encode().len(), 2 + 8 + 5);
    let mut lying = vec![0x82, 127];
    lying.extend(0x8000_0000_0000_0400u64.to_be_bytes());
    assert_eq!(Frame::binary([]).claim(0x8000_0000_0000_0400).encode(), lying);
    // A reserved opcode, a fragmented ping.
    assert_eq!(Frame::new(0x3, "").encode(), [0x83, 0x00]);
    assert_eq!(Frame::ping("").fin(false).encode(), [0x09, 0x00]);
}

#[test]
fn accept_is_rfcs_example() {
    assert_eq!(accept(RFC_KEY), RFC_ACCEPT);
    assert_eq!(accept("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_ne!(accept_without_guid(RFC_KEY), RFC_ACCEPT);
    assert_eq!(accept(RFC_KEY), crate::engine::handshake::accept_for(RFC_KEY));
}

#[test]
fn heads() {
    let req = Head::upgrade_request("/chat", "server.example.com", RFC_KEY).encode();
    assert_eq!(
        req,
        b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let resp = Head::switching_protocols(RFC_KEY)
        .set("connection", "upgrade")
        .remove("UPGRADE")
        .insert_before("Sec-WebSocket-Accept", "Sec-WebSocket-Protocol", "chat")
        .raw("X-A: 1\r\n")
        .encode();
    assert_eq!(
        resp,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nSec-WebSocket-Protocol: chat\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nX-A: 1\r\n\r\n"
    );
    assert_eq!(
        Head::status(404, "Not Found").set("Content-Length", "0").encode(),
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(head_len(&resp), resp.len());
}

#[test]
fn tcp_keeps_sequence_numbers_in_step() {
    let mut tcp = Tcp::new("10.0.0.1:40000".parse().unwrap(), "10.0.0.2:8001".parse().unwrap(), 1000, u32::MAX);
    let mut segs = Vec::new();
    let mut keep = |s: &Segment<'_>| segs.push((s.dir, s.seq, s.ack, s.flags.syn, s.flags.ack, s.data.to_vec()));
    tcp.open(&mut keep);
    tcp.exchange(b"GET / HTTP/1.1\r\n\r\nabcdef", b"HTTP/1.1 101 x\r\n\r\nxyz", 4, &mut keep);
    let (c, s) = (Direction::ToServer, Direction::ToClient);
    assert_eq!(segs[0], (c, 1000, 0, true, false, vec![]));
    assert_eq!(segs[1], (s, u32::MAX, 1001, true, true, vec![]));
    assert_eq!(segs[2], (c, 1001, 0, false, true, b"GET / HTTP/1.1\r\n\r\n".to_vec()));
    assert_eq!(segs[3], (s, 0, 1019, false, true, b"HTTP".to_vec()));
    assert_eq!(segs[4], (c, 1019, 4, false, true, b"abcd".to_vec()));
    let client: Vec<u8> = segs.iter().filter(|x| x.0 == c).flat_map(|x| x.5.clone()).collect();
    let server: Vec<u8> = segs.iter().filter(|x| x.0 == s).flat_map(|x| x.5.clone()).collect();
    assert_eq!(
        (client.as_slice(), server.as_slice()),
        (&b"GET / HTTP/1.1\r\n\r\nabcdef"[..], &b"HTTP/1.1 101 x\r\n\r\nxyz"[..])
    );
    assert_eq!(tcp.next_seq(c), 1001 + 24);
}
