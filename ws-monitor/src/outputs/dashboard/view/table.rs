//! What the three panes share: their block, columns fitted to the width by priority, scrolling, the table itself, and word wrapping.

use super::*;

/// A pane's frame: focused panes get an accent border; in single-pane mode the title
/// lists every pane like tabs.
pub(super) fn pane_block(dashboard: &Dashboard, pane: Pane, info: String, single: bool) -> Block<'static> {
    let focused = dashboard.ui.focus == pane;
    let border = if focused { Style::new().fg(ACCENT) } else { Style::new().fg(DIM) };
    let mut title: Vec<Span<'static>> = vec![Span::raw(" ")];
    if single {
        for (i, p) in Pane::ALL.iter().enumerate() {
            if i > 0 {
                title.push(Span::styled(" │ ", Style::new().fg(DIM)));
            }
            let name = short_title(*p);
            if *p == pane {
                title.push(Span::styled(name, Style::new().fg(ACCENT).bold()));
            } else {
                title.push(Span::styled(name, Style::new().fg(DIM)));
            }
        }
    } else {
        let style = if focused { Style::new().fg(ACCENT).bold() } else { Style::new().bold() };
        title.push(Span::styled(pane.title(), style));
    }
    if !info.is_empty() {
        title.push(Span::styled(format!(" {info}"), Style::new().fg(DIM)));
    }
    title.push(Span::raw(" "));
    Block::new()
        .borders(Borders::ALL)
        .border_type(if focused { BorderType::Thick } else { BorderType::Plain })
        .border_style(border)
        .title(Line::from(title))
}

/// Draws a pane's block; the area inside it, unless there is no room in it.
pub(super) fn pane_area(
    dashboard: &Dashboard,
    pane: Pane,
    info: String,
    single: bool,
    frame: &mut Frame,
    area: Rect,
) -> Option<Rect> {
    let block = pane_block(dashboard, pane, info, single);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    (inner.width > 0 && inner.height > 0).then_some(inner)
}

pub(super) fn short_title(p: Pane) -> &'static str {
    match p {
        Pane::Violations => "Violations",
        Pane::Connections => "Connections",
        Pane::Findings => "Findings",
    }
}

/// One table column: what it is, its title, and how it fits.
pub(super) struct Col<C> {
    id: C,
    title: &'static str,
    /// Title used when the column is narrower than `title`.
    short: &'static str,
    /// Narrowest useful width.
    min: u16,
    /// Width it gets when there is room.
    pref: u16,
    /// Lower keeps the column longer when space is short.
    prio: u8,
    /// Lower grows first towards `pref` (default: `prio`); columns of one level grow
    /// together.
    grow: u8,
    /// Takes the width left over.
    fill: bool,
    /// Shown only when every other column has its preferred width.
    extra: bool,
}

impl<C: Copy> Col<C> {
    pub(super) const fn new(id: C, title: &'static str, min: u16, pref: u16, prio: u8) -> Self {
        Col { id, title, short: title, min, pref, prio, grow: prio, fill: false, extra: false }
    }

    pub(super) const fn extra(mut self) -> Self {
        self.extra = true;
        self
    }

    pub(super) const fn grow(mut self, level: u8) -> Self {
        self.grow = level;
        self
    }

    pub(super) const fn short(mut self, short: &'static str) -> Self {
        self.short = short;
        self
    }

    pub(super) const fn fill(mut self) -> Self {
        self.fill = true;
        self
    }
}

/// Picks the columns that fit in `width` (by priority; the first column always, cut to
/// the width) and their widths and titles, in column order. Extra columns come in only
/// once the others have their preferred widths.
pub(super) fn fit<C: Copy>(cols: &[Col<C>], width: u16) -> Vec<(C, &'static str, u16)> {
    let mut chosen: Vec<(usize, u16)> = Vec::new();
    let mut spare = place(cols, width, |c| !c.extra, &mut chosen);
    if chosen.iter().all(|(i, w)| cols.get(*i).is_none_or(|c| *w >= c.pref)) {
        spare = place(cols, spare, |c| c.extra, &mut chosen);
    }
    if let Some((_, w)) = chosen.iter_mut().find(|(i, _)| cols.get(*i).is_some_and(|c| c.fill)) {
        *w = w.saturating_add(spare);
    }
    chosen.sort_by_key(|(i, _)| *i);
    chosen
        .into_iter()
        .filter_map(|(i, w)| {
            let c = cols.get(i)?;
            let title = if c.title.chars().count() > usize::from(w) { c.short } else { c.title };
            Some((c.id, title, w))
        })
        .collect()
}

