//! A connection's start: HTTP exchanges until an upgrade switches both directions to
//! frames, or the bytes turn out not to be WebSocket (TLS, not HTTP), or the handshake
//! cannot be followed.

use super::*;

/// Drops the handshake: the connection is not WebSocket.
pub(super) fn not_websocket(hs: &mut Hs, dirs: &mut [DirState; 2]) {
    *hs = Hs::Done;
    for d in dirs.iter_mut() {
        d.ignore();
    }
}

/// The handshake cannot be followed (bytes lost): look for frames in both directions.
pub(super) fn handshake_lost(hs: &mut Hs, dirs: &mut [DirState; 2], cx: &mut Cx<'_>, cfg: &EngineConfig) {
    // If the request was read and offered no extension, none can be in force.
    let policy = match hs {
        Hs::AwaitResponse(req, _) if req.offers.is_empty() => RsvPolicy::Plain,
        _ => RsvPolicy::Unknown,
    };
    *hs = Hs::Done;
    for d in dirs.iter_mut() {
        if d.mode_kind() == ModeKind::Hold {
            let r = cfg.rules(d.dir, policy);
            d.start_scan(r, cx);
        }
    }
}

/// Whether `b` starts with a TLS handshake record header (`16 03 00..04`); `None` while
/// undecided.
pub(super) fn tls_record(b: &[u8]) -> Option<bool> {
    match b {
        [0x16] | [0x16, 0x03] => None,
        [0x16, 0x03, v, ..] => Some(*v <= 0x04),
        _ => Some(false),
    }
}

/// Looks for a complete head in `d.held`, remembering how far it searched:
/// `Some(true)` found, `Some(false)` not yet, `None` the head is too large.
pub(super) fn head_ready(d: &mut DirState) -> Option<bool> {
    match head_end(&d.held, d.head_scan) {
        Some(_) => Some(true),
        None => {
            d.head_scan = d.held.len();
            if d.held.len() >= HEAD_CAP {
                None
            } else {
                Some(false)
            }
        }
    }
}

/// What became of a direction's held bytes when looking for the next head.
pub(super) enum NextHead<T> {
    /// Wait for more bytes.
    Wait,
    /// The handshake is over (not HTTP, too large): already dealt with.
    Stop,
    /// A complete head of this many bytes.
    Head(usize, T),
}

/// Finds the next head in `d.held` (parsed by `parse`); a head too large is reported as
/// [`Kind::HandshakeTooLarge`] by `dir` and the handshake is given up as lost, bytes
/// that are not HTTP end it as not WebSocket.
pub(super) fn next_head<T>(
    hs: &mut Hs,
    dirs: &mut [DirState; 2],
    dir: Direction,
    cx: &mut Cx<'_>,
    cfg: &EngineConfig,
    parse: impl Fn(&[u8]) -> Head<T>,
) -> NextHead<T> {
    let Some(d) = dirs.get_mut(dir.index()) else {
        return NextHead::Stop;
    };
    if d.body_bad {
        cx.stats.not_http += 1;
        not_websocket(hs, dirs);
        return NextHead::Stop;
    }
    if d.held.is_empty() || d.body.active() {
        return NextHead::Wait;
    }
    let head = match head_ready(d) {
        None => Head::TooLarge,
        Some(false) => return NextHead::Wait,
        Some(true) => parse(&d.held),
    };
    match head {
        Head::Partial => {
            d.head_scan = d.held.len();
            NextHead::Wait
        }
        Head::Complete(n, t) => NextHead::Head(n, t),
        Head::Invalid => {
            cx.stats.not_http += 1;
            not_websocket(hs, dirs);
            NextHead::Stop
        }
        Head::TooLarge => {
            cx.emit_with(dir, Kind::HandshakeTooLarge, d.held_base, FrameHeaderBytes::EMPTY, &d.held);
            handshake_lost(hs, dirs, cx, cfg);
            NextHead::Stop
        }
    }
}

