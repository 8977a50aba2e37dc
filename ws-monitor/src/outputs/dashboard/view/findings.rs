//! The Recent findings pane.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FindingColumn {
    Time,
    Conn,
    From,
    Kind,
    Header,
    Offset,
}

pub(super) fn render_findings(dashboard: &Dashboard, data: &Data, frame: &mut Frame, area: Rect, single: bool) {
    let rows = data.finding_rows(&dashboard.ui.filter.applied, dashboard.ui.finding_sort);
    let info = format!("{} kept · {} first", data.findings_len(), dashboard.ui.finding_sort.name());
    let Some(inner) = pane_area(dashboard, Pane::Findings, info, single, frame, area) else { return };
    if rows.is_empty() {
        let line = if dashboard.ui.filter.applied.is_empty() {
            Span::styled(" ✓ no findings", Style::new().fg(GOOD))
        } else {
            Span::styled(format!(" no finding matches \"{}\"", dashboard.ui.filter.applied), Style::new().fg(DIM))
        };
        render_message(frame, inner, vec![Line::from(line)]);
        return;
    }
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    let selected = dashboard.ui.sel_finding.resolve(&seqs);
    let time_w = if dashboard.epoch_offset_ns.is_some() { 12 } else { 13 };
    let cols = [
        Col::new(FindingColumn::Time, "time", time_w, time_w, 1),
        Col::new(FindingColumn::Conn, "connection", 20, 47, 3),
        Col::new(FindingColumn::From, "from", 6, 6, 4),
        Col::new(FindingColumn::Kind, "kind", 22, 22, 0),
        Col::new(FindingColumn::Header, "frame header", 12, 28, 2).grow(6),
        Col::new(FindingColumn::Offset, "offset", 6, 12, 5).extra(),
    ];
    let fitted = fit(&cols, inner.width.saturating_sub(MARK_WIDTH));
    let (shown, selected) = visible(&rows, selected, inner);
    let table_rows: Vec<Row<'static>> = shown.map(|r| finding_row(dashboard, data, r, &fitted)).collect();
    render_table(frame, inner, &fitted, table_rows, selected, dashboard.ui.focus == Pane::Findings, |c| {
        c == FindingColumn::Offset
    });
}

pub(super) fn finding_row(
    dashboard: &Dashboard,
    data: &Data,
    r: &FindingRow,
    cols: &[(FindingColumn, &'static str, u16)],
) -> Row<'static> {
    let f = &r.finding;
    Row::new(cols.iter().map(|(c, _, w)| match c {
        FindingColumn::Time => Cell::from(format::event_time(f.ts_ns, data.started_ns, dashboard.epoch_offset_ns)),
        FindingColumn::Conn => {
            Cell::from(format::truncate(&format!("{} → {}", f.key.client, f.key.server), usize::from(*w)))
        }
        FindingColumn::From => Cell::from(f.dir.name()),
        FindingColumn::Kind => Cell::from(Span::styled(f.kind.name(), Style::new().fg(BAD))),
        FindingColumn::Header => Cell::from(Span::styled(format::compact_hex(&f.header), Style::new().fg(ACCENT))),
        FindingColumn::Offset => num(f.offset.to_string(), Style::new().fg(DIM)),
    }))
}