/// Adds the columns picked by `which` to `chosen` within `width` (minimum widths by
/// priority, then growth towards the preferred widths); returns the width left.
pub(super) fn place<C>(
    cols: &[Col<C>],
    width: u16,
    which: impl Fn(&Col<C>) -> bool,
    chosen: &mut Vec<(usize, u16)>,
) -> u16 {
    const SPACING: u16 = 1;
    let mut order: Vec<usize> = (0..cols.len()).filter(|&i| cols.get(i).is_some_and(&which)).collect();
    order.sort_by_key(|&i| cols.get(i).map_or(u8::MAX, |c| c.prio));
    let first = chosen.len();
    let mut spare = width;
    for &i in &order {
        let Some(c) = cols.get(i) else { continue };
        if chosen.is_empty() {
            let w = c.min.min(spare);
            spare -= w;
            chosen.push((i, w));
            continue;
        }
        let need = c.min.saturating_add(SPACING);
        if need <= spare {
            spare -= need;
            chosen.push((i, c.min));
        }
    }
    // Grow towards the preferred widths, one level at a time, round robin within a
    // level so that paired columns stay alike.
    let mut levels: Vec<u8> = chosen.iter().skip(first).filter_map(|(i, _)| cols.get(*i).map(|c| c.grow)).collect();
    levels.sort_unstable();
    levels.dedup();
    for level in levels {
        loop {
            let mut grew = false;
            for (i, w) in chosen.iter_mut().skip(first) {
                let Some(c) = cols.get(*i) else { continue };
                if c.grow == level && *w < c.pref && spare > 0 {
                    *w += 1;
                    spare -= 1;
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
    }
    spare
}

/// First row to show so that `selected` is visible in `height` rows.
pub(super) fn scroll_offset(selected: Option<usize>, height: usize) -> usize {
    match selected {
        Some(s) if height > 0 && s >= height => s + 1 - height,
        _ => 0,
    }
}

/// The rows that fit in `area` under its header line, scrolled so that `selected` is
/// visible, and the selection's index among them.
pub(super) fn visible<T>(rows: &[T], selected: Option<usize>, area: Rect) -> (impl Iterator<Item = &T>, Option<usize>) {
    let height = usize::from(area.height.saturating_sub(1));
    let offset = scroll_offset(selected, height);
    (rows.iter().skip(offset).take(height), selected.map(|s| s - offset))
}

/// Renders `rows` (already windowed) as a table with a header and the selection marked.
pub(super) fn render_table<C: Copy>(
    frame: &mut Frame,
    area: Rect,
    cols: &[(C, &'static str, u16)],
    rows: Vec<Row<'static>>,
    selected: Option<usize>,
    focused: bool,
    right: impl Fn(C) -> bool,
) {
    let header = Row::new(cols.iter().map(|(c, t, _)| {
        let line = Line::from(*t);
        Cell::from(if right(*c) { line.alignment(Alignment::Right) } else { line })
    }))
    .style(Style::new().fg(DIM).add_modifier(Modifier::BOLD));
    let widths = cols.iter().map(|(_, _, w)| Constraint::Length(*w));
    let highlight =
        if focused { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new().add_modifier(Modifier::BOLD) };
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .highlight_symbol(MARK)
        .highlight_spacing(HighlightSpacing::Always)
        .row_highlight_style(highlight);
    let mut state = TableState::default().with_selected(selected);
    frame.render_stateful_widget(table, area, &mut state);
}

/// A right-aligned cell.
pub(super) fn num(text: String, style: Style) -> Cell<'static> {
    Cell::from(Line::from(Span::styled(text, style)).alignment(Alignment::Right))
}

/// A message in place of an empty table.
pub(super) fn render_message(frame: &mut Frame, area: Rect, lines: Vec<Line<'static>>) {
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), area);
}

/// `text` word-wrapped at `width` characters (words longer than a line are cut).
pub(super) fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut cur_len = 0usize;
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        let sep = usize::from(cur_len > 0);
        if cur_len + sep + word.len() <= width {
            if sep == 1 {
                cur.push(' ');
            }
            cur.extend(word.iter());
            cur_len += sep + word.len();
            continue;
        }
        if cur_len > 0 {
            lines.push(std::mem::take(&mut cur));
        }
        while word.len() > width {
            let rest = word.split_off(width);
            lines.push(word.iter().collect());
            word = rest;
        }
        cur = word.iter().collect();
        cur_len = word.len();
    }
    lines.push(cur);
    lines
}
