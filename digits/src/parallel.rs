//! Running independent sampling jobs on several threads, with results in job order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Applies `work` to every job on `threads` threads (at least one) and returns the results in
/// the order of `jobs`, whichever thread ran which job and in what order they finished.
///
/// Jobs are handed out in order, so put the longest first. Each job must be independent of the
/// others (its own generator and seed); then the results do not depend on the number of
/// threads.
///
/// ```
/// let squares = ddim_digits::map_parallel(&[1, 2, 3, 4], 2, |&x| x * x);
/// assert_eq!(squares, [1, 4, 9, 16]);
/// ```
pub fn map_parallel<J, R, F>(jobs: &[J], threads: usize, work: F) -> Vec<R>
where
    J: Sync,
    R: Send,
    F: Fn(&J) -> R + Sync,
{
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    let worker = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(i) else { break };
        let result = work(job);
        let mut slots = results.lock().unwrap_or_else(|e| e.into_inner());
        slots[i] = Some(result);
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.max(1).min(jobs.len().max(1)) {
            scope.spawn(worker);
        }
        worker();
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every job ran: the workers stop only when none is left"))
        .collect()
}
