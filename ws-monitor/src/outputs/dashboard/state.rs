//! Interaction state: focused pane, selections, filter, sort keys, overlays, pause.
//! Kept apart from [`Data`](super::model::Data) so a paused (frozen) view can still be
//! navigated.

use crate::engine::Kind;
use crate::flow::FlowId;

use super::model::{ConnSort, Data, FindingSort, KindSort};

/// The three panes, in Tab order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pane {
    #[default]
    Violations,
    Connections,
    Findings,
}

impl Pane {
    pub const ALL: [Pane; 3] = [Pane::Violations, Pane::Connections, Pane::Findings];

    pub fn next(self) -> Pane {
        match self {
            Pane::Violations => Pane::Connections,
            Pane::Connections => Pane::Findings,
            Pane::Findings => Pane::Violations,
        }
    }

    pub fn prev(self) -> Pane {
        match self {
            Pane::Violations => Pane::Findings,
            Pane::Connections => Pane::Violations,
            Pane::Findings => Pane::Connections,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Pane::Violations => "Violations",
            Pane::Connections => "Connections",
            Pane::Findings => "Recent findings",
        }
    }
}

/// A selection that follows its item when rows reorder, and falls back to the same
/// position when the item goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection<T> {
    pub item: Option<T>,
    /// Position of the item when last placed.
    pub index: usize,
}

impl<T> Default for Selection<T> {
    fn default() -> Self {
        Selection { item: None, index: 0 }
    }
}

impl<T: Copy + PartialEq> Selection<T> {
    /// Index of the selection in `rows` (`None` when `rows` is empty).
    pub fn resolve(&self, rows: &[T]) -> Option<usize> {
        if rows.is_empty() {
            return None;
        }
        let found = self.item.and_then(|it| rows.iter().position(|r| *r == it));
        Some(found.unwrap_or(self.index.min(rows.len() - 1)))
    }

    /// The selected item within `rows`.
    pub fn current(&self, rows: &[T]) -> Option<T> {
        self.resolve(rows).and_then(|i| rows.get(i).copied())
    }

    /// Moves by `delta` rows (clamped to the ends).
    pub fn step(&mut self, rows: &[T], delta: isize) {
        let Some(cur) = self.resolve(rows) else {
            self.item = None;
            self.index = 0;
            return;
        };
        let last = rows.len() - 1;
        let to = cur.saturating_add_signed(delta).min(last);
        self.index = to;
        self.item = rows.get(to).copied();
    }

    /// Jumps to row `to` (clamped).
    pub fn jump(&mut self, rows: &[T], to: usize) {
        if rows.is_empty() {
            self.item = None;
            self.index = 0;
            return;
        }
        let to = to.min(rows.len() - 1);
        self.index = to;
        self.item = rows.get(to).copied();
    }
}

/// The filter: applied text, and text being typed after `/`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Applied filter (empty: none).
    pub applied: String,
    /// Text being typed (`Some` while editing).
    pub editing: Option<String>,
}

/// Everything the keys change.
#[derive(Clone, Debug, Default)]
pub struct Ui {
    pub focus: Pane,
    pub help: bool,
    /// Details popup of the focused pane's selection.
    pub details: bool,
    pub filter: Filter,
    pub kind_sort: KindSort,
    pub conn_sort: ConnSort,
    pub finding_sort: FindingSort,
    pub sel_kind: Selection<Kind>,
    pub sel_conn: Selection<FlowId>,
    pub sel_finding: Selection<u64>,
}

impl Ui {
    /// Kinds shown, in order.
    pub fn kinds(&self, data: &Data) -> Vec<Kind> {
        data.kind_rows(&self.filter.applied, self.kind_sort).iter().map(|r| r.kind).collect()
    }

    /// Connections shown, in order.
    pub fn conns(&self, data: &Data) -> Vec<FlowId> {
        data.conn_rows(&self.filter.applied, self.conn_sort).iter().map(|r| r.id).collect()
    }

    /// Findings shown, in order.
    pub fn findings(&self, data: &Data) -> Vec<u64> {
        data.finding_rows(&self.filter.applied, self.finding_sort).iter().map(|r| r.seq).collect()
    }

    /// Moves the focused pane's selection by `delta` rows.
    pub fn step(&mut self, data: &Data, delta: isize) {
        match self.focus {
            Pane::Violations => self.sel_kind.step(&self.kinds(data), delta),
            Pane::Connections => self.sel_conn.step(&self.conns(data), delta),
            Pane::Findings => self.sel_finding.step(&self.findings(data), delta),
        }
    }

    /// Jumps the focused pane's selection to row `to` (`usize::MAX`: the last).
    pub fn jump(&mut self, data: &Data, to: usize) {
        match self.focus {
            Pane::Violations => self.sel_kind.jump(&self.kinds(data), to),
            Pane::Connections => self.sel_conn.jump(&self.conns(data), to),
            Pane::Findings => self.sel_finding.jump(&self.findings(data), to),
        }
    }

    /// Cycles the focused pane's sort key.
    pub fn cycle_sort(&mut self) {
        match self.focus {
            Pane::Violations => self.kind_sort = self.kind_sort.next(),
            Pane::Connections => self.conn_sort = self.conn_sort.next(),
            Pane::Findings => self.finding_sort = self.finding_sort.next(),
        }
    }

    /// Name of the focused pane's sort key.
    pub fn sort_name(&self) -> &'static str {
        match self.focus {
            Pane::Violations => self.kind_sort.name(),
            Pane::Connections => self.conn_sort.name(),
            Pane::Findings => self.finding_sort.name(),
        }
    }
}
