//! The misbehaving proxy: the fault schedule, and the relay that commits one fault per connection.

use super::*;

/// One fault per proxied connection; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    Rsv1Data,
    StripUpgrade,
    Unmask,
    ReservedOpcode,
    WrongAccept,
    BadUtf8,
    PingTooLong,
    NonMinimal,
    MaskServer,
    Close1005,
    OrphanCont,
    TlsHello,
    PingFragmented,
    Rsv2Data,
    No101Upgrade,
    Interleaved,
    CloseOneByte,
    Rsv1Ping,
    ExtraExtension,
    CloseThenData,
    CloseBadReason,
    Oversized,
    HttpToServer,
    LengthMsb,
    HttpToClient,
    EarlyFrame,
    ManyHeaders,
}

/// The rotating schedule: connection `n` to the proxy gets `SCHEDULE[(start + n) % len]`.
pub(super) const SCHEDULE: [Fault; 27] = [
    Fault::Rsv1Data,
    Fault::StripUpgrade,
    Fault::Unmask,
    Fault::ReservedOpcode,
    Fault::WrongAccept,
    Fault::BadUtf8,
    Fault::PingTooLong,
    Fault::NonMinimal,
    Fault::MaskServer,
    Fault::Close1005,
    Fault::OrphanCont,
    Fault::TlsHello,
    Fault::PingFragmented,
    Fault::Rsv2Data,
    Fault::No101Upgrade,
    Fault::Interleaved,
    Fault::CloseOneByte,
    Fault::Rsv1Ping,
    Fault::ExtraExtension,
    Fault::CloseThenData,
    Fault::CloseBadReason,
    Fault::Oversized,
    Fault::HttpToServer,
    Fault::LengthMsb,
    Fault::HttpToClient,
    Fault::EarlyFrame,
    Fault::ManyHeaders,
];

/// Where a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// The upgrade request on its way to the server.
    Request,
    /// The server's response on its way to the client.
    Response,
    /// The first data frame travelling this way.
    Frames(Direction),
}

/// A TLS handshake record (a truncated ClientHello).
pub(super) const TLS_HELLO: [u8; 9] = [0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00];

/// What the proxy answers when the upstream server closed without a response.
pub(super) const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// What a frame fault writes instead of the first data frame, and whether the
/// direction ends there (its framing is lost).
pub(super) struct Strike {
    pub(super) outs: Vec<Out>,
    pub(super) last: bool,
}

impl Fault {
    pub(super) fn stage(self) -> Stage {
        match self {
            Fault::StripUpgrade | Fault::TlsHello | Fault::EarlyFrame | Fault::ManyHeaders => Stage::Request,
            Fault::WrongAccept | Fault::No101Upgrade | Fault::ExtraExtension => Stage::Response,
            Fault::Unmask | Fault::NonMinimal | Fault::Rsv2Data | Fault::HttpToServer => {
                Stage::Frames(Direction::ToServer)
            }
            _ => Stage::Frames(Direction::ToClient),
        }
    }

    /// The request as forwarded upstream.
    pub(super) fn request(self, head: &[u8]) -> Out {
        match self {
            Fault::StripUpgrade => {
                Out::raw(edit_head(head, &["upgrade", "connection"], None, None), &[Kind::UpgradeMissing], None)
            }
            Fault::TlsHello => Out::raw(TLS_HELLO, &[Kind::TlsOnPlainPort], None),
            Fault::EarlyFrame => {
                let mut bytes = head.to_vec();
                // A legal ping, too early.
                let mut ping = Frame::ping("early");
                ping.header_mut().mask = Some([1, 2, 3, 4]);
                bytes.extend(Out::frame(ping, &[]).bytes);
                Out::raw(bytes, &[Kind::FrameBeforeUpgrade], None)
            }
            Fault::ManyHeaders => {
                let many: Vec<String> = (0..300).map(|i| format!("X-Filler-{i}: x")).collect();
                Out::raw(edit_head(head, &[], None, Some(&many.join("\r\n"))), &[Kind::HandshakeTooLarge], None)
            }
            _ => Out::raw(head, &[], None),
        }
    }

