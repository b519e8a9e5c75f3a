//! [`Limits`]: the [`ResourceLimiter`] of every guest store. It caps linear memory (all memories
//! of the store together), tables and instance counts, and remembers whether it refused memory so
//! that a guest that then fails is reported as out of memory rather than as a plain trap.

use wasmtime::ResourceLimiter;

/// Most table elements, all tables of a store together (a table element is a pointer on the
/// host). Compilers emit one element per address-taken function; a million is far above that.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Most core instances per store. A command module is one; a component holds a handful.
const MAX_INSTANCES: usize = 100;
/// Most tables per store.
const MAX_TABLES: usize = 100;
/// Most linear memories per store (components add a few small ones around the main one).
const MAX_MEMORIES: usize = 16;

/// Resource limits of one guest store.
#[derive(Debug)]
pub(crate) struct Limits {
    /// Cap on the bytes of all linear memories together.
    memory_limit: u64,
    /// Bytes granted so far, all memories together.
    memory_granted: u64,
    /// Whether a memory request was refused because of `memory_limit`.
    memory_denied: bool,
    /// Table elements granted so far, all tables together.
    table_elements: usize,
}

impl Limits {
    /// Limits for a guest allowed `memory_limit` bytes of linear memory.
    pub(crate) fn new(memory_limit: u64) -> Self {
        Self {
            memory_limit,
            memory_granted: 0,
            memory_denied: false,
            table_elements: 0,
        }
    }

    /// Whether the guest asked for more memory than its cap at some point.
    pub(crate) fn memory_denied(&self) -> bool {
        self.memory_denied
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Growth past the memory's own declared maximum fails anyway; that is the guest's own
        // limit, not ours, so it neither counts nor is recorded as a denial.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let delta = u64::try_from(desired.saturating_sub(current)).unwrap_or(u64::MAX);
        let total = self.memory_granted.saturating_add(delta);
        if total > self.memory_limit {
            self.memory_denied = true;
            return Ok(false);
        }
        // Granted growth is counted even if the allocation then fails on the host: the count can
        // only err on the strict side, never let a guest past its cap.
        self.memory_granted = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let total = self
            .table_elements
            .saturating_add(desired.saturating_sub(current));
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 64 * 1024;

    #[test]
    fn counts_all_memories_together() {
        let mut limits = Limits::new(4 * PAGE as u64);
        assert!(limits.memory_growing(0, 2 * PAGE, None).unwrap());
        assert!(limits.memory_growing(0, 2 * PAGE, None).unwrap());
        assert!(!limits.memory_denied());
        assert!(!limits.memory_growing(2 * PAGE, 3 * PAGE, None).unwrap());
        assert!(limits.memory_denied());
    }

    #[test]
    fn the_guests_own_maximum_is_not_a_denial() {
        let mut limits = Limits::new(100 * PAGE as u64);
        assert!(limits.memory_growing(0, PAGE, Some(2 * PAGE)).unwrap());
        assert!(
            !limits
                .memory_growing(PAGE, 3 * PAGE, Some(2 * PAGE))
                .unwrap()
        );
        assert!(!limits.memory_denied());
        assert!(
            limits
                .memory_growing(PAGE, 2 * PAGE, Some(2 * PAGE))
                .unwrap()
        );
    }

    #[test]
    fn caps_table_elements() {
        let mut limits = Limits::new(0);
        assert!(limits.table_growing(0, MAX_TABLE_ELEMENTS, None).unwrap());
        assert!(!limits.table_growing(0, 1, None).unwrap());
    }
}
