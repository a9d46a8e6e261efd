//! Runs every example, so they stay correct and compiling.

#[path = "../examples/lock.rs"]
mod lock;
#[path = "../examples/ring.rs"]
mod ring;
#[path = "../examples/transfer.rs"]
mod transfer;

#[test]
fn lock_example_runs() {
    lock::main().unwrap();
}

#[test]
fn ring_example_runs() {
    ring::main().unwrap();
}

#[test]
fn transfer_example_runs() {
    transfer::main().unwrap();
}
