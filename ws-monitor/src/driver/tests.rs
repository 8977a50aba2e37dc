//! The live driver with fake I/O: a scripted source, a recording screen and a key
//! channel. Pause, quit, reset, log rate limiting and metrics, without root or a
//! terminal.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser as _;
use crossterm::event::{Event, KeyCode, KeyEvent};
use futures_util::Stream;
use ratatui::backend::{Backend, ClearType, TestBackend, WindowSize};
use ratatui::buffer::Cell;
use ratatui::layout::{Position, Size};
use tokio::sync::mpsc;
use ws_monitor_common::Counter;

use super::*;
use crate::cli::Cli;
use crate::flow::{Direction, Segment};
use crate::sources::capture::KernelCounters;
use crate::testkit::scenario::Tcp;
use crate::testkit::{Frame, Head, RFC_KEY};

/// A segment the script hands on, owned.
struct Owned {
    seg: Segment<'static>,
}

/// Segments the test pushes; the driver drains them at its next poll.
#[derive(Clone, Default)]
struct Script {
    queue: Rc<RefCell<VecDeque<Owned>>>,
    delivered: Rc<RefCell<u64>>,
    names: HashMap<u32, String>,
}

impl Script {
    /// Queues `conn`'s upgrade, then `violations` unmasked client frames (each a
    /// finding) and `legal` masked ones.
    fn connection(&self, port: u16, violations: usize, legal: usize) {
        let client = std::net::SocketAddr::from(([10, 0, 0, 1], port));
        let server = std::net::SocketAddr::from(([10, 0, 0, 2], 8001));
        let mut tcp = Tcp::new(client, server, 100, 900);
        let mut out = Vec::new();
        let mut keep = |s: &Segment<'_>| {
            // Leaked on purpose: a few hundred bytes per test keep Segment's borrow simple.
            let data: &'static [u8] = Box::leak(s.data.to_vec().into_boxed_slice());
            out.push(Owned { seg: Segment { data, ..*s } });
        };
        tcp.open(&mut keep);
        tcp.send(Direction::ToServer, &Head::upgrade_request("/", "x", RFC_KEY).encode(), &mut keep);
        tcp.send(Direction::ToClient, &Head::switching_protocols(RFC_KEY).encode(), &mut keep);
        for _ in 0..violations {
            tcp.send(Direction::ToServer, &Frame::text("hi").encode(), &mut keep);
        }
        for _ in 0..legal {
            tcp.send(Direction::ToServer, &Frame::text("hi").mask([1, 2, 3, 4]).encode(), &mut keep);
        }
        self.queue.borrow_mut().extend(out);
    }

    fn more(&self) -> bool {
        !self.queue.borrow().is_empty()
    }
}

impl Source for Script {
    async fn readable(&mut self) -> io::Result<()> {
        // Drained at the driver's polls.
        std::future::pending().await
    }

    fn drain(&mut self, max: usize, mut f: impl FnMut(Delivery<'_>)) -> bool {
        for _ in 0..max {
            let Some(o) = self.queue.borrow_mut().pop_front() else { return false };
            *self.delivered.borrow_mut() += 1;
            f(Delivery::Segment(o.seg));
        }
        true
    }

    fn capacity(&self) -> usize {
        1 << 16
    }

    fn steer(&mut self, _hint: &crate::engine::Hint, _seq: Option<u32>) {}

    fn watch(&mut self) -> Vec<LinkEvent> {
        Vec::new()
    }

    fn interface_names(&self) -> &HashMap<u32, String> {
        &self.names
    }

    fn counters(&self) -> anyhow::Result<KernelCounters> {
        let mut k = KernelCounters::default();
        if let Some(n) = k.0.get_mut(Counter::PacketsMatched as usize) {
            *n = *self.delivered.borrow();
        }
        Ok(k)
    }

    fn report(&mut self, _counters: &KernelCounters) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("source".into(), "script".into());
        m
    }
}

/// Milliseconds since the test began, on the capture's clock.
struct TestClock(std::time::Instant);

impl Clock for TestClock {
    fn now_ns(&self) -> u64 {
        1_000_000_000 + self.0.elapsed().as_nanos() as u64
    }

    fn epoch_offset_ns(&self) -> i128 {
        0
    }
}

/// A `TestBackend` that keeps its screen as text after every flush, where the test can
/// read it while the driver owns the backend.
struct Recorder {
    inner: TestBackend,
    screen: Rc<RefCell<String>>,
}

