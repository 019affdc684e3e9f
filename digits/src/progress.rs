//! A one-line progress indicator on standard error, shared by the sampling threads.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts units of work (here: images times steps, one network evaluation of one image each)
/// and redraws one line on standard error (`\r`, no newline) at most every 200 ms:
/// `label  37% (12800 / 34560 image-steps)  0m12s`.
///
/// It is `Sync`: sampling threads call [`advance`](Self::advance) on a shared reference. A
/// hidden indicator counts without drawing.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    last_draw: Mutex<Option<Instant>>,
    visible: bool,
}

const REDRAW: Duration = Duration::from_millis(200);

impl Progress {
    /// An indicator for `total` units of work, drawn on standard error.
    pub fn new(label: impl Into<String>, total: u64) -> Self {
        Progress {
            label: label.into(),
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            last_draw: Mutex::new(None),
            visible: true,
        }
    }

    /// An indicator that counts but never draws (tests, library use).
    pub fn hidden(total: u64) -> Self {
        Progress {
            visible: false,
            ..Progress::new("", total)
        }
    }

    /// Units done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Records `units` more units of work and redraws the line if the last drawing is older
    /// than 200 ms.
    pub fn advance(&self, units: u64) {
        self.done.fetch_add(units, Ordering::Relaxed);
        if !self.visible {
            return;
        }
        let Ok(mut last) = self.last_draw.try_lock() else {
            return; // another thread is drawing right now
        };
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < REDRAW) {
            return;
        }
        *last = Some(now);
        self.draw();
    }

    /// Draws the final state and ends the line.
    pub fn finish(&self) {
        if self.visible {
            self.draw();
            eprintln!();
        }
    }

    fn draw(&self) {
        let done = self.done().min(self.total);
        let percent = (done * 100).checked_div(self.total).unwrap_or(100);
        let seconds = self.started.elapsed().as_secs();
        let mut err = std::io::stderr().lock();
        // A failed write to the terminal is not worth stopping the computation for.
        let _ = write!(
            err,
            "\r{}  {percent:3}% ({done} / {} image-steps)  {}m{:02}s ",
            self.label,
            self.total,
            seconds / 60,
            seconds % 60
        );
        let _ = err.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hidden_indicator_counts_across_threads() {
        let progress = Progress::hidden(100);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5 {
                        progress.advance(5);
                    }
                });
            }
        });
        assert_eq!(progress.done(), 100);
    }
}
