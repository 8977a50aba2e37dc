//! Feeds arbitrary bytes to the HTTP side of the engine: request and response heads
//! (parsing, extension and subprotocol lists, the 101 verdict, body framing), and the
//! body skipper (Content-Length, chunked). None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ws_monitor::engine::handshake::{head_end, judge_101, parse_extensions, parse_request, parse_response, Head};
use ws_monitor::engine::http::Skip;

fuzz_target!(|input: &[u8]| {
    // The input holds a request head, then a response head, then a body.
    let split = head_end(input, 0).unwrap_or(input.len());
    let (req_bytes, rest) = input.split_at(split);
    let split = head_end(rest, 0).unwrap_or(rest.len());
    let (resp_bytes, body) = rest.split_at(split);
    let request = parse_request(req_bytes);
    let response = parse_response(resp_bytes);
    if let Ok(text) = std::str::from_utf8(req_bytes) {
        let _ = parse_extensions(text);
    }
    if let (Head::Complete(_, req), Head::Complete(_, resp)) = (&request, &response) {
        let _ = judge_101(req, resp);
        let mut skip = Skip::start(resp.body_after(req));
        let mut at = 0;
        // In pieces of up to 7 bytes, as TCP might cut it.
        while at < body.len() && skip.active() {
            let end = (at + 1 + body[at] as usize % 7).min(body.len());
            match skip.skip(&body[at..end]) {
                Ok(n) => at += n.max(1),
                Err(_) => break,
            }
        }
        let _ = skip.lose(3);
    }
});
