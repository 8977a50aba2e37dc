//! The live terminal dashboard.
//!
//! [`Dashboard`] is pure state plus rendering: the live loop feeds it ticks
//! ([`Dashboard::on_tick`], about once a second, with cumulative capture counters, the
//! engine's totals and its connections), findings ([`Dashboard::on_finding`]) and keys
//! ([`Dashboard::on_key`]), and draws it with [`Dashboard::render`] into any ratatui
//! frame (a real terminal or a `TestBackend`, through a [`Screen`]).
//!
//! What it shows:
//! * a header: interface, ports, uptime, capture health (packets/s, bytes/s, coverage,
//!   ring drops, gaps) and engine totals;
//! * violations by kind, both directions, rate over the last 10 s and a sparkline of the
//!   last 5 minutes, most recently active first; the selected kind's meaning and likely
//!   cause beneath;
//! * connections: 4-tuple, state, frames each way, violations, last close code
//!   (connections that left the engine stay visible as `closed` for 60 s);
//! * recent findings: time, connection, kind, frame header bytes.
//!
//! Keys: `q`/Ctrl-C quit, `?` help, Tab/Shift-Tab pane, `j`/`k`/arrows move, Enter
//! details, Space pause, `r` reset counters, `/` filter, `s` sort.

mod format;
pub mod model;
pub mod state;
mod terminal;
mod view;

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;

use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;

use crate::engine::{ConnectionView, EngineStats, Finding};
use crate::flow::FlowId;

pub use model::{CaptureHealth, ConnSort, FindingSort, KindSort};
pub use state::Pane;
pub use terminal::{Screen, TerminalSession};

use model::Data;
use state::Ui;

/// What the live loop should do after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    Quit,
}

/// Rows moved by PageUp/PageDown.
const PAGE: isize = 10;

/// The dashboard: pure state and rendering, no I/O.
#[derive(Clone, Debug)]
pub struct Dashboard {
    iface: String,
    ports: Vec<u16>,
    /// Offset from the finding clock to the Unix epoch, for wall-clock times.
    epoch_offset_ns: Option<i128>,
    /// What is counted, always up to date.
    live: Data,
    /// The view frozen by Space (`Some` while paused).
    frozen: Option<Data>,
    ui: Ui,
}

impl Dashboard {
    /// A dashboard for capture on `iface`, `ports`, started at monotonic `started_ns`.
    pub fn new(iface: &str, ports: &[u16], started_ns: u64) -> Self {
        Dashboard {
            iface: iface.to_string(),
            ports: ports.to_vec(),
            epoch_offset_ns: None,
            live: Data::new(started_ns),
            frozen: None,
            ui: Ui::default(),
        }
    }

