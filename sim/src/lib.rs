//! Deterministic simulation of ringfence protocols on madsim.

#[cfg(not(madsim))]
compile_error!(
    "ringfence-sim must be compiled with `--cfg madsim`. The workspace's .cargo/config.toml \
     sets it, but a RUSTFLAGS environment variable replaces that file's flags: unset RUSTFLAGS, \
     or add `--cfg madsim` to it (RUSTFLAGS=\"--cfg madsim $RUSTFLAGS\")."
);
