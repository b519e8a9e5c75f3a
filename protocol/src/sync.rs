//! Locks as both ends take them.

use std::sync::{Mutex, MutexGuard};

/// Takes a lock even when a thread panicked while holding it. Lull's locks guard state that
/// every step leaves consistent before it can panic (plain fields, maps updated in one call),
/// so the state is as good as before the panic, and one panicking task must not take the whole
/// agent or coordinator down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_with_its_state() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let held = m.clone();
        let _ = std::thread::spawn(move || {
            let mut g = held.lock().unwrap();
            *g = 2;
            panic!("a task panicked while holding the lock");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 2);
    }
}
