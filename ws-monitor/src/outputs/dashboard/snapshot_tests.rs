//! Snapshot tests of every view, rendered into a ratatui `TestBackend` from engine state
//! built by feeding real handshakes and frames (see [`super::fixture`]).

use crossterm::event::KeyCode;
use insta::assert_snapshot;

use super::fixture::{calm, chat, incident, proxied, render, unmasked, C};

#[test]
fn overview_violations_selected_with_meaning() {
    let w = incident();
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn violations_second_kind_selected() {
    let mut w = incident();
    w.key(KeyCode::Char('j'));
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn connections_pane_focused() {
    let mut w = incident();
    w.keys(&[KeyCode::Tab, KeyCode::Down]);
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn findings_pane_focused() {
    let mut w = incident();
    w.keys(&[KeyCode::Tab, KeyCode::Tab]);
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn help_overlay() {
    let mut w = incident();
    w.key(KeyCode::Char('?'));
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn proxy_hops_panel_blames_the_proxy_that_strips_the_extension() {
    let w = proxied();
    assert_snapshot!(render(&w.dash, 120, 50).backend());
}

#[test]
fn details_of_kind() {
    let mut w = incident();
    w.key(KeyCode::Enter);
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn details_of_connection() {
    let mut w = incident();
    w.keys(&[KeyCode::Tab, KeyCode::Char('s'), KeyCode::Enter]);
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn details_of_finding() {
    let mut w = incident();
    w.keys(&[KeyCode::Tab, KeyCode::Tab, KeyCode::Enter]);
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn paused_view_is_frozen() {
    let mut w = incident();
    w.key(KeyCode::Char(' '));
    let frozen = render(&w.dash, 100, 30).backend().to_string();
    // Counting goes on underneath: another unmasked frame and ten more seconds.
    w.send(2, C, &unmasked(b"again"));
    w.at(100_000);
    let later = render(&w.dash, 100, 30);
    assert_eq!(later.backend().to_string(), frozen, "the paused view must not move");
    assert_snapshot!(later.backend());
}

#[test]
fn filtered_by_text() {
    let mut w = incident();
    w.key(KeyCode::Char('/'));
    for c in "close".chars() {
        w.key(KeyCode::Char(c));
    }
    w.key(KeyCode::Enter);
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn filter_being_typed() {
    let mut w = incident();
    w.key(KeyCode::Char('/'));
    for c in "mask".chars() {
        w.key(KeyCode::Char(c));
    }
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn reset_counters() {
    let mut w = incident();
    w.key(KeyCode::Char('r'));
    // Five more seconds of traffic, one new violation.
    for s in 90..95 {
        w.at(s * 1000 + 100);
        chat(&mut w, s);
        if s == 93 {
            w.send(2, C, &unmasked(b"after the reset"));
        }
    }
    w.at(95_000);
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn calm_no_violations() {
    let w = calm();
    assert_snapshot!(render(&w.dash, 100, 30).backend());
}

#[test]
fn small_terminal_40x12() {
    let w = incident();
    assert_snapshot!(render(&w.dash, 40, 12).backend());
}

#[test]
fn small_terminal_40x12_connections() {
    let mut w = incident();
    w.key(KeyCode::Tab);
    assert_snapshot!(render(&w.dash, 40, 12).backend());
}

#[test]
fn medium_terminal_80x24() {
    let w = incident();
    assert_snapshot!(render(&w.dash, 80, 24).backend());
}

#[test]
fn wide_terminal_160x40() {
    let w = incident();
    assert_snapshot!(render(&w.dash, 160, 40).backend());
}

#[test]
fn tiny_terminal_20x4() {
    let w = incident();
    assert_snapshot!(render(&w.dash, 20, 4).backend());
}