    /// Shows finding times as UTC wall-clock time: `offset_ns` is added to a finding's
    /// timestamp to get nanoseconds since the Unix epoch (for live capture:
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, as for the `--events` log). Without it, times
    /// are shown relative to the start.
    pub fn set_epoch_offset(&mut self, offset_ns: i128) {
        self.epoch_offset_ns = Some(offset_ns);
    }

    /// Takes in one tick: `now_ns` monotonic, `health` cumulative capture counters,
    /// `stats` the engine's totals, `connections` the engine's tracked connections.
    /// Counting goes on while paused.
    pub fn on_tick<'a>(
        &mut self,
        now_ns: u64,
        health: CaptureHealth,
        stats: &EngineStats,
        connections: impl Iterator<Item = (FlowId, &'a ConnectionView)>,
    ) {
        self.live.tick(now_ns, health, stats, connections);
    }

    /// The most likely causes now (shown in the Diagnosis panel).
    pub fn on_diagnosis(&mut self, causes: Vec<crate::diagnosis::Cause>) {
        self.live.diagnosis = causes;
    }

    /// The sessions paired through a proxy as they ended (shown in the Proxy hops panel
    /// with those open now, from the next tick).
    pub fn on_proxy(&mut self, proxy: &crate::diagnosis::proxy::ProxyStats) {
        if self.live.ended_hops != proxy.seen {
            self.live.ended_hops.clone_from(&proxy.seen);
        }
    }

    /// Takes in one finding (kept in a ring of the last 1000).
    pub fn on_finding(&mut self, f: &Finding) {
        self.live.finding(f);
    }

    /// Handles a terminal event: keys as [`Dashboard::on_key`]; a resize needs nothing
    /// but a redraw.
    pub fn on_event(&mut self, event: &Event) -> Control {
        match event {
            Event::Key(key) => self.on_key(*key),
            _ => Control::Continue,
        }
    }

    /// Handles one key.
    pub fn on_key(&mut self, key: KeyEvent) -> Control {
        if key.kind == KeyEventKind::Release {
            return Control::Continue;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C')) {
            return Control::Quit;
        }
        if self.ui.filter.editing.is_some() {
            self.edit_filter(key);
            return Control::Continue;
        }
        if self.ui.help {
            // Any key closes the help; q still quits.
            self.ui.help = false;
            return if key.code == KeyCode::Char('q') { Control::Quit } else { Control::Continue };
        }
        match key.code {
            KeyCode::Char('q') => return Control::Quit,
            KeyCode::Char('?') => self.ui.help = true,
            KeyCode::Tab => self.ui.focus = self.ui.focus.next(),
            KeyCode::BackTab => self.ui.focus = self.ui.focus.prev(),
            KeyCode::Char('j') | KeyCode::Down => self.step(1),
            KeyCode::Char('k') | KeyCode::Up => self.step(-1),
            KeyCode::PageDown => self.step(PAGE),
            KeyCode::PageUp => self.step(-PAGE),
            KeyCode::Char('g') | KeyCode::Home => self.jump(0),
            KeyCode::Char('G') | KeyCode::End => self.jump(usize::MAX),
            KeyCode::Enter => self.ui.details = !self.ui.details,
            KeyCode::Esc => {
                if self.ui.details {
                    self.ui.details = false;
                } else {
                    self.ui.filter.applied.clear();
                }
            }
            KeyCode::Char(' ') => self.toggle_pause(),
            KeyCode::Char('r') => self.reset(),
            KeyCode::Char('/') => self.ui.filter.editing = Some(self.ui.filter.applied.clone()),
            KeyCode::Char('s') => self.ui.cycle_sort(),
            _ => {}
        }
        Control::Continue
    }

    fn edit_filter(&mut self, key: KeyEvent) {
        let Some(text) = self.ui.filter.editing.as_mut() else {
            return;
        };
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Enter => {
                self.ui.filter.applied = text.trim().to_string();
                self.ui.filter.editing = None;
            }
            KeyCode::Esc => {
                self.ui.filter.applied.clear();
                self.ui.filter.editing = None;
            }
            KeyCode::Backspace => {
                text.pop();
            }
            KeyCode::Char('u') if ctrl => text.clear(),
            KeyCode::Char(c) if !ctrl && !c.is_control() && text.chars().count() < 64 => text.push(c),
            _ => {}
        }
    }

    fn step(&mut self, delta: isize) {
        let data = self.frozen.as_ref().unwrap_or(&self.live);
        self.ui.step(data, delta);
    }

    fn jump(&mut self, to: usize) {
        let data = self.frozen.as_ref().unwrap_or(&self.live);
        self.ui.jump(data, to);
    }

    fn toggle_pause(&mut self) {
        self.frozen = match self.frozen.take() {
            Some(_) => None,
            None => Some(self.live.clone()),
        };
    }

    /// Restarts all counters, rates and sparklines from now (the shown view too).
    pub fn reset(&mut self) {
        self.live.reset();
        if let Some(f) = self.frozen.as_mut() {
            f.reset();
        }
    }

    /// Whether the view is frozen.
    pub fn is_paused(&self) -> bool {
        self.frozen.is_some()
    }

    /// The focused pane.
    pub fn focus(&self) -> Pane {
        self.ui.focus
    }

    /// The applied filter (empty: none).
    pub fn filter(&self) -> &str {
        &self.ui.filter.applied
    }

    /// The data being shown (frozen while paused).
    pub(crate) fn shown(&self) -> &Data {
        self.frozen.as_ref().unwrap_or(&self.live)
    }

    /// Draws the whole dashboard into `frame` (any size, never panics).
    pub fn render(&self, frame: &mut Frame) {
        view::render(self, frame);
    }
}
