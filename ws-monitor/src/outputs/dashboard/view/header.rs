//! The header (interface, ports, uptime, capture health), the footer (keys), and the one-line view of a tiny terminal.

use super::*;

/// The violation total as a badge: calm green when zero, red otherwise.
pub(super) fn violations_badge(data: &Data) -> Span<'static> {
    match data.violations_total() {
        0 => Span::styled("✓ no violations", Style::new().fg(GOOD)),
        1 => Span::styled("● 1 violation", Style::new().fg(BAD).bold()),
        n => Span::styled(format!("● {} violations", format::count(n)), Style::new().fg(BAD).bold()),
    }
}

pub(super) fn render_tiny(dashboard: &Dashboard, data: &Data, frame: &mut Frame, area: Rect) {
    let mut first = vec![Span::raw("ws-monitor ").bold()];
    if dashboard.is_paused() {
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
pub(super) fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{} {}", format::count(n), if n == 1 { one } else { many })
}

pub(super) fn sep() -> Span<'static> {
    Span::styled(" · ", Style::new().fg(DIM))
}

/// Below this width the header puts the alarms (violations, pause, losses) first.
pub(super) const COMPACT_HEADER: u16 = 70;

pub(super) fn render_header(dashboard: &Dashboard, data: &Data, frame: &mut Frame, area: Rect) {
    let compact = area.width < COMPACT_HEADER;
    let ports = dashboard.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let brand = Span::styled(" ws-monitor ", Style::new().fg(Color::Black).bg(ACCENT).bold());
    let mut place = vec![
        Span::raw(dashboard.iface.clone()).bold(),
        Span::raw(format!(" {} {ports}", if dashboard.ports.len() == 1 { "port" } else { "ports" })),
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
    if dashboard.is_paused() {
        alarms.push(Span::raw(" "));
        alarms.push(Span::styled(" PAUSED ", Style::new().fg(Color::Black).bg(WARN).bold()));
    }
    if !dashboard.ui.filter.applied.is_empty() {
        alarms.push(Span::raw(" "));
        alarms.push(Span::styled(format!("filter: {}", dashboard.ui.filter.applied), Style::new().fg(ACCENT)));
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

pub(super) fn render_footer(dashboard: &Dashboard, frame: &mut Frame, area: Rect) {
    let key = |k: &str| Span::styled(k.to_string(), Style::new().fg(Color::Black).bg(ACCENT));
    let label = |l: &str| Span::styled(format!(" {l}  "), Style::new().fg(DIM));
    let line = if let Some(text) = &dashboard.ui.filter.editing {
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
        let pause = if dashboard.is_paused() { "resume" } else { "pause" };
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
