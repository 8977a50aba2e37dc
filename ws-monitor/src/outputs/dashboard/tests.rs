//! Unit tests of the model (rates, history, reset, filter, sort, retention), the keys,
//! and robustness (any key sequence, any terminal size).

use std::net::SocketAddr;

use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use proptest::prelude::*;
use ratatui::style::{Color, Modifier};

use super::fixture::{self, incident, render, text, unmasked, Canvas, C, NS, START};
use super::model::{
    ConnSort, Data, FindingSort, KindSort, CLOSED_CAP, CLOSED_RETENTION_NS, FINDINGS_CAP, HISTORY_SECS,
};
use super::state::Pane;
use super::*;
use crate::engine::{ConnState, ConnectionView, EngineStats, Finding, FrameHeaderBytes, Kind};
use crate::flow::{Direction, FlowId, FlowKey, Opening};

// ----- helpers ---------------------------------------------------------------------------

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn ctrl(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
}

fn flow_key(n: u16) -> FlowKey {
    FlowKey {
        client: SocketAddr::from(([10, 0, 0, (n % 250) as u8 + 1], 40_000 + n)),
        server: SocketAddr::from(([10, 0, 0, 254], 8001)),
    }
}

fn view(n: u16, state: ConnState, frames: [u64; 2], violations: u64, last_ns: u64) -> ConnectionView {
    ConnectionView {
        key: flow_key(n),
        opening: Opening::Handshake,
        iface: 0,
        state,
        frames,
        violations,
        last_close_code: None,
        deflate: false,
        subprotocol: None,
        opened_ns: START,
        last_ns,
        unanalysed: Default::default(),
        messages: [0; 2],
        tally: Default::default(),
        closes: [None, None],
        first_close: None,
        last_data_ns: last_ns,
        handshake: None,
        kinds: Default::default(),
        lost_sync: false,
        last_violation: [None; 2],
        last_message: [None; 2],
        ended_first: None,
    }
}

fn stats_with(kind: Kind, client: u64, server: u64) -> EngineStats {
    let mut s = EngineStats::default();
    s.violations[0][kind.index()] = client;
    s.violations[1][kind.index()] = server;
    s
}

fn finding(id: u64, kind: Kind, ts_ns: u64) -> Finding {
    Finding {
        ts_ns,
        id: FlowId(id),
        key: flow_key(id as u16),
        dir: Direction::ToServer,
        kind,
        offset: 0,
        header: FrameHeaderBytes::new(&[0x81, 0x05]),
        excerpt: crate::engine::Excerpt::EMPTY,
        detail: Default::default(),
    }
}

fn at(sec: u64) -> u64 {
    START + sec * NS
}

fn no_conns<'a>() -> std::iter::Empty<(FlowId, &'a ConnectionView)> {
    std::iter::empty()
}

// ----- capture rates ---------------------------------------------------------------------

#[test]
fn capture_rates_come_from_deltas_between_ticks() {
    let mut d = Data::new(START);
    let h = |p, b| CaptureHealth { packets: p, bytes_delivered: b, ..Default::default() };
    d.tick(at(1), h(100, 10_000), &EngineStats::default(), no_conns());
    assert_eq!((d.packets_per_s, d.bytes_per_s), (100.0, 10_000.0));
    d.tick(at(3), h(300, 12_000), &EngineStats::default(), no_conns());
    assert_eq!((d.packets_per_s, d.bytes_per_s), (100.0, 1_000.0));
    // Same instant again: the rate stays.
    d.tick(at(3), h(300, 12_000), &EngineStats::default(), no_conns());
    assert_eq!(d.packets_per_s, 100.0);
}

#[test]
fn coverage_is_delivered_over_delivered_plus_lost() {
    let h = CaptureHealth { bytes_delivered: 990, bytes_lost: 10, ..Default::default() };
    assert_eq!(h.coverage_pct(), Some(99.0));
    assert_eq!(CaptureHealth::default().coverage_pct(), None);
}

// ----- violation history -----------------------------------------------------------------

