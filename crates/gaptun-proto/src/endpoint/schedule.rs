//! Which connections have something to do: a ready queue per kind of work and a timer heap.
//!
//! A server may hold tens of thousands of connections of which a handful are busy at any
//! moment. Walking all of them on every driver iteration (for transmits, the next timer, events
//! and drained connections) made an iteration cost grow with the idle ones. Instead, every
//! operation that can change a connection's state *marks* it, and each consumer takes only the
//! marked ones:
//!
//! - [`SEND`]: may have something to send (polled by `poll_transmit`, round-robin; dropped from
//!   the queue when it has nothing).
//! - [`RETIME`]: its next deadline may have changed (re-read before the heap is consulted).
//! - [`EVENTS`]: may have events for the application (handed out by `take_touched`).
//! - [`CHECK`]: may have drained (looked at when drained connections are removed).
//!
//! The timer heap holds `(deadline, handle)` pairs with lazy invalidation: an entry counts only
//! while it equals the connection's recorded deadline, so rescheduling is a push, never a
//! search. Stale entries are skipped when they reach the top, and the heap is rebuilt when they
//! outnumber the live ones.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Instant;

use super::ConnectionHandle;

/// May have something to send.
pub(super) const SEND: u8 = 1;
/// Its next deadline may have changed.
pub(super) const RETIME: u8 = 2;
/// May have events (or ended) for the application.
pub(super) const EVENTS: u8 = 4;
/// May have drained.
pub(super) const CHECK: u8 = 8;
/// Everything: the connection took input (a datagram, a timer, the application).
pub(super) const ALL: u8 = SEND | RETIME | EVENTS | CHECK;

/// A connection's place in the schedule, kept next to it.
#[derive(Debug, Default)]
pub(super) struct Slot {
    /// Which of the queues hold this connection.
    marks: u8,
    /// The deadline its valid heap entry carries.
    pub(super) deadline: Option<Instant>,
}

/// How many times the endpoint looked at a connection, by reason: the per-iteration work, for
/// tests and benchmarks to check that it follows the busy connections, not all of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Visits {
    /// Connections asked for a transmit.
    pub transmit_polls: u64,
    /// Connections whose next deadline was re-read.
    pub timer_updates: u64,
    /// Connections whose timer fired.
    pub timers_fired: u64,
    /// Connections checked for having drained.
    pub drain_checks: u64,
    /// Connections handed to the application for their events.
    pub touched: u64,
}

/// The queues and the heap (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct Schedule {
    pub(super) send: VecDeque<ConnectionHandle>,
    pub(super) retime: Vec<ConnectionHandle>,
    pub(super) touched: Vec<ConnectionHandle>,
    pub(super) check: Vec<ConnectionHandle>,
    timers: BinaryHeap<Reverse<(Instant, ConnectionHandle)>>,
    pub(super) visits: Visits,
}

impl Schedule {
    /// Puts `handle` into the queues of `marks` it is not in yet.
    pub(super) fn mark(&mut self, slot: &mut Slot, handle: ConnectionHandle, marks: u8) {
        let new = marks & !slot.marks;
        if new == 0 {
            return;
        }
        slot.marks |= new;
        if new & SEND != 0 {
            self.send.push_back(handle);
        }
        if new & RETIME != 0 {
            self.retime.push(handle);
        }
        if new & EVENTS != 0 {
            self.touched.push(handle);
        }
        if new & CHECK != 0 {
            self.check.push(handle);
        }
    }

    /// `handle` left the queue of `mark` (taken by its consumer).
    pub(super) fn unmark(slot: &mut Slot, mark: u8) {
        slot.marks &= !mark;
    }

    /// Records `deadline` as the connection's next one (a heap push if it changed).
    pub(super) fn set_deadline(
        &mut self,
        slot: &mut Slot,
        handle: ConnectionHandle,
        deadline: Option<Instant>,
    ) {
        self.visits.timer_updates += 1;
        if slot.deadline == deadline {
            return;
        }
        slot.deadline = deadline;
        if let Some(t) = deadline {
            self.timers.push(Reverse((t, handle)));
        }
    }

    /// The earliest heap entry, stale ones included (the caller checks it against the slot).
    pub(super) fn peek_timer(&self) -> Option<(Instant, ConnectionHandle)> {
        self.timers.peek().map(|Reverse(e)| *e)
    }

    /// Removes the earliest heap entry.
    pub(super) fn pop_timer(&mut self) {
        self.timers.pop();
    }

    /// Whether stale entries outnumber the `live` connections enough that the heap should be
    /// rebuilt (keeps its size within a constant of the connection count).
    pub(super) fn timers_need_rebuild(&self, live: usize) -> bool {
        self.timers.len() > 2 * live + 64
    }

    /// Replaces the heap by the valid `entries` (one per connection with a deadline).
    pub(super) fn rebuild_timers(
        &mut self,
        entries: impl Iterator<Item = (Instant, ConnectionHandle)>,
    ) {
        self.timers = entries.map(Reverse).collect();
    }
}
