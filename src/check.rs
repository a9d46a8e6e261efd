//! The invariants a sans-IO core checks of itself between handlers
//! (TigerBeetle's assertion density): a broken one panics, so the node
//! stops rather than spread it. [`run`] marks the thread while a check
//! runs, so that whoever catches the panic (the simulator, per seed) can
//! tell a core's broken invariant, named `core-check`, from any other
//! panic.

use std::cell::Cell;

thread_local! {
    static CHECKING: Cell<bool> = const { Cell::new(false) };
}

/// Runs a core's invariant check, marking this thread as inside it.
pub fn run(check: impl FnOnce()) {
    CHECKING.with(|c| c.set(true));
    check();
    CHECKING.with(|c| c.set(false));
}

/// Whether a core check on this thread panicked: one was still running
/// when the thread unwound.
pub fn failed() -> bool {
    CHECKING.with(|c| c.get())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_inside_a_check_is_told_from_one_outside() {
        let outside = || {
            super::run(|| {});
            let _ = std::panic::catch_unwind(|| panic!("elsewhere"));
            super::failed()
        };
        let inside = || {
            let _ = std::panic::catch_unwind(|| super::run(|| panic!("invariant")));
            super::failed()
        };
        // Each case on a fresh thread, whose thread-local flag is clean.
        assert!(!std::thread::spawn(outside).join().unwrap()); // determinism: ok — a unit test, no simulation
        assert!(std::thread::spawn(inside).join().unwrap()); // determinism: ok — a unit test, no simulation
    }
}
