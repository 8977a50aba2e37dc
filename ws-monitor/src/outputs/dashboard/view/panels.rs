//! The panels above the panes: Diagnosis (the most likely causes) and Proxy hops (sessions seen on both sides of a proxy).

use super::*;

/// Causes the Diagnosis panel shows at most.
pub(super) const DIAGNOSIS_ROWS: usize = 3;
/// Rows the three panes keep beyond their minimum before the Diagnosis panel is shown.
pub(super) const DIAGNOSIS_SPARE: u16 = 8;

/// The Diagnosis panel: the most likely causes, most telling first, each with its
/// evidence and what to check.
pub(super) fn render_diagnosis(causes: &[&crate::diagnosis::Cause], frame: &mut Frame, area: Rect) {
    let block = Block::bordered()
        .border_type(BorderType::Rounded)
        .border_style(Style::new().fg(WARN))
        .title(Span::styled(" Diagnosis: most likely causes ", Style::new().fg(WARN).bold()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width);
    let lines: Vec<Line<'static>> = causes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let unit = if c.evidence == 1 { singular(c.unit) } else { c.unit.into() };
            let lead = format!("{}. {} ({} {unit})", i + 1, c.cause, format::count(c.evidence));
            let check = format!(" · check: {}", c.check);
            let lead = format::truncate(&lead, width);
            let rest = width.saturating_sub(lead.chars().count());
            Line::from(vec![
                Span::styled(lead, Style::new().bold()),
                Span::styled(format::truncate(&check, rest), Style::new().fg(DIM)),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

/// Proxied sessions the Proxy hops panel shows at most.
pub(super) const HOP_ROWS: usize = 3;

/// One proxied session: `client → proxy → backend · open · who is to blame`.
pub(super) fn hop_line(h: &crate::outputs::dashboard::model::HopRow) -> String {
    let (f, b) = (h.front, h.back);
    let state = if h.live { "open" } else { "closed" };
    let altered =
        if h.altered.is_empty() { String::new() } else { format!(": {}", h.altered.join(", ").replace('_', " ")) };
    format!("{} → {} (proxy) → {} · {state} · {}{altered}", f.client, f.server, b.server, h.blame.describe())
}

/// The Proxy hops panel: sessions seen on both sides of a proxy, what the proxy changed
/// first.
pub(super) fn render_hops(lines: &[String], total: usize, frame: &mut Frame, area: Rect) {
    let title =
        format!(" Proxy hops: client → proxy → backend ({total} session{}) ", if total == 1 { "" } else { "s" });
    let block = Block::bordered()
        .border_type(BorderType::Rounded)
        .border_style(Style::new().fg(ACCENT))
        .title(Span::styled(title, Style::new().fg(ACCENT).bold()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width);
    let text: Vec<Line<'static>> = lines.iter().map(|l| Line::raw(format::truncate(l, width))).collect();
    frame.render_widget(Paragraph::new(text), inner);
}

/// The unit of one: "finding" for "findings", "connection side" for "connection sides".
pub(super) fn singular(unit: &str) -> std::borrow::Cow<'_, str> {
    match unit.split_once(' ') {
        Some((noun, rest)) => match noun.strip_suffix('s') {
            Some(one) => format!("{one} {rest}").into(),
            None => unit.into(),
        },
        None => unit.strip_suffix('s').unwrap_or(unit).into(),
    }
}