    /// The server's response as forwarded to the client.
    pub(super) fn response(self, head: &[u8], request: &[u8]) -> Out {
        if !is_101(head) {
            return Out::raw(head, &[], None);
        }
        match self {
            Fault::WrongAccept => {
                let wrong = format!("Sec-WebSocket-Accept: {}", accept_without_guid(request));
                Out::raw(
                    edit_head(head, &[], Some(("sec-websocket-accept", &wrong)), None),
                    &[Kind::AcceptMismatch],
                    None,
                )
            }
            Fault::No101Upgrade => {
                Out::raw(edit_head(head, &["upgrade", "connection"], None, None), &[Kind::BadHandshake], None)
            }
            Fault::ExtraExtension => Out::raw(
                edit_head(head, &[], None, Some("Sec-WebSocket-Extensions: permessage-deflate")),
                &[Kind::ExtensionNotOffered],
                None,
            ),
            _ => Out::raw(head, &[], None),
        }
    }

    /// Applies a frame fault to `frame`, the first data frame of its direction.
    pub(super) fn strike(self, frame: Frame, rng: &mut Rng) -> Strike {
        let before = |extra: Vec<Out>, frame: Frame| {
            let mut outs = extra;
            outs.push(Out::frame(frame, &[]));
            Strike { outs, last: false }
        };
        let instead = |out: Out| Strike { outs: vec![out], last: true };
        let changed =
            |frame: &kit::Frame, kinds: &'static [Kind]| Strike { outs: vec![Out::kit(frame, kinds)], last: false };
        let violating = |f: &kit::Frame, kinds: &'static [Kind]| Out::kit(f, kinds);
        let mut bad = to_kit(&frame);
        match self {
            Fault::Rsv1Data => {
                bad.rsv |= RSV1;
                changed(&bad, &[Kind::RsvWithoutExtension])
            }
            Fault::Rsv2Data => {
                bad.rsv |= RSV2;
                changed(&bad, &[Kind::RsvWithoutExtension])
            }
            Fault::MaskServer => changed(&bad.mask(rng.mask_key()), &[Kind::MaskedServerFrame]),
            Fault::Unmask => changed(&bad.unmasked(), &[Kind::UnmaskedClientFrame]),
            Fault::NonMinimal => {
                let form = if bad.payload.len() < 126 { Len::Ext16 } else { Len::Ext64 };
                changed(&bad.form(form), &[Kind::NonMinimalLength])
            }
            Fault::Rsv1Ping => {
                let ping = kit::Frame::ping("rsv1").rsv(RSV1);
                before(vec![violating(&ping, &[Kind::RsvWithoutExtension])], frame)
            }
            Fault::ReservedOpcode => {
                before(vec![violating(&kit::Frame::new(0x3, "opcode 3"), &[Kind::ReservedOpcode])], frame)
            }
            Fault::PingTooLong => {
                before(vec![violating(&kit::Frame::ping(vec![b'p'; 200]), &[Kind::ControlTooLong])], frame)
            }
            Fault::PingFragmented => {
                let ping = kit::Frame::ping("fragmented ping").fin(false);
                before(vec![violating(&ping, &[Kind::ControlFragmented])], frame)
            }
            Fault::OrphanCont => {
                before(vec![violating(&kit::Frame::continuation("orphan"), &[Kind::OrphanContinuation])], frame)
            }
            Fault::Interleaved => {
                // A legal first fragment, then a new message inside it.
                let open = Frame::message("first half, ", OpCode::Data(Data::Text), false);
                let next = kit::Frame::text("a new message");
                before(vec![Out::frame(open, &[]), violating(&next, &[Kind::InterleavedDataFrame])], frame)
            }
            Fault::BadUtf8 => {
                // Latin-1 "café au lait".
                let latin1 = kit::Frame::text(&b"caf\xe9 au lait"[..]);
                before(vec![violating(&latin1, &[Kind::InvalidUtf8Text])], frame)
            }
            Fault::CloseOneByte => {
                before(vec![violating(&kit::Frame::new(op::CLOSE, [0x03]), &[Kind::InvalidClosePayload])], frame)
            }
            Fault::Close1005 => {
                before(vec![violating(&kit::Frame::close(1005, b"no status"), &[Kind::InvalidCloseCode])], frame)
            }
            Fault::CloseBadReason => {
                // "bye ✓" cut inside the check mark.
                let cut = kit::Frame::close(1000, b"bye \xe2\x9c");
                before(vec![violating(&cut, &[Kind::InvalidCloseReason])], frame)
            }
            Fault::CloseThenData => {
                let close = Frame::close(Some(CloseFrame { code: CloseCode::Away, reason: "going away".into() }));
                before(vec![Out::frame(close, &[])], frame)
            }
            Fault::Oversized => instead(Out::raw(
                header_claiming(op::BINARY, OVERSIZED_CLAIM),
                &[Kind::OversizedFrame],
                Some(op::BINARY),
            )),
            Fault::LengthMsb => instead(Out::raw(
                header_claiming(op::BINARY, 0x8000_0000_0000_0400),
                &[Kind::LengthMsbSet],
                Some(op::BINARY),
            )),
            Fault::HttpToClient => {
                instead(Out::raw(&b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..], &[Kind::HttpInStream], None))
            }
            Fault::HttpToServer => {
                instead(Out::raw(&b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"[..], &[Kind::HttpInStream], None))
            }
            // Handshake faults never reach the frames.
            Fault::StripUpgrade
            | Fault::TlsHello
            | Fault::EarlyFrame
            | Fault::ManyHeaders
            | Fault::WrongAccept
            | Fault::No101Upgrade
            | Fault::ExtraExtension => before(Vec::new(), frame),
        }
    }
}

/// Whether an HTTP head is a `101` response.
pub(super) fn is_101(head: &[u8]) -> bool {
    http::response_status(head) == Some(101)
}

/// The value of header `name` in an HTTP head.
pub(super) fn header_value(head: &[u8], name: &str) -> Option<String> {
    let mut value = None;
    http::for_each_field(head, |n, v| {
        if value.is_none() && n.eq_ignore_ascii_case(name) {
            value = Some(String::from_utf8_lossy(v).trim().to_owned());
        }
    });
    value
}

/// An HTTP head with the headers named in `drop` removed, header `replace.0` replaced
/// by the line `replace.1`, and the line `add` appended.
pub(super) fn edit_head(head: &[u8], drop: &[&str], replace: Option<(&str, &str)>, add: Option<&str>) -> Vec<u8> {
    let start = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut out = start.strip_suffix(b"\r").unwrap_or(start).to_vec();
    http::for_each_field(head, |name, value| {
        if drop.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            return;
        }
        out.extend_from_slice(b"\r\n");
        match replace {
            Some((wanted, with)) if name.eq_ignore_ascii_case(wanted) => out.extend_from_slice(with.as_bytes()),
            _ => {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
            }
        }
    });
    if let Some(add) = add {
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(add.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// `base64(SHA-1(key))`: the accept value of a server that forgot the GUID.
pub(super) fn accept_without_guid(request: &[u8]) -> String {
    let key = header_value(request, "sec-websocket-key").unwrap_or_default();
    crate::testkit::handshake::accept_without_guid(&key)
}

/// The misbehaving proxy: each connection gets the next fault of the schedule.
pub(super) async fn run_proxy(ctx: Arc<Ctx>, listener: TcpListener, first: usize, mut rng: Rng) {
    let c = Arc::clone(&ctx);
    let mut next = first;
    accept_loop(ctx, listener, move |stream, peer| {
        Stats::bump(&c.stats.proxy_accepts);
        let fault = SCHEDULE.get(next % SCHEDULE.len()).copied().unwrap_or(Fault::Rsv1Data);
        next = next.wrapping_add(1);
        relay(Arc::clone(&c), stream, peer, fault, rng.fork())
    })
    .await;
}

/// One proxied connection.
pub(super) async fn relay(ctx: Arc<Ctx>, down: TcpStream, peer: SocketAddr, fault: Fault, rng: Rng) {
    tracing::trace!(%peer, ?fault, "demo proxy connection");
    match timeout(RELAY_LIFETIME, relay_inner(&ctx, down, peer, fault, rng)).await {
        Ok(Ok(())) => {}
        _ => Stats::bump(&ctx.stats.peer_errors),
    }
}

pub(super) async fn relay_inner(
    ctx: &Ctx,
    down: TcpStream,
    peer: SocketAddr,
    fault: Fault,
    mut rng: Rng,
) -> io::Result<()> {
    let local = down.local_addr()?;
    down.set_nodelay(true)?;
    let (down_rd, down_wr) = down.into_split();
    let mut from_client = Reader::new(down_rd);
    let mut to_client = Writer {
        w: Tapped::new(down_wr, ctx.tap.as_ref(), FlowKey { client: peer, server: local }, Direction::ToClient),
        dir: Direction::ToClient,
        closed: false,
        stats: Arc::clone(&ctx.stats),
    };
    let Some(request) = timeout(HANDSHAKE_TIMEOUT, from_client.head()).await.map_err(io::Error::other)?? else {
        return Ok(());
    };

    let up = timeout(CONNECT_TIMEOUT, TcpStream::connect(ctx.server)).await.map_err(io::Error::other)??;
    up.set_nodelay(true)?;
    let up_key = FlowKey { client: up.local_addr()?, server: ctx.server };
    let (up_rd, up_wr) = up.into_split();
    let mut from_server = Reader::new(up_rd);
    let mut to_server = Writer {
        w: Tapped::new(up_wr, ctx.tap.as_ref(), up_key, Direction::ToServer),
        dir: Direction::ToServer,
        closed: false,
        stats: Arc::clone(&ctx.stats),
    };

    to_server.send(fault.request(&request)).await?;
    let response = match timeout(HANDSHAKE_TIMEOUT, from_server.head()).await {
        Ok(Ok(Some(head))) => head,
        // The server hung up without answering: say so, as a gateway would.
        _ => return to_client.send(Out::raw(BAD_GATEWAY, &[Kind::HandshakeRejected], None)).await,
    };
    let upgraded = is_101(&response);
    to_client.send(fault.response(&response, &request)).await?;
    if !upgraded {
        return Ok(());
    }

    let target = match fault.stage() {
        Stage::Frames(dir) => Some(dir),
        Stage::Request | Stage::Response => None,
    };
    let mut up_rng = rng.fork();
    let (a, b) = tokio::join!(
        pump(&mut from_client, &mut to_server, (target == Some(Direction::ToServer)).then_some(fault), &mut up_rng),
        pump(&mut from_server, &mut to_client, (target == Some(Direction::ToClient)).then_some(fault), &mut rng),
    );
    a.and(b)
}

/// Relays frames one way until the source ends, applying `fault` to the first data
/// frame; then half-closes the destination.
pub(super) async fn pump<R, W>(
    from: &mut Reader<R>,
    to: &mut Writer<W>,
    fault: Option<Fault>,
    rng: &mut Rng,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut armed = fault;
    while let Some(frame) = from.frame().await? {
        let fault = match armed {
            Some(f) if is_message(&frame) => f,
            _ => {
                to.send(Out::frame(frame, &[])).await?;
                continue;
            }
        };
        armed = None;
        let strike = fault.strike(frame, rng);
        for out in strike.outs {
            to.send(out).await?;
        }
        if strike.last {
            break;
        }
    }
    to.w.shutdown().await
}
