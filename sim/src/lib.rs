//! Deterministic simulation testing for ringfence, on madsim.
//!
//! - [`SimEnv`] implements the runtime boundary (`ringfence::env::Env`) with
//!   faults: message loss, duplication and delay, partitions, crashes (of
//!   servers and clients) that lose or tear unsynced storage, process
//!   pauses, clock drift and jumps. Copies in flight belong to the network,
//!   not their sender, and faults are counted by their effect ([`world`]).
//! - [`plan`] makes fault plans from a seed (swarm testing); [`nemesis`]
//!   carries them out; [`runner`] runs one case to a verdict; [`sweep`] runs
//!   many across all cores; [`explore`] sweeps fresh seeds for a time budget;
//!   [`merge`] folds the reports of a sweep's shards; [`corpus`] saves and
//!   replays failures; [`knobs`] lets `cargo test` widen or pin its sweeps.
//! - A protocol plugs in by implementing [`scenario::Scenario`];
//!   [`scenarios::counter`] is the tutorial.

#[cfg(not(madsim))]
compile_error!(
    "ringfence-sim must be compiled with `--cfg madsim`. The workspace's .cargo/config.toml \
     sets it, but a RUSTFLAGS environment variable replaces that file's flags: unset RUSTFLAGS, \
     or add `--cfg madsim` to it (RUSTFLAGS=\"--cfg madsim $RUSTFLAGS\")."
);

pub mod bench;
pub mod corpus;
pub mod env;
pub mod explore;
pub mod knobs;
pub mod logging;
pub mod merge;
pub mod nemesis;
pub mod plan;
pub mod runner;
pub mod scenario;
pub mod scenarios;
pub mod shrink;
pub mod sweep;
pub mod timeline;
pub mod trace;
pub mod world;

pub use env::SimEnv;