#[test]
fn history_has_one_bucket_per_second_and_the_rate_covers_ten_seconds() {
    let mut d = Data::new(START);
    let k = Kind::ReservedOpcode;
    d.tick(at(1), CaptureHealth::default(), &stats_with(k, 2, 0), no_conns());
    d.tick(at(2), CaptureHealth::default(), &stats_with(k, 2, 3), no_conns());
    // Ticks skip seconds 3..=5: they are empty seconds.
    d.tick(at(6), CaptureHealth::default(), &stats_with(k, 4, 3), no_conns());
    assert_eq!(d.history.series(k), vec![2, 3, 0, 0, 0, 2]);
    // Two ticks within one second add to the same bucket.
    d.tick(at(6) + NS / 2, CaptureHealth::default(), &stats_with(k, 5, 3), no_conns());
    assert_eq!(d.history.series(k), vec![2, 3, 0, 0, 0, 3]);
    let row = d.kind_row(k);
    assert_eq!((row.client, row.server), (5, 3));
    // 8 findings over 6 seconds counted so far.
    assert!((row.rate - 8.0 / 6.0).abs() < 1e-9, "{}", row.rate);
    d.tick(at(20), CaptureHealth::default(), &stats_with(k, 5, 3), no_conns());
    assert_eq!(d.kind_row(k).rate, 0.0, "nothing in the last 10 s");
    d.tick(at(21), CaptureHealth::default(), &stats_with(k, 15, 3), no_conns());
    assert_eq!(d.kind_row(k).rate, 1.0);
}

#[test]
fn history_is_bounded_to_five_minutes() {
    let mut d = Data::new(START);
    let k = Kind::OrphanContinuation;
    for s in 1..=(HISTORY_SECS as u64 + 50) {
        d.tick(at(s), CaptureHealth::default(), &stats_with(k, s, 0), no_conns());
    }
    assert_eq!(d.history.len(), HISTORY_SECS);
    assert!(d.history.series(k).iter().all(|&n| n == 1));
    // A jump longer than the history clears it.
    d.tick(at(2000), CaptureHealth::default(), &stats_with(k, 2000, 0), no_conns());
    let series = d.history.series(k);
    assert_eq!(series.len(), HISTORY_SECS);
    assert_eq!(series.iter().sum::<u64>(), 2000 - (HISTORY_SECS as u64 + 50));
}

#[test]
fn sparkline_follows_the_history() {
    use super::format::{secs_per_char, sparkline};
    assert_eq!(sparkline(&[], 4, 1), "    ");
    assert_eq!(sparkline(&[0, 1, 0, 8], 4, 1), " ▁ █");
    // Two seconds per character, most recent on the right, partial cells on the left.
    assert_eq!(sparkline(&[4, 4, 0, 0, 1, 0], 4, 2), " █ ▁");
    assert_eq!(secs_per_char(300, 60), 5);
    assert_eq!(secs_per_char(300, 0), 1);
    let mut d = Data::new(START);
    let k = Kind::ControlTooLong;
    for s in 1..=4 {
        d.tick(at(s), CaptureHealth::default(), &stats_with(k, s * s, 0), no_conns());
    }
    assert_eq!(sparkline(&d.history.series(k), 4, 1), "▂▄▆█", "deltas 1, 3, 5, 7");
}

// ----- reset -----------------------------------------------------------------------------

#[test]
fn reset_subtracts_a_baseline_from_counts_rates_history_and_connections() {
    let mut d = Data::new(START);
    let k = Kind::MaskedServerFrame;
    let health = CaptureHealth { packets: 50, bytes_delivered: 900, bytes_lost: 100, gaps: 2, ring_drops: 1 };
    let v = view(1, ConnState::Open, [10, 20], 4, at(1));
    let mut stats = stats_with(k, 0, 4);
    stats.upgrades_ok = 3;
    stats.connections = 3;
    d.tick(at(1), health, &stats, [(FlowId(1), &v)].into_iter());
    assert_eq!(d.violations_total(), 4);
    d.reset();
    assert_eq!(d.violations_total(), 0);
    assert_eq!(d.kind_rows("", KindSort::Recent), vec![]);
    assert_eq!(d.kind_row(k).rate, 0.0);
    assert!(d.history.is_empty());
    assert_eq!(d.health(), CaptureHealth::default());
    assert_eq!((d.upgrades_ok(), d.connections_opened()), (0, 0));
    let row = d.conn(FlowId(1)).unwrap();
    assert_eq!((row.frames(), row.violations()), ([0, 0], 0));

    // Counting resumes from the baseline.
    let v = view(1, ConnState::Open, [11, 25], 5, at(2));
    let health2 = CaptureHealth { packets: 60, bytes_delivered: 1000, ..health };
    d.tick(at(2), health2, &stats_with(k, 0, 5), [(FlowId(1), &v)].into_iter());
    assert_eq!(d.violations(Direction::ToClient, k), 1);
    assert_eq!(d.history.series(k), vec![1]);
    assert_eq!(d.health().packets, 10);
    assert_eq!(d.health().coverage_pct(), Some(100.0));
    let row = d.conn(FlowId(1)).unwrap();
    assert_eq!((row.frames(), row.violations()), ([1, 5], 1));
}

