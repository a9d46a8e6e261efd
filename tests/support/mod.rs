//! Helpers shared by the real-process tests.

pub mod proxy;
