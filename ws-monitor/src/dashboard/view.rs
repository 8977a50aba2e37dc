//! Rendering: header, the three panes, footer, details popup and help overlay, for any
//! terminal size. Columns are fitted to the width by priority (sparklines go first), and
//! below [`FULL_BODY_HEIGHT`] rows only the focused pane is shown.

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, BorderType, Borders, Cell, Clear, HighlightSpacing, Paragraph, Row, Table, TableState, Wrap,
};
use ratatui::Frame;

use crate::engine::{ConnState, Kind};
use crate::flow::{Direction, Opening};

use super::format;
use super::model::{state_name, ConnRow, Data, FindingRow, KindRow, HISTORY_SECS, RATE_WINDOW_SECS};
use super::state::Pane;
use super::Dashboard;

/// Below this many body rows only the focused pane is shown.
pub const FULL_BODY_HEIGHT: u16 = 20;
/// Below this size only a one-line summary is shown.
const MIN_WIDTH: u16 = 24;
const MIN_HEIGHT: u16 = 5;

const ACCENT: Color = Color::Cyan;
const BAD: Color = Color::Red;
const WARN: Color = Color::Yellow;
const GOOD: Color = Color::Green;
const DIM: Color = Color::DarkGray;

/// Width of the selection marker column.
const MARK: &str = "▶ ";
const MARK_WIDTH: u16 = 2;

/// Title of the sparkline column: the span of [`HISTORY_SECS`].
pub const SPARK_TITLE: &str = "last 5 min";

/// Label width in the details popup.
const LABEL: usize = 13;
/// Key column width in the help overlay.
const HELP_LABEL: usize = 16;

pub(super) fn render(d: &Dashboard, frame: &mut Frame) {
    let area = frame.area();
    if area.width == 0 || area.height == 0 {
        return;
    }
    let data = d.shown();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        render_tiny(d, data, frame, area);
        return;
    }
    let header_height = if area.height >= 16 { 3 } else { 2 };
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(header_height), Constraint::Min(0), Constraint::Length(1)]).areas(area);
    render_header(d, data, frame, header);
    render_footer(d, frame, footer);
    // The Diagnosis panel above the panes, while there is something to say (that the
    // filter lets through) and room beyond what the three panes want.
    let filter = d.ui.filter.applied.to_lowercase();
    let causes: Vec<&crate::diagnosis::Cause> =
        data.diagnosis.iter().filter(|c| c.cause.to_lowercase().contains(&filter)).take(DIAGNOSIS_ROWS).collect();
    let rows = 2 + causes.len() as u16;
    let body = if !causes.is_empty() && body.height >= FULL_BODY_HEIGHT + DIAGNOSIS_SPARE + rows {
        let [diag, rest] = Layout::vertical([Constraint::Length(rows), Constraint::Min(0)]).areas(body);
        render_diagnosis(&causes, frame, diag);
        rest
    } else {
        body
    };
    // The Proxy hops panel below it, on the same terms.
    let hops: Vec<String> =
        data.hops.iter().map(hop_line).filter(|l| l.to_lowercase().contains(&filter)).take(HOP_ROWS).collect();
    let rows = 2 + hops.len() as u16;
    let body = if !hops.is_empty() && body.height >= FULL_BODY_HEIGHT + DIAGNOSIS_SPARE + rows {
        let [panel, rest] = Layout::vertical([Constraint::Length(rows), Constraint::Min(0)]).areas(body);
        render_hops(&hops, data.hops.len(), frame, panel);
        rest
    } else {
        body
    };
    if body.height >= FULL_BODY_HEIGHT {
        let v_height = violations_height(d, data, body);
        let [v, c, f] =
            Layout::vertical([Constraint::Length(v_height), Constraint::Fill(1), Constraint::Fill(1)]).areas(body);
        render_violations(d, data, frame, v, false);
        render_connections(d, data, frame, c, false);
        render_findings(d, data, frame, f, false);
    } else {
        match d.ui.focus {
            Pane::Violations => render_violations(d, data, frame, body, true),
            Pane::Connections => render_connections(d, data, frame, body, true),
            Pane::Findings => render_findings(d, data, frame, body, true),
        }
    }
    if d.ui.details {
        render_details(d, data, frame, area);
    }
    if d.ui.help {
        render_help(frame, area);
    }
}

/// Causes the Diagnosis panel shows at most.
const DIAGNOSIS_ROWS: usize = 3;
/// Rows the three panes keep beyond their minimum before the Diagnosis panel is shown.
const DIAGNOSIS_SPARE: u16 = 8;