#[test]
fn reset_key_resets_the_shown_view_too() {
    let mut w = incident();
    assert!(text(&w.dash, 100, 30).contains("19 violations"));
    w.key(KeyCode::Char('r'));
    let after = text(&w.dash, 100, 30);
    assert!(after.contains("✓ no violations"), "{after}");
    // Paused: r resets underneath and in the frozen view.
    let mut w = incident();
    w.keys(&[KeyCode::Char(' '), KeyCode::Char('r')]);
    assert!(text(&w.dash, 100, 30).contains("✓ no violations"));
    assert!(w.dash.is_paused());
}

// ----- filter and sort -------------------------------------------------------------------

#[test]
fn filter_matches_kinds_connections_and_findings_by_substring() {
    let w = incident();
    let d = &w.dash.live;
    let kinds = |f: &str| d.kind_rows(f, KindSort::Name).iter().map(|r| r.kind).collect::<Vec<_>>();
    assert_eq!(kinds("MASK"), vec![Kind::MaskedServerFrame, Kind::UnmaskedClientFrame]);
    assert_eq!(kinds("nothing like it"), vec![]);
    assert_eq!(kinds("").len(), 6);
    // Connections by address, by state, and by the kinds seen on them.
    let conns = |f: &str| d.conn_rows(f, ConnSort::Address).iter().map(|r| r.id.0).collect::<Vec<_>>();
    assert_eq!(conns("10.0.0.5:"), vec![5]);
    assert_eq!(conns("2001:db8"), vec![6]);
    assert_eq!(conns("desync"), vec![6]);
    assert_eq!(conns("not-ws"), vec![4, 5]);
    assert_eq!(conns("masked"), vec![2, 3]);
    // Findings by kind, connection, direction or header hex.
    let findings = |f: &str| d.finding_rows(f, FindingSort::Oldest).iter().map(|r| r.finding.kind).collect::<Vec<_>>();
    assert_eq!(findings("invalid_close"), vec![Kind::InvalidCloseCode]);
    assert_eq!(findings("10.0.0.4"), vec![Kind::TlsOnPlainPort]);
    assert_eq!(findings("server"), vec![Kind::HandshakeRejected, Kind::MaskedServerFrame]);
    assert_eq!(findings("888237fa"), vec![Kind::InvalidCloseCode]);
}

#[test]
fn filter_keys_type_apply_and_clear() {
    let mut w = incident();
    w.key(KeyCode::Char('/'));
    for c in "tlsx".chars() {
        w.key(KeyCode::Char(c));
    }
    w.key(KeyCode::Backspace);
    // Typing does not apply yet; keys are text ('q' does not quit).
    assert_eq!(w.dash.filter(), "");
    assert_eq!(w.dash.on_key(key(KeyCode::Char('q'))), Control::Continue);
    w.key(KeyCode::Backspace);
    w.key(KeyCode::Enter);
    assert_eq!(w.dash.filter(), "tls");
    let shown = text(&w.dash, 100, 30);
    assert!(shown.contains("tls_on_plain_port") && !shown.contains("rsv_without_extension"), "{shown}");
    // '/' again starts from the applied text; Esc clears it.
    w.key(KeyCode::Char('/'));
    assert_eq!(w.dash.ui.filter.editing.as_deref(), Some("tls"));
    w.key(KeyCode::Esc);
    assert_eq!(w.dash.filter(), "");
    assert!(w.dash.ui.filter.editing.is_none());
    // Esc outside editing clears an applied filter too; Ctrl-U clears the typed text.
    w.keys(&[KeyCode::Char('/'), KeyCode::Char('x'), KeyCode::Enter]);
    assert_eq!(w.dash.filter(), "x");
    w.key(KeyCode::Esc);
    assert_eq!(w.dash.filter(), "");
    w.keys(&[KeyCode::Char('/'), KeyCode::Char('x')]);
    w.dash.on_key(ctrl('u'));
    assert_eq!(w.dash.ui.filter.editing.as_deref(), Some(""));
}

