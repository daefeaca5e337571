//! Waking only the connections an event is for.
//!
//! A connection whose subscriptions are all filtered does not wait on the hub's shared wake-up
//! (which every push sends to every waiting connection): it registers its filters in the
//! replica's index (`protocol::filter::Index`) and waits on its own [`Gate`]. At each push the
//! hub parses the event once, asks the index which filters match (equality and `in` are hash
//! lookups; only filters without either are tested one by one), and hands the item's number to
//! those connections' gates. Breaks go to every gate. A connection that no event matches is
//! never woken: an event costs what its matches cost, not what the connections cost.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use protocol::filter::{Filter, Index};
use tokio::sync::Notify;

use crate::view::Parsed;

/// One gated connection's queue of matched items.
#[derive(Debug, Default)]
pub(super) struct Gate {
    /// Numbers of the ring items matched for it, oldest first.
    pub(super) items: Mutex<VecDeque<u64>>,
    pub(super) notify: Notify,
}

impl Gate {
    /// Hands item `n` over; keeps at most `cap` (what is dropped has left the ring anyway,
    /// which the feed reports as an overflow).
    pub(super) fn offer(&self, n: u64, cap: usize) {
        {
            let mut items = self.items.lock().expect("gate lock is never poisoned");
            if items.back().is_some_and(|&last| last >= n) {
                return;
            }
            items.push_back(n);
            while items.len() > cap {
                items.pop_front();
            }
        }
        self.notify.notify_one();
    }
}

/// Every gated connection's filters, indexed.
#[derive(Debug, Default)]
pub(super) struct Gates {
    index: Index<u64>,
    /// Filter key → its connection's gate.
    owners: HashMap<u64, Arc<Gate>>,
    /// Every gate, for breaks (a connection without filters yet has one too).
    all: HashMap<usize, Arc<Gate>>,
    next_key: u64,
    /// Scratch for matches.
    matched: Vec<u64>,
}

impl Gates {
    /// Registers a gate with `filters` (replacing the keys it had); returns the new keys.
    pub(super) fn register(&mut self, gate: &Arc<Gate>, old: &[u64], filters: &[&Filter]) -> Vec<u64> {
        for key in old {
            self.index.remove(*key);
            self.owners.remove(key);
        }
        self.all.insert(Arc::as_ptr(gate) as usize, gate.clone());
        filters
            .iter()
            .map(|filter| {
                self.next_key += 1;
                let key = self.next_key;
                self.index.insert(key, filter);
                self.owners.insert(key, gate.clone());
                key
            })
            .collect()
    }

    pub(super) fn unregister(&mut self, gate: &Arc<Gate>, keys: &[u64]) {
        for key in keys {
            self.index.remove(*key);
            self.owners.remove(key);
        }
        self.all.remove(&(Arc::as_ptr(gate) as usize));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Hands item `n` to the gates whose filters match the event's new or old row.
    pub(super) fn offer_event(&mut self, n: u64, event: Option<&Parsed>, cap: usize) {
        let Some(event) = event else {
            // Unreadable: let every gated connection look at it (its views decide).
            return self.offer_all(n, cap);
        };
        self.matched.clear();
        self.index.matching(&event.order, &mut self.matched);
        if let Some(old) = &event.old {
            self.index.matching(old, &mut self.matched);
        }
        self.matched.sort_unstable();
        self.matched.dedup();
        let mut woken: Vec<*const Gate> = Vec::with_capacity(self.matched.len());
        for key in &self.matched {
            if let Some(gate) = self.owners.get(key) {
                let ptr = Arc::as_ptr(gate);
                if !woken.contains(&ptr) {
                    woken.push(ptr);
                    gate.offer(n, cap);
                }
            }
        }
    }

    /// Hands item `n` to every gate (a break).
    pub(super) fn offer_all(&self, n: u64, cap: usize) {
        for gate in self.all.values() {
            gate.offer(n, cap);
        }
    }
}
