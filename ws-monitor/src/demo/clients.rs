//! The clients: sessions of mixed messages, direct or through the proxy.

use super::*;

/// Where a client connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    Direct,
    Proxied,
}

impl Route {
    pub(super) fn name(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Proxied => "proxied",
        }
    }
}

/// Sessions one after another, from `go` until the demo stops.
pub(super) async fn client(ctx: Arc<Ctx>, index: usize, route: Route, mut go: watch::Receiver<bool>, mut rng: Rng) {
    let started = ctx.stop.guard(async { go.wait_for(|g| *g).await.is_ok() }).await;
    if started != Some(true) {
        return;
    }
    loop {
        match ctx.stop.guard(session(&ctx, index, route, &mut rng)).await {
            None => return,
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::trace!(index, route = route.name(), error = %e, "demo client session ended");
                Stats::bump(&ctx.stats.peer_errors);
            }
        }
        if !ctx.stop.sleep(rng.millis(ctx.timing.pause)).await {
            return;
        }
    }
}

/// One WebSocket session: a few messages, each awaiting its echo (or pong), then a
/// close with 1000.
pub(super) async fn session(ctx: &Ctx, index: usize, route: Route, rng: &mut Rng) -> anyhow::Result<()> {
    let addr = match route {
        Route::Direct => ctx.server,
        Route::Proxied => ctx.proxy,
    };
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await??;
    stream.set_nodelay(true)?;
    let key = FlowKey { client: stream.local_addr()?, server: addr };
    let stream = Tapped::new(stream, ctx.tap.as_ref(), key, Direction::ToServer);
    let url = format!("ws://{addr}/{}/{index}", route.name());
    let (mut ws, _) = timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::client_async(url, stream)).await??;
    Stats::bump(match route {
        Route::Direct => &ctx.stats.direct_sessions,
        Route::Proxied => &ctx.stats.proxied_sessions,
    });
    tokio::time::sleep(rng.millis(ctx.timing.first)).await;
    let count = rng.range(ctx.timing.messages);
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(rng.millis(ctx.timing.interval)).await;
        }
        let msg = sample_message(i, rng);
        let ping = matches!(msg, Message::Ping(_));
        ws.send(msg).await?;
        timeout(REPLY_TIMEOUT, await_reply(&mut ws, ping)).await??;
    }
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await?;
    // The server answers the close and closes the TCP connection first.
    let _ = timeout(CLOSE_TIMEOUT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    Ok(())
}

/// Reads until the echo of a data message (or the pong of a ping) arrives.
pub(super) async fn await_reply<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    ping: bool,
) -> anyhow::Result<()> {
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Pong(_) if ping => return Ok(()),
            Message::Text(_) | Message::Binary(_) if !ping => return Ok(()),
            Message::Close(_) => anyhow::bail!("closed by the peer"),
            _ => {}
        }
    }
    anyhow::bail!("connection ended")
}

/// Texts with multi-byte UTF-8 (2, 3 and 4-byte sequences).
pub(super) const TEXTS: [&str; 6] =
    ["héllo wörld", "Grüße aus Köln ✓", "日本語のテキスト", "emoji 🚀🎉 ok", "Ελληνικά и русский", "naïve café — 1 €"];

/// The `i`-th message of a session: text, binary, ping, and sometimes a longer text
/// (16-bit length form).
pub(super) fn sample_message(i: u64, rng: &mut Rng) -> Message {
    let text = TEXTS.get((rng.next_u64() % TEXTS.len() as u64) as usize).copied().unwrap_or("hello");
    match i % 4 {
        0 => Message::text(text),
        1 => {
            let len = rng.range((1, 64));
            Message::binary((0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>())
        }
        2 => Message::Ping(format!("ping {i}").into_bytes().into()),
        _ if rng.next_u64().is_multiple_of(3) => {
            let times = rng.range((8, 16)) as usize;
            Message::text(vec![text; times].join(" · "))
        }
        _ => Message::text(text),
    }
}