#[test]
fn sort_key_cycles_the_focused_pane() {
    let mut w = incident();
    let order = |w: &fixture::Wire| w.dash.ui.kinds(&w.dash.live);
    assert_eq!(w.dash.ui.kind_sort, KindSort::Recent);
    assert_eq!(order(&w).first(), Some(&Kind::RsvWithoutExtension));
    assert_eq!(order(&w).last(), Some(&Kind::TlsOnPlainPort), "the oldest");
    w.key(KeyCode::Char('s'));
    assert_eq!(w.dash.ui.kind_sort, KindSort::Total);
    w.key(KeyCode::Char('s'));
    assert_eq!(w.dash.ui.kind_sort, KindSort::Rate);
    w.key(KeyCode::Char('s'));
    assert_eq!(w.dash.ui.kind_sort, KindSort::Name);
    assert_eq!(order(&w).first(), Some(&Kind::HandshakeRejected));
    w.key(KeyCode::Char('s'));
    assert_eq!(w.dash.ui.kind_sort, KindSort::Recent);

    w.key(KeyCode::Tab);
    let conns = |w: &fixture::Wire| w.dash.ui.conns(&w.dash.live).iter().map(|i| i.0).collect::<Vec<_>>();
    assert_eq!(conns(&w).first(), Some(&1), "most recently active");
    w.key(KeyCode::Char('s'));
    assert_eq!(w.dash.ui.conn_sort, ConnSort::Violations);
    assert_eq!(conns(&w).first(), Some(&2));
    w.key(KeyCode::Char('s'));
    assert_eq!(w.dash.ui.conn_sort, ConnSort::Frames);
    assert_eq!(conns(&w).first(), Some(&1));
    w.key(KeyCode::Char('s'));
    assert_eq!(w.dash.ui.conn_sort, ConnSort::Address);
    assert_eq!(conns(&w), vec![1, 2, 3, 4, 5, 7, 6]);
    assert_eq!(w.dash.ui.kind_sort, KindSort::Recent, "only the focused pane changes");

    w.key(KeyCode::Tab);
    let first = |w: &fixture::Wire| w.dash.ui.findings(&w.dash.live).first().copied();
    assert_eq!(first(&w), Some(18), "newest first");
    w.key(KeyCode::Char('s'));
    assert_eq!(first(&w), Some(0), "oldest first");
}

// ----- connections -----------------------------------------------------------------------

#[test]
fn connections_that_leave_the_engine_stay_visible_as_closed_for_a_while() {
    let mut d = Data::new(START);
    let stats = EngineStats::default();
    let a = view(1, ConnState::Open, [3, 4], 0, at(1));
    let b = view(2, ConnState::Closing, [1, 1], 0, at(1));
    d.tick(at(1), CaptureHealth::default(), &stats, [(FlowId(1), &a), (FlowId(2), &b)].into_iter());
    d.tick(at(2), CaptureHealth::default(), &stats, [(FlowId(1), &a)].into_iter());
    let gone = d.conn(FlowId(2)).unwrap();
    assert_eq!((gone.state_label(), gone.gone_ns, gone.frames()), ("closed", Some(at(2)), [1, 1]));
    assert_eq!(d.conn_counts(), (1, 1));
    d.tick(at(2) + CLOSED_RETENTION_NS, CaptureHealth::default(), &stats, [(FlowId(1), &a)].into_iter());
    assert!(d.conn(FlowId(2)).is_some(), "kept for the retention time");
    d.tick(at(3) + CLOSED_RETENTION_NS, CaptureHealth::default(), &stats, [(FlowId(1), &a)].into_iter());
    assert!(d.conn(FlowId(2)).is_none(), "then dropped");
    assert_eq!(d.conn(FlowId(1)).unwrap().state_label(), "open");
}

