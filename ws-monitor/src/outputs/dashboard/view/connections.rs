//! The Connections pane: one row per connection, live or recently closed.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnectionColumn {
    Conn,
    State,
    Client,
    Server,
    Viol,
    Close,
    Last,
    Ext,
    Age,
    Blind,
}

/// `none`, or `12.0Mi: capture_loss 11.9Mi · resync 100B`.
pub(super) fn unanalysed_text(u: &crate::flow::Unanalysed) -> String {
    if u.total() == 0 {
        return "none".to_string();
    }
    let parts: Vec<String> = crate::flow::Loss::ALL
        .iter()
        .filter(|&&l| u.get(l) > 0)
        .map(|&l| format!("{} {}", l.name(), format::bytes(u.get(l))))
        .collect();
    format!("{}: {}", format::bytes(u.total()), parts.join(" · "))
}

pub(super) fn state_style(r: &ConnRow) -> Style {
    if r.is_gone() {
        return Style::new().fg(DIM);
    }
    match r.view.as_ref().map(|v| v.state) {
        Some(ConnState::Open) => Style::new().fg(GOOD),
        Some(ConnState::Handshake) => Style::new().fg(ACCENT),
        Some(ConnState::Desync) => Style::new().fg(WARN).bold(),
        Some(ConnState::NotWebSocket) => Style::new().fg(Color::Magenta),
        Some(ConnState::Closing) | Some(ConnState::Closed) | None => Style::new().fg(DIM),
    }
}

/// `5 live (2 open, 1 desync, …), 1 closed`.
pub(super) fn conn_summary(data: &Data) -> String {
    let (live, closed) = data.conn_counts();
    let states: Vec<String> = [
        ConnState::Open,
        ConnState::Handshake,
        ConnState::Closing,
        ConnState::Closed,
        ConnState::Desync,
        ConnState::NotWebSocket,
    ]
    .iter()
    .filter_map(|&s| {
        let n = data.conns_in(s);
        (n > 0).then(|| format!("{n} {}", state_name(s)))
    })
    .collect();
    let mut out = format!("{live} live");
    if !states.is_empty() {
        out = format!("{out} ({})", states.join(", "));
    }
    if closed > 0 {
        out = format!("{out}, {closed} closed");
    }
    out
}

/// `deflate`, `chat`, `deflate chat`, or `-`.
pub(super) fn negotiated(r: &ConnRow) -> String {
    let Some(v) = &r.view else {
        return "-".to_string();
    };
    let mut parts: Vec<&str> = Vec::new();
    if v.deflate {
        parts.push("deflate");
    }
    if let Some(p) = &v.subprotocol {
        parts.push(p);
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(" ")
    }
}

pub(super) fn render_connections(dashboard: &Dashboard, data: &Data, frame: &mut Frame, area: Rect, single: bool) {
    let rows = data.conn_rows(&dashboard.ui.filter.applied, dashboard.ui.conn_sort);
    let info = format!("{} · sort {}", conn_summary(data), dashboard.ui.conn_sort.name());
    let Some(inner) = pane_area(dashboard, Pane::Connections, info, single, frame, area) else { return };
    if rows.is_empty() {
        let msg = if dashboard.ui.filter.applied.is_empty() {
            " no connections yet".to_string()
        } else {
            format!(" no connection matches \"{}\"", dashboard.ui.filter.applied)
        };
        render_message(frame, inner, vec![Line::from(Span::styled(msg, Style::new().fg(DIM)))]);
        return;
    }
    let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
    let selected = dashboard.ui.sel_conn.resolve(&ids);
    let cols = [
        Col::new(ConnectionColumn::Conn, "connection", 20, 47, 0),
        Col::new(ConnectionColumn::State, "state", 9, 9, 1),
        Col::new(ConnectionColumn::Viol, "viol", 4, 5, 2),
        Col::new(ConnectionColumn::Client, "frames c→s", 6, 10, 3).short("c→s"),
        Col::new(ConnectionColumn::Server, "frames s→c", 6, 10, 3).short("s→c"),
        Col::new(ConnectionColumn::Close, "close", 5, 5, 5),
        Col::new(ConnectionColumn::Last, "idle", 4, 5, 6),
        Col::new(ConnectionColumn::Blind, "unanalysed", 5, 10, 7).short("blind").extra(),
        Col::new(ConnectionColumn::Ext, "negotiated", 10, 20, 7).extra(),
        Col::new(ConnectionColumn::Age, "age", 4, 5, 8).extra(),
    ];
    let fitted = fit(&cols, inner.width.saturating_sub(MARK_WIDTH));
    let (shown, selected) = visible(&rows, selected, inner);
    let table_rows: Vec<Row<'static>> = shown
        .map(|r| {
            let dim = if r.is_gone() { Style::new().fg(DIM) } else { Style::new() };
            Row::new(fitted.iter().map(|(c, _, w)| match c {
                ConnectionColumn::Conn => Cell::from(Span::styled(format::truncate(&r.label, usize::from(*w)), dim)),
                ConnectionColumn::State => Cell::from(Span::styled(r.state_label(), state_style(r))),
                ConnectionColumn::Client => num(format::count(r.frames_dir(Direction::ToServer)), dim),
                ConnectionColumn::Server => num(format::count(r.frames_dir(Direction::ToClient)), dim),
                ConnectionColumn::Viol => {
                    let v = r.violations();
                    num(format::count(v), if v > 0 { Style::new().fg(BAD).bold() } else { Style::new().fg(DIM) })
                }
                ConnectionColumn::Close => num(
                    r.view.as_ref().and_then(|v| v.last_close_code).map_or_else(|| "-".to_string(), |c| c.to_string()),
                    dim,
                ),
                ConnectionColumn::Last => num(format::ago(data.now_ns, r.last_active_ns()), dim),
                ConnectionColumn::Ext => {
                    Cell::from(Span::styled(format::truncate(&negotiated(r), usize::from(*w)), dim))
                }
                ConnectionColumn::Blind => {
                    let n = r.view.as_ref().map_or(0, |v| v.unanalysed.total());
                    num(format::bytes(n), if n > 0 { Style::new().fg(WARN) } else { Style::new().fg(DIM) })
                }
                ConnectionColumn::Age => {
                    num(r.view.as_ref().map_or_else(|| "-".to_string(), |v| format::ago(data.now_ns, v.opened_ns)), dim)
                }
            }))
        })
        .collect();
    render_table(frame, inner, &fitted, table_rows, selected, dashboard.ui.focus == Pane::Connections, |c| {
        matches!(
            c,
            ConnectionColumn::Client
                | ConnectionColumn::Server
                | ConnectionColumn::Viol
                | ConnectionColumn::Close
                | ConnectionColumn::Last
                | ConnectionColumn::Age
                | ConnectionColumn::Blind
        )
    });
}