/// The Diagnosis panel: the most likely causes, most telling first, each with its
/// evidence and what to check.
fn render_diagnosis(causes: &[&crate::diagnosis::Cause], frame: &mut Frame, area: Rect) {
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
const HOP_ROWS: usize = 3;

/// One proxied session: `client → proxy → backend · open · who is to blame`.
fn hop_line(h: &super::model::HopRow) -> String {
    let (f, b) = (h.front, h.back);
    let state = if h.live { "open" } else { "closed" };
    let altered =
        if h.altered.is_empty() { String::new() } else { format!(": {}", h.altered.join(", ").replace('_', " ")) };
    format!("{} → {} (proxy) → {} · {state} · {}{altered}", f.client, f.server, b.server, h.blame.describe())
}

/// The Proxy hops panel: sessions seen on both sides of a proxy, what the proxy changed
/// first.
fn render_hops(lines: &[String], total: usize, frame: &mut Frame, area: Rect) {
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
fn singular(unit: &str) -> std::borrow::Cow<'_, str> {
    match unit.split_once(' ') {
        Some((noun, rest)) => match noun.strip_suffix('s') {
            Some(one) => format!("{one} {rest}").into(),
            None => unit.into(),
        },
        None => unit.strip_suffix('s').unwrap_or(unit).into(),
    }
}

/// Rows of the violations pane in the three-pane layout: what its table and the
/// meaning need, within 6 rows and 55% of the body.
fn violations_height(d: &Dashboard, data: &Data, body: Rect) -> u16 {
    let kinds: Vec<Kind> = data.kind_rows(&d.ui.filter.applied, d.ui.kind_sort).iter().map(|r| r.kind).collect();
    // Borders, then the table header, rows, rule and the selected kind's meaning; or
    // the two-line message.
    let want = match d.ui.sel_kind.current(&kinds) {
        None => 4,
        Some(k) => {
            let w = usize::from(body.width.saturating_sub(2));
            2 + 1 + kinds.len() + 1 + detail_lines(k, w)
        }
    };
    // At most 55% of the body, and leave the other panes three rows each.
    let cap =
        u16::try_from(u32::from(body.height) * 11 / 20).unwrap_or(u16::MAX).min(body.height.saturating_sub(12)).max(6);
    u16::try_from(want).unwrap_or(u16::MAX).clamp(6, cap)
}

/// Lines the meaning and likely cause of `k` take at `width`.
fn detail_lines(k: Kind, width: usize) -> usize {
    wrap_words(&format!("meaning: {}", k.meaning()), width).len()
        + wrap_words(&format!("likely cause: {}", k.likely_cause()), width).len()
}

// ----- header and footer -----------------------------------------------------------------

/// The violation total as a badge: calm green when zero, red otherwise.
fn violations_badge(data: &Data) -> Span<'static> {
    match data.violations_total() {
        0 => Span::styled("✓ no violations", Style::new().fg(GOOD)),
        1 => Span::styled("● 1 violation", Style::new().fg(BAD).bold()),
        n => Span::styled(format!("● {} violations", format::count(n)), Style::new().fg(BAD).bold()),
    }
}

fn render_tiny(d: &Dashboard, data: &Data, frame: &mut Frame, area: Rect) {
    let mut first = vec![Span::raw("ws-monitor ").bold()];
    if d.is_paused() {
        first.push(Span::styled("PAUSED ", Style::new().fg(WARN).bold()));
    }
    let lines = vec![
        Line::from(first),
        Line::from(violations_badge(data)),
        Line::from(Span::styled("(enlarge the terminal)", Style::new().fg(DIM))),
    ];
    frame.render_widget(Paragraph::new(lines), area);
}

/// `1 desync`, `2 desyncs`.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", format::count(n), if n == 1 { one } else { many })
}

fn sep() -> Span<'static> {
    Span::styled(" · ", Style::new().fg(DIM))
}

/// Below this width the header puts the alarms (violations, pause, losses) first.
const COMPACT_HEADER: u16 = 70;