#[test]
fn closed_connections_are_capped_oldest_first() {
    let mut d = Data::new(START);
    let stats = EngineStats::default();
    let extra = 50;
    let views: Vec<(FlowId, ConnectionView)> = (0..(CLOSED_CAP + extra) as u64)
        .map(|i| (FlowId(i), view(i as u16, ConnState::Open, [0, 0], 0, at(1))))
        .collect();
    d.tick(at(1), CaptureHealth::default(), &stats, views.iter().map(|(i, v)| (*i, v)));
    // The first `extra` go away one tick earlier than the rest.
    d.tick(at(2), CaptureHealth::default(), &stats, views.iter().skip(extra).map(|(i, v)| (*i, v)));
    d.tick(at(3), CaptureHealth::default(), &stats, no_conns());
    assert_eq!(d.conn_counts(), (0, CLOSED_CAP));
    assert!((0..extra as u64).all(|i| d.conn(FlowId(i)).is_none()));
    assert!(d.conn(FlowId(extra as u64)).is_some());
}

#[test]
fn a_connection_known_only_from_a_finding_is_shown_and_then_closed() {
    let mut d = Data::new(START);
    d.tick(at(1), CaptureHealth::default(), &EngineStats::default(), no_conns());
    d.finding(&finding(9, Kind::HttpInStream, at(1) + 5));
    let row = d.conn(FlowId(9)).unwrap();
    assert_eq!((row.state_label(), row.violations(), row.is_gone()), ("new", 1, false));
    d.tick(at(2), CaptureHealth::default(), &EngineStats::default(), no_conns());
    assert_eq!(d.conn(FlowId(9)).unwrap().state_label(), "closed");
    assert!(d.conn(FlowId(9)).unwrap().kinds.contains(Kind::HttpInStream));
}

#[test]
fn findings_ring_is_bounded() {
    let mut d = Data::new(START);
    for i in 0..(FINDINGS_CAP as u64 + 10) {
        d.finding(&finding(1, Kind::ReservedOpcode, at(1) + i));
    }
    assert_eq!(d.findings_len(), FINDINGS_CAP);
    let rows = d.finding_rows("", FindingSort::Newest);
    assert_eq!(rows.first().map(|r| r.seq), Some(FINDINGS_CAP as u64 + 9));
    assert_eq!(rows.last().map(|r| r.seq), Some(10));
}

// ----- keys ------------------------------------------------------------------------------

#[test]
fn quit_keys() {
    let mut d = incident().dash;
    assert_eq!(d.on_key(key(KeyCode::Char('q'))), Control::Quit);
    assert_eq!(d.on_key(ctrl('c')), Control::Quit);
    // Ctrl-C quits while typing a filter and with the help open; q quits from the help.
    d.on_key(key(KeyCode::Char('/')));
    assert_eq!(d.on_key(ctrl('c')), Control::Quit);
    let mut d = incident().dash;
    d.on_key(key(KeyCode::Char('?')));
    assert_eq!(d.on_key(key(KeyCode::Char('q'))), Control::Quit);
    // Key releases are ignored.
    let mut release = key(KeyCode::Char('q'));
    release.kind = KeyEventKind::Release;
    assert_eq!(d.on_key(release), Control::Continue);
    assert_eq!(d.on_event(&Event::Resize(10, 10)), Control::Continue);
    assert_eq!(d.on_event(&Event::Key(key(KeyCode::Char('q')))), Control::Quit);
}

#[test]
fn help_opens_with_question_mark_and_any_key_closes_it() {
    let mut w = incident();
    w.key(KeyCode::Char('?'));
    assert!(w.dash.ui.help);
    assert!(text(&w.dash, 100, 30).contains("Keys"));
    w.key(KeyCode::Tab);
    assert!(!w.dash.ui.help);
    assert_eq!(w.dash.focus(), Pane::Violations, "the closing key is consumed");
}

#[test]
fn tab_and_shift_tab_switch_panes() {
    let mut w = incident();
    let mut seen = vec![w.dash.focus()];
    for _ in 0..3 {
        w.key(KeyCode::Tab);
        seen.push(w.dash.focus());
    }
    assert_eq!(seen, vec![Pane::Violations, Pane::Connections, Pane::Findings, Pane::Violations]);
    w.key(KeyCode::BackTab);
    assert_eq!(w.dash.focus(), Pane::Findings);
}

