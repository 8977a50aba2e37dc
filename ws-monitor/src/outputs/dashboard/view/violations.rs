//! The Violations pane: kinds by direction, rate, sparkline, and the selected kind's meaning.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ViolationColumn {
    Kind,
    Client,
    Server,
    Total,
    Rate,
    Last,
    Spark,
}

pub(super) fn render_violations(dashboard: &Dashboard, data: &Data, frame: &mut Frame, area: Rect, single: bool) {
    let rows = data.kind_rows(&dashboard.ui.filter.applied, dashboard.ui.kind_sort);
    let total = data.violations_total();
    let info = if total == 0 {
        String::new()
    } else {
        format!("{} · sort {}", plural(rows.len() as u64, "kind", "kinds"), dashboard.ui.kind_sort.name())
    };
    let Some(inner) = pane_area(dashboard, Pane::Violations, info, single, frame, area) else { return };
    if rows.is_empty() {
        render_message(frame, inner, no_violations_lines(dashboard, data, total));
        return;
    }
    let kinds: Vec<Kind> = rows.iter().map(|r| r.kind).collect();
    let selected = dashboard.ui.sel_kind.resolve(&kinds);
    let sel_kind = selected.and_then(|i| kinds.get(i)).copied();

    // Meaning and likely cause of the selected kind beneath the table, if room: in full
    // (wrapped) when it fits, else one truncated line each.
    let (table_area, detail) = match sel_kind {
        Some(k) if inner.height >= 6 => {
            let w = usize::from(inner.width);
            let full = detail_lines(k, w);
            // Keep at least the header and two rows of the table.
            let room = usize::from(inner.height).saturating_sub(1 + 1 + kinds.len().min(2));
            // What is left once the whole table is shown (but at least two lines).
            let spare = usize::from(inner.height).saturating_sub(1 + 1 + kinds.len()).max(2).min(room);
            let lines = if full <= spare { full } else { 2 };
            if room < 2 {
                (inner, None)
            } else {
                let detail = u16::try_from(lines.min(room)).unwrap_or(2);
                let [t, rule, dt] =
                    Layout::vertical([Constraint::Min(0), Constraint::Length(1), Constraint::Length(detail)])
                        .areas(inner);
                frame.render_widget(
                    Paragraph::new(Span::styled("─".repeat(usize::from(rule.width)), Style::new().fg(DIM))),
                    rule,
                );
                (t, Some((dt, k, lines == full)))
            }
        }
        _ => (inner, None),
    };

    let cols = [
        Col::new(ViolationColumn::Kind, "kind", 22, 22, 0),
        Col::new(ViolationColumn::Client, "client→server", 5, 13, 1).short("c→s"),
        Col::new(ViolationColumn::Server, "server→client", 5, 13, 1).short("s→c"),
        Col::new(ViolationColumn::Total, "total", 6, 7, 4),
        Col::new(ViolationColumn::Rate, "rate/10s", 6, 8, 2).short("/10s"),
        Col::new(ViolationColumn::Last, "seen", 4, 5, 5),
        Col::new(ViolationColumn::Spark, SPARK_TITLE, 12, 60, 3).fill(),
    ];
    let fitted = fit(&cols, table_area.width.saturating_sub(MARK_WIDTH));
    let spark_width = fitted.iter().find(|c| c.0 == ViolationColumn::Spark).map_or(0, |c| usize::from(c.2));
    let per_char = format::secs_per_char(HISTORY_SECS, spark_width);

    let (shown, selected) = visible(&rows, selected, table_area);
    let table_rows: Vec<Row<'static>> = shown.map(|r| kind_row(data, r, &fitted, spark_width, per_char)).collect();
    render_table(frame, table_area, &fitted, table_rows, selected, dashboard.ui.focus == Pane::Violations, |c| {
        matches!(
            c,
            ViolationColumn::Client
                | ViolationColumn::Server
                | ViolationColumn::Total
                | ViolationColumn::Rate
                | ViolationColumn::Last
        )
    });

    if let Some((area, k, wrap)) = detail {
        let w = usize::from(area.width);
        let line = |label: &'static str, style: Style, text: &'static str| {
            let text = if wrap { text.to_string() } else { format::truncate(text, w.saturating_sub(label.len())) };
            Line::from(vec![Span::styled(label, style), Span::raw(text)])
        };
        let lines = vec![
            line("meaning: ", Style::new().fg(ACCENT).bold(), k.meaning()),
            line("likely cause: ", Style::new().fg(WARN).bold(), k.likely_cause()),
        ];
        frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: true }), area);
    }
}

pub(super) fn kind_row(
    data: &Data,
    r: &KindRow,
    cols: &[(ViolationColumn, &'static str, u16)],
    spark_width: usize,
    per_char: usize,
) -> Row<'static> {
    let count_style = |n: u64| if n > 0 { Style::new().fg(BAD).bold() } else { Style::new().fg(DIM) };
    let recent = r.rate > 0.0;
    Row::new(cols.iter().map(|(c, _, _)| match c {
        ViolationColumn::Kind => Cell::from(Span::styled(
            r.kind.name(),
            if recent { Style::new().fg(BAD).bold() } else { Style::new().fg(BAD) },
        )),
        ViolationColumn::Client => num(format::count(r.client), count_style(r.client)),
        ViolationColumn::Server => num(format::count(r.server), count_style(r.server)),
        ViolationColumn::Total => num(format::count(r.total()), Style::new().bold()),
        ViolationColumn::Rate => {
            num(format::rate(r.rate), if recent { Style::new().fg(BAD) } else { Style::new().fg(DIM) })
        }
        ViolationColumn::Last => {
            num(r.last_active_ns.map_or_else(|| "-".to_string(), |t| format::ago(data.now_ns, t)), Style::new())
        }
        ViolationColumn::Spark => Cell::from(Span::styled(
            format::sparkline(&data.history.series(r.kind), spark_width, per_char),
            Style::new().fg(BAD),
        )),
    }))
}

/// The calm message when nothing is wrong (or nothing matches the filter).
pub(super) fn no_violations_lines(dashboard: &Dashboard, data: &Data, total: u64) -> Vec<Line<'static>> {
    if total > 0 {
        return vec![Line::from(vec![
            Span::styled(format!(" no kind matches \"{}\"", dashboard.ui.filter.applied), Style::new().fg(WARN)),
            Span::styled(
                format!(" ({} violations in total; Esc clears the filter)", format::count(total)),
                Style::new().fg(DIM),
            ),
        ])];
    }
    let since = if data.baseline_ns == data.started_ns { "since start" } else { "since reset" };
    let (c, s) = (data.frames(Direction::ToServer), data.frames(Direction::ToClient));
    vec![
        Line::from(Span::styled(" ✓ no violations", Style::new().fg(GOOD).bold())),
        Line::from(Span::styled(
            format!(
                "   {} (client→server {}, server→client {}) · {} · {} {since}",
                plural(c.saturating_add(s), "frame", "frames"),
                format::count(c),
                format::count(s),
                plural(data.upgrades_ok(), "upgrade", "upgrades"),
                plural(data.connections_opened(), "connection", "connections"),
            ),
            Style::new().fg(GOOD),
        )),
    ]
}