/// Advances the handshake as far as the held bytes allow: HTTP exchanges one after the
/// other (bodies passed over, interim responses skipped) until a 101 switches to frames.
pub(super) fn advance(hs: &mut Hs, dirs: &mut [DirState; 2], cx: &mut Cx<'_>, cfg: &EngineConfig) {
    loop {
        match hs {
            Hs::Done => return,
            Hs::AwaitRequest | Hs::NextRequest => {
                let [c, s] = &mut *dirs;
                if s.body_bad {
                    cx.stats.not_http += 1;
                    return not_websocket(hs, dirs);
                }
                if s.body.active() || c.held.is_empty() {
                    return;
                }
                if c.held_base == 0 {
                    match tls_record(&c.held) {
                        None => return,
                        Some(true) => {
                            cx.emit_with(
                                Direction::ToServer,
                                Kind::TlsOnPlainPort,
                                c.held_base,
                                FrameHeaderBytes::EMPTY,
                                &c.held,
                            );
                            return not_websocket(hs, dirs);
                        }
                        Some(false) => {}
                    }
                }
                let (n, req) = match next_head(hs, dirs, Direction::ToServer, cx, cfg, parse_request) {
                    NextHead::Wait | NextHead::Stop => return,
                    NextHead::Head(n, req) => (n, req),
                };
                let [c, s] = &mut *dirs;
                let at = c.held_base;
                if req.body == Framing::Invalid {
                    cx.stats.not_http += 1;
                    return not_websocket(hs, dirs);
                }
                if req.upgrade {
                    if req.bad {
                        cx.emit_with(Direction::ToServer, Kind::BadHandshake, at, FrameHeaderBytes::EMPTY, &c.held);
                    }
                } else {
                    if req.intent {
                        cx.emit_with(Direction::ToServer, Kind::UpgradeMissing, at, FrameHeaderBytes::EMPTY, &c.held);
                    } else {
                        *cx.stats.http_requests.entry(cx.key.server.port()).or_insert(0) += 1;
                    }
                }
                if req.intent {
                    cx.view.handshake =
                        Some(Box::new(HandshakeSeen { request: req.seen.clone(), ..HandshakeSeen::default() }));
                }
                c.consume_head(n, req.body);
                // Server bytes already here: the response began before the client's bytes
                // after the request could have been sent early.
                let early = if s.held.is_empty() { Early::Open } else { Early::Closed(0) };
                *hs = Hs::AwaitResponse(Box::new(req), early);
            }
            Hs::AwaitResponse(..) => {
                let (n, resp) = match next_head(hs, dirs, Direction::ToClient, cx, cfg, parse_response) {
                    NextHead::Wait | NextHead::Stop => return,
                    NextHead::Head(n, resp) => (n, resp),
                };
                let Hs::AwaitResponse(req, _) = hs else {
                    return;
                };
                let [_, s] = &mut *dirs;
                let at = s.held_base;
                let head = Excerpt::new(&s.held);
                let body = resp.body_after(req);
                if let Some(seen) = cx
                    .view
                    .handshake
                    .as_deref_mut()
                    .filter(|_| req.intent && (resp.status == 101 || resp.status >= 200))
                {
                    seen.status = Some(resp.status);
                    seen.accepted_protocol = resp.protocols.first().map(|p| p.as_str().into());
                    seen.accepted_extensions = resp.extensions_seen.clone();
                    seen.response_upgrade = resp.upgrade;
                }
                if resp.status == 101 && req.intent {
                    s.consume_head(n, Framing::Empty);
                    return upgraded(hs, dirs, cx, cfg, at, &resp, head);
                }
                if (100..200).contains(&resp.status) && resp.status != 101 {
                    // Interim response (100 Continue, 103 Early Hints): the final one follows.
                    s.consume_head(n, Framing::Empty);
                    continue;
                }
                if req.upgrade && resp.status != 101 {
                    early_bytes(hs, dirs, cx);
                    cx.emit_with(
                        Direction::ToClient,
                        Kind::HandshakeRejected,
                        at,
                        FrameHeaderBytes::EMPTY,
                        head.as_slice(),
                    );
                }
                if resp.status == 101 || matches!(body, Framing::UntilClose | Framing::Invalid) {
                    // Another protocol, a tunnel, or a body that runs to the end.
                    return not_websocket(hs, dirs);
                }
                let [_, s] = &mut *dirs;
                s.consume_head(n, body);
                *hs = Hs::NextRequest;
            }
        }
    }
}

/// RFC 6455 §4.1: the client sends nothing after its upgrade request until the 101.
/// Called when the response comes (or the connection ends without one): client bytes
/// held from before the response began were sent too early. After a 101 they are still
/// parsed as frames.
pub(super) fn early_bytes(hs: &Hs, dirs: &[DirState; 2], cx: &mut Cx<'_>) {
    let [c, _] = dirs;
    let Hs::AwaitResponse(req, early) = hs else {
        return;
    };
    let n = match early {
        Early::Open => c.held.len(),
        Early::Closed(n) => (*n).min(c.held.len()),
    };
    if req.upgrade && n > 0 {
        let bytes = c.held.get(..n).unwrap_or(&[]);
        cx.emit_with(Direction::ToServer, Kind::FrameBeforeUpgrade, c.held_base, FrameHeaderBytes::EMPTY, bytes);
    }
}

/// Server bytes arrive: if they begin the response to an upgrade request, the client
/// bytes held by now are the ones that came before it.
pub(super) fn response_begins(hs: &mut Hs, dirs: &[DirState; 2]) {
    if let Hs::AwaitResponse(_, early @ Early::Open) = hs {
        let [c, _] = dirs;
        *early = Early::Closed(c.held.len());
    }
}

/// A 101 answered a WebSocket request: judge it and switch both directions to frames.
pub(super) fn upgraded(
    hs: &mut Hs,
    dirs: &mut [DirState; 2],
    cx: &mut Cx<'_>,
    cfg: &EngineConfig,
    at: u64,
    resp: &Response,
    head: Excerpt,
) {
    let Hs::AwaitResponse(req, _) = hs else {
        return;
    };
    let verdict = judge_101(req, resp);
    for k in verdict.kinds.iter() {
        cx.emit_with(Direction::ToClient, k, at, FrameHeaderBytes::EMPTY, head.as_slice());
    }
    if verdict.kinds.is_empty() {
        cx.stats.upgrades_ok += 1;
    }
    let neg = verdict.negotiated;
    let policy = if neg.unknown_extension {
        RsvPolicy::Unknown
    } else if neg.deflate.is_some() {
        RsvPolicy::Deflate
    } else {
        RsvPolicy::Plain
    };
    cx.view.deflate = neg.deflate.is_some();
    cx.view.subprotocol = neg.subprotocol.clone();
    early_bytes(hs, dirs, cx);
    *hs = Hs::Done;
    for d in dirs.iter_mut() {
        let reset = neg.deflate.map(|p| match d.dir {
            Direction::ToServer => p.client_no_context_takeover,
            Direction::ToClient => p.server_no_context_takeover,
        });
        d.start_frames(cfg.rules(d.dir, policy), reset, cx);
    }
}