#[test]
fn movement_keys_move_the_selection_and_clamp() {
    let mut w = incident();
    let sel = |w: &fixture::Wire| w.dash.ui.sel_kind.current(&w.dash.ui.kinds(&w.dash.live));
    assert_eq!(sel(&w), Some(Kind::RsvWithoutExtension));
    w.key(KeyCode::Char('j'));
    assert_eq!(sel(&w), Some(Kind::UnmaskedClientFrame));
    w.key(KeyCode::Down);
    assert_eq!(sel(&w), Some(Kind::InvalidCloseCode));
    w.key(KeyCode::Up);
    w.key(KeyCode::Char('k'));
    w.key(KeyCode::Char('k'));
    assert_eq!(sel(&w), Some(Kind::RsvWithoutExtension), "clamped at the top");
    w.key(KeyCode::PageDown);
    assert_eq!(sel(&w), Some(Kind::TlsOnPlainPort), "clamped at the bottom");
    w.key(KeyCode::Char('g'));
    assert_eq!(sel(&w), Some(Kind::RsvWithoutExtension));
    w.key(KeyCode::End);
    assert_eq!(sel(&w), Some(Kind::TlsOnPlainPort));
    w.key(KeyCode::Home);
    w.key(KeyCode::Char('G'));
    w.key(KeyCode::PageUp);
    assert_eq!(sel(&w), Some(Kind::RsvWithoutExtension));
}

#[test]
fn the_selection_follows_its_item_when_rows_reorder() {
    let mut w = incident();
    w.key(KeyCode::Char('j'));
    assert_eq!(w.dash.ui.sel_kind.current(&w.dash.ui.kinds(&w.dash.live)), Some(Kind::UnmaskedClientFrame));
    // A new masked server frame makes masked_server_frame the most recent kind.
    w.at(90_500);
    w.send(1, fixture::S, &crate::testkit::Frame::text("x").mask([9, 9, 9, 9]).encode());
    w.at(91_000);
    let kinds = w.dash.ui.kinds(&w.dash.live);
    assert_eq!(kinds.first(), Some(&Kind::MaskedServerFrame));
    assert_eq!(w.dash.ui.sel_kind.current(&kinds), Some(Kind::UnmaskedClientFrame));
}

#[test]
fn enter_opens_details_and_enter_or_esc_close_them() {
    let mut w = incident();
    w.key(KeyCode::Enter);
    assert!(w.dash.ui.details);
    assert!(text(&w.dash, 100, 30).contains("Violation rsv_without_extension"));
    w.key(KeyCode::Enter);
    assert!(!w.dash.ui.details);
    w.keys(&[KeyCode::Tab, KeyCode::Enter]);
    assert!(text(&w.dash, 100, 30).contains("Connection 1"));
    // The popup follows the selection.
    w.key(KeyCode::Char('j'));
    assert!(text(&w.dash, 100, 30).contains("Connection 7"));
    w.key(KeyCode::Esc);
    assert!(!w.dash.ui.details);
}

#[test]
fn space_freezes_the_view_while_counting_goes_on() {
    let mut w = incident();
    w.key(KeyCode::Char(' '));
    assert!(w.dash.is_paused());
    let frozen = text(&w.dash, 120, 40);
    assert!(frozen.contains("PAUSED"));
    w.at(90_500);
    w.send(2, C, &unmasked(b"more"));
    w.at(95_000);
    assert_eq!(text(&w.dash, 120, 40), frozen);
    // Navigation still works on the frozen view.
    w.key(KeyCode::Char('j'));
    assert_ne!(text(&w.dash, 120, 40), frozen);
    w.key(KeyCode::Char(' '));
    assert!(!w.dash.is_paused());
    let live = text(&w.dash, 120, 40);
    assert!(live.contains("20 violations") && !live.contains("PAUSED"), "{live}");
}

#[test]
fn every_footer_key_is_handled() {
    // The footer's keys, each with an observable effect.
    let shown = text(&incident().dash, 100, 30);
    let footer = shown.lines().last().unwrap_or_default().to_string();
    for k in
        ["q quit", "? help", "Tab pane", "j/k move", "Enter details", "Space pause", "r reset", "/ filter", "s sort"]
    {
        assert!(footer.contains(k), "{k} missing from {footer}");
    }
    let mut w = incident();
    let before = format!("{:?}", w.dash.ui);
    for code in [
        KeyCode::Char('?'),
        KeyCode::Esc,
        KeyCode::Tab,
        KeyCode::Char('j'),
        KeyCode::Char('k'),
        KeyCode::Enter,
        KeyCode::Enter,
        KeyCode::Char(' '),
        KeyCode::Char(' '),
        KeyCode::Char('r'),
        KeyCode::Char('/'),
        KeyCode::Esc,
        KeyCode::Char('s'),
    ] {
        assert_eq!(w.dash.on_key(key(code)), Control::Continue, "{code:?}");
    }
    assert_ne!(format!("{:?}", w.dash.ui), before);
}

