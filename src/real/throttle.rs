//! A budget for warnings a stranger can trigger.
//!
//! Every refused connection is worth a line to an operator, but a flood of
//! them must not become a flood of lines: at about 320 bytes each, a
//! stranger opening connections as fast as a node refuses them would fill
//! the disk the logs live on. A [`WarnThrottle`] lets a burst through per
//! window, counts the rest, and the next line let through says how many
//! were held back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most `burst` warnings per `window`; the rest are counted.
#[derive(Debug)]
pub struct WarnThrottle {
    window: Duration,
    burst: u32,
    state: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    written: u32,
    held_back: u64,
}

impl WarnThrottle {
    /// A throttle letting `burst` warnings through per `window`.
    pub const fn new(window: Duration, burst: u32) -> WarnThrottle {
        WarnThrottle {
            window,
            burst,
            state: Mutex::new(Window {
                started: None,
                written: 0,
                held_back: 0,
            }),
        }
    }

    /// Whether a warning at `now` may be written: `Some(n)` with the
    /// number held back since the last one written, `None` to hold this
    /// one back.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if w.started
            .is_none_or(|started| now.saturating_duration_since(started) >= self.window)
        {
            w.started = Some(now);
            w.written = 0;
        }
        if w.written >= self.burst {
            w.held_back += 1;
            return None;
        }
        w.written += 1;
        Some(std::mem::take(&mut w.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_per_window_and_counts_the_rest() {
        let throttle = WarnThrottle::new(Duration::from_secs(10), 3);
        let t0 = Instant::now();
        let first: Vec<_> = (0..100).map(|_| throttle.admit(t0)).collect();
        assert_eq!(first[..3], [Some(0), Some(0), Some(0)]);
        assert!(first[3..].iter().all(Option::is_none));
        // Still inside the window: held back.
        assert_eq!(throttle.admit(t0 + Duration::from_secs(9)), None);
        // The next window's first line says how many were held back.
        assert_eq!(throttle.admit(t0 + Duration::from_secs(10)), Some(98));
        assert_eq!(throttle.admit(t0 + Duration::from_secs(10)), Some(0));
    }
}
