//! Where the dashboard is drawn and keys come from: a [`Screen`], over any ratatui
//! backend and any stream of terminal events. The real one ([`Screen::enter`]) is
//! ratatui's own terminal set-up — raw mode and the alternate screen until it is
//! dropped (also on an early return with an error), and restored by a panic hook
//! before the panic message is printed; tests use a `TestBackend` and a channel.

use std::io::{self, Stdout};

use anyhow::Context as _;
use crossterm::event::{Event, EventStream};
use futures_util::{Stream, StreamExt as _};
use ratatui::backend::{Backend, CrosstermBackend};
use ratatui::Terminal;

use super::Dashboard;

/// The real terminal: what [`Screen::enter`] returns.
pub type TerminalSession = Screen<CrosstermBackend<Stdout>, EventStream>;

/// A terminal to draw the dashboard on, and the events (keys, resizes) typed at it.
pub struct Screen<B: Backend, K> {
    terminal: Terminal<B>,
    keys: K,
    /// Set for the real terminal: restores it when dropped.
    _restore: Option<Restore>,
}

/// Gives the real terminal back (raw mode off, main screen) when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        // Best effort on the way out: nothing more can be done if it fails.
        let _ = ratatui::try_restore();
    }
}

impl TerminalSession {
    /// Switches the real terminal to raw mode and the alternate screen (ratatui's
    /// `try_init`, whose panic hook restores it), keeping it for panics the monitor
    /// contains: those leave the dashboard running.
    pub fn enter() -> anyhow::Result<Self> {
        let terminal = ratatui::try_init().context("cannot set up the terminal (is stdout a terminal?)")?;
        let restore = Restore;
        let restoring = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A panic analysing one connection is caught and logged by the monitor.
            if !crate::pipeline::monitor::panic_is_contained() {
                restoring(info);
            }
        }));
        Ok(Screen { terminal, keys: EventStream::new(), _restore: Some(restore) })
    }
}

impl<B: Backend, K: Stream<Item = io::Result<Event>> + Unpin> Screen<B, K> {
    /// A screen over `backend`, with the events `keys` yields (for tests and other
    /// front ends; nothing to restore).
    pub fn new(backend: B, keys: K) -> anyhow::Result<Self> {
        let terminal = Terminal::new(backend).context("cannot set up the terminal")?;
        Ok(Screen { terminal, keys, _restore: None })
    }

    /// Draws the dashboard (the size is read again, so resizes just work).
    pub fn draw(&mut self, d: &Dashboard) -> anyhow::Result<()> {
        self.terminal.draw(|f| d.render(f)).context("cannot draw the dashboard")?;
        Ok(())
    }

    /// The next terminal event; `None` once the terminal is gone.
    pub async fn next_event(&mut self) -> Option<io::Result<Event>> {
        self.keys.next().await
    }

    /// What was drawn last (a `TestBackend`'s buffer, say).
    pub fn backend(&self) -> &B {
        self.terminal.backend()
    }
}