fn render_header(d: &Dashboard, data: &Data, frame: &mut Frame, area: Rect) {
    let compact = area.width < COMPACT_HEADER;
    let ports = d.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let brand = Span::styled(" ws-monitor ", Style::new().fg(Color::Black).bg(ACCENT).bold());
    let mut place = vec![
        Span::raw(d.iface.clone()).bold(),
        Span::raw(format!(" {} {ports}", if d.ports.len() == 1 { "port" } else { "ports" })),
        sep(),
        Span::raw(format!("up {}", format::hms(data.now_ns.saturating_sub(data.started_ns)))),
    ];
    if data.baseline_ns != data.started_ns {
        place.push(sep());
        place.push(Span::styled(
            format!(
                "reset {} ago",
                format::short_duration(data.now_ns.saturating_sub(data.baseline_ns) / 1_000_000_000)
            ),
            Style::new().fg(WARN),
        ));
    }
    let mut alarms = vec![violations_badge(data)];
    if d.is_paused() {
        alarms.push(Span::raw(" "));
        alarms.push(Span::styled(" PAUSED ", Style::new().fg(Color::Black).bg(WARN).bold()));
    }
    if !d.ui.filter.applied.is_empty() {
        alarms.push(Span::raw(" "));
        alarms.push(Span::styled(format!("filter: {}", d.ui.filter.applied), Style::new().fg(ACCENT)));
    }
    let mut title = vec![brand, Span::raw(" ")];
    if compact {
        title.extend(alarms);
        title.push(sep());
        title.extend(place);
    } else {
        title.extend(place);
        title.push(sep());
        title.extend(alarms);
    }

    let h = data.health();
    let coverage = match h.coverage_pct() {
        None => Span::styled(if compact { "cov n/a" } else { "coverage n/a" }, Style::new().fg(DIM)),
        Some(p) => {
            let color = if h.bytes_lost == 0 {
                GOOD
            } else if p >= 99.0 {
                WARN
            } else {
                BAD
            };
            Span::styled(format!("{} {p:.2}%", if compact { "cov" } else { "coverage" }), Style::new().fg(color))
        }
    };
    let drops = Span::styled(
        format!("{} {}", if compact { "drops" } else { "ring drops" }, format::count(h.ring_drops)),
        if h.ring_drops > 0 { Style::new().fg(BAD).bold() } else { Style::new() },
    );
    let gaps = if h.gaps > 0 {
        Span::styled(
            if compact {
                format!("gaps {}", format::count(h.gaps))
            } else {
                format!("gaps {} ({} B lost)", format::count(h.gaps), format::count(h.bytes_lost))
            },
            Style::new().fg(WARN),
        )
    } else {
        Span::raw("gaps 0")
    };
    let pkts = Span::raw(format!("{} pkt/s", format::rate(data.packets_per_s).trim_end_matches("/s")));
    let bytes = Span::raw(format::bytes_rate(data.bytes_per_s));
    let capture = if compact {
        Line::from(vec![Span::raw(" "), coverage, sep(), drops, sep(), gaps, sep(), pkts, sep(), bytes])
    } else {
        Line::from(vec![
            Span::styled(" capture ", Style::new().fg(DIM)),
            pkts,
            sep(),
            bytes,
            sep(),
            coverage,
            sep(),
            drops,
            sep(),
            gaps,
        ])
    };

    let frames = data.frames(Direction::ToServer).saturating_add(data.frames(Direction::ToClient));
    let (live, closed) = data.conn_counts();
    let total = data.violations_total();
    let engine = Line::from(vec![
        Span::styled(" engine  ", Style::new().fg(DIM)),
        Span::raw(format!("{live} live, {closed} closed")),
        sep(),
        Span::raw(format!("{} opened", format::count(data.connections_opened()))),
        sep(),
        Span::raw(plural(data.upgrades_ok(), "upgrade", "upgrades")),
        sep(),
        Span::raw(plural(frames, "frame", "frames")),
        sep(),
        Span::styled(
            plural(total, "violation", "violations"),
            if total > 0 { Style::new().fg(BAD).bold() } else { Style::new().fg(GOOD) },
        ),
        sep(),
        Span::raw(plural(data.desyncs(), "desync", "desyncs")),
    ]);
    let mut lines = vec![Line::from(title), capture];
    if area.height >= 3 {
        lines.push(engine);
    }
    frame.render_widget(Paragraph::new(lines), area);
}

