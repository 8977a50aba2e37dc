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

mod connections;
mod details;
mod findings;
mod header;
mod help;
mod panels;
mod table;
mod violations;

use connections::*;
use details::*;
use findings::*;
use header::*;
use help::*;
use panels::*;
use table::*;
use violations::*;

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

pub(super) fn render(dashboard: &Dashboard, frame: &mut Frame) {
    let area = frame.area();
    if area.width == 0 || area.height == 0 {
        return;
    }
    let data = dashboard.shown();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        render_tiny(dashboard, data, frame, area);
        return;
    }
    let header_height = if area.height >= 16 { 3 } else { 2 };
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(header_height), Constraint::Min(0), Constraint::Length(1)]).areas(area);
    render_header(dashboard, data, frame, header);
    render_footer(dashboard, frame, footer);
    // The Diagnosis panel above the panes, while there is something to say (that the
    // filter lets through) and room beyond what the three panes want.
    let filter = dashboard.ui.filter.applied.to_lowercase();
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
        let v_height = violations_height(dashboard, data, body);
        let [v, c, f] =
            Layout::vertical([Constraint::Length(v_height), Constraint::Fill(1), Constraint::Fill(1)]).areas(body);
        render_violations(dashboard, data, frame, v, false);
        render_connections(dashboard, data, frame, c, false);
        render_findings(dashboard, data, frame, f, false);
    } else {
        match dashboard.ui.focus {
            Pane::Violations => render_violations(dashboard, data, frame, body, true),
            Pane::Connections => render_connections(dashboard, data, frame, body, true),
            Pane::Findings => render_findings(dashboard, data, frame, body, true),
        }
    }
    if dashboard.ui.details {
        render_details(dashboard, data, frame, area);
    }
    if dashboard.ui.help {
        render_help(frame, area);
    }
}

/// Rows of the violations pane in the three-pane layout: what its table and the
/// meaning need, within 6 rows and 55% of the body.
fn violations_height(dashboard: &Dashboard, data: &Data, body: Rect) -> u16 {
    let kinds: Vec<Kind> =
        data.kind_rows(&dashboard.ui.filter.applied, dashboard.ui.kind_sort).iter().map(|r| r.kind).collect();
    // Borders, then the table header, rows, rule and the selected kind's meaning; or
    // the two-line message.
    let want = match dashboard.ui.sel_kind.current(&kinds) {
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
