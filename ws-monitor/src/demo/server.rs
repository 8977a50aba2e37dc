//! The echo server.

use super::*;

/// Accepts connections until the demo stops; `serve` makes the task for each one.
pub(super) async fn accept_loop<F>(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    mut serve: impl FnMut(TcpStream, SocketAddr) -> F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = ctx.stop.wait() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(serve(stream, peer));
                }
                Err(_) => {
                    if !ctx.stop.sleep(ACCEPT_BACKOFF).await {
                        break;
                    }
                }
            },
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// The echo server: each connection served by its own task.
pub(super) async fn run_server(ctx: Arc<Ctx>, listener: TcpListener) {
    let c = Arc::clone(&ctx);
    accept_loop(ctx, listener, move |stream, peer| {
        Stats::bump(&c.stats.server_accepts);
        echo(Arc::clone(&c), stream, peer)
    })
    .await;
}

/// One server-side WebSocket connection: echoes data messages until it ends.
pub(super) async fn echo(ctx: Arc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let stream = Tapped::new(stream, ctx.tap.as_ref(), FlowKey { client: peer, server: local }, Direction::ToClient);
    let mut ws = match timeout(HANDSHAKE_TIMEOUT, tokio_tungstenite::accept_async(stream)).await {
        Ok(Ok(ws)) => ws,
        _ => return Stats::bump(&ctx.stats.peer_errors),
    };
    while let Ok(Some(msg)) = timeout(IDLE_TIMEOUT, ws.next()).await {
        match msg {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                if ws.send(m).await.is_err() {
                    return Stats::bump(&ctx.stats.peer_errors);
                }
            }
            // tungstenite answers pings and close frames itself.
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return,
            Err(_) => return Stats::bump(&ctx.stats.peer_errors),
        }
    }
}
