//! Anti-replay window over packet numbers (a sliding bitmap, as in IPsec and WireGuard).

/// Remembers which of the most recent [`ReplayWindow::SIZE`] packet numbers were received.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    _private: (),
}

impl ReplayWindow {
    /// How far behind the highest packet number a packet may arrive and still be accepted.
    pub const SIZE: u64 = 4096;

    /// An empty window.
    pub fn new() -> Self {
        todo!("helper: ReplayWindow::new")
    }

    /// Whether `pn` is new and not too old. Does not record it: call [`ReplayWindow::insert`]
    /// only after the packet has been authenticated.
    pub fn is_fresh(&self, pn: u64) -> bool {
        let _ = pn;
        todo!("helper: ReplayWindow::is_fresh")
    }

    /// Records `pn` as received.
    pub fn insert(&mut self, pn: u64) {
        let _ = pn;
        todo!("helper: ReplayWindow::insert")
    }

    /// The highest packet number recorded, if any.
    pub fn largest(&self) -> Option<u64> {
        todo!("helper: ReplayWindow::largest")
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}