// ----- rendering details -----------------------------------------------------------------

#[test]
fn violations_are_highlighted_and_calm_is_green() {
    let t = render(&incident().dash, 100, 30);
    let buf = t.backend().buffer();
    // The client→server count of the first kind: "14" in red bold.
    let row = (0..buf.area.height).find(|&y| {
        (0..buf.area.width)
            .map(|x| buf[(x, y)].symbol().to_string())
            .collect::<String>()
            .contains("rsv_without_extension")
    });
    let y = row.unwrap();
    let line: String = (0..buf.area.width).map(|x| buf[(x, y)].symbol().to_string()).collect();
    let x = line.chars().position(|c| c == '4').unwrap() as u16;
    assert_eq!(buf[(x, y)].fg, Color::Red);
    assert!(buf[(x, y)].modifier.contains(Modifier::BOLD));

    let t = render(&fixture::calm().dash, 100, 30);
    let buf = t.backend().buffer();
    let y = (0..buf.area.height)
        .find(|&y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
                .contains("✓ no violations")
        })
        .unwrap();
    let x = (0..buf.area.width).find(|&x| buf[(x, y)].symbol() == "✓").unwrap();
    assert_eq!(buf[(x, y)].fg, Color::Green);
}

#[test]
fn finding_times_without_an_epoch_offset_are_relative_to_the_start() {
    use super::format::event_time;
    assert_eq!(event_time(START + 61 * NS + 5_000_000, START, None), "+00:01:01.005");
    assert_eq!(event_time(START, START, Some(super::fixture::EPOCH_OFFSET)), "09:26:40.000");
}

#[test]
fn formatting() {
    use super::format::*;
    assert_eq!(count(999_999), "999999");
    assert_eq!(count(1_234_567), "1.23M");
    assert_eq!(rate(0.0), "0");
    assert_eq!(rate(0.25), "0.2/s");
    assert_eq!(rate(42.0), "42/s");
    assert_eq!(rate(12_345.0), "12.3k/s");
    assert_eq!(bytes_rate(512.0), "512 B/s");
    assert_eq!(bytes_rate(1536.0), "1.50 KiB/s");
    assert_eq!(hms(3_723 * NS), "01:02:03");
    assert_eq!(hms(90_000 * NS), "1d 01:00:00");
    assert_eq!(short_duration(300), "5m");
    assert_eq!(short_duration(330), "5m30s");
    assert_eq!(ago(at(100), at(40)), "1m");
    assert_eq!(ago(at(1), at(5)), "now");
    assert_eq!(truncate("abcdef", 4), "abc…");
    assert_eq!(truncate("abc", 0), "");
    let h = FrameHeaderBytes::new(&[0xc1, 0xfe, 0x01, 0x00, 1, 2, 3, 4]);
    assert_eq!(spaced_hex(&h), "c1 fe 01 00 01 02 03 04");
    assert_eq!(decode_header(&h).unwrap(), "FIN=1 RSV=100 opcode=1 (text) MASK=1 length=256");
    assert_eq!(decode_header(&FrameHeaderBytes::EMPTY), None);
    assert_eq!(compact_hex(&FrameHeaderBytes::EMPTY), "-");
}

#[test]
fn sparkline_column_title_matches_the_history() {
    assert_eq!(HISTORY_SECS, 300);
    assert_eq!(super::view::SPARK_TITLE, "last 5 min");
}

// ----- robustness ------------------------------------------------------------------------

/// Dashboards in every overlay state, for the size sweeps.
fn states() -> Vec<Dashboard> {
    let base = incident().dash;
    let with = |keys: &[KeyCode]| {
        let mut d = base.clone();
        for k in keys {
            d.on_key(key(*k));
        }
        d
    };
    vec![
        base.clone(),
        Dashboard::new("lo", &[], START),
        fixture::calm().dash,
        with(&[KeyCode::Char('?')]),
        with(&[KeyCode::Enter]),
        with(&[KeyCode::Tab, KeyCode::Enter]),
        with(&[KeyCode::BackTab, KeyCode::Enter]),
        with(&[KeyCode::Char('/'), KeyCode::Char('z')]),
        with(&[KeyCode::Char('/'), KeyCode::Char('z'), KeyCode::Enter, KeyCode::Char(' ')]),
    ]
}

