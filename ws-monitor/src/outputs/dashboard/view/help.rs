//! The help overlay (?): every key.

use super::*;

/// Every key, for the help overlay.
pub const KEYS: [(&str, &str); 13] = [
    ("q, Ctrl-C", "quit"),
    ("?", "this help (any key closes it)"),
    ("Tab, Shift-Tab", "next / previous pane"),
    ("j k, ↓ ↑", "move the selection"),
    ("PgDn PgUp", "move by 10"),
    ("g G, Home End", "first / last row"),
    ("Enter", "details of the selection (Enter/Esc close)"),
    ("Space", "pause: freeze the view, keep counting"),
    ("r", "reset counters, rates and sparklines"),
    ("/", "filter kinds, connections, findings by text"),
    ("Enter, Esc", "while typing a filter: apply / clear it"),
    ("s", "cycle the sort of the focused pane"),
    ("Esc", "close details, else clear the filter"),
];

pub(super) fn render_help(frame: &mut Frame, area: Rect) {
    let mut lines: Vec<Line<'static>> = KEYS
        .iter()
        .map(|(k, v)| {
            Line::from(vec![Span::styled(format!("{k:<HELP_LABEL$}"), Style::new().fg(ACCENT).bold()), Span::raw(*v)])
        })
        .collect();
    lines.push(Line::from(""));
    lines.push(Line::from(Span::styled(
        "client→server: findings in bytes the client sent; server→client: bytes the server sent.",
        Style::new().fg(DIM),
    )));
    lines.push(Line::from(Span::styled(
        "states: handshake, open, closing, closed, desync (lost framing), not-ws; closed connections stay 60 s.",
        Style::new().fg(DIM),
    )));
    render_popup(frame, area, "Keys".to_string(), lines, 80, HELP_LABEL);
}