impl Backend for Recorder {
    fn draw<'a, I: Iterator<Item = (u16, u16, &'a Cell)>>(&mut self, content: I) -> io::Result<()> {
        self.inner.draw(content)
    }
    fn hide_cursor(&mut self) -> io::Result<()> {
        self.inner.hide_cursor()
    }
    fn show_cursor(&mut self) -> io::Result<()> {
        self.inner.show_cursor()
    }
    fn get_cursor_position(&mut self) -> io::Result<Position> {
        self.inner.get_cursor_position()
    }
    fn set_cursor_position<P: Into<Position>>(&mut self, position: P) -> io::Result<()> {
        self.inner.set_cursor_position(position)
    }
    fn clear(&mut self) -> io::Result<()> {
        self.inner.clear()
    }
    fn clear_region(&mut self, clear_type: ClearType) -> io::Result<()> {
        self.inner.clear_region(clear_type)
    }
    fn size(&self) -> io::Result<Size> {
        self.inner.size()
    }
    fn window_size(&mut self) -> io::Result<WindowSize> {
        self.inner.window_size()
    }
    fn flush(&mut self) -> io::Result<()> {
        let b = self.inner.buffer();
        let width = usize::from(b.area.width.max(1));
        let text: Vec<String> =
            b.content.chunks(width).map(|row| row.iter().map(Cell::symbol).collect::<String>()).collect();
        *self.screen.borrow_mut() = text.join("\n");
        self.inner.flush()
    }
}

type Keys = std::pin::Pin<Box<dyn Stream<Item = io::Result<Event>>>>;

/// The dashboard as the test sees it: what was drawn last, and a keyboard.
struct Tty {
    text: Rc<RefCell<String>>,
    keys: mpsc::UnboundedSender<Event>,
}

impl Tty {
    /// Waits (up to 5 s) until the screen shows `what`.
    async fn shows(&self, what: &str) {
        until(what, || self.text.borrow().contains(what)).await;
    }

    fn shown(&self) -> String {
        self.text.borrow().clone()
    }

    fn press(&self, c: char) {
        self.keys.send(key(c)).expect("the driver reads keys");
    }
}

/// A screen whose draws and keys the returned [`Tty`] sees and types.
fn screen() -> (Screen<Recorder, Keys>, Tty) {
    let text = Rc::new(RefCell::new(String::new()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let keys: Keys = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|e| e.map(Ok))));
    let backend = Recorder { inner: TestBackend::new(140, 40), screen: text.clone() };
    (Screen::new(backend, keys).expect("a test screen"), Tty { text, keys: tx })
}

fn key(c: char) -> Event {
    Event::Key(KeyEvent::from(KeyCode::Char(c)))
}

fn run_args(extra: &[&str]) -> RunArgs {
    let mut args =
        vec!["ws-monitor", "--iface", "lo", "--port", "8001", "--json", "--workers", "1", "--duration", "30"];
    args.extend(extra);
    Cli::try_parse_from(args).expect("test arguments parse").run
}

/// Waits (up to 5 s) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Unmasked client frames in the report.
fn violations(report: &Option<Value>) -> u64 {
    report.as_ref().and_then(|r| r["violations"]["unmasked_client_frame"].as_u64()).expect("the report counts them")
}

/// Runs the driver on `script` with `screen` and `outputs` while `act` plays.
async fn drive<F: Future<Output = ()>>(
    script: &Script,
    screen: Option<Screen<Recorder, Keys>>,
    outputs: Outputs,
    args: &RunArgs,
    act: F,
) -> (Ended, Duration) {
    let started = std::time::Instant::now();
    let pipeline = Setup::new(args, false, false).and_then(|s| s.start()).expect("the pipeline starts");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let io = LiveIo {
        source: script.clone(),
        clock: TestClock(started),
        screen,
        stop: async move {
            let _ = stop_rx.await;
        },
        outputs,
    };
    let watched = Watched { label: "lo", ports: &[8001] };
    let run = live(io, pipeline, args, watched, |out| {
        out.insert("extra".into(), true.into());
    });
    let act = async move {
        act.await;
        // Without a key the run ends on the stop signal, as on Ctrl-C.
        let _ = stop_tx.send(());
        std::future::pending::<()>().await
    };
    let ended = tokio::select! {
        ended = run => ended,
        () = act => unreachable!("the act never ends by itself"),
    };
    (ended.expect("the live run ends cleanly"), started.elapsed())
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
}

/// Runs the driver with the dashboard on `screen` while `act` plays.
fn on_dashboard<F: Future<Output = ()>>(script: &Script, screen: Screen<Recorder, Keys>, act: F) -> (Ended, Duration) {
    tokio_rt().block_on(drive(script, Some(screen), Outputs::default(), &run_args(&[]), act))
}