fn render_footer(d: &Dashboard, frame: &mut Frame, area: Rect) {
    let key = |k: &str| Span::styled(k.to_string(), Style::new().fg(Color::Black).bg(ACCENT));
    let label = |l: &str| Span::styled(format!(" {l}  "), Style::new().fg(DIM));
    let line = if let Some(text) = &d.ui.filter.editing {
        Line::from(vec![
            Span::styled(" filter: ", Style::new().fg(ACCENT).bold()),
            Span::raw(text.clone()),
            Span::styled("▏", Style::new().fg(ACCENT)),
            Span::raw("   "),
            key("Enter"),
            label("apply"),
            key("Esc"),
            label("clear"),
            key("⌫"),
            label("delete"),
        ])
    } else {
        let pause = if d.is_paused() { "resume" } else { "pause" };
        let items: [(&str, &str); 9] = [
            ("q", "quit"),
            ("?", "help"),
            ("Tab", "pane"),
            ("j/k", "move"),
            ("Enter", "details"),
            ("Space", pause),
            ("r", "reset"),
            ("/", "filter"),
            ("s", "sort"),
        ];
        let full: usize = items.iter().map(|(k, l)| k.chars().count() + l.chars().count() + 3).sum();
        let mut spans = vec![Span::raw(" ")];
        for (k, l) in items {
            spans.push(key(k));
            if full < usize::from(area.width) {
                spans.push(label(l));
            } else {
                spans.push(Span::raw(" "));
            }
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}

// ----- panes -----------------------------------------------------------------------------

/// A pane's frame: focused panes get an accent border; in single-pane mode the title
/// lists every pane like tabs.
fn pane_block(d: &Dashboard, pane: Pane, info: String, single: bool) -> Block<'static> {
    let focused = d.ui.focus == pane;
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

fn short_title(p: Pane) -> &'static str {
    match p {
        Pane::Violations => "Violations",
        Pane::Connections => "Connections",
        Pane::Findings => "Findings",
    }
}

/// One table column: what it is, its title, and how it fits.
struct Col<C> {
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
    const fn new(id: C, title: &'static str, min: u16, pref: u16, prio: u8) -> Self {
        Col { id, title, short: title, min, pref, prio, grow: prio, fill: false, extra: false }
    }

    const fn extra(mut self) -> Self {
        self.extra = true;
        self
    }

    const fn grow(mut self, level: u8) -> Self {
        self.grow = level;
        self
    }

    const fn short(mut self, short: &'static str) -> Self {
        self.short = short;
        self
    }

    const fn fill(mut self) -> Self {
        self.fill = true;
        self
    }
}

/// Picks the columns that fit in `width` (by priority; the first column always, cut to
/// the width) and their widths and titles, in column order. Extra columns come in only
/// once the others have their preferred widths.
fn fit<C: Copy>(cols: &[Col<C>], width: u16) -> Vec<(C, &'static str, u16)> {
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
fn place<C>(cols: &[Col<C>], width: u16, which: impl Fn(&Col<C>) -> bool, chosen: &mut Vec<(usize, u16)>) -> u16 {
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
fn scroll_offset(selected: Option<usize>, height: usize) -> usize {
    match selected {
        Some(s) if height > 0 && s >= height => s + 1 - height,
        _ => 0,
    }
}

/// The rows that fit in `area` under its header line, scrolled so that `selected` is
/// visible, and the selection's index among them.
fn visible<T>(rows: &[T], selected: Option<usize>, area: Rect) -> (impl Iterator<Item = &T>, Option<usize>) {
    let height = usize::from(area.height.saturating_sub(1));
    let offset = scroll_offset(selected, height);
    (rows.iter().skip(offset).take(height), selected.map(|s| s - offset))
}

/// Renders `rows` (already windowed) as a table with a header and the selection marked.
fn render_table<C: Copy>(
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
fn num(text: String, style: Style) -> Cell<'static> {
    Cell::from(Line::from(Span::styled(text, style)).alignment(Alignment::Right))
}

/// A message in place of an empty table.
fn render_message(frame: &mut Frame, area: Rect, lines: Vec<Line<'static>>) {
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), area);
}

/// `text` word-wrapped at `width` characters (words longer than a line are cut).
fn wrap_words(text: &str, width: usize) -> Vec<String> {
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum KCol {
    Kind,
    Client,
    Server,
    Total,
    Rate,
    Last,
    Spark,
}

fn render_violations(d: &Dashboard, data: &Data, frame: &mut Frame, area: Rect, single: bool) {
    let rows = data.kind_rows(&d.ui.filter.applied, d.ui.kind_sort);
    let total = data.violations_total();
    let info = if total == 0 {
        String::new()
    } else {
        format!("{} · sort {}", plural(rows.len() as u64, "kind", "kinds"), d.ui.kind_sort.name())
    };
    let block = pane_block(d, Pane::Violations, info, single);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    if rows.is_empty() {
        render_message(frame, inner, no_violations_lines(d, data, total));
        return;
    }
    let kinds: Vec<Kind> = rows.iter().map(|r| r.kind).collect();
    let selected = d.ui.sel_kind.resolve(&kinds);
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
        Col::new(KCol::Kind, "kind", 22, 22, 0),
        Col::new(KCol::Client, "client→server", 5, 13, 1).short("c→s"),
        Col::new(KCol::Server, "server→client", 5, 13, 1).short("s→c"),
        Col::new(KCol::Total, "total", 6, 7, 4),
        Col::new(KCol::Rate, "rate/10s", 6, 8, 2).short("/10s"),
        Col::new(KCol::Last, "seen", 4, 5, 5),
        Col::new(KCol::Spark, SPARK_TITLE, 12, 60, 3).fill(),
    ];
    let fitted = fit(&cols, table_area.width.saturating_sub(MARK_WIDTH));
    let spark_width = fitted.iter().find(|c| c.0 == KCol::Spark).map_or(0, |c| usize::from(c.2));
    let per_char = format::secs_per_char(HISTORY_SECS, spark_width);

    let (shown, selected) = visible(&rows, selected, table_area);
    let table_rows: Vec<Row<'static>> = shown.map(|r| kind_row(data, r, &fitted, spark_width, per_char)).collect();
    render_table(frame, table_area, &fitted, table_rows, selected, d.ui.focus == Pane::Violations, |c| {
        matches!(c, KCol::Client | KCol::Server | KCol::Total | KCol::Rate | KCol::Last)
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

fn kind_row(
    data: &Data,
    r: &KindRow,
    cols: &[(KCol, &'static str, u16)],
    spark_width: usize,
    per_char: usize,
) -> Row<'static> {
    let count_style = |n: u64| if n > 0 { Style::new().fg(BAD).bold() } else { Style::new().fg(DIM) };
    let recent = r.rate > 0.0;
    Row::new(cols.iter().map(|(c, _, _)| match c {
        KCol::Kind => Cell::from(Span::styled(
            r.kind.name(),
            if recent { Style::new().fg(BAD).bold() } else { Style::new().fg(BAD) },
        )),
        KCol::Client => num(format::count(r.client), count_style(r.client)),
        KCol::Server => num(format::count(r.server), count_style(r.server)),
        KCol::Total => num(format::count(r.total()), Style::new().bold()),
        KCol::Rate => num(format::rate(r.rate), if recent { Style::new().fg(BAD) } else { Style::new().fg(DIM) }),
        KCol::Last => {
            num(r.last_active_ns.map_or_else(|| "-".to_string(), |t| format::ago(data.now_ns, t)), Style::new())
        }
        KCol::Spark => Cell::from(Span::styled(
            format::sparkline(&data.history.series(r.kind), spark_width, per_char),
            Style::new().fg(BAD),
        )),
    }))
}

/// The calm message when nothing is wrong (or nothing matches the filter).
fn no_violations_lines(d: &Dashboard, data: &Data, total: u64) -> Vec<Line<'static>> {
    if total > 0 {
        return vec![Line::from(vec![
            Span::styled(format!(" no kind matches \"{}\"", d.ui.filter.applied), Style::new().fg(WARN)),
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum CCol {
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
fn unanalysed_text(u: &crate::flow::Unanalysed) -> String {
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

fn state_style(r: &ConnRow) -> Style {
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
fn conn_summary(data: &Data) -> String {
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
fn negotiated(r: &ConnRow) -> String {
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

fn render_connections(d: &Dashboard, data: &Data, frame: &mut Frame, area: Rect, single: bool) {
    let rows = data.conn_rows(&d.ui.filter.applied, d.ui.conn_sort);
    let info = format!("{} · sort {}", conn_summary(data), d.ui.conn_sort.name());
    let block = pane_block(d, Pane::Connections, info, single);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    if rows.is_empty() {
        let msg = if d.ui.filter.applied.is_empty() {
            " no connections yet".to_string()
        } else {
            format!(" no connection matches \"{}\"", d.ui.filter.applied)
        };
        render_message(frame, inner, vec![Line::from(Span::styled(msg, Style::new().fg(DIM)))]);
        return;
    }
    let ids: Vec<_> = rows.iter().map(|r| r.id).collect();
    let selected = d.ui.sel_conn.resolve(&ids);
    let cols = [
        Col::new(CCol::Conn, "connection", 20, 47, 0),
        Col::new(CCol::State, "state", 9, 9, 1),
        Col::new(CCol::Viol, "viol", 4, 5, 2),
        Col::new(CCol::Client, "frames c→s", 6, 10, 3).short("c→s"),
        Col::new(CCol::Server, "frames s→c", 6, 10, 3).short("s→c"),
        Col::new(CCol::Close, "close", 5, 5, 5),
        Col::new(CCol::Last, "idle", 4, 5, 6),
        Col::new(CCol::Blind, "unanalysed", 5, 10, 7).short("blind").extra(),
        Col::new(CCol::Ext, "negotiated", 10, 20, 7).extra(),
        Col::new(CCol::Age, "age", 4, 5, 8).extra(),
    ];
    let fitted = fit(&cols, inner.width.saturating_sub(MARK_WIDTH));
    let (shown, selected) = visible(&rows, selected, inner);
    let table_rows: Vec<Row<'static>> = shown
        .map(|r| {
            let dim = if r.is_gone() { Style::new().fg(DIM) } else { Style::new() };
            Row::new(fitted.iter().map(|(c, _, w)| match c {
                CCol::Conn => Cell::from(Span::styled(format::truncate(&r.label, usize::from(*w)), dim)),
                CCol::State => Cell::from(Span::styled(r.state_label(), state_style(r))),
                CCol::Client => num(format::count(r.frames_dir(Direction::ToServer)), dim),
                CCol::Server => num(format::count(r.frames_dir(Direction::ToClient)), dim),
                CCol::Viol => {
                    let v = r.violations();
                    num(format::count(v), if v > 0 { Style::new().fg(BAD).bold() } else { Style::new().fg(DIM) })
                }
                CCol::Close => num(
                    r.view.as_ref().and_then(|v| v.last_close_code).map_or_else(|| "-".to_string(), |c| c.to_string()),
                    dim,
                ),
                CCol::Last => num(format::ago(data.now_ns, r.last_active_ns()), dim),
                CCol::Ext => Cell::from(Span::styled(format::truncate(&negotiated(r), usize::from(*w)), dim)),
                CCol::Blind => {
                    let n = r.view.as_ref().map_or(0, |v| v.unanalysed.total());
                    num(format::bytes(n), if n > 0 { Style::new().fg(WARN) } else { Style::new().fg(DIM) })
                }
                CCol::Age => {
                    num(r.view.as_ref().map_or_else(|| "-".to_string(), |v| format::ago(data.now_ns, v.opened_ns)), dim)
                }
            }))
        })
        .collect();
    render_table(frame, inner, &fitted, table_rows, selected, d.ui.focus == Pane::Connections, |c| {
        matches!(c, CCol::Client | CCol::Server | CCol::Viol | CCol::Close | CCol::Last | CCol::Age | CCol::Blind)
    });
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FCol {
    Time,
    Conn,
    From,
    Kind,
    Header,
    Offset,
}

fn render_findings(d: &Dashboard, data: &Data, frame: &mut Frame, area: Rect, single: bool) {
    let rows = data.finding_rows(&d.ui.filter.applied, d.ui.finding_sort);
    let info = format!("{} kept · {} first", data.findings_len(), d.ui.finding_sort.name());
    let block = pane_block(d, Pane::Findings, info, single);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
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

fn finding_row(d: &Dashboard, data: &Data, r: &FindingRow, cols: &[(FCol, &'static str, u16)]) -> Row<'static> {
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

// ----- overlays --------------------------------------------------------------------------

/// A centred rectangle of at most `w` x `h` inside `area`, leaving a margin when it can.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let max_w = if area.width > 30 { area.width - 4 } else { area.width };
    let max_h = if area.height > 8 { area.height - 2 } else { area.height };
    let (w, h) = (w.min(max_w), h.min(max_h));
    Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h }
}

/// A label/value line for the details popup.
fn kv(label: &str, value: Vec<Span<'static>>) -> Line<'static> {
    let mut spans = vec![Span::styled(format!("{label:<LABEL$}"), Style::new().fg(ACCENT).bold())];
    spans.extend(value);
    Line::from(spans)
}

/// Word-wraps a styled line at `width`; continuation lines are indented by `indent`
/// (the label column).
fn wrap_styled(line: &Line<'static>, width: usize, indent: usize) -> Vec<Line<'static>> {
    let width = width.max(1);
    let indent = if indent + 8 <= width { indent } else { 0 };
    let avail = |first: bool| if first { width } else { width - indent };
    let chars: Vec<(char, Style)> =
        line.spans.iter().flat_map(|s| s.content.chars().map(move |c| (c, s.style))).collect();
    // Leading spaces (an empty label) are kept as they are.
    let lead = chars.iter().take_while(|(c, _)| *c == ' ').count();
    let (lead, body) = chars.split_at(lead.min(chars.len()));
    let mut rows: Vec<Vec<(char, Style)>> = Vec::new();
    let mut cur: Vec<(char, Style)> = lead.to_vec();
    let mut need_sep = false;
    for word in body.split(|(c, _)| *c == ' ') {
        let sep = usize::from(need_sep);
        if cur.len() + sep + word.len() <= avail(rows.is_empty()) {
            if need_sep {
                cur.push((' ', Style::new()));
            }
            cur.extend_from_slice(word);
            need_sep = true;
            continue;
        }
        if !cur.is_empty() {
            rows.push(std::mem::take(&mut cur));
        }
        need_sep = true;
        let mut rest = word;
        loop {
            let limit = avail(rows.is_empty());
            if rest.len() <= limit {
                cur = rest.to_vec();
                break;
            }
            let (head, tail) = rest.split_at(limit);
            rows.push(head.to_vec());
            rest = tail;
        }
    }
    rows.push(cur);
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            let mut spans: Vec<Span<'static>> = Vec::new();
            if i > 0 && indent > 0 {
                spans.push(Span::raw(" ".repeat(indent)));
            }
            let mut text = String::new();
            let mut style: Option<Style> = None;
            for (c, st) in row {
                if style.is_some_and(|s| s != st) {
                    spans.push(Span::styled(std::mem::take(&mut text), style.unwrap_or_default()));
                }
                style = Some(st);
                text.push(c);
            }
            if !text.is_empty() {
                spans.push(Span::styled(text, style.unwrap_or_default()));
            }
            Line::from(spans)
        })
        .collect()
}

/// A bordered popup over `area`, as tall as its (wrapped) content allows.
fn render_popup(
    frame: &mut Frame,
    area: Rect,
    title: String,
    lines: Vec<Line<'static>>,
    max_width: u16,
    indent: usize,
) {
    let rect = centered(area, max_width, area.height);
    let inner_w = usize::from(rect.width.saturating_sub(2)).max(1);
    let lines: Vec<Line<'static>> = lines.iter().flat_map(|l| wrap_styled(l, inner_w, indent)).collect();
    let height = u16::try_from(lines.len().saturating_add(2)).unwrap_or(u16::MAX);
    let rect = centered(area, max_width, height);
    frame.render_widget(Clear, rect);
    let block = Block::new()
        .borders(Borders::ALL)
        .border_type(BorderType::Double)
        .border_style(Style::new().fg(ACCENT))
        .title(Line::from(Span::styled(format!(" {title} "), Style::new().bold())))
        .title_bottom(Line::from(Span::styled(" Enter/Esc close ", Style::new().fg(DIM))).right_aligned());
    frame.render_widget(Paragraph::new(lines).block(block), rect);
}

fn render_details(d: &Dashboard, data: &Data, frame: &mut Frame, area: Rect) {
    let filter = &d.ui.filter.applied;
    let (title, lines) = match d.ui.focus {
        Pane::Violations => {
            let kinds: Vec<Kind> = data.kind_rows(filter, d.ui.kind_sort).iter().map(|r| r.kind).collect();
            match d.ui.sel_kind.current(&kinds) {
                Some(k) => (format!("Violation {}", k.name()), kind_details(d, data, k)),
                None => ("Violations".to_string(), vec![Line::from("no violation selected")]),
            }
        }
        Pane::Connections => {
            let ids: Vec<_> = data.conn_rows(filter, d.ui.conn_sort).iter().map(|r| r.id).collect();
            match d.ui.sel_conn.current(&ids).and_then(|id| data.conn(id)) {
                Some(r) => (format!("Connection {}", r.id.0), conn_details(data, r)),
                None => ("Connections".to_string(), vec![Line::from("no connection selected")]),
            }
        }
        Pane::Findings => {
            let seqs: Vec<u64> = data.finding_rows(filter, d.ui.finding_sort).iter().map(|r| r.seq).collect();
            match d.ui.sel_finding.current(&seqs).and_then(|s| data.finding_by_seq(s)) {
                Some(r) => (format!("Finding {}", r.finding.kind.name()), finding_details(d, data, r)),
                None => ("Findings".to_string(), vec![Line::from("no finding selected")]),
            }
        }
    };
    render_popup(frame, area, title, lines, 100, LABEL);
}

fn category_name(k: Kind) -> &'static str {
    match k.category() {
        crate::engine::Category::Handshake => "handshake",
        crate::engine::Category::Frame => "frame header",
        crate::engine::Category::Payload => "payload",
        crate::engine::Category::Stream => "stream",
        crate::engine::Category::Close => "close analysis",
        crate::engine::Category::Proxy => "proxy",
    }
}

fn kind_details(d: &Dashboard, data: &Data, k: Kind) -> Vec<Line<'static>> {
    let r = data.kind_row(k);
    let mut lines = vec![
        kv(
            "kind",
            vec![Span::styled(k.name(), Style::new().fg(BAD).bold()), Span::raw(format!("  ({})", category_name(k)))],
        ),
        kv("meaning", vec![Span::raw(k.meaning())]),
        kv("likely cause", vec![Span::raw(k.likely_cause())]),
        kv(
            "count",
            vec![Span::raw(format!(
                "{} (client→server {}, server→client {}) · {} over the last {RATE_WINDOW_SECS} s · last {}",
                format::count(r.total()),
                format::count(r.client),
                format::count(r.server),
                format::rate(r.rate),
                r.last_active_ns.map_or_else(|| "-".to_string(), |t| format::ago(data.now_ns, t)),
            ))],
        ),
    ];
    let conns = data.conns_with(k, 5);
    if conns.is_empty() {
        lines.push(kv("connections", vec![Span::styled("none kept", Style::new().fg(DIM))]));
    }
    for (i, c) in conns.iter().enumerate() {
        let label = if i == 0 { "connections" } else { "" };
        lines.push(kv(label, vec![Span::raw(format!("{} ({})", c.label, c.state_label()))]));
    }
    for (i, f) in data.recent_findings_of(k, 3).iter().enumerate() {
        let label = if i == 0 { "examples" } else { "" };
        let f = &f.finding;
        lines.push(kv(
            label,
            vec![Span::raw(format!(
                "{}  {} from {}  {}",
                format::event_time(f.ts_ns, data.started_ns, d.epoch_offset_ns),
                f.key.client,
                f.dir.name(),
                format::spaced_hex(&f.header)
            ))],
        ));
    }
    lines
}

fn conn_details(data: &Data, r: &ConnRow) -> Vec<Line<'static>> {
    let mut lines = vec![kv("connection", vec![Span::raw(r.label.clone())])];
    let mut state = vec![Span::styled(r.state_label(), state_style(r).bold())];
    if let Some(g) = r.gone_ns {
        let last = r.view.as_ref().map_or("unknown", |v| state_name(v.state));
        state.push(Span::raw(format!(
            "  (left the engine {} ago; last state {last})",
            format::short_duration(data.now_ns.saturating_sub(g) / 1_000_000_000)
        )));
    }
    lines.push(kv("state", state));
    if let Some(v) = &r.view {
        let opening = match v.opening {
            Opening::Handshake => "from the TCP handshake",
            Opening::MidStream => "mid-stream (already open when capture started)",
            Opening::Resumed => "resumed after an eviction (negotiation kept)",
        };
        lines.push(kv("tracked", vec![Span::raw(opening)]));
    }
    lines.push(kv(
        "frames",
        vec![Span::raw(format!(
            "client→server {} · server→client {}",
            format::count(r.frames_dir(Direction::ToServer)),
            format::count(r.frames_dir(Direction::ToClient))
        ))],
    ));
    let kinds: Vec<&str> = r.kinds.iter().map(Kind::name).collect();
    let v = r.violations();
    let mut viol = vec![Span::styled(format::count(v), if v > 0 { Style::new().fg(BAD).bold() } else { Style::new() })];
    if !kinds.is_empty() {
        viol.push(Span::raw(format!("  {}", kinds.join(", "))));
    }
    lines.push(kv("violations", viol));
    if let Some(v) = &r.view {
        lines.push(kv(
            "close code",
            vec![Span::raw(v.last_close_code.map_or_else(|| "none seen".to_string(), |c| c.to_string()))],
        ));
        let mut neg = Vec::new();
        if v.deflate {
            neg.push("permessage-deflate".to_string());
        }
        if let Some(p) = &v.subprotocol {
            neg.push(format!("subprotocol {p}"));
        }
        if !neg.is_empty() {
            lines.push(kv("negotiated", vec![Span::raw(neg.join(" · "))]));
        }
        lines.push(kv("unanalysed", vec![Span::raw(unanalysed_text(&v.unanalysed))]));
        if let Some(h) = &v.handshake {
            let mut req = vec![h.request.line.clone()];
            req.extend(h.request.host.as_ref().map(|x| format!("Host {x}")));
            req.extend(h.request.origin.as_ref().map(|x| format!("Origin {x}")));
            req.extend(h.status.map(|s| format!("→ {s}")));
            lines.push(kv("request", vec![Span::raw(req.join(" · "))]));
            if let Some(ua) = &h.request.user_agent {
                lines.push(kv("user agent", vec![Span::raw(ua.clone())]));
            }
            if let Some(fwd) = &h.request.forwarded {
                lines.push(kv("forwarded for", vec![Span::raw(fwd.clone())]));
            }
        }
        if v.closes.iter().any(Option::is_some) {
            let side = |d: Direction| {
                let code = v
                    .closes
                    .get(d.index())
                    .cloned()
                    .flatten()
                    .map(|c| c.code.map_or("no code".into(), |c| c.to_string()));
                format!("{} {}", d.name(), code.unwrap_or_else(|| "-".into()))
            };
            let first = v.first_close.map_or(String::new(), |d| format!(" ({} first)", d.name()));
            lines.push(kv(
                "close",
                vec![Span::raw(format!("{} · {}{first}", side(Direction::ToServer), side(Direction::ToClient)))],
            ));
        }
        lines.push(kv(
            "activity",
            vec![Span::raw(format!(
                "opened {} ago · last {} ago",
                format::ago(data.now_ns, v.opened_ns),
                format::ago(data.now_ns, r.last_active_ns())
            ))],
        ));
    }
    lines
}

fn finding_details(d: &Dashboard, data: &Data, r: &FindingRow) -> Vec<Line<'static>> {
    let f = &r.finding;
    let mut lines = vec![
        kv("time", vec![Span::raw(format::event_time(f.ts_ns, data.started_ns, d.epoch_offset_ns))]),
        kv("connection", vec![Span::raw(format!("{} → {}  (id {})", f.key.client, f.key.server, f.id.0))]),
        kv(
            "from",
            vec![Span::raw(format!(
                "{} (bytes {})",
                f.dir.name(),
                match f.dir {
                    Direction::ToServer => "client → server",
                    Direction::ToClient => "server → client",
                }
            ))],
        ),
        kv(
            "kind",
            vec![
                Span::styled(f.kind.name(), Style::new().fg(BAD).bold()),
                Span::raw(format!("  ({})", category_name(f.kind))),
            ],
        ),
        kv("offset", vec![Span::raw(format!("byte {} of the stream", f.offset))]),
        kv("header", vec![Span::styled(format::spaced_hex(&f.header), Style::new().fg(ACCENT))]),
    ];
    if let Some(dec) = format::decode_header(&f.header) {
        lines.push(kv("decoded", vec![Span::raw(dec)]));
    }
    lines.push(kv("meaning", vec![Span::raw(f.kind.meaning())]));
    lines.push(kv("likely cause", vec![Span::raw(f.kind.likely_cause())]));
    lines
}

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

fn render_help(frame: &mut Frame, area: Rect) {
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
