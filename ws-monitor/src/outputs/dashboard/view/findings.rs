//! The Recent findings pane.

use super::*;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum FCol {
    Time,
    Conn,
    From,
    Kind,
    Header,
    Offset,
}

pub(super) fn render_findings(d: &Dashboard, data: &Data, frame: &mut Frame, area: Rect, single: bool) {
    let rows = data.finding_rows(&d.ui.filter.applied, d.ui.finding_sort);
    let info = format!("{} kept · {} first", data.findings_len(), d.ui.finding_sort.name());
    let Some(inner) = pane_area(d, Pane::Findings, info, single, frame, area) else { return };
    if rows.is_empty() {
        let line = if d.ui.filter.applied.is_empty() {
            Span::styled(" ✓ no findings", Style::new().fg(GOOD))
        } else {
            Span::styled(format!(" no finding matches \"{}\"", d.ui.filter.applied), Style::new().fg(DIM))
        };
        render_message(frame, inner, vec![Line::from(line)]);
        return;
    }
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    let selected = d.ui.sel_finding.resolve(&seqs);
    let time_w = if d.epoch_offset_ns.is_some() { 12 } else { 13 };
    let cols = [
        Col::new(FCol::Time, "time", time_w, time_w, 1),
        Col::new(FCol::Conn, "connection", 20, 47, 3),
        Col::new(FCol::From, "from", 6, 6, 4),
        Col::new(FCol::Kind, "kind", 22, 22, 0),
        Col::new(FCol::Header, "frame header", 12, 28, 2).grow(6),
        Col::new(FCol::Offset, "offset", 6, 12, 5).extra(),
    ];
    let fitted = fit(&cols, inner.width.saturating_sub(MARK_WIDTH));
    let (shown, selected) = visible(&rows, selected, inner);
    let table_rows: Vec<Row<'static>> = shown.map(|r| finding_row(d, data, r, &fitted)).collect();
    render_table(frame, inner, &fitted, table_rows, selected, d.ui.focus == Pane::Findings, |c| c == FCol::Offset);
}

pub(super) fn finding_row(
    d: &Dashboard,
    data: &Data,
    r: &FindingRow,
    cols: &[(FCol, &'static str, u16)],
) -> Row<'static> {
    let f = &r.finding;
    Row::new(cols.iter().map(|(c, _, w)| match c {
        FCol::Time => Cell::from(format::event_time(f.ts_ns, data.started_ns, d.epoch_offset_ns)),
        FCol::Conn => Cell::from(format::truncate(&format!("{} → {}", f.key.client, f.key.server), usize::from(*w))),
        FCol::From => Cell::from(f.dir.name()),
        FCol::Kind => Cell::from(Span::styled(f.kind.name(), Style::new().fg(BAD))),
        FCol::Header => Cell::from(Span::styled(format::compact_hex(&f.header), Style::new().fg(ACCENT))),
        FCol::Offset => num(f.offset.to_string(), Style::new().fg(DIM)),
    }))
}