#[test]
fn q_ends_a_live_run_and_its_report_counts_everything() {
    let (script, (screen, tty)) = (Script::default(), screen());
    let (ended, took) = on_dashboard(&script, screen, async {
        script.connection(40001, 3, 2);
        tty.shows("● 3 violations").await;
        tty.press('q');
        // The driver must end on the key alone: no stop signal comes until it has.
        std::future::pending::<()>().await;
    });
    assert_eq!(ended.stop, Stop::Asked);
    assert!(took < Duration::from_secs(20), "ended by q, not by --duration: {took:?}");
    assert_eq!(violations(&ended.report), 3);
    let report = ended.report.as_ref().expect("--json");
    assert_eq!(report["source"], "script", "the source's part of the report");
    assert_eq!(report["extra"], true, "the caller's part of the report");
    assert_eq!(report["connections"], 1);
}

#[test]
fn space_freezes_the_dashboard_while_counting_goes_on() {
    let (script, (screen, tty)) = (Script::default(), screen());
    let (ended, _) = on_dashboard(&script, screen, async {
        script.connection(40001, 3, 0);
        tty.shows("● 3 violations").await;
        tty.press(' ');
        tty.shows("PAUSED").await;
        script.connection(40002, 2, 0);
        until("the second connection is read", || !script.more()).await;
        // Two ticks at least: a live view would have moved on.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(tty.shown().contains("● 3 violations"), "frozen while paused:\n{}", tty.shown());
        tty.press(' ');
        tty.shows("● 5 violations").await;
    });
    assert_eq!(violations(&ended.report), 5);
}

#[test]
fn r_resets_what_the_dashboard_counts_but_not_the_report() {
    let (script, (screen, tty)) = (Script::default(), screen());
    let (ended, _) = on_dashboard(&script, screen, async {
        script.connection(40001, 3, 0);
        tty.shows("● 3 violations").await;
        tty.press('r');
        tty.shows("s ago").await;
        assert!(!tty.shown().contains("● 3 violations"), "counts start again:\n{}", tty.shown());
        script.connection(40002, 1, 0);
        tty.shows("● 1 violation ").await;
    });
    assert_eq!(violations(&ended.report), 4, "the report counts the whole run");
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        self.0.lock().map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default()
    }
}

#[test]
fn headless_log_lines_are_limited_per_kind_and_the_rest_counted() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let script = Script::default();
    let args = run_args(&["--no-tui", "--log-interval", "60"]);
    let outputs = Outputs::new(&args, 0, true).expect("outputs");
    let (ended, _) = tokio_rt().block_on(drive(&script, None, outputs, &args, async {
        script.connection(40001, 12, 0);
        until("everything read", || !script.more()).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }));
    assert_eq!(violations(&ended.report), 12);
    let text = lines.text();
    let logged = text.lines().filter(|l| l.contains("is not masked (from the client)")).count();
    assert_eq!(logged, crate::outputs::logs::FINDINGS_PER_INTERVAL as usize, "{text}");
    assert!(text.contains("unmasked_client_frame: 7 more findings not logged"), "{text}");
    assert!(text.contains("summary: 1 connections, 1 upgrades, 12 violations"), "{text}");
}

#[test]
fn metrics_follow_the_totals_while_the_run_goes_on() {
    let script = Script::default();
    let args = run_args(&["--no-tui"]);
    let mut outputs = Outputs::default();
    let exporter = crate::outputs::metrics::Exporter::bind("127.0.0.1:0".parse().expect("an address"))
        .expect("the exporter binds");
    let addr = exporter.local_addr().expect("bound");
    outputs.metrics = Some(exporter);
    let scrape = move || -> String {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = std::net::TcpStream::connect(addr) else { return String::new() };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body
    };
    let (ended, _) = tokio_rt().block_on(drive(&script, None, outputs, &args, async {
        script.connection(40001, 3, 2);
        let want = "ws_monitor_violations_total{kind=\"unmasked_client_frame\",direction=\"client\"} 3";
        let mut body = String::new();
        for _ in 0..100 {
            // Scraped from another thread: the driver's runtime must go on meanwhile.
            body = tokio::task::spawn_blocking(scrape).await.unwrap_or_default();
            if body.contains(want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(body.contains(want), "{body}");
        assert!(body.contains("ws_monitor_connections_total 1"), "{body}");
    }));
    assert_eq!(violations(&ended.report), 3);
}
