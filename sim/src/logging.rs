//! Log output for replays: every line carries the simulated time and, via
//! madsim's per-node span, the node it came from.

use std::fmt;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::EnvFilter;

/// Prints simulated seconds since the run began.
struct SimTime;

impl FormatTime for SimTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        match madsim::time::TimeHandle::try_current() {
            Some(time) => write!(w, "{:>11.6}s", time.elapsed().as_secs_f64()),
            None => write!(w, "{:>12}", "-"),
        }
    }
}

/// Sends logs at `filter` (an `EnvFilter` directive such as `debug` or
/// `ringfence=trace,info`) to stderr.
pub fn init(filter: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter `{filter}`: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(SimTime)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| e.to_string())
}