#[test]
fn renders_at_every_size_without_panicking() {
    // Rendering a 200x60 frame takes milliseconds in a debug build: every width and
    // every height, in the sizes where layouts change, plus a strided full grid.
    let states = states();
    let mut canvas = Canvas::new();
    for w in 1..=200u16 {
        for h in [1u16, 4, 5, 11, 12, 16, 23, 24, 60] {
            canvas.draw(&states[0], w, h);
        }
        for h in [3u16, 10, 30] {
            for d in &states[1..] {
                canvas.draw(d, w, h);
            }
        }
    }
    for h in 1..=60u16 {
        for w in [1u16, 2, 23, 24, 25, 40, 69, 70, 80, 200] {
            canvas.draw(&states[0], w, h);
        }
        for w in [30u16, 100] {
            for d in &states[1..] {
                canvas.draw(d, w, h);
            }
        }
    }
    for w in (1..=200u16).step_by(11) {
        for h in 1..=60u16 {
            canvas.draw(&states[4], w, h);
        }
    }
}

fn any_key() -> impl Strategy<Value = KeyEvent> {
    let code = prop_oneof![
        Just(KeyCode::Tab),
        Just(KeyCode::BackTab),
        Just(KeyCode::Enter),
        Just(KeyCode::Esc),
        Just(KeyCode::Backspace),
        Just(KeyCode::Up),
        Just(KeyCode::Down),
        Just(KeyCode::PageUp),
        Just(KeyCode::PageDown),
        Just(KeyCode::Home),
        Just(KeyCode::End),
        Just(KeyCode::Left),
        Just(KeyCode::F(1)),
        prop::sample::select(vec!['q', '?', 'j', 'k', 'g', 'G', ' ', 'r', '/', 's', 'a', '1', '.', 'é', '→'])
            .prop_map(KeyCode::Char),
    ];
    let mods = prop_oneof![
        4 => Just(KeyModifiers::NONE),
        1 => Just(KeyModifiers::SHIFT),
        1 => Just(KeyModifiers::CONTROL),
        1 => Just(KeyModifiers::ALT),
    ];
    let kind =
        prop_oneof![8 => Just(KeyEventKind::Press), 1 => Just(KeyEventKind::Repeat), 1 => Just(KeyEventKind::Release)];
    (code, mods, kind).prop_map(|(c, m, k)| {
        let mut e = KeyEvent::new(c, m);
        e.kind = k;
        e
    })
}

#[derive(Clone, Debug)]
enum Step {
    Key(KeyEvent),
    Tick(u64),
    Finding(u64, usize),
    Render(u16, u16),
}

fn any_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => any_key().prop_map(Step::Key),
        1 => (0u64..5_000).prop_map(Step::Tick),
        1 => (0u64..8, 0usize..Kind::COUNT).prop_map(|(id, k)| Step::Finding(id, k)),
        2 => (1u16..=200, 1u16..=60).prop_map(|(w, h)| Step::Render(w, h)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_size_renders(w in 1u16..=200, h in 1u16..=60, state in 0usize..9) {
        let states = states();
        let d = states.get(state % states.len()).unwrap();
        Canvas::new().draw(d, w, h);
    }

    #[test]
    fn no_key_sequence_panics(steps in prop::collection::vec(any_step(), 1..80)) {
        let mut d = incident().dash;
        let mut now = at(90);
        for step in steps {
            match step {
                Step::Key(k) => {
                    // Quit is the caller's business; the dashboard must stay usable.
                    let _ = d.on_key(k);
                }
                Step::Tick(ms) => {
                    now += ms * 1_000_000;
                    let v = view(3, ConnState::Desync, [1, 2], 1, now);
                    let stats = stats_with(Kind::ALL[(now % Kind::COUNT as u64) as usize], now % 7, now % 3);
                    d.on_tick(now, CaptureHealth::default(), &stats, [(FlowId(3), &v)].into_iter());
                }
                Step::Finding(id, k) => d.on_finding(&finding(id, Kind::ALL[k % Kind::COUNT], now)),
                Step::Render(w, h) => {
                    render(&d, w, h);
                }
            }
        }
        let shown = render(&d, 80, 24).backend().to_string();
        prop_assert!(shown.contains("ws-monitor"));
    }
}
