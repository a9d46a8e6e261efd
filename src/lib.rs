#![warn(missing_docs)]
//! ringfence: high-availability protocols written against an abstract clock,
//! network and disk ([`env`]), so that the same code runs under a seeded
//! deterministic simulator (`ringfence-sim`) and for real on tokio.

pub mod env;
pub mod history;
pub mod lock;
pub mod log;
pub mod real;
pub mod ring;
pub mod txn;
