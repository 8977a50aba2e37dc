//! The tap: the peers' writes as a capture would see them, fed to a monitor in the same process.

use super::*;

/// Hands every byte written on a tapped connection to a [`StreamSink`].
#[derive(Clone)]
pub(super) struct Tap(pub(super) Arc<Mutex<TapState>>);

pub(super) struct TapState {
    pub(super) sink: Box<dyn StreamSink + Send>,
    pub(super) flows: HashMap<FlowKey, TapFlow>,
    pub(super) next_id: u64,
    pub(super) t0: Instant,
}

/// One connection: both ends attach; it is closed when both have detached.
pub(super) struct TapFlow {
    pub(super) id: FlowId,
    pub(super) ends: u32,
    /// Bytes delivered so far, by [`Direction::index`].
    pub(super) sent: [u64; 2],
}

impl TapState {
    pub(super) fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Tap {
    pub(super) fn new(sink: Box<dyn StreamSink + Send>) -> Tap {
        Tap(Arc::new(Mutex::new(TapState { sink, flows: HashMap::new(), next_id: 1, t0: Instant::now() })))
    }

    pub(super) fn with<R>(&self, f: impl FnOnce(&mut TapState) -> R) -> R {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    pub(super) fn attach(&self, key: FlowKey) {
        self.with(|s| {
            let ts = s.now_ns();
            if let Some(f) = s.flows.get_mut(&key) {
                f.ends += 1;
                return;
            }
            let id = FlowId(s.next_id);
            s.next_id += 1;
            s.flows.insert(key, TapFlow { id, ends: 1, sent: [0; 2] });
            s.sink.open(id, &key, Opening::Handshake, ts);
        });
    }

    pub(super) fn data(&self, key: &FlowKey, dir: Direction, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.with(|s| {
            let ts = s.now_ns();
            let TapState { sink, flows, .. } = s;
            let Some(f) = flows.get_mut(key) else {
                return;
            };
            if let Some(offset) = f.sent.get_mut(dir.index()) {
                sink.data(f.id, dir, *offset, bytes, ts);
                *offset += bytes.len() as u64;
            }
        });
    }

    pub(super) fn detach(&self, key: &FlowKey) {
        self.with(|s| {
            let ts = s.now_ns();
            let Some(f) = s.flows.get_mut(key) else {
                return;
            };
            f.ends = f.ends.saturating_sub(1);
            if f.ends == 0 {
                let id = f.id;
                s.flows.remove(key);
                s.sink.close(id, Closing::Fin, ts);
            }
        });
    }
}

/// A stream (or write half) whose writes are reported to a [`Tap`] as bytes travelling
/// in `dir` on connection `key`.
pub(super) struct Tapped<S> {
    pub(super) inner: S,
    pub(super) tap: Option<(Tap, FlowKey, Direction)>,
}

impl<S> Tapped<S> {
    pub(super) fn new(inner: S, tap: Option<&Tap>, key: FlowKey, dir: Direction) -> Tapped<S> {
        let tap = tap.map(|t| {
            t.attach(key);
            (t.clone(), key, dir)
        });
        Tapped { inner, tap }
    }
}

impl<S> Drop for Tapped<S> {
    fn drop(&mut self) {
        if let Some((tap, key, _)) = &self.tap {
            tap.detach(key);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let res = Pin::new(&mut me.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some((tap, key, dir))) = (&res, &me.tap) {
            tap.data(key, *dir, buf.get(..*n).unwrap_or(buf));
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
