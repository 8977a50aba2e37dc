//! The details popup (Enter): of a kind, a connection or a finding.

use super::*;

/// A centred rectangle of at most `w` x `h` inside `area`, leaving a margin when it can.
pub(super) fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let max_w = if area.width > 30 { area.width - 4 } else { area.width };
    let max_h = if area.height > 8 { area.height - 2 } else { area.height };
    let (w, h) = (w.min(max_w), h.min(max_h));
    Rect { x: area.x + (area.width - w) / 2, y: area.y + (area.height - h) / 2, width: w, height: h }
}

/// A label/value line for the details popup.
pub(super) fn kv(label: &str, value: Vec<Span<'static>>) -> Line<'static> {
    let mut spans = vec![Span::styled(format!("{label:<LABEL$}"), Style::new().fg(ACCENT).bold())];
    spans.extend(value);
    Line::from(spans)
}

/// Word-wraps a styled line at `width`; continuation lines are indented by `indent`
/// (the label column).
pub(super) fn wrap_styled(line: &Line<'static>, width: usize, indent: usize) -> Vec<Line<'static>> {
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
pub(super) fn render_popup(
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

pub(super) fn render_details(dashboard: &Dashboard, data: &Data, frame: &mut Frame, area: Rect) {
    let filter = &dashboard.ui.filter.applied;
    let (title, lines) = match dashboard.ui.focus {
        Pane::Violations => {
            let kinds: Vec<Kind> = data.kind_rows(filter, dashboard.ui.kind_sort).iter().map(|r| r.kind).collect();
            match dashboard.ui.sel_kind.current(&kinds) {
                Some(k) => (format!("Violation {}", k.name()), kind_details(dashboard, data, k)),
                None => ("Violations".to_string(), vec![Line::from("no violation selected")]),
            }
        }
        Pane::Connections => {
            let ids: Vec<_> = data.conn_rows(filter, dashboard.ui.conn_sort).iter().map(|r| r.id).collect();
            match dashboard.ui.sel_conn.current(&ids).and_then(|id| data.conn(id)) {
                Some(r) => (format!("Connection {}", r.id.0), conn_details(data, r)),
                None => ("Connections".to_string(), vec![Line::from("no connection selected")]),
            }
        }
        Pane::Findings => {
            let seqs: Vec<u64> = data.finding_rows(filter, dashboard.ui.finding_sort).iter().map(|r| r.seq).collect();
            match dashboard.ui.sel_finding.current(&seqs).and_then(|s| data.finding_by_seq(s)) {
                Some(r) => (format!("Finding {}", r.finding.kind.name()), finding_details(dashboard, data, r)),
                None => ("Findings".to_string(), vec![Line::from("no finding selected")]),
            }
        }
    };
    render_popup(frame, area, title, lines, 100, LABEL);
}

pub(super) fn category_name(k: Kind) -> &'static str {
    match k.category() {
        crate::engine::Category::Handshake => "handshake",
        crate::engine::Category::Frame => "frame header",
        crate::engine::Category::Payload => "payload",
        crate::engine::Category::Stream => "stream",
        crate::engine::Category::Close => "close analysis",
        crate::engine::Category::Proxy => "proxy",
    }
}

pub(super) fn kind_details(dashboard: &Dashboard, data: &Data, k: Kind) -> Vec<Line<'static>> {
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
                format::event_time(f.ts_ns, data.started_ns, dashboard.epoch_offset_ns),
                f.key.client,
                f.dir.name(),
                format::spaced_hex(&f.header)
            ))],
        ));
    }
    lines
}

pub(super) fn conn_details(data: &Data, r: &ConnRow) -> Vec<Line<'static>> {
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
            let mut req = vec![h.request.line.to_string()];
            req.extend(h.request.host.as_ref().map(|x| format!("Host {x}")));
            req.extend(h.request.origin.as_ref().map(|x| format!("Origin {x}")));
            req.extend(h.status.map(|s| format!("→ {s}")));
            lines.push(kv("request", vec![Span::raw(req.join(" · "))]));
            if let Some(ua) = &h.request.user_agent {
                lines.push(kv("user agent", vec![Span::raw(ua.to_string())]));
            }
            if let Some(fwd) = &h.request.forwarded {
                lines.push(kv("forwarded for", vec![Span::raw(fwd.to_string())]));
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

pub(super) fn finding_details(dashboard: &Dashboard, data: &Data, r: &FindingRow) -> Vec<Line<'static>> {
    let f = &r.finding;
    let mut lines = vec![
        kv("time", vec![Span::raw(format::event_time(f.ts_ns, data.started_ns, dashboard.epoch_offset_ns))]),
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
