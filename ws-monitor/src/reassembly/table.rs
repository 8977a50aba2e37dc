//! The flow table: flows by connection, in one recency list per class (half-open,
//! plain, WebSocket session) so that eviction takes the least recently active flow of
//! the lowest class first.

use super::*;

/// A slot of the flow table: a flow and its neighbours in its class's recency list.
pub(super) struct Slot {
    /// The flow's [`FlowKey::unordered`] key.
    pub(super) key: FlowKey,
    pub(super) flow: Option<Flow>,
    pub(super) class: Class,
    pub(super) prev: usize,
    pub(super) next: usize,
}

/// Flows by [`FlowKey::unordered`] key, threaded on one recency list per [`Class`] (most
/// recent at the head) over a slab, so that touching a flow, finding the least recently
/// active one of a class and moving a flow to another class are O(1) and allocation-free.
pub(super) struct FlowTable {
    pub(super) index: HashMap<FlowKey, usize>,
    pub(super) slots: Vec<Slot>,
    pub(super) free: Vec<usize>,
    /// Per class: most and least recently active flow.
    pub(super) head: [usize; 3],
    pub(super) tail: [usize; 3],
    pub(super) count: [usize; 3],
}

impl FlowTable {
    pub(super) fn new() -> Self {
        Self {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: [NIL; 3],
            tail: [NIL; 3],
            count: [0; 3],
        }
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Flows of `class` tracked.
    pub(super) fn count(&self, class: Class) -> usize {
        self.count.get(class.index()).copied().unwrap_or(0)
    }

    pub(super) fn class(&self, slot: usize) -> Option<Class> {
        self.slots.get(slot).filter(|s| s.flow.is_some()).map(|s| s.class)
    }

    /// Moves the flow in `slot` to `class` (as its most recently active).
    pub(super) fn set_class(&mut self, slot: usize, class: Class) {
        if self.class(slot).is_some_and(|c| c != class) {
            self.unlink(slot);
            if let Some(s) = self.slots.get_mut(slot) {
                s.class = class;
            }
            self.link_front(slot);
        }
    }

    /// The least recently active flow of `class`.
    pub(super) fn oldest_of(&self, class: Class) -> Option<usize> {
        self.tail.get(class.index()).copied().filter(|&t| t != NIL)
    }

    /// What to evict to make room: the least recently active flow of the lowest class.
    pub(super) fn victim(&self) -> Option<usize> {
        Class::ALL.into_iter().find_map(|c| self.oldest_of(c))
    }

    pub(super) fn find(&self, key: &FlowKey) -> Option<usize> {
        self.index.get(key).copied()
    }

    pub(super) fn get(&self, slot: usize) -> Option<&Flow> {
        self.slots.get(slot)?.flow.as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: usize) -> Option<&mut Flow> {
        self.slots.get_mut(slot)?.flow.as_mut()
    }

    pub(super) fn insert(&mut self, key: FlowKey, flow: Flow, class: Class) -> usize {
        let slot = Slot { key, flow: Some(flow), class, prev: NIL, next: NIL };
        let at = match self.free.pop() {
            Some(at) if at < self.slots.len() => at,
            _ => self.slots.len(),
        };
        match self.slots.get_mut(at) {
            Some(existing) => *existing = slot,
            None => self.slots.push(slot),
        }
        self.index.insert(key, at);
        self.link_front(at);
        at
    }

    pub(super) fn remove(&mut self, at: usize) -> Option<Flow> {
        let slot = self.slots.get_mut(at)?;
        let flow = slot.flow.take()?;
        let key = slot.key;
        self.index.remove(&key);
        self.unlink(at);
        self.free.push(at);
        Some(flow)
    }

    /// Marks the flow in `slot` as the most recently active of its class.
    pub(super) fn touch(&mut self, slot: usize) {
        let Some(class) = self.class(slot) else { return };
        if self.head.get(class.index()) != Some(&slot) {
            self.unlink(slot);
            self.link_front(slot);
        }
    }

    /// Takes `at` out of its class's list.
    pub(super) fn unlink(&mut self, at: usize) {
        let Some(slot) = self.slots.get_mut(at) else { return };
        let (prev, next, c) = (slot.prev, slot.next, slot.class.index());
        (slot.prev, slot.next) = (NIL, NIL);
        match self.slots.get_mut(prev) {
            Some(p) => p.next = next,
            None => self.head[c] = next,
        }
        match self.slots.get_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail[c] = prev,
        }
        self.count[c] = self.count[c].saturating_sub(1);
    }

    /// Puts `at` at the head of its class's list.
    pub(super) fn link_front(&mut self, at: usize) {
        let Some(c) = self.slots.get(at).map(|s| s.class.index()) else { return };
        let old = self.head[c];
        if let Some(slot) = self.slots.get_mut(at) {
            (slot.prev, slot.next) = (NIL, old);
        }
        match self.slots.get_mut(old) {
            Some(o) => o.prev = at,
            None => self.tail[c] = at,
        }
        self.head[c] = at;
        self.count[c] += 1;
    }
}
