//! The real terminal: raw mode and the alternate screen while a [`TerminalSession`]
//! lives, restored when it is dropped (also on an early return with an error), and by a
//! panic hook before the panic message is printed.

use std::io::{self, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use anyhow::Context as _;
use crossterm::cursor::{Hide, Show};
use crossterm::event::EventStream;
use crossterm::execute;
use crossterm::terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

use super::Dashboard;

/// Whether the terminal is currently in dashboard mode (raw + alternate screen).
static ACTIVE: AtomicBool = AtomicBool::new(false);
static HOOK: Once = Once::new();

/// Leaves dashboard mode if in it; idempotent, errors ignored (best effort on the way out).
fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
    }
}

/// Restores the terminal before the previous hook prints the panic (installed once).
fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // A panic the monitor catches (one connection's analysis) leaves the
            // dashboard running.
            if crate::pipeline::monitor::panic_is_contained() {
                return;
            }
            restore();
            previous(info);
        }));
    });
}

/// Restores the terminal when dropped unless disarmed (for a half-done `enter`).
struct Guard {
    armed: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed {
            restore();
        }
    }
}

/// Owns the real terminal while the dashboard runs.
pub struct TerminalSession {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    events: EventStream,
}

impl TerminalSession {
    /// Switches the terminal to raw mode and the alternate screen.
    pub fn enter() -> anyhow::Result<Self> {
        install_panic_hook();
        enable_raw_mode().context("cannot switch the terminal to raw mode (is stdout a terminal?)")?;
        ACTIVE.store(true, Ordering::SeqCst);
        let mut guard = Guard { armed: true };
        execute!(io::stdout(), EnterAlternateScreen, Hide).context("cannot enter the alternate screen")?;
        let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout())).context("cannot set up the terminal")?;
        terminal.clear().context("cannot clear the terminal")?;
        guard.armed = false;
        Ok(TerminalSession { terminal, events: EventStream::new() })
    }

    /// Draws the dashboard (the terminal size is re-read, so resizes just work).
    pub fn draw(&mut self, d: &Dashboard) -> anyhow::Result<()> {
        self.terminal.draw(|f| d.render(f)).context("cannot draw the dashboard")?;
        Ok(())
    }

    /// Terminal events (keys, resizes) as an async stream.
    pub fn events(&mut self) -> &mut EventStream {
        &mut self.events
    }
}

impl Drop for TerminalSession {
    fn drop(&mut self) {
        restore();
    }
}
